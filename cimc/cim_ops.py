"""The CiM layer ops that compression passes produce, and the weight view they share.

A CiM layer (Conv, Gemm or MatMul with a constant weight) computes rows x[m, :K] of its
unfolded input against a weight W[O, K], with K flattened in (ky, kx, cin) order, cin fastest,
the order in which z-dimension packing lays weights onto array rows (DESIGN.md).

Two ops replace float CiM layers:

``cimc.PoolMVM``  (weight-pool compression)
    inputs: x, pool[S, V] (+-1), idx[O, G] (int), err[O, G, V] (int8 in {-1, 0, +1}; 0 = pruned)
    or "", alpha[1 or O], beta[1] or "", bias[O] or ""
    y[m, o] = s_x * (alpha_o * A[m, o] + beta * B[m, o]) + bias_o, where
    A[m, o] = sum_g (x_q[m, g, :] . pool[idx[o, g]]) (pool array, then permutation unit) and
    B[m, o] = sum_g (x_q[m, g, :] . err[o, g]) (error array).

``cimc.QuantMVM``  (N-bit per-channel symmetric weights: baselines, layers left uncompressed)
    inputs: x, wq[O, K] (int8), wscale[O], bias[O] or ""
    y[m, o] = (x_q[m] . wq[o]) * (wscale_o * s_x) + bias_o

With activation quantisation (attrs ``act_bits`` > 0, ``act_scale``, ``act_signed``) x_q holds
integers, every sum is exact, and the scales are applied once per output in float64 in the
order written above: the numerics contract the simulator reproduces bit for bit.

With a column ADC (attrs ``adc_bits`` > 0, ``array_rows``, ``error_rows``: the target's, set by
quantize-act) the arrays are read as the macro reads them: per input bit plane, every column's
sum (a pool vector slot; an error-array slot; an int layer's weight bit slice over one tile of
``array_rows`` inputs) goes through an ``adc_bits`` converter (:func:`adc`) before the digital
shift-and-add. The results stay integers, so the simulator still reproduces them bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ir import Graph, Node
from .ops import _conv_params, _windows, pad_spatial, register_op

POOL_OP = "cimc.PoolMVM"
QUANT_OP = "cimc.QuantMVM"
CIM_OPS = (POOL_OP, QUANT_OP)


# ---- which float layers are CiM layers, and their weight matrix ----------------------------
def cim_kind(node: Node, graph: Graph) -> str | None:
    """'conv', 'gemm' or 'matmul' when the arrays can run the node, else None."""
    vals = graph.values
    if node.op == "Conv":
        w = vals[node.inputs[1]]
        bias_ok = len(node.inputs) < 3 or not node.inputs[2] or vals[node.inputs[2]].is_constant
        return "conv" if w.is_constant and len(w.shape) == 4 and bias_ok else None
    if node.op == "Gemm":
        b = vals[node.inputs[1]]
        c = vals[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else None
        n_out = b.shape[0] if node.attrs.get("transB", 0) else b.shape[1]
        plain = not node.attrs.get("transA", 0) and node.attrs.get("alpha", 1.0) == 1.0
        c_ok = c is None or (
            c.is_constant and node.attrs.get("beta", 1.0) == 1.0 and c.size in (1, n_out)
        )
        return "gemm" if b.is_constant and plain and c_ok else None
    if node.op == "MatMul":
        b = vals[node.inputs[1]]
        x = vals[node.inputs[0]]
        return "matmul" if b.is_constant and len(b.shape) == 2 and len(x.shape) >= 2 else None
    return None


def weight_matrix(node: Node, graph: Graph) -> np.ndarray:
    """W[O, K] of a float CiM layer, K in (ky, kx, cin) order."""
    w = graph.values[node.inputs[1]].data
    if node.op == "Conv":
        return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    if node.op == "Gemm":
        return w if node.attrs.get("transB", 0) else w.T
    return w.T


def bias_vector(node: Node, graph: Graph, n_out: int) -> np.ndarray | None:
    if len(node.inputs) < 3 or not node.inputs[2]:
        return None
    return np.broadcast_to(graph.values[node.inputs[2]].data, (n_out,)).astype(np.float32)


def unfold_attrs(node: Node, graph: Graph) -> dict[str, Any]:
    """The attributes a CiM op needs to turn its input into rows (im2col geometry for convs)."""
    kind = cim_kind(node, graph)
    attrs: dict[str, Any] = {"kind": kind}
    if kind == "conv":
        w = graph.values[node.inputs[1]].shape
        x = graph.values[node.inputs[0]].shape
        strides, dil, pads = _conv_params(node, x, w[2:])
        attrs.update(
            kernel=[int(w[2]), int(w[3])],
            strides=[int(s) for s in strides],
            dilations=[int(d) for d in dil],
            pads=[int(p) for p in pads],
            group=int(node.attrs.get("group", 1)),
        )
    return attrs


def is_depthwise(node: Node, graph: Graph) -> bool:
    if node.op != "Conv":
        return False
    group = node.attrs.get("group", 1)
    return group > 1 and graph.values[node.inputs[1]].shape[1] == 1


# ---- activation quantisation -------------------------------------------------------------------
def act_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of an activation: symmetric when signed, [0, 2^b - 1] otherwise."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def quantize_input(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """x_q as float64 integers (or x itself, widened, when the layer is not quantised)."""
    bits = attrs.get("act_bits", 0)
    if not bits:
        return x.astype(np.float64)
    lo, hi = act_range(bits, bool(attrs.get("act_signed", 0)))
    return np.clip(np.round(x.astype(np.float64) / attrs["act_scale"]), lo, hi)


def act_scale(attrs: dict[str, Any]) -> float:
    return float(attrs["act_scale"]) if attrs.get("act_bits", 0) else 1.0


# ---- column ADC ---------------------------------------------------------------------------------
def adc_attrs(target: Any) -> dict[str, int]:
    """The layer attrs of a target's column ADC: none for an ideal adder tree (adc_bits = 0)."""
    if target is None or not target.adc_bits:
        return {}
    return {
        "adc_bits": int(target.adc_bits),
        "array_rows": int(target.rows),
        "error_rows": int(target.error_rows),
    }


