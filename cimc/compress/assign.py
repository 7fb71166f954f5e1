"""Assignment: each weight vector becomes alpha * P[idx] for the pool vector that fits it best.

Rules: ``nearest`` (largest score per vector) or ``non-repeating`` (indices distinct within
each block of S output channels and each slot, an exact linear assignment). alpha, the
least-squares scale, is one per layer or one per output channel.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

RULES = ("nearest", "non-repeating")
SCALES = ("per-layer", "per-channel")


def _choose(score: np.ndarray, rule: str, block: int) -> np.ndarray:
    """idx[O, G] maximising ``score[O, G, S]``; ``non-repeating`` keeps indices distinct within
    each block of S output channels and each slot g (an exact linear assignment)."""
    if rule == "nearest":
        return np.argmax(score, axis=2).astype(np.int32)
    o, g, s = score.shape
    idx = np.empty((o, g), dtype=np.int32)
    for start in range(0, o, block):
        stop = min(start + block, o)
        for gi in range(g):
            rows, cols = linear_sum_assignment(score[start:stop, gi, :], maximize=True)
            idx[start + rows, gi] = cols
    return idx


def _alpha(num: np.ndarray, den: np.ndarray, per_channel: bool) -> np.ndarray:
    """Least-squares scale from per-channel numerators and denominators."""
    if per_channel:
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
    return np.array([num.sum() / den.sum() if den.sum() > 0 else 0.0])


def assign(
    vecs: np.ndarray,
    pool: np.ndarray,
    k: int,
    rule: str,
    per_channel: bool,
    moments: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices idx[O, G] and scale alpha ([1] or [O]) for one layer's vectors [O, G, V].

    Without ``moments`` this minimises the weight error ||w - alpha P[idx]||^2. With the
    layer's input second moments C[group, G, V, V] it minimises the output error
    (w - alpha p)^T C_g (w - alpha p) (C_g lightly ridged), alternating indices and alpha.
    """
    o, g, v = vecs.shape
    s = pool.shape[0]
    p = pool.astype(np.float64)
    if moments is None:
        dots = np.matmul(vecs, p.T)  # [O, G, S]
        idx = _choose(dots, rule, s)
        picked = np.take_along_axis(dots, idx[:, :, None], axis=2)[:, :, 0]
        return idx, _alpha(picked.sum(axis=1), np.full(o, float(k)), per_channel)
    group = moments.shape[0]
    og = o // group
    # Scale-free, and a small ridge so that few calibration rows (a rank-deficient C) still
    # leave the weight error a say in directions the data never excited.
    moments = moments / (float(np.abs(moments).max()) or 1.0)
    ridge = 1e-2 * np.einsum("ngvv->ng", moments).mean(axis=(0, 1)) / v
    moments = moments + ridge * np.eye(v)
    u = np.empty((o, g, s), dtype=np.float32)  # p^T C_g w per (channel, slot, pool vector)
    q = np.empty((group, g, s), dtype=np.float32)  # p^T C_g p: the same for a whole group
    for gr in range(group):
        sl = slice(gr * og, (gr + 1) * og)
        pc = np.matmul(p[None], moments[gr])  # [G, S, V]
        q[gr] = np.einsum("gsv,sv->gs", pc, p)
        u[sl] = np.matmul(vecs[sl].transpose(1, 0, 2), pc.transpose(0, 2, 1)).transpose(1, 0, 2)
    q_of = q if group == 1 else q[np.arange(o) // og]
    # Seed alpha with mean-value scaling (exact when P[idx] = sign(w)), refine it with one
    # cheap argmax round, then assign with the rule and fit the final alpha.
    mean_abs = np.abs(vecs).sum(axis=(1, 2)) / k
    alpha = _alpha(mean_abs * k, np.full(o, float(k)), per_channel)
    for rule_now in ("nearest", rule):
        a = alpha[:, None, None] if per_channel else alpha[0]
        idx = _choose(2 * a * u - a * a * q_of, rule_now, s)
        num = np.take_along_axis(u, idx[:, :, None], axis=2)[:, :, 0].sum(axis=1, dtype=np.float64)
        den = np.take_along_axis(np.broadcast_to(q_of, u.shape), idx[:, :, None], axis=2)[:, :, 0]
        alpha = _alpha(num, den.sum(axis=1, dtype=np.float64), per_channel)
    return idx, alpha


def refit_alpha(
    vecs: np.ndarray, pool: np.ndarray, idx: np.ndarray, k: int, per_channel: bool
) -> np.ndarray:
    """The least-squares alpha ([1] or [O]) of vectors [O, G, V] for indices kept from an
    earlier assignment (``cimc.train`` reuses indices between refreshes)."""
    o = vecs.shape[0]
    picked = np.einsum("ogv,ogv->o", vecs, pool.astype(np.float64)[idx])
    return picked / k if per_channel else np.array([picked.sum() / (o * k)])
