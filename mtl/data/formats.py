"""Readers for the on-disk layouts: where the images are, what classes they form.

Each reader returns a :class:`Source`: a fingerprint, found cheaply (a directory scan, or
the stat of a pickle), and a ``listing()`` giving class names, counts and a decoder. For
folders the listing falls out of the scan; for pickles it needs the unpickled arrays, so
:mod:`mtl.data.datasets` first asks the cache whether a finished entry already knows it.

Rows are grouped by class in sorted class-name order, and inside a class in a stable order:
file name (folders), CSV row order (miniImageNet CSV), ``class_dict`` order (pickles). Every
pickle is read through :func:`mtl.data.unpickle.load_pickle`, which builds arrays, numbers,
strings and containers and refuses anything else, so no data file can run code.

This module holds the shared pieces (:class:`Source`, fingerprints, pickled-dict checks) and the
folder and miniImageNet readers; the other families have their own modules: :mod:`mtl.data.cifar`
(CIFAR-100 python files: FC100, CIFAR-FS), :mod:`mtl.data.pickles` (the MetaOptNet/RFS pickles
and tieredImageNet's PNG pickles) and :mod:`mtl.data.omniglot`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtl.data.decode import IMAGE_EXTENSIONS, ArrayDecoder, FileDecoder, is_image_name
from mtl.data.splits import FORMAT_VERSION, Decoder
from mtl.data.unpickle import load_pickle
from mtl.errors import DataError, shown

Listing = tuple[list[str], list[int], Decoder]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    description: str  # path(s) the split is read from
    fingerprint: str
    listing: Callable[[], Listing]
    cheap: bool  # True: listing() costs nothing more (the scan is done)


def hasher(kind: str, split: str, size: int) -> hashlib._Hash:
    h = hashlib.sha256()
    h.update(json.dumps([kind, FORMAT_VERSION, split, size]).encode())
    return h


def stat_line(name: str, st: os.stat_result) -> bytes:
    return f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape")


# Folders


def _entries(path: Path) -> list[os.DirEntry]:
    """The non-hidden entries of a folder; an unreadable one is a DataError naming it."""
    try:
        return [e for e in os.scandir(path) if not e.name.startswith(".")]
    except OSError as e:
        raise DataError(f"cannot list {path}: {e.strerror}; fix the folder or its permissions") from None


def _is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_file()`` / ``is_dir()``; a symlink loop (or another unreadable link) is a DataError."""
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError as e:
        raise DataError(f"{entry.path}: {e.strerror} (a symlink loop?); fix or remove the link") from None


def subfolders(path: Path) -> list[str]:
    """Names of the folders in ``path``, sorted; hidden ones are skipped."""
    return sorted(e.name for e in _entries(path) if _is(e, "dir"))


def class_images(class_dir: Path, name: str, h: hashlib._Hash, what: str = "class folder",
                 skipped: list[str] | None = None) -> list[str]:
    """The image files of one class folder, by file name, each entered in ``h`` as ``name/<file>``
    with its size and time; a folder without images is a DataError. Other non-hidden entries
    (notes.txt, a subfolder) are appended to ``skipped``."""
    files, other = [], []
    for e in _entries(class_dir):
        (files if is_image_name(e.name) and _is(e, "file") else other).append(e)
    if not files:
        raise DataError(f"{what} {class_dir} holds no images (.jpg, .png, ...); add images or remove the folder")
    if skipped is not None:
        skipped.extend(e.path for e in other)
    files.sort(key=lambda e: e.name)
    for e in files:
        try:
            st = e.stat()
        except OSError as err:
            raise DataError(f"cannot read {e.path}: {err.strerror}; fix or remove the file") from None
        h.update(stat_line(f"{name}/{e.name}", st))
    return [e.path for e in files]


_WARNED: set[str] = set()


def warn_skipped(where: str, skipped: list[str]) -> None:
    """One warning per folder and process: how many entries of its class folders are not read."""
    if skipped and where not in _WARNED:
        _WARNED.add(where)
        log.warning("%s: skipped %d file(s) in class folders that are not images (e.g. %s); only %s are read",
                    where, len(skipped), skipped[0], ", ".join(sorted(IMAGE_EXTENSIONS)[:6]) + ", ...")


