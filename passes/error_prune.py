"""error-prune: keep a fraction of the error bits, in CIMPool's structured pattern.

For each group of ``group`` consecutive output channels and each vector slot g, the same
``keep * V`` positions are kept (chosen in runs of ``chunk`` rows, by largest summed |residual|
over the group, weighted by input energy when calibration data is given). The error array then
needs only keep * V rows per slot, and a mask of V / chunk bits per (group, slot) tells the mask
multiplexer which inputs to route. beta is refitted on the kept bits
(:func:`cimc.compress.pruned_error`, which cimc.train shares).

``keep`` and ``group`` are the error array's: 0 takes the target's ``error_rows / rows`` and
``error_cols`` (0.5 and 128 without a target). A set ``keep`` must equal the target's; a set
``group`` must be a multiple of ``error_cols``, since the channels of one error-array MVM share
one mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from cimc.targets.agreement import error_keep

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
    keep: float = 0.0
    group: int = 0
    chunk: int = 8

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"keep": KEEP_CHOICES, "group": (32, 128, 512)}

    def validate(self) -> None:
        self.check_choice("keep", (0.0, *KEEP_CHOICES))
        self.check_range("group", 0)
        self.check_range("chunk", 1)

    def run_layer_checks(self, vector: int, keep: float) -> None:
        if vector % self.chunk or (vector // self.chunk) * keep % 1:
            raise OptionError(
                f"error-prune: chunk={self.chunk} must divide vector={vector} into runs "
                f"that keep={keep:g} splits evenly (e.g. chunk=8 for vector=128)"
            )

    def error_array(self, target) -> tuple[float, int]:
        """(keep, group) the target's error array sets; set options must agree with it."""
        if target is None:
            return self.keep or 0.5, self.group or 128
        keep, rows = error_keep(target), target.rows
        have = f"target {target.name} has error_rows={target.error_rows} of rows={rows}"
        if keep not in KEEP_CHOICES:
            choices = ", ".join(str(round(k * rows)) for k in KEEP_CHOICES)
            raise OptionError(
                f"{have}: its error array holds {keep:g} of each vector, but error-prune keeps "
                f"1, 1/2 or 1/4; --set error_rows to one of {choices}"
            )
        if self.keep and self.keep != keep:
            raise OptionError(
                f"error-prune{{keep={self.keep:g}}} but {have} (keep={keep:g}); "
                f"--set error_rows={round(self.keep * rows)} or drop the option"
            )
        group = self.group or target.error_cols
        if group % target.error_cols:
            raise OptionError(
                f"error-prune{{group={group}}} but target {target.name} has "
                f"error_cols={target.error_cols}: the channels of one error-array MVM share one "
                f"mask, so group must be a multiple of {target.error_cols}; "
                f"--set error_cols={group} or drop the option"
            )
        return keep, group

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        keep, group = self.error_array(ctx.target)
        pruned = 0
        for node in graph.nodes():
            if node.op != POOL_OP or not node.inputs[3]:
                continue
            if node.meta["compression"].get("learned"):
                continue  # fine-tuned with its own mask (cimc.train): left as it is
            vector = node.attrs["vector"]
            self.run_layer_checks(vector, keep)
            r, real = residual(graph, node)
            moments = layer_moments(graph, ctx, node)
            e, beta, mask = pruned_error(r, real, keep, group, self.chunk, moments)
            set_error(graph, node, e, beta)
            node.meta["compression"] = {
                **node.meta["compression"],
                "error_keep": keep,
                "error_group": group,
                "error_chunk": self.chunk,
                "error_mask": mask,
            }
            pruned += 1
        graph.prune_unused()
        return PassResult(changed=pruned > 0, summary=f"{pruned} error terms pruned")
