"""Hard-task (HT) meta-batch scheduling (docs/algorithm.md §4.3).

After every normal meta-batch the trainer hands over each task's per-class query accuracy.
Each task's failure class(es) go into a pool; after ``window`` normal meta-batches, if the
pool holds enough distinct classes, hard meta-batches are run, each task made of ``way``
distinct pool classes with fresh images. Then the window starts over.

``hard_per_window`` may be fractional: the scheduler carries the remainder from window to
window, so any ratio of hard to normal updates is met in the long run (0.5 per window = one
hard meta-batch after every second window).

This object only decides *which classes*; it trains nothing. Unlike the preliminary public
code it clears exactly the window it pooled (its pool went stale), never repeats a class
within a task, and leaves image sampling to the episode sampler, whose support and query
are disjoint.
"""

from __future__ import annotations

from typing import Any

import torch


class HardTaskScheduler:
    def __init__(self, way: int, window: int, hard_per_window: float, top_m: int = 1, min_pool: int = 0,
                 seed: int = 0) -> None:
        if top_m >= way:
            raise ValueError("top_m must be smaller than way")
        self.way, self.window, self.hard_per_window, self.top_m = way, window, hard_per_window, top_m
        self.min_pool = max(way, min_pool)
        self._pool: set[int] = set()
        # Accuracy tables wait here (on their device) until the pool is needed, so recording a
        # meta-batch never makes the host wait for the GPU; ties are broken with an own generator
        # so that when this happens does not change any result.
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.gen = torch.Generator().manual_seed(seed)
        self.count = 0  # normal meta-batches in the current window
        self.credit = 0.0  # hard meta-batches owed, carried between windows

    @property
    def pool(self) -> set[int]:
        """Failure classes pooled in the current window."""
        for classes, acc, loss in self._pending:
            worst = self.failure_classes(classes, acc, loss, self.top_m, self.gen)
            self._pool.update(int(c) for c in worst.flatten())
        self._pending.clear()
        return self._pool

    @property
    def enabled(self) -> bool:
        return self.hard_per_window > 0

    @staticmethod
    def failure_classes(
        classes: torch.Tensor, class_acc: torch.Tensor, class_loss: torch.Tensor, top_m: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The ``top_m`` worst classes of each task, ``[B, top_m]`` class ids.

        Worst = lowest query accuracy; ties go to the higher mean query cross-entropy, then
        to a random pick (stable sorts applied from the last key to the first).
        """
        B, way = class_acc.shape
        order = torch.rand(B, way, generator=generator).argsort(dim=1)
        for key, descending in ((class_loss.cpu(), True), (class_acc.cpu(), False)):
            k = key.gather(1, order)
            order = order.gather(1, k.argsort(dim=1, descending=descending, stable=True))
        return classes.cpu().gather(1, order[:, :top_m])

    def record(self, classes: torch.Tensor, class_acc: torch.Tensor, class_loss: torch.Tensor) -> None:
        """Pool the failure classes of one normal meta-batch's tasks (``[B, way]`` each)."""
        if self.enabled:
            self._pending.append((classes.cpu(), class_acc.detach(), class_loss.detach()))

    def end_normal_batch(self) -> tuple[list[int], int] | None:
        """Count a normal meta-batch; when the window closes, return the pool to draw from and
        how many hard meta-batches to run now (None when none are due), and start a new window.

        A window whose pool is too small runs no hard batches, and its share is not carried over.
        """
        if not self.enabled:
            return None
        self.count += 1
        if self.count < self.window:
            return None
        pool = sorted(self.pool)
        self._pool.clear()
        self.count = 0
        self.credit += self.hard_per_window
        n = int(self.credit + 1e-9)
        self.credit -= n
        return (pool, n) if n > 0 and len(pool) >= self.min_pool else None

    def hard_classes(self, pool: list[int], batch: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch, way]`` class ids: each row ``way`` distinct classes drawn uniformly from the pool."""
        picks = torch.rand(batch, len(pool), generator=generator).argsort(dim=1)[:, : self.way]
        return torch.tensor(pool, dtype=torch.int64)[picks]

    def state_dict(self) -> dict[str, Any]:
        return {"pool": sorted(self.pool), "count": self.count, "credit": self.credit, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending.clear()
        self._pool = set(int(c) for c in state["pool"])
        self.gen.set_state(state["gen"])
        self.count = int(state["count"])
        self.credit = float(state["credit"])
