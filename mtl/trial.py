"""One trial: data -> pre-trained backbone (through the shared store) -> meta-transfer, reporting each epoch.

:func:`run_trial` is the one core that ``python -m mtl train`` (:mod:`mtl.experiment`) and the
Ray Tune trainable (:mod:`mtl.tune.trainable`) both call; each passes its own ``report``. It
knows nothing about Ray, folders or MLflow: a test runs a whole trial with ``report=list.append``.

A trial checkpoint is self-describing: besides the meta-transfer state and the resolved config
it records the backbone it was trained on (``backbone_ref``: content hash, pretraining key,
where it came from), and a resumed trial refuses a backbone with another hash.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.config import Config, check_against_data, eval_query
from mtl.data import dataset_fingerprint, index_splits, load_split, split_stats
from mtl.data.cache import cache_dir
from mtl.data.evalset import eval_data, index_eval
from mtl.data.transforms import Normalize
from mtl.episodes import bank_seed, episode_bank
from mtl.errors import CheckpointError
from mtl.models.head import HeadInit
from mtl.models.scale_shift import load_meta_state, set_bn_mode
from mtl.phases.evaluate import Embedder, evaluate
from mtl.phases.meta import MetaTrainer, build_meta_model
from mtl.phases.pretrain import Pretrainer
from mtl.pretraining import PretrainCache
from mtl.runtime import Env, make_env

log = logging.getLogger(__name__)

# report(metrics, checkpoint): every epoch of both phases; checkpoint is None for pretraining epochs
# and for the meta epoch that diverged (metrics["diverged"] == 1: the last report)
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


def pretrainer(cfg: Config, env: Env, data: dict[str, Any]) -> Pretrainer:
    return Pretrainer(cfg.pretrain, env, data["train"], data["val"], backbone=cfg.model.backbone,
                      normalization=cfg.data.normalization, probe_seed=bank_seed(cfg.eval.seed, "probe"),
                      eval_batch=cfg.eval.batch_episodes)


def meta_trainer(cfg: Config, env: Env, data: dict[str, Any], backbone: dict[str, torch.Tensor]) -> MetaTrainer:
    return MetaTrainer(cfg.meta, cfg.model, cfg.hard_tasks, cfg.eval, env, data["train"], data["val"], backbone,
                       normalization=cfg.data.normalization)


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


def pretrain_store(cfg: Config) -> Path:
    """Where ``python -m mtl train`` keeps pretraining entries: beside the decoded-image cache."""
    return cache_dir(cfg.data) / "pretrain"


def pretrained_backbone(cfg: Config, env: Env, data: dict[str, Any], store: str | Path, *, who: str = "",
                        report: Report | None = None) -> Backbone:
    """``pretrain.checkpoint`` when given, else the store's entry for this pretraining setup
    (built here, resumably, if no one built it yet; ``report`` sees its epochs)."""
    if cfg.pretrain.checkpoint:
        path = Path(cfg.pretrain.checkpoint)
        state = load_backbone(path, cfg.model.backbone)
        return Backbone(state, {"sha256": content_hash(state), "key": "", "source": str(path.resolve()),
                                "val_acc": None, "status": "given"})

    def build(state_path: Path) -> dict[str, Any]:
        trainer = pretrainer(cfg, env, data)
        if state_path.exists():
            trainer.load_state_dict(load_checkpoint(state_path, trainer.kind))
            log.info("pretraining resumes after epoch %d", trainer.epoch)
        while not trainer.done:
            metrics = trainer.run_epoch()
            save_checkpoint(state_path, trainer.state_dict())
            report(metrics, None) if report else _log_pretrain(metrics, cfg.pretrain.epochs)
        return {**trainer.backbone_payload(), "config": cfg.to_dict()}

    entry = PretrainCache(store).get_or_build(cfg, build, who=who, dataset_fp=data.get("dataset_fingerprint"))
    return Backbone(entry.state, {"sha256": content_hash(entry.state), "key": entry.key, "source": str(entry.path),
                                  "val_acc": entry.val_acc, "status": entry.status})


def _log_pretrain(m: dict[str, Any], epochs: int) -> None:
    log.info("pretrain epoch %d/%d: val_acc=%.4f", m["epoch"], epochs, m.get("val_acc", float("nan")))


def run_trial(cfg: Config, *, store: str | Path, report: Report, resume: dict[str, Any] | None = None,
              who: str = "", env: Env | None = None, data: dict[str, Any] | None = None,
              embed_backbone: bool = False) -> MetaTrainer:
    """Pretrain (through ``store``) and meta-train ``cfg`` to its last epoch, or continue from ``resume``
    (a checkpoint this function reported). After every meta epoch ``report(metrics, checkpoint)`` gets
    a checkpoint that resumes the trial; with ``embed_backbone`` it also holds the backbone weights,
    so that it stands alone (``python -m mtl evaluate``). ``env`` and ``data`` (:func:`load_data`)
    are made here unless the caller already has them.

    Meta-training that diverges (:mod:`mtl.phases.divergence`) is a result, not an error: its epoch
    is reported marked ``diverged`` with every metric at its worst and no checkpoint (the weights
    after a non-finite update are no model), a warning says where, and the trial ends there
    (``trainer.diverged``). Pretraining that diverges raises :class:`~mtl.errors.Diverged`."""
    env = env or make_env(cfg.runtime)
    data = data or load_data(cfg, env)
    backbone = pretrained_backbone(cfg, env, data, store, who=who, report=report)
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
            log.warning(diverged_line(cfg, trainer.diverged))
            report(metrics, None)
            break
        ck = {**trainer.state_dict(), "config": cfg.to_dict(), "backbone_ref": backbone.ref,
              "backbone": backbone.state if embed_backbone else None}
        report(metrics, ck)
    return trainer


def diverged_line(cfg: Config, at: dict[str, int]) -> str:
    """``meta-training diverged at update 9 (epoch 3): ...``, what to change included."""
    m = cfg.meta
    return (f"meta-training diverged at update {at['update']} (epoch {at['epoch']}): its loss became non-finite, "
            f"so the run stops with every metric at its worst; lower meta.inner_lr (now {m.inner_lr:g}) or the "
            f"meta lrs (lr_ss {m.lr_ss:g}, lr_head {m.lr_head:g})")


class _Replay:
    """An Embedder whose batches of features are kept in ``store`` on the first pass over a bank
    of episodes and read back on the next ones (evaluations with the same feature extractor)."""

    def __init__(self, embed: Embedder, store: list) -> None:
        self.embed, self.env, self.store, self.calls = embed, embed.env, store, 0

    def __call__(self, source, eps, flip_support: bool = False):
        if self.calls == len(self.store):
            self.store.append(self.embed(source, eps, flip_support))
        self.calls += 1
        return self.store[self.calls - 1]


def meta_model(ck: dict[str, Any], cfg: Config, env: Env) -> tuple[Embedder, HeadInit]:
    """A meta checkpoint's best state, ready to evaluate: the embedder (scale-shifted backbone in
    evaluation mode, the trained normalisation) and the meta-learned head initialisation."""
    if ck.get("backbone") is None:
        raise CheckpointError("the checkpoint holds no backbone weights; complete it from its pretraining entry")
    model = build_meta_model(cfg.model, env, ck["backbone"])
    head = HeadInit(cfg.meta.way, model.out_dim, init="zeros").to(env.device)  # loaded below; draws no RNG
    state = ck["best_state"] or ck["current"]
    try:  # a hand-edited config (meta.way 3 on a 5-way head) or state: one line, not a traceback
        load_meta_state(model, state["model"])
        head.load_state_dict(state["head"])
    except (KeyError, TypeError, RuntimeError) as e:
        why = " ".join(line.strip() for line in str(e).splitlines()[:2])[:300]
        raise CheckpointError(f"its weights do not fit the model its config describes ({type(e).__name__}: "
                              f"{why}); its config's model.* and meta.way must be those it was trained with: use "
                              "the checkpoint as its run wrote it") from None
    set_bn_mode(model, cfg.model.bn_mode, training=False)
    embed = Embedder(model, Normalize(cfg.data.normalization, env.device, env.channels_last), env)
    return embed, head


def test_checkpoint(ck: dict[str, Any], cfg: Config, env: Env, split, features: list | None = None) -> dict[str, Any]:
    """Few-shot accuracy (mean, 95% CI, per episode) of a meta checkpoint's best state on ``split``:
    ``cfg.eval.episodes`` episodes of the test bank of ``cfg.eval.seed`` (:func:`~mtl.episodes.bank_seed`).

    ``features``: a list shared by the evaluations of one feature extractor (the same backbone,
    learnt scale and shift and BN mode) on the same episodes: the first fills it, the others
    adapt their heads on its features without running the backbone again."""
    embed, head = meta_model(ck, cfg, env)
    if features is not None:
        embed = _Replay(embed, features)
    e, m = cfg.eval, cfg.meta
    episodes = episode_bank(split.offsets, m.way, m.shot, eval_query(m, e), e.episodes,
                            bank_seed(e.seed, "test"))
    return evaluate(embed, split, episodes, head.weight, head.bias, steps=e.inner_steps, lr=m.inner_lr,
                    batch_episodes=e.batch_episodes, flip_support=e.protocol == "paper")
