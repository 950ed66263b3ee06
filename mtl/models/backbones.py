"""Feature extractors: the paper's ResNet-12, the official PyTorch code's ResNet-25, a tiny test net.

Backbones return features only (``[B, out_dim]``); classifiers live elsewhere, so the same
module is pre-trained, converted to scale-shift form, and meta-trained. See
``docs/algorithm.md`` §5 for the two architectures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtl.registry import BACKBONES


def create_backbone(name: str, dropout: float = 0.0) -> nn.Module:
    """Build a registered backbone; ``dropout`` acts after each residual block (pretraining)."""
    return BACKBONES.create(name, dropout=dropout)


class Backbone(nn.Module):
    """Stages of residual blocks followed by global average pooling."""

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], out_dim: int, dropout: float) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = self.drop(block(x))
        return x.mean(dim=(2, 3))


# Paper ResNet-12


class PaperBlock(nn.Module):
    """TF ResNet-12 block: three 3x3 conv (bias) + BN + LeakyReLU(0.1), 1x1 conv shortcut, max-pool.

    As in the TF code the third conv is activated before the addition, and the shortcut is a
    bias-free 1x1 conv without BN. BN keeps its affine parameters (see docs/algorithm.md §2).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=True),
                       nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x) + self.shortcut(x))


def _paper_resnet(widths: Sequence[int], dropout: float) -> Backbone:
    blocks = [PaperBlock(cin, cout) for cin, cout in zip((3, *widths[:-1]), widths)]
    net = Backbone(nn.Identity(), blocks, widths[-1], dropout)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


@BACKBONES.register()
def resnet12(dropout: float = 0.0) -> Backbone:
    """The MTL paper's ResNet-12: widths 64-128-256-512, 512-d features (84 px -> 5x5 map)."""
    return _paper_resnet((64, 128, 256, 512), dropout)


@BACKBONES.register()
def tiny(dropout: float = 0.0) -> Backbone:
    """ResNet-12 shape at widths 16-32-48-64: trains on a CPU in seconds (tests, smoke runs)."""
    return _paper_resnet((16, 32, 48, 64), dropout)


# Official-code ResNet-25


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, ReLU after the sum; 1x1 conv + BN downsample when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


@BACKBONES.register()
def resnet25(dropout: float = 0.0) -> Backbone:
    """The official PyTorch code's ResNetMtl ("ResNet-25"): stem 80, stages 160/320/640 x 4 blocks.

    80 px input -> 10x10 map -> 640-d features. Kaiming-normal (fan_out) init as in that code.
    """
    stem = nn.Sequential(nn.Conv2d(3, 80, 3, padding=1, bias=True), nn.BatchNorm2d(80), nn.ReLU(inplace=True))
    blocks: list[nn.Module] = []
    cin = 80
    for width in (160, 320, 640):
        for i in range(4):
            blocks.append(BasicBlock(cin, width, stride=2 if i == 0 else 1))
            cin = width
    net = Backbone(stem, blocks, 640, dropout)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net
