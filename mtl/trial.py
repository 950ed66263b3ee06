"""One trial: data -> pre-trained backbone (through the shared store) -> meta-transfer, reporting each epoch.

:func:`run_trial` is the one loop that ``python -m mtl train`` (:mod:`mtl.experiment`), the Ray
Tune trainable (:mod:`mtl.tune.trainable`) and a sweep's seed re-runs (:mod:`mtl.tune.finals`)
call; each passes its own ``report``. It knows nothing about Ray, folders or MLflow: a test runs a
whole trial with ``report=list.append``.

A trial checkpoint is self-describing: besides the meta-transfer state and the resolved config
it records the backbone it was trained on (``backbone_ref``: content hash, pretraining key,
where it came from), and a resumed trial refuses a backbone with another hash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtl.config import Config, check_against_data
from mtl.data import dataset_fingerprint, index_splits, load_split, split_stats
from mtl.data.evalset import eval_data, index_eval
from mtl.errors import CheckpointError
from mtl.phases.divergence import Divergence
from mtl.phases.meta import MetaTrainer
from mtl.pretraining import SWEEP_FIX, Backbone, pretrained_backbone
from mtl.runtime import Env, make_env

log = logging.getLogger(__name__)

# report(metrics, checkpoint): every epoch of both phases; checkpoint is None for pretraining epochs
# and for the epoch that diverged (metrics["diverged"] == 1: the last report)
Report = Callable[[dict[str, Any], "dict[str, Any] | None"], None]


def load_data(cfg: Config, env: Env, splits: tuple[str, ...] = ("train", "val"),
              indexes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check episode shapes against the dataset listing, then decode (through the cache) the splits.

    Returns ``{split: Split}`` plus ``"dataset_fingerprint"`` (from the same listing, for the
    pretraining key), so the dataset is listed once.
    """
    indexes = indexes or index_splits(cfg.data)  # the caller's listing (index_splits), if it has one
    check_against_data(cfg, split_stats(cfg.data, indexes))
    out: dict[str, Any] = {"dataset_fingerprint": dataset_fingerprint(cfg.data, indexes)}
    for s in splits:
        split = load_split(cfg.data, s, progress=env.progress, index=indexes[s])
        out[s] = split.to(env.device) if cfg.runtime.data_on_device else split
    return out


def load_test(cfg: Config, env: Env):
    """The test set (``eval.data``: by default the training data's test split), checked against the
    test episodes and decoded through the cache at the trained model's image size."""
    index = index_eval(cfg)
    split = load_split(eval_data(cfg), cfg.eval.data.split, progress=env.progress, index=index)
    return split.to(env.device) if cfg.runtime.data_on_device else split


def meta_trainer(cfg: Config, env: Env, data: dict[str, Any], backbone: dict[str, torch.Tensor]) -> MetaTrainer:
    """The meta-transfer phase of ``cfg`` on the decoded splits and the pre-trained weights."""
    return MetaTrainer(cfg.meta, cfg.model, cfg.hard_tasks, cfg.eval, env, data["train"], data["val"], backbone,
                       normalization=cfg.data.normalization)


@dataclass(frozen=True)
class TrialEnd:
    """How :func:`run_trial` ended: its meta-trainer (None when pretraining diverged), the backbone
    it meta-trained on, and where a loss became non-finite (None: it did not)."""

    meta: MetaTrainer | None
    backbone: Backbone | None
    diverged: Divergence | None


def run_trial(cfg: Config, *, store: str | Path, report: Report, resume: dict[str, Any] | None = None,
              who: str = "", env: Env | None = None, data: dict[str, Any] | None = None,
              backbone: Backbone | None = None, store_fix: str = SWEEP_FIX,
              report_pretraining: bool = False) -> TrialEnd:
    """Pretrain (through ``store``; skipped when ``backbone`` is given) and meta-train ``cfg`` to its
    last epoch, or continue from ``resume`` (a checkpoint this function reported). After every
    meta epoch ``report(metrics, checkpoint)`` gets a checkpoint that resumes the trial (it names
    its backbone; :func:`mtl.pretraining.standalone` embeds it). ``env`` and ``data``
    (:func:`load_data`) are made here unless the caller already has them; ``store_fix`` says what to
    do when the store cannot be written. ``report_pretraining`` (a sweep that searches pretraining):
    a trial that starts afresh reports every pretraining epoch of its backbone, those another trial
    ran included (:func:`mtl.pretraining.pretrained_backbone`'s ``replay``).

    A phase that diverges (:mod:`mtl.phases.divergence`) is a result, not an error: its epoch is
    reported marked ``diverged`` with every metric at its worst and no checkpoint (the weights
    after a non-finite update are no model), a warning says where, and the trial ends there."""
    env = env or make_env(cfg.runtime)
    data = data or load_data(cfg, env)
    if backbone is None:
        got = pretrained_backbone(cfg, env, data, store, who=who, report=report, fix=store_fix,
                                  replay=report_pretraining and resume is None)
        if isinstance(got, Divergence):
            log.warning(got.warning())
            return TrialEnd(None, None, got)
        backbone = got
    trainer = meta_trainer(cfg, env, data, backbone.state)
    if resume is not None:
        had = (resume.get("backbone_ref") or {}).get("sha256")
        if had != backbone.ref["sha256"]:
            raise CheckpointError(f"the checkpoint to resume was meta-trained on backbone {str(had)[:12]} but "
                                  f"{backbone.ref['source']} holds {backbone.ref['sha256'][:12]}; resume with the "
                                  "pretraining store (or pretrain.checkpoint) of the first run")
        trainer.load_state_dict(resume)
        log.info("resuming meta-training after epoch %d", trainer.epoch)
    while not trainer.done:
        metrics = trainer.run_epoch()
        if trainer.diverged:
            log.warning(trainer.diverged.warning())
            report(metrics, None)
            break
        report(metrics, {**trainer.state_dict(), "config": cfg.to_dict(), "backbone_ref": backbone.ref})
    return TrialEnd(trainer, backbone, trainer.diverged)
