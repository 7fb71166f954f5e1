"""quantize-weights: the conventional N-bit CiM baseline (per-channel symmetric weights)."""

from __future__ import annotations

from dataclasses import dataclass

from cimc.cim_ops import float_cim_layers
from cimc.compress import WEIGHT_BITS, to_quant_mvm
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class QuantizeWeights(Pass):
    """Store every CiM layer's weights as N-bit per-channel symmetric integers. With
    ``keep_edges`` the first and last layers stay at 8 bits, the same policy weight-pool uses,
    so baselines and CIMPool are compared on equal terms."""

    name = "quantize-weights"
    bits: int = 8
    keep_edges: bool = True

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"bits": (4, 8)}

    def validate(self) -> None:
        self.check_choice("bits", WEIGHT_BITS)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        layers = float_cim_layers(graph)
        for i, node in enumerate(layers):
            edge = i in (0, len(layers) - 1)
            to_quant_mvm(graph, node, 8 if self.keep_edges and edge else self.bits)
        graph.prune_unused()
        return PassResult(changed=bool(layers), summary=f"{len(layers)} layers quantised")
