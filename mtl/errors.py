"""Errors a user can act on.

Every error raised for bad input derives from :class:`MTLError`; the command-line entry
points print its message as a single line and exit with status 2. The message names the
problem and the fix, so it is the whole user interface of a failure. (Training that diverges is
no error but a result: :mod:`mtl.phases.divergence`.)
"""


class MTLError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(MTLError, ValueError):
    """The experiment or sweep configuration is malformed or impossible."""


class DataError(MTLError):
    """A dataset is missing, laid out unexpectedly, or holds unreadable files."""


class CheckpointError(MTLError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


class DiskFull(MTLError):
    """A filesystem we write to is full (ENOSPC) or over its quota (EDQUOT): the message names the
    path, the space the write needed where known and the space left (:func:`mtl.files.disk_full`).
    Whatever the write would have made is removed, so nothing that looks complete is left behind."""

    # what the message says, for code that words it again (None: not known)
    path = None  # the file or folder that found no room
    need: int | None = None  # bytes the write needed
    free: int | None = None  # bytes the filesystem had for it
    quota = False  # EDQUOT: the user's quota, not the filesystem, is full


SHOWN = 200  # characters of a user's value an error line quotes at most


def shown(value: object, limit: int = SHOWN) -> str:
    """``repr(value)`` for an error line, cut to ``limit`` characters and an ellipsis: a value can be
    megabytes long (a pasted file, a long list), and the line must stay one readable line."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]  # its repr is at least as long: cut before building it
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
