"""quantize-weights: the conventional N-bit CiM baseline (per-channel symmetric weights)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from cimc.targets.agreement import EDGE_BITS, from_target, int_weight_bits

from cimc.calibration import slot_moments
from cimc.cim_ops import float_cim_layers, unfold_attrs, weight_matrix
from cimc.compress import ROUNDINGS, WEIGHT_BITS, to_quant_mvm
from cimc.errors import OptionError
from cimc.ir import Graph, Node
from cimc.passes_base import Pass, PassContext, PassResult, register_pass
from cimc.sensitivity import mark_sensitive, most_sensitive
from cimc.weight_sharing import tie_moments, weight_groups


@register_pass
@dataclass(frozen=True)
class QuantizeWeights(Pass):
    """Store every CiM layer's weights as N-bit per-channel symmetric integers. With
    ``keep_edges`` the first and last layers stay at 8 bits, the same policy weight-pool uses,
    so baselines and CIMPool are compared on equal terms. ``bits`` 0 takes an int macro
    target's ``weight_bits`` (8 without one, or on a macro that also runs pool layers).
    ``keep_sensitive`` N keeps, besides, the N layers whose N-bit quantisation alone costs the
    most output fidelity on the calibration data at 8 bits (mixed precision; clamped to the
    layers there are). ``rounding=gptq`` rounds each layer's weights to minimise its output error
    on the calibration data (error-compensated, GPTQ) rather than to nearest: the same grid,
    the same hardware."""

    name = "quantize-weights"
    bits: int = 0
    keep_edges: bool = True
    keep_sensitive: int = 0
    rounding: str = "nearest"

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"bits": (4, 8), "keep_sensitive": (0, 1, 2, 4), "rounding": ROUNDINGS}

    def validate(self) -> None:
        self.check_choice("bits", (0, *WEIGHT_BITS))
        self.check_range("keep_sensitive", 0)
        self.check_choice("rounding", ROUNDINGS)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        hw = ctx.target if int_weight_bits(ctx.target) else None
        bits = from_target(self.name, "bits", self.bits, hw, "weight_bits", EDGE_BITS)
        if bits not in WEIGHT_BITS:
            raise OptionError(
                f"quantize-weights: target {hw.name} has weight_bits={bits}, but N-bit layers "
                f"take {', '.join(map(str, WEIGHT_BITS))} bits; --set weight_bits=4 (or 8)"
            )
        layers = float_cim_layers(graph)
        edges = {layers[0].name, layers[-1].name} if self.keep_edges and layers else set()
        inner = [n for n in layers if n.name not in edges]
        alone = str(replace(self, keep_sensitive=0))
        sensitive = most_sensitive(graph, ctx, alone, inner, self.keep_sensitive)
        hessians = self._hessians(graph, ctx, layers)
        for node in layers:
            high = node.name in edges or node.name in sensitive
            new = to_quant_mvm(graph, node, EDGE_BITS if high else bits, hessians.get(node.name))
            if node.name in sensitive:
                mark_sensitive(new)
        graph.prune_unused()
        return PassResult(changed=bool(layers), summary=f"{len(layers)} layers quantised")

    def _hessians(self, graph: Graph, ctx: PassContext, layers: list) -> dict[str, np.ndarray]:
        """H[group, K, K] per layer for GPTQ rounding: the input second moments on the
        calibration data (one slot spanning the whole row), tied across the steps of a
        recurrent weight so they round alike and share their arrays."""
        if self.rounding == "nearest" or not layers:
            return {}
        if not ctx.calibration:
            raise OptionError(
                "quantize-weights: rounding=gptq minimises each layer's output error on "
                "calibration data, but none was given; compile with calibration (cimc.compile "
                "does by default) or use rounding=nearest"
            )
        seen = _calibration_rows(graph, layers, len(ctx.calibration))
        wanted = [n for n in layers if seen[n.name] >= weight_matrix(n, graph).shape[1]]
        attrs = {n.name: unfold_attrs(n, graph) for n in wanted}
        moments = tie_moments(graph, slot_moments(graph, ctx.calibration, attrs, None))
        return {name: c[:, 0] for name, c in moments.items()}


def _calibration_rows(graph: Graph, layers: list[Node], feeds: int) -> dict[str, int]:
    """Rows of input each layer's weight sees over the calibration feeds (summed over the
    layers that share one recurrent weight). A layer that sees fewer rows than its row length
    cannot have determined moments (:func:`cimc.compress.quantize.determined`), so it rounds
    to nearest without gathering them: the late layers of a CNN calibrated on a few images."""
    per_layer = {}
    for node in layers:
        shape = graph.values[node.outputs[0]].shape
        spatial = shape[:1] + shape[2:] if node.op == "Conv" else shape[:-1]
        per_layer[node.name] = int(np.prod(spatial, dtype=np.int64)) * feeds
    out = {}
    for names in weight_groups(graph, per_layer).values():
        out.update(dict.fromkeys(names, sum(per_layer[n] for n in names)))
    return out
