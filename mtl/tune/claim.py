"""One driver per sweep name: the claim a launch holds on ``<storage>/<name>`` while it runs.

The claim is an exclusive ``flock`` on ``<storage>/.<name>.claim``, held from before the "does
this sweep exist?" check until the driver exits, so that check and the creation of the sweep's
folder are one atomic step: of two launches of the same name, the second finds the claim taken
and exits 2 naming the host and pid that hold it (``<storage>/.<name>.owner.json``, written by
the holder). The kernel drops the lock of a dead process, so the claim of a crashed or killed
driver is stale by construction and the next launch (a ``--resume``) takes it over.

Both files sit beside the sweep's folder, not in it (Ray Tune stages and uploads the folder's
contents: a restore must never bring back another process's claim), and the holder removes
them when it is done, while it still holds the lock. A launch that opened the file just before
that removal then holds a lock on a file no longer there; it sees so (the inode under the name
differs from the one it locked) and tries again, so the exclusion holds across removals. A
storage folder the claim had to create (and its parents it created) is removed again if nothing else
was put in it, also when the claim failed.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from mtl.errors import ConfigError
from mtl.files import write_json_atomic


class SweepClaim:
    """``with SweepClaim(storage, name):`` holds the sweep's claim for the block."""

    def __init__(self, storage: Path, name: str) -> None:
        self.storage, self.name = Path(storage), name
        self.lock_path = self.storage / f".{name}.claim"
        self.owner_path = self.storage / f".{name}.owner.json"
        self._fd: int | None = None
        self._made: list[Path] = []  # the folders acquire created, deepest first

    def acquire(self) -> None:
        try:
            self._made = _missing(self.storage)
            self.storage.mkdir(parents=True, exist_ok=True)
            while self._fd is None:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise ConfigError(f"sweep {self.name!r} is running under {self.storage} ({self.owner()}); wait "
                                      "for it to end or stop it first, or --set name=<new name> to start another") from None
                if _same_file(fd, self.lock_path):
                    self._fd = fd
                else:  # the holder removed the file after we opened it: lock the one there now
                    os.close(fd)
            write_json_atomic(self.owner_path, {"host": socket.gethostname(), "pid": os.getpid(),
                                                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except OSError as e:
            self.release()
            raise ConfigError(f"cannot claim sweep {self.name!r} in storage {self.storage} ({e.strerror or e}); "
                              "point --storage at a writable folder") from None

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.owner_path.unlink(missing_ok=True)
                self.lock_path.unlink(missing_ok=True)  # while still locked (module doc)
            finally:
                os.close(self._fd)
                self._fd = None
        made, self._made = self._made, []
        for folder in made:  # also after a failed acquire (no fd held): the folders it created go too
            try:
                folder.rmdir()  # only if empty: the sweep wrote nothing
            except OSError:
                break

    def owner(self) -> str:
        """'claimed by host:pid since T', as far as the holder wrote it down."""
        try:
            info: Any = json.loads(self.owner_path.read_text())
            return f"claimed by {info['host']}:{info['pid']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "claimed by a process that has not written its name yet"

    def __enter__(self) -> SweepClaim:  # noqa: PYI034 (a final class)
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
