"""LSTM and GRU: the ONNX reference semantics, and their unrolling into the ops cimc compiles.

The reference implementations (registered as the ``LSTM`` and ``GRU`` ops) follow the ONNX
operator specification step by step, in float64. The importer then rewrites every recurrent
node with :func:`unroll_recurrent` into primitive ops, so the backend needs nothing new:

* per direction, one ``MatMul`` of the whole sequence with the constant ``W^T`` (the input
  projection of every step at once: a CiM layer) plus the biases that can be added there;
* per step, in dependency order, a ``MatMul`` of the previous hidden state with the constant
  ``R^T`` (a CiM layer: a weight-stationary matrix-vector product) and the gate arithmetic
  (Gather, Add, Split, Sigmoid, Tanh, Mul, ...) on the vector unit.

Each step's matrix-vector product reads the previous step's hidden state, so a program waits
for it exactly as the hardware would. Every per-step ``MatMul`` of a direction reads the same
constant ``R^T`` value and names it in its meta (``cimc.weight_sharing.SOURCE_KEY``): the
compression passes see one CiM layer per step, and ``tile`` places the steps whose compressed
weights are identical once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UnsupportedOpError
from .ir import Graph, Node
from .ops import REGISTRY, register_op
from .weight_sharing import SOURCE_KEY

# activation name (lower case) -> (op type, the attributes activation_alpha/beta supply, in order)
_ACTIVATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sigmoid": ("Sigmoid", ()),
    "tanh": ("Tanh", ()),
    "relu": ("Relu", ()),
    "leakyrelu": ("LeakyRelu", ("alpha",)),
    "hardsigmoid": ("HardSigmoid", ("alpha", "beta")),
    "elu": ("Elu", ("alpha",)),
    "softsign": ("Softsign", ()),
    "softplus": ("Softplus", ()),
}
_DEFAULT_ACTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
_GATES = {"LSTM": 4, "GRU": 3}


@dataclass(frozen=True)
class _Spec:
    """The attributes of one recurrent node, resolved."""

    kind: str
    hidden: int
    reverse: tuple[bool, ...]  # per direction
    acts: tuple[tuple[tuple[str, dict], ...], ...]  # per direction: (op, attrs) per activation
    layout: int
    input_forget: bool
    linear_before_reset: bool


def _check(node: Node) -> str | None:
    """The attribute values the reference and the unrolling do not implement."""
    if node.attrs.get("clip") is not None:
        return "the clip attribute"
    for name in node.attrs.get("activations", []):
        if name.lower() not in _ACTIVATIONS:
            return f"activation {name}"
    if node.attrs.get("direction", "forward") not in ("forward", "reverse", "bidirectional"):
        return f"direction={node.attrs['direction']}"
    return None


def _spec(node: Node, dirs: int) -> _Spec:
    direction = node.attrs.get("direction", "forward")
    reverse = (True,) if direction == "reverse" else (False, True)[:dirs]
    names = list(node.attrs.get("activations", []))
    per_dir = len(_DEFAULT_ACTS[node.op])
    if not names:
        names = list(_DEFAULT_ACTS[node.op]) * dirs
    elif len(names) == per_dir and dirs == 2:
        names = names * 2
    alphas = list(node.attrs.get("activation_alpha", []))
    betas = list(node.attrs.get("activation_beta", []))
    acts = []
    for name in names:  # alpha and beta lists are consumed by the activations that take them
        op, params = _ACTIVATIONS[name.lower()]
        attrs = {}
        for p, supply in (("alpha", alphas), ("beta", betas)):
            if p in params and supply:
                attrs[p] = float(supply.pop(0))
        acts.append((op, attrs))
    return _Spec(
        kind=node.op,
        hidden=int(node.attrs["hidden_size"]),
        reverse=reverse,
        acts=tuple(tuple(acts[d * per_dir : (d + 1) * per_dir]) for d in range(dirs)),
        layout=int(node.attrs.get("layout", 0)),
        input_forget=bool(node.attrs.get("input_forget", 0)),
        linear_before_reset=bool(node.attrs.get("linear_before_reset", 0)),
    )


def _full_lengths(node: Node, lens: np.ndarray | None, steps: int) -> None:
    if lens is not None and np.any(np.asarray(lens) != steps):
        raise UnsupportedOpError(
            {node.op: [node.name]},
            {node.op: f"sequence_lens shorter than the sequence ({steps} steps)"},
        )


# ---- reference ---------------------------------------------------------------------------------
def _act(op_attrs: tuple[str, dict], x: np.ndarray) -> np.ndarray:
    op, attrs = op_attrs
    return REGISTRY[op].impl(Node("act", op, [], [], attrs), x)


def _time_major(spec: _Spec, *xs: np.ndarray | None) -> list[np.ndarray | None]:
    """layout=1 tensors ([batch, seq or dirs, ...]) as layout=0 ones, widened to float64."""
    out = []
    for x in xs:
        if x is not None:
            x = np.swapaxes(x, 0, 1) if spec.layout else x
            x = x.astype(np.float64)
        out.append(x)
    return out


def _outputs(node: Node, spec: _Spec, dtype: np.dtype, y: np.ndarray, *states: np.ndarray):
    """Y [seq, dirs, batch, hidden] and the final states [dirs, batch, hidden], in ``layout``."""
    if spec.layout:
        y = y.transpose(2, 0, 1, 3)
        states = tuple(s.transpose(1, 0, 2) for s in states)
    outs = tuple(a.astype(dtype) for a in (y, *states))
    return outs[: len(node.outputs)]


def _steps(spec: _Spec, d: int, n: int) -> range:
    return range(n - 1, -1, -1) if spec.reverse[d] else range(n)


@register_op("LSTM", check=_check)
def lstm(node: Node, x, w, r, b=None, lens=None, h0=None, c0=None, p=None) -> tuple:
    """ONNX LSTM (gate order i, o, f, c; optional peepholes P = [p_i, p_o, p_f])."""
    spec = _spec(node, w.shape[0])
    dtype = x.dtype
    x, h0, c0 = _time_major(spec, x, h0, c0)
    _full_lengths(node, lens, x.shape[0])
    n, batch, hid = x.shape[0], x.shape[1], spec.hidden
    ys, hs, cs = [], [], []
    for d in range(w.shape[0]):
        f, g, h_act = spec.acts[d]
        bias = 0.0 if b is None else b[d, : 4 * hid] + b[d, 4 * hid :].astype(np.float64)
        pi, po, pf = (0.0, 0.0, 0.0) if p is None else np.split(p[d].astype(np.float64), 3)
        h = np.zeros((batch, hid)) if h0 is None else h0[d]
        c = np.zeros((batch, hid)) if c0 is None else c0[d]
        y = np.zeros((n, batch, hid))
        wt, rt = w[d].T.astype(np.float64), r[d].T.astype(np.float64)
        for t in _steps(spec, d, n):
            gi, go, gf, gc = np.split(x[t] @ wt + h @ rt + bias, 4, axis=-1)
            i = _act(f, gi + pi * c)
            forget = 1 - i if spec.input_forget else _act(f, gf + pf * c)
            c = forget * c + i * _act(g, gc)
            h = _act(f, go + po * c) * _act(h_act, c)
            y[t] = h
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return _outputs(node, spec, dtype, np.stack(ys, 1), np.stack(hs), np.stack(cs))


@register_op("GRU", check=_check)
def gru(node: Node, x, w, r, b=None, lens=None, h0=None) -> tuple:
    """ONNX GRU (gate order z, r, h; ``linear_before_reset`` as the spec defines it)."""
    spec = _spec(node, w.shape[0])
    dtype = x.dtype
    x, h0 = _time_major(spec, x, h0)
    _full_lengths(node, lens, x.shape[0])
    n, batch, hid = x.shape[0], x.shape[1], spec.hidden
    ys, hs = [], []
    for d in range(w.shape[0]):
        f, g = spec.acts[d]
        wb, rb = (0.0, 0.0) if b is None else np.split(b[d].astype(np.float64), 2)
        rb = np.broadcast_to(rb, (3 * hid,))
        h = np.zeros((batch, hid)) if h0 is None else h0[d]
        y = np.zeros((n, batch, hid))
        wt, rt = w[d].T.astype(np.float64), r[d].T.astype(np.float64)
        for t in _steps(spec, d, n):
            xz, xr, xh = np.split(x[t] @ wt + wb, 3, axis=-1)
            z = _act(f, xz + h @ rt[:, :hid] + rb[:hid])
            reset = _act(f, xr + h @ rt[:, hid : 2 * hid] + rb[hid : 2 * hid])
            if spec.linear_before_reset:
                cand = _act(g, xh + reset * (h @ rt[:, 2 * hid :] + rb[2 * hid :]))
            else:
                cand = _act(g, xh + (reset * h) @ rt[:, 2 * hid :] + rb[2 * hid :])
            h = (1 - z) * cand + z * h
            y[t] = h
        ys.append(y)
        hs.append(h)
    return _outputs(node, spec, dtype, np.stack(ys, 1), np.stack(hs))


# ---- the weight constants of the unrolled graph -----------------------------------------------
def weight_tags(kind: str, linear_before_reset: bool) -> tuple[str, ...]:
    """The constants one direction's CiM layers read, by tag: ``WT`` (the input projection),
    then ``RT``, or for a GRU without ``linear_before_reset`` ``RT_zr`` and ``RT_h`` (the reset
    gate multiplies the state before its product with R's candidate rows)."""
    split = kind == "GRU" and not linear_before_reset
    return ("WT", "RT_zr", "RT_h") if split else ("WT", "RT")


def constant_name(node: str, d: int, tag: str) -> str:
    """The name the unrolling gives direction ``d``'s weight constant ``tag`` of ``node``
    (unless that name was taken: the graph then adds a suffix)."""
    return f"{node}.d{d}.{tag}"


def direction_weights(
    kind: str, linear_before_reset: bool, w: np.ndarray, r: np.ndarray
) -> dict[str, np.ndarray]:
    """tag -> constant of one direction's W [gates*hidden, in] and R [gates*hidden, hidden]:
    the transposes the MatMuls read (gate order unchanged), R^T split by columns where the
    tags say so. :func:`direction_from_weights` inverts it exactly."""
    rt = r.T
    tags = weight_tags(kind, linear_before_reset)
    parts = {"WT": w.T}
    if "RT" in tags:
        parts["RT"] = rt
    else:
        hid = r.shape[1]
        parts.update(RT_zr=rt[:, : 2 * hid], RT_h=rt[:, 2 * hid :])
    return {k: np.ascontiguousarray(v) for k, v in parts.items()}


def direction_from_weights(parts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(W, R) of one direction from its constants (``direction_weights``' output)."""
    rt = parts["RT"] if "RT" in parts else np.concatenate([parts["RT_zr"], parts["RT_h"]], 1)
    return np.ascontiguousarray(parts["WT"].T), np.ascontiguousarray(rt.T)


# ---- unrolling ---------------------------------------------------------------------------------
class _Emitter:
    """Adds nodes and constants named after the recurrent node they replace."""

    def __init__(self, graph: Graph, prefix: str):
        self.graph, self.prefix = graph, prefix

    def const(self, data: np.ndarray, tag: str) -> str:
        return self.graph.add_constant(self.graph.unique_name(f"{self.prefix}.{tag}"), data).name

    def op(self, op: str, inputs: list[str], tag: str, n_out: int = 1, out=None, **attrs) -> Any:
        """Add one node; its output is ``out``, or named after the node. Returns the output
        name, or the list of names when ``n_out`` > 1."""
        name = self.graph.unique_name(f"{self.prefix}.{tag}")
        if out:
            outs = [out]
        elif n_out == 1:
            outs = [name]
        else:
            outs = [self.graph.unique_name(f"{name}:{i}") for i in range(n_out)]
        self.graph.add_node(Node(name, op, inputs, outs, attrs))
        return outs[0] if n_out == 1 else outs

    def step_matmul(self, x: str, weight: str, tag: str) -> str:
        """One step's ``x @ weight`` with a recurrent weight every step reads: the node names the
        constant in its meta, so the arrays hold it once (``cimc.weight_sharing``)."""
        out = self.op("MatMul", [x, weight], tag)
        self.graph.node(out).meta[SOURCE_KEY] = weight
        return out

    def act(self, op_attrs: tuple[str, dict], x: str, tag: str) -> str:
        op, attrs = op_attrs
        return self.op(op, [x], tag, **attrs)


def unroll_recurrent(graph: Graph) -> int:
    """Rewrite every LSTM and GRU node into primitive ops; returns how many were rewritten."""
    nodes = [n for n in graph.nodes() if n.op in _GATES]
    for node in nodes:
        _unroll(graph, node)
    return len(nodes)


def _constant_input(graph: Graph, node: Node, index: int, what: str) -> np.ndarray | None:
    name = node.inputs[index] if len(node.inputs) > index else ""
    if not name:
        return None
    data = graph.constant(name)
    if data is None:
        raise UnsupportedOpError(
            {node.op: [node.name]}, {node.op: f"{what} computed at run time (it must be constant)"}
        )
    return data


def _state_input(graph: Graph, node: Node, index: int, e: _Emitter, spec: _Spec, batch: int):
    """The initial-state value (layout 0), or a zero constant when the input is omitted."""
    name = node.inputs[index] if len(node.inputs) > index else ""
    if not name:
        dirs = len(spec.reverse)
        dtype = graph.values[node.inputs[0]].dtype
        return e.const(np.zeros((dirs, batch, spec.hidden), dtype=dtype), f"init{index}")
    return e.op("Transpose", [name], "state_t", perm=[1, 0, 2]) if spec.layout else name


def _unroll(graph: Graph, node: Node) -> None:
    w = _constant_input(graph, node, 1, "W")
    r = _constant_input(graph, node, 2, "R")
    b = _constant_input(graph, node, 3, "B")
    spec = _spec(node, w.shape[0])
    x_shape = graph.values[node.inputs[0]].shape
    n, batch = (x_shape[1], x_shape[0]) if spec.layout else (x_shape[0], x_shape[1])
    _full_lengths(node, _constant_input(graph, node, 4, "sequence_lens"), n)
    graph.remove_node(node.name)
    e = _Emitter(graph, node.name)
    x = (
        e.op("Transpose", [node.inputs[0]], "x_t", perm=[1, 0, 2])
        if spec.layout
        else node.inputs[0]
    )
    h0 = _state_input(graph, node, 5, e, spec, batch)
    c0 = _state_input(graph, node, 6, e, spec, batch) if spec.kind == "LSTM" else None
    p = _constant_input(graph, node, 7, "P") if spec.kind == "LSTM" else None
    ys, hs, cs = [], [], []
    for d in range(w.shape[0]):
        run = _LstmDirection if spec.kind == "LSTM" else _GruDirection
        y, h, c = run(e, spec, d, w[d], r[d], None if b is None else b[d]).emit(x, h0, c0, p, n)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    _write_outputs(e, node, spec, ys, hs, cs)


def _write_outputs(e: _Emitter, node: Node, spec: _Spec, ys, hs, cs) -> None:
    axes0 = e.const(np.array([0], dtype=np.int64), "axes0")
    axes1 = e.const(np.array([1], dtype=np.int64), "axes1")
    wanted = list(node.outputs) + [""] * (3 - len(node.outputs))
    y_name, h_name, c_name = wanted
    if y_name:
        per_dir = [
            e.op("Concat", [e.op("Unsqueeze", [h, axes0], "y_t") for h in y], "y", axis=0)
            for y in ys
        ]
        stacked = [e.op("Unsqueeze", [y, axes1], "y_d") for y in per_dir]
        out = e.op("Concat", stacked, "Y", axis=1, out=None if spec.layout else y_name)
        if spec.layout:
            e.op("Transpose", [out], "Y_t", out=y_name, perm=[2, 0, 1, 3])
    for name, states in ((h_name, hs), (c_name, cs)):
        if name:
            stacked = [e.op("Unsqueeze", [s, axes0], "state") for s in states]
            out = e.op("Concat", stacked, "final", axis=0, out=None if spec.layout else name)
            if spec.layout:
                e.op("Transpose", [out], "final_t", out=name, perm=[1, 0, 2])


class _Direction:
    """One direction of a recurrent node: the shared input projection, then the steps."""

    def __init__(self, e: _Emitter, spec: _Spec, d: int, w, r, b):
        self.e, self.spec, self.d = e, spec, d
        self.tag = f"d{d}"
        self.w, self.b = w, b
        self.weights = direction_weights(spec.kind, spec.linear_before_reset, w, r)
        self.hid = spec.hidden

    def weight(self, tag: str) -> str:
        """The constant ``tag`` of :func:`direction_weights`, named by :func:`constant_name`."""
        graph = self.e.graph
        name = graph.unique_name(constant_name(self.e.prefix, self.d, tag))
        return graph.add_constant(name, self.weights[tag]).name

    def project_inputs(self, x: str, bias: np.ndarray | None) -> str:
        """x[seq, batch, in] @ W^T (+ bias): every step's input projection, one CiM layer."""
        e = self.e
        xw = e.op("MatMul", [x, self.weight("WT")], "xw")
        if bias is not None:
            xw = e.op("Add", [xw, e.const(bias.astype(self.w.dtype), f"{self.tag}.bias")], "xw_b")
        return xw

    def step_input(self, xw: str, t: int) -> str:
        return self.e.op(
            "Gather", [xw, self.e.const(np.array(t, dtype=np.int64), "t")], "x_at", axis=0
        )

    def initial(self, state: str) -> str:
        e = self.e
        return e.op(
            "Gather", [state, e.const(np.array(self.d, dtype=np.int64), "dir")], "init", axis=0
        )

    def steps(self, n: int) -> range:
        return _steps(self.spec, self.d, n)


class _LstmDirection(_Direction):
    def emit(self, x: str, h0: str, c0: str, p, n: int) -> tuple[list[str], str, str]:
        e, hid = self.e, self.hid
        f, g, h_act = self.spec.acts[self.d]
        bias = None if self.b is None else self.b[: 4 * hid] + self.b[4 * hid :]
        xw = self.project_inputs(x, bias)
        rt = self.weight("RT")
        peep = None
        if p is not None:
            peep = [e.const(v, f"{self.tag}.P{k}") for k, v in zip("iof", np.split(p[self.d], 3))]
        h, c = self.initial(h0), self.initial(c0)
        ys: list[str] = [""] * n
        for t in self.steps(n):
            gates = e.op("Add", [self.step_input(xw, t), e.step_matmul(h, rt, "hr")], "gates")
            gi, go, gf, gc = e.op("Split", [gates], "split", n_out=4, axis=-1)
            if peep is not None:
                gi = e.op("Add", [gi, e.op("Mul", [peep[0], c], "pc")], "gi")
                gf = e.op("Add", [gf, e.op("Mul", [peep[2], c], "pc")], "gf")
            i = e.act(f, gi, "i")
            if self.spec.input_forget:
                one = e.const(np.ones((), dtype=self.w.dtype), "one")
                forget = e.op("Sub", [one, i], "f")
            else:
                forget = e.act(f, gf, "f")
            c = e.op(
                "Add",
                [e.op("Mul", [forget, c], "fc"), e.op("Mul", [i, e.act(g, gc, "g")], "ig")],
                "c",
            )
            if peep is not None:
                go = e.op("Add", [go, e.op("Mul", [peep[1], c], "pc")], "go")
            h = e.op("Mul", [e.act(f, go, "o"), e.act(h_act, c, "hc")], "h")
            ys[t] = h
        return ys, h, c


class _GruDirection(_Direction):
    def emit(self, x: str, h0: str, c0: None, p: None, n: int) -> tuple[list[str], str, None]:
        e, hid = self.e, self.hid
        f, g = self.spec.acts[self.d]
        lbr = self.spec.linear_before_reset
        wb, rb = (None, None) if self.b is None else np.split(self.b, 2)
        # every bias outside the reset product joins the input projection
        bias = None
        if self.b is not None:
            bias = wb + np.concatenate([rb[: 2 * hid], np.zeros(hid) if lbr else rb[2 * hid :]])
        xw = self.project_inputs(x, bias)
        dtype = self.w.dtype
        h = self.initial(h0)
        one = e.const(np.ones((), dtype=dtype), "one")
        ys: list[str] = [""] * n
        if lbr:
            r_all = self.weight("RT")
            rb_h = None if rb is None else e.const(rb[2 * hid :].astype(dtype), f"{self.tag}.Rbh")
        else:
            r_zr, r_h = self.weight("RT_zr"), self.weight("RT_h")
        for t in self.steps(n):
            xz, xr, xh = e.op("Split", [self.step_input(xw, t)], "split_x", n_out=3, axis=-1)
            if lbr:
                hz, hr, hh = e.op(
                    "Split", [e.step_matmul(h, r_all, "hr")], "split_h", n_out=3, axis=-1
                )
                if rb_h is not None:
                    hh = e.op("Add", [hh, rb_h], "hh_b")
            else:
                hz, hr = e.op("Split", [e.step_matmul(h, r_zr, "hr")], "split_h", n_out=2, axis=-1)
            z = e.act(f, e.op("Add", [xz, hz], "gz"), "z")
            reset = e.act(f, e.op("Add", [xr, hr], "gr"), "r")
            if lbr:
                cand_in = e.op("Add", [xh, e.op("Mul", [reset, hh], "rh")], "gh")
            else:
                rh = e.step_matmul(e.op("Mul", [reset, h], "rh"), r_h, "rhR")
                cand_in = e.op("Add", [xh, rh], "gh")
            cand = e.act(g, cand_in, "cand")
            keep = e.op("Mul", [e.op("Sub", [one, z], "1-z"), cand], "keep")
            h = e.op("Add", [keep, e.op("Mul", [z, h], "zh")], "h")
            ys[t] = h
        return ys, h, None