def folder_source(root: Path, split: str, size: int, what: str) -> Source:
    """``root/split/<class>/<image files>``; hidden files are ignored, other non-image files skipped
    with a warning."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{what} split {split!r} not found: expected {split_dir}/<class>/<image files>")
    classes = subfolders(split_dir)
    if not classes:
        raise DataError(f"{split_dir} holds no class folders: expected {split_dir}/<class>/<image files>")
    h = hasher("folder", split, size)
    skipped: list[str] = []
    files = [class_images(split_dir / name, name, h, skipped=skipped) for name in classes]
    warn_skipped(str(split_dir), skipped)
    counts = [len(f) for f in files]
    decoder = FileDecoder([p for f in files for p in f], size)
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
            raise DataError(f"{csv_path} line 1: header must be 'filename,label', not {shown(header)}")
        by_class: dict[str, list[str]] = {}
        h = hasher("mini-csv", split, size)
        h.update(hashlib.sha256(raw).digest())
        for row in reader:
            line = reader.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DataError(f"{csv_path} line {line}: expected 'filename,label', got {shown(','.join(row))}")
            fname, label = row[0].strip(), row[1].strip()
            path = image_dir / fname
            try:
                st = os.stat(path)
            except OSError:
                raise DataError(f"{csv_path} line {line} names {path}, which does not exist; "
                                f"restore the image or remove the row") from None
            h.update(stat_line(fname, st))
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


def str_of(x: Any) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def str_keys(d: Any, path: Path, need: tuple[str, ...]) -> dict[str, Any]:
    """A pickled dict with str or bytes keys -> str keys; missing keys are a DataError."""
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, expected a dict with {', '.join(need)}")
    out = {str_of(k): v for k, v in d.items()}
    missing = [k for k in need if k not in out]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (has {', '.join(sorted(out))}); "
                        f"it is not the expected file")
    return out


def files_fingerprint(kind: str, split: str, size: int, files: list[Path]) -> str:
    h = hasher(kind, split, size)
    for p in files:
        h.update(stat_line(p.name, os.stat(p)))
    return h.hexdigest()


def mini_cache_file(root: Path, split: str) -> Path:
    """``root/mini-imagenet-cache-<split>.pkl``; learn2learn downloads val as ``...-validation.pkl``."""
    path = root / f"mini-imagenet-cache-{split}.pkl"
    alias = root / "mini-imagenet-cache-validation.pkl"
    return alias if split == "val" and not path.is_file() and alias.is_file() else path


def mini_pickle_source(root: Path, split: str, size: int) -> Source:
    """``root/mini-imagenet-cache-<split>.pkl``: dict(image_data=N x H x H x 3, class_dict=wnid -> rows)."""
    path = mini_cache_file(root, split)
    if not path.is_file():
        raise DataError(f"miniImageNet pickle {path} not found: the pickle form needs "
                        f"ROOT/mini-imagenet-cache-{{train,val,test}}.pkl")

    def listing() -> Listing:
        d = str_keys(load_pickle(path), path, ("image_data", "class_dict"))
        images, class_dict = d["image_data"], d["class_dict"]
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
                and images.shape[3] == 3 and images.shape[1] == images.shape[2]):
            shape = getattr(images, "shape", None)
            raise DataError(f"{path}: image_data must be a uint8 array N x H x H x 3, "
                            f"got {type(images).__name__} {shape} {getattr(images, 'dtype', '')}")
        if not isinstance(class_dict, dict) or not class_dict:
            raise DataError(f"{path}: class_dict must map each class to its row indices")
        rows_of = {str_of(k): np.asarray(v, dtype=np.int64).reshape(-1) for k, v in class_dict.items()}
        classes = sorted(rows_of)
        rows = np.concatenate([rows_of[c] for c in classes])
        if any(len(rows_of[c]) == 0 for c in classes):
            raise DataError(f"{path}: class_dict has a class with no rows")
        if rows.min() < 0 or rows.max() >= len(images):
            raise DataError(f"{path}: class_dict indexes rows outside image_data (0..{len(images) - 1})")
        counts = [len(rows_of[c]) for c in classes]
        return classes, counts, ArrayDecoder(images, rows, size, "hwc")

    return Source(str(path), files_fingerprint("mini-pickle", split, size, [path]), listing, cheap=False)
