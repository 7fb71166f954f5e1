"""Benchmark model zoo: torchvision-faithful architectures in plain torch.

torchvision is not available, so the four benchmark networks are re-implemented
here with the same layer structure, channel counts, strides and parameter names
as torchvision's ``resnet18``, ``resnet50``, ``mobilenet_v3_large`` and
``vit_b_16`` (so parameter counts match and torchvision state dicts would load).
Weights are seeded random, not pretrained: the benchmarks need realistic graph
shapes and numerically sane activations, not accuracy.

Needs torch (the ``train`` extra); ``import cimc`` never imports this package.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .export import export_module
from .mobilenet import MobileNetV3
from .resnet import BasicBlock, Bottleneck, ResNet
from .vit import Encoder, SelfAttention, VisionTransformer

ZOO: tuple[str, ...] = ("resnet18", "resnet50", "mobilenetv3_large", "vit_b16")

# BatchNorm running statistics are calibrated on seeded noise at this fixed
# resolution, so a CNN's weights do not depend on the requested image_size. It is
# the native 224: calibrating smaller leaves the last stages' maps (2x2 at 64px)
# dominated by zero padding, underestimating their variance, and MobileNetV3's
# 5x5 depthwise layers then blow up to O(200+) when run at 224.
_CALIB_SIZE = 224
_CALIB_BATCH = 4


def _init_params(model: nn.Module, g: torch.Generator) -> None:
    """Fill every parameter and buffer from ``g``; raise if any tensor is missed.

    Models are constructed on the meta device (so building never touches the
    global RNG), which leaves memory uninitialised: the final check guarantees
    nothing is silently garbage.
    """
    done: set[int] = set()

    def mark(*tensors: torch.Tensor | None) -> None:
        done.update(id(t) for t in tensors if t is not None)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # He (fan_in) keeps activation scale roughly constant through ReLU layers.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    nn.init.normal_(m.bias, 0.0, 0.02, generator=g)
                mark(m.weight, m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.0, generator=g)
                nn.init.uniform_(m.bias, -0.1, 0.1, generator=g)
                m.reset_running_stats()  # real values come from _calibrate_bn
                mark(m.weight, m.bias, m.running_mean, m.running_var, m.num_batches_tracked)
            elif isinstance(m, nn.LayerNorm):
                nn.init.uniform_(m.weight, 0.8, 1.2, generator=g)
                nn.init.normal_(m.bias, 0.0, 0.02, generator=g)
                mark(m.weight, m.bias)
            elif isinstance(m, SelfAttention):
                nn.init.kaiming_normal_(
                    m.in_proj_weight, mode="fan_in", nonlinearity="relu", generator=g
                )
                nn.init.normal_(m.in_proj_bias, 0.0, 0.02, generator=g)
                mark(m.in_proj_weight, m.in_proj_bias)
            elif isinstance(m, Encoder):
                nn.init.normal_(m.pos_embedding, 0.0, 0.02, generator=g)
                mark(m.pos_embedding)
            elif isinstance(m, VisionTransformer):
                nn.init.normal_(m.class_token, 0.0, 0.02, generator=g)
                mark(m.class_token)

        # Residual branches start small (like zero-init-residual, but non-zero so
        # every conv matters): keeps the residual stream O(1) through 16 blocks.
        for m in model.modules():
            bn = getattr(m, "residual_bn", None)
            if isinstance(bn, nn.BatchNorm2d):
                nn.init.uniform_(bn.weight, 0.2, 0.5, generator=g)

    missing = [
        n for n, t in (*model.named_parameters(), *model.named_buffers()) if id(t) not in done
    ]
    if missing:
        raise RuntimeError(f"zoo init left tensors uninitialised: {missing[:5]}")


def _batchnorms(model: nn.Module) -> Iterator[nn.BatchNorm2d]:
    return (m for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@torch.no_grad()
def _calibrate_bn(model: nn.Module, g: torch.Generator) -> None:
    """Give BatchNorm realistic, non-trivial running statistics.

    Analytic guesses for running mean/var drift multiplicatively over ResNet-50's
    ~50 BN layers; instead the stats are measured on one batch of seeded N(0, 1)
    noise (so eval-mode activations stay O(1) like a trained net), then each
    channel is perturbed (var x U(0.8, 1.25), mean +- 0.1 sigma) so they are not
    exactly the batch statistics and a BN-folding pass has real work to do.
    """
    bns = list(_batchnorms(model))
    if not bns:
        return
    model.eval()  # Dropout stays off; only BN layers switch to batch statistics.
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average == this batch's statistics
        bn.train()
    model(torch.randn(_CALIB_BATCH, 3, _CALIB_SIZE, _CALIB_SIZE, generator=g))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
        bn.num_batches_tracked.zero_()
        c = bn.num_features
        bn.running_var.mul_(torch.empty(c).uniform_(0.8, 1.25, generator=g))
        bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn(c, generator=g))
    model.eval()


_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet18": lambda nc, _size: ResNet(BasicBlock, [2, 2, 2, 2], nc),
    "resnet50": lambda nc, _size: ResNet(Bottleneck, [3, 4, 6, 3], nc),
    "mobilenetv3_large": lambda nc, _size: MobileNetV3(nc),
    "vit_b16": lambda nc, size: VisionTransformer(size, nc),
}
assert tuple(_BUILDERS) == ZOO


def build(name: str, num_classes: int = 1000, image_size: int = 224, seed: int = 0) -> nn.Module:
    """Build zoo model ``name`` in eval mode with deterministic seeded random weights.

    Weights are random (no pretrained checkpoints are available offline) but
    chosen so activations stay finite and O(1)-O(100) end to end: He-normal
    conv/linear weights, BN stats calibrated on seeded noise then perturbed,
    small residual-branch BN gammas. The global torch RNG is not touched.
    ``image_size`` only changes ViT's positional-embedding length (and must be a
    multiple of 16 there); CNN weights are independent of it.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    g = torch.Generator().manual_seed(int(seed))
    with torch.device("meta"):
        model = _BUILDERS[name](int(num_classes), int(image_size))
    model = model.to_empty(device="cpu")
    _init_params(model, g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # sums split between threads round differently: same weights anywhere
    try:
        _calibrate_bn(model, g)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_onnx(
    name: str,
    path: str | os.PathLike[str],
    image_size: int = 224,
    seed: int = 0,
    num_classes: int = 1000,
    dynamic_batch: bool = False,
) -> pathlib.Path:
    """Export ``build(name, ...)`` with :func:`export_module` at ``path`` (its directory is
    created); input (N, 3, image_size, image_size) float32."""
    path = pathlib.Path(path)
    model = build(name, num_classes=num_classes, image_size=image_size, seed=seed)
    dummy = torch.randn(
        1, 3, image_size, image_size, generator=torch.Generator().manual_seed(int(seed))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_module(model, dummy, path, dynamic_batch)
