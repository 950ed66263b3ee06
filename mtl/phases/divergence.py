"""Divergence: a loss that became non-finite, found at the update where it appeared.

:class:`NonFiniteWatch` marks the first update whose loss is not finite in a tensor on the
loss's device (no host sync per update) and reads it on the host only when :meth:`due`: at
every update on a CPU, where reading is free, so no non-finite update is ever applied; every
:data:`CHECK_EVERY` updates on an accelerator, and at the end of each epoch. The weights after a
non-finite update are not a result: a trainer that sees one stops at once, and nothing after it
is validated or checkpointed.

Meta-training that diverges ends with a result (:func:`worst_metrics`, ``diverged: 1``), so a
sweep's scheduler and searcher learn that the region is bad and Ray Tune does not retry a
deterministic failure. Pretraining that diverges raises :class:`~mtl.errors.Diverged`: its store
must not publish the backbone (the Ray trainable turns that error into the same worst result).
A loss that explodes without becoming non-finite (:func:`warn_if_exploding`) gets one warning.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)

CHECK_EVERY = 16  # updates between two host reads of the flag on an accelerator
EXPLODING = 10.0  # a training loss this many times the chance level's (log of the classes) is exploding


def worst_metrics() -> dict[str, float]:
    """Every metric a sweep can optimise (``tune.metric``) at its worst: accuracies 0 (mode max),
    the training loss +inf (mode min)."""
    return {"val_acc": 0.0, "best_val_acc": 0.0, "train_acc": 0.0, "train_loss": math.inf}


class NonFiniteWatch:
    """The first update (1-based, counted by the trainer) whose loss was not finite, 0 while none was."""

    def __init__(self, device: torch.device, every: int | None = None) -> None:
        self.first = torch.zeros((), dtype=torch.long, device=device)
        self.every = every if every is not None else (1 if device.type == "cpu" else CHECK_EVERY)

    def watch(self, loss: torch.Tensor, update: int) -> None:
        """Mark ``update`` if ``loss`` is not finite and no earlier update was marked (on the device)."""
        self.first.masked_fill_(~torch.isfinite(loss.detach()) & (self.first == 0), update)

    def due(self, update: int) -> bool:
        return update % self.every == 0

    def read(self) -> int | None:
        """The marked update, or None: one host sync."""
        return int(self.first.item()) or None


def warn_if_exploding(loss: float, classes: int, what: str, epoch: int, fix: str) -> bool:
    """Warn (and return True) when a finite training ``loss`` is :data:`EXPLODING` times the
    cross-entropy of a uniform guess over ``classes``."""
    chance = math.log(classes)
    if not (math.isfinite(loss) and loss > EXPLODING * chance):
        return False
    log.warning("%s loss %.3g in epoch %d is over %gx that of a uniform guess (log %d = %.2f): training is "
                "exploding and what it learns is noise; %s", what, loss, epoch, EXPLODING, classes, chance, fix)
    return True
