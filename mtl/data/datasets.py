"""The dataset names of ``data.dataset`` -> readers; the public listing and loading calls.

``index_split`` is cheap (a directory scan, a CSV read, a stat; pickles are unpickled only
when no cache entry already holds their class list) and is what ``split_stats`` and
``dataset_fingerprint`` use. ``load_split`` decodes through :mod:`mtl.data.cache`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mtl.config import Data
from mtl.data import cache, formats
from mtl.data.cifar import cifar100_dir, cifar100_source
from mtl.data.decode import LazyDecoder
from mtl.data.omniglot import LAYOUT as OMNIGLOT_LAYOUT
from mtl.data.omniglot import omniglot_dir, omniglot_source
from mtl.data.pickles import METAOPTNET_FILES, TIERED_FILES, metaoptnet_source, tiered_pickle_source
from mtl.data.splits import Split, SplitIndex, split_from_arrays
from mtl.data.synthetic import synthetic_index
from mtl.errors import DataError
from mtl.registry import DATASETS

SPLITS = ("train", "val", "test")

FOLDER_LAYOUT = "ROOT/{train,val,test}/<class>/<image files>"
_M = METAOPTNET_FILES
MINI_LAYOUT = ("ROOT/images/*.jpg with ROOT/train.csv, val.csv, test.csv; "
               "or ROOT/mini-imagenet-cache-{train,val,test}.pkl (val also as -validation.pkl); "
               f"or ROOT/{_M['mini']['train']}, {_M['mini']['val']}, {_M['mini']['test']} (MetaOptNet); "
               "or ROOT/{train,val,test}/<class>/*.jpg")
CIFAR_LAYOUT = ("ROOT/cifar-100-python/{{train,test,meta}} (CIFAR-100, python version), "
                "or ROOT being that cifar-100-python folder, or ROOT/{prefix}_{{train,val,test}}.pickle (MetaOptNet)")
TIERED_LAYOUT = ("ROOT/{train,val,test}_images_png.pkl with ROOT/{train,val,test}_labels.pkl, "
                 "or ROOT/{train,val,test}/<class>/<image files>")

# name in messages, expected layout
_DESCRIPTIONS = {
    "folder": ("image-folder dataset", FOLDER_LAYOUT),
    "tiered": ("tieredImageNet", TIERED_LAYOUT),
    "mini": ("miniImageNet", MINI_LAYOUT),
    "fc100": ("FC100 (CIFAR-100)", CIFAR_LAYOUT.format(prefix="FC100")),
    "cifar_fs": ("CIFAR-FS (CIFAR-100)", CIFAR_LAYOUT.format(prefix="CIFAR_FS")),
    "omniglot": ("Omniglot", OMNIGLOT_LAYOUT),
}


def _root(data: Data) -> Path:
    what, layout = _DESCRIPTIONS[data.dataset]
    if not data.root:
        raise DataError(f"data.root is not set for {what}; set data.root to the folder holding {layout}")
    root = Path(data.root).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} not found under {root}: expected {layout}")
    return root


def _not_found(data: Data, root: Path) -> DataError:
    what, layout = _DESCRIPTIONS[data.dataset]
    return DataError(f"{what} not found under {root}: expected {layout}")


def _metaoptnet(data: Data, root: Path, split: str) -> formats.Source | None:
    """The MetaOptNet pickle of ``split`` if any split of that form is present (None if none is)."""
    files = METAOPTNET_FILES[data.dataset]
    if not any((root / f).is_file() for f in files.values()):
        return None
    path = root / files[split]
    if not path.is_file():
        raise DataError(f"{_DESCRIPTIONS[data.dataset][0]} pickle {path} not found: the MetaOptNet form needs "
                        f"ROOT/{', '.join(files.values())}")
    return metaoptnet_source(path, data.dataset, split, data.image_size)


def _folder(data: Data, split: str) -> formats.Source:
    return formats.folder_source(_root(data), split, data.image_size, _DESCRIPTIONS[data.dataset][0])


def _mini(data: Data, split: str) -> formats.Source:
    """The first form present wins: CSV + images, then pickles (cache, MetaOptNet), then class folders."""
    root, size = _root(data), data.image_size
    if any((root / f"{s}.csv").is_file() for s in SPLITS):
        return formats.mini_csv_source(root, split, size)
    if any(formats.mini_cache_file(root, s).is_file() for s in SPLITS):
        return formats.mini_pickle_source(root, split, size)
    if (src := _metaoptnet(data, root, split)) is not None:
        return src
    if any((root / s).is_dir() for s in SPLITS):
        return formats.folder_source(root, split, size, "miniImageNet")
    raise _not_found(data, root)


def _tiered(data: Data, split: str) -> formats.Source:
    """Ren et al.'s PNG pickles when any is present, else class folders."""
    root = _root(data)
    if any((root / f.format(split=s)).is_file() for f in TIERED_FILES for s in SPLITS):
        return tiered_pickle_source(root, split, data.image_size)
    if any((root / s).is_dir() for s in SPLITS):
        return formats.folder_source(root, split, data.image_size, "tieredImageNet")
    raise _not_found(data, root)


