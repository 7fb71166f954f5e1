"""error-prune: keep a fraction of the error bits, in CIMPool's structured pattern.

For each group of ``group`` consecutive output channels and each vector slot g, the same
``keep * V`` positions are kept (chosen in runs of ``chunk`` rows, by largest summed |residual|
over the group, weighted by input energy when calibration data is given). The error array then
needs only keep * V rows per slot, and a mask of V / chunk bits per (group, slot) tells the mask
multiplexer which inputs to route. beta is refitted on the kept bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.cim_ops import POOL_OP
from cimc.errors import OptionError
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass

from .error_term import layer_moments, least_squares_beta, residual, set_error

KEEP_CHOICES = (1.0, 0.5, 0.25)


def structured_mask(score: np.ndarray, keep: float, group: int, run: int) -> np.ndarray:
    """mask[n_groups, G, V] keeping the best keep*V/run runs of each (group, slot)."""
    o, g, v = score.shape
    n_groups = -(-o // group)
    per_group = np.zeros((n_groups, g, v))
    for gr in range(n_groups):
        per_group[gr] = score[gr * group : (gr + 1) * group].sum(axis=0)
    runs = per_group.reshape(n_groups, g, v // run, run).sum(axis=3)
    n_keep = int(round(keep * v / run))
    order = np.argsort(-runs, axis=2, kind="stable")[:, :, :n_keep]
    keep_runs = np.zeros_like(runs, dtype=bool)
    np.put_along_axis(keep_runs, order, True, axis=2)
    return np.repeat(keep_runs, run, axis=2)


def pruned_error(
    r: np.ndarray,
    real: np.ndarray,
    keep: float,
    group: int,
    chunk: int,
    moments: np.ndarray | None = None,
) -> tuple[np.ndarray, float, np.ndarray]:
    """(err[O, G, V] int8, beta, mask[groups, G, V]) for residual R: the signs of R at the kept
    positions, the least-squares beta on them, and the structured mask (also used by
    cimc.train, so fine-tuning prunes exactly as this pass does)."""
    score = np.abs(r)
    if moments is not None:
        energy = np.sqrt(np.einsum("ngvv->ngv", moments).mean(axis=0))
        score = score * energy[None]
    mask = structured_mask(score, keep, group, chunk)
    per_channel = np.repeat(mask, group, axis=0)[: r.shape[0]] & real[None]
    e = np.where(r >= 0, 1, -1).astype(np.int8) * per_channel.astype(np.int8)
    return e, least_squares_beta(r, e, moments), mask


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
