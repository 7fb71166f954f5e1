"""Choosing a CiM layer's mapping by the simulator's own cycles.

A CiM layer computes Y[M, O] = X[M, K] W[K, O] (per conv group), cut into tiles each held by one
memory array (MA); the tile's geometry is the target's macro kind's rule (``targets.macros``).
The candidates are the replication factors that fit in the arrays (copies split the rows) and
both loop orders (inputs multicast once, or weight waves outer; the order only matters when
weights stream from DRAM). Each is emitted after the layers already placed and timed by the
simulator's kernel (``targets.emit.TimedStream``); the fewest cycles wins.
"""

from __future__ import annotations

import dataclasses

from .emit import Tiling, TimedStream, emit_cim_layer
from .macros import LayerWork, TileGeometry, macro_kind
from .params import Target


def base_tiling(work: LayerWork, target: Target) -> tuple[TileGeometry, Tiling]:
    """The layer's tile geometry and its one-copy mapping (what every layer must fit)."""
    geo = macro_kind(target).geometry(work, target)
    tiling = Tiling(
        geo.tiles,
        geo.tile_bytes,
        geo.k_tiles,
        geo.chan_per_tile,
        geo.per_row_cycles,
        1,
        "rows-outer",
    )
    return geo, tiling


def candidates(base: Tiling, work: LayerWork, target: Target) -> list[Tiling]:
    """Legal mappings: replication factors up to the number of free arrays, and both loop
    orders where weights stream (on chip there are no weight waves, so the order is moot)."""
    orders = ("rows-outer", "weights-outer") if target.weights == "dram" else ("rows-outer",)
    out = []
    rep = 1
    while rep == 1 or (base.tiles * rep <= target.num_arrays and rep <= work.rows):
        out.extend(dataclasses.replace(base, rep=rep, order=order) for order in orders)
        rep *= 2
    return out


def best_tiling(
    stream: TimedStream,
    work: LayerWork,
    geo: TileGeometry,
    options: list[Tiling],
    first: int,
    layer: int,
    weights: int = -1,
):
    """The option with the fewest cycles after the stream so far (ties: fewer copies, then
    rows-outer) and its trial, ready to commit; ``weights`` as in ``emit_cim_layer``."""
    best = None
    for t in options:
        trial = stream.try_layer(
            lambda em, t=t: emit_cim_layer(
                em, work, geo, t, first, layer, em.count - 1, weights=weights
            )
        )
        key = (trial.cycles, t.rep, t.order != "rows-outer")
        if best is None or key < best[0]:
            best = (key, t, trial)
    return best[1], best[2]
