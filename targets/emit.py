"""The instructions of a layer under a mapping: the one place a tile's work becomes cycles.

``lower`` emits every layer with :func:`emit_cim_layer` / :func:`emit_vector_layer`; ``tile``
judges each candidate mapping by emitting the layer with the same function after the layers
before it and timing it with the simulator's kernel (:class:`TimedStream`), so the cycles a
mapping is chosen by are the cycles the simulator reports for that layer.

Copy r of tile t of a layer lives on array (first + t * rep + r) mod N, so the copies of one tile
are neighbours (one multicast LOAD_W) and one copy's tiles share an input multicast (LOAD_X with
stride rep). Rows are issued in blocks of ``ROW_BLOCK``. Weight loads (DRAM targets) are
double-buffered: a load waits only for the MVMs that used the buffer it overwrites.

Layers that hold the same weights (``cimc.weight_sharing``: the steps of a recurrent layer) sit
on the same arrays. On chip (``weights = "sram"``) no layer loads weights: they are resident.
From DRAM, each array's ``MA_mem_size`` bytes hold the tiles loaded into it, least recently used
evicted first (the capacity ``weight_waves`` counts tiles against), so a small recurrent weight
stays beside other weights while they fit. A later layer of a share group that fits in one wave
loads only those of its tiles that are no longer on their arrays; a layer in several waves
overwrites its own tiles and loads all of them.

A vector layer occupies the vector unit for its real work (``cimc.ops.vector_work``): element
operations at ``vector_width`` per cycle, MACs at ``vector_macs_per_cycle``. With ``attention =
"cim"`` an activation x activation MatMul runs on the arrays instead: its second operand is
written into them (LOAD_A, through the links and the write port) and the first streamed through
as a CiM layer whose weights are that operand at ``act_bits`` bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cimc.ir import Graph, Node
from cimc.ops import vector_work
from cimc.program import OP

from .macros import LayerWork, TileGeometry, macro_kind
from .params import Target
from .timing import (
    FIELDS,
    UNIT_KINDS,
    TimingState,
    as_instructions,
    busiest_per_kind,
    unit_kind_index,
)

F = FIELDS
Key = tuple[int, int]  # a tile of a share group's weights: (share group, tile index)

PSUM_BYTES = 4  # a 32-bit partial sum
ROW_BLOCK = 256  # input rows per instruction: the unit of pipelining and of weight reloads


class Emitter:
    """Appends instructions (in NumPy chunks) and remembers, per array, the last MVM that used
    each of its two weight buffers (for double-buffered weight loads) and which tiles its memory
    holds: ``(share group, tile)`` keys (the share group is the layer index of its first layer)
    with their bytes."""

    def __init__(self, target: Target):
        self.target = target
        self.chunks: list[np.ndarray] = []
        self.count = 0
        self.buffers = np.full((target.num_arrays, 2), -1, np.int64)
        # per array: (bytes held, {tile: bytes} least recently used first); never changed in
        # place, so a fork shares them
        self.held: list[tuple[int, dict[Key, int]]] = [(0, {})] * target.num_arrays

    def emit(
        self,
        op: str,
        layer: int,
        ma=-1,
        span=0,
        stride=1,
        rows=0,
        nbytes=0,
        work=0,
        cycles=0,
        routes=0,
        dep0=-1,
        dep1=-1,
    ) -> int:
        n = self.target.num_arrays
        row = (OP[op], layer, ma % n if ma >= 0 else -1, span, stride, rows, nbytes, work)
        return self.emit_columns(np.array([[*row, cycles, routes, dep0, dep1]], np.int64).T)

    def emit_columns(self, cols: np.ndarray) -> int:
        """Append instructions given as int64 columns [field, instruction] (``FIELDS`` order);
        returns the index of the first."""
        first = self.count
        self.chunks.append(cols)
        self.count += cols.shape[1]
        return first

    def load_weights(self, layer: int, ma: int, span: int, nbytes: int, tile: Key) -> int:
        """Load ``tile`` (``nbytes`` per copy) into ``span`` arrays from ``ma``."""
        arrays = (ma + np.arange(span)) % self.target.num_arrays
        wait = int(self.buffers[arrays, 0].max(initial=-1))
        idx = self.emit("LOAD_W", layer, ma, span, 1, 0, nbytes, 0, 0, 0, wait)
        self.buffers[arrays, 0] = self.buffers[arrays, 1]
        self.buffers[arrays, 1] = -1
        for a in arrays:
            self.store(int(a), tile, nbytes)
        return idx

    def holds(self, ma: int, span: int, tile: Key) -> bool:
        """Whether the ``span`` arrays from ``ma`` all still hold ``tile``."""
        n = self.target.num_arrays
        return all(tile in self.held[(ma + i) % n][1] for i in range(span))

    def store(self, array: int, tile: Key, nbytes: int) -> None:
        """``tile`` is now the most recently used on ``array``; the least recently used tiles
        make room for it (a tile larger than the array evicts them all)."""
        total, tiles = self.held[array]
        tiles = dict(tiles)
        total -= tiles.pop(tile, 0)
        while tiles and total + nbytes > self.target.MA_mem_size:
            total -= tiles.pop(next(iter(tiles)))
        tiles[tile] = nbytes
        self.held[array] = (total + nbytes, tiles)

    def used(self, arrays: np.ndarray, mvms: np.ndarray) -> None:
        """The MVMs ``mvms`` read the current weight buffer of ``arrays``."""
        np.maximum.at(self.buffers[:, 1], arrays, mvms)

    def columns(self, since: int = 0) -> np.ndarray:
        """The instructions from chunk ``since`` on, as int64 columns."""
        chunks = self.chunks[since:]
        return np.concatenate(chunks, axis=1) if chunks else np.zeros((len(FIELDS), 0), np.int64)

    def array(self) -> np.ndarray:
        """The instruction table."""
        return as_instructions(self.columns())

    def fork(self) -> Emitter:
        """An independent copy to try a candidate on (chunks are never modified in place)."""
        twin = Emitter(self.target)
        twin.chunks = list(self.chunks)
        twin.count = self.count
        twin.buffers = self.buffers.copy()
        twin.held = list(self.held)
        return twin


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


def weight_waves(tiling: Tiling, target: Target) -> int:
    """Weight loads that do not fit on the arrays at once (1 when weights stay on chip)."""
    if target.weights == "sram":
        return 1
    per_ma = max(1, target.MA_mem_size // max(tiling.tile_bytes, 1))
    return max(1, math.ceil(tiling.tiles * tiling.rep / (target.num_arrays * per_ma)))


def vector_cycles(elements: int, target: Target) -> int:
    return max(1, math.ceil(elements / target.vector_width))


def emit_cim_layer(
    em: Emitter,
    work: LayerWork,
    geo: TileGeometry,
    tiling: Tiling,
    first: int,
    li: int,
    ready: int,
    written: np.ndarray | None = None,
    weights: int = -1,
) -> None:
    """Append the layer's loads, MVMs, partial sums and its SCALE; ``ready`` is the instruction
    its inputs wait for (-1: none); ``written`` maps each tile to the instruction that wrote its
    weights (an operand written at run time: no weight loads, one wave). ``weights`` is the
    layer index of the first layer of its share group (-1: ``li``, its own weights)."""
    t = em.target
    n = t.num_arrays
    tiles, rep = tiling.tiles, tiling.rep
    rows_per_copy = math.ceil(work.rows / rep)
    row_bytes = work.k * work.groups * t.act_bits // 8 or 1
    pool = geo.opcode == "MVM_POOL"
    waves = weight_waves(tiling, t) if written is None else 1
    weights = li if weights < 0 else weights
    stream = t.weights == "dram" and written is None
    # tiles an earlier layer of its share group left need no load (a group's first layer finds
    # none: its tiles are on no array before it loads them)
    reuse = stream and waves == 1 and weights != li
    per_wave = math.ceil(tiles / waves)
    blocks = [
        (r, s, min(s + ROW_BLOCK, min((r + 1) * rows_per_copy, work.rows)))
        for r in range(rep)
        for s in range(r * rows_per_copy, min((r + 1) * rows_per_copy, work.rows), ROW_BLOCK)
    ]

    mvm_op, psum_op = OP[geo.opcode], OP["PSUM"]
    routes = tiling.chan_per_tile if pool else 0
    psum_bytes = tiling.chan_per_tile * PSUM_BYTES

    def loads(w: int) -> np.ndarray:
        wave = range(w * per_wave, min((w + 1) * per_wave, tiles))
        held = {tt for tt in wave if reuse and em.holds(first + tt * rep, rep, (weights, tt))}
        for tt in sorted(held):  # used again, so the loads below evict other tiles first
            for r in range(rep):
                em.store((first + tt * rep + r) % n, (weights, tt), tiling.tile_bytes)
        loaded = np.full(tiles, -1, np.int64)
        for tt in wave:
            if tt not in held:
                key = (weights, tt)
                loaded[tt] = em.load_weights(li, first + tt * rep, rep, tiling.tile_bytes, key)
        return loaded

    def compute(w: int, r: int, start: int, stop: int, loaded: np.ndarray | None) -> None:
        b = stop - start
        wave_tiles = np.arange(w * per_wave, min((w + 1) * per_wave, tiles))
        x = em.emit(
            "LOAD_X",
            li,
            first + int(wave_tiles[0]) * rep + r,
            min(len(wave_tiles), n),
            rep,
            b,
            b * geo.slice_bytes,
            b * row_bytes,
            0,
            0,
            ready,
        )
        # per tile: its MVM, then its partial sums (which wait for the MVM)
        arrays = (first + wave_tiles * rep + r) % n
        mvms = x + 1 + 2 * np.arange(len(wave_tiles))
        block = np.zeros((len(FIELDS), 2 * len(wave_tiles)), np.int64)
        mvm, psum = block[:, 0::2], block[:, 1::2]
        for part, op in ((mvm, mvm_op), (psum, psum_op)):
            part[F["op"]], part[F["layer"]], part[F["ma"]] = op, li, arrays
            part[F["span"]], part[F["stride"]], part[F["rows"]] = 1, 1, b
        mvm[F["work"]] = b * geo.bitops_per_row * t.act_bits  # 1b x 1b MACs: every bit plane
        mvm[F["cycles"]] = b * tiling.per_row_cycles
        mvm[F["routes"]] = b * routes
        mvm[F["dep0"]] = x
        mvm[F["dep1"]] = -1 if loaded is None else loaded[wave_tiles]
        psum[F["bytes"]], psum[F["dep0"]], psum[F["dep1"]] = b * psum_bytes, mvms, -1
        em.emit_columns(block)
        em.used(arrays, mvms)

    if tiling.order == "weights-outer" or waves == 1:
        for w in range(waves):
            loaded = loads(w) if stream else written
            for r, start, stop in blocks:
                compute(w, r, start, stop, loaded)
    else:
        for r, start, stop in blocks:
            for w in range(waves):
                compute(w, r, start, stop, loads(w))
    out = work.rows * work.out
    act_bytes = math.ceil(t.act_bits / 8)
    traffic = out * (PSUM_BYTES + act_bytes)  # reads the accumulators, writes the activations
    em.emit("SCALE", li, rows=work.rows, nbytes=traffic, work=out, cycles=vector_cycles(out, t))


def emit_vector_layer(em: Emitter, graph: Graph, node: Node, li: int) -> None:
    """A non-MVM op: one VEC instruction occupying the vector unit for its real work (``work`` =
    element operations + MACs); it reads its inputs and writes its outputs through the buffer.
    An activation x activation MatMul goes to the arrays when the target says ``attention =
    "cim"``."""
    t = em.target
    if t.attention == "cim" and is_activation_matmul(graph, node):
        emit_matmul_on_cim(em, graph, node, li)
        return
    out = sum(graph.values[o].size for o in node.outputs if o)
    read = sum(graph.values[i].size for i in node.inputs if i and not graph.values[i].is_constant)
    traffic = (read + out) * math.ceil(t.act_bits / 8)
    w = vector_work(node, graph)
    cycles = math.ceil(w.elem_ops / t.vector_width) + math.ceil(w.macs / t.vector_macs_per_cycle)
    em.emit("VEC", li, rows=0, nbytes=traffic, work=w.elem_ops + w.macs, cycles=max(1, cycles))


def is_activation_matmul(graph: Graph, node: Node) -> bool:
    """A MatMul of two activations (attention's QK^T and AV): no operand is a constant."""
    return node.op == "MatMul" and not any(graph.values[i].is_constant for i in node.inputs)


def matmul_as_layer(graph: Graph, node: Node, bits: int) -> LayerWork:
    """A[..., M, K] @ B[..., K, N] as a grouped CiM layer: one group per matrix of the batch,
    M input rows of K, B's N columns the output channels, stored at ``bits`` bits."""
    a, b = (graph.values[i].shape for i in node.inputs)
    m = a[-2] if len(a) > 1 else 1
    n = b[-1] if len(b) > 1 else 1
    batch = graph.values[node.outputs[0]].size // (m * n)
    return LayerWork(
        rows=m,
        k=a[-1],
        out=n * batch,
        groups=batch,
        scheme="int",
        weight_bits=bits,
        error_rows=0,
        route_cycles=0,
        has_error=False,
    )


def emit_matmul_on_cim(em: Emitter, graph: Graph, node: Node, li: int, first: int = 0) -> None:
    """Write B into the arrays (one LOAD_A per tile: buffer -> L2 -> L1 -> write port), then run
    A through them as a CiM layer whose MVMs wait for their tile's write. Tile ``tt`` sits on
    array ``first + tt`` (mod the array count); its cells are assumed free (the tile pass does
    not reserve them)."""
    t = em.target
    work = matmul_as_layer(graph, node, t.act_bits)
    geo = macro_kind(t).geometry(work, t)
    tiling = Tiling(
        tiles=geo.tiles,
        tile_bytes=geo.tile_bytes,
        k_tiles=geo.k_tiles,
        chan_per_tile=geo.chan_per_tile,
        per_row_cycles=geo.per_row_cycles,
        rep=1,
        order="rows-outer",
    )
    ready = em.count - 1
    written = np.array(
        [
            em.emit("LOAD_A", li, first + tt, 1, 1, 0, geo.tile_bytes, dep0=ready)
            for tt in range(geo.tiles)
        ],
        np.int64,
    )
    emit_cim_layer(em, work, geo, tiling, first, li, ready, written)


# LayerMapping's modelled_* fields and the unit kinds they report
_MAPPING_KINDS = {
    "compute": "array",
    "l1": "l1_link",
    "l2": "l2_link",
    "dram": "dram",
    "ma_write": "array_write",
}


class TimedStream:
    """An instruction stream timed as it grows: ``try_layer`` emits a layer on a copy and times
    it after everything committed so far (exactly as the simulator will), ``commit`` keeps it.
    ``tile`` chooses each layer's mapping this way, so its cycles are the simulator's."""

    def __init__(self, target: Target):
        self.target = target
        self.em = Emitter(target)
        self.cols = np.zeros((len(FIELDS), 0), np.int64)
        self.chunks = 0  # chunks of ``em`` already in ``cols``
        self.state = TimingState.fresh(target, 0)
        self.kinds = unit_kind_index(target)

    def try_layer(self, emit: Callable[[Emitter], None]) -> _Trial:
        em = self.em.fork()
        emit(em)
        new = em.columns(self.chunks)
        cols = np.concatenate([self.cols, new], axis=1)
        state = self.state.extended(new.shape[1])
        state.run(cols, self.target, self.cols.shape[1])
        busiest = dict(zip(UNIT_KINDS, busiest_per_kind(state.busy - self.state.busy, self.kinds)))
        per_kind = {mine: int(busiest[kind]) for mine, kind in _MAPPING_KINDS.items()}
        return _Trial(em, cols, state, state.horizon - self.state.horizon, per_kind)

    def commit(self, trial: _Trial) -> None:
        self.em, self.cols, self.state = trial.em, trial.cols, trial.state
        self.chunks = len(trial.em.chunks)


@dataclass(frozen=True)
class _Trial:
    em: Emitter
    cols: np.ndarray
    state: TimingState
    cycles: int
    per_kind: dict[str, int]
