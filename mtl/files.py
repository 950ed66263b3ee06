"""The one atomic writer: every file the project writes goes through :func:`atomic_path`.

A write goes to a temporary sibling, which is flushed and ``fsync``-ed, renamed over the
target with ``os.replace`` and made durable by an ``fsync`` of the parent folder. A crash,
a power loss or an NFS client dying mid-write therefore leaves the old file or the new one,
never a truncated one. A failed write removes its temporary; only a killed process or a
power loss can leave a ``.<name>.tmp-*`` sibling behind, which nothing ever reads.

A full filesystem (``ENOSPC``, or ``EDQUOT`` for a quota) is :class:`mtl.errors.DiskFull`, one line
naming the path, the space the write needed (where known) and the space left: a writer that knows
its size (:func:`write_bytes_atomic`, ``atomic_path(path, size=...)``) is refused before it writes
anything; any other write is caught where it fails, and its temporary removed. The few writes that
cannot be atomic (:func:`append_text`) undo a partial write. :func:`on_disk_full` turns the disk-full
errors of code we do not own (an ``OSError``, SQLite's "database or disk is full") into the same line.

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

from mtl.errors import DiskFull

# errors of filesystems that cannot fsync a folder; a directory fsync is best effort
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EPERM, errno.EISDIR}
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RESUME_FIX = "free some space and run again with --resume"  # a write of a run or sweep that had started
AGAIN_FIX = "free some space and run the same command again"  # a write before anything was started
# how libraries we do not own say it when they drop the errno (SQLite, pyarrow, torch's writer)
_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def free_bytes(path: str | Path) -> int | None:
    """Bytes this process may still write on the filesystem of ``path`` (or of its nearest existing
    folder): the blocks available to unprivileged users, all free blocks for root. None if unknown."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def size_text(n: int) -> str:
    """``48.2 MB`` (decimal units)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError  # pragma: no cover


def disk_full(path: str | Path, need: int | None = None, *, fix: str = RESUME_FIX, quota: bool = False,
              free: int | None = None) -> DiskFull:
    """The one-line error of a write to ``path`` that found no space (``need``: bytes it needed,
    if known). ``free``: the space there was for it; by default measured now, so call this once the
    failed write is cleaned up and before anything else is removed."""
    path = Path(path).absolute()
    needs = f"it needs {size_text(need)}" if need is not None else ""
    if quota:
        what = f"disk quota exceeded on {path}" + (f": {needs}" if needs else "")
    else:
        free = free_bytes(path) if free is None else free
        has = f"the filesystem has {size_text(free)} free" if free is not None else ""
        what = f"no space left on {path}" + (f": {', '.join(x for x in (needs, has) if x)}" if needs or has else "")
    err = DiskFull(f"{what}; {fix}")
    err.path, err.need, err.quota, err.free = path, need, quota, free
    return err


FULL_BELOW = 1 << 20  # a filesystem with less free than this is full for :func:`disk_full_of`'s ``infer``


def disk_full_of(error: BaseException, *paths: str | Path, fix: str = RESUME_FIX, need: int | None = None,
                 infer: bool = False) -> DiskFull | None:
    """``error`` (or an error it was raised from) as :class:`DiskFull` if it says that a filesystem is
    full, else None. It names the error's own file if it has one, else the one of ``paths`` (where the
    failed code writes; the first if their filesystems have the same room) whose filesystem has the
    least space left (for SQLite's "database or disk is full": the SQLite database among them).
    ``need``: the bytes the failed write needed, if known. ``infer``: an error that says nothing
    about space (a library that read back a file it could not finish, say) counts too when the
    least room of ``paths`` is under :data:`FULL_BELOW`; its own words are kept in brackets."""
    room = {Path(p): free_bytes(p) for p in paths}
    fullest = min(room, key=lambda p: room[p] if room[p] is not None else 1 << 62) if room else Path.cwd()
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFull):
            return e
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return disk_full(e.filename or fullest, need, fix=fix, quota=e.errno == errno.EDQUOT)
        text = str(e).lower()
        if any(t in text for t in _FULL_TEXTS):
            dbs = [p for p in room if _is_sqlite(p)] if _FULL_TEXTS[0] in text else []  # SQLite's words: its file
            return disk_full(dbs[0] if dbs else fullest, need, fix=fix, quota="quota" in text)
        e = e.__cause__ or e.__context__
    free = room.get(fullest)
    if infer and free is not None and free < FULL_BELOW:
        words = (str(error).strip().splitlines() or [""])[0][:120]
        full = disk_full(fullest, need, fix=fix, free=free)
        full.args = (str(full).replace("; ", f" ({type(error).__name__}: {words}); ", 1),)
        return full
    return None


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


@contextmanager
def on_disk_full(*paths: str | Path, fix: str = RESUME_FIX, need: int | None = None) -> Iterator[None]:
    """Turn a disk-full error raised in the block (:func:`disk_full_of` of ``paths``) into :class:`DiskFull`."""
    try:
        yield
    except Exception as e:
        full = disk_full_of(e, *paths, fix=fix, need=need)
        if full is None or full is e:
            raise
        raise full from None


def ensure_space(path: str | Path, need: int, fix: str = RESUME_FIX) -> None:
    """Refuse (:class:`DiskFull`) to write ``need`` bytes to ``path`` where its filesystem has less free."""
    free = free_bytes(Path(path).parent)
    if free is not None and free < need:
        raise disk_full(path, need, fix=fix, free=free)


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
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """A temporary path for a writer (``np.save``, ``open``; one that reports a full disk as an
    ``OSError``) to fill.

    When the block ends normally the temporary is fsync-ed and replaces ``path``, and the
    parent folder is fsync-ed; when it raises, the temporary is removed and ``path`` is left
    as it was. The temporary exists (empty) on entry; the writer may truncate or overwrite it.
    ``size``: the bytes the writer will write, if known; a filesystem with less free space is
    refused first. A full disk, at any step, is :class:`~mtl.errors.DiskFull` (module doc).
    """
    path = Path(path)
    with on_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            ensure_space(path, size)
        tmp = _reserve(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            raise disk_full(path, size, quota=e.errno == errno.EDQUOT) from None
        raise
    with on_disk_full(path):
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically and durably (see the module doc)."""
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` and fsync it: the one kind of write that is not atomic.
    A write that fails (a full disk: :class:`~mtl.errors.DiskFull`) is cut off again, so the file
    never ends in a partial line."""
    path, data = Path(path), text.encode("utf-8")
    ensure_space(path, len(data))
    with on_disk_full(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException as e:
            os.ftruncate(fd, start)
            if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
                raise disk_full(path, len(data), quota=e.errno == errno.EDQUOT) from None
            raise
    finally:
        os.close(fd)


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
        if e.errno in FULL_ERRNOS:
            raise disk_full(folder, fix=AGAIN_FIX, quota=e.errno == errno.EDQUOT) from None
        raise ConfigError(f"{what} {path} is not writable ({folder}: {e.strerror or e}); {fix}") from None
