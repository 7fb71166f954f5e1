"""tile: map every CiM layer onto the memory arrays and choose its dataflow.

For each layer the pass enumerates the legal mappings of ``cimc.targets.cost`` (replication of
the layer's tiles into free arrays so rows split between copies, and the loop order: inputs
multicast once with weights stationary, or weight waves outer) and keeps the one with the fewest
cycles, timing each candidate's instructions after the layers before it with the simulator's
own kernel (``cimc.targets.emit.TimedStream``), so they are the cycles the simulator reports for
the layer. On-chip (``weights = "sram"``) targets must hold every layer's tiles at once: a
model that does not fit is an error that says how many bytes are missing; replicas only use
capacity left over. The mapping goes to ``node.meta['mapping']``
(a ``cimc.targets.mapping.LayerMapping``).

Layers that hold the same weights (``cimc.weight_sharing``: the steps of an unrolled LSTM or GRU)
are placed once: the first of a share group is mapped as above, and the later ones reuse its
arrays and tiling (``first_array``, ``rep``, ``order``; ``shares`` names the first), so their
weights count once in the capacity check, the bytes placed and the arrays used. They are still
timed one by one; whether they reload weights is ``cimc.targets.emit``'s rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial

from cimc.targets.cost import base_tiling, best_tiling, candidates
from cimc.targets.emit import TimedStream, emit_vector_layer, weight_waves
from cimc.targets.mapping import LayerMapping, Placement, check_lowerable, layer_work

from cimc.errors import CimcError
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass
from cimc.weight_sharing import share_leaders


@register_pass
@dataclass(frozen=True)
class Tile(Pass):
    """Map CiM layers onto the arrays (tiles, placement, loop order) at the fewest timed cycles."""

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
        leaders = share_leaders(graph)
        need = sum(t.tiles * t.tile_bytes for name, (_, t) in base.items() if name not in leaders)
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
        placed: dict[str, tuple[int, LayerMapping]] = {}  # first layer of a group: (li, mapping)
        stream = TimedStream(target)
        for li, n in enumerate(graph.nodes()):
            if n.name not in works:
                stream.commit(
                    stream.try_layer(partial(emit_vector_layer, graph=graph, node=n, li=li))
                )
                continue
            work = works[n.name]
            geo, chosen = base[n.name]
            lead = leaders.get(n.name, "")
            first = ma_offset
            if lead:  # the arrays and tiling of its group's first layer
                weights, shared = placed[lead]
                first = shared.first_array
                options = [replace(chosen, rep=shared.rep, order=shared.order)]
                chosen, trial = best_tiling(stream, work, geo, options, first, li, weights)
            else:
                options = [chosen]
                if self.replicate:
                    budget = None if spare is None else spare + chosen.tiles * chosen.tile_bytes
                    options = [
                        t
                        for t in candidates(chosen, work, target)
                        if t.rep == 1 or budget is None or t.tiles * t.rep * t.tile_bytes <= budget
                    ]
                chosen, trial = best_tiling(stream, work, geo, options, first, li)
            stream.commit(trial)
            mapping = LayerMapping(
                **asdict(chosen),
                modelled_cycles=trial.cycles,
                **{f"modelled_{k}": v for k, v in trial.per_kind.items()},
                modelled_waves=weight_waves(chosen, target),
                rows=work.rows,
                first_array=first,
                shares=lead,
            )
            n.meta["mapping"] = mapping.to_meta()
            mappings.append(mapping)
            if not lead:
                placed[n.name] = (li, mapping)
                if spare is not None:
                    spare -= (chosen.rep - 1) * chosen.tiles * chosen.tile_bytes
                ma_offset = (ma_offset + chosen.tiles * chosen.rep) % target.num_arrays
        own = [m for m in mappings if not m.shares]
        placement = Placement(
            target=target.name,
            modelled_cim_cycles=int(sum(m.modelled_cycles for m in mappings)),
            weight_bytes=int(need),
            weight_bytes_placed=int(sum(m.tiles * m.rep * m.tile_bytes for m in own)),
            # layers are placed one after another, wrapping round the arrays
            arrays_used=int(min(target.num_arrays, sum(m.tiles * m.rep for m in own))),
        )
        graph.meta.update(placement.to_meta())
        return PassResult(
            changed=bool(layers),
            summary=f"{len(layers)} layers, {placement.modelled_cim_cycles:,} modelled cycles",
        )
