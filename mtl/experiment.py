"""One experiment without Ray: pretrain -> meta-transfer -> test, resumable, in one output folder.

Folder layout (``--out DIR``)::

    config.yaml        the resolved config
    metrics.jsonl      one line per epoch of either phase (a resumed run keeps the lines written and adds
                       only epochs not in it: one line per (phase, epoch), whatever ran twice)
    backbone.pt        the pre-trained backbone meta-transfer started from (a copy of its store entry);
                       --resume meta-trains on it when its content hash is the one meta_state.pt names,
                       whatever the store holds (another cache, a cleared one), so nothing pretrains again
    meta_state.pt      resumable meta-transfer state (last epoch, the best state, the backbone weights)
    result.json        test accuracy with its 95% CI, best validation accuracy, per-episode accuracies,
                       the training and the test data (eval.data: another dataset for cross-domain tests);
                       ``diverged``: null, or where meta-training diverged ({"epoch", "update"}: then
                       there is no test, and meta_state.pt holds the last epoch before it)

The trial itself is :func:`mtl.trial.run_trial`, the same core the Ray Tune trainable calls;
pretraining goes through the shared store beside the image cache (:func:`mtl.pretraining.pretrain_store`),
so experiments that pretrain alike pretrain once. This module adds the folder, the resume rules
and the printing. A phase that diverges writes result.json with ``diverged``
(``{"phase", "epoch", "update"}``) and no test.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.claim import RunClaim
from mtl.config import Config, config_from_dict, eval_query
from mtl.configs import save_config
from mtl.data import index_splits
from mtl.data.evalset import data_label, decode_splits, eval_data, index_eval, is_cross_domain
from mtl.errors import CheckpointError, ConfigError, MTLError
from mtl.files import append_text, check_writable_dir, on_disk_full, write_json_atomic
from mtl.metrics import epoch_line
from mtl.phases.evaluate import evaluate_checkpoint
from mtl.pretraining import RUN_FIX, Backbone, backbone_of, content_hash, pretrain_store, standalone
from mtl.runtime import make_env
from mtl.schema import changed
from mtl.trial import load_data, load_test, run_trial
from mtl.yamlio import read_yaml

log = logging.getLogger(__name__)


class RunDir:
    def __init__(self, out: str | Path) -> None:
        self.root = Path(out)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.backbone = self.root / "backbone.pt"
        self.meta_state = self.root / "meta_state.pt"
        self.result = self.root / "result.json"
        self.written: set[tuple[str, int]] = set()  # (phase, epoch) of the lines in metrics.jsonl

    def check(self, cfg: Config, resume: bool) -> None:
        """Refuse a folder this run must not use: another run without --resume, or --resume of a
        run with another config (or a folder that holds no readable run). Writes nothing."""
        if self.config.exists():
            if not resume:
                what = "a finished run" if self.result.exists() else "an unfinished run"
                raise MTLError(f"{self.root} already holds {what}; pass --resume to continue it "
                               f"or choose another --out")
            try:
                old = config_from_dict(read_yaml(self.config))
            except ConfigError as e:
                problem = str(e).split("; ")[0]  # its fix is for a file the user wrote; this one we wrote
                raise MTLError(f"cannot resume {self.root}: its config.yaml is damaged ({problem}); choose another "
                               "--out, or delete the folder to start afresh") from None
            diff = changed(old.to_dict(), cfg.to_dict())
            if diff:
                raise MTLError(f"--resume with a different config than {self.config} "
                               f"(differs in {', '.join(diff[:4])}); use the same config or another --out")
        elif resume and self.root.exists() and any(self.root.iterdir()):
            raise MTLError(f"{self.root} holds no mtl run to resume; choose an empty or new --out")

    def create(self, cfg: Config) -> None:
        """The folder and its config.yaml, once the run has its first epoch to record (an error
        before that, e.g. a missing pretrain.checkpoint, leaves nothing to clean up)."""
        if not self.config.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.config)

    def read_written(self) -> None:
        """Note the epochs metrics.jsonl already holds (on --resume): a report of one of them is
        not written again (pretraining that starts over when its store entry is gone re-reports them)."""
        lines = self.metrics.read_text().splitlines() if self.metrics.is_file() else []
        for line in lines:
            try:
                m = json.loads(line)
                self.written.add((m["phase"], m["epoch"]))
            except (ValueError, TypeError, KeyError):  # not one of our lines: it marks no epoch as written
                continue

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        """One line for ``metrics``' (phase, epoch), unless the file holds one already."""
        key = (metrics["phase"], metrics["epoch"])
        if key not in self.written:
            append_text(self.metrics, json.dumps(metrics) + "\n")
            self.written.add(key)

    def resumed_backbone(self, ck: dict[str, Any]) -> Backbone | None:
        """backbone.pt when it holds the backbone the checkpoint ``ck`` was meta-trained on (the content
        hash its ``backbone_ref`` names), else None (a warning says why, unless there is no backbone.pt)."""
        if not self.backbone.is_file():
            return None
        ref = ck.get("backbone_ref") or {}
        try:
            state = load_checkpoint(self.backbone, "backbone").get("state")
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{self.backbone} holds no backbone weights")
        except CheckpointError as e:
            log.warning("%s; resuming without it", e)
            return None
        got = content_hash(state)
        if got != ref.get("sha256"):
            log.warning("%s holds backbone %s, not %s that %s was meta-trained on; resuming without it "
                        "(it is replaced by the backbone the run continues on)", self.backbone, got[:12],
                        str(ref.get("sha256"))[:12], self.meta_state.name)
            return None
        return Backbone(state, ref)


