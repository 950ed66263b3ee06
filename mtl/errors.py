"""Errors a user can act on.

Every error raised for bad input derives from :class:`MTLError`; the command-line entry
points print its message as a single line and exit with status 2 (3 for :class:`Diverged`). The message names the
problem and the fix, so it is the whole user interface of a failure.
"""


class MTLError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(MTLError, ValueError):
    """The experiment or sweep configuration is malformed or impossible."""


class DataError(MTLError):
    """A dataset is missing, laid out unexpectedly, or holds unreadable files."""


class CheckpointError(MTLError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


class Diverged(MTLError):
    """Training diverged: a loss became non-finite (learning rates too high for the setup).

    ``python -m mtl train`` exits with status 3 on it, not 2: the input was valid, the run is its
    result."""


SHOWN = 200  # characters of a user's value an error line quotes at most


def shown(value: object, limit: int = SHOWN) -> str:
    """``repr(value)`` for an error line, cut to ``limit`` characters and an ellipsis: a value can be
    megabytes long (a pasted file, a long list), and the line must stay one readable line."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]  # its repr is at least as long: cut before building it
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
