"""Statistics of layer inputs over calibration data, gathered by running the interpreter.

Compression passes use them to pick what matters for the layer's *output*, not only its
weights: activation ranges for quantisation, and per-vector-slot second moments
C_g = sum_m x[m, g] x[m, g]^T, so the output error of a weight error d is d^T C_g d.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from threadpoolctl import threadpool_limits

from .cim_ops import unfold
from .errors import FeedError
from .interpreter import Interpreter
from .ir import Graph, Node


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


def input_ranges(
    graph: Graph, feeds: list | None, nodes: Iterable[str], percentile: float | None = None
) -> dict[str, tuple[float, float]]:
    """(min, max) of each node's first input over the calibration set; with ``percentile``,
    the max of |x| is replaced by that percentile of |x| (robust to rare outliers)."""
    feeds = _need(feeds, "activation range calibration")
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    samples: dict[str, list[np.ndarray]] = {}

    def hook(node: Node, args: list) -> None:
        x = args[0]
        lo[node.name] = min(lo.get(node.name, np.inf), float(x.min()))
        hi[node.name] = max(hi.get(node.name, -np.inf), float(x.max()))
        if percentile is not None:
            samples.setdefault(node.name, []).append(np.abs(x).ravel())

    observe_inputs(graph, feeds, nodes, hook)
    if percentile is not None:
        for name, parts in samples.items():
            q = float(np.percentile(np.concatenate(parts), percentile))
            hi[name] = min(hi[name], q)
            lo[name] = max(lo[name], -q)
    return {n: (lo[n], hi[n]) for n in lo}


def slot_moments(
    graph: Graph, feeds: list | None, layers: dict[str, dict], vector: int
) -> dict[str, np.ndarray]:
    """C[group, G, V, V] per layer: second moments of the unfolded input, per vector slot."""
    feeds = _need(feeds, "output-aware assignment")
    out: dict[str, np.ndarray] = {}

    def hook(node: Node, args: list) -> None:
        # float32 products (statistics, not numerics that must be exact), float64 totals
        rows, _ = unfold(args[0].astype(np.float32), layers[node.name])
        group, m, k = rows.shape
        g = -(-k // vector)
        if k % vector:
            rows = np.concatenate(
                [rows, np.zeros((group, m, g * vector - k), dtype=np.float32)], axis=2
            )
        xv = rows.reshape(group, m, g, vector).transpose(0, 2, 1, 3)  # [group, G, M, V]
        # One BLAS thread: with more, OpenBLAS splits this long sum over M between threads and
        # rounds differently per thread count, and the program would depend on the machine.
        with threadpool_limits(1, user_api="blas"):
            c = np.matmul(xv.transpose(0, 1, 3, 2), xv)
        out[node.name] = out.get(node.name, 0) + c.astype(np.float64)

    observe_inputs(graph, feeds, layers, hook)
    return out
