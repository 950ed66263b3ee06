"""Seeded N-way K-shot Q-query episodes as index tensors into a class-grouped image array.

A split stores class ``c`` in rows ``offsets[c]:offsets[c+1]``, so an episode is just two
index tensors (support, query) and the classes they came from; gathering images is one
``index_select`` on whatever device holds the images. Labels are implicit: support row
``i`` has label ``i // shot`` and query row ``j`` has label ``j // query``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

# the fixed banks of one run: the pretraining probe's, meta-validation's, the test episodes; and a
# sweep's race of its finalists on fresh validation episodes (mtl.tune.race)
BANKS = ("probe", "val", "test", "race")


@dataclass(frozen=True)
class Episodes:
    """B episodes of the same shape. All tensors int64 on the CPU."""

    support: torch.Tensor  # [B, way * shot] image rows
    query: torch.Tensor  # [B, way * query] image rows
    classes: torch.Tensor  # [B, way] class ids, in label order
    shot: int
    n_query: int

    @property
    def way(self) -> int:
        return self.classes.shape[1]

    def __len__(self) -> int:
        return self.classes.shape[0]

    def __getitem__(self, sl: slice) -> Episodes:
        return Episodes(self.support[sl], self.query[sl], self.classes[sl], self.shot, self.n_query)

    def labels(self, per_class: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[B, way * per_class]`` labels for class-major rows."""
        lab = torch.arange(self.way, device=device).repeat_interleave(per_class)
        return lab.expand(len(self), -1)


def sample_episodes(
    offsets: torch.Tensor,
    way: int,
    shot: int,
    query: int,
    batch: int,
    generator: torch.Generator,
    classes: torch.Tensor | None = None,
) -> Episodes:
    """Draw ``batch`` episodes: ``way`` distinct classes (unless ``classes [batch, way]`` is
    given), then ``shot + query`` distinct images per class, split into disjoint support and
    query. Random subsets without replacement come from the smallest of uniform keys, which
    handles classes of different sizes in one vectorised call.
    """
    offsets = offsets.cpu()
    counts = offsets[1:] - offsets[:-1]
    n_cls = counts.numel()
    if classes is None:
        classes = torch.rand(batch, n_cls, generator=generator).argsort(dim=1)[:, :way]
    else:
        classes = classes.to(torch.int64).cpu()
    k = shot + query
    cnt = counts[classes]  # [B, way]
    if int(cnt.min()) < k:
        raise ValueError(f"a class has {int(cnt.min())} images; an episode needs {k} per class")
    keys = torch.rand(batch, way, int(cnt.max()), generator=generator)
    keys.masked_fill_(torch.arange(keys.shape[-1]) >= cnt.unsqueeze(-1), 2.0)
    picks = keys.topk(k, dim=-1, largest=False).indices + offsets[classes].unsqueeze(-1)  # [B, way, k]
    return Episodes(
        support=picks[..., :shot].reshape(batch, way * shot),
        query=picks[..., shot:].reshape(batch, way * query),
        classes=classes,
        shot=shot,
        n_query=query,
    )


def episode_bank(offsets: torch.Tensor, way: int, shot: int, query: int, n: int, seed: int,
                 exclude: Episodes | None = None) -> Episodes:
    """A fixed list of ``n`` episodes: identical for every run that uses the same seed and shape,
    so trials are compared on the same tasks. With ``exclude``, none of them is a task of that bank
    (the same support and query images, in any label order): drawn again until none is."""
    g = torch.Generator().manual_seed(seed)
    bank = sample_episodes(offsets, way, shot, query, n, g)
    if exclude is None:
        return bank
    taken = {task_key(exclude, i) for i in range(len(exclude))}
    while clash := [i for i in range(len(bank)) if task_key(bank, i) in taken]:
        keep = torch.tensor([i for i in range(len(bank)) if i not in set(clash)], dtype=torch.long)
        more = sample_episodes(offsets, way, shot, query, len(clash), g)
        bank = Episodes(torch.cat([bank.support[keep], more.support]), torch.cat([bank.query[keep], more.query]),
                        torch.cat([bank.classes[keep], more.classes]), shot, query)
    return bank


def task_key(eps: Episodes, i: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What makes episode ``i`` the task it is: its support and query images, whatever their labels."""
    return tuple(sorted(eps.support[i].tolist())), tuple(sorted(eps.query[i].tolist()))


def bank_seed(seed: int, role: str) -> int:
    """The seed of the bank ``role`` (one of :data:`BANKS`) for the run seed ``eval.seed``: one
    seed, three unrelated streams, so the backbone is not selected on the very tasks that select
    the meta-trained model (the probe and meta-validation both draw 1-shot episodes from the
    validation split), and no test episode repeats a validation one."""
    if role not in BANKS:
        raise ValueError(f"bank role must be one of {BANKS}, not {role!r}")
    return int.from_bytes(hashlib.sha256(f"mtl-bank|{role}|{seed}".encode()).digest()[:8], "little") >> 1
