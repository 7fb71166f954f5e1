"""Storage accounting: every bit a compiled model keeps for its CiM layers.

Per layer: pool layers count indices (ceil(log2 S) bits per vector), error bits (keep * V
rows per vector slot, padding rows included: the array stores them), structured masks (V / chunk
bits per output-channel group and slot), and 32-bit scales; N-bit layers count N bits per
weight plus a 32-bit scale per output channel; float layers 32 bits per weight. The shared
pool (S * V bits) is counted once per network. Biases run on the vector unit and are left out
of both the bits and the weight count. Layers that hold the same weights as an earlier one (the
steps of an unrolled LSTM or GRU, ``cimc.weight_sharing``) keep their own row, naming that layer
in ``shares``, and the totals count their weights and bits once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..cim_ops import POOL_OP, QUANT_OP, cim_kind, weight_matrix
from ..ir import Graph
from ..weight_sharing import share_leaders

SCALE_BITS = 32


def _pool_layer(graph: Graph, node) -> dict[str, Any]:
    pool = graph.values[node.inputs[1]]
    idx = graph.values[node.inputs[2]].data
    o, g = idx.shape
    s, v = pool.shape
    comp = node.meta.get("compression", {})
    keep = comp.get("error_keep", 0.0) if node.inputs[3] else 0.0
    bits = {
        "index": o * g * math.ceil(math.log2(s)),
        "error": int(round(o * g * v * keep)),
        "mask": 0,
        "scale": SCALE_BITS * (graph.values[node.inputs[4]].size + (1 if node.inputs[5] else 0)),
    }
    if node.inputs[3] and keep < 1.0:
        mask = comp["error_mask"]
        bits["mask"] = int(mask.shape[0] * mask.shape[1] * (v // comp["error_chunk"]))
    return {"scheme": f"pool{s}x{v}", "out": o, "k": node.attrs["k"], "bits": bits}


def layer_storage(graph: Graph) -> list[dict[str, Any]]:
    leaders = share_leaders(graph)
    rows = []
    for node in graph.nodes():
        if node.op == POOL_OP:
            row = _pool_layer(graph, node)
        elif node.op == QUANT_OP:
            wq = graph.values[node.inputs[1]]
            b = node.meta.get("compression", {}).get("bits", 8)
            o, k = wq.shape
            row = {
                "scheme": f"int{b}",
                "out": o,
                "k": k,
                "bits": {"weight": b * o * k, "scale": SCALE_BITS * o},
            }
        elif cim_kind(node, graph):
            o, k = weight_matrix(node, graph).shape
            row = {"scheme": "fp32", "out": o, "k": k, "bits": {"weight": 32 * o * k}}
        else:
            continue
        row["name"] = node.name
        row["weights"] = row["out"] * row["k"]
        row["total_bits"] = sum(row["bits"].values())
        row["bits_per_weight"] = row["total_bits"] / row["weights"]
        if node.name in leaders:
            row["shares"] = leaders[node.name]
        rows.append(row)
    return rows


def storage_report(graph: Graph) -> dict[str, Any]:
    """Per-layer and total bits per weight (shared weights once), and compression against 8-bit
    weights."""
    layers = layer_storage(graph)
    distinct = [r for r in layers if "shares" not in r]
    pools = {
        node.inputs[1]: graph.values[node.inputs[1]].size
        for node in graph.nodes()
        if node.op == POOL_OP
    }
    pool_bits = int(sum(pools.values()))
    weights = sum(r["weights"] for r in distinct)
    total = sum(r["total_bits"] for r in distinct) + pool_bits
    compressed = [r for r in distinct if r["scheme"].startswith("pool")]
    cw = sum(r["weights"] for r in compressed)
    cb = sum(r["total_bits"] for r in compressed)
    bpw = total / weights if weights else float("nan")
    return {
        "layers": layers,
        "pool_bits": pool_bits,
        "weights": weights,
        "total_bits": total,
        "bits_per_weight": bpw,
        "compressed_weights": cw,
        "compressed_bits_per_weight": cb / cw if cw else float("nan"),
        "compressed_fraction": cw / weights if weights else 0.0,
        "compression_vs_int8": 8 / bpw if weights else float("nan"),
        "total_bytes": int(np.ceil(total / 8)),
    }
