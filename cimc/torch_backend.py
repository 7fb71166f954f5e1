"""A cimc Graph as a differentiable torch module: the graph's ops as torch functions.

:class:`GraphModule` executes an imported :class:`~cimc.ir.Graph` node by node, like
:class:`cimc.interpreter.Interpreter`, with a torch function per op type from
:data:`TORCH_OPS` instead of the NumPy reference, so gradients reach its constants (those named
``trainable`` become ``nn.Parameter``). One call runs one sample at the graph's static shapes;
:func:`run_batched` maps it over a batch with ``torch.func.vmap``, so a graph whose batch is
fixed at 1 (or whose "batch" is a sequence axis) trains on many samples without reshaping it.

Ops that only move elements (Reshape, Transpose, Slice, Gather with constant indices, Concat,
Pad, Resize nearest, ...) need no torch code: their NumPy reference is run once on element
numbers, and the result is the gather that the op performs (a reshape when it is the identity
order). An op without a torch function is a :class:`cimc.CimcError` naming the op and node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CimcError
from .ir import Graph, Node
from .ops import REGISTRY, _a, _conv_params

TorchImpl = Callable[..., Any]


class TorchOpError(CimcError):
    """A node the torch conversion cannot run differentiably (named, with its op)."""


TORCH_OPS: dict[str, TorchImpl] = {}


def register_torch_op(*ops: str) -> Callable[[TorchImpl], TorchImpl]:
    """Decorator: ``fn(node, *inputs) -> tensor | tuple`` runs ``ops`` in torch (one sample)."""

    def deco(fn: TorchImpl) -> TorchImpl:
        for op in ops:
            TORCH_OPS[op] = fn
        return fn

    return deco


# ---- element-wise ------------------------------------------------------------------------------
def _int_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


_BINARY = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _int_div,
    "Pow": torch.pow,
    "Mod": torch.fmod,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}
for _op, _fn in _BINARY.items():
    register_torch_op(_op)(lambda node, a, b, _f=_fn: _f(a, b))


def _hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return torch.clamp(alpha * x + beta, 0, 1)


_UNARY: dict[str, Callable[[Node, torch.Tensor], torch.Tensor]] = {
    "Relu": lambda n, x: torch.relu(x),
    "Sigmoid": lambda n, x: torch.sigmoid(x),
    "Tanh": lambda n, x: torch.tanh(x),
    "Exp": lambda n, x: torch.exp(x),
    "Log": lambda n, x: torch.log(x),
    "Sqrt": lambda n, x: torch.sqrt(x),
    "Neg": lambda n, x: -x,
    "Abs": lambda n, x: torch.abs(x),
    "Reciprocal": lambda n, x: torch.reciprocal(x),
    "Erf": lambda n, x: torch.erf(x),
    "Floor": lambda n, x: torch.floor(x),
    "Ceil": lambda n, x: torch.ceil(x),
    "Round": lambda n, x: torch.round(x),
    "Sign": lambda n, x: torch.sign(x),
    "Sin": lambda n, x: torch.sin(x),
    "Cos": lambda n, x: torch.cos(x),
    "Not": lambda n, x: torch.logical_not(x),
    "Softplus": lambda n, x: F.softplus(x),
    "Softsign": lambda n, x: x / (1 + torch.abs(x)),
    "LeakyRelu": lambda n, x: F.leaky_relu(x, _a(n, "alpha", 0.01)),
    "Elu": lambda n, x: F.elu(x, _a(n, "alpha", 1.0)),
    "Selu": lambda n, x: (
        _a(n, "gamma", 1.0507009873554805)
        * torch.where(x > 0, x, _a(n, "alpha", 1.6732632423543772) * torch.expm1(x))
    ),
    "HardSigmoid": lambda n, x: _hard_sigmoid(x, _a(n, "alpha", 0.2), _a(n, "beta", 0.5)),
    "HardSwish": lambda n, x: x * _hard_sigmoid(x, 1 / 6, 0.5),
    "Gelu": lambda n, x: F.gelu(
        x, approximate="none" if _a(n, "approximate", "none") == "none" else "tanh"
    ),
}
for _op, _fn in _UNARY.items():
    register_torch_op(_op)(lambda node, x, _f=_fn: _f(node, x))


@register_torch_op("PRelu")
def _prelu(node: Node, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x * slope)


@register_torch_op("Clip")
def _clip(node: Node, x: torch.Tensor, lo=None, hi=None) -> torch.Tensor:
    lo = _a(node, "min", None) if lo is None else lo
    hi = _a(node, "max", None) if hi is None else hi
    if isinstance(lo, torch.Tensor):
        x = torch.maximum(x, lo.to(x.dtype))
    elif lo is not None:
        x = torch.clamp(x, min=lo)
    if isinstance(hi, torch.Tensor):
        x = torch.minimum(x, hi.to(x.dtype))
    elif hi is not None:
        x = torch.clamp(x, max=hi)
    return x


@register_torch_op("Where")
def _where(node: Node, c, a, b) -> torch.Tensor:
    return torch.where(c.bool(), a, b)


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> TorchImpl:
    def impl(node: Node, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return impl


register_torch_op("Sum")(_variadic(torch.add))
register_torch_op("Max")(_variadic(torch.maximum))
register_torch_op("Min")(_variadic(torch.minimum))
register_torch_op("Mean")(lambda node, *xs: _variadic(torch.add)(node, *xs) / len(xs))

_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
}


def torch_dtype(dtype: Any) -> torch.dtype:
    return _TORCH_DTYPES[np.dtype(dtype)]


@register_torch_op("Cast")
def _cast(node: Node, x: torch.Tensor) -> torch.Tensor:
    from onnx import helper

    return x.to(torch_dtype(helper.tensor_dtype_to_np_dtype(node.attrs["to"])))


register_torch_op("CastLike")(lambda node, x, like: x.to(like.dtype))


# ---- softmax, normalisation, reductions ---------------------------------------------------------
register_torch_op("Softmax")(lambda node, x: torch.softmax(x, _a(node, "axis", -1)))
register_torch_op("LogSoftmax")(lambda node, x: torch.log_softmax(x, _a(node, "axis", -1)))


def _channel(v: torch.Tensor, rank: int) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (rank - 2))


@register_torch_op("BatchNormalization")
def _batchnorm(node: Node, x, scale, bias, mean, var) -> torch.Tensor:
    inv = scale / torch.sqrt(var + _a(node, "epsilon", 1e-5))
    return x * _channel(inv, x.dim()) + _channel(bias - mean * inv, x.dim())


@register_torch_op("InstanceNormalization")
def _instancenorm(node: Node, x, scale, bias) -> torch.Tensor:
    axes = tuple(range(2, x.dim()))
    mu = x.mean(dim=axes, keepdim=True)
    var = x.var(dim=axes, keepdim=True, unbiased=False)
    y = (x - mu) / torch.sqrt(var + _a(node, "epsilon", 1e-5))
    return y * _channel(scale, x.dim()) + _channel(bias, x.dim())


@register_torch_op("LayerNormalization")
def _layernorm(node: Node, x, scale, bias=None) -> Any:
    axes = tuple(range(_a(node, "axis", -1) % x.dim(), x.dim()))
    mu = x.mean(dim=axes, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=axes, keepdim=True)
    inv = torch.rsqrt(var + _a(node, "epsilon", 1e-5))
    y = (x - mu) * inv * scale
    y = y if bias is None else y + bias
    return (y, mu, inv)[: len(node.outputs)] if len(node.outputs) > 1 else y


@register_torch_op("LRN")
def _lrn(node: Node, x: torch.Tensor) -> torch.Tensor:
    size = node.attrs["size"]
    alpha, beta, bias = _a(node, "alpha", 1e-4), _a(node, "beta", 0.75), _a(node, "bias", 1.0)
    lo = (size - 1) // 2
    pad = [0, 0] * (x.dim() - 2) + [lo, size - 1 - lo]
    sq = F.pad(x * x, pad)
    acc = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    return x / (bias + alpha / size * acc) ** beta


def _reduce(fn: Callable[..., torch.Tensor]) -> TorchImpl:
    def impl(node: Node, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        ax = node.attrs.get("axes") if axes is None else axes.tolist()
        if ax is None or len(ax) == 0:
            if _a(node, "noop_with_empty_axes", 0):
                return x
            ax = range(x.dim())
        return fn(x, tuple(int(a) % x.dim() for a in ax), bool(_a(node, "keepdims", 1)))

    return impl


def _amax(x, dims, keep):
    return torch.amax(x, dim=dims, keepdim=keep)


_REDUCE = {
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceMax": _amax,
    "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)),
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
}
for _op, _fn in _REDUCE.items():
    register_torch_op(_op)(_reduce(_fn))

register_torch_op("GlobalAveragePool")(
    lambda node, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
)
register_torch_op("GlobalMaxPool")(lambda node, x: _amax(x, tuple(range(2, x.dim())), True))


# ---- matrix products and convolution ------------------------------------------------------------
@register_torch_op("Gemm")
def _gemm(node: Node, a, b, c=None) -> torch.Tensor:
    a = a.T if _a(node, "transA", 0) else a
    b = b.T if _a(node, "transB", 0) else b
    y = _a(node, "alpha", 1.0) * (a @ b)
    return y if c is None else y + _a(node, "beta", 1.0) * c


register_torch_op("MatMul")(lambda node, a, b: torch.matmul(a, b))
register_torch_op("Einsum")(lambda node, *xs: torch.einsum(node.attrs["equation"], *xs))

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _spatial_pad(pads: list[int]) -> list[int]:
    """ONNX pads [begin..., end...] as F.pad's (last axis first) pairs."""
    r = len(pads) // 2
    return [p for i in reversed(range(r)) for p in (pads[i], pads[i + r])]


