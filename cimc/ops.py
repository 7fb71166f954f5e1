"""The op registry: one table, keyed by op type.

Each entry gives the NumPy reference implementation (what ``cimc.interpret`` runs), the MAC
count, the work the digital vector unit does for it there (``work``: element operations by the
op's rule; matrix products are their MACs), whether the CiM arrays run it (matrix products with
a constant weight operand) or the digital vector unit does, and an optional check that rejects
attribute values we do not implement, so an unsupported model fails at import, all problems at
once, never at run time.

Static shapes come from ONNX shape inference at import; where that leaves a shape unknown the
importer evaluates the implementation on placeholder data (see ``cimc.frontend``). Passes that
add nodes give their output values explicit shapes.

``validate`` applies ONNX's own rules for the op (pads >= 0, strides >= 1, axes in range, group
dividing the channels...) to a node and its input values before the importer evaluates it, so a
malformed model is a :class:`~cimc.errors.NodeError` naming the node, never a NumPy exception.

User code registers its own ops with :func:`register_op`, exactly as the built-ins below do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper as onnx_helper
from scipy import special

from .errors import NodeError
from .ir import Graph, Node, Value

Impl = Callable[..., Any]
Validate = Callable[[Node, list[Value | None]], str | None]


@dataclass(frozen=True)
class OpDef:
    """What cimc knows about one op type."""

    op: str
    impl: Impl
    macs: Callable[[Node, Graph], int] | None = None
    on_cim: Callable[[Node, Graph], bool] | None = None
    check: Callable[[Node], str | None] | None = None
    validate: Validate | None = None
    work: Callable[[Node, Graph], int] | None = None


REGISTRY: dict[str, OpDef] = {}


def register_op(
    *ops: str,
    macs: Callable[[Node, Graph], int] | None = None,
    on_cim: Callable[[Node, Graph], bool] | None = None,
    check: Callable[[Node], str | None] | None = None,
    validate: Validate | None = None,
    work: Callable[[Node, Graph], int] | None = None,
) -> Callable[[Impl], Impl]:
    """Decorator: register ``impl(node, *inputs) -> array | tuple`` for each op type given.

    ``check(node)`` names an attribute value cimc does not implement; ``validate(node, inputs)``
    (input Values: shape, dtype, data when constant) names a break of ONNX's rules.
    ``work(node, graph)`` counts the vector unit's element operations (default: one per output
    element); an op with ``macs`` and no ``work`` is a matrix product the vector unit does as
    MACs (see :func:`vector_work`)."""

    def deco(fn: Impl) -> Impl:
        for op in ops:
            REGISTRY[op] = OpDef(op, fn, macs, on_cim, check, validate, work)
        return fn

    return deco


def call_op(node: Node, args: list[Any]) -> Any:
    """``node``'s implementation on ``args``. NumPy refusing the inputs (shapes that do not
    concatenate, broadcast or reshape, an index out of range...) means the model breaks its
    op's rules in a way ONNX's checker and shape inference did not see: a NodeError naming the
    node, its input shapes and NumPy's reason, not a traceback."""
    try:
        return REGISTRY[node.op].impl(node, *args)
    except (ValueError, IndexError) as exc:
        shapes = [None if a is None else tuple(np.shape(a)) for a in args]
        raise NodeError(
            f"node {node.name!r} ({node.op}) cannot run on inputs of shapes {shapes}: {exc}; "
            "the model is inconsistent there: fix the node or re-export the model (if "
            "onnxruntime runs it, report it as a cimc bug)"
        ) from exc


def macs_of(node: Node, graph: Graph) -> int:
    d = REGISTRY[node.op]
    return int(d.macs(node, graph)) if d.macs else 0


class VectorWork(NamedTuple):
    """What the vector unit does for one node: element operations and multiply-accumulates
    (the unit may run them at different rates)."""

    elem_ops: int
    macs: int


def vector_work(node: Node, graph: Graph) -> VectorWork:
    """The vector unit's real work for ``node``: its ``work`` rule's element operations, else
    the MACs of a matrix product (depthwise conv, activation x activation MatMul...), else one
    operation per output element (element-wise ops and data movement)."""
    d = REGISTRY[node.op]
    if d.work is not None:
        return VectorWork(int(d.work(node, graph)), 0)
    if d.macs is not None:
        return VectorWork(0, int(d.macs(node, graph)))
    return VectorWork(_out_size(node, graph), 0)


def runs_on_cim(node: Node, graph: Graph) -> bool:
    """True when the CiM arrays execute the node (a matrix product with constant weights)."""
    d = REGISTRY.get(node.op)
    return bool(d and d.on_cim and d.on_cim(node, graph))


def _a(node: Node, key: str, default: Any = None) -> Any:
    return node.attrs.get(key, default)


def _wide(a: np.ndarray) -> np.ndarray:
    """Float inputs of sums and products are widened to float64, so the reference rounds once,
    at the end: identical channels stay identical and results do not depend on BLAS blocking."""
    return a.astype(np.float64) if a.dtype.kind == "f" and a.dtype.itemsize < 8 else a


def _shape(graph: Graph, name: str) -> tuple[int, ...]:
    return graph.values[name].shape


def _out_size(node: Node, graph: Graph) -> int:
    return sum(graph.values[o].size for o in node.outputs if o)


def _in_size(node: Node, graph: Graph) -> int:
    return graph.values[node.inputs[0]].size


