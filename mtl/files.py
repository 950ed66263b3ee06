"""The one atomic writer: every file the project writes goes through :func:`atomic_path`.

A write goes to a temporary sibling, which is flushed and ``fsync``-ed, renamed over the
target with ``os.replace`` and made durable by an ``fsync`` of the parent folder. A crash,
a power loss or an NFS client dying mid-write therefore leaves the old file or the new one,
never a truncated one. A failed write removes its temporary; only a killed process or a
power loss can leave a ``.<name>.tmp-*`` sibling behind, which nothing ever reads.

New files get the ordinary mode ``0o666 & ~umask``: the temporary is created with
``os.open(..., 0o666)``, so the kernel applies the umask (and any default ACL) itself and
the umask never has to be read or changed. (``tempfile.mkstemp`` would make them 0600.)
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# errors of filesystems that cannot fsync a folder; a directory fsync is best effort
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EPERM, errno.EISDIR}


def fsync_dir(folder: str | Path) -> None:
    """Make the entries of ``folder`` (creations, renames) durable; ignored where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        if e.errno in _NO_DIR_FSYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """``fsync`` every file and folder under ``folder`` (itself included), deepest first."""
    for top, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            p = Path(top, name)
            if not p.is_symlink():
                _fsync_file(p)
        fsync_dir(top)


def _reserve(path: Path) -> Path:
    """Create an empty, uniquely named sibling of ``path`` (mode 0o666 & ~umask)."""
    while True:
        # keep the suffix: np.save appends ".npy" to a name that lacks it
        tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(6)}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path for a writer (``torch.save``, ``np.save``, ``open``) to fill.

    When the block ends normally the temporary is fsync-ed and replaces ``path``, and the
    parent folder is fsync-ed; when it raises, the temporary is removed and ``path`` is left
    as it was. The temporary exists (empty) on entry; the writer may truncate or overwrite it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see the module doc)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (unknown types via ``str``) atomically and durably."""
    write_text_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")


def check_writable_dir(path: str | Path, what: str, fix: str) -> None:
    """Refuse (ConfigError, one line) a ``path`` that can never hold our files: one that is a file,
    lies under a file, or whose nearest existing folder cannot be written. Creates nothing: the
    probe is an anonymous temporary file in that folder (it also finds read-only mounts, which
    ``os.access`` misses for root)."""
    import tempfile

    from mtl.errors import ConfigError

    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder; {fix}")
    folder = path
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{what} {path} lies under the file {folder}; {fix}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {path} is not writable ({folder}: {e.strerror or e}); {fix}") from None
