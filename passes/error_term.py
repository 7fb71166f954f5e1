"""error-term: add CIMPool's 1-bit error term with a per-layer scale beta.

For a pool-compressed layer the residual R = W - alpha * P[idx] is approximated by
beta * E with E = sign(R) in {-1, +1}, one bit per weight, held in the second (error) array.
beta is the least-squares scale: the mean |R| over real positions, or, with calibration
data, the value minimising the layer's output error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.calibration import slot_moments
from cimc.cim_ops import POOL_OP
from cimc.ir import Graph, Node
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


def residual(graph: Graph, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(R[O, G, V], real[G*V] mask of unpadded positions) of a pool-compressed layer."""
    w = node.meta["compression"]["weight"]
    pool, idx, alpha = (graph.values[node.inputs[i]].data for i in (1, 2, 4))
    return pool_residual(w, pool, idx, alpha)


def pool_residual(
    w: np.ndarray, pool: np.ndarray, idx: np.ndarray, alpha: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """R = W - alpha P[idx] as [O, G, V] (zero at padding) and the real-position mask [G, V]."""
    w = w.astype(np.float64)
    pool = pool.astype(np.float64)
    o, k = w.shape
    v = pool.shape[1]
    g = idx.shape[1]
    padded = np.zeros((o, g * v))
    padded[:, :k] = w
    recon = pool[idx] * (alpha.reshape(-1, 1, 1) if alpha.size > 1 else alpha[0])
    r = padded.reshape(o, g, v) - recon
    real = np.arange(g * v) < k
    r.reshape(o, -1)[:, ~real] = 0.0
    return r, real.reshape(g, v)


def least_squares_beta(r: np.ndarray, e: np.ndarray, moments: np.ndarray | None) -> float:
    """beta minimising ||R - beta E||^2, or the output error sum_g (r - beta e)^T C_g (.)."""
    if moments is None:
        den = float(np.sum(e * e))
        return float(np.sum(r * e)) / den if den else 0.0
    group = moments.shape[0]
    og = r.shape[0] // group
    num = den = 0.0
    for gr in range(group):
        sl = slice(gr * og, (gr + 1) * og)
        ce = np.matmul(e[sl].astype(np.float64).transpose(1, 0, 2), moments[gr]).transpose(1, 0, 2)
        num += float(np.sum(r[sl] * ce))
        den += float(np.sum(e[sl] * ce))
    return num / den if den else 0.0


def layer_moments(graph: Graph, ctx: PassContext, node: Node) -> np.ndarray | None:
    """The node's calibration moments, from weight-pool's run or computed now."""
    if not ctx.calibration:
        return None
    cache = ctx.state.setdefault("slot_moments", {})
    if node.name not in cache:
        attrs = dict(node.attrs)
        cache.update(slot_moments(graph, ctx.calibration, {node.name: attrs}, node.attrs["vector"]))
    return cache[node.name]


def set_error(graph: Graph, node: Node, err: np.ndarray, beta: float) -> None:
    """Attach the (masked) error bits and beta as the node's err and beta inputs."""
    err_name = graph.add_constant(graph.unique_name(f"{node.name}.err"), err.astype(np.int8)).name
    beta_name = graph.add_constant(graph.unique_name(f"{node.name}.beta"), np.array([beta])).name
    inputs = list(node.inputs)
    inputs[3], inputs[5] = err_name, beta_name
    graph.set_inputs(node, inputs)


@register_pass
@dataclass(frozen=True)
class ErrorTerm(Pass):
    """Add the 1-bit error term sign(W - alpha P[idx]) with a least-squares scale beta."""

    name = "error-term"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        added = 0
        for node in graph.nodes():
            if node.op != POOL_OP or node.meta["compression"].get("learned"):
                continue  # learned (fine-tuned) layers keep the error term they were tuned with
            r, real = residual(graph, node)
            e = np.where(r >= 0, 1, -1).astype(np.int8) * real[None].astype(np.int8)
            beta = least_squares_beta(r, e, layer_moments(graph, ctx, node))
            set_error(graph, node, e, beta)
            node.meta["compression"] = {**node.meta["compression"], "error_keep": 1.0}
            added += 1
        graph.prune_unused()
        return PassResult(changed=added > 0, summary=f"{added} error terms added")
