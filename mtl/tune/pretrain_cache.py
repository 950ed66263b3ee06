"""The shared pretraining cache: one pretraining per distinct pretraining setup, reused by every trial.

Pretraining does not depend on the meta-transfer hyperparameters, so trials that agree on the
dataset and on every pretraining field share one pre-trained backbone. The entry's key hashes
the dataset fingerprint and those fields (:func:`pretrain_key`). Entries live under the sweep's
storage path, so trials on other nodes find them when the storage is shared (NFS).

Concurrency: a file lock per key makes exactly one process build an entry while the others
wait for it. The builder keeps its resumable state in ``<key>.partial/`` (a crashed builder's
successor continues from it) and publishes the finished entry by renaming a complete
temporary folder to ``<key>/``: an entry either exists whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.config import Config
from mtl.data import dataset_fingerprint
from mtl.runtime import Env
from mtl.typed import dotted

log = logging.getLogger(__name__)

# Config fields that change what pretraining produces (prefixes end with a dot).
PRETRAIN_FIELDS = ("data.dataset", "data.image_size", "data.normalization", "data.synthetic.", "model.backbone",
                   "pretrain.", "runtime.seed", "runtime.precision", "runtime.channels_last", "eval.seed")


def affects_pretraining(key: str) -> bool:
    """Whether searching ``key`` gives trials different pretraining entries."""
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in PRETRAIN_FIELDS) or key == "data.root"


def pretrain_key(cfg: Config, dataset_fp: str | None = None) -> str:
    """Hash of the dataset's content fingerprint and every field in :data:`PRETRAIN_FIELDS`."""
    flat = dotted(cfg.to_dict())
    fields = {k: v for k, v in sorted(flat.items()) if affects_pretraining(k) and k != "data.root"}
    payload = json.dumps({"dataset": dataset_fp or dataset_fingerprint(cfg.data), "fields": fields}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]




@dataclass(frozen=True)
class Entry:
    key: str
    path: Path  # the published entry folder
    state: dict[str, torch.Tensor]  # the selected backbone weights
    val_acc: float | None  # pretraining probe accuracy of that backbone
    status: str  # "built" (by this process) or "hit"


class PretrainCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry_dir(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Entry | None:
        d = self.entry_dir(key)
        if not (d / "backbone.pt").is_file():
            return None
        ck = load_checkpoint(d / "backbone.pt", "backbone")
        return Entry(key, d, ck["state"], ck.get("val_acc"), "hit")

    def get_or_build(self, cfg: Config, build: Callable[[Path], dict[str, Any]], who: str = "",
                     dataset_fp: str | None = None) -> Entry:
        """The entry for ``cfg``; if missing, ``build(state_path)`` makes it (one builder at a time).

        ``build`` gets the path of its resumable state file and returns a ``backbone`` checkpoint
        payload (:meth:`mtl.phases.pretrain.Pretrainer.backbone_payload`).
        """
        key = pretrain_key(cfg, dataset_fp)
        if (hit := self.lookup(key)) is not None:
            return hit
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / f"{key}.lock"))
        if lock.is_locked:
            log.info("pretraining %s is being built by another trial; waiting", key)
        with lock:
            if (hit := self.lookup(key)) is not None:
                return hit
            work = self.root / f"{key}.partial"
            work.mkdir(exist_ok=True)
            start = time.time()
            log.info("building pretraining entry %s", key)
            payload = build(work / "pretrain_state.pt")
            tmp = self.root / f".{key}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_checkpoint(tmp / "backbone.pt", {**payload, "pretrain_key": key})
            info = {"key": key, "val_acc": payload.get("val_acc"), "epoch": payload.get("epoch"),
                    "built_by": who, "host": socket.gethostname(), "pid": os.getpid(),
                    "seconds": round(time.time() - start, 1), "config": cfg.to_dict()}
            (tmp / "info.json").write_text(json.dumps(info, indent=1))
            os.rename(tmp, self.entry_dir(key))  # atomic publish
            shutil.rmtree(work, ignore_errors=True)
            with (self.root / "builds.log").open("a") as f:
                f.write(json.dumps({k: info[k] for k in ("key", "built_by", "host", "pid", "seconds")}) + "\n")
            return Entry(key, self.entry_dir(key), payload["state"], payload.get("val_acc"), "built")


def build_with(cfg: Config, env: Env, data: dict[str, Any], report: Callable[[dict[str, Any]], None] | None = None):
    """A ``build`` callable for :meth:`PretrainCache.get_or_build` that pretrains on ``data``."""
    from mtl.experiment import pretrain

    def build(state_path: Path) -> dict[str, Any]:
        trainer = pretrain(cfg, env, data, state_path, report or (lambda m: log.info(
            "pretrain epoch %d: val_acc=%.4f", m["epoch"], m.get("val_acc", float("nan")))))
        return trainer.backbone_payload()

    return build


def backbone_for(cfg: Config, env: Env, data: dict[str, Any], cache_root: str | Path, who: str = "") -> Entry:
    """The trial's pre-trained backbone: ``pretrain.checkpoint`` when given, else the shared cache."""
    if cfg.pretrain.checkpoint:
        from mtl.experiment import load_backbone

        path = Path(cfg.pretrain.checkpoint)
        return Entry("", path, load_backbone(path, cfg), None, "given")
    return PretrainCache(cache_root).get_or_build(cfg, build_with(cfg, env, data), who=who,
                                                  dataset_fp=data.get("dataset_fingerprint"))
