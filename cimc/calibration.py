"""Statistics of layer inputs over calibration data, gathered by running the interpreter.

Compression passes use them to pick what matters for the layer's *output*, not only its
weights: activation ranges for quantisation, and per-vector-slot second moments
C_g = sum_m x[m, g] x[m, g]^T, so the output error of a weight error d is d^T C_g d.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
from threadpoolctl import threadpool_limits

from .cim_ops import unfold
from .errors import FeedError
from .interpreter import Interpreter
from .ir import Graph, Node
from .ops import call_op


class _Watcher(Interpreter):
    """Calls ``hook(node, args)`` before each watched node runs."""

    def __init__(self, graph: Graph, watch: set[str], hook: Callable[[Node, list], None]):
        super().__init__(graph)
        self.watch = watch
        self.hook = hook

    def run_node(self, node: Node, args: list) -> list[np.ndarray]:
        if node.name in self.watch:
            self.hook(node, args)
        return super().run_node(node, args)


def _need(feeds: list | None, what: str) -> list:
    if not feeds:
        raise FeedError(f"{what} needs calibration data; pass calibration=[feeds, ...] or an .npz")
    return feeds


def observe_inputs(
    graph: Graph, feeds: Iterable[dict], nodes: Iterable[str], hook: Callable[[Node, list], None]
) -> None:
    """Run every calibration feed, calling hook(node, args) at each named node."""
    runner = _Watcher(graph, set(nodes), hook)
    for f in feeds:
        runner.run(f)


METHODS = ("max", "percentile", "mse", "entropy")
_BINS = 2048


def input_ranges(
    graph: Graph,
    feeds: list | None,
    nodes: Iterable[str],
    method: str = "max",
    percentile: float = 99.99,
    bits: int = 8,
) -> dict[str, tuple[float, float]]:
    """(lo, hi) of each node's first input over the calibration set, clipped by ``method``.

    ``max`` keeps the extremes. The others clip the magnitude at a threshold chosen from a
    histogram of |x| (2048 bins up to the largest |x|; a second pass over the feeds, so memory
    stays bounded on big activations): ``percentile`` at that percentile of |x|; ``mse`` where
    the expected squared error of ``bits``-bit rounding plus clipping is least; ``entropy``
    where the KL divergence between the histogram and its quantised form is least (TensorRT's
    calibrator). Unsigned ranges (no negative value seen) get twice the levels."""
    feeds = _need(feeds, "activation range calibration")
    nodes = set(nodes)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def extremes(node: Node, args: list) -> None:
        x = args[0]
        lo[node.name] = min(lo.get(node.name, np.inf), float(x.min()))
        hi[node.name] = max(hi.get(node.name, -np.inf), float(x.max()))

    observe_inputs(graph, feeds, nodes, extremes)
    few = _too_few_values(graph, feeds, lo, method, percentile)
    if method == "max" or len(few) == len(lo):
        return {n: (lo[n], hi[n]) for n in lo}
    amax = {n: max(abs(lo[n]), abs(hi[n])) for n in lo}
    hist: dict[str, np.ndarray] = {}

    def histogram(node: Node, args: list) -> None:
        top = amax[node.name] or 1.0
        h, _ = np.histogram(np.abs(args[0]), bins=_BINS, range=(0.0, top))
        hist[node.name] = hist.get(node.name, 0) + h

    observe_inputs(graph, feeds, nodes, histogram)
    out = {n: (lo[n], hi[n]) for n in few}
    for n in set(lo) - few:
        levels = 2**bits - 1 if lo[n] >= 0 else 2 ** (bits - 1) - 1
        edges = np.linspace(0.0, amax[n], _BINS + 1)
        t = _THRESHOLD[method](hist[n].astype(np.float64), edges, levels, percentile)
        out[n] = (max(lo[n], -t), min(hi[n], t))
    return out


def _too_few_values(
    graph: Graph, feeds: list, layers: Iterable[str], method: str, pct: float
) -> set[str]:
    """Layers whose calibration inputs hold too few values to clip. A percentile p of fewer
    than 100 / (100 - p) values is their maximum (nearest rank), so those layers keep the
    extremes; the KL histogram needs a value per bin, so too few is an error."""
    top = math.inf if pct >= 100 else math.ceil(100 / (100 - pct))  # the 100th is the max
    need = {"percentile": top, "entropy": _BINS}.get(method, 0)
    few = set()
    for name in layers:
        x = graph.node(name).inputs[0]
        per_feed = graph.values[x].size
        have = per_feed * len(feeds)
        if have >= need:
            continue
        if method != "entropy":
            few.add(name)
            continue
        raise FeedError(
            f"quantize-act method={method} at layer {name!r}: {len(feeds)} calibration "
            f"feeds give {have} values of its input but it needs at least {need}; give at "
            f"least {math.ceil(need / per_feed)} feeds, or use method=percentile"
        )
    return few


def _percentile(h: np.ndarray, edges: np.ndarray, levels: int, pct: float) -> float:
    cum = np.cumsum(h) / h.sum()
    return float(np.interp(pct / 100, np.concatenate([[0.0], cum]), edges))


def _mse(h: np.ndarray, edges: np.ndarray, levels: int, pct: float) -> float:
    """Threshold minimising sum_bins h * (rounding error^2 within, clipping error^2 beyond)."""
    centre = (edges[:-1] + edges[1:]) / 2
    cands = edges[1:][:: max(1, len(h) // 256)][None, :]  # [1, C]
    step = cands / levels
    inside = centre[:, None] <= cands
    err = np.where(inside, step**2 / 12, (centre[:, None] - cands) ** 2)
    return float(cands[0, np.argmin(h @ err)])


def _entropy(h: np.ndarray, edges: np.ndarray, levels: int, pct: float) -> float:
    """TensorRT's KL calibration: for each candidate threshold i (bins), the reference P is
    h[:i] with the outliers folded into its last bin; Q merges h[:i] (without them) into
    ``levels`` levels, each spread evenly over its non-empty bins; keep the i with the least
    KL(P || Q)."""
    best, best_i = np.inf, len(h)
    for i in range(levels, len(h) + 1, max(1, (len(h) - levels) // 256)):
        sliced = h[:i]
        p = sliced.copy()
        p[-1] += h[i:].sum()
        level = np.arange(i) * levels // i
        nonzero = p > 0
        mass = np.bincount(level, weights=sliced, minlength=levels)
        count = np.bincount(level, weights=nonzero, minlength=levels)
        q = np.where(nonzero, mass[level] / np.maximum(count[level], 1), 0.0)
        ps, qs = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore"):  # a bin P holds but Q does not: KL is infinite
            kl = float(np.sum(ps[nonzero] * np.log(ps[nonzero] / qs[nonzero])))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i])


_THRESHOLD = {"percentile": _percentile, "mse": _mse, "entropy": _entropy}


def slot_moments(
    graph: Graph, feeds: list | None, layers: dict[str, dict], vector: int | None
) -> dict[str, np.ndarray]:
    """C[group, G, V, V] per layer: second moments of the unfolded input, per vector slot
    (``vector`` None: one slot spanning the whole row, C[group, 1, K, K])."""
    feeds = _need(feeds, "output-aware assignment" if vector else "error-compensated rounding")
    out: dict[str, np.ndarray] = {}

    def hook(node: Node, args: list) -> None:
        # float32 products (statistics, not numerics that must be exact), float64 totals
        rows, _ = unfold(args[0].astype(np.float32), layers[node.name])
        group, m, k = rows.shape
        vector_ = vector or k
        g = -(-k // vector_)
        if k % vector_:
            rows = np.concatenate(
                [rows, np.zeros((group, m, g * vector_ - k), dtype=np.float32)], axis=2
            )
        xv = rows.reshape(group, m, g, vector_).transpose(0, 2, 1, 3)  # [group, G, M, V]
        # One BLAS thread: with more, OpenBLAS splits this long sum over M between threads and
        # rounds differently per thread count, and the program would depend on the machine.
        with threadpool_limits(1, user_api="blas"):
            c = np.matmul(xv.transpose(0, 1, 3, 2), xv)
        out[node.name] = out.get(node.name, 0) + c.astype(np.float64)

    observe_inputs(graph, feeds, layers, hook)
    return out


def channel_maxima(graph: Graph, feeds: list | None, nodes: Iterable[str]) -> dict[str, np.ndarray]:
    """max |x| per input channel of each node's first input (axis 1 of a Conv, else the last)."""
    feeds = _need(feeds, "per-channel smoothing")
    out: dict[str, np.ndarray] = {}

    def hook(node: Node, args: list) -> None:
        x = np.abs(args[0])
        x = np.moveaxis(x, 1, -1) if node.op == "Conv" else x
        m = x.reshape(-1, x.shape[-1]).max(axis=0).astype(np.float64)
        out[node.name] = np.maximum(out.get(node.name, 0.0), m)

    observe_inputs(graph, feeds, nodes, hook)
    return out


