"""Decode a split once into a uint8 array on disk; read it back on every later run.

An entry is a folder ``<cache_dir>/<dataset>-<split>-<S>px-<fingerprint[:16]>/`` holding
``images.npy`` (uint8 ``[N, 3, S, S]``, grouped by class), ``labels.npy`` (int64 ``[N]``)
and ``meta.json`` (class names, counts, offsets, full fingerprint, source, creation time).
A changed source has a new fingerprint, hence a new entry; an unchanged one is never
decoded again. Old entries are left in place (delete them by hand to reclaim space).

Building is crash-safe and single-flight through :class:`mtl.store.Store`: the builder
holds ``<entry>.lock``, decodes into ``.<entry>.tmp-<random>`` and renames that folder into
place only when complete (and fsynced), so a folder named like an entry is always a finished
one and can be read without the lock. Others wait on the lock and then read what the builder
made. Temporary folders left by a crashed builder of the same entry are removed by the next
builder. Entries also hold the store's ``COMPLETE`` marker; ones made before it existed are
recognised by their ``meta.json``. The lock file is removed when the build ends. A filesystem
without room for the images is refused before decoding (their size is known, and the file's
blocks are allocated up front); a full disk removes the partial entry (:class:`~mtl.errors.DiskFull`).

Reading copies the memory-mapped array into an ordinary tensor: the split is moved to the
device right after (architecture.md), and ``torch.from_numpy`` on a read-only map would
give a tensor that must never be written. The copy is one sequential read of the file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mtl.config import Data
from mtl.data.splits import FORMAT_VERSION, Decoder, Split, SplitIndex, labels_of, offsets_of
from mtl.errors import DataError
from mtl.files import AGAIN_FIX, atomic_path, ensure_space, write_json_atomic
from mtl.store import Store

log = logging.getLogger(__name__)

CHUNK = 64  # images per decoding task: small enough for a smooth progress bar
MAX_WORKERS = 16


def cache_dir(data: Data) -> Path:
    """``data.cache_dir``, else ``$MTL_CACHE_DIR``, else ``~/.cache/mtl``."""
    chosen = data.cache_dir or os.environ.get("MTL_CACHE_DIR") or Path.home() / ".cache" / "mtl"
    return Path(chosen).expanduser()


def entry_path(root: Path, dataset: str, split: str, size: int, fingerprint: str) -> Path:
    return root / f"{dataset}-{split}-{size}px-{fingerprint[:16]}"


def read_meta(root: Path, dataset: str, split: str, size: int, fingerprint: str) -> dict[str, Any] | None:
    """meta.json of a finished entry for this exact fingerprint, or None (never raises)."""
    path = entry_path(root, dataset, split, size, fingerprint) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(meta, dict) and meta.get("fingerprint") == fingerprint
          and isinstance(meta.get("class_names"), list) and isinstance(meta.get("counts"), list)
          and len(meta["class_names"]) == len(meta["counts"]))
    return meta if ok else None


def ensure_cached(index: SplitIndex, root: Path, progress: bool = True) -> Path:
    """The split's cache entry, built first if there is none."""
    key = entry_path(root, index.dataset, index.split, index.image_size, index.fingerprint).name
    store = _store(root)
    entry, _ = store.get_or_build(key, lambda tmp, _work: _build(store, tmp, store.path(key), index, progress))
    return entry


def load_cached(index: SplitIndex, root: Path, progress: bool = True) -> Split:
    """The split from its cache entry, building the entry first if there is none."""
    return _read_entry(ensure_cached(index, root, progress), index)


