"""Tiling candidates and the analytic cycle model of one CiM layer.

A CiM layer computes Y[M, O] = X[M, K] W[K, O] (per conv group), cut into tiles each held by one
memory array (MA); the tile's geometry is the target's macro kind's rule (``targets.macros``).

The analytic model (METHODS.md section 3) bounds what the simulator can achieve: per layer the
busiest of compute, the L1 and L2 links, DRAM and the MA write port, plus the fill of the first
load. The ``tile`` pass uses it to choose each layer's mapping.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .macros import LayerWork, macro_kind
from .params import Target

PSUM_BYTES = 4  # a 32-bit partial sum
ROW_BLOCK = 256  # input rows per instruction: the unit of pipelining and of weight reloads


@dataclass(frozen=True)
class Tiling:
    """How a layer's tiles are laid out; ``rep`` copies split the rows between them."""

    tiles: int  # tiles of one copy
    tile_bytes: int  # weight bytes of one tile
    k_tiles: int  # tiles along K that share the same outputs (partial sums to reduce)
    chan_per_tile: int
    per_row_cycles: int  # cycles one tile spends per input row
    rep: int
    order: str  # "rows-outer" (inputs multicast once) or "weights-outer" (weight waves)


def base_tiling(work: LayerWork, target: Target) -> Tiling:
    """One copy of the layer, inputs multicast once: the mapping every layer must fit."""
    geo = macro_kind(target).geometry(work, target)
    return Tiling(
        geo.tiles,
        geo.tile_bytes,
        geo.k_tiles,
        geo.chan_per_tile,
        geo.per_row_cycles,
        1,
        "rows-outer",
    )


@dataclass(frozen=True)
class LayerCost:
    cycles: int
    compute: int
    l1: int
    l2: int
    dram: int
    ma_write: int
    waves: int


def layer_cost(work: LayerWork, tiling: Tiling, target: Target) -> LayerCost:
    """Modelled cycles of one layer under ``tiling`` (max of the unit loads + first fill)."""
    n_ma = target.num_arrays
    copies = tiling.tiles * tiling.rep
    stationary = target.weights == "sram"
    capacity_tiles = max(1, n_ma * max(1, target.MA_mem_size // max(tiling.tile_bytes, 1)))
    waves = 1 if stationary else max(1, math.ceil(copies / capacity_tiles))
    rows_per_copy = math.ceil(work.rows / tiling.rep)
    tiles_per_ma = math.ceil(copies / n_ma)
    compute = tiles_per_ma * rows_per_copy * tiling.per_row_cycles
    in_bytes_row = work.k * work.groups * target.act_bits / 8
    resend = waves if tiling.order == "weights-outer" else 1
    # Each MA receives the input slice of its tiles; decoders multicast, so an L1 link carries
    # the inputs of all tiles on its MA, and an L2 link what its L1 decoder's MAs need.
    slice_bytes = min(in_bytes_row, target.rows * target.act_bits / 8) * rows_per_copy
    l1 = math.ceil(tiles_per_ma * slice_bytes * resend / target.L1_bw)
    per_l1 = min(copies, target.MA_num_child) * slice_bytes
    l2 = math.ceil(min(per_l1, in_bytes_row * rows_per_copy) * resend / target.L2_bw)
    # every tile sends its partial sums to the buffer (the reduction across K tiles)
    psum = work.rows * work.out * PSUM_BYTES * tiling.k_tiles
    l1 += math.ceil(psum / (target.L1_bw * n_ma))
    # DRAM reads each tile once per wave; decoders multicast it to the copies.
    weight_bytes = tiling.tiles * tiling.tile_bytes
    reloads = (
        1 if waves == 1 or tiling.order == "weights-outer" else math.ceil(rows_per_copy / ROW_BLOCK)
    )
    dram = 0 if stationary else math.ceil(weight_bytes * reloads / target.DRAM_bw)
    ma_write = 0 if stationary else math.ceil(tiles_per_ma * tiling.tile_bytes / target.MA_bw)
    fill = 0 if stationary else math.ceil(tiling.tile_bytes / min(target.DRAM_bw, target.MA_bw))
    busiest = max(compute, l1, l2, dram, ma_write)
    return LayerCost(busiest + fill, compute, l1, l2, dram, ma_write, waves)


def candidates(work: LayerWork, target: Target) -> list[Tiling]:
    """Legal mappings: replication factors up to the number of free arrays, both loop orders."""
    base = base_tiling(work, target)
    out = []
    rep = 1
    while rep == 1 or (base.tiles * rep <= target.num_arrays and rep <= work.rows):
        for order in ("rows-outer", "weights-outer"):
            out.append(dataclasses.replace(base, rep=rep, order=order))
        rep *= 2
    return out


def best_tiling(work: LayerWork, target: Target, max_rep_bytes: int | None = None) -> Tiling:
    """The candidate with the fewest modelled cycles (ties: less storage, then rows-outer)."""
    best = None
    for t in candidates(work, target):
        if (
            max_rep_bytes is not None
            and t.rep > 1
            and t.tiles * t.rep * t.tile_bytes > max_rep_bytes
        ):
            continue
        key = (layer_cost(work, t, target).cycles, t.rep, t.order != "rows-outer")
        if best is None or key < best[0]:
            best = (key, t)
    return best[1]


def vector_cycles(elements: int, target: Target) -> int:
    return max(1, math.ceil(elements / target.vector_width))
