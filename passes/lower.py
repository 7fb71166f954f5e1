"""lower: emit the instruction stream of a tiled graph as a ``cimc.Program``.

Copy r of tile t of a layer lives on array (first + t * rep + r) mod N, so the copies of one
tile are neighbours (one multicast LOAD_W) and one copy's tiles share an input multicast
(LOAD_X with stride rep). Rows are issued in blocks of ``ROW_BLOCK``. Weight loads (DRAM
targets) are double-buffered: a load waits only for the MVMs that used the buffer it overwrites.
The Program is the pass's product (``PassResult.product``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from cimc.targets.cost import PSUM_BYTES, ROW_BLOCK, vector_cycles
from cimc.targets.macros import macro_kind
from cimc.targets.mapping import LayerMapping, check_lowerable, layer_work
from cimc.targets.params import Target

from cimc.cim_ops import CIM_OPS
from cimc.ir import Graph, Node
from cimc.passes_base import Pass, PassContext, PassResult, register_pass
from cimc.program import FORMAT_VERSION, INSTR_DTYPE, OP, Program


class _Emitter:
    """Appends instructions and remembers, per array, the MVMs using each weight buffer."""

    def __init__(self, target: Target):
        self.target = target
        self.rows: list[tuple] = []
        self.buffers: dict[int, list[int]] = {}  # MA -> last MVM of the two most recent loads
        self.last_load: dict[int, int] = {}

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
        self.rows.append(
            (
                OP[op],
                layer,
                ma % n if ma >= 0 else -1,
                span,
                stride,
                rows,
                nbytes,
                work,
                cycles,
                routes,
                dep0,
                dep1,
            )
        )
        return len(self.rows) - 1

    def load_weights(self, layer: int, ma: int, span: int, nbytes: int) -> int:
        arrays = [(ma + i) % self.target.num_arrays for i in range(span)]
        wait = max((self.buffers.get(m, [-1, -1])[0] for m in arrays), default=-1)
        idx = self.emit("LOAD_W", layer, ma, span, 1, 0, nbytes, 0, 0, 0, wait)
        for m in arrays:
            history = self.buffers.setdefault(m, [-1, -1])
            self.buffers[m] = [history[1], -1]
            self.last_load[m] = idx
        return idx

    def used(self, ma: int, mvm: int) -> None:
        history = self.buffers.setdefault(ma % self.target.num_arrays, [-1, -1])
        history[1] = max(history[1], mvm)

    def array(self) -> np.ndarray:
        return np.array(self.rows, dtype=INSTR_DTYPE)


def _emit_cim_layer(em: _Emitter, graph: Graph, node: Node, li: int, ready: int) -> None:
    t = em.target
    m = LayerMapping.from_meta(node)
    work = layer_work(graph, node)
    geo = macro_kind(t).geometry(work, t)
    n = t.num_arrays
    tiles, rep, first = m.tiles, m.rep, m.first_array
    rows_per_copy = math.ceil(work.rows / rep)
    row_bytes = work.k * work.groups * t.act_bits // 8 or 1
    pool = geo.opcode == "MVM_POOL"
    stream = t.weights == "dram"
    waves = m.modelled_waves if stream else 1
    per_wave = math.ceil(tiles / waves)
    blocks = [
        (r, s, min(s + ROW_BLOCK, min((r + 1) * rows_per_copy, work.rows)))
        for r in range(rep)
        for s in range(r * rows_per_copy, min((r + 1) * rows_per_copy, work.rows), ROW_BLOCK)
    ]

    def loads(w: int) -> dict[int, int]:
        return {
            tt: em.load_weights(li, first + tt * rep, rep, m.tile_bytes)
            for tt in range(w * per_wave, min((w + 1) * per_wave, tiles))
        }

    def compute(w: int, r: int, start: int, stop: int, loaded: dict[int, int]) -> None:
        b = stop - start
        wave_tiles = range(w * per_wave, min((w + 1) * per_wave, tiles))
        x = em.emit(
            "LOAD_X",
            li,
            first + wave_tiles[0] * rep + r,
            min(len(wave_tiles), n),
            rep,
            b,
            b * geo.slice_bytes,
            b * row_bytes,
            0,
            0,
            ready,
        )
        for tt in wave_tiles:
            ma = first + tt * rep + r
            mvm = em.emit(
                geo.opcode,
                li,
                ma,
                1,
                1,
                b,
                0,
                b * geo.bitops_per_row,
                b * m.per_row_cycles,
                b * m.chan_per_tile if pool else 0,
                x,
                loaded.get(tt, -1),
            )
            em.used(ma, mvm)
            em.emit("PSUM", li, ma, 1, 1, b, b * m.chan_per_tile * PSUM_BYTES, 0, 0, 0, mvm)

    if m.order == "weights-outer" or waves == 1:
        for w in range(waves):
            loaded = loads(w) if stream else {}
            for r, start, stop in blocks:
                compute(w, r, start, stop, loaded)
    else:
        for r, start, stop in blocks:
            for w in range(waves):
                compute(w, r, start, stop, loads(w))
    out = work.rows * work.out
    em.emit("SCALE", li, rows=work.rows, work=out, cycles=vector_cycles(out, t))


def program_layers(graph: Graph) -> list[dict]:
    """Execution-order layer table: which node each ``layer`` field of an instruction means."""
    return [
        {"node": n.name, "op": n.op, "kind": "cim" if n.op in CIM_OPS else "vector"}
        for n in graph.nodes()
    ]


def _drop_float_weights(graph: Graph) -> None:
    """Remove the float weights the compression passes keep in ``meta['compression']`` for the
    passes after them: the chip holds only the compressed form, and they were most of a
    program's file (ResNet-18 at cimpool-sram: 59 MB with them, 12.6 MB without)."""
    for node in graph.nodes():
        comp = node.meta.get("compression")
        if comp and "weight" in comp:
            node.meta["compression"] = {k: v for k, v in comp.items() if k != "weight"}


@register_pass
@dataclass(frozen=True)
class Lower(Pass):
    """Emit the instruction stream and constant blobs; the Program is the result's product."""

    name = "lower"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        target = ctx.require_target(self.name)
        check_lowerable(graph, target)
        _drop_float_weights(graph)
        em = _Emitter(target)
        layers = program_layers(graph)
        ready = -1
        for li, entry in enumerate(layers):
            node = graph.node(entry["node"])
            if entry["kind"] == "cim":
                _emit_cim_layer(em, graph, node, li, ready)
            else:
                out = sum(graph.values[o].size for o in node.outputs if o)
                em.emit("VEC", li, rows=0, work=out, cycles=vector_cycles(out, target))
            ready = len(em.rows) - 1
        manifest = {
            "format_version": FORMAT_VERSION,
            "source_sha256": graph.meta.get("source_sha256", ""),
            "pipeline": ",".join(graph.meta.get("pipeline", []) + [self.name]),
            "target": target.to_dict(),
            "graph_sha256": hashlib.sha256(graph.to_text().encode()).hexdigest(),
        }
        program = Program(em.array(), layers, graph, manifest)
        return PassResult(changed=True, product=program, summary=f"{len(em.rows):,} instructions")
