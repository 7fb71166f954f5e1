"""Elastic (weight-sharing) model families: DyNAS-T's OFA ResNet-50, OFA MobileNetV3 and ViT-B
spaces in plain torch, at ImageNet structure and at a small scale for the rendered characters.

``family("elastic-resnet-chars")`` returns an :class:`ElasticFamily`: ``variables()``,
``largest()``, ``smallest()``, ``sample(rng)``, ``validate(config)``, ``subnet(config)`` (a
static module, shared weights copied out), ``export(config, path)`` (ONNX cimc imports) and
``runner(config)`` (the subnet's forward on the shared weights, for training). ImageNet-scale
families have seeded random weights: ImageNet and its trained supernets are not available
offline. A ``-chars`` family loads the weights ``benchmarks/train_elastic.py`` trained and
committed under ``cimc/data/elastic/`` when they exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import OptionError
from ...train.layers import recalibrate_bn
from . import mobilenet, resnet, vit
from .base import Config, ElasticFamily, Scale

IMAGENET = Scale(image_size=224, in_channels=3, num_classes=1000)
CHARS = Scale(image_size=32, in_channels=1, num_classes=36)
WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "elastic"

_FAMILIES: dict[str, tuple[type[ElasticFamily], Any, Scale]] = {
    "elastic-resnet": (resnet.ElasticResNet, resnet.IMAGENET, IMAGENET),
    "elastic-mbv3": (mobilenet.ElasticMobileNetV3, mobilenet.IMAGENET, IMAGENET),
    "elastic-vit": (vit.ElasticViT, vit.IMAGENET, IMAGENET),
    "elastic-resnet-chars": (resnet.ElasticResNet, resnet.CHARS, CHARS),
    "elastic-mbv3-chars": (mobilenet.ElasticMobileNetV3, mobilenet.CHARS, CHARS),
    "elastic-vit-chars": (vit.ElasticViT, vit.CHARS, CHARS),
}
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)


def family(name: str, seed: int = 0, trained: bool = True) -> ElasticFamily:
    """The family ``name`` with seeded weights, or its committed trained weights when
    ``trained`` and they exist (then ``seed`` only seeds :meth:`ElasticFamily.example`)."""
    if name not in _FAMILIES:
        raise OptionError(f"unknown elastic family {name!r}; choose one of {', '.join(FAMILIES)}")
    cls, space, scale = _FAMILIES[name]
    fam = cls(name, space, scale, seed)
    path = WEIGHTS / f"{name}.pt"
    if trained and path.is_file():
        fam.load(path)
    return fam


__all__ = ["FAMILIES", "WEIGHTS", "Config", "ElasticFamily", "family", "recalibrate_bn"]
