"""ElasticResNet: OFA ResNet-50's space (DyNAS-T ``ofa_resnet50``) on the zoo's Bottleneck.

Layout (``ofa/imagenet_classification/networks/resnets.py``, ``OFAResNets``): a three-conv stem
(conv 3x3/2 to half the stem width, a residual conv 3x3 that is skipped unless ``depth0`` is at
its maximum, conv 3x3 to the stem width), maxpool 3x3/2, four bottleneck stages of
``base_depth[s] + depth{s+1}`` blocks (stride on the first block's 3x3), global average pool, fc.
Variables: ``depth0..4`` (extra blocks), ``expand0..17`` (bottleneck width as a percentage of the
block's output width, one per possible block), ``width0..5`` (percent of the base width: stem
middle, stem output, then each stage). Deviation: a changing shortcut is the zoo's strided 1x1
conv + BN, not OFA's avgpool + 1x1 conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..mobilenet import ConvBNAct
from ..resnet import Bottleneck, projection
from .base import Config, ElasticFamily, Scale, Slot, make_divisible


@dataclass(frozen=True)
class ResNetSpace:
    stem: int
    widths: tuple[int, ...]
    base_depth: tuple[int, ...]
    strides: tuple[int, ...]
    depth: tuple[int, ...]
    expand: tuple[int, ...]
    width: tuple[int, ...]
    divisor: int

    @property
    def max_blocks(self) -> list[int]:
        return [b + max(self.depth) for b in self.base_depth]


class Residual(nn.Module):
    """``x + body(x)``: OFA's skippable middle stem conv."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetSubnet(nn.Module):
    """One static subnet of an :class:`ElasticResNet`."""

    def __init__(self, space: ResNetSpace, scale: Scale, config: Config) -> None:
        super().__init__()
        div = space.divisor
        stem = make_divisible(space.stem * config["width1"] / 100, div)
        mid = make_divisible(make_divisible(space.stem * config["width0"] / 100, div) // 2, div)
        self.stem0 = ConvBNAct(scale.in_channels, mid, 3, stride=2)
        if config["depth0"] == max(space.depth):
            self.stem1 = Residual(ConvBNAct(mid, mid, 3))
        self.stem2 = ConvBNAct(mid, stem, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages, first = stem, [], 0
        for s, (width, base, stride) in enumerate(
            zip(space.widths, space.base_depth, space.strides, strict=True)
        ):
            out = make_divisible(width * config[f"width{s + 2}"] / 100, div)
            blocks = []
            for i in range(base + config[f"depth{s + 1}"]):
                st = stride if i == 0 else 1
                inner = make_divisible(round(out * config[f"expand{first + i}"] / 100), div)
                blocks.append(Bottleneck(cin, inner, st, projection(cin, out, st), out=out))
                cin = out
            stages.append(nn.Sequential(*blocks))
            first += space.max_blocks[s]
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, scale.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem0(x)
        if hasattr(self, "stem1"):
            x = self.stem1(x)
        x = self.maxpool(self.stem2(x))
        return self.fc(torch.flatten(self.pool(self.stages(x)), 1))


class ElasticResNet(ElasticFamily):
    """Elastic ResNet (bottleneck) family; see the module docstring."""

    space: ResNetSpace

    def _variables(self) -> dict[str, tuple[int, ...]]:
        sp = self.space
        out = {f"depth{i}": sp.depth for i in range(len(sp.base_depth) + 1)}
        out |= {f"expand{i}": sp.expand for i in range(sum(sp.max_blocks))}
        out |= {f"width{i}": sp.width for i in range(len(sp.base_depth) + 2)}
        return out

    def slots(self) -> list[Slot]:
        """Block i of stage s exists while base_depth[s] + depth{s+1} > i."""
        sp, out, first = self.space, [], 0
        for s, (base, blocks) in enumerate(zip(sp.base_depth, sp.max_blocks, strict=True)):
            out += [
                Slot(f"stage{s}", f"depth{s + 1}", i - base, (f"expand{first + i}",))
                for i in range(blocks)
            ]
            first += blocks
        return out

    def _empty_stages(self, config: Config) -> list[str]:
        names = [f"depth{s + 1}" for s in range(len(self.space.base_depth))]
        return [
            n
            for n, base in zip(names, self.space.base_depth, strict=True)
            if isinstance(config.get(n), int) and base + config[n] <= 0
        ]

    def _build(self, config: Config) -> nn.Module:
        return ResNetSubnet(self.space, self.scale, config)


IMAGENET = ResNetSpace(
    stem=64,
    widths=(256, 512, 1024, 2048),
    base_depth=(2, 2, 4, 2),
    strides=(1, 2, 2, 2),
    depth=(0, 1, 2),
    expand=(20, 25, 35),
    width=(65, 80, 100),
    divisor=8,
)
"""DyNAS-T's OFA ResNet-50 space: 29 variables (5 depth, 18 expand, 6 width)."""

CHARS = ResNetSpace(
    stem=16,
    widths=(32, 64, 96, 128),
    base_depth=(1, 1, 1, 1),
    strides=(1, 2, 2, 2),
    depth=(0, 1, 2),
    expand=(20, 25, 35),
    width=(65, 80, 100),
    divisor=4,
)
"""Same kinds of variables for 32 px characters: an eighth of the widths, one base block per
stage (12 expand variables), channels rounded to 4 so 65% and 80% stay apart."""
