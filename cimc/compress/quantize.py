"""Per-output-channel symmetric N-bit weights: the int-N baseline, and the layers weight-pool
leaves out (``others``)."""

from __future__ import annotations

import numpy as np

from cimc.cim_ops import QUANT_OP, bias_vector, rewrite_as_cim_op, unfold_attrs, weight_matrix
from cimc.ir import Graph, Node

WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)


def quantize_per_channel(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel weights: wq in [-(2^(b-1)-1), 2^(b-1)-1], scale[O]."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(w).max(axis=1).astype(np.float64)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    wq = np.clip(np.round(w / scale[:, None]), -qmax, qmax).astype(np.int8)
    return wq, scale


def quantized_weights(w: np.ndarray, bits: int) -> np.ndarray:
    """W[O, K] on its ``bits``-bit per-channel grid, as float64: the weights a QuantMVM holds."""
    wq, scale = quantize_per_channel(w, bits)
    return wq.astype(np.float64) * scale[:, None]


def to_quant_mvm(graph: Graph, node: Node, bits: int) -> Node:
    """Rewrite a float CiM layer as an N-bit per-channel ``cimc.QuantMVM``."""
    w = weight_matrix(node, graph)
    wq, scale = quantize_per_channel(w, bits)
    attrs = {**unfold_attrs(node, graph), "k": int(w.shape[1])}
    meta = {"compression": {"scheme": "int", "bits": bits, "weight": w.astype(np.float32)}}
    bias = bias_vector(node, graph, w.shape[0])
    return rewrite_as_cim_op(
        graph, node, QUANT_OP, [("wq", wq), ("wscale", scale), ("bias", bias)], attrs, meta
    )
