"""ResNets: torchvision's ResNet-18/50 (v1.5: stride on the bottleneck's 3x3 conv) for the
zoo, and cimc's own ResNetS for the accuracy benchmark and ``cimc train``, on one BasicBlock.

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


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """The shortcut of a block that changes the shape: 1x1 conv + BN; None when it keeps it."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convs plus identity (ResNet-18/34 block)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    @property
    def residual_bn(self) -> nn.BatchNorm2d:
        """Last BN of the residual branch (its gamma is initialised small)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, plus identity (ResNet-50 block); ``out``
    overrides the x4 (elastic ResNets choose the reduced width and the output width apart)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        out: int | None = None,
    ) -> None:
        super().__init__()
        width = planes
        out = planes * self.expansion if out is None else out
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def residual_bn(self) -> nn.BatchNorm2d:
        """Last BN of the residual branch (its gamma is initialised small)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ResNet: 7x7/2 stem, 3x3/2 maxpool, four stages, avgpool, fc."""

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = projection(self.inplanes, planes * block.expansion, stride)
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNetS(nn.Module):
    """cimc's small ResNet (see the module docstring): stem, one strided block per width, fc."""

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
            stages.append(BasicBlock(prev, w, 2, projection(prev, w, 2)))
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
