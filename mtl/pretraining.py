"""The pretraining store: one pretraining per distinct pretraining setup, reused by every trial and run.

Pretraining does not depend on the meta-transfer hyperparameters, so trials that agree on the
dataset and on every pretraining field share one pre-trained backbone. The entry's key hashes
the dataset fingerprint and those fields (:func:`pretrain_key`). Entries live under the sweep's
storage path, so trials on other nodes find them when the storage is shared (NFS).

Concurrency (:class:`mtl.store.Store`): a file lock per key makes exactly one process build an
entry while the others wait for it. The builder keeps its resumable state in ``<key>.partial/``
(a crashed builder's successor continues from it) and the store publishes the finished entry
(``backbone.pt``, ``info.json``) by renaming a complete, fsynced temporary folder to ``<key>/``:
an entry either exists whole or not at all. Every finished build adds a line to ``builds.log``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.claim import Lock
from mtl.config import Config, pretraining_keys
from mtl.data import dataset_fingerprint
from mtl.files import write_json_atomic, write_text_atomic
from mtl.store import Store

log = logging.getLogger(__name__)

# marked fields whose influence reaches the key through the dataset's content fingerprint instead:
# the same data under another path is the same pretraining
VIA_FINGERPRINT = ("data.root",)


def pretrain_key(cfg: Config, dataset_fp: str | None = None) -> str:
    """Hash of the dataset's content fingerprint and every field the config marks as changing
    what pretraining produces (:func:`mtl.config.pretraining_keys`)."""
    fields = {k: cfg.get(k) for k in sorted(pretraining_keys()) if k not in VIA_FINGERPRINT}
    payload = json.dumps({"dataset": dataset_fp or dataset_fingerprint(cfg.data), "fields": fields}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]



@dataclass(frozen=True)
class Entry:
    key: str
    path: Path  # the published entry folder
    state: dict[str, torch.Tensor]  # the selected backbone weights
    val_acc: float | None  # pretraining probe accuracy of that backbone
    status: str  # "built" (by this process) or "hit"


SWEEP_FIX = "give the sweep a writable storage path"  # what to do about an unwritable cache, per caller
RUN_FIX = "set data.cache_dir (or $MTL_CACHE_DIR) to a writable folder"


class PretrainCache:
    def __init__(self, root: str | Path, fix: str = SWEEP_FIX) -> None:
        self.root = Path(root)
        self.store = Store(self.root, "pretraining cache", fix,
                           complete=lambda entry: (entry / "backbone.pt").is_file())

    def entry_dir(self, key: str) -> Path:
        return self.store.path(key)

    def lookup(self, key: str) -> Entry | None:
        d = self.store.get(key)
        return None if d is None else _hit(key, d)

    def get_or_build(self, cfg: Config, build: Callable[[Path], dict[str, Any]], who: str = "",
                     dataset_fp: str | None = None) -> Entry:
        """The entry for ``cfg``; if missing, ``build(state_path)`` makes it (one builder at a time).

        ``build`` gets the path of its resumable state file (in ``<key>.partial/``) and returns a
        ``backbone`` checkpoint payload (:meth:`mtl.phases.pretrain.Pretrainer.backbone_payload`).
        """
        key = pretrain_key(cfg, dataset_fp)
        if (hit := self.lookup(key)) is not None:
            return hit
        built: dict[str, Any] = {}

        def fill(tmp: Path, work: Path) -> None:
            self.store.writable(lambda: work.mkdir(exist_ok=True))
            start = time.time()
            log.info("building pretraining entry %s", key)
            payload = build(work / "pretrain_state.pt")
            save_checkpoint(tmp / "backbone.pt", {**payload, "pretrain_key": key})
            info = {"key": key, "val_acc": payload.get("val_acc"), "epoch": payload.get("epoch"),
                    "built_by": who, "host": socket.gethostname(), "pid": os.getpid(),
                    "seconds": round(time.time() - start, 1), "config": cfg.to_dict()}
            write_json_atomic(tmp / "info.json", info)
            built.update(payload=payload, info=info)

        path, by_us = self.store.get_or_build(key, fill)
        if not by_us:  # another process built it while this one waited
            return _hit(key, path)
        self._log_build({k: built["info"][k] for k in ("key", "built_by", "host", "pid", "seconds")})
        payload = built["payload"]
        return Entry(key, path, payload["state"], payload.get("val_acc"), "built")

    def _log_build(self, line: dict[str, Any]) -> None:
        """Append ``line`` to ``builds.log``: rewritten whole by the atomic writer, under a lock
        (builders of different keys run at the same time)."""
        log_file = self.root / "builds.log"
        with Lock(self.root / "builds.log.lock"):
            old = log_file.read_text() if log_file.is_file() else ""
            write_text_atomic(log_file, old + json.dumps(line) + "\n")


def _hit(key: str, d: Path) -> Entry:
    ck = load_checkpoint(d / "backbone.pt", "backbone")
    return Entry(key, d, ck["state"], ck.get("val_acc"), "hit")
