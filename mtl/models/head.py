"""The base learner: an N-way linear head adapted on each task's support features.

One pure function, :func:`adapt_head`, is the inner loop of meta-training, validation,
test and the pretraining probe. It runs on a batch of tasks at once (``[B, ...]``). The
cross-entropy gradient of a linear head has a closed form, ``(softmax(Fw^T + b) - Y) / n``
times the features, so no autograd is needed for the steps themselves:

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


class HeadInit(nn.Module):
    """The meta-learned initialisation theta of the N-way head."""

    def __init__(self, way: int, dim: int, init: str = "kaiming") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(way, dim))
        self.bias = nn.Parameter(torch.zeros(way))
        if init == "kaiming":  # official PyTorch code
            nn.init.kaiming_normal_(self.weight)
        elif init == "xavier":  # TF code
            nn.init.xavier_uniform_(self.weight)
        elif init == "zeros":
            nn.init.zeros_(self.weight)
        else:
            raise ValueError(f"unknown head init {init!r}")


def logits(feats: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B, n, D] x [B, way, D] + [B, way] -> [B, n, way]``."""
    return torch.baddbmm(b.unsqueeze(1), feats, w.transpose(1, 2))


def _ce_grad(feats: torch.Tensor, onehot: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """Gradient of the mean cross-entropy of each task w.r.t. its (w, b)."""
    g = (torch.softmax(logits(feats, w, b), dim=-1) - onehot) / feats.shape[1]
    return torch.bmm(g.transpose(1, 2), feats), g.sum(dim=1)


def adapt_head(
    feats: torch.Tensor,
    labels: torch.Tensor,
    w0: torch.Tensor,
    b0: torch.Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` plain gradient steps on the mean support cross-entropy, for B tasks at once.

    feats ``[B, n, D]`` (float32), labels ``[B, n]`` in ``[0, way)``, w0 ``[way, D]`` or
    ``[B, way, D]``, b0 ``[way]`` or ``[B, way]``. Returns adapted ``w [B, way, D]``, ``b [B, way]``.
    """
    B, _, D = feats.shape
    way = w0.shape[-2]
    w0 = w0.expand(B, way, D)
    b0 = b0.expand(B, way)
    onehot = F.one_hot(labels, way).to(feats.dtype)
    if first_order:
        with torch.no_grad():
            f = feats.detach()
            w, b = w0.detach().clone(), b0.detach().clone()
            for _ in range(steps):
                gw, gb = _ce_grad(f, onehot, w, b)
                w.sub_(gw, alpha=lr)
                b.sub_(gb, alpha=lr)
            dw, db = w - w0, b - b0
        return w0 + dw, b0 + db
    w, b = w0, b0
    for _ in range(steps):
        gw, gb = _ce_grad(feats, onehot, w, b)
        w, b = w - lr * gw, b - lr * gb
    return w, b


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
    """Half-width of the 95% confidence interval: 1.96 * population std / sqrt(n) (mtl-algorithm.md §6)."""
    n = accs.numel()
    return 1.96 * accs.double().std(unbiased=False).item() / math.sqrt(n) if n else float("nan")
