"""smooth-act: SmoothQuant-style migration of activation outliers into the weights.

Where one input channel of a CiM layer carries values far larger than the others, per-tensor
activation quantisation spends its range on that channel. Dividing input channel j by
s_j = max|X_j|^alpha / max|W_j|^(1-alpha) and multiplying weight column j by s_j leaves the
product unchanged and evens out the channels (Xiao et al., SmoothQuant, 2023). The division
is absorbed into a constant Mul (and the Add after it: a LayerNorm's scale and shift) that
produces the input when there is one; otherwise it becomes a Mul on the vector unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.calibration import channel_maxima
from cimc.cim_ops import cim_kind
from cimc.ir import Graph, Node, Value
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


def _weight_axis(node: Node) -> int:
    """The axis of the weight that meets the input channels."""
    if node.op == "Conv" or (node.op == "Gemm" and node.attrs.get("transB", 0)):
        return 1
    return 0


def _along(v: np.ndarray, axis: int, rank: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = v.size
    return v.reshape(shape)


@register_pass
@dataclass(frozen=True)
class SmoothActivations(Pass):
    """Per-input-channel scales moved from activations into the weights of float CiM layers
    whose largest channel exceeds ``outlier`` times the median channel (0: every layer)."""

    name = "smooth-act"
    alpha: float = 0.5
    outlier: float = 8.0

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"alpha": (0.3, 0.5, 0.7), "outlier": (0.0, 8.0)}

    def validate(self) -> None:
        self.check_range("alpha", 0.0, 1.0)
        self.check_range("outlier", 0.0)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        layers = [
            n
            for n in graph.nodes()
            if cim_kind(n, graph) and (n.op != "Conv" or n.attrs.get("group", 1) == 1)
        ]
        maxima = channel_maxima(graph, ctx.calibration, [n.name for n in layers])
        smoothed = 0
        for node in layers:
            xmax = maxima[node.name]
            if xmax.max() <= self.outlier * max(np.median(xmax), 1e-12):
                continue
            smoothed += 1
            w = graph.values[node.inputs[1]].data
            axis = _weight_axis(node)
            other = tuple(a for a in range(w.ndim) if a != axis)
            wmax = np.abs(w).max(axis=other).astype(np.float64)
            s = np.where(
                (xmax > 0) & (wmax > 0),
                xmax**self.alpha / np.maximum(wmax, 1e-12) ** (1 - self.alpha),
                1.0,
            )
            s = np.clip(s, 1e-4, 1e4)
            scaled = (w * _along(s, axis, w.ndim)).astype(w.dtype)
            w_name = graph.add_constant(graph.unique_name(f"{node.name}.weight_smooth"), scaled)
            x = node.inputs[0]
            x_axis = 1 if node.op == "Conv" else len(graph.values[x].shape) - 1
            if not _absorb(graph, x, 1.0 / s, x_axis):
                x = _divide(graph, node, x, 1.0 / s, x_axis)
            graph.set_inputs(node, [x, w_name.name, *node.inputs[2:]])
        graph.prune_unused()
        return PassResult(changed=smoothed > 0, summary=f"{smoothed} layers smoothed")


def _absorb(graph: Graph, x: str, inv: np.ndarray, axis: int) -> bool:
    """Scale the constants of the Mul (or Add over a Mul) that alone produces ``x``."""
    producer = graph.producer(x)
    if producer is None or x in graph.outputs or len(graph.consumers(x)) != 1:
        return False
    if producer.op not in ("Mul", "Add") or len(producer.inputs) != 2:
        return False
    consts = [i for i, name in enumerate(producer.inputs) if graph.values[name].is_constant]
    if len(consts) != 1:
        return False
    k = consts[0]
    if producer.op == "Add" and not _absorb(graph, producer.inputs[1 - k], inv, axis):
        return False
    c = graph.values[producer.inputs[k]].data
    rank = len(graph.values[x].shape)
    new = (c * _along(inv, axis, rank)).astype(c.dtype)
    name = graph.add_constant(graph.unique_name(f"{producer.name}.smoothed"), new).name
    graph.set_inputs(producer, [name if i == k else v for i, v in enumerate(producer.inputs)])
    return True


def _divide(graph: Graph, node: Node, x: str, inv: np.ndarray, axis: int) -> str:
    """A vector-unit Mul of ``x`` by 1/s, feeding only ``node``."""
    v = graph.values[x]
    const = graph.add_constant(
        graph.unique_name(f"{node.name}.inv_smooth"),
        _along(inv, axis, len(v.shape)).astype(v.dtype),
    )
    out = graph.unique_name(f"{node.name}.smoothed_input")
    graph.add_value(Value(out, v.shape, v.dtype))
    graph.add_node(Node(out, "Mul", [x, const.name], [out]))
    return out
