"""weight-pool: replace weight vectors by indices into one shared binary pool (CIMPool).

Each compressed layer's W[O, K] (z-packed, K padded to G*V) is cut into G vectors of length V
per output channel; each becomes alpha * P[idx[o, g]] with P in {-1, +1}^{S x V} shared by the
whole network. Layers left out (by default the first, the last and depthwise convs, as in
Bit-serial Weight Pools, MLSys 2022) are stored as ``others``-bit per-channel integers.

The functions here are also what ``cimc.train`` calls, so fine-tuning and compilation compress
identically.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

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
from cimc.passes_base import Pass, PassContext, PassResult, register_pass

POOL_VALUE = "cimc.pool"


def pack_vectors(w: np.ndarray, vector: int) -> np.ndarray:
    """W[O, K] -> [O, G, V], zero-padding K to a multiple of V (a view of W when K is one)."""
    o, k = w.shape
    g = -(-k // vector)
    if k == g * vector:
        return np.asarray(w, dtype=np.float64).reshape(o, g, vector)
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


POOL_SAMPLE = 16384  # vectors k-means sees: 16k pin 128 binary centres down well


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


ASSIGNMENT_FORMAT = "cimc-assignment-1"


def read_assignment(path: str) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """(pool, {weight initializer name: {field: array}}) from an assignment file.

    The file is an .npz with ``format`` = ``cimc-assignment-1``, ``pool`` int8 [S, V], and per
    compressed layer, keyed ``<weight name>|<field>``: ``idx`` [O, G], ``alpha`` [1 or O], and
    with an error term ``err`` int8 [O, G, V], ``beta`` [1], ``keep``, and when keep < 1
    ``mask`` bool [groups, G, V], ``group``, ``chunk`` (the error-prune layout)."""
    file = Path(path)
    if not file.is_file():
        raise OptionError(
            f"weight-pool: assignment file {file} does not exist; give the .npz that "
            "cimc.train's export wrote next to the ONNX model"
        )
    try:
        with np.load(file) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OptionError(
            f"weight-pool: assignment file {file} is not a readable .npz ({exc})"
        ) from None
    if str(data.get("format", "")) != ASSIGNMENT_FORMAT or "pool" not in data:
        raise OptionError(
            f"weight-pool: {file} is not a cimc assignment file (format {ASSIGNMENT_FORMAT}); "
            "write one with cimc.train.export_model"
        )
    layers: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in data.items():
        name, sep, field_ = key.rpartition("|")
        if sep:
            layers.setdefault(name, {})[field_] = arr
    return data["pool"], layers


def install_assignment(graph: Graph, opts: WeightPool, chosen: list[Node], left: list[Node]):
    """Install a learned assignment as it is: pool, idx, alpha, and err/beta when present.

    Each chosen layer's weight must be what the file reconstructs (alpha P[idx] + beta err, to
    float32 precision): the ONNX that cimc.train exported holds exactly that weight. Layers get
    ``meta['compression']['learned'] = True``; error-term and error-prune leave them alone."""
    where = f"weight-pool: assignment file {opts.assignment}"
    pool, layers = read_assignment(opts.assignment)
    if pool.shape != (opts.pool, opts.vector):
        raise OptionError(
            f"{where} holds a pool of {pool.shape[0]} x {pool.shape[1]} but the pass has "
            f"pool={opts.pool}, vector={opts.vector}; set weight-pool{{pool={pool.shape[0]},"
            f"vector={pool.shape[1]}}} and zpack{{vector={pool.shape[1]}}}"
        )
    names = {n.inputs[1] for n in chosen}
    extra, missing = sorted(set(layers) - names), sorted(names - set(layers))
    if extra or missing:
        raise OptionError(
            f"{where} does not match the graph: in the file but not compressed here: "
            f"{extra or 'none'}; compressed here but not in the file: {missing or 'none'}. "
            "Compile the ONNX model exported with that file, with the same skip-* options "
            "and without fold-bn (it renames and changes the weights)"
        )
    pool = pool.astype(np.int8)
    s, v = pool.shape
    pool_value = graph.add_constant(graph.unique_name(POOL_VALUE), pool).name
    for n in chosen:
        lay = layers[n.inputs[1]]
        w = weight_matrix(n, graph).astype(np.float64)
        o, k = w.shape
        g = -(-k // v)
        idx = np.asarray(lay.get("idx", np.zeros(0)))
        alpha = np.asarray(lay.get("alpha", np.zeros(0)), dtype=np.float64).reshape(-1)
        err = lay.get("err")
        beta = np.asarray(lay.get("beta", np.zeros(1)), dtype=np.float64).reshape(-1)
        bad = (
            idx.shape != (o, g)
            or idx.dtype.kind not in "iu"
            or (idx.size and (idx.min() < 0 or idx.max() >= s))
            or alpha.size not in (1, o)
            or (err is not None and (err.shape != (o, g, v) or beta.size != 1))
        )
        if bad:
            raise OptionError(
                f"{where}: layer {n.name!r} (weight {n.inputs[1]!r}, W {o}x{k}, {g} vectors of "
                f"{v}) needs idx[{o},{g}] in [0, {s}), alpha[1 or {o}] and optionally "
                f"err[{o},{g},{v}] with beta[1]; the file has idx{list(idx.shape)}, "
                f"alpha{list(alpha.shape)}" + ("" if err is None else f", err{list(err.shape)}")
            )
        idx = idx.astype(np.int32)
        recon = pool[idx].astype(np.float64) * (
            alpha.reshape(-1, 1, 1) if alpha.size > 1 else alpha[0]
        )
        if err is not None:
            recon = recon + beta[0] * err.astype(np.float64)
        recon = recon.reshape(o, -1)[:, :k]
        gap = float(np.max(np.abs(recon - w))) if w.size else 0.0
        if gap > 1e-5 * max(float(np.max(np.abs(w))), 1e-30):
            raise OptionError(
                f"{where} does not reproduce the weights of layer {n.name!r} (max error {gap:.3g}"
                f", max |w| {np.max(np.abs(w)):.3g}): the file belongs to another model, or a "
                "pass before weight-pool changed the weights (compile fine-tuned models "
                "without fold-bn)"
            )
        comp = {
            "scheme": "pool",
            "weight": w.astype(np.float32),
            "vector": v,
            "pool_size": s,
            "assign": "learned",
            "scale": "per-channel" if alpha.size > 1 else "per-layer",
            "calibrated": False,
            "learned": True,
        }
        if err is not None:
            keep = float(lay.get("keep", 1.0))
            comp["error_keep"] = keep
            if keep < 1.0:
                if "mask" not in lay or "chunk" not in lay:
                    raise OptionError(
                        f"{where}: layer {n.name!r} has keep={keep} but no mask/chunk"
                    )
                comp.update(
                    error_group=int(lay.get("group", 128)),
                    error_chunk=int(lay["chunk"]),
                    error_mask=lay["mask"].astype(bool),
                )
        attrs = {**unfold_attrs(n, graph), "k": int(k), "vector": v}
        operands = [
            ("pool", pool_value),
            ("idx", idx),
            ("err", None if err is None else err.astype(np.int8)),
            ("alpha", alpha),
            ("beta", None if err is None else beta[:1]),
            ("bias", bias_vector(n, graph, o)),
        ]
        rewrite_as_cim_op(graph, n, POOL_OP, operands, attrs, {"compression": comp})
    if opts.others:
        for n in left:
            to_quant_mvm(graph, n, opts.others)
    graph.prune_unused()


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@register_pass
@dataclass(frozen=True)
class WeightPool(Pass):
    """Compress CiM layers to indices into a shared binary pool (CIMPool).

    ``assignment`` names a file written by ``cimc.train`` (fine-tuning): its pool, indices,
    alpha and error terms are installed as they are instead of being computed (see
    :func:`install_assignment`)."""

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
    assignment: str = ""

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

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        chosen, left = select_layers(graph, self.skip_first, self.skip_depthwise, self.skip_last)
        for n in chosen:
            packed = n.meta.get("zpack", {}).get("vector", self.vector)
            if packed != self.vector:
                raise OptionError(
                    f"weight-pool: vector={self.vector} but zpack laid out layer {n.name!r} with "
                    f"vector={packed}; give both passes the same vector"
                )
        if self.assignment:
            install_assignment(graph, self, chosen, left)
            return PassResult(changed=True, summary=f"{len(chosen)} learned layers installed")
        weights = {n.name: weight_matrix(n, graph).astype(np.float64) for n in chosen}
        vecs = {name: pack_vectors(w, self.vector) for name, w in weights.items()}
        moments = None
        if ctx.calibration:
            attrs = {n.name: unfold_attrs(n, graph) for n in chosen}
            moments = slot_moments(graph, ctx.calibration, attrs, self.vector)
            ctx.state["slot_moments"] = moments
        pool = build_pool(weights, self.pool, self.vector, self.init, self.seed, vecs)
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
        return PassResult(changed=bool(chosen), summary=f"{len(chosen)} layers pooled")
