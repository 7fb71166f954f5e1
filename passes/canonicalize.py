"""canonicalize: fold constant and shape sub-graphs, drop identities and unused values."""

from __future__ import annotations

from dataclasses import dataclass

from cimc.frontend import fold_constants, remove_pass_through
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """The importer's clean-up, as a pass: re-run it after passes that leave constants behind."""

    name = "canonicalize"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        before = graph.to_text()
        folded = fold_constants(graph)
        remove_pass_through(graph)
        graph.prune_unused()
        return PassResult(changed=graph.to_text() != before, summary=f"{folded} folded")