def _per_input(ops: int) -> Callable[[Node, Graph], int]:
    """Work rule: ``ops`` element operations per element of the first input."""
    return lambda node, graph: ops * _in_size(node, graph)


def _second_operand_constant(node: Node, graph: Graph) -> bool:
    return len(node.inputs) > 1 and graph.values[node.inputs[1]].is_constant


# ---- validation: ONNX's rules for attributes and inputs -----------------------------------------
def _rank(ins: list[Value | None], pos: int = 0) -> int:
    v = ins[pos] if pos < len(ins) else None
    return len(v.shape) if v is not None else 0


def _ints_rule(node: Node, key: str, length: int, minimum: int) -> str | None:
    """``attrs[key]``, when given, has ``length`` entries, each at least ``minimum``."""
    values = node.attrs.get(key)
    if values is None:
        return None
    values = [int(v) for v in values]
    if len(values) != length:
        return f"{key}={values} has {len(values)} entries; the input needs {length}"
    if any(v < minimum for v in values):
        return f"{key}={values}: every entry must be at least {minimum}"
    return None


def _window_rules(node: Node, ins: list[Value | None]) -> str | None:
    """Kernel, strides, dilations and pads of a convolution or pooling window."""
    r = _rank(ins) - 2
    if r < 1:
        return f"input of rank {_rank(ins)}; a spatial op needs rank 3 or more"
    rules = (("kernel_shape", r, 1), ("strides", r, 1), ("dilations", r, 1), ("pads", 2 * r, 0))
    for key, length, minimum in rules + (("output_padding", r, 0),):
        problem = _ints_rule(node, key, length, minimum)
        if problem:
            return problem
    return None


def _conv_rules(node: Node, ins: list[Value | None]) -> str | None:
    """Window rules, and weights [M, C/group, k...] matching the input and the group."""
    problem = _window_rules(node, ins)
    x, w = ins[0], ins[1]
    if problem or x is None or w is None:
        return problem
    if len(x.shape) not in (3, 4):
        return (
            f"input {x.name!r} of rank {len(x.shape)} is a {len(x.shape) - 2}-D convolution; "
            "cimc runs 1-D and 2-D ones"
        )
    group = int(_a(node, "group", 1))
    if group < 1:
        return f"group={group}; it must be at least 1"
    c, transposed = x.shape[1], node.op == "ConvTranspose"
    if len(w.shape) != len(x.shape):
        return f"weight {w.name!r} has rank {len(w.shape)}, the input rank {len(x.shape)}"
    if c % group or (w.shape[0] if transposed else w.shape[1] * group) != c:
        return (
            f"group={group} does not fit {c} input channels and weight {w.name!r} of shape "
            f"{w.shape}"
        )
    if not transposed and w.shape[0] % group:
        return f"group={group} does not divide the {w.shape[0]} output channels"
    return None


def _axis_rule(key: str, default: int | None, grow: int = 0) -> Validate:
    """Attribute ``key`` is an axis of the first input (of its rank + ``grow``, for Flatten)."""

    def rule(node: Node, ins: list[Value | None]) -> str | None:
        axis = node.attrs.get(key, default)
        rank = _rank(ins) + grow
        if axis is not None and not -rank <= int(axis) < max(rank, 1):
            return f"{key}={axis} is out of range for rank {rank - grow}"
        return None

    return rule


def _axes_rule(pos: int | None, grow: bool = False) -> Validate:
    """Axes (attribute ``axes``, or constant input ``pos``) are distinct axes of the first
    input (of the output, for Unsqueeze)."""

    def rule(node: Node, ins: list[Value | None]) -> str | None:
        axes = node.attrs.get("axes")
        if pos is not None and pos < len(ins) and ins[pos] is not None:
            axes = ins[pos].data
        if axes is None:
            return None
        axes = [int(a) for a in np.ravel(axes)]
        rank = _rank(ins) + (len(axes) if grow else 0)
        if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) < len(axes):
            return f"axes {axes} are not distinct axes of a rank-{rank} tensor"
        return None

    return rule


def _perm_rule(node: Node, ins: list[Value | None]) -> str | None:
    perm = node.attrs.get("perm")
    if perm is not None and sorted(int(p) for p in perm) != list(range(_rank(ins))):
        return f"perm={list(perm)} is not a permutation of the {_rank(ins)} axes"
    return None


def _cast_rule(node: Node, ins: list[Value | None]) -> str | None:
    to = node.attrs.get("to")
    try:
        kind = np.dtype(onnx_helper.tensor_dtype_to_np_dtype(int(to))).kind
    except (KeyError, TypeError, ValueError):
        kind = None
    if kind not in ("b", "i", "u", "f"):
        return f"to={to} is not a numeric ONNX tensor type (see onnx.TensorProto.DataType)"
    return None


def _range_rule(node: Node, ins: list[Value | None]) -> str | None:
    delta = ins[2] if len(ins) > 2 else None
    if delta is not None and delta.data is not None and not np.all(delta.data != 0):
        return "delta is 0, so the range never reaches its limit"
    return None


