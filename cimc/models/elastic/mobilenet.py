"""ElasticMobileNetV3: OFA MobileNetV3's space (DyNAS-T ``ofa_mbv3_d234_e346_k357_w1.0``) on
the zoo's InvertedResidual.

Layout (``ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py``): stem conv 3x3/2
(Hardswish), one fixed block (kernel 3, no expansion), five stages of ``depth{s}`` inverted
residual blocks (stride on the first; ReLU in the first two stages, Hardswish after; squeeze-
excite in stages 2, 4 and 5), a 1x1 expansion, global average pool, a bias-free feature-mix
layer with Hardswish, and the classifier. Variables: ``kernel0..19`` and ``expand0..19`` (one per
possible block; expanded width = ``expand`` x the block's input width), ``depth0..4``. A smaller
kernel is the centre of the largest (OFA also learns kernel-transformation matrices; not here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..mobilenet import ConvBNAct, InvertedResidual
from .base import Config, ElasticFamily, Scale, Slot, make_divisible


@dataclass(frozen=True)
class MobileNetSpace:
    stem: int
    widths: tuple[int, ...]
    strides: tuple[int, ...]
    squeeze: tuple[bool, ...]
    hardswish: tuple[bool, ...]
    last: int
    mix: int
    kernel: tuple[int, ...]
    expand: tuple[int, ...]
    depth: tuple[int, ...]


class MobileNetSubnet(nn.Module):
    """One static subnet of an :class:`ElasticMobileNetV3`."""

    def __init__(self, space: MobileNetSpace, scale: Scale, config: Config) -> None:
        super().__init__()
        sp = space
        self.stem = ConvBNAct(scale.in_channels, sp.stem, 3, stride=2, activation=nn.Hardswish)
        self.first = InvertedResidual(sp.stem, 3, sp.stem, sp.stem, False, False, 1)
        cin, stages = sp.stem, []
        for s, (width, stride, se, hs) in enumerate(
            zip(sp.widths, sp.strides, sp.squeeze, sp.hardswish, strict=True)
        ):
            blocks = []
            for i in range(config[f"depth{s}"]):
                b = s * max(sp.depth) + i
                expanded = make_divisible(round(cin * config[f"expand{b}"]), 8)
                k = config[f"kernel{b}"]
                blocks.append(
                    InvertedResidual(cin, k, expanded, width, se, hs, stride if i == 0 else 1)
                )
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBNAct(cin, sp.last, 1, activation=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(sp.last, sp.mix, bias=False),
            nn.Hardswish(),
            nn.Linear(sp.mix, scale.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.first(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


class ElasticMobileNetV3(ElasticFamily):
    """Elastic MobileNetV3 family; see the module docstring."""

    space: MobileNetSpace

    def _variables(self) -> dict[str, tuple[int, ...]]:
        sp = self.space
        blocks = len(sp.widths) * max(sp.depth)
        out = {f"kernel{i}": sp.kernel for i in range(blocks)}
        out |= {f"expand{i}": sp.expand for i in range(blocks)}
        out |= {f"depth{i}": sp.depth for i in range(len(sp.widths))}
        return out

    def slots(self) -> list[Slot]:
        d = max(self.space.depth)
        return [
            Slot(f"stage{s}", f"depth{s}", i, (f"kernel{s * d + i}", f"expand{s * d + i}"))
            for s in range(len(self.space.widths))
            for i in range(d)
        ]

    def _empty_stages(self, config: Config) -> list[str]:
        names = [f"depth{s}" for s in range(len(self.space.widths))]
        return [n for n in names if isinstance(config.get(n), int) and config[n] <= 0]

    def _build(self, config: Config) -> nn.Module:
        return MobileNetSubnet(self.space, self.scale, config)


IMAGENET = MobileNetSpace(
    stem=16,
    widths=(24, 40, 80, 112, 160),
    strides=(2, 2, 2, 1, 2),
    squeeze=(False, True, False, True, True),
    hardswish=(False, False, True, True, True),
    last=960,
    mix=1280,
    kernel=(3, 5, 7),
    expand=(3, 4, 6),
    depth=(2, 3, 4),
)
"""DyNAS-T's OFA MobileNetV3 (w1.0) space: 45 variables (20 kernel, 20 expand, 5 depth)."""

CHARS = MobileNetSpace(
    stem=8,
    widths=(16, 24, 32, 48, 64),
    strides=(2, 2, 2, 1, 1),
    squeeze=(False, True, False, True, True),
    hardswish=(False, False, True, True, True),
    last=192,
    mix=256,
    kernel=(3, 5),
    expand=(2, 3, 4),
    depth=(1, 2, 3),
)
"""Same kinds of variables for 32 px characters: widths / 2.5, depth 1-3 (35 variables), kernel
3 or 5 and expansion 2-4 (a 7 x 7 depthwise conv with 6x expansion made one training step of the
largest subnet take 1.6 s on one core), the last stride dropped so the final maps stay 2 x 2."""
