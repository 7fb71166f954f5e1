"""Pool-compressed layers in the graph: which float CiM layers weight-pool compresses, and how
a ``cimc.PoolMVM`` layer is written and its error term read and replaced."""

from __future__ import annotations

from typing import Any

import numpy as np

from cimc.cim_ops import (
    POOL_OP,
    bias_vector,
    float_cim_layers,
    is_depthwise,
    rewrite_as_cim_op,
    unfold_attrs,
)
from cimc.ir import Graph, Node

from .error_term import pool_residual

POOL_VALUE = "cimc.pool"


def select_layers(
    graph: Graph, skip_first: bool, skip_depthwise: bool, skip_last: bool
) -> tuple[list[Node], list[Node]]:
    """(layers to compress, CiM layers left out) in execution order."""
    layers = float_cim_layers(graph)
    chosen, left = [], []
    for i, n in enumerate(layers):
        skip = (
            (skip_first and i == 0)
            or (skip_last and i == len(layers) - 1)
            or (skip_depthwise and is_depthwise(n, graph))
        )
        (left if skip else chosen).append(n)
    return chosen, left


def add_pool(graph: Graph, pool: np.ndarray) -> str:
    """The pool as one graph constant that every compressed layer reads; its value name."""
    return graph.add_constant(graph.unique_name(POOL_VALUE), pool).name


def write_pool_layer(
    graph: Graph,
    node: Node,
    w: np.ndarray,
    pool_value: str,
    vector: int,
    coding: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None],
    **compression: Any,
) -> Node:
    """Replace float CiM layer ``node`` (weights ``w`` [O, K]) by a ``cimc.PoolMVM`` with
    ``coding`` = (idx, alpha, err or None, beta or None); ``compression`` completes
    ``meta['compression']`` after the scheme, original weight and vector set here."""
    o, k = w.shape
    idx, alpha, err, beta = coding
    attrs = {**unfold_attrs(node, graph), "k": int(k), "vector": vector}
    meta = {
        "compression": {
            "scheme": "pool",
            "weight": w.astype(np.float32),
            "vector": vector,
            **compression,
        }
    }
    operands = [
        ("pool", pool_value),
        ("idx", idx),
        ("err", err),
        ("alpha", alpha),
        ("beta", beta),
        ("bias", bias_vector(node, graph, o)),
    ]
    return rewrite_as_cim_op(graph, node, POOL_OP, operands, attrs, meta)


def residual(graph: Graph, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(R[O, G, V], real[G, V] mask of unpadded positions) of a pool-compressed layer."""
    w = node.meta["compression"]["weight"]
    pool, idx, alpha = (graph.values[node.inputs[i]].data for i in (1, 2, 4))
    return pool_residual(w, pool, idx, alpha)


def set_error(graph: Graph, node: Node, err: np.ndarray, beta: float) -> None:
    """Attach the (masked) error bits and beta as the node's err and beta inputs."""
    err_name = graph.add_constant(graph.unique_name(f"{node.name}.err"), err.astype(np.int8)).name
    beta_name = graph.add_constant(graph.unique_name(f"{node.name}.beta"), np.array([beta])).name
    inputs = list(node.inputs)
    inputs[3], inputs[5] = err_name, beta_name
    graph.set_inputs(node, inputs)
