"""One store of entries built once and shared: the data cache and the pretraining cache.

An entry is a folder ``<root>/<key>/``. Building is single-flight and crash-safe: the
builder holds ``<root>/<key>.lock`` (an flock, :class:`mtl.claim.Lock`, so it works across
processes and threads; the file is removed when the build ends, whatever its outcome), fills
a private ``<root>/.<key>.tmp-<random>/``, writes the completion marker ``COMPLETE`` last,
fsyncs the whole folder, renames it to ``<key>/`` and fsyncs the root.
The rename is the publish step: a folder under a key's name is always complete and is read
without the lock; readers never see partial content, even after a power loss.

Others wait on the lock, then read what the builder made. A builder that wants resumable
state across crashes keeps it in ``<root>/<key>.partial/`` (created by the builder itself,
removed once the entry is published). Temporary folders of a crashed builder of the same
key are removed by the next builder.

A full disk (:class:`~mtl.errors.DiskFull`, in the builder's writes or the store's own) removes
the entry's temporary folder and its ``<key>.partial/`` work folder too, so the space is free again
and nothing of the entry is left, and the error names the entry's file that found no room.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mtl.claim import Lock
from mtl.errors import MTLError
from mtl.files import FULL_ERRNOS, RESUME_FIX, disk_full, disk_full_of, fsync_dir, fsync_tree, write_json_atomic

log = logging.getLogger(__name__)
T = TypeVar("T")

MARKER = "COMPLETE"  # written last into a finished entry: {"key", "created", "host", "pid"}


def has_marker(entry: Path) -> bool:
    return (entry / MARKER).is_file()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class Store:
    """Entries under ``root``; ``what`` ("data cache") and ``fix`` (what the user should do
    when ``root`` cannot be written) make the ``error`` raised for an unwritable root;
    ``space_fix``: what to do when its filesystem is full (:class:`~mtl.errors.DiskFull`).

    A published folder is usable when it holds the completion marker.
    """

    def __init__(self, root: str | Path, what: str, fix: str, error: type[MTLError] = MTLError,
                 space_fix: str = RESUME_FIX) -> None:
        self.root, self.what, self.fix, self.error = Path(root), what, fix, error
        self.space_fix = space_fix

    def path(self, key: str) -> Path:
        """The published entry folder of ``key`` (it may not exist)."""
        return self.root / key

    def work_dir(self, key: str) -> Path:
        """Where a builder of ``key`` may keep state that survives its crash (not created here)."""
        return self.root / f"{key}.partial"

    def get(self, key: str) -> Path | None:
        """The entry of ``key`` if it is published and complete, else None; never locks or raises."""
        entry = self.path(key)
        try:
            return entry if entry.is_dir() and has_marker(entry) else None
        except OSError:
            return None

    def get_or_build(self, key: str, build: Callable[[Path, Path], None]) -> tuple[Path, bool]:
        """The entry of ``key`` and whether this call built it.

        If there is none, ``build(tmp_dir, work_dir)`` fills the existing, empty ``tmp_dir``
        with it (one builder per key at a time; the others wait and then read its result).
        ``work_dir`` is :meth:`work_dir`. If ``build`` raises, nothing is published.
        """
        if (entry := self.get(key)) is not None:
            return entry, False
        self.writable(lambda: self.root.mkdir(parents=True, exist_ok=True))
        lock = Lock(self.root / f"{key}.lock")
        if not self.writable(lambda: lock.acquire(blocking=False)):
            log.info("%s entry %s is being built by another process; waiting", self.what, key)
            self.writable(lock.acquire)
        try:
            if (entry := self.get(key)) is not None:  # somebody finished it while we waited
                return entry, False
            self._remove_stale(key)
            tmp = self.root / f".{key}.tmp-{secrets.token_hex(6)}"
            self.writable(tmp.mkdir)
            try:
                build(tmp, self.work_dir(key))
                self.writable(lambda: self._publish(key, tmp))
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)
                full = disk_full_of(e, self.path(key)) if isinstance(e, Exception) else None
                if full is None:
                    raise
                shutil.rmtree(self.work_dir(key), ignore_errors=True)  # its state is no use without room
                where = Path(full.path or self.path(key)).absolute()
                if where.is_relative_to(tmp.absolute()):  # name the entry's file, not the temporary's
                    where = self.path(key).absolute() / where.relative_to(tmp.absolute())
                raise disk_full(where, full.need, fix=self.space_fix, quota=full.quota, free=full.free) from None
            shutil.rmtree(self.work_dir(key), ignore_errors=True)
            return self.path(key), True
        finally:
            lock.release()

    def writable(self, action: Callable[[], T]) -> T:
        """Run ``action``; an OSError becomes the store's "cannot write" error (for builders' writes too),
        or :class:`~mtl.errors.DiskFull` where the filesystem is full."""
        try:
            return action()
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                raise disk_full(e.filename or self.root, fix=self.space_fix, quota=e.errno == errno.EDQUOT) from None
            raise self.error(f"cannot write the {self.what} at {self.root} ({e.strerror or e}); {self.fix}") from None

    def _remove_stale(self, key: str) -> None:
        for stale in self.root.glob(f".{key}.tmp-*"):  # from crashed builders
            log.info("removing %s left by an interrupted build", stale)
            _remove(stale)
        entry = self.path(key)
        if entry.exists() or entry.is_symlink():  # something under the key's name that is not complete
            log.warning("replacing %s entry %s: it is not complete", self.what, entry)
            aside = self.root / f".{key}.tmp-incomplete-{secrets.token_hex(6)}"
            self.writable(lambda: os.rename(entry, aside))
            _remove(aside)

    def _publish(self, key: str, tmp: Path) -> None:
        write_json_atomic(tmp / MARKER, {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                         "host": socket.gethostname(), "pid": os.getpid()})
        fsync_tree(tmp)
        os.rename(tmp, self.path(key))
        fsync_dir(self.root)
