"""Benchmark model zoo: torchvision-faithful architectures in plain torch.

torchvision is not available, so the four benchmark networks are re-implemented
here with the same layer structure, channel counts, strides and parameter names
as torchvision's ``resnet18``, ``resnet50``, ``mobilenet_v3_large`` and
``vit_b_16`` (so parameter counts match and torchvision state dicts would load).
Weights are seeded random, not pretrained: the benchmarks need realistic graph
shapes and numerically sane activations, not accuracy.

This is the only module of the package that imports torch; nothing imports it
at package import time.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_path

__all__ = ["ZOO", "build", "export_module", "export_onnx"]

ZOO: tuple[str, ...] = ("resnet18", "resnet50", "mobilenetv3_large", "vit_b16")

# BatchNorm running statistics are calibrated on seeded noise at this fixed
# resolution, so a CNN's weights do not depend on the requested image_size. It is
# the native 224: calibrating smaller leaves the last stages' maps (2x2 at 64px)
# dominated by zero padding, underestimating their variance, and MobileNetV3's
# 5x5 depthwise layers then blow up to O(200+) when run at 224.
_CALIB_SIZE = 224
_CALIB_BATCH = 4


# --------------------------------------------------------------------------- #
# ResNet (torchvision v1.5: stride on the 3x3 conv of the bottleneck)
# --------------------------------------------------------------------------- #
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


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
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, plus identity (ResNet-50 block)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
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
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- #
# MobileNetV3-Large
# --------------------------------------------------------------------------- #
def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding (never drops more than 10%)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d(no bias) + BatchNorm + optional activation (torchvision Conv2dNormActivation)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[..., nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
            ),
            # MobileNetV3 uses eps=1e-3, momentum=0.01 in torchvision.
            nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: avgpool -> 1x1 conv -> ReLU -> 1x1 conv -> Hardsigmoid -> scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> [SE] -> project 1x1, residual when shapes allow."""

    def __init__(
        self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hs: bool, stride: int
    ) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, activation=act))
        layers.append(
            ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, activation=act)
        )
        if se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(ConvBNAct(expanded, cout, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    @property
    def residual_bn(self) -> nn.BatchNorm2d | None:
        """Projection BN when the block is residual (its gamma is initialised small)."""
        return self.block[-1][1] if self.use_res_connect else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# (in, kernel, expanded, out, squeeze-excite, hardswish, stride), width_mult=1.0
_MBV3_LARGE = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, 2),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)


class MobileNetV3(nn.Module):
    """torchvision mobilenet_v3_large: 16-ch Hardswish stem, 15 bnecks, 960-ch head, 1280 FC."""

    def __init__(self, num_classes: int, last_channel: int = 1280, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, stride=2, activation=nn.Hardswish)]
        layers += [InvertedResidual(*cfg) for cfg in _MBV3_LARGE]
        last_conv = 6 * _MBV3_LARGE[-1][3]
        layers.append(ConvBNAct(_MBV3_LARGE[-1][3], last_conv, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- #
# ViT-B/16
# --------------------------------------------------------------------------- #
class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter layout.

    Written with explicit matmuls + softmax (not nn.MultiheadAttention /
    scaled_dot_product_attention) so the ONNX export contains plain
    MatMul/Softmax nodes that downstream passes can see and map. Reshapes use
    the static sequence length (fixed by image_size) and -1 for the batch, so
    the exported graph has constant Reshape shapes instead of Shape/Slice/Concat
    arithmetic even with a dynamic batch axis.
    """

    def __init__(self, dim: int, num_heads: int, seq_length: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.dim = dim
        self.seq_length = seq_length
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        # Packed [q; k; v] rows, as in nn.MultiheadAttention.
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, hd = self.seq_length, self.num_heads, self.head_dim
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3*D)
        qkv = qkv.reshape(-1, n, 3, h, hd).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
        attn = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, self.dim)  # (B, N, D)
        return self.out_proj(out)


class MLPBlock(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (torchvision MLPBlock)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self, num_heads: int, dim: int, mlp_dim: int, dropout: float, seq_length: int
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = SelfAttention(dim, num_heads, seq_length)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Learned positional embedding + stack of encoder blocks + final LayerNorm."""

    def __init__(
        self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(
            OrderedDict(
                (f"encoder_layer_{i}", EncoderBlock(num_heads, dim, mlp_dim, 0.0, seq_length))
                for i in range(num_layers)
            )
        )
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """torchvision vit_b_16: conv patchify, class token, encoder, linear head on the token."""

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 12,
        hidden_dim: int = 768,
        mlp_dim: int = 3072,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.empty(1, 1, hidden_dim))
        self.num_patches = (image_size // patch_size) ** 2
        seq_length = self.num_patches + 1  # patches + class token
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reshape with static sizes (not flatten) keeps the ONNX Reshape shape constant.
        x = self.conv_proj(x).reshape(-1, self.hidden_dim, self.num_patches).transpose(1, 2)
        cls = self.class_token.expand(x.shape[0], -1, -1)
        x = self.encoder(torch.cat([cls, x], dim=1))
        return self.heads(x[:, 0])


# --------------------------------------------------------------------------- #
# Seeded initialisation
# --------------------------------------------------------------------------- #
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
    _calibrate_bn(model, g)
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


def export_module(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    dynamic_batch: bool = False,
) -> pathlib.Path:
    """Export a torch module to ONNX (opset 17) at ``path``; return the path.

    Uses the TorchScript exporter with constant folding off so BatchNormalization nodes survive
    (fold-bn downstream needs them, and fine-tuned models keep them). Input ``input``, output
    ``logits``; ``dynamic_batch`` makes dim 0 of both a symbolic ``batch``. Written atomically.
    """
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
            do_constant_folding=False,
            dynamic_axes=dynamic_axes,
        )
    return pathlib.Path(path)
