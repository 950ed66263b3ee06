"""Where a trial's pre-trained backbone comes from: a given file, or the pretraining store.

Pretraining does not depend on the meta-transfer hyperparameters, so trials that agree on the
dataset and on every pretraining field share one pre-trained backbone. The store's key hashes the
dataset fingerprint and those fields (:func:`pretrain_key`). A sweep's entries live under its
storage path, so trials on other nodes find them when the storage is shared (NFS); a single run's
beside the decoded-image cache (:func:`pretrain_store`).

Concurrency (:class:`mtl.store.Store`): a file lock per key makes exactly one process build an
entry while the others wait for it. The builder keeps its resumable state in ``<key>.partial/``
(a crashed builder's successor continues from it) and the store publishes the finished entry
(``backbone.pt``, ``info.json``) by renaming a complete, fsynced temporary folder to ``<key>/``:
an entry either exists whole or not at all. Every finished build adds a line to ``builds.log``.

A backbone travels with its reference (:class:`Backbone`): content hash, store key, where it came
from. A meta checkpoint records that reference, and :func:`standalone` puts the weights back into
it, from the store or the given file, for ``python -m mtl evaluate``, ``predict`` and a sweep's
winner.
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
from mtl.data.cache import cache_dir
from mtl.episodes import bank_seed
from mtl.errors import CheckpointError
from mtl.files import write_json_atomic, write_text_atomic
from mtl.phases.divergence import Divergence
from mtl.phases.pretrain import Pretrainer
from mtl.runtime import Env
from mtl.store import Store

log = logging.getLogger(__name__)

# marked fields whose influence reaches the key through the dataset's content fingerprint instead:
# the same data under another path is the same pretraining
VIA_FINGERPRINT = ("data.root",)
SWEEP_FIX = "give the sweep a writable storage path"  # what to do about an unwritable cache, per caller
RUN_FIX = "set data.cache_dir (or $MTL_CACHE_DIR) to a writable folder"
# report(metrics, checkpoint) of a trial (mtl.trial.Report); pretraining epochs come with no checkpoint
Report = Callable[[dict[str, Any], "dict[str, Any] | None"], None]


def pretrain_key(cfg: Config, dataset_fp: str | None = None) -> str:
    """Hash of the dataset's content fingerprint and every field the config marks as changing
    what pretraining produces (:func:`mtl.config.pretraining_keys`)."""
    fields = {k: cfg.get(k) for k in sorted(pretraining_keys()) if k not in VIA_FINGERPRINT}
    payload = json.dumps({"dataset": dataset_fp or dataset_fingerprint(cfg.data), "fields": fields}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def pretrain_store(cfg: Config) -> Path:
    """Where ``python -m mtl train`` keeps pretraining entries: beside the decoded-image cache."""
    return cache_dir(cfg.data) / "pretrain"


def content_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (independent of file format)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Backbone:
    state: dict[str, torch.Tensor]
    ref: dict[str, Any]  # sha256, key (pretraining entry, "" if given), source, val_acc, status


def load_backbone(path: str | Path, backbone: str) -> dict[str, torch.Tensor]:
    """Pre-trained weights from a ``backbone`` checkpoint or a plain state dict file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrain.checkpoint {path} does not exist; check the path")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        load_checkpoint(path)  # raises the uniform corrupt-checkpoint error
        raise
    if isinstance(raw, dict) and raw.get("kind") == "backbone":
        if raw["backbone"] != backbone:
            raise CheckpointError(f"{path} holds a {raw['backbone']!r} backbone but model.backbone = "
                                  f"{backbone!r}; set model.backbone={raw['backbone']}")
        return raw["state"]
    if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return raw
    raise CheckpointError(f"{path} is neither an mtl backbone checkpoint nor a state dict of tensors")


def given_backbone(path: str | Path, backbone: str) -> Backbone:
    """``pretrain.checkpoint``: a backbone file the user gave (no pretraining)."""
    state = load_backbone(path, backbone)
    return Backbone(state, {"sha256": content_hash(state), "key": "", "source": str(Path(path).resolve()),
                            "val_acc": None, "status": "given"})


def pretrainer(cfg: Config, env: Env, data: dict[str, Any]) -> Pretrainer:
    """The pretraining phase of ``cfg`` on the decoded splits (:func:`mtl.trial.load_data`)."""
    return Pretrainer(cfg.pretrain, env, data["train"], data["val"], backbone=cfg.model.backbone,
                      normalization=cfg.data.normalization, probe_seed=bank_seed(cfg.eval.seed, "probe"),
                      eval_batch=cfg.eval.batch_episodes)


class _Stopped(Exception):
    """A build that diverged: the store publishes nothing."""


