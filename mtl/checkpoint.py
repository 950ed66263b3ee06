"""One checkpoint format: a dict of tensors and plain values, written atomically, read with
``torch.load(weights_only=True)`` so loading a checkpoint cannot execute code."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mtl.errors import CheckpointError
from mtl.files import atomic_path

FORMAT = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus a format tag) to ``path`` atomically and durably (:func:`mtl.files.atomic_path`):
    a crash or power loss leaves the old file intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint; a missing, corrupt or foreign file is a CheckpointError.

    ``kind`` ("pretrain" or "meta") is checked against the checkpoint's own ``kind`` entry.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not an mtl checkpoint ({msg[:200]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mtl checkpoint (format {FORMAT})")
    if kind is not None and ck.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {ck.get('kind')!r} checkpoint, expected {kind!r}")
    return ck
