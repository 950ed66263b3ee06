"""Divergence: a loss that became non-finite, found at the update where it appeared.

:class:`NonFiniteWatch` marks the first update whose loss is not finite in a tensor on the
loss's device (no host sync per update) and reads it on the host only when :meth:`due`: at
every update on a CPU, where reading is free, so no non-finite update is ever applied; every
:data:`CHECK_EVERY` updates on an accelerator, and at the end of each epoch. The weights after a
non-finite update are not a result: a trainer that sees one stops at once, and nothing after it
is validated or checkpointed.

Both phases report divergence the same way: the trainer keeps a :class:`Divergence` (where, and
what to lower), and its last epoch's metrics are marked ``diverged: 1`` with every metric at its
worst (:func:`mtl.metrics.worst_metrics`), so a sweep's scheduler and searcher learn that the region
is bad and Ray Tune does not retry a deterministic failure. A pretraining that diverged publishes
no backbone. A loss that explodes without becoming non-finite (:func:`warn_if_exploding`) gets one
warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mtl.metrics import worst_metrics

log = logging.getLogger(__name__)

CHECK_EVERY = 16  # updates between two host reads of the flag on an accelerator
EXPLODING = 10.0  # a training loss this many times the chance level's (log of the classes) is exploding


@dataclass(frozen=True)
class Divergence:
    """Where a loss first became non-finite: the phase, its epoch (1-based) and the update (in
    pretraining, the step of that epoch), and what to lower."""

    phase: Literal["pretrain", "meta"]
    epoch: int
    update: int
    fix: str

    def line(self) -> str:
        """``pretraining loss became non-finite at step 3 of epoch 1; lower pretrain.lr (now 0.05)``."""
        if self.phase == "pretrain":
            return f"pretraining loss became non-finite at step {self.update} of epoch {self.epoch}; {self.fix}"
        return (f"meta-training's loss became non-finite at update {self.update} (epoch {self.epoch}); "
                f"{self.fix}")

    def warning(self) -> str:
        """The log line of the trial that stops here."""
        name, at = ("pretraining", f"step {self.update} of epoch {self.epoch}") if self.phase == "pretrain" else (
            "meta-training", f"update {self.update} (epoch {self.epoch})")
        return (f"{name} diverged at {at}: its loss became non-finite, so the run stops with every metric at its "
                f"worst; {self.fix}")

    def metrics(self) -> dict[str, Any]:
        """What the epoch that diverged reports: every metric at its worst, marked."""
        return {**worst_metrics(), "epoch": self.epoch, "diverged": 1, "diverged_update": self.update}

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "epoch": self.epoch, "update": self.update}


class NonFiniteWatch:
    """A trainer's watch over its loss: the first update (1-based, counted by the trainer) whose loss
    was not finite, marked on the device (0 while none was); once read, where it diverged
    (:attr:`diverged`); and one warning for a loss that explodes without becoming non-finite.
    ``fix``: what to lower, as the messages say it."""

    def __init__(self, device: torch.device, phase: Literal["pretrain", "meta"] = "meta", fix: str = "",
                 every: int | None = None) -> None:
        self.first = torch.zeros((), dtype=torch.long, device=device)
        self.every = every if every is not None else (1 if device.type == "cpu" else CHECK_EVERY)
        self.phase, self.fix = phase, fix
        self.diverged: Divergence | None = None
        self.warned = False  # of an exploding loss, once

    def check(self, epoch: int) -> bool:
        """Read the flag (one host sync); on the first that is set, :attr:`diverged` says where."""
        if self.diverged is None and (update := self.read()) is not None:
            self.diverged = Divergence(self.phase, epoch, update, self.fix)
        return self.diverged is not None

    def exploding(self, loss: float, classes: int, epoch: int) -> None:
        """:func:`warn_if_exploding`, once per trainer."""
        what = "pretraining" if self.phase == "pretrain" else "meta-training"
        self.warned = self.warned or warn_if_exploding(loss, classes, what, epoch, self.fix)

    def watch(self, loss: torch.Tensor, update: int) -> None:
        """Mark ``update`` if ``loss`` is not finite and no earlier update was marked (on the device)."""
        self.first.masked_fill_(~torch.isfinite(loss.detach()) & (self.first == 0), update)

    def due(self, update: int) -> bool:
        return update % self.every == 0

    def read(self) -> int | None:
        """The marked update, or None: one host sync."""
        return int(self.first.item()) or None


class Watched:
    """What a trainer with a :class:`NonFiniteWatch` (``self.watch``) and an epoch count gets from it."""

    watch: NonFiniteWatch
    epoch: int
    history: list[dict[str, Any]]

    @property
    def diverged(self) -> Divergence | None:
        """Where the loss first became non-finite (None: it did not)."""
        return self.watch.diverged

    def _check(self) -> bool:
        """Read the non-finite flag (one host sync): True once the trainer has diverged."""
        return self.watch.check(self.epoch + 1)

    def _ended_diverged(self, metrics: dict[str, Any]) -> bool:
        """Whether the epoch of ``metrics`` diverged; then they become its worst, marked, in the history."""
        if self.diverged:
            metrics.update(self.diverged.metrics())
            self.history.append(metrics)
        return self.diverged is not None


def warn_if_exploding(loss: float, classes: int, what: str, epoch: int, fix: str) -> bool:
    """Warn (and return True) when a finite training ``loss`` is :data:`EXPLODING` times the
    cross-entropy of a uniform guess over ``classes``."""
    chance = math.log(classes)
    if not (math.isfinite(loss) and loss > EXPLODING * chance):
        return False
    log.warning("%s loss %.3g in epoch %d is over %gx that of a uniform guess (log %d = %.2f): training is "
                "exploding and what it learns is noise; %s", what, loss, epoch, EXPLODING, classes, chance, fix)
    return True
