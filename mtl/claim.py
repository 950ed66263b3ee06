"""Exclusive claims and locks on files that can be removed when they are let go.

:class:`Lock` is an exclusive ``flock`` on a lock file, released by removing the file while still
holding it. A process that opened the file just before that removal then holds a lock on a file
that is no longer there; it sees so (the inode under the name differs from the one it locked) and
tries again, so the exclusion holds across removals and no lock file outlives its use. The kernel
drops the lock of a dead process, so a lock file a killed holder left behind is simply locked again.

:class:`Claim` is such a lock on ``<folder>/.<name>.claim`` beside a folder that one process at
a time may write, plus ``<folder>/.<name>.owner.json`` (host, pid, since: written by the holder)
so that a refused process can say who holds it. It is taken before the "does it exist / resume"
check and held to the end, so that check and what follows are one atomic step. Both files sit
beside the folder, not in it (Ray Tune stages and uploads a sweep folder's contents: a restore
must never bring back another process's claim). A parent folder the claim had to create is
removed again if nothing else was put in it. :class:`SweepClaim`: one driver per sweep name;
:class:`RunClaim`: one writer per ``python -m mtl train --out`` folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from mtl.errors import ConfigError, MTLError
from mtl.files import AGAIN_FIX, disk_full, disk_full_of, write_json_atomic


class Lock:
    """``with Lock(path):`` holds an exclusive lock on ``path`` (created if missing) and removes
    the file when done (module doc). ``acquire(blocking=False)`` returns whether it got it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> bool:
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:  # Ctrl+C while waiting
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # the holder removed the file after we opened it: lock the one there now
                os.close(fd)
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked (module doc)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Lock:  # noqa: PYI034 (no subclass needs its own type here)
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Claim:
    """``with Claim(folder):`` holds the claim on ``folder`` for the block (module doc); a second
    claim while it is held raises the error of :meth:`busy`. Subclasses word the errors."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder).absolute()
        self.folder, self.parent = folder, folder.parent
        self.lock = Lock(self.parent / f".{folder.name}.claim")
        self.owner_path = self.parent / f".{folder.name}.owner.json"
        self._made: list[Path] = []  # the folders acquire created, deepest first

    def busy(self, owner: str) -> MTLError:
        """The error for a claim that another process holds (``owner``: :meth:`owner`)."""
        return ConfigError(f"{self.folder} is in use ({owner}); wait for it to end or stop it first")

    def cannot(self, reason: str) -> MTLError:
        """The error for a claim that cannot be made (``reason``: the OSError's words)."""
        return ConfigError(f"cannot claim {self.folder} ({reason}); point it at a writable folder")

    def acquire(self) -> None:
        try:
            self._made = _missing(self.parent)
            self.parent.mkdir(parents=True, exist_ok=True)
            if not self.lock.acquire(blocking=False):
                raise self.busy(self.owner())
            write_json_atomic(self.owner_path, {"host": socket.gethostname(), "pid": os.getpid(),
                                                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except BaseException as e:
            self.release()
            full = disk_full_of(e, self.owner_path) if isinstance(e, Exception) else None
            if full is not None:  # nothing was started: the same command again, once there is room
                raise disk_full(full.path or self.owner_path, full.need, fix=AGAIN_FIX, quota=full.quota,
                                free=full.free) from None
            if isinstance(e, OSError):
                raise self.cannot(e.strerror or str(e)) from None
            raise

    def release(self) -> None:
        if self.lock.held:
            try:
                self.owner_path.unlink(missing_ok=True)
            finally:
                self.lock.release()
        made, self._made = self._made, []
        for folder in made:  # also after a failed acquire: the folders it created go too
            try:
                folder.rmdir()  # only if empty: nothing was written
            except OSError:
                break

    def owner(self) -> str:
        """'claimed by host:pid since T', as far as the holder wrote it down."""
        try:
            info: Any = json.loads(self.owner_path.read_text())
            return f"claimed by {info['host']}:{info['pid']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "claimed by a process that has not written its name yet"

    def __enter__(self) -> Claim:  # noqa: PYI034 (the subclasses' type is not needed)
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SweepClaim(Claim):
    """``with SweepClaim(storage, name):`` holds the claim on the sweep ``<storage>/<name>``: one
    driver per sweep name, from the check of what the storage holds to the end."""

    def __init__(self, storage: str | Path, name: str) -> None:
        super().__init__(Path(storage) / name)
        self.storage, self.name = Path(storage), name

    def busy(self, owner: str) -> MTLError:
        return ConfigError(f"sweep {self.name!r} is running under {self.storage} ({owner}); wait for it to end or "
                           "stop it first, or --set name=<new name> to start another")

    def cannot(self, reason: str) -> MTLError:
        return ConfigError(f"cannot claim sweep {self.name!r} in storage {self.storage} ({reason}); "
                           "point --storage at a writable folder")


class RunClaim(Claim):
    """``with RunClaim(out):`` holds the claim on a run folder: one ``python -m mtl train`` writes
    into ``--out`` at a time; a killed run's claim is taken over by the next (its ``--resume``)."""

    def busy(self, owner: str) -> MTLError:
        return ConfigError(f"--out {self.folder} is being written by another run ({owner}); wait for it to end "
                           "or stop it first, or choose another --out")

    def cannot(self, reason: str) -> MTLError:
        return ConfigError(f"cannot claim --out {self.folder} ({reason}); choose another --out folder")


def _missing(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    out = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

