"""The Ray Tune trainable: a thin adapter from Ray to :func:`mtl.trial.run_trial`.

``train_mtl(params)`` builds the trial's config (base config + the sampled dotted keys), resumes
from Ray's checkpoint when the trial is retried or the sweep resumed, and turns each meta epoch's
report into ``tune.report`` with a checkpoint. A trial that diverges (in meta-training, or in its
own pretraining when the sweep searches pretraining fields) reports one last result marked
``diverged`` with every metric at its worst and no checkpoint, and ends without an error: the
scheduler and the searcher learn from it, and Ray Tune does not retry it. The driver-side
helpers below complete a trial's checkpoint with its backbone from the pretraining store (the
tests after the search, :mod:`mtl.tune.finals`, start from it).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.config import config_from_dict
from mtl.errors import CheckpointError, Diverged
from mtl.files import disk_full, disk_full_of
from mtl.phases.divergence import worst_metrics
from mtl.pretraining import PretrainCache
from mtl.runtime import make_env
from mtl.trial import load_backbone, run_trial

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "meta_state.pt"
# metrics forwarded to Ray from each epoch's metrics (all numeric)
REPORTED = ("epoch", "val_acc", "val_ci95", "best_val_acc", "best_val_ci95", "train_loss", "train_acc", "hard_share",
            "hard_share_total", "episodes_per_s", "updates", "lr_ss", "lr_head", "diverged", "diverged_update")


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
        if m["phase"] != "meta":  # a pretraining epoch: Ray schedules on meta epochs only
            return
        if state is None:  # diverged: the last report, without a checkpoint
            tune.report({k: m[k] for k in REPORTED if k in m})
            return
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / CHECKPOINT_FILE, state)
            ref = state["backbone_ref"]
            report_checkpoint({**{k: m[k] for k in REPORTED if k in m}, "pretrain_val_acc": ref["val_acc"] or 0.0,
                               "pretrain_built": int(ref["status"] == "built")}, d)

    try:
        run_trial(cfg, store=cache_root, report=report, resume=resume, who=tune.get_context().get_trial_id() or "",
                  env=replace(make_env(cfg.runtime), progress=False))
    except Diverged as e:  # its pretraining: nothing was published, the trial ends as a result
        log.warning("%s; the trial stops with every metric at its worst", e)
        tune.report({**worst_metrics(), "epoch": 0, "updates": 0, "diverged": 1})


def report_checkpoint(metrics: dict[str, Any], folder: str) -> None:
    """``tune.report`` with the checkpoint in ``folder``. Ray uploads it to the sweep's storage; where that
    is full, the trial fails with the one line of :class:`~mtl.errors.DiskFull` (not pyarrow's trace) and
    the part of the upload that Ray could not finish (so never registered) is removed."""
    from ray import tune

    try:  # where Ray puts it: its internal storage context, which numbers the checkpoint before the upload
        from ray.train._internal.session import get_session

        storage = get_session().storage
        numbered = storage.current_checkpoint_index
    except Exception:  # noqa: BLE001 (then the message names the trial's folder, and nothing is removed)
        storage = numbered = None
    try:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    except Exception as e:
        target = storage.checkpoint_fs_path if storage is not None else tune.get_context().get_trial_dir()
        if disk_full_of(e, target) is None:
            raise
        need = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
        if storage is not None and storage.current_checkpoint_index != numbered and Path(target).is_dir():
            shutil.rmtree(target, ignore_errors=True)  # this report's own upload, not an earlier checkpoint
        raise disk_full(target, need) from None


def complete_checkpoint(checkpoint_dir: str | Path, cache_root: str | Path) -> dict[str, Any]:
    """A trial checkpoint with its pre-trained backbone put back from the store (or the given
    ``pretrain.checkpoint``): a full ``meta`` checkpoint that ``python -m mtl evaluate`` accepts."""
    ck = load_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE, "meta")
    ref = ck["backbone_ref"]
    if not ref["key"]:
        cfg = config_from_dict(ck["config"])
        ck["backbone"] = load_backbone(cfg.pretrain.checkpoint, cfg.model.backbone)
        return ck
    entry = PretrainCache(cache_root).lookup(ref["key"])
    if entry is None:
        raise CheckpointError(f"pretraining entry {ref['key']} is missing from {cache_root}")
    ck["backbone"] = entry.state
    return ck
