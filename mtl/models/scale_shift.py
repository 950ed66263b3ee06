"""Scaling and shifting (SS) of frozen convolutions, and BN handling in meta-transfer.

``SSConv2d`` computes ``conv(x, W * scale) + (b + shift)`` with the pre-trained ``W``, ``b``
frozen. ``scale`` is Cout x Cin x 1 x 1 (one scalar per 2-D kernel slice, broadcast over
the k x k taps) because that is what the paper and both official codes do
(docs/algorithm.md §3.1); a per-output-channel variant exists as an ablation. At
conversion ``scale = 1`` and ``shift = 0``, so the network computes exactly what the
pre-trained one did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mtl.errors import CheckpointError
from mtl.models.backbones import create_backbone

if TYPE_CHECKING:
    from mtl.config import Model
    from mtl.runtime import Env


class SSConv2d(nn.Module):
    """A frozen convolution with learnable per-kernel scaling and per-channel shifting."""

    def __init__(self, conv: nn.Conv2d, granularity: str = "kernel") -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError("SSConv2d supports zero padding only")
        cout, cin_g = conv.weight.shape[:2]
        # Frozen pre-trained weights are buffers: they are saved and moved with the module but
        # no optimizer can ever see them.
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        scale_shape = (cout, cin_g, 1, 1) if granularity == "kernel" else (cout, 1, 1, 1)
        self.scale = nn.Parameter(torch.ones(scale_shape, device=conv.weight.device))
        self.shift = nn.Parameter(torch.zeros(cout, device=conv.weight.device))
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.shift if self.bias is None else self.bias + self.shift
        return F.conv2d(x, self.weight * self.scale, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}, scale={tuple(self.scale.shape)}, stride={self.stride}"


def to_scale_shift(model: nn.Module, scope: str = "all", granularity: str = "kernel") -> nn.Module:
    """Convert a pre-trained backbone in place: convs become SSConv2d, every other weight freezes.

    ``scope="all"`` converts every conv (official PyTorch code); ``"3x3"`` only the 3x3 convs,
    leaving 1x1 shortcuts frozen and unscaled (TF code). BN affine parameters are frozen here;
    :func:`set_bn_mode` unfreezes them for the ``train_affine`` mode.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv2d):
            if scope == "all" or child.kernel_size != (1, 1):
                setattr(model, name, SSConv2d(child, granularity))
        else:
            to_scale_shift(child, scope, granularity)
    return model


def ss_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Scales and shifts of every SSConv2d."""
    for m in model.modules():
        if isinstance(m, SSConv2d):
            yield m.scale
            yield m.shift


def bn_affine_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            yield m.weight
            yield m.bias


def set_bn_mode(model: nn.Module, mode: str, training: bool) -> None:
    """Put BN layers in the behaviour of ``mode`` (docs/algorithm.md §9.3) for training or evaluation.

    - ``frozen``: running statistics and affine fixed, always (a truly frozen backbone).
    - ``train_affine``: affine learns; batch statistics (updating the running ones) in
      training, running statistics at evaluation (official PyTorch code; as there, each task's
      support set and query set are normalised with their own statistics, see
      :meth:`mtl.phases.evaluate.Embedder.batch_statistics`).
    - ``batch_stats``: batch statistics always, running ones never touched, affine fixed
      (TF code; transductive at evaluation).
    """
    model.train(training)
    for m in model.modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        if m.affine:
            m.weight.requires_grad_(mode == "train_affine")
            m.bias.requires_grad_(mode == "train_affine")
        if mode == "frozen":
            m.train(False)
            m.track_running_stats = True
        elif mode == "train_affine":
            m.train(training)
            m.track_running_stats = True
        elif mode == "batch_stats":
            m.train(True)
            m.track_running_stats = False  # with training=True: batch statistics, no running update
        else:
            raise ValueError(f"unknown bn mode {mode!r}")


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; a mismatch names the missing and unexpected keys instead of loading partially."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise CheckpointError(
            f"pretrained weights in {source} do not fit the backbone ({' '.join(s.strip() for s in first)}); "
            f"check model.backbone matches the checkpoint"
        ) from None


def build_meta_model(spec: Model, env: Env, backbone_state: dict[str, torch.Tensor],
                     source: str = "the backbone") -> nn.Module:
    """The meta-transfer model: the plain backbone ``spec.backbone``, the pre-trained weights loaded
    strictly, then converted to scale-shift form (``spec.ss_scope``, ``spec.scale_granularity``), on
    ``env``'s device and memory format."""
    model = create_backbone(spec.backbone)
    load_backbone_state(model, backbone_state, source)
    to_scale_shift(model, spec.ss_scope, spec.scale_granularity)
    fmt = torch.channels_last if env.channels_last else torch.contiguous_format
    return model.to(env.device, memory_format=fmt)


def _frozen_keys(model: nn.Module) -> set[str]:
    """State keys of the frozen pre-trained conv weights inside SSConv2d layers."""
    keys = set()
    for name, m in model.named_modules():
        if isinstance(m, SSConv2d):
            keys.add(f"{name}.weight")
            if m.bias is not None:
                keys.add(f"{name}.bias")
    return keys


def meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What meta-transfer can change: scales, shifts, BN parameters and statistics.

    The frozen conv weights are left out; they are the pre-trained backbone's, stored once.
    """
    frozen = _frozen_keys(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}


def load_meta_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly load a :func:`meta_state` into a converted model: the keys must match exactly."""
    expected = set(model.state_dict()) - _frozen_keys(model)
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise CheckpointError(
            f"meta-transfer state does not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(extra)[:3]}); check model.backbone and model.ss_scope"
        )
    model.load_state_dict(state, strict=False)
