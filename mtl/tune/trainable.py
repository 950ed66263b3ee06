"""The Ray Tune trainable: shared pretraining, then meta-transfer reporting every epoch.

``train_mtl(params)`` builds the trial's config (base config + the sampled dotted keys), takes
the pre-trained backbone from the shared cache (building it if this trial is first), restores
its meta-transfer state from Ray's checkpoint when the trial is retried or the sweep resumed,
and reports after every meta-training epoch with a checkpoint. All the training itself is
:class:`mtl.phases.meta.MetaTrainer`; this module is the glue to Ray.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.config import config_from_dict
from mtl.experiment import load_data, evaluate_meta_checkpoint
from mtl.phases.meta import MetaTrainer
from mtl.runtime import make_env
from mtl.tune.pretrain_cache import PretrainCache, backbone_for

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "meta_state.pt"
# metrics forwarded to Ray from each epoch's metrics (all numeric)
REPORTED = ("val_acc", "val_ci95", "best_val_acc", "train_loss", "train_acc", "hard_share", "hard_share_total",
            "episodes_per_s", "updates", "lr_ss", "lr_head")


def train_mtl(params: dict[str, Any], *, base: dict[str, Any], cache_root: str) -> None:
    """Function trainable (wrap with ``tune.with_parameters(train_mtl, base=..., cache_root=...)``)."""
    from ray import tune

    cfg = config_from_dict(base).with_overrides(params)
    env = replace(make_env(cfg.runtime), progress=False)
    data = load_data(cfg, env)
    trial = tune.get_context().get_trial_id() or ""
    entry = backbone_for(cfg, env, data, cache_root, who=trial)
    trainer = MetaTrainer(cfg, env, data["train"], data["val"], entry.state)
    if (ck := tune.get_checkpoint()) is not None:
        with ck.as_directory() as d:
            trainer.load_state_dict(load_checkpoint(Path(d) / CHECKPOINT_FILE, "meta"))
        log.info("trial %s resumes after meta epoch %d", trial, trainer.epoch)
    while not trainer.done:
        m = trainer.run_epoch()
        metrics = {k: m[k] for k in REPORTED if k in m}
        metrics.update(epoch=m["epoch"], meta_epochs=cfg.meta.epochs, pretrain_val_acc=entry.val_acc or 0.0,
                       pretrain_built=int(entry.status == "built"))
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / CHECKPOINT_FILE,
                            {**trainer.state_dict(include_backbone=False), "pretrain_key": entry.key})
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def complete_checkpoint(checkpoint_dir: str | Path, cache_root: str | Path) -> dict[str, Any]:
    """A trial checkpoint with its pre-trained backbone put back from the cache: a full ``meta``
    checkpoint that ``python -m mtl evaluate`` accepts."""
    ck = load_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE, "meta")
    if not ck["pretrain_key"]:  # the sweep used an explicit pretrain.checkpoint
        from mtl.experiment import load_backbone

        cfg = config_from_dict(ck["config"])
        ck["backbone"] = load_backbone(cfg.pretrain.checkpoint, cfg)
        return ck
    entry = PretrainCache(cache_root).lookup(ck["pretrain_key"])
    if entry is None:
        from mtl.errors import CheckpointError

        raise CheckpointError(f"pretraining entry {ck['pretrain_key']} is missing from {cache_root}")
    ck["backbone"] = entry.state
    return ck


def evaluate_trial(checkpoint_dir: str, cache_root: str, export_to: str | None = None) -> dict[str, Any]:
    """Evaluate a trial's best state once on the test split (run on a worker with the trial's resources)."""
    ck = complete_checkpoint(checkpoint_dir, cache_root)
    cfg = config_from_dict(ck["config"])
    env = replace(make_env(cfg.runtime), progress=False)
    test = load_data(cfg, env, ("test",))["test"]
    if export_to:
        save_checkpoint(export_to, ck)
    return evaluate_meta_checkpoint(ck, env, test, cfg)
