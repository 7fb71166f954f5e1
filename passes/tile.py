"""tile: map every CiM layer onto the memory arrays and choose its dataflow.

For each layer the pass enumerates the legal mappings of ``cimc.targets.cost`` (replication of
the layer's tiles into free arrays so rows split between copies, and the loop order: inputs
multicast once with weights stationary, or weight waves outer) and keeps the one with the fewest
modelled cycles. On-chip (``weights = "sram"``) targets must hold every layer's tiles at once:
a model that does not fit is an error that says how many bytes are missing; replicas only use
capacity left over. The mapping goes to ``node.meta['mapping']``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from cimc.targets.cost import LayerWork, Tiling, best_tiling, layer_cost, tile_geometry
from cimc.targets.params import Target, load_target

from cimc.cim_ops import CIM_OPS, POOL_OP, cim_kind
from cimc.errors import CimcError
from cimc.ir import Graph, Node
from cimc.passes_base import Pass, PassContext, register_pass


def layer_work(graph: Graph, node: Node, target: Target) -> LayerWork:
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
        scheme, bits, error_rows, route, has_error = "int", 8, 0, 0, False
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


def check_lowerable(graph: Graph, target: Target) -> list[Node]:
    """CiM layers in order; float weights, float activations or pool layers on int macros
    are errors."""
    layers = []
    for node in graph.nodes():
        if cim_kind(node, graph):
            raise CimcError(
                f"layer {node.name!r} ({node.op}) still has float weights; compile with "
                "weight-pool or quantize-weights in the pipeline"
            )
        if node.op in CIM_OPS:
            if node.op == POOL_OP and target.macro != "cimpool":
                raise CimcError(
                    f"layer {node.name!r} is pool-compressed but target {target.name} has "
                    f"{target.macro} macros; use a cimpool target or quantize-weights"
                )
            if not node.attrs.get("act_bits"):
                raise CimcError(
                    f"layer {node.name!r} ({node.op}) takes float activations, but the arrays "
                    "take bit-serial integer inputs; end the pipeline with quantize-act"
                )
            layers.append(node)
    return layers


@register_pass
@dataclass(frozen=True)
class Tile(Pass):
    """Map CiM layers onto the arrays (tiles, placement, loop order) at least modelled cycles."""

    name = "tile"
    replicate: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> None:
        target = ctx.target or load_target()
        layers = check_lowerable(graph, target)
        works = {n.name: layer_work(graph, n, target) for n in layers}
        for n in layers:
            if works[n.name].error_rows > target.error_rows:
                raise CimcError(
                    f"layer {n.name!r} keeps {works[n.name].error_rows} error rows per vector but "
                    f"target {target.name} has error_rows={target.error_rows}; prune harder "
                    f"(error-prune{{keep=...}}) or --set error_rows={works[n.name].error_rows}"
                )
        base = {}
        for n in layers:
            tiles, tile_bytes, k_tiles, chan, per_row = tile_geometry(works[n.name], target)
            base[n.name] = Tiling(tiles, tile_bytes, k_tiles, chan, per_row, 1, "rows-outer")
        need = sum(t.tiles * t.tile_bytes for t in base.values())
        if target.weights == "sram" and need > target.capacity_bytes:
            raise CimcError(
                f"model does not fit on target {target.name}: its weights need {need:,} bytes "
                f"but the arrays hold {target.capacity_bytes:,}; {need - target.capacity_bytes:,} "
                "bytes are missing (raise MA_mem_size or MA_num_child, compress harder, or use a "
                "DRAM target)"
            )
        spare = target.capacity_bytes - need if target.weights == "sram" else None
        ma_offset = 0
        for n in layers:
            work = works[n.name]
            chosen = base[n.name]
            if self.replicate:
                budget = None if spare is None else spare + chosen.tiles * chosen.tile_bytes
                chosen = best_tiling(work, target, budget)
                if spare is not None:
                    spare -= (chosen.rep - 1) * chosen.tiles * chosen.tile_bytes
            cost = layer_cost(work, chosen, target)
            n.meta["mapping"] = {
                **asdict(chosen),
                **{f"modelled_{k}": v for k, v in asdict(cost).items()},
                "rows": work.rows,
                "first_array": ma_offset,
            }
            ma_offset = (ma_offset + chosen.tiles * chosen.rep) % target.num_arrays
        graph.meta["target"] = target.name
        graph.meta["modelled_cim_cycles"] = int(
            sum(n.meta["mapping"]["modelled_cycles"] for n in layers)
        )
        maps = [n.meta["mapping"] for n in layers]
        graph.meta["weight_bytes"] = int(need)
        graph.meta["weight_bytes_placed"] = int(
            sum(m["tiles"] * m["rep"] * m["tile_bytes"] for m in maps)
        )
        # layers are placed one after another, wrapping round the arrays
        graph.meta["arrays_used"] = int(
            min(target.num_arrays, sum(m["tiles"] * m["rep"] for m in maps))
        )
