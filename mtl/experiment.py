"""One experiment without Ray: pretrain -> meta-transfer -> test, resumable, in one output folder.

Folder layout (``--out DIR``)::

    config.yaml        the resolved config
    metrics.jsonl      one line per epoch of either phase
    pretrain_state.pt  resumable pretraining state (last epoch)
    backbone.pt        the selected pre-trained backbone (input of meta-transfer)
    meta_state.pt      resumable meta-transfer state (last epoch, and the best state)
    result.json        test accuracy with its 95% CI, best validation accuracy, per-episode accuracies

The phases here are the same objects the Ray Tune trainable drives; this module only adds
the folder, the resume rules and the printing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.config import Config, check_against_data, config_from_dict, eval_query, save_config
from mtl.data import dataset_fingerprint, index_splits, load_split, split_stats
from mtl.data.transforms import Normalize
from mtl.episodes import episode_bank
from mtl.errors import CheckpointError, MTLError
from mtl.files import write_json_atomic
from mtl.models.head import HeadInit
from mtl.models.scale_shift import load_meta_state, set_bn_mode
from mtl.phases.evaluate import Embedder, evaluate
from mtl.phases.meta import MetaTrainer, build_meta_model
from mtl.phases.pretrain import Pretrainer
from mtl.runtime import Env, make_env
from mtl.typed import dotted

log = logging.getLogger(__name__)
Report = Callable[[dict[str, Any]], None]


def load_data(cfg: Config, env: Env, splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """Check episode shapes against the dataset listing, then decode (through the cache) the splits.

    Returns ``{split: Split}`` plus ``"dataset_fingerprint"`` (from the same listing, for the
    pretraining cache key), so the dataset is listed once.
    """
    indexes = index_splits(cfg.data)
    check_against_data(cfg, split_stats(cfg.data, indexes))
    out: dict[str, Any] = {"dataset_fingerprint": dataset_fingerprint(cfg.data, indexes)}
    for s in splits:
        split = load_split(cfg.data, s, progress=env.progress, index=indexes[s])
        out[s] = split.to(env.device) if cfg.runtime.data_on_device else split
    return out


def load_backbone(path: str | Path, cfg: Config) -> dict[str, torch.Tensor]:
    """Pre-trained weights from a ``backbone`` checkpoint or a plain state dict file."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"pretrain.checkpoint {path} does not exist; check the path") from None
    except Exception:
        load_checkpoint(path)  # raises the uniform corrupt-checkpoint error
        raise
    if isinstance(raw, dict) and raw.get("kind") == "backbone":
        if raw["backbone"] != cfg.model.backbone:
            raise CheckpointError(f"{path} holds a {raw['backbone']!r} backbone but model.backbone = "
                                  f"{cfg.model.backbone!r}; set model.backbone={raw['backbone']}")
        return raw["state"]
    if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return raw
    raise CheckpointError(f"{path} is neither an mtl backbone checkpoint nor a state dict of tensors")


def fit(trainer: Pretrainer | MetaTrainer, state_path: Path | None, report: Report):
    """Run a phase (or continue it from ``state_path``) to its configured epoch count,
    checkpointing after every epoch."""
    if state_path is not None and state_path.exists():
        trainer.load_state_dict(load_checkpoint(state_path, trainer.kind))
        log.info("resuming %s after epoch %d", trainer.kind, trainer.epoch)
    while not trainer.done:
        metrics = trainer.run_epoch()
        if state_path is not None:
            save_checkpoint(state_path, trainer.state_dict())
        report(metrics)
    return trainer


def pretrain(cfg: Config, env: Env, data: dict[str, Any], state_path: Path | None,
             report: Report) -> Pretrainer:
    return fit(Pretrainer(cfg, env, data["train"], data["val"]), state_path, report)


def meta_train(cfg: Config, env: Env, data: dict[str, Any], backbone: dict[str, torch.Tensor],
               state_path: Path | None, report: Report) -> MetaTrainer:
    return fit(MetaTrainer(cfg, env, data["train"], data["val"], backbone), state_path, report)


