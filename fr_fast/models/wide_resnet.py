"""Wide ResNet (Zagoruyko & Komodakis, 2016) in the pre-activation form used by Madry/TRADES code."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model
from .head import ClassifierHead
from .preact_resnet import PreActBlock


class WideResNet(nn.Module):
    """WRN-depth-widen: 3x3 stem (16 ch), 3 stages of (depth-4)/6 blocks with 16k/32k/64k channels.

    Input (B, in_channels, H, W), H, W >= 28 -> logits (B, num_classes).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 34, widen: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        if widen < 1:
            raise ValueError(f"widen must be >= 1, got {widen}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        layers, cin = [], widths[0]
        for stage, cout in enumerate(widths[1:]):
            for j in range(n):
                stride = 2 if (stage > 0 and j == 0) else 1
                layers.append(PreActBlock(cin, cout, stride, dropout))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = ClassifierHead(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(self.pool(out), 1))


@register_model("wrn")
def wrn(num_classes: int, in_channels: int = 3, depth: int = 34, widen: int = 10,
        dropout: float = 0.0) -> nn.Module:
    return WideResNet(num_classes, in_channels, depth, widen, dropout)


@register_model("wrn34_10")
def wrn34_10(num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return WideResNet(num_classes, in_channels, 34, 10, dropout)


@register_model("wrn34_15")
def wrn34_15(num_classes: int, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return WideResNet(num_classes, in_channels, 34, 15, dropout)