@register_torch_op("Conv")
def _conv(node: Node, x, w, b=None) -> torch.Tensor:
    strides, dil, pads = _conv_params(node, tuple(x.shape), tuple(w.shape[2:]))
    if any(pads):
        x = F.pad(x, _spatial_pad(pads))
    group = _a(node, "group", 1)
    if w.dim() == 4 and w.shape[3] == 1 and x.shape[3] == 1:
        # a column (kernel k x 1 over width 1, magika's conv): as a 1-D conv, about 1.5x
        # faster forward and backward on CPU than the 2-D kernel over a unit axis
        y = F.conv1d(x[..., 0], w[..., 0], b, strides[:1], 0, dil[:1], group)
        return y[..., None]
    return _CONV[w.dim() - 2](x, w, b, strides, 0, dil, group)


# ---- pooling: padded explicitly, then cut to the graph's output shape ----------------------------
def _window(node: Node, x: torch.Tensor, fill: float) -> tuple[torch.Tensor, list, list, list]:
    k = list(node.attrs["kernel_shape"])
    strides, dil, pads = _conv_params(node, tuple(x.shape), k)
    if any(pads):
        x = F.pad(x, _spatial_pad(pads), value=fill)
    return x, k, strides, dil


def _cut(y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return y[tuple(slice(0, s) for s in shape)]


# ops whose torch function also takes the graph's static output shape: fn(node, shape, *inputs)
SHAPED_OPS: dict[str, TorchImpl] = {}


def _shaped(op: str) -> Callable[[TorchImpl], TorchImpl]:
    def deco(fn: TorchImpl) -> TorchImpl:
        SHAPED_OPS[op] = fn
        return fn

    return deco


@_shaped("MaxPool")
def _maxpool(node: Node, shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    xp, k, strides, dil = _window(node, x, -math.inf)
    pool = {1: F.max_pool1d, 2: F.max_pool2d}[len(k)]
    y = pool(xp, k, strides, 0, dil, ceil_mode=bool(_a(node, "ceil_mode", 0)))
    return _cut(y, shape)


@_shaped("AveragePool")
def _avgpool(node: Node, shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    k = list(node.attrs["kernel_shape"])
    if any(d != 1 for d in _a(node, "dilations", [1] * len(k))):
        raise TorchOpError(
            f"AveragePool node {node.name!r} has dilations; torch's average pooling has none"
        )
    one_d = len(k) == 1
    x2 = x[..., None] if one_d else x
    ones = torch.ones((1, 1, *x2.shape[2:]), dtype=x.dtype)
    xp, k2, strides, _ = _window(node, x2 if not one_d else x, 0.0)
    if one_d:
        xp, k2, strides = xp[..., None], k2 + [1], strides + [1]
    fill = 1.0 if _a(node, "count_include_pad", 0) else 0.0
    onep = _window(node, ones[..., 0] if one_d else ones, fill)[0]
    onep = onep[..., None] if one_d else onep
    ceil = bool(_a(node, "ceil_mode", 0))
    sums = F.avg_pool2d(xp, k2, strides, 0, ceil, True, divisor_override=1)
    counts = F.avg_pool2d(onep, k2, strides, 0, ceil, True, divisor_override=1)
    y = sums / counts
    return _cut(y[..., 0] if one_d else y, shape)


# ---- data movement: the reference implementation on element numbers ---------------------------
_MOVES = {  # op -> positions of the inputs whose elements are moved (others must be constant)
    **dict.fromkeys(
        (
            "Reshape",
            "Flatten",
            "Transpose",
            "Squeeze",
            "Unsqueeze",
            "Split",
            "Slice",
            "Gather",
            "GatherElements",
            "Expand",
            "Tile",
            "DepthToSpace",
            "SpaceToDepth",
            "Identity",
            "Dropout",
            "Pad",
            "Resize",
        ),
        (0,),
    ),
    "Concat": None,  # every input
}


def _move_map(node: Node, args: list[Any], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """For each output, the flat index into [fill, *inputs moved...] of every element."""
    data = range(len(args)) if _MOVES[node.op] is None else _MOVES[node.op]
    offset, numbered = 1, list(args)  # index 0 is the fill value (Pad)
    for i in data:
        size = math.prod(shapes[i])
        numbered[i] = np.arange(offset, offset + size, dtype=np.int64).reshape(shapes[i])
        offset += size
    for i, a in enumerate(numbered):
        if i not in data and isinstance(a, torch.Tensor):
            numbered[i] = a.detach().cpu().numpy()
    if node.op == "Pad":  # pad with element number 0, which stands for the fill value
        node = Node(node.name, node.op, node.inputs, node.outputs, {**node.attrs, "value": 0})
        if len(numbered) > 2 and numbered[2] is not None:
            numbered[2] = np.zeros(1, np.int64)
    out = REGISTRY[node.op].impl(node, *numbered)
    return [np.asarray(o) for o in (out if isinstance(out, (tuple, list)) else [out])]


def _pad_fill(node: Node, args: list[Any], dtype: torch.dtype) -> torch.Tensor:
    value = args[2] if len(args) > 2 and args[2] is not None else None
    if value is not None and value.numel():
        return value.reshape(1).to(dtype)
    return torch.tensor([_a(node, "value", 0.0)], dtype=dtype)


# ---- the module ---------------------------------------------------------------------------------
def _check_supported(graph: Graph) -> None:
    """Every node has a torch function; Resize only in nearest mode (an element move)."""
    bad = [
        f"{n.op} (node {n.name!r})"
        for n in graph.nodes()
        if not (n.op in TORCH_OPS or n.op in SHAPED_OPS or n.op in _MOVES)
        or (n.op == "Resize" and _a(n, "mode", "nearest") != "nearest")
    ]
    if bad:
        raise TorchOpError(
            f"graph {graph.name!r}: no differentiable torch function for {', '.join(bad)}; "
            "register one with cimc.torch_backend.register_torch_op"
        )


def _safe(name: str) -> str:
    return "c_" + "".join(ch if ch.isalnum() else "_" for ch in name)


class GraphModule(nn.Module):
    """Runs ``graph`` in torch, one sample at the graph's static shapes.

    Constants become buffers, or ``nn.Parameter`` when named in ``trainable`` (floats only).
    ``forward(*inputs)`` takes the graph inputs in order and returns the outputs in order.
    Subclasses override :meth:`run_node` to change what a node does (as with the interpreter).
    """

    def __init__(self, graph: Graph, trainable: frozenset[str] | set[str] = frozenset()) -> None:
        super().__init__()
        _check_supported(graph)
        self.graph = graph
        self.order = graph.nodes()
        self._attr: dict[str, str] = {}
        for name, v in graph.values.items():
            if not v.is_constant:
                continue
            attr = _safe(name)
            while hasattr(self, attr):
                attr += "_"
            self._attr[name] = attr
            t = torch.from_numpy(np.array(v.data))
            if name in trainable:
                self.register_parameter(attr, nn.Parameter(t))
            else:
                self.register_buffer(attr, t, persistent=False)
        self._moves: dict[str, list[torch.Tensor | None]] = {}

    def constant(self, name: str) -> torch.Tensor:
        return getattr(self, self._attr[name])

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = dict(zip(self.graph.inputs, inputs))
        for node in self.order:
            args = [
                None if not i else env[i] if i in env else self.constant(i) for i in node.inputs
            ]
            results = self.run_node(node, args)
            for name, data in zip(node.outputs, results):
                if name:
                    env[name] = data
        return tuple(env[o] if o in env else self.constant(o) for o in self.graph.outputs)

    def run_node(self, node: Node, args: list[Any]) -> list[torch.Tensor]:
        if node.op in _MOVES:
            return self._move(node, args)
        if node.op in SHAPED_OPS:
            out = SHAPED_OPS[node.op](node, tuple(self.graph.values[node.outputs[0]].shape), *args)
        else:
            out = TORCH_OPS[node.op](node, *args)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def _move(self, node: Node, args: list[Any]) -> list[torch.Tensor]:
        data = range(len(args)) if _MOVES[node.op] is None else _MOVES[node.op]
        for i, (a, name) in enumerate(zip(args, node.inputs)):
            if i not in data and a is not None and not self.graph.values[name].is_constant:
                raise TorchOpError(
                    f"{node.op} node {node.name!r}: input {i} ({name!r}) is computed, not a "
                    "constant; the torch conversion moves elements by a fixed map"
                )
        shapes = [tuple(self.graph.values[n].shape) if n else () for n in node.inputs]
        if node.name not in self._moves:
            self._moves[node.name] = _gathers(node, list(args), shapes, data)
        moved = [args[i] for i in data]
        dtype = moved[0].dtype
        flat = [m.reshape(-1).to(dtype) for m in moved]
        if node.op == "Pad":  # element number 0 is the fill value
            flat.insert(0, _pad_fill(node, args, dtype))
        src = flat[0] if len(flat) == 1 else torch.cat(flat)
        outs = []
        for name, m in zip(node.outputs, self._moves[node.name]):
            shape = tuple(self.graph.values[name].shape)
            outs.append(src.reshape(shape) if m is None else src[m].reshape(shape))
        return outs


def _gathers(
    node: Node, args: list[Any], shapes: list[tuple[int, ...]], data: Any
) -> list[torch.Tensor | None]:
    """Per output of a move, the flat indices into its moved inputs, concatenated (for Pad,
    after the fill value); None where the output is them in order (a reshape, no copy)."""
    maps = _move_map(node, args, shapes)
    skip = 0 if node.op == "Pad" else 1  # element numbers count from 1 after the fill
    total = sum(math.prod(shapes[i]) for i in data) + 1 - skip
    return [
        None
        if m.size == total and np.array_equal(m.ravel(), np.arange(skip, skip + total))
        else torch.from_numpy(m.reshape(-1) - skip)
        for m in maps
    ]


def run_batched(module: nn.Module, feeds: Mapping[str, torch.Tensor], inputs: list[str]) -> Any:
    """``module`` on a batch: ``feeds[name]`` is [N, *graph input shape]; outputs gain the
    leading N (vmap, so the graph's own shapes, batch-1 or not, stay as imported)."""
    return torch.func.vmap(module)(*(feeds[i] for i in inputs))