def adc(sums: np.ndarray, bits: int, lo: int, hi: int) -> np.ndarray:
    """What a ``bits``-bit ADC reads from column sums in [lo, hi] (the column's full scale).

    A uniform converter over the full scale whose step is a power of two: it resolves the top
    ``bits`` bits of the exact sum's ceil(log2(hi - lo + 1))-bit code, as a SAR ADC with fewer
    cycles does. Thresholds sit half a step above each level (round half up) and codes clip to
    [0, 2^bits - 1]. Exact when 2^bits covers every value; the result is always an integer.
    """
    step = 2.0 ** max(0, (hi - lo).bit_length() - bits)
    code = np.clip(np.floor((sums - lo) / step + 0.5), 0, 2**bits - 1)
    return lo + code * step


def bit_planes(x: np.ndarray, bits: int, signed: bool) -> list[tuple[float, np.ndarray]]:
    """(weight, plane) pairs with x = sum of weight * plane, planes in {0, 1}: the bit-serial
    stream of integers x (two's complement when signed: the top plane weighs -2^(bits-1))."""
    u = x.astype(np.int64) % 2**bits
    planes = [(2.0**b, ((u >> b) & 1).astype(np.float32)) for b in range(bits)]
    if signed:
        planes[-1] = (-(2.0 ** (bits - 1)), planes[-1][1])
    return planes