def _block_rule(node: Node, ins: list[Value | None]) -> str | None:
    """DepthToSpace / SpaceToDepth: a positive blocksize that divides what it splits."""
    b = int(node.attrs.get("blocksize", 0))
    x = ins[0]
    if b < 1:
        return f"blocksize={b}; it must be at least 1"
    if x is None or len(x.shape) != 4:
        return None if x is None else f"input of rank {len(x.shape)}; it needs rank 4"
    split = [x.shape[1] % (b * b)] if node.op == "DepthToSpace" else [d % b for d in x.shape[2:]]
    if any(split):
        return f"blocksize={b} does not divide the input shape {x.shape}"
    return None


# ---- elementwise --------------------------------------------------------------------------------
def _same_dtype(fn: Callable[..., np.ndarray]) -> Impl:
    def impl(node: Node, x: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        return np.asarray(fn(x, *rest)).astype(x.dtype, copy=False)

    return impl


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(np.true_divide(a, b)).astype(a.dtype)
    return np.divide(a, b)


_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _int_div,
    "Pow": np.power,
    "Mod": np.fmod,
}
for _op, _fn in _BINARY.items():
    register_op(_op)(_same_dtype(_fn))

_COMPARE = {
    "Equal": np.equal,
    "Less": np.less,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}
for _op, _fn in _COMPARE.items():
    register_op(_op)(lambda node, a, b, _f=_fn: _f(a, b))

register_op("Not")(lambda node, x: np.logical_not(x))


def _hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(alpha * x + beta, 0, 1)


_UNARY: dict[str, Callable[[Node, np.ndarray], np.ndarray]] = {
    "Relu": lambda n, x: np.maximum(x, 0),
    "Sigmoid": lambda n, x: special.expit(x),
    "Tanh": lambda n, x: np.tanh(x),
    "Exp": lambda n, x: np.exp(x),
    "Log": lambda n, x: np.log(x),
    "Sqrt": lambda n, x: np.sqrt(x),
    "Neg": lambda n, x: np.negative(x),
    "Abs": lambda n, x: np.abs(x),
    "Reciprocal": lambda n, x: np.reciprocal(x),
    "Erf": lambda n, x: special.erf(x),
    "Floor": lambda n, x: np.floor(x),
    "Ceil": lambda n, x: np.ceil(x),
    "Round": lambda n, x: np.round(x),
    "Sign": lambda n, x: np.sign(x),
    "Sin": lambda n, x: np.sin(x),
    "Cos": lambda n, x: np.cos(x),
    "Softplus": lambda n, x: np.logaddexp(x, 0),
    "Softsign": lambda n, x: x / (1 + np.abs(x)),
    "LeakyRelu": lambda n, x: np.where(x >= 0, x, x * _a(n, "alpha", 0.01)),
    "Elu": lambda n, x: np.where(x >= 0, x, _a(n, "alpha", 1.0) * np.expm1(x)),
    "Selu": lambda n, x: (
        _a(n, "gamma", 1.0507009873554805)
        * np.where(x > 0, x, _a(n, "alpha", 1.6732632423543772) * np.expm1(x))
    ),
    "HardSigmoid": lambda n, x: _hard_sigmoid(x, _a(n, "alpha", 0.2), _a(n, "beta", 0.5)),
    "HardSwish": lambda n, x: x * _hard_sigmoid(x, 1 / 6, 0.5),
    "Gelu": lambda n, x: (
        0.5 * x * (1 + special.erf(x / math.sqrt(2)))
        if _a(n, "approximate", "none") == "none"
        else 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    ),
    "Identity": lambda n, x: x,
}
for _op, _fn in _UNARY.items():
    register_op(_op)(lambda node, x, _f=_fn: np.asarray(_f(node, x)).astype(x.dtype, copy=False))


@register_op("Dropout")
def _dropout(node: Node, x: np.ndarray, *rest: Any) -> Any:
    if len(node.outputs) > 1:
        return x, np.ones(x.shape, dtype=bool)
    return x


@register_op("PRelu")
def _prelu(node: Node, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, x * slope).astype(x.dtype)


@register_op("Clip")
def _clip(node: Node, x: np.ndarray, lo: np.ndarray | None = None, hi=None) -> np.ndarray:
    lo = _a(node, "min", -np.inf) if lo is None else lo
    hi = _a(node, "max", np.inf) if hi is None else hi
    return np.clip(x, lo, hi).astype(x.dtype)