def run_experiment(cfg: Config, out: str | Path, *, resume: bool = False,
                   report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """pretrain -> meta-transfer -> test in ``out``; returns (and writes) the result. The run holds
    ``out``'s claim (:class:`mtl.claim.RunClaim`: one writer per folder) from its checks to its end."""
    check_writable_dir(out, "--out", "choose another --out folder")
    with RunClaim(out), on_disk_full(out):
        return _experiment(cfg, RunDir(out), resume, report)


def _experiment(cfg: Config, run: RunDir, resume: bool, report: Callable[[dict[str, Any]], None] | None) -> dict:
    run.check(cfg, resume)
    env = make_env(cfg.runtime)
    if is_cross_domain(cfg):  # another test set (eval.data): its layout and shapes before hours of training
        index_eval(cfg)
    indexes = index_splits(cfg.data)  # listed once, for both of these
    decode_splits(cfg, env.progress, indexes)  # a corrupt image, the test set's too, fails here, before training
    data = load_data(cfg, env, indexes=indexes)  # checks shapes against the data before anything is written
    state = load_checkpoint(run.meta_state, "meta") if resume and run.meta_state.exists() else None
    started = dict.fromkeys(("pretrain", "meta"), time.monotonic())
    runs = {"pretrain": 0, "meta": 0}
    if resume:
        run.read_written()
    own = run.resumed_backbone(state) if state is not None else None
    copy = not run.backbone.exists() or (state is not None and own is None)  # backbone.pt to (re)write
    store = pretrain_store(cfg)
    held: list[Backbone] = [own] if own else []  # the backbone meta_state.pt embeds, read once

    def on_epoch(m: dict[str, Any], ck: dict[str, Any] | None) -> None:
        nonlocal copy
        run.create(cfg)
        run.append_metrics(m)  # first: a crash before the checkpoint is written re-runs the epoch, not its line
        if ck is not None:
            if not held:
                held.append(backbone_of(ck["backbone_ref"], cfg, store))
            save_checkpoint(run.meta_state, standalone(ck, held[0]))
            if copy:
                save_checkpoint(run.backbone, {"kind": "backbone", "backbone": cfg.model.backbone,
                                               "state": held[0].state, **held[0].ref})
                copy = False
        phase = m["phase"]
        runs[phase] += 1
        if phase == "pretrain":  # meta-training starts after the last pretraining epoch
            started["meta"] = time.monotonic()
        total = cfg.pretrain.epochs if phase == "pretrain" else cfg.meta.epochs
        elapsed = time.monotonic() - started[phase]
        eta = elapsed / runs[phase] * (total - m["epoch"]) if m["epoch"] < total else None
        log.info(epoch_line(m, total, elapsed, eta))
        if report:
            report(m)

    end = run_trial(cfg, store=store, report=on_epoch, resume=state, env=env, data=data, backbone=own,
                    store_fix=RUN_FIX)
    del data
    if end.diverged:
        result = {"diverged": end.diverged.as_dict(), "diverged_line": end.diverged.line(), "test_acc": None,
                  "test_ci95": None, "val_acc": None, "best_epoch": None, "train_data": data_label(cfg.data),
                  "config": cfg.to_dict()}
        write_json_atomic(run.result, result)
        return result
    meta = end.meta
    final = load_checkpoint(run.meta_state, "meta")
    t = evaluate_checkpoint(final, cfg, env, load_test(cfg, env))
    result = {
        "diverged": None,
        "test_acc": t["acc"],
        "test_ci95": t["ci95"],
        "val_acc": meta.best_acc,
        "best_epoch": meta.best_epoch,
        "pretrain_val_acc": final["backbone_ref"].get("val_acc"),
        "backbone": final["backbone_ref"],
        "test_episodes": len(t["accs"]),
        "train_data": data_label(cfg.data),
        "test_data": data_label(eval_data(cfg), cfg.eval.data.split),
        "protocol": f"{cfg.meta.way}-way {cfg.meta.shot}-shot, {eval_query(cfg.meta, cfg.eval)} queries/class, "
                    f"{cfg.eval.inner_steps} inner steps ({cfg.eval.protocol})",
        "test_accs": t["accs"],
        "config": cfg.to_dict(),
    }
    write_json_atomic(run.result, result)
    return result
