"""weight-pool: replace weight vectors by indices into one shared binary pool (CIMPool).

Each compressed layer's W[O, K] (z-packed, K padded to G*V) is cut into G vectors of length V
per output channel; each becomes alpha * P[idx[o, g]] with P in {-1, +1}^{S x V} shared by the
whole network. Layers left out (by default the first, the last and depthwise convs, as in
Bit-serial Weight Pools, MLSys 2022) are stored as ``others``-bit per-channel integers.

The functions here are also what ``cimc.train`` calls, so fine-tuning and compilation compress
identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import hadamard
from scipy.optimize import linear_sum_assignment

from cimc.calibration import slot_moments
from cimc.cim_ops import (
    POOL_OP,
    bias_vector,
    float_cim_layers,
    is_depthwise,
    rewrite_as_cim_op,
    to_quant_mvm,
    unfold_attrs,
    weight_matrix,
)
from cimc.errors import OptionError
from cimc.ir import Graph, Node
from cimc.passes_base import Pass, PassContext, register_pass

POOL_VALUE = "cimc.pool"


def pack_vectors(w: np.ndarray, vector: int) -> np.ndarray:
    """W[O, K] -> [O, G, V], zero-padding K to a multiple of V."""
    o, k = w.shape
    g = -(-k // vector)
    out = np.zeros((o, g * vector), dtype=np.float64)
    out[:, :k] = w
    return out.reshape(o, g, vector)


def _distinct_rows(pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace repeated rows by fresh random sign vectors: every array column must differ."""
    seen: set[bytes] = set()
    for s in range(len(pool)):
        while pool[s].tobytes() in seen:
            pool[s] = rng.choice(np.array([-1, 1], dtype=np.int8), size=pool.shape[1])
        seen.add(pool[s].tobytes())
    return pool


