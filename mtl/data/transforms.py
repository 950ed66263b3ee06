"""Normalisation and augmentation of uint8 image batches, on whatever device holds them.

Images stay uint8 in memory; a batch is gathered by index, then converted here. Random
resized crops for a whole batch are one ``torchvision.ops.roi_align`` call (one box per
image), so augmentation needs no per-image Python work and runs on the GPU.
"""

from __future__ import annotations

import math

import torch

from mtl.registry import NORMALIZATIONS

# (mean, std) per channel in [0, 1] units (docs/algorithm.md §7)
NORMALIZATIONS.register("pt")(((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)))
NORMALIZATIONS.register("imagenet")(((120.40 / 255, 115.59 / 255, 104.54 / 255),
                                     (70.68 / 255, 68.28 / 255, 72.55 / 255)))
NORMALIZATIONS.register("cifar")(((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)))
NORMALIZATIONS.register("none")(((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))


class Normalize:
    """uint8 ``[N, 3, H, W]`` -> normalised float32, optionally channels_last."""

    def __init__(self, name: str, device: torch.device, channels_last: bool = False) -> None:
        mean, std = NORMALIZATIONS.get(name)
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, 3, 1, 1)
        self.offset = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, 3, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.offset, images.float(), self.scale)
        return x.contiguous(memory_format=self.memory_format)


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def random_resized_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop (area share in ``scale``, aspect in ``ratio``) + random horizontal flip,
    a different crop per image, back to the input size. ``x`` float ``[N, C, H, W]``.

    Boxes are drawn directly in the feasible range instead of by rejection sampling, so the
    cost is fixed: area share uniform in ``scale``, log-aspect uniform in ``ratio``, the box
    clipped to the image.
    """
    from torchvision.ops import roi_align  # imported here: torchvision adds ~1 s to every process start

    n, _, h, w = x.shape
    dev = x.device
    r = torch.rand(n, 5, generator=generator, device=generator.device).to(dev)
    area = (scale[0] + (scale[1] - scale[0]) * r[:, 0]) * (h * w)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * r[:, 1]
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).clamp(1.0, w)
    ch = torch.sqrt(area / aspect).clamp(1.0, h)
    x0 = r[:, 2] * (w - cw)
    y0 = r[:, 3] * (h - ch)
    boxes = torch.stack([torch.arange(n, device=dev, dtype=x.dtype), x0, y0, x0 + cw, y0 + ch], dim=1)
    out = roi_align(x, boxes.to(x.dtype), output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    flip = (r[:, 4] < 0.5).view(n, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out).contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Keep channels_last inputs channels_last."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
