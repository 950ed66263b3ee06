"""The Ray Tune trainable: a thin adapter from Ray to :func:`mtl.trial.run_trial`.

``train_mtl(params)`` builds the trial's config (base config + the sampled dotted keys), resumes
from Ray's checkpoint when the trial is retried or the sweep resumed, and turns each meta epoch's
report into ``tune.report`` with a checkpoint: every numeric metric the trainers emit (declared in
:mod:`mtl.metrics`) plus the pretraining entry's constants. A trial that diverges reports one last
result marked ``diverged`` with every metric at its worst and no checkpoint, and ends without an
error: the scheduler and the searcher learn from it, and Ray Tune does not retry it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

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
    constants of the backbone it names (``pretrain_val_acc``, ``pretrain_built``)."""
    out = {"phase": metrics["phase"], **numeric(metrics)}
    if state is not None:
        ref = state["backbone_ref"]
        out.update(pretrain_val_acc=ref["val_acc"] or 0.0, pretrain_built=int(ref["status"] == "built"))
    return out


def train_mtl(params: dict[str, Any], *, base: dict[str, Any], cache_root: str) -> None:
    """Function trainable (wrap with ``tune.with_parameters(train_mtl, base=..., cache_root=...)``)."""
    from ray import tune

    from mtl.tune.cluster import setup_worker_logging

    setup_worker_logging()  # this worker's log lines: the driver's format, tagged with the trial's id
    cfg = config_from_dict(base).with_overrides(params)
    resume = None
    if (ck := tune.get_checkpoint()) is not None:
        with ck.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE, "meta")

    def report(m: dict[str, Any], state: dict[str, Any] | None) -> None:
        if m["phase"] != "meta" and not m.get("diverged"):  # a pretraining epoch: Ray schedules on meta epochs
            return
        if state is None:  # diverged: the last report, without a checkpoint
            tune.report(reported(m, None))
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / CHECKPOINT_FILE, state)
            report_checkpoint(reported(m, state), d)

    run_trial(cfg, store=cache_root, report=report, resume=resume, who=tune.get_context().get_trial_id() or "",
              env=replace(make_env(cfg.runtime), progress=False))


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