def output_bias_error(
    graph: Graph, feeds: list | None, layers: Iterable[str]
) -> dict[str, np.ndarray]:
    """Per output channel, the mean of (compiled layer output - float layer output) over the
    calibration set: the expected error that bias correction subtracts (Nagel et al., 2019).

    The float output is the layer's input, unquantised, times its float weight
    (``meta['compression']['weight']``); the compiled one quantises both, as the arrays do."""
    feeds = _need(feeds, "bias correction")
    total: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}

    def hook(node: Node, args: list) -> None:
        compiled = call_op(node, args)
        rows, _ = unfold(args[0].astype(np.float64), node.attrs)  # [group, M, K]
        group, m, _ = rows.shape
        w = node.meta["compression"]["weight"].astype(np.float64)
        w = w.reshape(group, w.shape[0] // group, -1)
        exact = np.matmul(rows, w.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(m, -1)
        channel_last = compiled if node.attrs["kind"] != "conv" else np.moveaxis(compiled, 1, -1)
        diff = channel_last.reshape(m, -1).astype(np.float64) - exact
        bias = node.inputs[-1]
        if bias:  # the compiled output includes the bias, the product above does not
            diff -= graph.values[bias].data
        total[node.name] = total.get(node.name, 0.0) + diff.sum(axis=0)
        count[node.name] = count.get(node.name, 0) + m

    observe_inputs(graph, feeds, layers, hook)
    return {n: total[n] / count[n] for n in total}
