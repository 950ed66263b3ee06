"""FC100 and CIFAR-FS from the CIFAR-100 python files (``cifar-100-python/{train,test,meta}``).

Both benchmarks pool CIFAR-100's train and test images (600 per fine class) and split the 100
fine classes three ways; they differ only in which classes go where:

- FC100 (Oreshkin et al., TADAM): by superclass, 12/4/4 superclasses = 60/20/20 classes
  (docs/algorithm.md §7);
- CIFAR-FS (Bertinetto et al., R2D2, ICLR 2019): 64/16/20 classes drawn at random by the
  authors, listed in their code's ``splits/bertinetto/{train,val,test}.txt``. The val and test
  lists below are those files' contents (as reproduced in public few-shot code bases, in the same
  64/16/20 order); train is every other fine class, which the reader checks is 64 of them.

Rows of a class: CIFAR train rows in file order, then CIFAR test rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtl.data.decode import ArrayDecoder
from mtl.data.formats import Listing, Source, files_fingerprint, str_keys, str_of
from mtl.data.unpickle import load_pickle
from mtl.errors import DataError

# TADAM's FC100 split of the 20 CIFAR-100 superclasses (docs/algorithm.md §7).
FC100_COARSE = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "val": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
}

# Bertinetto et al.'s CIFAR-FS val and test classes (R2D2 code, splits/bertinetto/*.txt); train: the other 64
CIFAR_FS_CLASSES = {
    "val": ["beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp", "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor"],
    "test": ["baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm"],
}
CIFAR_FS_SIZES = {"train": 64, "val": 16, "test": 20}


def cifar100_dir(root: Path) -> Path | None:
    """``root/cifar-100-python``, or root itself when it is that folder; None if neither."""
    for d in (root / "cifar-100-python", root):
        if all((d / f).is_file() for f in ("train", "test", "meta")):
            return d
    return None


def _cifar_part(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = str_keys(load_pickle(path), path, ("data", "fine_labels", "coarse_labels"))
    data = d["data"]
    fine = np.asarray(d["fine_labels"], dtype=np.int64)
    coarse = np.asarray(d["coarse_labels"], dtype=np.int64)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        raise DataError(f"{path}: data must be a uint8 array N x 3072 (32x32 RGB planes), "
                        f"got {getattr(data, 'shape', type(data).__name__)} {getattr(data, 'dtype', '')}")
    if not len(fine) == len(coarse) == len(data):
        raise DataError(f"{path}: {len(data)} images but {len(fine)} fine and {len(coarse)} coarse labels")
    return data.reshape(-1, 3, 32, 32), fine, coarse


def _fc100_classes(cifar_dir: Path, split: str, names: list[str], fine: np.ndarray,
                   coarse: np.ndarray) -> list[int]:
    coarse_of: dict[int, int] = {}
    for f, c in zip(*np.unique(np.stack([fine, coarse], 1), axis=0).T):
        if coarse_of.setdefault(int(f), int(c)) != int(c):
            raise DataError(f"{cifar_dir}: fine class {names[f]} appears under two superclasses")
    wanted = set(FC100_COARSE[split])
    chosen = [f for f, c in coarse_of.items() if c in wanted]
    if not chosen:
        raise DataError(f"{cifar_dir}: no fine class belongs to FC100 {split} superclasses "
                        f"{sorted(wanted)}; is this CIFAR-100?")
    return chosen


def _cifar_fs_classes(cifar_dir: Path, split: str, names: list[str], fine: np.ndarray,
                      coarse: np.ndarray) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    held_out = CIFAR_FS_CLASSES["val"] + CIFAR_FS_CLASSES["test"]
    missing = [n for n in held_out if n not in index]
    if missing:
        raise DataError(f"{cifar_dir}/meta lacks the CIFAR-FS classes {', '.join(missing[:4])}; "
                        "is this CIFAR-100 (python version)?")
    wanted = ([i for n, i in index.items() if n not in held_out] if split == "train"
              else [index[n] for n in CIFAR_FS_CLASSES[split]])
    if len(wanted) != CIFAR_FS_SIZES[split]:
        raise DataError(f"{cifar_dir}/meta names {len(names)} fine classes, so the CIFAR-FS {split} split has "
                        f"{len(wanted)} instead of {CIFAR_FS_SIZES[split]}; is this CIFAR-100?")
    return wanted


_CHOOSERS = {"fc100": _fc100_classes, "cifar_fs": _cifar_fs_classes}


def cifar100_source(cifar_dir: Path, split: str, size: int, kind: str) -> Source:
    """One split of FC100 (``kind="fc100"``) or CIFAR-FS (``"cifar_fs"``) from the CIFAR-100 files."""
    files = [cifar_dir / "train", cifar_dir / "test", cifar_dir / "meta"]

    def listing() -> Listing:
        meta = str_keys(load_pickle(files[2]), files[2], ("fine_label_names",))
        names = [str_of(n) for n in meta["fine_label_names"]]
        parts = [_cifar_part(files[0]), _cifar_part(files[1])]
        fine = np.concatenate([p[1] for p in parts])
        coarse = np.concatenate([p[2] for p in parts])
        if fine.min() < 0 or fine.max() >= len(names):
            raise DataError(f"{cifar_dir}: fine labels outside 0..{len(names) - 1} of {files[2]}")
        chosen = sorted((names[f], f) for f in _CHOOSERS[kind](cifar_dir, split, names, fine, coarse))
        rows = [np.flatnonzero(fine == f) for _, f in chosen]  # train rows come first: stable order
        if any(len(r) == 0 for r in rows):
            empty = next(n for (n, _), r in zip(chosen, rows) if len(r) == 0)
            raise DataError(f"{cifar_dir}: class {empty} of the {split} split has no images; is this CIFAR-100?")
        images = np.concatenate([p[0] for p in parts])
        decoder = ArrayDecoder(images, np.concatenate(rows), size, "chw")
        return [n for n, _ in chosen], [len(r) for r in rows], decoder

    return Source(str(cifar_dir), files_fingerprint(kind, split, size, files), listing, cheap=False)