def pretrained_backbone(cfg: Config, env: Env, data: dict[str, Any], store: str | Path, *, who: str = "",
                        report: Report | None = None, fix: str = SWEEP_FIX, replay: bool = False
                        ) -> Backbone | Divergence:
    """``pretrain.checkpoint`` when given, else the store's entry for this pretraining setup (built
    here, resumably, if no one built it yet; ``report`` sees its epochs). A build that diverges
    publishes nothing and returns where it diverged. ``fix``: what to do when the store cannot be
    written. ``replay``: ``report`` sees every pretraining epoch of the backbone, also those another
    process ran (an entry it built, a build this one continues), in order, so that a sweep's scheduler
    sees the same pretraining results of every trial that shares it."""
    if cfg.pretrain.checkpoint:
        return given_backbone(cfg.pretrain.checkpoint, cfg.model.backbone)
    trainer: Pretrainer | None = None
    say = report or _log_pretrain(cfg)

    def build(state_path: Path) -> dict[str, Any]:
        nonlocal trainer
        trainer = pretrainer(cfg, env, data)
        if state_path.exists():
            trainer.load_state_dict(load_checkpoint(state_path, trainer.kind))
            log.info("pretraining resumes after epoch %d", trainer.epoch)
            for metrics in trainer.history if replay else ():
                say(metrics, None)
        while not trainer.done:
            metrics = trainer.run_epoch()
            if trainer.diverged:
                say(metrics, None)
                raise _Stopped
            save_checkpoint(state_path, trainer.state_dict())
            say(metrics, None)
        return {**trainer.backbone_payload(), "config": cfg.to_dict()}

    try:
        entry = PretrainCache(store, fix).get_or_build(cfg, build, who=who, dataset_fp=data.get("dataset_fingerprint"))
    except _Stopped:
        return trainer.diverged
    for metrics in entry.history if replay and entry.status == "hit" else ():
        say(metrics, None)
    return Backbone(entry.state, {"sha256": content_hash(entry.state), "key": entry.key, "source": str(entry.path),
                                  "val_acc": entry.val_acc, "status": entry.status})


def _log_pretrain(cfg: Config) -> Report:
    def line(m: dict[str, Any], _: Any) -> None:
        log.info("pretrain epoch %d/%d: val_acc=%.4f", m["epoch"], cfg.pretrain.epochs, m.get("val_acc", float("nan")))
    return line


def backbone_of(ref: dict[str, Any], cfg: Config, store: str | Path) -> Backbone:
    """The backbone a checkpoint's ``backbone_ref`` names: its store entry, or the given file."""
    if not ref["key"]:
        return given_backbone(cfg.pretrain.checkpoint, cfg.model.backbone)
    entry = PretrainCache(store).lookup(ref["key"])
    if entry is None:
        raise CheckpointError(f"pretraining entry {ref['key']} is missing from {store}")
    return Backbone(entry.state, ref)


def standalone(ck: dict[str, Any], backbone: Backbone | None = None, *, store: str | Path | None = None
               ) -> dict[str, Any]:
    """A meta checkpoint that stands alone (``python -m mtl evaluate``, ``predict``): ``ck`` with the
    weights of its backbone, ``backbone`` if given, else the one its ``backbone_ref`` names in ``store``."""
    if backbone is None:
        from mtl.config import config_from_dict

        backbone = backbone_of(ck["backbone_ref"], config_from_dict(ck["config"]), store or "")
    return {**ck, "backbone": backbone.state, "backbone_ref": backbone.ref}


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path  # the published entry folder
    state: dict[str, torch.Tensor]  # the selected backbone weights
    val_acc: float | None  # pretraining probe accuracy of that backbone
    status: str  # "built" (by this process) or "hit"
    history: list[dict[str, Any]]  # the metrics of every pretraining epoch that made it


class PretrainCache:
    def __init__(self, root: str | Path, fix: str = SWEEP_FIX) -> None:
        self.root = Path(root)
        self.store = Store(self.root, "pretraining cache", fix)

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
        return Entry(key, path, payload["state"], payload.get("val_acc"), "built", payload["history"])

    def _log_build(self, line: dict[str, Any]) -> None:
        """Append ``line`` to ``builds.log``: rewritten whole by the atomic writer, under a lock
        (builders of different keys run at the same time)."""
        log_file = self.root / "builds.log"
        with Lock(self.root / "builds.log.lock"):
            old = log_file.read_text() if log_file.is_file() else ""
            write_text_atomic(log_file, old + json.dumps(line) + "\n")


def _hit(key: str, d: Path) -> Entry:
    ck = load_checkpoint(d / "backbone.pt", "backbone")
    return Entry(key, d, ck["state"], ck.get("val_acc"), "hit", ck["history"])
