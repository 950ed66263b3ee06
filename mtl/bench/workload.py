"""What the benchmark runs on: a config, a device, a synthetic dataset and backbone weights.

Everything is built from a list of dotted config overrides (made from the benchmark's settings,
:func:`overrides`), so the trial processes of the concurrency measurement rebuild exactly the
same workload from a picklable list.

The speed of a network does not depend on what it has learnt, so the backbone is not
pre-trained: it is freshly initialised and its BN running statistics are set from real
(synthetic) images, which keeps activations at the scale of a trained network (no
overflow in bf16, no denormals on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtl.bench.settings import BenchSettings
from mtl.config import Config
from mtl.configs import load_config
from mtl.data import load_split
from mtl.data.splits import Split
from mtl.data.transforms import Normalize
from mtl.models.backbones import create_backbone
from mtl.runtime import Env, make_env

WAY, QUERY = 5, 15  # every episode figure is 5-way with 15 queries per class


def overrides(s: BenchSettings) -> list[str]:
    """Dotted overrides of the base config for resolved settings ``s`` (:func:`mtl.bench.settings.resolve`):
    the synthetic set sized for the measurements, the backbone, precision and device."""
    train_classes = 16 if s.quick else 64  # = the pretraining head's width
    per_class = max(QUERY + max([*s.meta.shots, *s.eval.shots, s.trials.shot]),
                    math.ceil(s.pretrain.batch * s.pretrain.steps / train_classes))
    out = [
        "data.dataset=synthetic", f"data.image_size={s.image_size}", "data.normalization=pt",
        f"data.synthetic.train_classes={train_classes}", "data.synthetic.val_classes=16",
        "data.synthetic.test_classes=5", f"data.synthetic.images_per_class={per_class}",
        f"model.backbone={s.backbone}",
        # the recipe's lr 0.1 can diverge from a fresh init within the timed epochs (a NaN loss
        # raises); the step costs the same at any lr
        f"pretrain.batch_size={s.pretrain.batch}", "pretrain.lr=0.02",
        f"meta.way={WAY}", f"meta.query={QUERY}", f"meta.first_order={str(s.meta.first_order).lower()}",
        f"eval.query={QUERY}", "eval.inner_steps=100", "eval.protocol=standard",
        f"eval.batch_episodes={s.eval.batch}",
        f"runtime.device={s.device}", f"runtime.precision={s.precision}",
        f"runtime.channels_last={str(s.channels_last).lower()}", "runtime.progress=false",
    ]
    if s.threads is not None:
        out.append(f"runtime.threads={s.threads}")
    return out


def shape(cfg: Config, shot: int, steps: int, meta_batch: int) -> Config:
    """The config of one meta-training figure."""
    return cfg.with_overrides({"meta.shot": shot, "meta.inner_steps": steps, "meta.meta_batch": meta_batch})


@dataclass
class Workload:
    cfg: Config
    env: Env
    train: Split
    val: Split
    state: dict[str, torch.Tensor]  # backbone weights (CPU tensors), input of MetaTrainer

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.env.channels_last else torch.contiguous_format

    @property
    def data(self) -> dict[str, Split]:
        """The splits as the trainers' factories (:mod:`mtl.trial`) take them."""
        return {"train": self.train, "val": self.val}


def build(over: Sequence[str], state: dict[str, torch.Tensor] | None = None) -> Workload:
    """Config, device, data on the device, and (unless given) calibrated backbone weights."""
    cfg = load_config(None, list(over))
    env = make_env(cfg.runtime)
    train = load_split(cfg.data, "train", progress=False).to(env.device)
    val = load_split(cfg.data, "val", progress=False).to(env.device)
    if state is None:
        state = calibrated_state(cfg, env, train)
    return Workload(cfg, env, train, val, state)


def calibrated_state(cfg: Config, env: Env, split: Split, batches: int = 2, batch: int = 64) -> dict[str, torch.Tensor]:
    """A freshly initialised backbone whose BN running statistics are the average over a few
    batches of real images (cumulative averaging: ``momentum=None``)."""
    torch.manual_seed(cfg.runtime.seed)
    fmt = torch.channels_last if env.channels_last else torch.contiguous_format
    model = create_backbone(cfg.model.backbone).to(env.device, memory_format=fmt).train()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    norm = Normalize(cfg.data.normalization, env.device, env.channels_last)
    g = torch.Generator().manual_seed(cfg.runtime.seed)
    n = split.images.shape[0]
    with torch.no_grad(), env.autocast():
        for _ in range(batches):
            rows = torch.randperm(n, generator=g)[: min(batch, n)].to(split.images.device)
            model(norm(split.images.index_select(0, rows).to(env.device)))
    for m in bns:
        m.momentum = 0.1
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def workload_settings(w: Workload) -> dict[str, Any]:
    """The settings every figure of a run shares (goes into the JSON and the table header)."""
    c = w.cfg
    return {"backbone": c.model.backbone, "image_size": c.data.image_size, "precision": c.runtime.precision,
            "channels_last": c.runtime.channels_last, "meta_gradient": "first order" if c.meta.first_order
            else "second order", "bn_mode": c.model.bn_mode, "inner_lr": c.meta.inner_lr,
            "pretrain_batch": c.pretrain.batch_size, "pretrain_augment": c.pretrain.augment,
            "pretrain_lr": c.pretrain.lr,
            "train_classes": c.data.synthetic.train_classes, "eval_batch_episodes": c.eval.batch_episodes,
            "way": WAY, "query": QUERY}
