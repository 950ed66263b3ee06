"""The base learner: an N-way linear head adapted on each task's support features.

One pure function, :func:`adapt_head`, is the inner loop of meta-training, validation,
test and the pretraining probe. It runs on a batch of tasks at once (``[B, ...]``). The
cross-entropy gradient of a linear head has a closed form, ``(softmax(Fw^T + b) - Y)^T F / n``,
so no autograd is needed for the steps themselves:

- first order: the steps run under ``no_grad`` on detached features; the result is
  ``w0 + delta`` so the head initialisation receives the query gradient directly and the
  backbone only through the query features (official PyTorch code);
- second order: the same closed-form steps are recorded by autograd, so the outer
  gradient differentiates through every inner step, reaching the backbone through the
  support features too (TF code). This equals ``torch.autograd.grad(create_graph=True)``
  on the support loss (checked in the tests against that reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtl.registry import HEAD_INITS

HEAD_INITS.register("kaiming")(nn.init.kaiming_normal_)  # official PyTorch code
HEAD_INITS.register("xavier")(nn.init.xavier_uniform_)  # TF code
HEAD_INITS.register("zeros")(nn.init.zeros_)


class HeadInit(nn.Module):
    """The meta-learned initialisation theta of the N-way head."""

    def __init__(self, way: int, dim: int, init: str = "kaiming") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(way, dim))
        self.bias = nn.Parameter(torch.zeros(way))
        HEAD_INITS.get(init)(self.weight)


def logits(feats: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B, n, D] x [B, way, D] + [B, way] -> [B, n, way]``."""
    return torch.baddbmm(b.unsqueeze(1), feats, w.transpose(1, 2))


def adapt_head(
    feats: torch.Tensor,
    labels: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool,
    originals: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` plain gradient steps on the support cross-entropy, for B tasks at once.

    feats ``[B, n, D]`` (float32), labels ``[B, n]`` in ``[0, way)``, w0 ``[way, D]`` or
    ``[B, way, D]``, b0 ``[way]`` or ``[B, way]``. Returns adapted ``w [B, way, D]``, ``b [B, way]``.

    The loss is the cross-entropy summed over the ``n`` support images and divided by ``originals``,
    the number of original support images (default ``n``: the mean). Where flipped copies double
    the support set (``eval.protocol: paper``), ``originals = n / 2`` keeps the TF code's step:
    it sums over every image, copies included, and divides by the shot, so a copy adds a step
    rather than halving each image's weight (docs/algorithm.md §3.2).

    The bias is folded into an augmented weight ``A = [w | b]`` acting on ``[F | 1]``, and the
    constant half of the gradient, ``(lr / m) Y^T [F | 1]`` (m = ``originals``), is computed once, so a
    step is ``A <- A + C - softmax([F | 1] A^T)^T (lr / m) [F | 1]``: four kernels instead of a dozen,
    which is what bounds the inner loop on a GPU (see mtl/bench).
    """
    B, n, D = feats.shape
    way = w0.shape[-2]
    f = feats.detach() if first_order else feats
    fa = torch.cat([f, f.new_ones(B, n, 1)], dim=2)  # [B, n, D + 1]
    fs = fa * (lr / (originals or n))
    c = torch.bmm(F.one_hot(labels, way).to(feats.dtype).transpose(1, 2), fs)  # [B, way, D + 1]
    a0 = torch.cat([w0.expand(B, way, D), b0.expand(B, way).unsqueeze(2)], dim=2)
    if first_order:
        with torch.no_grad():
            a = a0.detach().clone()
            for _ in range(steps):
                p = torch.softmax(torch.bmm(fa, a.transpose(1, 2)), dim=-1)
                a.add_(c).baddbmm_(p.transpose(1, 2), fs, alpha=-1)
            delta = a - a0
        a = a0 + delta  # the query gradient reaches the initialisation unchanged
    else:
        a = a0
        for _ in range(steps):
            p = torch.softmax(torch.bmm(fa, a.transpose(1, 2)), dim=-1)
            a = torch.baddbmm(a + c, p.transpose(1, 2), fs, alpha=-1)
    return a[..., :D], a[..., D]


def query_stats(lg: torch.Tensor, labels: torch.Tensor, way: int) -> dict[str, torch.Tensor]:
    """Per-task loss and accuracy, and per-class accuracy and loss (for hard-task mining).

    lg ``[B, n, way]``, labels ``[B, n]``. Returns ``loss [B]`` (mean CE, differentiable),
    ``acc [B]``, ``class_acc [B, way]``, ``class_loss [B, way]`` (detached).
    """
    ce = F.cross_entropy(lg.flatten(0, 1).float(), labels.flatten(), reduction="none").view_as(labels)
    correct = (lg.argmax(-1) == labels).float()
    onehot = F.one_hot(labels, way).float()
    per_class = onehot.sum(1).clamp_min(1)
    return {
        "loss": ce.mean(1),
        "acc": correct.mean(1),
        "class_acc": torch.einsum("bn,bnc->bc", correct, onehot) / per_class,
        "class_loss": torch.einsum("bn,bnc->bc", ce.detach(), onehot) / per_class,
    }


def ci95(accs: torch.Tensor) -> float:
    """Half-width of the 95% confidence interval: 1.96 * population std / sqrt(n) (docs/algorithm.md §6)."""
    n = accs.numel()
    return 1.96 * accs.double().std(unbiased=False).item() / math.sqrt(n) if n else float("nan")