def evaluate_meta_checkpoint(ck: dict[str, Any], env: Env, split, cfg: Config | None = None) -> dict[str, Any]:
    """Evaluate the best state of a ``meta`` checkpoint on ``split`` (600 episodes by default)."""
    cfg = cfg or config_from_dict(ck["config"])
    model = build_meta_model(cfg, env, ck["backbone"])
    head = HeadInit(cfg.meta.way, model.out_dim).to(env.device)
    state = ck["best_state"] or ck["current"]
    load_meta_state(model, state["model"])
    head.load_state_dict(state["head"])
    set_bn_mode(model, cfg.model.bn_mode, training=False)
    embed = Embedder(model, Normalize(cfg.data.normalization, env.device, env.channels_last), env,
                     transductive=cfg.model.bn_mode == "batch_stats")
    e = cfg.eval
    episodes = episode_bank(split.offsets, cfg.meta.way, cfg.meta.shot, eval_query(cfg), e.episodes, e.seed + 1)
    return evaluate(embed, split, episodes, head.weight, head.bias, steps=e.inner_steps, lr=cfg.meta.inner_lr,
                    batch_episodes=e.batch_episodes, flip_support=e.protocol == "paper")


# ----------------------------------------------------------------------------- the folder


class RunDir:
    def __init__(self, out: str | Path) -> None:
        self.root = Path(out)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.pretrain_state = self.root / "pretrain_state.pt"
        self.backbone = self.root / "backbone.pt"
        self.meta_state = self.root / "meta_state.pt"
        self.result = self.root / "result.json"

    def prepare(self, cfg: Config, resume: bool) -> None:
        """Create the folder, or check that resuming continues the same experiment."""
        if self.config.exists():
            if not resume:
                what = "a finished run" if self.result.exists() else "an unfinished run"
                raise MTLError(f"{self.root} already holds {what}; pass --resume to continue it "
                               f"or choose another --out")
            old = config_from_dict(yaml.safe_load(self.config.read_text()))
            new = dotted(cfg.to_dict())
            diff = [k for k, v in dotted(old.to_dict()).items() if new.get(k) != v]
            if diff:
                raise MTLError(f"--resume with a different config than {self.config} "
                               f"(differs in {', '.join(diff[:4])}); use the same config or another --out")
        elif resume and self.root.exists() and any(self.root.iterdir()):
            raise MTLError(f"{self.root} holds no mtl run to resume; choose an empty or new --out")
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    def write_result(self, result: dict[str, Any]) -> None:
        write_json_atomic(self.result, result)




def run_experiment(cfg: Config, out: str | Path, *, resume: bool = False,
                   report: Report | None = None) -> dict[str, Any]:
    """pretrain -> meta-transfer -> test in ``out``; returns (and writes) the result."""
    env = make_env(cfg.runtime)
    run = RunDir(out)
    data = load_data(cfg, env)  # checks shapes before anything is written
    run.prepare(cfg, resume)

    def on_epoch(m: dict[str, Any]) -> None:
        run.append_metrics(m)
        log.info("%s epoch %d: %s", m["phase"], m["epoch"],
                 ", ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, float)))
        if report:
            report(m)

    if cfg.pretrain.checkpoint:
        backbone = load_backbone(cfg.pretrain.checkpoint, cfg)
        pre_acc = None
    elif run.backbone.exists():
        ck = load_checkpoint(run.backbone, "backbone")
        backbone, pre_acc = ck["state"], ck["val_acc"]
    else:
        pre = pretrain(cfg, env, data, run.pretrain_state, on_epoch)
        payload = pre.backbone_payload()
        save_checkpoint(run.backbone, payload)
        backbone, pre_acc = payload["state"], payload["val_acc"]
    meta = meta_train(cfg, env, data, backbone, run.meta_state, on_epoch)
    del data
    test_split = load_data(cfg, env, ("test",))["test"]
    t = evaluate_meta_checkpoint(meta.state_dict(), env, test_split, cfg)
    result = {
        "test_acc": t["acc"],
        "test_ci95": t["ci95"],
        "val_acc": meta.best_acc,
        "best_epoch": meta.best_epoch,
        "pretrain_val_acc": pre_acc,
        "test_episodes": len(t["accs"]),
        "protocol": f"{cfg.meta.way}-way {cfg.meta.shot}-shot, {eval_query(cfg)} queries/class, "
                    f"{cfg.eval.inner_steps} inner steps ({cfg.eval.protocol})",
        "test_accs": t["accs"],
        "config": cfg.to_dict(),
    }
    run.write_result(result)
    return result
