"""Phase B: meta-transfer with scaling/shifting, and the hard-task meta-batch.

The pre-trained backbone is converted to scale-shift form and frozen; only scales, shifts,
the head initialisation (and BN affine in ``train_affine`` mode) learn, with two Adam
parameter groups. One outer update: embed a meta-batch of tasks (in one forward while BN uses
running statistics; one forward per task's support set and per query set while it uses batch
statistics, :class:`~mtl.phases.evaluate.Embedder`), adapt each task's head on its support
features, score the adapted heads on the query features, average, step. Hard meta-batches
follow each window of normal ones (docs/algorithm.md §4.3).

A non-finite loss stops training at the first check after it (:mod:`mtl.phases.divergence`):
that epoch's metrics are marked ``diverged`` with every metric at its worst, and the trainer is
done.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch

from mtl.config import Eval, HardTasks, Meta, Model, hard_batches_per_window, validation_query
from mtl.data.transforms import Normalize
from mtl.episodes import Episodes, bank_seed, episode_bank, sample_episodes
from mtl.hard_tasks import HardTaskScheduler
from mtl.models.head import HeadInit, adapt_head, logits, query_stats
from mtl.models.scale_shift import (
    bn_affine_parameters,
    build_meta_model,
    load_meta_state,
    meta_state,
    set_bn_mode,
    ss_parameters,
)
from mtl.phases.divergence import NonFiniteWatch, Watched
from mtl.phases.evaluate import Embedder, evaluate
from mtl.runtime import Env, RngStream, progress

log = logging.getLogger(__name__)


class MetaTrainer(Watched):
    kind = "meta"

    def __init__(self, m: Meta, spec: Model, ht: HardTasks, ev: Eval, env: Env, train, val,
                 backbone_state: dict[str, torch.Tensor], *, normalization: str) -> None:
        """Its own sections (meta, model, hard_tasks, eval), the environment, the decoded splits,
        the pre-trained weights and the normalisation's registry name."""
        self.m, self.spec, self.ev, self.env, self.train, self.val = m, spec, ev, env, train, val
        self.rng = RngStream(env, env.seed)  # head initialisation
        with self.rng:
            self.model = build_meta_model(spec, env, backbone_state)
            self.head = HeadInit(m.way, self.model.out_dim, m.head_init).to(env.device)
        set_bn_mode(self.model, spec.bn_mode, training=True)
        ss = list(ss_parameters(self.model))
        if spec.bn_mode == "train_affine":
            ss += list(bn_affine_parameters(self.model))
        self.opt = torch.optim.Adam([{"params": ss, "lr": m.lr_ss}, {"params": self.head.parameters(), "lr": m.lr_head}])
        floors = [min(1.0, m.lr_floor / g["lr"]) for g in self.opt.param_groups]
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, [lambda s, f=f: max(m.lr_gamma ** (s // m.lr_step), f) for f in floors])
        self.gen = torch.Generator().manual_seed(env.seed + 2)  # tasks and hard-task picks
        self.ht = HardTaskScheduler(m.way, ht.window, hard_batches_per_window(ht), ht.top_m, ht.min_pool,
                                    seed=env.seed + 3)
        self.normalize = Normalize(normalization, env.device, env.channels_last)
        self.embed = Embedder(self.model, self.normalize, env)
        # its own query count under either protocol (it selects; the paper's Q = K is the test's alone),
        # with the protocol's flipped support copies (evaluate)
        self.val_bank = episode_bank(val.offsets, m.way, m.shot, validation_query(ev), ev.val_episodes,
                                     bank_seed(ev.seed, "val"))
        self.epoch = 0
        self.step = 0
        self.hard_updates = 0
        self.best_acc = -1.0
        self.best_ci = 0.0  # the 95% CI of best_acc
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None
        self.last_val: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        # per-episode accuracies on the validation bank, each epoch it was evaluated: trials of a
        # sweep share the bank, so these pair them episode by episode (mtl.stats)
        self.val_accs: list[dict[str, Any]] = []
        self.watch = NonFiniteWatch(env.device, "meta", f"lower meta.inner_lr (now {m.inner_lr:g}) or the meta lrs "
                                                        f"(lr_ss {m.lr_ss:g}, lr_head {m.lr_head:g})")

    @property
    def done(self) -> bool:
        return self.diverged is not None or self.epoch >= self.m.epochs

    def task_stats(self, source, eps: Episodes, *, steps: int, first_order: bool) -> dict[str, torch.Tensor]:
        """Adapt each task's head on its support set and score it on its query set."""
        dev, m = self.env.device, self.m
        fs, fq = self.embed(source, eps)
        w, b = adapt_head(fs, eps.labels(eps.shot, dev), self.head.weight, self.head.bias,
                          steps=steps, lr=m.inner_lr, first_order=first_order)
        return query_stats(logits(fq, w, b), eps.labels(eps.n_query, dev), eps.way)

    def outer_step(self, eps: Episodes) -> dict[str, torch.Tensor] | None:
        """One update on ``eps``; None, and no update, when a check finds a non-finite loss."""
        m = self.m
        stats = self.task_stats(self.train, eps, steps=m.inner_steps, first_order=m.first_order)
        loss = stats["loss"].mean()
        self.watch.watch(loss, self.step + 1)
        if self.watch.due(self.step + 1) and self._check():
            return None
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        return stats

    def sample(self, classes: torch.Tensor | None = None) -> Episodes:
        m = self.m
        return sample_episodes(self.train.offsets, m.way, m.shot, m.query, m.meta_batch, self.gen, classes)

    def train_epoch(self) -> dict[str, float]:
        m = self.m
        set_bn_mode(self.model, self.spec.bn_mode, training=True)
        losses, accs = [], []
        hard = 0
        start = time.perf_counter()
        for _ in progress(range(m.batches_per_epoch), self.env, total=m.batches_per_epoch,
                          desc=f"meta {self.epoch + 1}/{m.epochs}"):
            eps = self.sample()
            stats = self.outer_step(eps)
            if stats is None:
                break
            losses.append(stats["loss"].detach().mean())
            accs.append(stats["acc"].mean())
            self.ht.record(eps.classes, stats["class_acc"], stats["class_loss"])
            due = self.ht.end_normal_batch()
            if due is not None:
                pool, n_hard = due
                for _ in range(n_hard):
                    if self.outer_step(self.sample(self.ht.hard_classes(pool, m.meta_batch, self.gen))) is None:
                        break
                    hard += 1
                if self.diverged:
                    break
        lrs = {"lr_ss": self.opt.param_groups[0]["lr"], "lr_head": self.opt.param_groups[1]["lr"]}
        if self.diverged or self._check():
            self.hard_updates += hard
            return {"updates": self.step, **lrs}
        loss = torch.stack(losses).mean().item()
        self.watch.exploding(loss, m.way, self.epoch + 1)
        updates = m.batches_per_epoch + hard
        secs = time.perf_counter() - start
        self.hard_updates += hard
        return {"train_loss": loss, "train_acc": torch.stack(accs).mean().item(),
                "hard_share": hard / updates, "hard_share_total": self.hard_updates / self.step,
                "episodes_per_s": updates * m.meta_batch / secs, "updates": self.step, **lrs}


    def evaluate(self, source, episodes: Episodes) -> dict[str, Any]:
        """Few-shot accuracy of the current model and head init on fixed episodes."""
        set_bn_mode(self.model, self.spec.bn_mode, training=False)
        e = self.ev
        return evaluate(self.embed, source, episodes, self.head.weight, self.head.bias,
                        steps=e.inner_steps, lr=self.m.inner_lr, batch_episodes=e.batch_episodes,
                        flip_support=e.protocol == "paper")

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, validate on the fixed bank when due, keep the best state. An epoch that
        diverges is not validated: its metrics are at their worst and marked ``diverged`` (1) with
        the ``diverged_update``, and the trainer is done."""
        metrics: dict[str, Any] = {"phase": "meta", **self.train_epoch()}
        self.epoch += 1
        if self._ended_diverged(metrics):
            return metrics
        if self.epoch % self.ev.val_every == 0 or self.done:
            v = self.evaluate(self.val, self.val_bank)
            self.last_val = {"val_acc": v["acc"], "val_ci95": v["ci95"]}
            self.val_accs.append({"epoch": self.epoch, "accs": v["accs"]})
            if v["acc"] > self.best_acc:
                self.best_acc, self.best_ci, self.best_epoch = v["acc"], v["ci95"], self.epoch
                self.best_state = self.trainable_state()
        metrics.update(self.last_val)
        metrics.update(epoch=self.epoch, best_val_acc=self.best_acc, best_val_ci95=self.best_ci)
        self.history.append(metrics)
        return metrics

    # ------------------------------------------------------------------ state

    def trainable_state(self) -> dict[str, Any]:
        """Everything meta-transfer learns (the frozen conv weights are the backbone's)."""
        return {"model": {k: v.cpu() for k, v in meta_state(self.model).items()},
                "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}}

    def load_trainable_state(self, state: dict[str, Any]) -> None:
        load_meta_state(self.model, state["model"])
        self.head.load_state_dict(state["head"])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume except the frozen pre-trained weights, which the caller
        keeps (a run folder's checkpoint embeds them; a trial's names their pretraining entry)."""
        return {
            "kind": self.kind,
            "current": self.trainable_state(),
            "best_state": self.best_state,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "gen": self.gen.get_state(),
            "rng": self.rng.state,
            "hard_tasks": self.ht.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "hard_updates": self.hard_updates,
            "best_acc": self.best_acc,
            "best_ci": self.best_ci,
            "best_epoch": self.best_epoch,
            "last_val": dict(self.last_val),
            "history": copy.deepcopy(self.history),
            "val_accs": copy.deepcopy(self.val_accs),
        }

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        self.load_trainable_state(ck["current"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.gen.set_state(ck["gen"])
        self.rng.state = ck["rng"]
        self.ht.load_state_dict(ck["hard_tasks"])
        self.epoch, self.step, self.hard_updates = ck["epoch"], ck["step"], ck["hard_updates"]
        self.best_acc, self.best_epoch, self.best_state = ck["best_acc"], ck["best_epoch"], ck["best_state"]
        self.best_ci = ck["best_ci"]
        self.last_val = dict(ck["last_val"])
        self.history = list(ck["history"])
        self.val_accs = list(ck["val_accs"])