def _adc_pool_sums(
    padded: np.ndarray, pool: np.ndarray, err: np.ndarray | None, attrs: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray | None]:
    """array_sums through the column ADCs: per bit plane, each pool column's sum over one
    vector slot (full scale +-V) and each error column's (full scale +-error_rows)."""
    bits, act = attrs["adc_bits"], attrs["act_bits"]
    m, sv = padded.shape
    v = pool.shape[1]
    p32 = pool.T.astype(np.float32)
    columns = np.zeros((sv // v, m, pool.shape[0]), np.float64)
    err_acc = None if err is None else np.zeros((m, err.shape[0]), np.float64)
    e_rows = attrs["error_rows"]
    for weight, plane in bit_planes(padded, act, bool(attrs.get("act_signed", 0))):
        slots = plane.reshape(m, -1, v).transpose(1, 0, 2)
        columns += weight * adc(np.matmul(slots, p32), bits, -v, v)
        if err is not None:
            e32 = err.transpose(1, 2, 0).astype(np.float32)  # [G, V, O]
            err_acc += weight * adc(np.matmul(slots, e32), bits, -e_rows, e_rows).sum(axis=0)
    return columns, err_acc


def _adc_int_sums(rows: np.ndarray, wq: np.ndarray, bits: int, attrs: dict[str, Any]) -> np.ndarray:
    """x_q . wq[o] through the column ADCs: ``bits``-bit weights bit-sliced over ``bits``
    columns (two's complement), inputs bit-serial, each tile of ``array_rows`` inputs summed
    per column (full scale 0..array_rows) and converted before the shift-and-add."""
    r = attrs["array_rows"]
    m, k = rows.shape
    acc = np.zeros((m, wq.shape[0]), np.float64)
    planes = bit_planes(rows, attrs["act_bits"], bool(attrs.get("act_signed", 0)))
    for w_weight, w_slice in bit_planes(wq, bits, True):
        for start in range(0, k, r):
            tile = w_slice[:, start : start + r].T
            for x_weight, plane in planes:
                sums = plane[:, start : start + r] @ tile
                acc += (x_weight * w_weight) * adc(sums, attrs["adc_bits"], 0, r)
    return acc


# ---- unfolding ---------------------------------------------------------------------------------
def unfold(x: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Rows [group, M, K] of the layer input, and the shape to fold outputs back into."""
    kind = attrs["kind"]
    if kind != "conv":
        rows = x.reshape(-1, x.shape[-1])
        return rows[None], x.shape[:-1]
    n, c, h, w = x.shape
    kh, kw = attrs["kernel"]
    strides, dil, pads, group = attrs["strides"], attrs["dilations"], attrs["pads"], attrs["group"]
    xp = pad_spatial(x, pads)
    ho = (h + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    win = _windows(xp, (kh, kw), strides, dil, (ho, wo))  # n, c, ho, wo, kh, kw
    cg = c // group
    rows = win.reshape(n, group, cg, ho, wo, kh, kw).transpose(1, 0, 3, 4, 5, 6, 2)
    return rows.reshape(group, n * ho * wo, kh * kw * cg), (n, ho, wo)


def fold(y: np.ndarray, attrs: dict[str, Any], lead: tuple[int, ...]) -> np.ndarray:
    """Rows [M, O] back to the layer's output layout."""
    if attrs["kind"] == "conv":
        n, ho, wo = lead
        return y.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)
    return y.reshape(*lead, -1)


def _per_group(rows: np.ndarray, n_out: int, fn) -> np.ndarray:
    """Apply fn(rows_of_group, output_slice) per conv group and stack outputs to [M, O]."""
    group = rows.shape[0]
    og = n_out // group
    if group == 1:
        return fn(rows[0], slice(0, n_out))
    return np.concatenate([fn(rows[g], slice(g * og, (g + 1) * og)) for g in range(group)], axis=1)


def _sum_dtype(act_bits: int, k: int) -> type:
    """float32 when the rows are quantised activations (integers of magnitude <= 2^act_bits)
    and every partial sum against {-1, 0, +1} weights stays below 2^24, which float32 adds
    exactly (and BLAS twice as fast); float64 otherwise."""
    return np.float32 if act_bits and 2**act_bits * k < 2**24 else np.float64


def array_sums(
    rows: np.ndarray, pool: np.ndarray, slots: int, err: np.ndarray | None, attrs: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray | None]:
    """What the two arrays compute for rows [M, K] of the layer's integer activations: the pool
    array's column sums columns[G, M, S] per vector slot, and the error array's sums B[M, O]
    (None without one). Both are integers (exact ones with an ideal adder tree)."""
    v = pool.shape[1]
    m, k = rows.shape
    dtype = _sum_dtype(attrs["act_bits"], slots * v)
    padded = np.zeros((m, slots * v), dtype=dtype)
    padded[:, :k] = rows
    if attrs.get("adc_bits"):
        return _adc_pool_sums(padded, pool, err, attrs)
    columns = np.matmul(padded.reshape(m, slots, v).transpose(1, 0, 2), pool.T.astype(dtype))
    err_acc = None
    if err is not None:
        err_acc = (padded @ err.reshape(err.shape[0], -1).T.astype(dtype)).astype(np.float64)
    return columns, err_acc


def pool_accumulators(
    rows: np.ndarray,
    pool: np.ndarray,
    idx: np.ndarray,
    err: np.ndarray | None,
    attrs: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray | None]:
    """A[M, O] through the pool array and permutation, and B[M, O] through the error array."""
    columns, err_acc = array_sums(rows, pool, idx.shape[1], err, attrs)
    acc = np.zeros((rows.shape[0], idx.shape[0]), dtype=np.float64)
    for gi in range(idx.shape[1]):
        acc += columns[gi][:, idx[:, gi]]  # float64 sums of exact integers stay exact
    return acc, err_acc


def dense_weights(pool, idx, alpha, err=None, beta=None) -> np.ndarray:
    """W_hat[O, G*V] = alpha P[idx] + beta err: the weights a pool layer stands for."""
    o, g = idx.shape
    w = pool.astype(np.float64)[idx] * (alpha.reshape(-1, 1, 1) if alpha.size > 1 else alpha[0])
    if err is not None:
        w = w + beta[0] * err
    return w.reshape(o, -1)


def _pool_mvm(node: Node, x, pool, idx, err=None, alpha=None, beta=None, bias=None) -> np.ndarray:
    a = node.attrs
    rows, lead = unfold(quantize_input(x, a), a)
    n_out = idx.shape[0]

    def compute(r: np.ndarray, out: slice) -> np.ndarray:
        al = alpha if alpha.size == 1 else alpha[out]
        if not a.get("act_bits", 0):  # float activations (before quantize-act): one dense GEMM
            w = dense_weights(pool, idx[out], al, None if err is None else err[out], beta)
            return r @ w[:, : r.shape[1]].T
        acc, err_acc = pool_accumulators(r, pool, idx[out], None if err is None else err[out], a)
        y = al * acc
        if err_acc is not None:
            y = y + beta * err_acc
        return y

    y = _per_group(rows, n_out, compute) * act_scale(a)
    if bias is not None:
        y = y + bias
    return fold(y, a, lead).astype(x.dtype)


def _quant_mvm(node: Node, x, wq, wscale, bias=None) -> np.ndarray:
    a = node.attrs
    rows, lead = unfold(quantize_input(x, a), a)
    group, n_out = rows.shape[0], wq.shape[0]
    if a.get("adc_bits"):
        bits = node.meta.get("compression", {}).get("bits", 8)
        acc = _per_group(rows, n_out, lambda r, out: _adc_int_sums(r, wq[out], bits, a))
    else:
        w = wq.astype(np.float64).reshape(group, n_out // group, -1)
        acc = np.matmul(rows, w.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(rows.shape[1], n_out)
    y = acc * (wscale * act_scale(a))
    if bias is not None:
        y = y + bias
    return fold(y, a, lead).astype(x.dtype)


def _cim_macs(node: Node, graph: Graph) -> int:
    return int(np.prod(graph.values[node.outputs[0]].shape)) * int(node.attrs["k"])


register_op(POOL_OP, macs=_cim_macs, on_cim=lambda n, g: True)(_pool_mvm)
register_op(QUANT_OP, macs=_cim_macs, on_cim=lambda n, g: True)(_quant_mvm)


# ---- building CiM ops (used by the compression passes) ------------------------------------------
def rewrite_as_cim_op(
    graph: Graph,
    node: Node,
    op: str,
    operands: list[tuple[str, np.ndarray | str | None]],
    attrs: dict[str, Any],
    meta: dict[str, Any],
) -> Node:
    """Replace float CiM layer ``node`` by ``op`` under the same name and output.

    ``operands`` lists (suffix, data) after the layer input: an array becomes a new constant
    named ``<node>.<suffix>``, a string names an existing value, None leaves the input empty.
    """
    inputs = [node.inputs[0]]
    for suffix, data in operands:
        if data is None:
            inputs.append("")
        elif isinstance(data, str):
            inputs.append(data)
        else:
            inputs.append(graph.add_constant(graph.unique_name(f"{node.name}.{suffix}"), data).name)
    new = Node(node.name, op, inputs, list(node.outputs), attrs, {**node.meta, **meta})
    graph.remove_node(node.name)
    graph.add_node(new)
    return new


def float_cim_layers(graph: Graph) -> list[Node]:
    """Float layers the arrays could run, in execution order."""
    return [n for n in graph.nodes() if cim_kind(n, graph)]
