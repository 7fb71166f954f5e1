"""The calibration moments that weight-pool gathers and error-term and error-prune reuse."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cimc.calibration import slot_moments
from cimc.ir import Graph, Node
from cimc.passes_base import PassContext


@dataclass
class SlotMoments:
    """Second moments C[group, G, V, V] of each pool layer's unfolded input per vector slot
    (:func:`cimc.calibration.slot_moments`), keyed by layer name: with them assignment, beta
    and the error mask minimise the layer's output error rather than its weight error.

    Gathering them runs the whole calibration set through the interpreter, so weight-pool keeps
    them in ``PassContext.slot_moments`` and the error passes read them from there."""

    layers: dict[str, np.ndarray] = field(default_factory=dict)


def layer_moments(graph: Graph, ctx: PassContext, node: Node) -> np.ndarray | None:
    """Pool layer ``node``'s moments (None without calibration data), from weight-pool's run or
    gathered now and kept in ``ctx.slot_moments``."""
    if not ctx.calibration:
        return None
    if ctx.slot_moments is None:
        ctx.slot_moments = SlotMoments()
    cache = ctx.slot_moments.layers
    if node.name not in cache:
        layer = {node.name: dict(node.attrs)}
        cache.update(slot_moments(graph, ctx.calibration, layer, node.attrs["vector"]))
    return cache[node.name]
