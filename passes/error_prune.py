"""error-prune: keep a fraction of the error bits, in CIMPool's structured pattern.

For each group of ``group`` consecutive output channels and each vector slot g, the same
``keep * V`` positions are kept (chosen in runs of ``chunk`` rows, by largest summed |residual|
over the group, weighted by input energy when calibration data is given). The error array then
needs only keep * V rows per slot, and a mask of V / chunk bits per (group, slot) tells the mask
multiplexer which inputs to route. beta is refitted on the kept bits
(:func:`cimc.compress.pruned_error`, which cimc.train shares).
"""

from __future__ import annotations

from dataclasses import dataclass

from cimc.cim_ops import POOL_OP
from cimc.compress import KEEP_CHOICES, layer_moments, pruned_error, residual, set_error
from cimc.errors import OptionError
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class ErrorPrune(Pass):
    """Structurally prune the error term to keep = 1, 1/2 or 1/4 of its bits."""

    name = "error-prune"
    keep: float = 0.5
    group: int = 128
    chunk: int = 8

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"keep": KEEP_CHOICES, "group": (32, 128, 512)}

    def validate(self) -> None:
        self.check_choice("keep", KEEP_CHOICES)
        self.check_range("group", 1)
        self.check_range("chunk", 1)

    def run_layer_checks(self, vector: int) -> None:
        if vector % self.chunk or (vector // self.chunk) * self.keep % 1:
            raise OptionError(
                f"error-prune: chunk={self.chunk} must divide vector={vector} into runs "
                f"that keep={self.keep} splits evenly (e.g. chunk=8 for vector=128)"
            )

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        pruned = 0
        for node in graph.nodes():
            if node.op != POOL_OP or not node.inputs[3]:
                continue
            if node.meta["compression"].get("learned"):
                continue  # fine-tuned with its own mask (cimc.train): left as it is
            vector = node.attrs["vector"]
            self.run_layer_checks(vector)
            r, real = residual(graph, node)
            moments = layer_moments(graph, ctx, node)
            e, beta, mask = pruned_error(r, real, self.keep, self.group, self.chunk, moments)
            set_error(graph, node, e, beta)
            node.meta["compression"] = {
                **node.meta["compression"],
                "error_keep": self.keep,
                "error_group": self.group,
                "error_chunk": self.chunk,
                "error_mask": mask,
            }
            pruned += 1
        graph.prune_unused()
        return PassResult(changed=pruned > 0, summary=f"{pruned} error terms pruned")
