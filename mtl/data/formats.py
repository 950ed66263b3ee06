"""Readers for the on-disk layouts: where the images are, what classes they form.

Each reader returns a :class:`Source`: a fingerprint, found cheaply (a directory scan, or
the stat of a pickle), and a ``listing()`` giving class names, counts and a decoder. For
folders the listing falls out of the scan; for pickles it needs the unpickled arrays, so
:mod:`mtl.data.datasets` first asks the cache whether a finished entry already knows it.

Rows are grouped by class in sorted class-name order, and inside a class in a stable order:
file name (folders), CSV row order (miniImageNet CSV), ``class_dict`` order (pickles), CIFAR
train rows then CIFAR test rows (FC100). Pickles are trusted input: unpickling can run code,
so only point ``data.root`` at files you made or downloaded from a source you trust.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mtl.data.decode import ArrayDecoder, FileDecoder, is_image_name
from mtl.data.splits import FORMAT_VERSION, Decoder
from mtl.data.unpickle import load_pickle
from mtl.errors import DataError

Listing = tuple[list[str], list[int], Decoder]

# TADAM's FC100 split of the 20 CIFAR-100 superclasses (docs/algorithm.md §7).
FC100_COARSE = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "val": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
}


@dataclass(frozen=True)
class Source:
    description: str  # path(s) the split is read from
    fingerprint: str
    listing: Callable[[], Listing]
    cheap: bool  # True: listing() costs nothing more (the scan is done)


def _hasher(kind: str, split: str, size: int) -> "hashlib._Hash":
    h = hashlib.sha256()
    h.update(json.dumps([kind, FORMAT_VERSION, split, size]).encode())
    return h


def _stat_line(name: str, st: os.stat_result) -> bytes:
    return f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape")


# Folders


def folder_source(root: Path, split: str, size: int, what: str) -> Source:
    """``root/split/<class>/<image files>``; hidden and non-image files are ignored."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{what} split {split!r} not found: expected {split_dir}/<class>/<image files>")
    classes = sorted(e.name for e in os.scandir(split_dir) if not e.name.startswith(".") and e.is_dir())
    if not classes:
        raise DataError(f"{split_dir} holds no class folders: expected {split_dir}/<class>/<image files>")
    h = _hasher("folder", split, size)
    paths: list[str] = []
    counts: list[int] = []
    for name in classes:
        class_dir = split_dir / name
        files = sorted((e for e in os.scandir(class_dir) if is_image_name(e.name) and e.is_file()),
                       key=lambda e: e.name)
        if not files:
            raise DataError(f"class folder {class_dir} holds no images (.jpg, .png, ...); "
                            f"add images or remove the folder")
        for e in files:
            h.update(_stat_line(f"{name}/{e.name}", e.stat()))
            paths.append(e.path)
        counts.append(len(files))
    decoder = FileDecoder(paths, size)
    return Source(str(split_dir), h.hexdigest(), lambda: (classes, counts, decoder), cheap=True)


# miniImageNet CSV


def mini_csv_source(root: Path, split: str, size: int) -> Source:
    """Ravi-Larochelle form: ``root/images/<file>`` listed by ``root/<split>.csv`` (filename,label)."""
    csv_path, image_dir = root / f"{split}.csv", root / "images"
    if not csv_path.is_file():
        raise DataError(f"miniImageNet CSV {csv_path} not found: the CSV form needs "
                        f"ROOT/images/*.jpg with ROOT/train.csv, val.csv, test.csv")
    if not image_dir.is_dir():
        raise DataError(f"miniImageNet image folder {image_dir} not found: {csv_path.name} lists "
                        f"files in ROOT/images/")
    raw = csv_path.read_bytes()
    try:
        reader = csv.reader(io.StringIO(raw.decode("utf-8-sig")))
        header = next(reader, None)
        if header is None or [c.strip().lower() for c in header] != ["filename", "label"]:
            raise DataError(f"{csv_path} line 1: header must be 'filename,label', not {header!r}")
        by_class: dict[str, list[str]] = {}
        h = _hasher("mini-csv", split, size)
        h.update(hashlib.sha256(raw).digest())
        for row in reader:
            line = reader.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DataError(f"{csv_path} line {line}: expected 'filename,label', got {','.join(row)!r}")
            fname, label = row[0].strip(), row[1].strip()
            path = image_dir / fname
            try:
                st = os.stat(path)
            except OSError:
                raise DataError(f"{csv_path} line {line} names {path}, which does not exist; "
                                f"restore the image or remove the row") from None
            h.update(_stat_line(fname, st))
            by_class.setdefault(label, []).append(str(path))
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path} is not a text CSV ({e.reason}); replace it") from None
    except csv.Error as e:
        raise DataError(f"{csv_path} is a malformed CSV ({e}); replace it") from None
    if not by_class:
        raise DataError(f"{csv_path} lists no images; it needs one 'filename,label' row per image")
    classes = sorted(by_class)
    paths = [p for c in classes for p in by_class[c]]
    decoder = FileDecoder(paths, size)
    counts = [len(by_class[c]) for c in classes]
    return Source(str(csv_path), h.hexdigest(), lambda: (classes, counts, decoder), cheap=True)


