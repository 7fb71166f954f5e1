"""Per-layer work, tiling candidates and the analytic cycle model.

A CiM layer computes Y[M, O] = X[M, K] W[K, O] (per conv group). It is cut into tiles, each
held by one memory array (MA):

* CIMPool macro: a tile is (group, vector slot g, block of ``error_cols`` output channels). Per
  input row it runs one bit-serial MVM on the pool array (rows x pool_cols) and, in parallel,
  on the error array (kept rows x channels), then the permutation unit routes the pool results
  into the block's accumulators (pipelined with the next MVM).
* int-N macro: a tile is (group, slice of ``rows`` inputs, ``array_cols / N`` channels), N bit
  slices per weight, one bit-serial MVM per input row.

The analytic model (METHODS.md section 3) bounds what the simulator can achieve: per layer the
busiest of compute, the L1 and L2 links, DRAM and the MA write port, plus the fill of the first
load. The ``tile`` pass uses it to choose each layer's mapping; the simulator never beats it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .params import Target

PSUM_BYTES = 4  # a 32-bit partial sum
ROW_BLOCK = 256  # input rows per instruction: the unit of pipelining and of weight reloads


@dataclass(frozen=True)
class LayerWork:
    """Shape of one CiM layer's work, independent of the mapping."""

    rows: int  # M: input rows (batch x output pixels)
    k: int  # inputs per output channel (one conv group)
    out: int  # output channels (all groups)
    groups: int
    scheme: str  # "pool" or "int"
    weight_bits: int  # int layers: bits per weight
    error_rows: int  # pool layers: kept error rows per vector slot (0 = no error term)
    route_cycles: int  # pool layers: permutation cycles per (slot, block), from permute-schedule
    has_error: bool


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


def tile_geometry(work: LayerWork, target: Target) -> tuple[int, int, int, int, int]:
    """(tiles, tile_bytes, k_tiles, channels per tile, cycles per row per tile)."""
    og = work.out // work.groups
    if work.scheme == "pool":
        v, s = target.rows, target.pool_cols
        slots = math.ceil(work.k / v)
        chan = min(target.error_cols, og)
        blocks = math.ceil(og / chan)
        err_rows = work.error_rows if work.has_error else 0
        index_bits = chan * math.ceil(math.log2(s))
        tile_bytes = math.ceil((index_bits + err_rows * chan + (v if err_rows < v else 0)) / 8)
        bitops = v * s + err_rows * chan
        mvm = target.act_bits * math.ceil(bitops / target.MA_comp_per_core)
        route = work.route_cycles or math.ceil(chan / target.perm_lanes)
        per_row = max(mvm, route)
        return work.groups * slots * blocks, tile_bytes, slots, chan, per_row
    rows = target.rows
    chan = max(1, min(target.array_cols // work.weight_bits, og))
    k_tiles = math.ceil(work.k / rows)
    blocks = math.ceil(og / chan)
    tile_bytes = math.ceil(rows * chan * work.weight_bits / 8)
    bitops = rows * chan * work.weight_bits
    mvm = target.act_bits * math.ceil(bitops / target.MA_comp_per_core)
    return work.groups * k_tiles * blocks, tile_bytes, k_tiles, chan, mvm


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
    tiles, tile_bytes, k_tiles, chan, per_row = tile_geometry(work, target)
    out = []
    rep = 1
    while rep == 1 or (tiles * rep <= target.num_arrays and rep <= work.rows):
        for order in ("rows-outer", "weights-outer"):
            out.append(Tiling(tiles, tile_bytes, k_tiles, chan, per_row, rep, order))
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
