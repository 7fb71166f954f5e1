"""lower: emit the instruction stream of a tiled graph as a ``cimc.Program``.

CiM layers are emitted by ``cimc.targets.emit.emit_cim_layer`` (the function ``tile`` timed its
candidates with, told the share group the mapping names, so reused weights are not reloaded),
vector layers as one VEC instruction each. The Program is the pass's product
(``PassResult.product``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from cimc.targets.emit import Emitter, Tiling, emit_cim_layer, emit_vector_layer
from cimc.targets.macros import macro_kind
from cimc.targets.mapping import LayerMapping, check_lowerable, layer_work

from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass
from cimc.program import FORMAT_VERSION, Program, program_layers


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
        em = Emitter(target)
        layers = program_layers(graph)
        index = {entry["node"]: li for li, entry in enumerate(layers)}
        for li, entry in enumerate(layers):
            node = graph.node(entry["node"])
            if entry["kind"] == "cim":
                mapping = LayerMapping.from_meta(node)
                work = layer_work(graph, node)
                geo = macro_kind(target).geometry(work, target)
                tiling = Tiling(**{f.name: getattr(mapping, f.name) for f in fields(Tiling)})
                ready = em.count - 1
                weights = index[mapping.shares] if mapping.shares else li
                emit_cim_layer(em, work, geo, tiling, mapping.first_array, li, ready, None, weights)
            else:
                emit_vector_layer(em, graph, node, li)
        manifest = {
            "format_version": FORMAT_VERSION,
            "source_sha256": graph.meta.get("source_sha256", ""),
            "pipeline": ",".join(graph.meta.get("pipeline", []) + [self.name]),
            "target": target.to_dict(),
        }
        program = Program(em.array(), layers, graph, manifest)
        return PassResult(changed=True, product=program, summary=f"{em.count:,} instructions")
