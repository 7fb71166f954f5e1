"""The ResNet-style CNN of the accuracy benchmark.

``ResNetS(widths=(128, 128, 256))``: a stem conv3x3/2 (in -> widths[0]) + BN + ReLU + maxpool 2
(32x32 -> 8x8, the ImageNet ResNet stem scaled down), then one BasicBlock per further width,
each at stride 2 (8x8 -> 4x4 -> 2x2) with a 1x1 conv + BN shortcut, global average pool and a
Linear classifier. 1.2 M weights, 9 M multiply-accumulates per 32x32 image.

Why wide and shallow: a compressed layer stores its weight in vectors of V = 128 along
K = kh*kw*cin, padded to a multiple of V, and the error array keeps keep*V rows per vector,
padding included. With every compressed layer's cin a multiple of 128, K needs no padding and
CIMPool's error keep 1/2 costs 0.556 bits per weight; widths 32/64/128 would pad K = 288 to 384
and K = 576 to 640 and cost about 0.63. Early downsampling keeps a 128-wide network cheap
enough to train on two CPU cores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNetS(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: tuple[int, ...] = (128, 128, 256),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(2)
        stages, prev = [], widths[0]
        for w in widths[1:]:
            stages.append(BasicBlock(prev, w, 2))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.stages(x)
        return self.fc(torch.flatten(self.pool(x), 1))