# Pickles


def _str(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _str_keys(d: Any, path: Path, need: tuple[str, ...]) -> dict[str, Any]:
    """A pickled dict with str or bytes keys -> str keys; missing keys are a DataError."""
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, expected a dict with {', '.join(need)}")
    out = {_str(k): v for k, v in d.items()}
    missing = [k for k in need if k not in out]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (has {', '.join(sorted(out))}); "
                        f"it is not the expected file")
    return out


def _files_fingerprint(kind: str, split: str, size: int, files: list[Path]) -> str:
    h = _hasher(kind, split, size)
    for p in files:
        h.update(_stat_line(p.name, os.stat(p)))
    return h.hexdigest()


def mini_pickle_source(root: Path, split: str, size: int) -> Source:
    """``root/mini-imagenet-cache-<split>.pkl``: dict(image_data=N x H x H x 3, class_dict=wnid -> rows)."""
    path = root / f"mini-imagenet-cache-{split}.pkl"
    if not path.is_file():
        raise DataError(f"miniImageNet pickle {path} not found: the pickle form needs "
                        f"ROOT/mini-imagenet-cache-{{train,val,test}}.pkl")

    def listing() -> Listing:
        d = _str_keys(load_pickle(path), path, ("image_data", "class_dict"))
        images, class_dict = d["image_data"], d["class_dict"]
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
                and images.shape[3] == 3 and images.shape[1] == images.shape[2]):
            shape = getattr(images, "shape", None)
            raise DataError(f"{path}: image_data must be a uint8 array N x H x H x 3, "
                            f"got {type(images).__name__} {shape} {getattr(images, 'dtype', '')}")
        if not isinstance(class_dict, dict) or not class_dict:
            raise DataError(f"{path}: class_dict must map each class to its row indices")
        rows_of = {_str(k): np.asarray(v, dtype=np.int64).reshape(-1) for k, v in class_dict.items()}
        classes = sorted(rows_of)
        rows = np.concatenate([rows_of[c] for c in classes])
        if any(len(rows_of[c]) == 0 for c in classes):
            raise DataError(f"{path}: class_dict has a class with no rows")
        if rows.min() < 0 or rows.max() >= len(images):
            raise DataError(f"{path}: class_dict indexes rows outside image_data (0..{len(images) - 1})")
        counts = [len(rows_of[c]) for c in classes]
        return classes, counts, ArrayDecoder(images, rows, size, "hwc")

    return Source(str(path), _files_fingerprint("mini-pickle", split, size, [path]), listing, cheap=False)


# FC100 (CIFAR-100)


def cifar100_dir(root: Path) -> Path | None:
    """``root/cifar-100-python``, or root itself when it is that folder; None if neither."""
    for d in (root / "cifar-100-python", root):
        if all((d / f).is_file() for f in ("train", "test", "meta")):
            return d
    return None


def _cifar_part(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _str_keys(load_pickle(path), path, ("data", "fine_labels", "coarse_labels"))
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


def fc100_source(cifar_dir: Path, split: str, size: int) -> Source:
    """FC100: CIFAR-100 train + test pooled, fine classes split by superclass as TADAM does."""
    files = [cifar_dir / "train", cifar_dir / "test", cifar_dir / "meta"]

    def listing() -> Listing:
        meta = _str_keys(load_pickle(files[2]), files[2], ("fine_label_names",))
        names = [_str(n) for n in meta["fine_label_names"]]
        parts = [_cifar_part(files[0]), _cifar_part(files[1])]
        fine = np.concatenate([p[1] for p in parts])
        coarse = np.concatenate([p[2] for p in parts])
        if fine.min() < 0 or fine.max() >= len(names):
            raise DataError(f"{cifar_dir}: fine labels outside 0..{len(names) - 1} of {files[2]}")
        coarse_of: dict[int, int] = {}
        for f, c in zip(*np.unique(np.stack([fine, coarse], 1), axis=0).T):
            if coarse_of.setdefault(int(f), int(c)) != int(c):
                raise DataError(f"{cifar_dir}: fine class {names[f]} appears under two superclasses")
        wanted = set(FC100_COARSE[split])
        chosen = sorted((names[f], f) for f, c in coarse_of.items() if c in wanted)
        if not chosen:
            raise DataError(f"{cifar_dir}: no fine class belongs to FC100 {split} superclasses "
                            f"{sorted(wanted)}; is this CIFAR-100?")
        rows = [np.flatnonzero(fine == f) for _, f in chosen]  # train rows come first: stable order
        images = np.concatenate([p[0] for p in parts])
        decoder = ArrayDecoder(images, np.concatenate(rows), size, "chw")
        return [n for n, _ in chosen], [len(r) for r in rows], decoder

    return Source(str(cifar_dir), _files_fingerprint("fc100", split, size, files), listing, cheap=False)
