"""ElasticViT: DyNAS-T's ViT-B/16 space on the zoo's VisionTransformer and EncoderBlock.

Variables: ``layers`` (encoder blocks kept, the first ones), ``heads0..`` (attention heads per
block at a fixed head size, so q, k and v are ``heads x head_dim`` wide) and ``mlp0..`` (hidden
width of each block's MLP); the embedding width is fixed. A smaller subnet uses the leading heads
(of q, k and v alike) and the leading MLP units.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..vit import EncoderBlock, VisionTransformer
from .base import Config, ElasticFamily, Index, Slot, prefix_index


@dataclass(frozen=True)
class ViTSpace:
    patch: int
    hidden: int
    head_dim: int
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    mlp: tuple[int, ...]


class ElasticViT(ElasticFamily):
    """Elastic ViT family; see the module docstring."""

    space: ViTSpace

    def _variables(self) -> dict[str, tuple[int, ...]]:
        sp = self.space
        out = {"layers": sp.layers}
        out |= {f"heads{i}": sp.heads for i in range(max(sp.layers))}
        out |= {f"mlp{i}": sp.mlp for i in range(max(sp.layers))}
        return out

    def slots(self) -> list[Slot]:
        layers = range(max(self.space.layers))
        return [Slot("layer", "layers", i, (f"heads{i}", f"mlp{i}")) for i in layers]

    def _empty_stages(self, config: Config) -> list[str]:
        layers = config.get("layers")
        return ["layers"] if isinstance(layers, int) and layers <= 0 else []

    def _build(self, config: Config) -> nn.Module:
        sp, sc = self.space, self.scale
        model = VisionTransformer(
            sc.image_size, sc.num_classes, sp.patch, 0, 1, sp.hidden, sp.mlp[0], sc.in_channels
        )
        seq = model.num_patches + 1
        model.encoder.layers = nn.Sequential(
            OrderedDict(
                (
                    f"encoder_layer_{i}",
                    EncoderBlock(
                        config[f"heads{i}"], sp.hidden, config[f"mlp{i}"], 0.0, seq, sp.head_dim
                    ),
                )
                for i in range(config["layers"])
            )
        )
        return model

    def _index(self, name: str, sub: tuple[int, ...], full: tuple[int, ...]) -> Index:
        """q, k and v are packed along dim 0 of in_proj: take the leading rows of each third."""
        if not name.endswith(("in_proj_weight", "in_proj_bias")):
            return super()._index(name, sub, full)
        inner, full_inner = sub[0] // 3, full[0] // 3
        rows = torch.cat([torch.arange(inner) + j * full_inner for j in range(3)])
        return (rows, *prefix_index(sub[1:], full[1:]))


IMAGENET = ViTSpace(
    patch=16,
    hidden=768,
    head_dim=64,
    layers=(10, 11, 12),
    heads=(6, 8, 10, 12),
    mlp=(1024, 2048, 3072),
)
"""DyNAS-T's ViT-B/16 space: 25 variables (layers, 12 heads, 12 MLP widths), hidden 768."""

CHARS = ViTSpace(
    patch=4,
    hidden=64,
    head_dim=16,
    layers=(2, 3, 4),
    heads=(2, 3, 4),
    mlp=(64, 128, 192),
)
"""Same kinds of variables for 32 px characters: 4 x 4 patches (64 tokens + class token),
width 64, 2-4 blocks of 2-4 heads of 16, MLP 64-192 (9 variables)."""