@register_op("Where")
def _where(node: Node, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(c, a, b)


def _variadic(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Impl:
    def impl(node: Node, *xs: np.ndarray) -> np.ndarray:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return np.asarray(out).astype(xs[0].dtype, copy=False)

    return impl


register_op("Sum")(_variadic(np.add))
register_op("Max")(_variadic(np.maximum))
register_op("Min")(_variadic(np.minimum))
register_op("Mean")(lambda node, *xs: (_variadic(np.add)(node, *xs) / len(xs)).astype(xs[0].dtype))


@register_op("Cast", validate=_cast_rule)
def _cast(node: Node, x: np.ndarray) -> np.ndarray:
    return x.astype(onnx_helper.tensor_dtype_to_np_dtype(node.attrs["to"]))


@register_op("CastLike")
def _cast_like(node: Node, x: np.ndarray, like: np.ndarray) -> np.ndarray:
    return x.astype(like.dtype)


# ---- softmax and normalisation ------------------------------------------------------------------
# Vector-unit passes over the input, per element: softmax = max, subtract, exp, accumulate,
# divide (5); log-softmax = max, subtract, exp, accumulate, subtract the log (5); batch norm
# (inference) = one multiply and one add with per-channel constants (2); layer / instance norm =
# accumulate (mean), subtract, square, accumulate (variance), multiply by 1/sigma, scale, and add
# the bias when there is one (6-7); LRN = square, ``size`` window adds, add bias, power, divide.
def _norm_work(node: Node, graph: Graph) -> int:
    return (6 + (len(node.inputs) > 2 and bool(node.inputs[2]))) * _in_size(node, graph)


@register_op("Softmax", validate=_axis_rule("axis", -1), work=_per_input(5))
def _softmax(node: Node, x: np.ndarray) -> np.ndarray:
    axis = _a(node, "axis", -1)
    e = np.exp(_wide(x) - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


@register_op("LogSoftmax", validate=_axis_rule("axis", -1), work=_per_input(5))
def _log_softmax(node: Node, x: np.ndarray) -> np.ndarray:
    axis = _a(node, "axis", -1)
    s = x - x.max(axis=axis, keepdims=True)
    return (s - np.log(np.exp(s).sum(axis=axis, keepdims=True))).astype(x.dtype)


def _channel(v: np.ndarray, rank: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (rank - 2))


def _batch_norm_rules(node: Node, ins: list[Value | None]) -> str | None:
    """A constant variance below -epsilon has no square root: the model is broken there."""
    var = ins[4] if len(ins) > 4 else None
    if var is not None and var.is_constant:
        low = var.data < -_a(node, "epsilon", 1e-5)
        if low.any():
            return f"variance {var.name!r} has {int(low.sum())} negative entries"
    return None


@register_op(
    "BatchNormalization",
    check=lambda n: "training_mode=1" if _a(n, "training_mode", 0) else None,
    validate=_batch_norm_rules,
    work=_per_input(2),
)
def _batchnorm(node: Node, x, scale, bias, mean, var) -> np.ndarray:
    eps = _a(node, "epsilon", 1e-5)
    r = x.ndim
    inv = scale / np.sqrt(var + eps)
    return (x * _channel(inv, r) + _channel(bias - mean * inv, r)).astype(x.dtype)


@register_op("InstanceNormalization", work=_norm_work)
def _instancenorm(node: Node, x, scale, bias) -> np.ndarray:
    axes = tuple(range(2, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + _a(node, "epsilon", 1e-5))
    return (y * _channel(scale, x.ndim) + _channel(bias, x.ndim)).astype(x.dtype)


@register_op("LayerNormalization", validate=_axis_rule("axis", -1), work=_norm_work)
def _layernorm(node: Node, x, scale, bias=None) -> Any:
    axis = _a(node, "axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    dtype, x = x.dtype, _wide(x)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + _a(node, "epsilon", 1e-5))
    y = (x - mu) * inv * scale
    if bias is not None:
        y = y + bias
    outs = (y.astype(dtype), mu.astype(np.float32), inv.astype(np.float32))
    return outs[: len(node.outputs)] if len(node.outputs) > 1 else outs[0]


@register_op("LRN", work=lambda n, g: (n.attrs["size"] + 4) * _in_size(n, g))
def _lrn(node: Node, x: np.ndarray) -> np.ndarray:
    size = node.attrs["size"]
    alpha, beta, bias = _a(node, "alpha", 1e-4), _a(node, "beta", 0.75), _a(node, "bias", 1.0)
    sq = np.square(x)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    c = x.shape[1]
    acc = sum(padded[:, i : i + c] for i in range(size))
    return (x / (bias + alpha / size * acc) ** beta).astype(x.dtype)


# ---- matrix products (the CiM ops) --------------------------------------------------------------
def _gemm_macs(node: Node, graph: Graph) -> int:
    a = _shape(graph, node.inputs[0])
    k = a[0] if _a(node, "transA", 0) else a[1]
    return int(np.prod(_shape(graph, node.outputs[0]))) * k


@register_op("Gemm", macs=_gemm_macs, on_cim=_second_operand_constant)
def _gemm(node: Node, a, b, c=None) -> np.ndarray:
    if _a(node, "transA", 0):
        a = a.T
    if _a(node, "transB", 0):
        b = b.T
    y = _a(node, "alpha", 1.0) * (_wide(a) @ _wide(b))
    if c is not None:
        y = y + _a(node, "beta", 1.0) * c
    return y.astype(a.dtype, copy=False)


def _matmul_macs(node: Node, graph: Graph) -> int:
    k = _shape(graph, node.inputs[0])[-1]
    return int(np.prod(_shape(graph, node.outputs[0]))) * k


register_op("MatMul", macs=_matmul_macs, on_cim=_second_operand_constant)(
    lambda node, a, b: np.matmul(_wide(a), _wide(b)).astype(a.dtype, copy=False)
)


def _einsum_macs(node: Node, graph: Graph) -> int:
    """One MAC per point of the full index space (every letter of the equation)."""
    terms = node.attrs["equation"].replace(" ", "").split("->")[0].split(",")
    dims: dict[str, int] = {}
    for term, name in zip(terms, node.inputs):
        shape = _shape(graph, name)
        letters = term.replace("...", "")
        lead = len(shape) - len(letters)  # dimensions the ellipsis stands for
        for i, letter in enumerate(letters):
            dims[letter] = shape[lead + i]
        if "..." in term:
            for i in range(lead):
                dims[f"...{i}"] = max(dims.get(f"...{i}", 1), shape[i])
    return math.prod(dims.values())


@register_op("Einsum", macs=_einsum_macs)
def _einsum(node: Node, *xs: np.ndarray) -> np.ndarray:
    return np.einsum(node.attrs["equation"], *[_wide(x) for x in xs]).astype(xs[0].dtype)


def _spatial_check(node: Node) -> str | None:
    k = node.attrs.get("kernel_shape")
    if k is not None and len(k) not in (1, 2):
        return f"{len(k)}-D kernels (only 1-D and 2-D)"
    return None


def _conv_pads(node: Node, in_sp, k_sp, strides, dil) -> list[int]:
    """Pads as [begin..., end...], resolving auto_pad."""
    r = len(in_sp)
    auto = _a(node, "auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(r):
            out = -(-in_sp[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (k_sp[i] - 1) * dil[i] + 1 - in_sp[i])
            small = total // 2
            b, e = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
            begins.append(b)
            ends.append(e)
        return begins + ends
    if auto == "VALID":
        return [0] * (2 * r)
    return list(_a(node, "pads", [0] * (2 * r)))


def _conv_params(node: Node, x_shape, k_sp):
    r = len(k_sp)
    strides = list(_a(node, "strides", [1] * r))
    dil = list(_a(node, "dilations", [1] * r))
    pads = _conv_pads(node, x_shape[2:], k_sp, strides, dil)
    return strides, dil, pads


def _as_2d(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 3 else x


def pad_spatial(x: np.ndarray, pads) -> np.ndarray:
    """NCHW ``x`` zero-padded by pads = [top, left, bottom, right] (``x`` itself when all are
    zero: most convolutions of a ResNet are unpadded 1x1)."""
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))


def _windows(xp: np.ndarray, k, strides, dil, out_sp) -> np.ndarray:
    """View [N, C, Ho, Wo, kh, kw] of a padded NCHW input."""
    span = ((k[0] - 1) * dil[0] + 1, (k[1] - 1) * dil[1] + 1)
    w = sliding_window_view(xp, span, axis=(2, 3))
    return w[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]][
        :, :, : out_sp[0], : out_sp[1]
    ]


def _tap(xp: np.ndarray, i: int, j: int, strides, dil, out_sp) -> np.ndarray:
    """View [N, C, Ho, Wo] of the inputs that kernel position (i, j) sees at every output."""
    y0, x0 = i * dil[0], j * dil[1]
    return xp[
        :,
        :,
        y0 : y0 + strides[0] * (out_sp[0] - 1) + 1 : strides[0],
        x0 : x0 + strides[1] * (out_sp[1] - 1) + 1 : strides[1],
    ]


def conv2d(x, w, strides, dil, pads, group) -> np.ndarray:
    """NCHW convolution without bias (pads = [top, left, bottom, right]); also used by passes."""
    x, w = _wide(x), _wide(w)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = pad_spatial(x, pads)
    ho = (h + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    wo = (wd + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    if group == c and cg == 1 and group > 1:
        mult = o // c
        src = np.repeat(xp, mult, axis=1) if mult > 1 else xp
        out = np.zeros((n, o, ho, wo), dtype=np.result_type(x, w))
        for i in range(kh):
            for j in range(kw):
                patch = _tap(src, i, j, strides, dil, (ho, wo))
                out += patch * w[:, 0, i, j][None, :, None, None]
        return out
    win = _windows(xp, (kh, kw), strides, dil, (ho, wo))
    og = o // group
    cols = win.reshape(n, group, cg, ho, wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    cols = cols.reshape(group, n * ho * wo, cg * kh * kw)
    wm = w.reshape(group, og, cg * kh * kw).transpose(0, 2, 1)
    out = np.matmul(cols, wm)
    return out.reshape(group, n, ho, wo, og).transpose(1, 0, 4, 2, 3).reshape(n, o, ho, wo)


def _conv_macs(node: Node, graph: Graph) -> int:
    w = _shape(graph, node.inputs[1])
    return int(np.prod(_shape(graph, node.outputs[0]))) * int(np.prod(w[1:]))


@register_op(
    "Conv",
    macs=_conv_macs,
    on_cim=_second_operand_constant,
    check=_spatial_check,
    validate=_conv_rules,
)
def _conv(node: Node, x, w, b=None) -> np.ndarray:
    one_d = x.ndim == 3
    x2, w2 = _as_2d(x), _as_2d(w)
    strides, dil, pads = _conv_params(node, x.shape, w.shape[2:])
    if one_d:
        strides, dil, pads = strides + [1], dil + [1], [pads[0], 0, pads[1], 0]
    y = conv2d(x2, w2, strides, dil, pads, _a(node, "group", 1))
    if b is not None:
        y = y + _channel(b, 4)
    y = y.astype(x.dtype, copy=False)
    return y[..., 0] if one_d else y


def _convtranspose_macs(node: Node, graph: Graph) -> int:
    w = _shape(graph, node.inputs[1])
    return int(np.prod(_shape(graph, node.inputs[0]))) * int(np.prod(w[1:]))


@register_op(
    "ConvTranspose",
    macs=_convtranspose_macs,
    on_cim=_second_operand_constant,
    check=_spatial_check,
    validate=_conv_rules,
)
def _conv_transpose(node: Node, x, w, b=None) -> np.ndarray:
    one_d = x.ndim == 3
    x2, w2 = _as_2d(x), _as_2d(w)
    n, c, h, wd = x2.shape
    _, og, kh, kw = w2.shape
    g = _a(node, "group", 1)
    r = x.ndim - 2
    strides = list(_a(node, "strides", [1] * r)) + ([1] if one_d else [])
    dil = list(_a(node, "dilations", [1] * r)) + ([1] if one_d else [])
    opad = list(_a(node, "output_padding", [0] * r)) + ([0] if one_d else [])
    full = [
        (h - 1) * strides[0] + (kh - 1) * dil[0] + 1,
        (wd - 1) * strides[1] + (kw - 1) * dil[1] + 1,
    ]
    if "output_shape" in node.attrs:
        target = list(node.attrs["output_shape"])[-r:] + ([1] if one_d else [])
        total = [full[i] + opad[i] - target[i] for i in range(2)]
        auto = _a(node, "auto_pad", "NOTSET")
        begin = [t // 2 if auto != "SAME_LOWER" else t - t // 2 for t in total]
        pads = begin + [total[i] - begin[i] for i in range(2)]
    else:
        pads = list(_a(node, "pads", [0] * (2 * r)))
        if one_d:
            pads = [pads[0], 0, pads[1], 0]
        auto = _a(node, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            target = [h * strides[0], wd * strides[1]]
            total = [full[i] + opad[i] - target[i] for i in range(2)]
            big = [t - t // 2 for t in total]
            begin = big if auto == "SAME_LOWER" else [t // 2 for t in total]
            pads = begin + [total[i] - begin[i] for i in range(2)]
    y = np.zeros((n, og * g, full[0] + opad[0], full[1] + opad[1]), dtype=np.result_type(x, w))
    cg = c // g
    for gi in range(g):
        xg = x2[:, gi * cg : (gi + 1) * cg]
        wg = w2[gi * cg : (gi + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", _wide(xg), _wide(wg[:, :, i, j]))
                y0, x0 = i * dil[0], j * dil[1]
                y[
                    :,
                    gi * og : (gi + 1) * og,
                    y0 : y0 + strides[0] * (h - 1) + 1 : strides[0],
                    x0 : x0 + strides[1] * (wd - 1) + 1 : strides[1],
                ] += contrib
    y = y[:, :, pads[0] : y.shape[2] - pads[2], pads[1] : y.shape[3] - pads[3]]
    if b is not None:
        y = y + _channel(b, 4)
    y = y.astype(x.dtype, copy=False)
    return y[..., 0] if one_d else y


# ---- pooling ------------------------------------------------------------------------------------
def _pool_check(node: Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1]:
        return "the Indices output of MaxPool"
    return _spatial_check(node)


def _pool(node: Node, x: np.ndarray, kind: str) -> np.ndarray:
    one_d = x.ndim == 3
    x2 = _as_2d(x)
    k = list(node.attrs["kernel_shape"]) + ([1] if one_d else [])
    strides, dil, pads = _conv_params(node, x.shape, node.attrs["kernel_shape"])
    if one_d:
        strides, dil, pads = strides + [1], dil + [1], [pads[0], 0, pads[1], 0]
    ceil = _a(node, "ceil_mode", 0)
    out_sp, extra = [], []
    for i in range(2):
        span = (k[i] - 1) * dil[i] + 1
        length = x2.shape[2 + i] + pads[i] + pads[i + 2] - span
        o = (-(-length // strides[i]) if ceil else length // strides[i]) + 1
        if ceil and (o - 1) * strides[i] >= x2.shape[2 + i] + pads[i]:
            o -= 1
        out_sp.append(o)
        extra.append(
            max(0, (o - 1) * strides[i] + span - (x2.shape[2 + i] + pads[i] + pads[i + 2]))
        )
    widths = ((0, 0), (0, 0), (pads[0], pads[2] + extra[0]), (pads[1], pads[3] + extra[1]))
    if kind == "max":
        fill = -np.inf if np.issubdtype(x2.dtype, np.floating) else np.iinfo(x2.dtype).min
        xp = np.pad(x2, widths, constant_values=fill)
        # one maximum per kernel position: ~10x faster than reducing a 6-D window view
        taps = (_tap(xp, i, j, strides, dil, out_sp) for i, j in np.ndindex(k[0], k[1]))
        y = functools.reduce(np.maximum, taps)
    else:
        xp = np.pad(_wide(x2), widths)
        sums = _windows(xp, k, strides, dil, out_sp).sum(axis=(-2, -1))
        ones = np.ones((1, 1) + x2.shape[2:], dtype=x2.dtype)
        if _a(node, "count_include_pad", 0):
            ones = np.pad(
                ones, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=1
            )
            ones = np.pad(ones, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
        else:
            ones = np.pad(ones, widths)
        counts = _windows(ones, k, strides, dil, out_sp).sum(axis=(-2, -1))
        y = sums / counts
    y = y.astype(x.dtype, copy=False)
    return y[..., 0] if one_d else y


def _window_work(node: Node, graph: Graph) -> int:
    """One compare or add per kernel tap of every output (a pooling window)."""
    return math.prod(node.attrs["kernel_shape"]) * graph.values[node.outputs[0]].size


register_op("MaxPool", check=_pool_check, validate=_window_rules, work=_window_work)(
    lambda node, x: _pool(node, x, "max")
)
register_op("AveragePool", check=_spatial_check, validate=_window_rules, work=_window_work)(
    lambda node, x: _pool(node, x, "avg")
)
register_op("GlobalAveragePool", work=_per_input(1))(
    lambda node, x: _wide(x).mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)
)
register_op("GlobalMaxPool", work=_per_input(1))(
    lambda node, x: x.max(axis=tuple(range(2, x.ndim)), keepdims=True)
)


# ---- reductions ---------------------------------------------------------------------------------
def _reduce(fn: Callable[..., np.ndarray]) -> Impl:
    def impl(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        ax = node.attrs.get("axes") if axes is None else axes
        keep = bool(_a(node, "keepdims", 1))
        if ax is None or len(ax) == 0:
            if _a(node, "noop_with_empty_axes", 0):
                return x
            ax = range(x.ndim)
        y = fn(_wide(x), axis=tuple(int(a) for a in ax), keepdims=keep)
        return np.asarray(y).astype(x.dtype)

    return impl


_REDUCE = {
    "ReduceMean": np.mean,
    "ReduceSum": np.sum,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
    "ReduceProd": np.prod,
    "ReduceL2": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "ReduceL1": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "ReduceSumSquare": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
}
for _op, _fn in _REDUCE.items():  # one accumulate (or multiply-accumulate) per input element
    register_op(_op, validate=_axes_rule(1), work=_per_input(1))(_reduce(_fn))


def _arg(fn: Callable[..., np.ndarray]) -> Impl:
    def impl(node: Node, x: np.ndarray) -> np.ndarray:
        axis = _a(node, "axis", 0)
        if _a(node, "select_last_index", 0):
            flipped = np.flip(x, axis=axis)
            idx = x.shape[axis] - 1 - fn(flipped, axis=axis)
        else:
            idx = fn(x, axis=axis)
        if _a(node, "keepdims", 1):
            idx = np.expand_dims(idx, axis)
        return idx.astype(np.int64)

    return impl


register_op("ArgMax", validate=_axis_rule("axis", 0), work=_per_input(1))(_arg(np.argmax))
register_op("ArgMin", validate=_axis_rule("axis", 0), work=_per_input(1))(_arg(np.argmin))


# ---- shape and data movement --------------------------------------------------------------------
@register_op("Reshape")
def _reshape(node: Node, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    shape = [int(s) for s in shape]
    if not _a(node, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@register_op("Flatten", validate=_axis_rule("axis", 1, grow=1))
def _flatten(node: Node, x: np.ndarray) -> np.ndarray:
    axis = _a(node, "axis", 1) % (x.ndim + 1) if x.ndim else 0
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


@register_op("Transpose", validate=_perm_rule)
def _transpose(node: Node, x: np.ndarray) -> np.ndarray:
    return np.transpose(x, _a(node, "perm", None))


@register_op("Squeeze", validate=_axes_rule(1))
def _squeeze(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    ax = node.attrs.get("axes") if axes is None else axes
    if ax is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) % x.ndim for a in ax))


@register_op("Unsqueeze", validate=_axes_rule(1, grow=True))
def _unsqueeze(node: Node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    ax = node.attrs.get("axes") if axes is None else axes
    rank = x.ndim + len(ax)
    for a in sorted(int(a) % rank for a in ax):
        x = np.expand_dims(x, a)
    return x


@register_op("Concat", validate=_axis_rule("axis", None))
def _concat(node: Node, *xs: np.ndarray) -> np.ndarray:
    return np.concatenate(xs, axis=node.attrs["axis"])


def _split_rules(node: Node, ins: list[Value | None]) -> str | None:
    """The axis exists, and the split sizes (attribute or constant input) add up to its length
    (np.split would cut the rest into a last piece ONNX does not have)."""
    problem = _axis_rule("axis", 0)(node, ins)
    x = ins[0]
    split = ins[1] if len(ins) > 1 else None
    sizes = split.data if split is not None and split.is_constant else node.attrs.get("split")
    if problem or x is None or sizes is None:
        return problem
    axis = int(_a(node, "axis", 0)) % len(x.shape)
    total = int(np.sum(sizes))
    if total != x.shape[axis] or np.any(np.asarray(sizes) < 0):
        shown = list(map(int, sizes))
        return f"split sizes {shown} do not add up to axis {axis}'s length {x.shape[axis]}"
    return None


@register_op("Split", validate=_split_rules)
def _split(node: Node, x: np.ndarray, split: np.ndarray | None = None) -> tuple:
    axis = _a(node, "axis", 0)
    sizes = node.attrs.get("split") if split is None else split
    n = len(node.outputs)
    if sizes is None:
        step = -(-x.shape[axis] // n)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(n)]
    cuts = np.cumsum([int(s) for s in sizes])[:-1]
    return tuple(np.split(x, cuts, axis=axis))


@register_op("Slice", validate=_axes_rule(3))
def _slice(node: Node, x, starts, ends, axes=None, steps=None) -> np.ndarray:
    axes = range(len(starts)) if axes is None else [int(a) % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index: list[slice] = [slice(None)] * x.ndim
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        dim = x.shape[ax]
        st, en, sp = int(st), int(en), int(sp)
        st = st + dim if st < 0 else st
        en = en + dim if en < 0 else en
        if sp > 0:
            st, en = min(max(st, 0), dim), min(max(en, 0), dim)
        else:
            st, en = min(max(st, 0), dim - 1), min(max(en, -1), dim - 1)
        index[ax] = slice(st, None if en < 0 else en, sp)
    return x[tuple(index)]


@register_op("Gather", validate=_axis_rule("axis", 0))
def _gather(node: Node, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    axis = _a(node, "axis", 0)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take(x, idx, axis=axis)


@register_op("GatherElements", validate=_axis_rule("axis", 0))
def _gather_elements(node: Node, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    axis = _a(node, "axis", 0)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take_along_axis(x, idx, axis=axis)


@register_op("Shape")
def _shape_op(node: Node, x: np.ndarray) -> np.ndarray:
    dims = np.array(x.shape, dtype=np.int64)
    return dims[_a(node, "start", 0) : node.attrs.get("end", len(dims))]


register_op("Size")(lambda node, x: np.array(x.size, dtype=np.int64))


def _value_attr(node: Node) -> np.ndarray:
    for key, dtype in (
        ("value", None),
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    raise ValueError(f"Constant node {node.name!r} has no value attribute")


register_op("Constant")(lambda node: _value_attr(node))


@register_op("ConstantOfShape")
def _constant_of_shape(node: Node, shape: np.ndarray) -> np.ndarray:
    value = node.attrs.get("value", np.zeros(1, dtype=np.float32))
    return np.full([int(s) for s in shape], value.reshape(-1)[0], dtype=value.dtype)


@register_op("Expand")
def _expand(node: Node, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    target = np.broadcast_shapes(x.shape, tuple(int(s) for s in shape))
    return np.array(np.broadcast_to(x, target))


register_op("Tile")(lambda node, x, reps: np.tile(x, [int(r) for r in reps]))


@register_op("Range", validate=_range_rule)
def _range(node: Node, start, limit, delta) -> np.ndarray:
    return np.arange(start, limit, delta, dtype=start.dtype)


@register_op("Pad", check=lambda n: "mode=wrap" if _a(n, "mode", "constant") == "wrap" else None)
def _pad(node: Node, x, pads=None, value=None, axes=None) -> np.ndarray:
    pads = list(node.attrs.get("pads", [])) if pads is None else [int(p) for p in pads]
    axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in axes]
    r = len(axes)
    widths = [[0, 0] for _ in range(x.ndim)]
    for i, ax in enumerate(axes):
        widths[ax] = [pads[i], pads[i + r]]
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(widths))
    x = x[crop]
    pos = [(max(b, 0), max(e, 0)) for b, e in widths]
    mode = _a(node, "mode", "constant")
    if mode == "constant":
        cval = (
            _a(node, "value", 0.0) if value is None else value.reshape(-1)[0] if value.size else 0
        )
        return np.pad(x, pos, mode="constant", constant_values=cval)
    return np.pad(x, pos, mode={"reflect": "reflect", "edge": "edge"}[mode])


@register_op("DepthToSpace", validate=_block_rule)
def _depth_to_space(node: Node, x: np.ndarray) -> np.ndarray:
    b = node.attrs["blocksize"]
    n, c, h, w = x.shape
    if _a(node, "mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@register_op("SpaceToDepth", validate=_block_rule)
def _space_to_depth(node: Node, x: np.ndarray) -> np.ndarray:
    b = node.attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# ---- resize -------------------------------------------------------------------------------------
def _resize_check(node: Node) -> str | None:
    mode = _a(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        return f"mode={mode}"
    ctm = _a(node, "coordinate_transformation_mode", "half_pixel")
    if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        return f"coordinate_transformation_mode={ctm}"
    return None


def _source_coords(ctm: str, out_len: int, in_len: int, scale: float) -> np.ndarray:
    x = np.arange(out_len, dtype=np.float64)
    if ctm == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if ctm == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else np.zeros_like(x)
    if ctm == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros_like(x)
    return x / scale


_NEAREST = {
    "round_prefer_floor": lambda c: np.ceil(c - 0.5),
    "round_prefer_ceil": lambda c: np.floor(c + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}


@register_op("Resize", check=_resize_check)
def _resize(node: Node, x, roi=None, scales=None, sizes=None) -> np.ndarray:
    if sizes is not None and sizes.size:
        out_shape = [int(s) for s in sizes]
        scale = [o / i for o, i in zip(out_shape, x.shape)]
    else:
        scale = [float(s) for s in scales]
        out_shape = [int(math.floor(i * s)) for i, s in zip(x.shape, scale)]
    mode = _a(node, "mode", "nearest")
    ctm = _a(node, "coordinate_transformation_mode", "half_pixel")
    y = x.astype(np.float64) if mode == "linear" else x
    for ax, (n_in, n_out) in enumerate(zip(x.shape, out_shape)):
        if n_in == n_out and scale[ax] == 1:
            continue
        coords = _source_coords(ctm, n_out, n_in, scale[ax])
        if mode == "nearest":
            pick = _NEAREST[_a(node, "nearest_mode", "round_prefer_floor")](coords)
            y = np.take(y, np.clip(pick, 0, n_in - 1).astype(np.int64), axis=ax)
        else:
            coords = np.clip(coords, 0, n_in - 1)
            lo = np.floor(coords).astype(np.int64)
            hi = np.minimum(lo + 1, n_in - 1)
            frac = (coords - lo).reshape([-1 if i == ax else 1 for i in range(x.ndim)])
            y = np.take(y, lo, axis=ax) * (1 - frac) + np.take(y, hi, axis=ax) * frac
    return y.astype(x.dtype, copy=False)
