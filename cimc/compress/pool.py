"""The network's shared binary pool P[S, V] in {-1, +1}: k-means, random or Hadamard rows.

One pool serves every compressed layer (CIMPool); ``cimc.train`` builds it once from the
pretrained weights and freezes it, the weight-pool pass builds it from the weights it compiles.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import hadamard

from .vectors import pack_vectors

INITS = ("kmeans", "random", "hadamard")
POOL_SAMPLE = 16384  # vectors k-means sees: 16k pin 128 binary centres down well


def _distinct_rows(pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace repeated rows by fresh random sign vectors: every array column must differ."""
    seen: set[bytes] = set()
    for s in range(len(pool)):
        while pool[s].tobytes() in seen:
            pool[s] = rng.choice(np.array([-1, 1], dtype=np.int8), size=pool.shape[1])
        seen.add(pool[s].tobytes())
    return pool


def make_pool(
    x: np.ndarray, size: int, vector: int, init: str, rng: np.random.Generator, iters: int = 20
) -> np.ndarray:
    """The binary pool P[S, V] (int8 +-1) from the sample ``x`` of weight vectors.

    ``kmeans``: k-means on the sign-constrained centres that the assignment later uses: each
    round assigns vectors to the centre of largest dot product and sets each centre to the sign
    of its members' sum (the binary vector maximising that sum). ``random``: seeded signs.
    ``hadamard``: rows of a Hadamard matrix (and their negations when S > V).
    """
    if init == "hadamard":
        h = hadamard(vector).astype(np.int8)
        rows = np.concatenate([h, -h])
        return np.ascontiguousarray(rows[:size])
    if init == "random":
        pool = rng.choice(np.array([-1, 1], dtype=np.int8), size=(size, vector))
        return _distinct_rows(pool, rng)
    if len(x) < size:
        extra = rng.standard_normal((size - len(x), vector))
        x = np.concatenate([x, extra])
    pool = np.where(x[rng.choice(len(x), size, replace=False)] >= 0, 1, -1).astype(np.int8)
    for _ in range(iters):
        label = np.argmax(x @ pool.T.astype(np.float64), axis=1)
        sums = np.zeros((size, vector))
        np.add.at(sums, label, x)
        counts = np.bincount(label, minlength=size)
        new = np.where(sums >= 0, 1, -1).astype(np.int8)
        empty = counts == 0
        if empty.any():
            new[empty] = np.where(
                x[rng.choice(len(x), int(empty.sum()), replace=False)] >= 0, 1, -1
            )
        if np.array_equal(new, pool):
            break
        pool = new
    return _distinct_rows(pool, rng)


def pool_sample(
    weights: dict[str, np.ndarray],
    packed: dict[str, np.ndarray],
    vector: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A seeded sample of at most POOL_SAMPLE non-zero weight vectors over all layers, each
    divided by its layer's RMS so that no layer dominates. Only the sampled vectors are copied
    (ResNet-50 has 184k vectors)."""
    parts = [packed[name].reshape(-1, vector) for name in weights]
    scales = [np.sqrt(np.mean(w**2)) or 1.0 for w in weights.values()]
    nonzero = [np.flatnonzero(np.any(part != 0, axis=1)) for part in parts]
    offsets = np.cumsum([0] + [len(nz) for nz in nonzero])
    total = int(offsets[-1])
    picked = np.arange(total)
    if total > POOL_SAMPLE:
        picked = rng.choice(total, POOL_SAMPLE, replace=False)
    layer_of = np.searchsorted(offsets, picked, side="right") - 1
    x = np.empty((len(picked), vector))
    for li, (part, nz, scale) in enumerate(zip(parts, nonzero, scales)):
        at = np.flatnonzero(layer_of == li)
        x[at] = part[nz[picked[at] - offsets[li]]] / scale
    return x


def build_pool(
    weights: dict[str, np.ndarray],
    size: int,
    vector: int,
    init: str,
    seed: int,
    packed: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """The network's pool from its compressed layers' W[O, K]: what the pass computes, and
    what ``cimc.train`` freezes before tuning. ``packed`` may give the layers' vectors
    already cut by ``pack_vectors``."""
    rng = np.random.default_rng(seed)
    x = np.zeros((0, vector))
    if init == "kmeans":
        packed = packed or {name: pack_vectors(w, vector) for name, w in weights.items()}
        x = pool_sample(weights, packed, vector, rng)
    return make_pool(x, size, vector, init, rng)
