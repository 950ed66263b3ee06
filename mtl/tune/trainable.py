"""The Ray Tune trainable: a thin adapter from Ray to :func:`mtl.trial.run_trial`.

``train_mtl(params)`` builds the trial's config (base config + the sampled dotted keys), resumes
from Ray's checkpoint when the trial is retried or the sweep resumed, and turns each meta epoch's
report into ``tune.report`` with a checkpoint: every numeric metric the trainers emit (declared in
:mod:`mtl.metrics`) plus the pretraining entry's constants. A trial that diverges reports one last
result marked ``diverged`` with every metric at its worst and no checkpoint, and ends without an
error: the scheduler and the searcher learn from it, and Ray Tune does not retry it.

Every result carries ``trial_epoch``, the trial's place on one axis over both phases. When the
sweep searches pretraining (``span`` > 0: :attr:`mtl.tune.spec.SweepSpec.pretrain_span`), each
pretraining epoch is a result too, at ``trial_epoch`` 1 to its ``pretrain.epochs``; a trial that
pretrains fewer epochs than the span holds its last pretraining result over the rest of it (one
result per step, no compute), and meta-training follows at ``span + 1``. A rung of the scheduler
then compares pretraining with pretraining (the probe's accuracy) and meta-training with
meta-training, whatever each trial's own pretraining length, and ASHA stops a bad pretraining
before it has run its course.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.compat import CheckpointUpload
from mtl.config import config_from_dict
from mtl.files import disk_full, disk_full_of
from mtl.metrics import numeric
from mtl.runtime import make_env
from mtl.trial import run_trial

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "meta_state.pt"


def reported(metrics: dict[str, Any], state: dict[str, Any] | None) -> dict[str, Any]:
    """What a trainer's epoch becomes in Ray: its phase and every number, and with a checkpoint the
    constants of the backbone it names (``pretrain_val_acc``, ``pretrain_built``); on a GPU the trial's
    peak memory so far (``gpu_peak_gb``)."""
    out = {"phase": metrics["phase"], **numeric(metrics)}
    if torch.cuda.is_initialized():  # one process per trial: its own peak, what a GPU fraction must hold
        out["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if state is not None:
        ref = state["backbone_ref"]
        out.update(pretrain_val_acc=ref["val_acc"] or 0.0, pretrain_built=int(ref["status"] == "built"))
    return out


def train_mtl(params: dict[str, Any], *, base: dict[str, Any], cache_root: str, span: int = 0) -> None:
    """Function trainable (wrap with ``tune.with_parameters(train_mtl, base=..., cache_root=..., span=...)``)."""
    from ray import tune

    from mtl.tune.cluster import setup_worker_logging

    setup_worker_logging()  # this worker's log lines: the driver's format, tagged with the trial's id
    cfg = config_from_dict(base).with_overrides(params)
    resume = None
    if (ck := tune.get_checkpoint()) is not None:
        with ck.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE, "meta")

    def report(m: dict[str, Any], state: dict[str, Any] | None) -> None:
        pretraining = m["phase"] == "pretrain"
        if pretraining and not span and not m.get("diverged"):  # the shared pretraining: not scheduled
            return
        row = {**reported(m, state), "trial_epoch": m["epoch"] + (0 if pretraining else span)}
        if state is None:  # a pretraining epoch, or the epoch that diverged: no checkpoint
            tune.report(row)
            if pretraining and m["epoch"] == cfg.pretrain.epochs and not m.get("diverged"):
                for t in range(m["epoch"] + 1, span + 1):  # hold: the span is the same for every trial
                    tune.report({**row, "trial_epoch": t})
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / CHECKPOINT_FILE, state)
            report_checkpoint(row, d)

    run_trial(cfg, store=cache_root, report=report, resume=resume, who=tune.get_context().get_trial_id() or "",
              env=replace(make_env(cfg.runtime), progress=False), report_pretraining=span > 0)


def report_checkpoint(metrics: dict[str, Any], folder: str) -> None:
    """``tune.report`` with the checkpoint in ``folder``. Ray uploads it to the sweep's storage; where that
    is full, the trial fails with the one line of :class:`~mtl.errors.DiskFull` (not pyarrow's trace) and
    the part of the upload that Ray could not finish (so never registered) is removed."""
    from ray import tune

    upload = CheckpointUpload()
    try:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except Exception as e:
        target = upload.path or tune.get_context().get_trial_dir()
        if disk_full_of(e, target) is None:
            raise
        need = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
        if upload.started() and Path(target).is_dir():
            shutil.rmtree(target, ignore_errors=True)  # this report's own upload, not an earlier checkpoint
        raise disk_full(target, need) from None
