"""Per-output-channel symmetric N-bit weights: the int-N baseline, and the layers weight-pool
leaves out (``others``).

Rounding is to nearest, or error-compensated (GPTQ; Frantar et al., 2023): the columns of W
are rounded one at a time and each rounding error is spread over the columns not yet rounded,
weighted by the inverse of the layer's input second moments H = sum_m x_m x_m^T, so the
layer's *output* error on the calibration data is what is minimised, not the weight error.
The grid (per-channel scale) is the same; only which grid point each weight takes changes.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from cimc.cim_ops import QUANT_OP, bias_vector, rewrite_as_cim_op, unfold_attrs, weight_matrix
from cimc.ir import Graph, Node

WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8)
ROUNDINGS = ("nearest", "gptq")
GPTQ_DAMP = 0.01  # H + 1% of its mean diagonal: GPTQ's default, keeps the inverse well posed
GPTQ_BLOCK = 128  # columns rounded between two matrix updates of the rest (GPTQ's lazy batch)


def quantize_per_channel(
    w: np.ndarray, bits: int, hessian: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel weights: wq in [-(2^(b-1)-1), 2^(b-1)-1], scale[O].
    With ``hessian`` (H[group, K, K], the input second moments of each conv group), rounding
    is error-compensated (GPTQ); without, to nearest."""
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(w).max(axis=1).astype(np.float64)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    if hessian is None:
        wq = _nearest(w, scale, qmax)
    else:
        group = hessian.shape[0]
        og = w.shape[0] // group
        # one BLAS thread: the factorisations and updates must round alike on every machine
        # (set once per layer: a depthwise conv has a group per channel, ~5 ms a setting)
        with threadpool_limits(1, user_api="blas"):
            wq = np.concatenate(
                [
                    _gptq(w[g * og : (g + 1) * og], scale[g * og : (g + 1) * og], qmax, hessian[g])
                    for g in range(group)
                ]
            )
    return wq.astype(np.int8), scale


def _nearest(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    return np.clip(np.round(w / scale[:, None]), -qmax, qmax)


def _gptq(w: np.ndarray, scale: np.ndarray, qmax: int, h: np.ndarray) -> np.ndarray:
    """Integer weights of one group, columns rounded with the error compensated, the inputs
    of largest second moment first (GPTQ's activation order: their errors are the costliest,
    and compensating for them leaves the cheap inputs to absorb it); to nearest when the
    calibration data do not determine the output error (see :func:`determined`). Runs under
    :func:`quantize_per_channel`'s one-BLAS-thread limit."""
    if not determined(h):
        return _nearest(w, scale, qmax)
    h = h.astype(np.float64)
    dead = np.flatnonzero(np.diag(h) == 0)  # inputs zero on every calibration row:
    h[dead, dead] = 1.0  # decoupled, so rounded to nearest (not zeroed: other data reach them)
    h[np.diag_indices_from(h)] += GPTQ_DAMP * np.mean(np.diag(h))
    order = np.argsort(-np.diag(h), kind="stable")
    w = w[:, order].astype(np.float64)  # a copy: the compensation updates it
    u = _upper_factor_of_inverse(h[np.ix_(order, order)])
    q = np.empty_like(w)
    k = w.shape[1]
    for b0 in range(0, k, GPTQ_BLOCK):
        b1 = min(b0 + GPTQ_BLOCK, k)
        err = np.zeros((w.shape[0], b1 - b0))
        for i in range(b0, b1):
            q[:, i] = np.clip(np.round(w[:, i] / scale), -qmax, qmax)
            err[:, i - b0] = (w[:, i] - q[:, i] * scale) / u[i, i]
            w[:, i + 1 : b1] -= np.outer(err[:, i - b0], u[i, i + 1 : b1])
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return q[:, np.argsort(order)]


def _upper_factor_of_inverse(h: np.ndarray) -> np.ndarray:
    """U upper-triangular with U^T U = H^-1, from one Cholesky factorisation and one
    triangular inverse (a third of inverting H and factorising the inverse): with J the
    reversal, J H J = L L^T gives U = J L^-1 J."""
    from scipy.linalg import lapack

    lower = np.linalg.cholesky(h[::-1, ::-1])
    inv, info = lapack.dtrtri(lower, lower=1)
    if info:
        raise np.linalg.LinAlgError(f"singular Cholesky factor (dtrtri info {info})")
    return inv[::-1, ::-1]


def determined(h: np.ndarray) -> bool:
    """Whether the input moments H determine the output error on every input the calibration
    data reach: every live input keeps some variance not explained by the inputs before it
    (its Cholesky pivot, relative to its own variance, above float32's resolution: the moments
    are sums of float32 products). Where some do not (fewer independent calibration rows than
    weights per row: a classifier head fed one row per sample), directions of the input were
    never seen, and compensating rounding errors along them fits the calibration set instead
    of the layer (measured on openwakeword's heads: 5 of 96 clips lost, none with this rule)."""
    live = np.flatnonzero(np.diag(h) > 0)
    if live.size == 0:
        return False
    sub = h if live.size == len(h) else h[np.ix_(live, live)]
    try:
        pivots = np.diag(np.linalg.cholesky(sub)) ** 2
    except np.linalg.LinAlgError:  # not positive definite: singular to rounding
        return False
    return bool(np.all(pivots > np.diag(sub) * live.size * np.finfo(np.float32).eps))


def quantized_weights(w: np.ndarray, bits: int) -> np.ndarray:
    """W[O, K] on its ``bits``-bit per-channel grid, as float64: the weights a QuantMVM holds."""
    wq, scale = quantize_per_channel(w, bits)
    return wq.astype(np.float64) * scale[:, None]


def to_quant_mvm(graph: Graph, node: Node, bits: int, hessian: np.ndarray | None = None) -> Node:
    """Rewrite a float CiM layer as an N-bit per-channel ``cimc.QuantMVM`` (GPTQ-rounded when
    given the layer's input moments)."""
    w = weight_matrix(node, graph)
    wq, scale = quantize_per_channel(w, bits, hessian)
    attrs = {**unfold_attrs(node, graph), "k": int(w.shape[1])}
    meta = {"compression": {"scheme": "int", "bits": bits, "weight": w.astype(np.float32)}}
    bias = bias_vector(node, graph, w.shape[0])
    return rewrite_as_cim_op(
        graph, node, QUANT_OP, [("wq", wq), ("wscale", scale), ("bias", bias)], attrs, meta
    )