def make_pool(
    vectors: np.ndarray, size: int, vector: int, init: str, seed: int, iters: int = 20
) -> np.ndarray:
    """The binary pool P[S, V] (int8 +-1).

    ``kmeans``: k-means on the sign-constrained centres that the assignment later uses: each
    round assigns vectors to the centre of largest dot product and sets each centre to the sign
    of its members' sum (the binary vector maximising that sum). Vectors are given per layer
    RMS-normalised, so no layer dominates. ``random``: seeded signs. ``hadamard``: rows of a
    Hadamard matrix (and their negations when S > V).
    """
    rng = np.random.default_rng(seed)
    if init == "hadamard":
        h = hadamard(vector).astype(np.int8)
        rows = np.concatenate([h, -h])
        return np.ascontiguousarray(rows[:size])
    if init == "random":
        pool = rng.choice(np.array([-1, 1], dtype=np.int8), size=(size, vector))
        return _distinct_rows(pool, rng)
    x = vectors[np.abs(vectors).sum(axis=1) > 0]
    if len(x) > 65536:
        x = x[rng.choice(len(x), 65536, replace=False)]
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
    (w - alpha p)^T C_g (w - alpha p), alternating indices and alpha twice.
    """
    o, g, v = vecs.shape
    s = pool.shape[0]
    p = pool.astype(np.float64)
    dots = np.einsum("ogv,sv->ogs", vecs, p, optimize=True)
    idx = _choose(dots, rule, s)
    picked = np.take_along_axis(dots, idx[:, :, None], axis=2)[:, :, 0]
    alpha = _alpha(picked.sum(axis=1), np.full(o, float(k)), per_channel)
    if moments is None:
        return idx, alpha
    group = moments.shape[0]
    og = o // group
    u = np.empty((o, g, s))
    q = np.empty((o, g, s))
    for gr in range(group):
        for gi in range(g):
            pc = p @ moments[gr, gi]  # [S, V]
            u[gr * og : (gr + 1) * og, gi] = vecs[gr * og : (gr + 1) * og, gi] @ pc.T
            q[gr * og : (gr + 1) * og, gi] = np.einsum("sv,sv->s", pc, p)
    for _ in range(2):
        a = alpha[:, None, None] if per_channel else alpha[0]
        idx = _choose(2 * a * u - a * a * q, rule, s)
        num = np.take_along_axis(u, idx[:, :, None], axis=2)[:, :, 0].sum(axis=1)
        den = np.take_along_axis(q, idx[:, :, None], axis=2)[:, :, 0].sum(axis=1)
        alpha = _alpha(num, den, per_channel)
    return idx, alpha


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


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@register_pass
@dataclass(frozen=True)
class WeightPool(Pass):
    """Compress CiM layers to indices into a shared binary pool (CIMPool)."""

    name = "weight-pool"
    vector: int = 128
    pool: int = 128
    init: str = "kmeans"
    assign: str = "non-repeating"
    scale: str = "per-layer"
    seed: int = 0
    skip_first: bool = True
    skip_depthwise: bool = True
    skip_last: bool = True
    others: int = 8

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {
            "vector": (32, 64, 128),
            "pool": (64, 128, 256),
            "init": ("kmeans", "random", "hadamard"),
            "assign": ("nearest", "non-repeating"),
            "scale": ("per-layer", "per-channel"),
        }

    def validate(self) -> None:
        self.check_range("vector", 1, 4096)
        self.check_range("pool", 2, 65536)
        if not _is_power_of_two(self.pool):
            raise OptionError(
                f"weight-pool: option pool={self.pool} must be a power of two (2, 4, ..., 128, "
                "256, ...): an index uses log2(pool) bits and every code must name a pool vector"
            )
        self.check_choice("init", ("kmeans", "random", "hadamard"))
        self.check_choice("assign", ("nearest", "non-repeating"))
        self.check_choice("scale", ("per-layer", "per-channel"))
        self.check_choice("others", (0, 2, 3, 4, 5, 6, 7, 8))
        if self.init == "hadamard" and (
            not _is_power_of_two(self.vector) or self.pool > 2 * self.vector
        ):
            raise OptionError(
                f"weight-pool: init=hadamard needs vector a power of two and pool <= 2*vector "
                f"(got vector={self.vector}, pool={self.pool}); use init=kmeans or random"
            )

    def run(self, graph: Graph, ctx: PassContext) -> None:
        chosen, left = select_layers(graph, self.skip_first, self.skip_depthwise, self.skip_last)
        for n in chosen:
            packed = n.meta.get("zpack", {}).get("vector", self.vector)
            if packed != self.vector:
                raise OptionError(
                    f"weight-pool: vector={self.vector} but zpack laid out layer {n.name!r} with "
                    f"vector={packed}; give both passes the same vector"
                )
        weights = {n.name: weight_matrix(n, graph).astype(np.float64) for n in chosen}
        vecs = {name: pack_vectors(w, self.vector) for name, w in weights.items()}
        moments = None
        if ctx.calibration:
            attrs = {n.name: unfold_attrs(n, graph) for n in chosen}
            moments = slot_moments(graph, ctx.calibration, attrs, self.vector)
            ctx.state["slot_moments"] = moments
        sample = [
            v.reshape(-1, self.vector) / (np.sqrt(np.mean(weights[name] ** 2)) or 1.0)
            for name, v in vecs.items()
        ]
        stacked = np.concatenate(sample) if sample else np.zeros((0, self.vector))
        pool = make_pool(stacked, self.pool, self.vector, self.init, self.seed)
        pool_value = graph.add_constant(graph.unique_name(POOL_VALUE), pool).name
        for n in chosen:
            w = weights[n.name]
            idx, alpha = assign(
                vecs[n.name],
                pool,
                w.shape[1],
                self.assign,
                self.scale == "per-channel",
                None if moments is None else moments[n.name],
            )
            attrs = {**unfold_attrs(n, graph), "k": int(w.shape[1]), "vector": self.vector}
            meta = {
                "compression": {
                    "scheme": "pool",
                    "weight": w.astype(np.float32),
                    "vector": self.vector,
                    "pool_size": self.pool,
                    "assign": self.assign,
                    "scale": self.scale,
                    "calibrated": moments is not None,
                }
            }
            operands = [
                ("pool", pool_value),
                ("idx", idx),
                ("err", None),
                ("alpha", alpha),
                ("beta", None),
                ("bias", bias_vector(n, graph, w.shape[0])),
            ]
            rewrite_as_cim_op(graph, n, POOL_OP, operands, attrs, meta)
        if self.others:
            for n in left:
                to_quant_mvm(graph, n, self.others)
        graph.prune_unused()
