"""weight-pool: replace weight vectors by indices into one shared binary pool (CIMPool).

Each compressed layer's W[O, K] (z-packed, K padded to G*V) is cut into G vectors of length V
per output channel; each becomes alpha * P[idx[o, g]] with P in {-1, +1}^{S x V} shared by the
whole network. Layers left out (by default the first, the last and depthwise convs, as in
Bit-serial Weight Pools, MLSys 2022) are stored as ``others``-bit per-channel integers.
The arithmetic is :mod:`cimc.compress`'s, which ``cimc.train`` shares.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from cimc.targets.agreement import from_target

from cimc.calibration import slot_moments
from cimc.cim_ops import unfold_attrs, weight_matrix
from cimc.compress import (
    INITS,
    RULES,
    SCALES,
    WEIGHT_BITS,
    SlotMoments,
    add_pool,
    assign,
    build_pool,
    install_assignment,
    pack_vectors,
    read_assignment,
    select_layers,
    to_quant_mvm,
    write_pool_layer,
)
from cimc.errors import OptionError
from cimc.ir import Graph, Node
from cimc.passes_base import Pass, PassContext, PassResult, register_pass
from cimc.sensitivity import mark_sensitive, most_sensitive
from cimc.weight_sharing import distinct_weights, tie_moments


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@register_pass
@dataclass(frozen=True)
class WeightPool(Pass):
    """Compress CiM layers to indices into a shared binary pool (CIMPool).

    ``assignment`` names a file written by ``cimc.train`` (fine-tuning): its pool, indices,
    alpha and error terms are installed as they are instead of being computed (see
    :func:`cimc.compress.install_assignment`).

    ``vector`` and ``pool`` are the pool array's rows and columns: 0 takes the target's ``rows``
    and ``pool_cols`` (without a target: zpack's vector, else 128, and 128).

    ``keep_sensitive`` N leaves out, besides, the N layers whose pooling alone costs the most
    output fidelity on the calibration data (ranked by :mod:`cimc.sensitivity` without the error
    term); like the other layers left out they become ``others``-bit integers (mixed precision;
    clamped to the layers there are). With ``assignment`` they are not ranked again: the kept
    layers are the ones the file leaves out (the fine-tuning kept those)."""

    name = "weight-pool"
    vector: int = 0
    pool: int = 0
    init: str = "kmeans"
    assign: str = "non-repeating"
    scale: str = "per-layer"
    seed: int = 0
    skip_first: bool = True
    skip_depthwise: bool = True
    skip_last: bool = True
    others: int = 8
    assignment: str = ""
    keep_sensitive: int = 0

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {
            "vector": (32, 64, 128),
            "pool": (64, 128, 256),
            "init": INITS,
            "assign": RULES,
            "scale": SCALES,
            "keep_sensitive": (0, 1, 2, 4),
        }

    def validate(self) -> None:
        self.check_range("vector", 0, 4096)
        self.check_range("pool", 0, 1024)  # a pool array has at most 1024 columns (pool_cols)
        if self.pool and not _is_power_of_two(self.pool):
            raise OptionError(
                f"weight-pool: option pool={self.pool} must be a power of two (2, 4, ..., 128, "
                "256, ...): an index uses log2(pool) bits and every code must name a pool vector"
            )
        self.check_choice("init", INITS)
        self.check_choice("assign", RULES)
        self.check_choice("scale", SCALES)
        self.check_choice("others", (0, *WEIGHT_BITS))
        self.check_range("keep_sensitive", 0)
        if self.keep_sensitive and not self.others:
            raise OptionError(
                f"weight-pool: keep_sensitive={self.keep_sensitive} keeps layers at others bits, "
                "but others=0 leaves them float; set others=8 (or 4)"
            )
        self._check_hadamard(self.vector, self.pool)  # the target's values are checked in run

    def _check_hadamard(self, vector: int, pool: int) -> None:
        """A Hadamard pool needs a power-of-two vector and pool <= 2 * vector (0: not known yet)."""
        bad_vector = vector and not _is_power_of_two(vector)
        if self.init == "hadamard" and (bad_vector or (vector and pool > 2 * vector)):
            raise OptionError(
                f"weight-pool: init=hadamard needs vector a power of two and pool <= 2*vector "
                f"(got vector={vector}, pool={pool}); use init=kmeans or random"
            )

    def geometry(self, graph: Graph, ctx: PassContext, chosen: list[Node]) -> tuple[int, int]:
        """(vector, pool): the target's rows and pool_cols, which set options must equal."""
        packed = {n.meta["zpack"]["vector"] for n in chosen if "zpack" in n.meta}
        fallback = min(packed) if packed else 128
        vector = from_target(self.name, "vector", self.vector, ctx.target, "rows", fallback)
        pool = from_target(self.name, "pool", self.pool, ctx.target, "pool_cols", 128)
        for n in chosen:
            laid = n.meta.get("zpack", {}).get("vector", vector)
            if laid != vector:
                raise OptionError(
                    f"weight-pool: vector={vector} but zpack laid out layer {n.name!r} with "
                    f"vector={laid}; give both passes the same vector"
                )
        self._check_hadamard(vector, pool)
        if not _is_power_of_two(pool):
            raise OptionError(
                f"weight-pool: pool={pool} (the target's pool_cols) must be a power of two: an "
                "index uses log2(pool) bits and every code must name a pool vector"
            )
        return vector, pool

    def _kept_by_file(self, chosen: list[Node]) -> set[str]:
        """The ``keep_sensitive`` chosen layers whose weight the assignment file does not list:
        fine-tuning kept them at ``others`` bits, so the compiled graph must too."""
        if not self.keep_sensitive:
            return set()
        listed = read_assignment(self.assignment)[1]
        kept = {n.name for n in chosen if n.inputs[1] not in listed}
        if len(kept) != min(self.keep_sensitive, len(chosen)):
            raise OptionError(
                f"weight-pool: keep_sensitive={self.keep_sensitive} but the assignment file "
                f"{self.assignment} leaves {len(kept)} of the {len(chosen)} layers out; give "
                f"keep_sensitive={len(kept)}, the number the model was fine-tuned with"
            )
        return kept

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        chosen, left = select_layers(graph, self.skip_first, self.skip_depthwise, self.skip_last)
        if self.assignment:
            sensitive = self._kept_by_file(chosen)
        else:
            alone = str(replace(self, keep_sensitive=0))
            sensitive = most_sensitive(graph, ctx, alone, chosen, self.keep_sensitive)
        pool_from = chosen  # the pool stays that of keep_sensitive=0: kept layers change alone
        left += [n for n in chosen if n.name in sensitive]
        chosen = [n for n in chosen if n.name not in sensitive]
        vector, pool = self.geometry(graph, ctx, chosen)
        if self.assignment:
            install_assignment(graph, self.assignment, (pool, vector), chosen)
        else:
            self._compress(graph, ctx, chosen, pool_from, (vector, pool))
        if self.others:
            for n in left:
                new = to_quant_mvm(graph, n, self.others)
                if n.name in sensitive:
                    mark_sensitive(new)
        graph.prune_unused()
        how = "installed from the assignment" if self.assignment else "pooled"
        return PassResult(changed=bool(chosen), summary=f"{len(chosen)} layers {how}")

    def _compress(
        self,
        graph: Graph,
        ctx: PassContext,
        chosen: list[Node],
        pool_from: list[Node],
        geometry: tuple[int, int],
    ) -> None:
        """Build the pool from the ``pool_from`` layers (a weight the steps of a recurrent layer
        share counted once) and assign every chosen layer's vectors to it; ``geometry``:
        (vector, pool size)."""
        vector, size = geometry
        weights = {n.name: weight_matrix(n, graph).astype(np.float64) for n in pool_from}
        vecs = {name: pack_vectors(w, vector) for name, w in weights.items()}
        moments = None
        if ctx.calibration:
            attrs = {n.name: unfold_attrs(n, graph) for n in chosen}
            moments = tie_moments(graph, slot_moments(graph, ctx.calibration, attrs, vector))
            ctx.slot_moments = SlotMoments(moments)
        distinct = distinct_weights(graph, weights)
        pool = build_pool(distinct, size, vector, self.init, self.seed, vecs)
        pool_value = add_pool(graph, pool)
        for n in chosen:
            w = weights[n.name]
            idx, alpha = assign(
                vecs[n.name],
                pool,
                w.shape[1],
                self.assign,
                self.scale == "per-channel",
                None if moments is None else moments[n.name],
            )
            write_pool_layer(
                graph,
                n,
                w,
                pool_value,
                vector,
                (idx, alpha, None, None),
                pool_size=size,
                assign=self.assign,
                scale=self.scale,
                calibrated=moments is not None,
            )
