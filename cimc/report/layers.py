"""Per-layer figures: the static summary of a graph (what ``cimc inspect`` prints) and views of
a simulation's per-layer reports (what ``cimc run`` and ``cimc compile`` tabulate and plot).

Summary: one row per node: op, input and output shapes, parameter count (elements of its
constant inputs), MACs, and the unit that runs it (``cim`` arrays or the digital ``vector`` unit).

Simulated layers: each :class:`~cimc.targets.simulator.LayerReport` holds, per unit kind, the busy
cycles of the busiest unit of that kind (one array, one link, not their sum). ``top_layers`` keeps
the layers with the most cycles and sums the rest into one row, so a 170-layer model stays
readable; ``tile_agreement`` sets tile's modelled cycles of each CiM layer beside the simulated
ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ir import Graph
from ..ops import macs_of, runs_on_cim

if TYPE_CHECKING:
    from ..program import Program
    from ..targets.simulator import SimResult


def layer_rows(graph: Graph) -> list[dict[str, Any]]:
    """One JSON-ready dict per node, in execution order."""
    rows = []
    for node in graph.nodes():
        ins = [i for i in node.inputs if i]
        params = sum(
            graph.values[i].size
            for i in ins
            if graph.values[i].is_constant and graph.values[i].dtype.kind == "f"
        )
        rows.append(
            {
                "name": node.name,
                "op": node.op,
                "inputs": [
                    list(graph.values[i].shape) for i in ins if not graph.values[i].is_constant
                ],
                "outputs": [list(graph.values[o].shape) for o in node.outputs if o],
                "params": int(params),
                "macs": macs_of(node, graph),
                "unit": "cim" if runs_on_cim(node, graph) else "vector",
            }
        )
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cim = [r for r in rows if r["unit"] == "cim"]
    return {
        "layers": len(rows),
        "cim_layers": len(cim),
        "params": sum(r["params"] for r in rows),
        "cim_params": sum(r["params"] for r in cim),
        "macs": sum(r["macs"] for r in rows),
        "cim_macs": sum(r["macs"] for r in cim),
    }


def summarize(graph: Graph) -> dict[str, Any]:
    rows = layer_rows(graph)
    return {
        "model": graph.name,
        "inputs": {i: list(graph.values[i].shape) for i in graph.inputs},
        "outputs": {o: list(graph.values[o].shape) for o in graph.outputs},
        "layers": rows,
        "totals": totals(rows),
    }


# Unit kinds of the simulator's per-layer reports, in the order tables and plots show them.
UNIT_LABELS = {
    "array": "arrays",
    "permutation": "permutation",
    "vector": "vector",
    "l1_link": "L1 link",
    "l2_link": "L2 link",
    "dram": "DRAM",
    "array_write": "write port",
}


@dataclass(frozen=True)
class LayerBar:
    """One row of a per-layer view: a layer, or the sum of the layers left out."""

    label: str
    op: str  # "" for the summed row
    cycles: int
    unit_busy: dict[str, int]  # per unit kind: busiest unit's cycles (summed over a group)
    layers: int  # how many layers the row stands for


def top_layers(result: SimResult, n: int) -> list[LayerBar]:
    """The ``n`` layers with the most cycles in execution order, then one row summing the rest
    (omitted when nothing is left out). Ties keep the earlier layer."""
    layers = result.layers
    ranked = sorted(range(len(layers)), key=lambda i: (-layers[i].cycles, i))
    keep = set(ranked[:n])
    rows = [
        LayerBar(
            layers[i].name,
            layers[i].op.removeprefix("cimc."),
            layers[i].cycles,
            dict(layers[i].unit_busy),
            1,
        )
        for i in sorted(keep)
    ]
    rest = [layers[i] for i in ranked[n:]]
    if rest:
        busy = {k: sum(r.unit_busy.get(k, 0) for r in rest) for k in UNIT_LABELS}
        label = f"other {len(rest)} layers (sum)"
        rows.append(LayerBar(label, "", sum(r.cycles for r in rest), busy, len(rest)))
    return rows


def tile_agreement(program: Program, result: SimResult) -> dict[str, tuple[int, int]]:
    """Per CiM layer: (cycles ``tile`` chose its mapping by, simulated cycles)."""
    kinds = {e["node"]: e["kind"] for e in program.layers}
    graph = program.graph
    return {
        layer.name: (graph.node(layer.name).meta["mapping"]["modelled_cycles"], layer.cycles)
        for layer in result.layers
        if kinds[layer.name] == "cim"
    }
