"""Per-layer sensitivity: the output fidelity when only one CiM layer is quantised or compressed.

The compression pipeline runs once on the whole graph; then, for each CiM layer, a copy of the
float graph takes just that layer's compressed node (same name, same input and output, its own
constants) and runs the feeds. The layers whose swap costs the most fidelity are the ones to keep
at a higher precision: weight-pool and quantize-weights do so with ``keep_sensitive=N``
(:func:`most_sensitive`). BatchNorm is folded first (fold-bn), so each compressed layer replaces
a float layer that computes the same function.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .cim_ops import CIM_OPS
from .errors import OptionError
from .interpreter import interpret
from .ir import Graph, Node
from .pass_manager import run_passes
from .report.bits import layer_storage
from .report.fidelity import fidelity

Feeds = list[dict[str, np.ndarray]]


def _worst(graph: Graph, got: list[dict], want: list[dict]) -> dict[str, float]:
    """Fidelity of every graph output over all feeds (stacked on the batch axis), the worst
    output's figure of each kind."""
    scores = [
        fidelity(np.concatenate([g[o] for g in got]), np.concatenate([w[o] for w in want]))
        for o in graph.outputs
    ]
    return {
        "cosine": min(s["cosine"] for s in scores),
        "rel_error": max(s["rel_error"] for s in scores),
        "top1_agreement": min(s["top1_agreement"] for s in scores),
    }


def layer_sensitivity(
    graph: Graph,
    feeds: Feeds,
    pipeline: str,
    *,
    calibration: Feeds | None = None,
    target: Any = None,
    layers: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per CiM layer of ``pipeline``'s result (or per name in ``layers``), least
    faithful first: the layer, its op, scheme, weight count, bits per weight, and the fidelity
    (cosine, relative error, top-1 agreement) of the outputs on ``feeds`` with only that layer
    compressed. ``calibration`` (default: ``feeds``) calibrates the pipeline."""
    graph = run_passes(graph, "fold-bn")  # layers then compare with the weights they compress
    compressed = run_passes(graph, pipeline, calibration=calibration or feeds, target=target)
    storage = {r["name"]: r for r in layer_storage(compressed)}
    wanted = None if layers is None else set(layers)
    reference = [interpret(graph, f) for f in feeds]
    rows = []
    for node in compressed.nodes():
        if node.op not in CIM_OPS or node.name not in graph.dag:
            continue
        if wanted is not None and node.name not in wanted:
            continue
        got = [interpret(_with_layer(graph, compressed, node), f) for f in feeds]
        s = storage[node.name]
        rows.append(
            {
                "layer": node.name,
                "op": node.op,
                "scheme": s["scheme"],
                "weights": s["weights"],
                "bits_per_weight": s["bits_per_weight"],
                **_worst(graph, got, reference),
            }
        )
    return sorted(rows, key=lambda r: (r["cosine"], r["layer"]))


def _with_layer(graph: Graph, compressed: Graph, node: Node) -> Graph:
    """A copy of float ``graph`` whose layer ``node.name`` is ``compressed``'s ``node``."""
    hybrid = graph.copy()
    hybrid.remove_node(node.name)
    for name in node.inputs:
        if name and name not in hybrid.values:
            hybrid.values[name] = compressed.values[name]
    hybrid.add_node(node)
    return hybrid


def most_sensitive(
    graph: Graph, ctx: Any, pipeline: str, candidates: list[Node], n: int
) -> set[str]:
    """:func:`rank_sensitive` of ``candidates`` on the calibration feeds of pass context ``ctx``
    (refused without them when a ranking is needed)."""
    names = [c.name for c in candidates]
    if 0 < n < len(names) and not ctx.calibration:
        raise OptionError(
            f"keep_sensitive={n} ranks layers on calibration data, but none was given; compile "
            "with calibration (cimc.compile does by default) or drop keep_sensitive"
        )
    return rank_sensitive(graph, ctx.calibration, pipeline, names, n, ctx.target)


def rank_sensitive(
    graph: Graph,
    feeds: Feeds,
    pipeline: str,
    layers: list[str],
    n: int,
    target: Any = None,
) -> set[str]:
    """The ``n`` of ``layers`` (all of them if fewer: the option is clamped, so one search
    choice fits models of any depth) whose compression by ``pipeline`` alone costs the most
    fidelity on ``feeds``; the passes' keep_sensitive and fine-tuning share it."""
    if n <= 0 or not layers:
        return set()
    if len(layers) <= n:
        return set(layers)
    rows = layer_sensitivity(graph, feeds, pipeline, target=target, layers=layers)
    return {r["layer"] for r in rows[:n]}


def mark_sensitive(node: Node) -> None:
    """Record on a layer kept at a higher precision that it was chosen for its sensitivity (the
    target check accepts its 8 bits on an N-bit macro, as it does the first and last layers')."""
    node.meta["compression"]["sensitive"] = True
