"""Phase A: pre-train the backbone by classification over all meta-train classes.

The classifier on top (``pretrain.head``: linear, or the official PyTorch code's MLP) serves this
phase only: the exported backbone holds the feature extractor alone. After each ``val_every``
epochs a linear probe (an N-way head, ``probe_steps`` gradient steps on frozen features) is scored
on a fixed bank of validation episodes, as in the official PyTorch code, with one difference:
our probe head starts at zeros, that code's at one fixed Kaiming-normal random draw. The backbone
kept (``pretrain.selection``) is the best-scoring one (that code) or the last (the TF code, which
takes a fixed iteration).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtl.config import Pretrain
from mtl.data.transforms import Normalize, random_resized_crop_flip
from mtl.episodes import episode_bank
from mtl.errors import MTLError
from mtl.models.backbones import create_backbone
from mtl.phases.divergence import NonFiniteWatch, Watched
from mtl.phases.evaluate import Embedder, evaluate
from mtl.runtime import Env, RngStream, progress

MLP_HIDDEN = 1000  # the official PyTorch code's pre_fc: Linear(640, 1000), ReLU, Linear(1000, classes)


def pretraining_head(kind: str, dim: int, classes: int) -> nn.Module:
    """The pretraining classifier over ``dim``-d features (``pretrain.head``)."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, classes))
    return nn.Linear(dim, classes)


class Pretrainer(Watched):
    kind = "pretrain"

    def __init__(self, p: Pretrain, env: Env, train, val, *, backbone: str, normalization: str,
                 probe_seed: int, eval_batch: int) -> None:
        """``p``: the pretraining section; ``backbone``, ``normalization``: registry names; the probe's
        validation bank is drawn with ``probe_seed`` and evaluated ``eval_batch`` episodes at a time."""
        self.p, self.env, self.train, self.val = p, env, train, val
        self.backbone, self.eval_batch = backbone, eval_batch
        self.rng = RngStream(env, env.seed)  # weight init and dropout
        fmt = torch.channels_last if env.channels_last else torch.contiguous_format
        with self.rng:
            self.model = create_backbone(backbone, dropout=p.dropout).to(env.device, memory_format=fmt)
            self.classifier = pretraining_head(p.head, self.model.out_dim, train.num_classes).to(env.device)
        params = [*self.model.parameters(), *self.classifier.parameters()]
        if p.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov and p.momentum > 0,
                weight_decay=p.weight_decay)
        else:
            self.opt = torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=p.lr_step, gamma=p.lr_gamma)
        self.gen = torch.Generator().manual_seed(env.seed)  # batch order
        self.aug_gen = env.generator(env.seed + 1)  # crops and flips, on the device
        self.normalize = Normalize(normalization, env.device, env.channels_last)
        self.embed = Embedder(self.model, self.normalize, env)
        self.bank = episode_bank(val.offsets, p.val_way, p.val_shot, p.val_query, p.val_episodes, probe_seed)
        self.epoch = 0
        self.best_acc = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.watch = NonFiniteWatch(env.device, "pretrain", f"lower pretrain.lr (now {p.lr:g})")

    @property
    def done(self) -> bool:
        return self.diverged is not None or self.epoch >= self.p.epochs


    def train_epoch(self) -> dict[str, float]:
        p, env, data = self.p, self.env, self.train
        self.model.train()
        self.classifier.train()
        n = data.labels.numel()
        bs = min(p.batch_size, n)
        # the order is drawn on the host (one seeded generator on any device), moved once per epoch
        perm = torch.randperm(n, generator=self.gen).to(data.labels.device)
        steps = n // bs  # the last partial batch is dropped (the official PyTorch code's loader keeps it)
        loss_sum = torch.zeros((), device=env.device)
        correct = torch.zeros((), device=env.device)
        start = time.perf_counter()
        for i in progress(range(steps), env, total=steps, desc=f"pretrain {self.epoch + 1}/{p.epochs}"):
            idx = perm[i * bs : (i + 1) * bs]
            x = self.embed.images(data, idx)
            if p.augment:
                x = random_resized_crop_flip(x, self.aug_gen, scale=(p.crop_scale, 1.0))
            y = data.labels.index_select(0, idx).to(env.device)
            with env.autocast():
                out = self.classifier(self.model(x)).float()
            loss = F.cross_entropy(out, y)
            self.watch.watch(loss, i + 1)
            if self.watch.due(i + 1) and self._check():
                return {}
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += loss.detach()
            correct += (out.argmax(1) == y).sum()
        if self._check():
            return {}
        self.sched.step()
        loss_mean = loss_sum.item() / steps
        self.watch.exploding(loss_mean, data.num_classes, self.epoch + 1)
        secs = time.perf_counter() - start
        return {"train_loss": loss_mean, "train_acc": correct.item() / (steps * bs),
                "images_per_s": steps * bs / secs, "lr": self.opt.param_groups[0]["lr"]}

    def validate(self) -> dict[str, Any]:
        p = self.p
        self.model.eval()
        dim = self.model.out_dim
        zeros_w = torch.zeros(p.val_way, dim, device=self.env.device)
        return evaluate(self.embed, self.val, self.bank, zeros_w, zeros_w[:, 0],
                        steps=p.probe_steps, lr=p.probe_lr, batch_episodes=self.eval_batch)

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, validate when due, keep the best backbone; returns the epoch's metrics. An
        epoch that diverges is not validated: its metrics are at their worst and marked ``diverged``,
        and the trainer is done (nothing it holds is a result)."""
        with self.rng:
            metrics: dict[str, Any] = {"phase": "pretrain", **self.train_epoch()}
        self.epoch += 1
        if self._ended_diverged(metrics):
            return metrics
        if self.epoch % self.p.val_every == 0 or self.done:
            v = self.validate()
            metrics.update(val_acc=v["acc"], val_ci95=v["ci95"])
            # best_*: the backbone kept so far (under selection "last": the latest validated one)
            if v["acc"] > self.best_acc or self.p.selection == "last":
                self.best_acc, self.best_epoch = v["acc"], self.epoch
                self.best_state = {k: t.detach().cpu().clone() for k, t in self.model.state_dict().items()}
        metrics.update(epoch=self.epoch, best_val_acc=self.best_acc)
        self.history.append(metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "classifier": self.classifier.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "gen": self.gen.get_state(),
            "aug_gen": self.aug_gen.get_state(),
            "rng": self.rng.state,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        self.classifier.load_state_dict(ck["classifier"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.gen.set_state(ck["gen"])
        self.aug_gen.set_state(ck["aug_gen"])
        self.rng.state = ck["rng"]
        self.epoch = ck["epoch"]
        self.best_acc, self.best_epoch, self.best_state = ck["best_acc"], ck["best_epoch"], ck["best_state"]
        self.history = list(ck["history"])

    def backbone_payload(self) -> dict[str, Any]:
        """The selected backbone as a ``backbone`` checkpoint for meta-transfer."""
        if self.best_state is None:
            raise MTLError("pretraining has not validated yet; nothing to export")
        return {"kind": "backbone", "backbone": self.backbone,
                "state": self.best_state, "val_acc": self.best_acc, "epoch": self.best_epoch,
                "history": copy.deepcopy(self.history)}
