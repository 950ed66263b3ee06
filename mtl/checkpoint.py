"""One checkpoint format: a dict of tensors and plain values, written atomically, read with
``torch.load(weights_only=True)`` so loading a checkpoint cannot execute code."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mtl.errors import CheckpointError, shown
from mtl.files import write_bytes_atomic

FORMAT = 1
# entries every checkpoint of a kind holds (what evaluate, predict and resume read)
REQUIRED = {"meta": ("config", "current", "best_state", "epoch")}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus a format tag) to ``path`` atomically and durably (:func:`mtl.files.write_bytes_atomic`):
    a crash or power loss leaves the old file intact. It is serialised in memory first, so its size is
    known before anything is written: a filesystem without room for it is one line (:class:`~mtl.errors.DiskFull`),
    not torch's failed write."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    write_bytes_atomic(path, buf.getbuffer())


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
        raise CheckpointError(f"checkpoint {path} is corrupt or not an mtl checkpoint ({_reason(e)})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mtl checkpoint (format {FORMAT})")
    if kind is not None and ck.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {shown(ck.get('kind'))} checkpoint, expected {kind!r}")
    missing = [k for k in REQUIRED.get(kind or "", ()) if k not in ck]
    if missing:
        raise CheckpointError(f"{path} is not a complete mtl {kind} checkpoint (it lacks {', '.join(missing)}); "
                              "give the meta_state.pt of a run or a sweep's best/meta_state.pt")
    return ck


def nonfinite(tree: Any, name: str = "") -> str | None:
    """The dotted name of the first floating-point tensor holding NaN or inf in ``tree`` (nested
    mappings and lists of tensors), else None."""
    if isinstance(tree, torch.Tensor):
        return name if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = nonfinite(value, f"{name}.{key}" if name else str(key))
        if found:
            return found
    return None


def _reason(e: Exception) -> str:
    """torch's error in a few words. Its weights-only refusal is reduced to what the file holds: its
    advice to reload with ``weights_only=False`` would run the file's code, which this format forbids."""
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds a Python object{what} besides tensors and plain values; loading it could run code"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]
