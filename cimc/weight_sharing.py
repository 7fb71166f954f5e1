"""Which CiM layers hold the same weights, so the arrays store them once.

An unrolled recurrent layer (``cimc.recurrent``) runs one MatMul per time step, every one with the
same constant recurrent weight. The importer names that constant in each step's
``meta[SOURCE_KEY]``; node meta survives the compression passes, which nevertheless write each
layer's compressed constants separately and may compress the steps differently (a calibrated
pool assignment or alpha, mixed precision, SmoothQuant scales). So a later layer shares the
first layer of its source only when what the arrays hold is identical: the same op, the same
attributes (the activation scale and sign aside: they act on the inputs, not the stored
weights) and equal constant operands (the bias aside: the vector unit adds it, so bias
correction may differ per step). The check compares a layer with the first of its source only:
one byte comparison per later layer, nothing hashed, and layers without the key cost nothing.

``tile`` places a share group once, ``lower`` reuses the arrays, and the storage report counts
the group's bits once; all three read :func:`share_leaders`. Before compression, the pool's
k-means sees each source's weight once (:func:`distinct_weights`) and the compression targets
the steps' mean calibration moments (:func:`tie_moments`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .cim_ops import CIM_OPS
from .ir import Graph, Node

SOURCE_KEY = "weight_source"  # node meta: the name of the float weight constant a layer reads
_INPUT_ONLY = ("act_scale", "act_signed")  # attributes of the inputs, not of the stored weights


def share_leaders(graph: Graph) -> dict[str, str]:
    """For every CiM layer that holds the same weights as an earlier one, the name of the first
    layer of its group (in execution order); layers with weights of their own are absent."""
    first: dict[str, Node] = {}
    leaders: dict[str, str] = {}
    for node in graph.nodes():
        source = node.meta.get(SOURCE_KEY)
        if node.op not in CIM_OPS or source is None:
            continue
        lead = first.setdefault(source, node)
        if lead is not node and same_weights(graph, lead, node):
            leaders[node.name] = lead.name
    return leaders


def same_weights(graph: Graph, a: Node, b: Node) -> bool:
    """Whether CiM layers ``a`` and ``b`` store identical weights on the arrays."""
    if a.op != b.op or len(a.inputs) != len(b.inputs):
        return False
    attrs = [{k: v for k, v in n.attrs.items() if k not in _INPUT_ONLY} for n in (a, b)]
    bits = [n.meta.get("compression", {}).get("bits") for n in (a, b)]
    if attrs[0] != attrs[1] or bits[0] != bits[1]:
        return False
    return all(
        _same_value(graph, x, y) for x, y in zip(a.inputs[1:-1], b.inputs[1:-1], strict=True)
    )


def _same_value(graph: Graph, x: str, y: str) -> bool:
    if x == y:
        return True
    if not x or not y:
        return False
    vx, vy = graph.values[x], graph.values[y]
    if not (vx.is_constant and vy.is_constant):
        return False
    return vx.data.dtype == vy.data.dtype and np.array_equal(vx.data, vy.data)


def weight_groups(graph: Graph, names: Iterable[str]) -> dict[str, list[str]]:
    """The layers ``names`` grouped by the weight they read: the steps of one recurrent weight
    together (keyed by its source), every other layer alone (keyed by its name)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(graph.node(name).meta.get(SOURCE_KEY, name), []).append(name)
    return groups


def tie_moments(graph: Graph, moments: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calibration moments per layer, each replaced by the mean over the layers that read the
    same weight source. One stored weight serves all those layers, so its compression should
    minimise their summed output error, tr(dW (sum_t C_t) dW^T); and the same weight with the
    same moments compresses to the same constants, which the arrays then hold once."""
    tied = dict(moments)
    for names in weight_groups(graph, moments).values():
        if len(names) > 1:
            tied.update(dict.fromkeys(names, np.mean([moments[n] for n in names], axis=0)))
    return tied


def distinct_weights(graph: Graph, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``weights`` (layer name -> float weight matrix) without the later layers of a weight
    source whose matrix equals its first layer's: a weight the steps share is one stored weight,
    so statistics over the network's weights (the pool's k-means) count it once, not per step."""
    first: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        source = graph.node(name).meta.get(SOURCE_KEY)
        lead = w if source is None else first.setdefault(source, w)
        if lead is w or not np.array_equal(lead, w):
            kept[name] = w
    return kept
