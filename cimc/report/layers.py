"""Per-layer figures: the static summary of a graph (what ``cimc inspect`` prints) and the
simulated busy cycles of each layer by unit kind (what ``cimc run`` tabulates and plots).

Summary: one row per node: op, input and output shapes, parameter count (elements of its
constant inputs), MACs, and the unit that runs it (``cim`` arrays or the digital ``vector`` unit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..ir import Graph
from ..ops import macs_of, runs_on_cim

if TYPE_CHECKING:
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


def busy_by_layer(result: SimResult) -> dict[str, tuple[int, int]]:
    """Per layer of a simulation result: (busiest array's compute cycles, vector-unit cycles)."""
    return {
        layer.name: (layer.unit_busy.get("array", 0), layer.unit_busy.get("vector", 0))
        for layer in result.layers
    }
