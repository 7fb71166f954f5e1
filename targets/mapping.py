"""The records ``tile`` writes and ``lower``, the simulator and the reports read.

``node.meta["mapping"]`` of every CiM layer is a :class:`LayerMapping`; the fields of
:class:`Placement` are keys of ``graph.meta``. Both are stored as plain values (they travel inside
``.cimx`` files) and read back through ``from_meta``, so a key written is a key documented here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from cimc.cim_ops import CIM_OPS, POOL_OP, cim_kind
from cimc.errors import CimcError
from cimc.ir import Graph, Node

from .agreement import check_layers_agree
from .macros import MACRO_KINDS, LayerWork, macro_kind


@dataclass(frozen=True)
class LayerMapping:
    """How one CiM layer sits on the arrays, and the cycles ``tile`` chose it by."""

    tiles: int  # tiles of one copy
    tile_bytes: int  # weight bytes of one tile
    k_tiles: int  # tiles along K sharing the same outputs (partial sums to reduce)
    chan_per_tile: int
    per_row_cycles: int  # cycles one tile spends per input row
    rep: int  # copies of the layer; rows are split between them
    order: str  # "rows-outer" (inputs multicast once) or "weights-outer" (weight waves)
    modelled_cycles: int  # what tile judged this mapping by
    modelled_compute: int
    modelled_l1: int
    modelled_l2: int
    modelled_dram: int
    modelled_ma_write: int
    modelled_waves: int  # weight waves (DRAM targets: loads that do not fit at once)
    rows: int  # input rows of the layer
    first_array: int  # the array tile 0 / copy 0 lives on
    # the first layer of its share group (``cimc.weight_sharing``), whose arrays and tiling it
    # reuses; "" (left out of the meta) when the layer holds weights of its own
    shares: str = ""

    def to_meta(self) -> dict[str, Any]:
        meta = dataclasses.asdict(self)
        if not self.shares:
            del meta["shares"]
        return meta

    @classmethod
    def from_meta(cls, node: Node) -> LayerMapping:
        meta = node.meta.get("mapping")
        if meta is None:
            raise CimcError(f"layer {node.name!r} has no mapping; run the tile pass before lower")
        return cls(**meta)


@dataclass(frozen=True)
class Placement:
    """What the mapped program occupies on the chip (keys of ``graph.meta``)."""

    target: str
    modelled_cim_cycles: int  # sum of the layers' modelled cycles
    weight_bytes: int  # one copy of every distinct weight's tiles (a share group counts once)
    weight_bytes_placed: int  # replicas included
    arrays_used: int

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, graph: Graph) -> Placement:
        names = [f.name for f in dataclasses.fields(cls)]
        if any(n not in graph.meta for n in names):
            raise CimcError("the graph has no placement; run the tile pass first")
        return cls(**{n: graph.meta[n] for n in names})


def layer_work(graph: Graph, node: Node) -> LayerWork:
    """The work description of a compressed or quantised CiM layer."""
    out_shape = graph.values[node.outputs[0]].shape
    if node.op == POOL_OP:
        n_out = graph.values[node.inputs[2]].shape[0]
        comp = node.meta.get("compression", {})
        has_error = bool(node.inputs[3])
        keep = comp.get("error_keep", 1.0) if has_error else 0.0
        sched = node.meta.get("schedule")
        route = int(np.max(sched["cycles"])) if sched else 0
        scheme, bits = "pool", 1
        error_rows = int(round(keep * node.attrs["vector"]))
    else:
        n_out = graph.values[node.inputs[1]].shape[0]
        scheme, error_rows, route, has_error = "int", 0, 0, False
        bits = node.meta.get("compression", {}).get("bits", 8)
    rows = int(np.prod(out_shape)) // n_out
    return LayerWork(
        rows=rows,
        k=int(node.attrs["k"]),
        out=int(n_out),
        groups=int(node.attrs.get("group", 1)),
        scheme=scheme,
        weight_bits=int(bits),
        error_rows=error_rows,
        route_cycles=route,
        has_error=has_error,
    )


def check_lowerable(graph: Graph, target) -> list[Node]:
    """CiM layers in order; float weights, float activations, layers the target's macro
    cannot run or whose geometry and precision contradict the target are errors."""
    kind = macro_kind(target)
    layers = []
    for node in graph.nodes():
        if cim_kind(node, graph):
            raise CimcError(
                f"layer {node.name!r} ({node.op}) still has float weights; compile with "
                "weight-pool or quantize-weights in the pipeline"
            )
        if node.op in CIM_OPS:
            if node.op not in kind.layer_ops:
                runs = [k.name for k in MACRO_KINDS.values() if node.op in k.layer_ops]
                raise CimcError(
                    f"layer {node.name!r} is a {node.op} layer but target {target.name} has "
                    f"{target.macro} macros, which run {', '.join(kind.layer_ops)}; use a target "
                    f"with a {' or '.join(runs) or 'matching'} macro, or compress for it"
                )
            if not node.attrs.get("act_bits"):
                raise CimcError(
                    f"layer {node.name!r} ({node.op}) takes float activations, but the arrays "
                    "take bit-serial integer inputs; end the pipeline with quantize-act"
                )
            layers.append(node)
    check_layers_agree(graph, target)
    return layers
