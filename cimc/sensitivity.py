"""Per-layer sensitivity: the output fidelity when only one CiM layer is quantised or compressed.

The compression pipeline runs once on the whole graph; then, for each CiM layer, a copy of the
float graph takes just that layer's compressed node (same name, same input and output, its own
constants) and runs the calibration feeds. The layers whose swap costs the most fidelity are
the ones to keep at a higher precision. BatchNorm is folded first (fold-bn), so each
compressed layer replaces a float layer that computes the same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .cim_ops import CIM_OPS
from .interpreter import interpret
from .ir import Graph
from .pass_manager import run_passes


def fidelity(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> dict[str, float]:
    """Cosine similarity and relative L2 error of all outputs over all feeds, flattened."""
    a = np.concatenate([np.ravel(x).astype(np.float64) for x in got])
    b = np.concatenate([np.ravel(x).astype(np.float64) for x in want])
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b))
    rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    return {"cosine": cosine, "rel_error": rel}


def layer_sensitivity(
    graph: Graph, feeds: list[dict[str, np.ndarray]], pipeline: str
) -> list[dict[str, float | str]]:
    """One row per CiM layer of ``pipeline``'s result, least faithful first: the layer, its
    op, and the fidelity of the graph's outputs with only that layer compressed."""
    graph = run_passes(graph, "fold-bn")  # layers then compare with the weights they compress
    compressed = run_passes(graph, pipeline, calibration=feeds)
    reference = [interpret(graph, f) for f in feeds]
    rows = []
    for node in compressed.nodes():
        if node.op not in CIM_OPS or node.name not in graph.dag:
            continue
        hybrid = graph.copy()
        hybrid.remove_node(node.name)
        for name in node.inputs:
            if name and name not in hybrid.values:
                hybrid.values[name] = compressed.values[name]
        hybrid.add_node(node)
        got = [interpret(hybrid, f) for f in feeds]
        outs = graph.outputs
        score = fidelity([g[o] for g in got for o in outs], [r[o] for r in reference for o in outs])
        rows.append({"layer": node.name, "op": node.op, **score})
    return sorted(rows, key=lambda r: (r["cosine"], r["layer"]))
