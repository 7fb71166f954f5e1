"""error-term: add CIMPool's 1-bit error term with a per-layer scale beta.

For a pool-compressed layer the residual R = W - alpha * P[idx] is approximated by
beta * E with E = sign(R) in {-1, +1}, one bit per weight, held in the second (error) array.
beta is the least-squares scale: the mean |R| over real positions, or, with calibration
data, the value minimising the layer's output error (:mod:`cimc.compress.error_term`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cimc.cim_ops import POOL_OP
from cimc.compress import full_error, layer_moments, residual, set_error
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


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
            e, beta = full_error(r, real, layer_moments(graph, ctx, node))
            set_error(graph, node, e, beta)
            node.meta["compression"] = {**node.meta["compression"], "error_keep": 1.0}
            added += 1
        graph.prune_unused()
        return PassResult(changed=added > 0, summary=f"{added} error terms added")