def _cifar100(data: Data, split: str) -> formats.Source:
    """FC100 or CIFAR-FS: the CIFAR-100 python files, else the MetaOptNet pickles."""
    root = _root(data)
    cifar = cifar100_dir(root)
    if cifar is not None:
        return cifar100_source(cifar, split, data.image_size, data.dataset)
    if (src := _metaoptnet(data, root, split)) is not None:
        return src
    raise _not_found(data, root)


def _omniglot(data: Data, split: str) -> formats.Source:
    root = _root(data)
    base = omniglot_dir(root)
    if base is None:
        raise _not_found(data, root)
    o = data.omniglot
    return omniglot_source(base, split, data.image_size, o.val_alphabets, o.rotations)


# data.dataset names -> readers (Data, split) -> Source; the synthetic set is generated, not read
for _name, _reader in {"folder": _folder, "tiered": _tiered, "mini": _mini, "fc100": _cifar100,
                       "cifar_fs": _cifar100, "omniglot": _omniglot}.items():
    DATASETS.register(_name)(_reader)
DATASETS.register("synthetic")(synthetic_index)


def index_split(data: Data, split: str) -> SplitIndex:
    """Class names, counts and fingerprint of one split, without decoding any image."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if data.dataset == "synthetic":
        return synthetic_index(data, split)
    src = DATASETS.get(data.dataset)(data, split)
    known = None if src.cheap else cache.read_meta(
        cache.cache_dir(data), data.dataset, split, data.image_size, src.fingerprint)
    if known is not None:  # a finished cache entry already lists the classes: skip unpickling
        names, counts = list(known["class_names"]), [int(c) for c in known["counts"]]
        decoder = LazyDecoder(src.listing, names, counts, src.description)
    else:
        names, counts, decoder = src.listing()
    return SplitIndex(
        dataset=data.dataset, split=split, class_names=list(names), counts=list(counts),
        fingerprint=src.fingerprint, image_size=data.image_size, source=src.description,
        _decoder=decoder,
    )


def index_splits(data: Data) -> dict[str, SplitIndex]:
    """The listings of all three splits (one directory scan each); pass them on to
    :func:`split_stats`, :func:`load_split` and :func:`dataset_fingerprint` so that a large
    dataset (tieredImageNet: 779k files, perhaps on NFS) is not listed again by each."""
    return {split: index_split(data, split) for split in SPLITS}


def split_stats(data: Data, indexes: dict[str, SplitIndex] | None = None) -> dict[str, tuple[int, int]]:
    """``{split: (number of classes, fewest images in a class)}``, for ``config.check_against_data``."""
    indexes = indexes or index_splits(data)
    return {split: (len(ix.class_names), min(ix.counts)) for split, ix in indexes.items()}


def load_split(data: Data, split: str, progress: bool = True, index: SplitIndex | None = None) -> Split:
    """Decoded images of one split (uint8 ``[N, 3, S, S]``, grouped by class), via the cache."""
    index = index or index_split(data, split)
    if not index.cacheable:  # generated: one chunk per class, classes in parallel
        images = np.empty((index.num_images, 3, index.image_size, index.image_size), dtype=np.uint8)
        cache.decode_into(index.decoder, images, progress, f"{index.dataset}/{split}",
                          chunk=max(1, min(index.counts)))
        return split_from_arrays(images, index.class_names, index.counts, index.fingerprint)
    return cache.load_cached(index, cache.cache_dir(data), progress)


def ensure_cached(data: Data, split: str, progress: bool = True, index: SplitIndex | None = None) -> None:
    """Decode one split into the cache unless it is there (without reading it back); a generated
    split has no cache and nothing that could fail to decode."""
    index = index or index_split(data, split)
    if index.cacheable:
        cache.ensure_cached(index, cache.cache_dir(data), progress)


def dataset_fingerprint(data: Data, indexes: dict[str, SplitIndex] | None = None) -> str:
    """One digest of the three splits' fingerprints (keys the shared pretraining cache)."""
    h = hashlib.sha256(data.dataset.encode())
    for split in SPLITS:
        fp = indexes[split].fingerprint if indexes else _fingerprint(data, split)
        h.update(f"|{split}:{fp}".encode())
    return h.hexdigest()


def _fingerprint(data: Data, split: str) -> str:
    """A split's fingerprint without its listing (no unpickling for the pickle forms)."""
    if data.dataset == "synthetic":
        return index_split(data, split).fingerprint
    return DATASETS.get(data.dataset)(data, split).fingerprint