def decode_into(decoder: Decoder, out: np.ndarray, progress: bool, desc: str,
                chunk: int = CHUNK) -> None:
    """Fill ``out`` (``[N, 3, S, S]``) with ``decoder`` rows, chunks decoded on a thread pool.

    Each chunk writes its own slice, so the result does not depend on scheduling. The first
    failure cancels the chunks not yet started and is re-raised.
    """
    n = decoder.num_items
    chunks = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1, len(chunks)))
    show = progress and sys.stderr.isatty()

    def work(span: tuple[int, int]) -> int:
        out[span[0]:span[1]] = decoder.decode(*span)
        return span[1] - span[0]

    with tqdm(total=n, desc=desc, unit="img", disable=not show, leave=False) as bar, \
            ThreadPoolExecutor(workers, thread_name_prefix="mtl-decode") as pool:
        futures = [pool.submit(work, span) for span in chunks]
        try:
            for f in as_completed(futures):
                bar.update(f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _store(root: Path) -> Store:
    return Store(root, "data cache", "set data.cache_dir (or MTL_CACHE_DIR) to a writable folder", DataError,
                 space_fix=AGAIN_FIX)


def _open_images(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A writable uint8 ``.npy`` map of ``shape`` whose blocks are all allocated before any is written:
    a filesystem without room for it fails here (ENOSPC), never later as a SIGBUS in a page of the map."""
    need = int(np.prod(shape))
    ensure_space(path, need, fix=AGAIN_FIX)
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # one that cannot reserve: the check above must do
            raise OSError(e.errno, e.strerror, str(path)) from None
    return images


def _build(store: Store, tmp: Path, entry: Path, index: SplitIndex, progress: bool) -> None:
    """Decode ``index`` into the empty folder ``tmp``, which the store then publishes as ``entry``."""
    n, s = index.num_images, index.image_size
    started = time.time()
    log.info("decoding %s/%s (%d images, %d px) from %s into %s",
             index.dataset, index.split, n, s, index.source, entry)
    images = store.writable(lambda: _open_images(tmp / "images.npy", (n, 3, s, s)))
    decode_into(index.decoder, images, progress, f"{index.dataset}/{index.split}")
    store.writable(images.flush)
    del images  # unmap before the folder is published
    meta = {
        "dataset": index.dataset,
        "split": index.split,
        "image_size": s,
        "class_names": list(index.class_names),
        "counts": [int(c) for c in index.counts],
        "offsets": offsets_of(index.counts).tolist(),
        "fingerprint": index.fingerprint,
        "format_version": FORMAT_VERSION,
        "source": index.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "decode_seconds": round(time.time() - started, 3),
    }

    def write() -> None:
        with atomic_path(tmp / "labels.npy") as labels:
            np.save(labels, labels_of(index.counts))
        write_json_atomic(tmp / "meta.json", meta)

    store.writable(write)
    log.info("cached %s/%s in %.1f s", index.dataset, index.split, time.time() - started)


def _read_entry(entry: Path, index: SplitIndex) -> Split:
    def damaged(why: str) -> DataError:
        return DataError(f"data cache entry {entry} is damaged ({why}); delete that folder to rebuild it")

    try:
        meta = json.loads((entry / "meta.json").read_text())
        images = np.load(entry / "images.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy")
    except (OSError, ValueError) as e:
        raise damaged(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    n, s = index.num_images, index.image_size
    if meta.get("fingerprint") != index.fingerprint:
        raise damaged("its fingerprint does not match its name")
    if meta.get("class_names") != list(index.class_names) or meta.get("counts") != list(index.counts):
        raise damaged("its class list differs from the source's")
    if images.dtype != np.uint8 or images.shape != (n, 3, s, s):
        raise damaged(f"images.npy is {images.dtype} {images.shape}, expected uint8 {(n, 3, s, s)}")
    if labels.shape != (n,):
        raise damaged(f"labels.npy has shape {labels.shape}, expected {(n,)}")
    return Split(
        images=torch.from_numpy(np.array(images)),  # copy out of the read-only map (module doc)
        labels=torch.from_numpy(labels.astype(np.int64, copy=False)),
        offsets=torch.from_numpy(offsets_of(index.counts)),
        class_names=list(index.class_names),
        fingerprint=index.fingerprint,
    )
