"""CIMPool's 1-bit error term, its scale beta, and its structured pruning.

For a pool-compressed layer the residual R = W - alpha * P[idx] is approximated by beta * E with
E = sign(R) in {-1, +1}, one bit per weight, held in the second (error) array. beta is the
least-squares scale: the mean |R| over kept positions, or, with calibration moments, the value
minimising the layer's output error. Pruning keeps, for each group of ``group`` consecutive
output channels and each vector slot, the same ``keep * V`` positions, chosen in runs of
``chunk`` rows by largest summed |R| (weighted by input energy with calibration moments): the
error array then needs only keep * V rows per slot, and a mask of V / chunk bits per
(group, slot) tells the mask multiplexer which inputs to route.
"""

from __future__ import annotations

import numpy as np

from cimc.cim_ops import dense_weights

KEEP_CHOICES = (1.0, 0.5, 0.25)


def pool_residual(
    w: np.ndarray, pool: np.ndarray, idx: np.ndarray, alpha: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """R = W - alpha P[idx] as [O, G, V] (zero at padding) and the real-position mask [G, V]."""
    w = w.astype(np.float64)
    o, k = w.shape
    v = pool.shape[1]
    g = idx.shape[1]
    padded = np.zeros((o, g * v))
    padded[:, :k] = w
    r = (padded - dense_weights(pool, idx, alpha)).reshape(o, g, v)
    real = np.arange(g * v) < k
    r.reshape(o, -1)[:, ~real] = 0.0
    return r, real.reshape(g, v)


def least_squares_beta(r: np.ndarray, e: np.ndarray, moments: np.ndarray | None) -> float:
    """beta minimising ||R - beta E||^2, or the output error sum_g (r - beta e)^T C_g (.)."""
    if moments is None:
        den = float(np.sum(e * e))
        return float(np.sum(r * e)) / den if den else 0.0
    group = moments.shape[0]
    og = r.shape[0] // group
    num = den = 0.0
    for gr in range(group):
        sl = slice(gr * og, (gr + 1) * og)
        ce = np.matmul(e[sl].astype(np.float64).transpose(1, 0, 2), moments[gr]).transpose(1, 0, 2)
        num += float(np.sum(r[sl] * ce))
        den += float(np.sum(e[sl] * ce))
    return num / den if den else 0.0


def _signs(r: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """err int8: sign(R) (0 counts as +1) where ``kept``, 0 elsewhere."""
    return np.where(r >= 0, 1, -1).astype(np.int8) * kept.astype(np.int8)


def full_error(
    r: np.ndarray, real: np.ndarray, moments: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """(err[O, G, V] int8, beta): the signs of R at every real position and their beta."""
    e = _signs(r, real[None])
    return e, least_squares_beta(r, e, moments)


def structured_mask(score: np.ndarray, keep: float, group: int, run: int) -> np.ndarray:
    """mask[n_groups, G, V] keeping the best keep*V/run runs of each (group, slot)."""
    o, g, v = score.shape
    n_groups = -(-o // group)
    per_group = np.zeros((n_groups, g, v))
    for gr in range(n_groups):
        per_group[gr] = score[gr * group : (gr + 1) * group].sum(axis=0)
    runs = per_group.reshape(n_groups, g, v // run, run).sum(axis=3)
    n_keep = int(round(keep * v / run))
    order = np.argsort(-runs, axis=2, kind="stable")[:, :, :n_keep]
    keep_runs = np.zeros_like(runs, dtype=bool)
    np.put_along_axis(keep_runs, order, True, axis=2)
    return np.repeat(keep_runs, run, axis=2)


def pruned_error(
    r: np.ndarray,
    real: np.ndarray,
    keep: float,
    group: int,
    chunk: int,
    moments: np.ndarray | None = None,
) -> tuple[np.ndarray, float, np.ndarray]:
    """(err[O, G, V] int8, beta, mask[groups, G, V]) for residual R: the signs of R at the kept
    positions, the least-squares beta on them, and the structured mask."""
    score = np.abs(r)
    if moments is not None:
        energy = np.sqrt(np.einsum("ngvv->ngv", moments).mean(axis=0))
        score = score * energy[None]
    mask = structured_mask(score, keep, group, chunk)
    e = _signs(r, np.repeat(mask, group, axis=0)[: r.shape[0]] & real[None])
    return e, least_squares_beta(r, e, moments), mask
