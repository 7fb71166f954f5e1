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

from cimc.targets.cost import base_tiling, best_tiling, layer_cost
from cimc.targets.mapping import LayerMapping, Placement, check_lowerable, layer_work

from cimc.errors import CimcError
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class Tile(Pass):
    """Map CiM layers onto the arrays (tiles, placement, loop order) at least modelled cycles."""

    name = "tile"
    replicate: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        target = ctx.require_target(self.name)
        layers = check_lowerable(graph, target)
        works = {n.name: layer_work(graph, n) for n in layers}
        for n in layers:
            if works[n.name].error_rows > target.error_rows:
                raise CimcError(
                    f"layer {n.name!r} keeps {works[n.name].error_rows} error rows per vector but "
                    f"target {target.name} has error_rows={target.error_rows}; prune harder "
                    f"(error-prune{{keep=...}}) or --set error_rows={works[n.name].error_rows}"
                )
        base = {n.name: base_tiling(works[n.name], target) for n in layers}
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
        mappings: list[LayerMapping] = []
        for n in layers:
            work = works[n.name]
            chosen = base[n.name]
            if self.replicate:
                budget = None if spare is None else spare + chosen.tiles * chosen.tile_bytes
                chosen = best_tiling(work, target, budget)
                if spare is not None:
                    spare -= (chosen.rep - 1) * chosen.tiles * chosen.tile_bytes
            cost = layer_cost(work, chosen, target)
            mapping = LayerMapping(
                **asdict(chosen),
                **{f"modelled_{k}": v for k, v in asdict(cost).items()},
                rows=work.rows,
                first_array=ma_offset,
            )
            n.meta["mapping"] = mapping.to_meta()
            mappings.append(mapping)
            ma_offset = (ma_offset + chosen.tiles * chosen.rep) % target.num_arrays
        placement = Placement(
            target=target.name,
            modelled_cim_cycles=int(sum(m.modelled_cycles for m in mappings)),
            weight_bytes=int(need),
            weight_bytes_placed=int(sum(m.tiles * m.rep * m.tile_bytes for m in mappings)),
            # layers are placed one after another, wrapping round the arrays
            arrays_used=int(min(target.num_arrays, sum(m.tiles * m.rep for m in mappings))),
        )
        graph.meta.update(placement.to_meta())
        return PassResult(
            changed=bool(layers),
            summary=f"{len(layers)} layers, {placement.modelled_cim_cycles:,} modelled cycles",
        )
