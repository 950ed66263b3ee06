"""The pickles most few-shot code bases ship: MetaOptNet/RFS arrays, and tieredImageNet's PNGs.

- MetaOptNet (Lee et al., CVPR 2019) and RFS (Tian et al., ECCV 2020) keep each split of
  miniImageNet, CIFAR-FS and FC100 as one pickle: a dict with ``data`` (uint8 N x H x W x 3)
  and ``labels`` (one int per row), and for miniImageNet ``catname2label`` (class name ->
  label). The file names are in :data:`METAOPTNET_FILES`. Written by Python 2, so keys may be
  bytes; :func:`mtl.data.unpickle.load_pickle` reads them.
- tieredImageNet as Ren et al. (ICLR 2018) released it: ``<split>_images_png.pkl``, a list of
  PNG-encoded images (bytes, or 1-D uint8 arrays), and ``<split>_labels.pkl``, a dict with
  ``label_specific`` (the class of each image), ``label_general`` (its category) and the names
  ``label_specific_str``.

Rows of a class keep their order in the file; classes are sorted by name (a class without a
name in the file is called by its label, zero-padded so that names sort like the labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtl.data.decode import ArrayDecoder, BlobDecoder
from mtl.data.formats import Listing, Source, files_fingerprint, str_keys, str_of
from mtl.data.unpickle import load_pickle
from mtl.errors import DataError

# dataset -> split -> file name, as the MetaOptNet and RFS code bases name them
METAOPTNET_FILES = {
    "mini": {"train": "miniImageNet_category_split_train_phase_train.pickle",
             "val": "miniImageNet_category_split_val.pickle",
             "test": "miniImageNet_category_split_test.pickle"},
    **{name: {s: f"{prefix}_{s}.pickle" for s in ("train", "val", "test")}
       for name, prefix in (("cifar_fs", "CIFAR_FS"), ("fc100", "FC100"))},
}
TIERED_FILES = ("{split}_images_png.pkl", "{split}_labels.pkl")


def _labels(value: Any, n: int, path: Path, key: str) -> np.ndarray:
    try:
        labels = np.asarray(value, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {key} must be one integer label per image") from None
    if len(labels) != n:
        raise DataError(f"{path}: {n} images but {len(labels)} entries in {key}")
    return labels


def _grouped(labels: np.ndarray, names: dict[int, str], path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Class names sorted, and each class's rows in file order."""
    if not len(labels):
        raise DataError(f"{path} holds no images")
    width = len(str(int(labels.max())))
    by_name = {names.get(int(lab), f"{int(lab):0{width}d}"): int(lab) for lab in np.unique(labels)}
    if len(by_name) != len(np.unique(labels)):
        raise DataError(f"{path}: two labels carry the same class name; the names table is damaged")
    classes = sorted(by_name)
    return classes, [np.flatnonzero(labels == by_name[c]) for c in classes]


def metaoptnet_source(path: Path, dataset: str, split: str, size: int) -> Source:
    """One split of a MetaOptNet/RFS pickle: dict(data=N x H x W x 3 uint8, labels=[N])."""

    def listing() -> Listing:
        d = str_keys(load_pickle(path), path, ("data", "labels"))
        images = d["data"]
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
                and images.shape[3] == 3):
            raise DataError(f"{path}: data must be a uint8 array N x H x W x 3, got "
                            f"{type(images).__name__} {getattr(images, 'shape', '')} {getattr(images, 'dtype', '')}")
        labels = _labels(d["labels"], len(images), path, "labels")
        names = {}
        if isinstance(d.get("catname2label"), dict):
            names = {int(v): str_of(k) for k, v in d["catname2label"].items()}
        classes, rows = _grouped(labels, names, path)
        return classes, [len(r) for r in rows], ArrayDecoder(images, np.concatenate(rows), size, "hwc")

    return Source(str(path), files_fingerprint(f"metaoptnet-{dataset}", split, size, [path]), listing, cheap=False)


def tiered_pickle_source(root: Path, split: str, size: int) -> Source:
    """tieredImageNet's ``<split>_images_png.pkl`` + ``<split>_labels.pkl`` (Ren et al.)."""
    images_path, labels_path = (root / f.format(split=split) for f in TIERED_FILES)
    for p in (images_path, labels_path):
        if not p.is_file():
            raise DataError(f"tieredImageNet pickle {p} not found: the pickle form needs "
                            f"ROOT/{{train,val,test}}_images_png.pkl with ROOT/{{train,val,test}}_labels.pkl")

    def listing() -> Listing:
        blobs = load_pickle(images_path)
        if isinstance(blobs, np.ndarray) and blobs.dtype == object:
            blobs = list(blobs)
        if not isinstance(blobs, list):
            raise DataError(f"{images_path} holds a {type(blobs).__name__}, expected a list of PNG-encoded images")
        for i, b in enumerate(blobs):
            if isinstance(b, str):  # a Python 2 byte string, read back as latin-1 text
                blobs[i] = b = b.encode("latin1")
            if not (isinstance(b, (bytes, bytearray)) or (isinstance(b, np.ndarray) and b.dtype == np.uint8
                                                          and b.ndim == 1)):
                raise DataError(f"{images_path} row {i} is a {type(b).__name__}, expected the bytes of a PNG image")
        d = str_keys(load_pickle(labels_path), labels_path, ("label_specific",))
        labels = _labels(d["label_specific"], len(blobs), labels_path, "label_specific")
        names_list = d.get("label_specific_str")
        names = {i: str_of(n) for i, n in enumerate(names_list)} if isinstance(names_list, (list, tuple)) else {}
        classes, rows = _grouped(labels, names, labels_path)
        decoder = BlobDecoder(blobs, np.concatenate(rows), size, str(images_path))
        return classes, [len(r) for r in rows], decoder

    fp = files_fingerprint("tiered-png", split, size, [images_path, labels_path])
    return Source(str(images_path), fp, listing, cheap=False)
