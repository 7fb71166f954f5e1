"""Label-free fine-tuning of an imported ONNX model: distillation from its own fp32 outputs.

The imported graph runs in torch (:mod:`cimc.torch_backend`); :class:`CompressedGraph` puts
each CiM layer (Conv/Gemm/MatMul with a constant weight) through a
:class:`~cimc.train.layers.CimLayer` in the role the compiler gives it (weight-pool: first,
last and depthwise layers at ``others`` bits, the rest on the pool; quantize-weights: first
and last at 8 bits), and quantises its input with an :class:`~cimc.train.layers.ActQuant`
whose range is calibrated as ``quantize-act{method=max}`` calibrates it (the training keeps
the extremes). The student learns to match the fp32 graph's outputs on unlabelled inputs
(KL divergence of the softmax for class scores, optionally class-balanced, cross-entropy for
a single probability, MSE scaled by the teacher's variance otherwise), with random shifts and
noise; Adam, cosine decay, seeded.

:func:`export` writes the model with the fine-tuned weights (the compressed ones, as in
:mod:`cimc.train.export`) and the assignment file, so
``zpack,weight-pool{assignment=FILE},quantize-act{method=max}`` compiles the same numbers.
Like ``cimc train``, BatchNorm is not folded: its per-channel scale stays free for the pool.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from cimc.atomic import atomic_path
from cimc.cim_ops import bias_vector, float_cim_layers, weight_matrix
from cimc.compress import build_pool, quantized_weights, select_layers, write_assignment
from cimc.control_flow import subgraph_nodes
from cimc.errors import CimcError, FeedError
from cimc.ir import Graph, Node
from cimc.pass_manager import load_calibration
from cimc.program import graph_digest
from cimc.recurrent import constant_name, direction_from_weights, direction_weights, weight_tags
from cimc.sensitivity import rank_sensitive
from cimc.torch_backend import TORCH_OPS, GraphModule, run_batched, torch_dtype
from cimc.weight_sharing import SOURCE_KEY, distinct_weights, weight_groups

from .export import assignment_fields
from .finetune import random_shift
from .layers import CimLayer, Scheme

ProgressFn = Callable[[int, int, float], None]  # (done steps, total steps, loss)


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    shift: int = 2  # pixels, for inputs of rank 4 (N C H W)
    noise: float = 0.02  # gaussian noise, as a fraction of the data's standard deviation
    calib: int = 256  # samples that calibrate activation ranges (the compiler's calibration)
    recalibrate: int = 50  # steps between activation-range calibrations
    min_samples: int = 16
    loss: str = "auto"  # auto, kl, mse
    features: float = 0.0  # weight of the CiM layers' inputs matched to fp32's (MSE/variance)
    # Class scores: weight each row's KL by the frequency of the teacher's top class in the
    # batch to the power -balance (weights averaging 1): 0 is the plain mean, 1 gives every class
    # the teacher predicts the same share. When one class dominates the rows (a CTC model's
    # blank: ~75 % of ddddocr's frames), the plain mean is mostly that class, and the rare rows
    # that carry the task (characters) barely move it; between 0 and 1 the dominant class keeps
    # part of its share (full balance turned some of ddddocr's blanks into characters).
    balance: float = 0.0
    # Steps over which the forward weight moves linearly from fp32 to compressed (0: compressed
    # from the first step): a deep chain of weak pooled copies loses its signal at once, while a
    # gradual move lets the layers after each one follow it.
    blend: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.balance >= 0:  # also refuses nan: every caller, the CLI and the benchmark
            raise DistillError(f"balance {self.balance}: give a power >= 0 (1: every class alike)")
        if not 0 <= self.blend <= self.steps:
            raise DistillError(f"blend {self.blend}: give 0 to {self.steps} steps (the --steps)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DistillError(CimcError):
    """Bad input to label-free fine-tuning (data, checkpoint)."""


@dataclass(frozen=True)
class Downstream:
    """Frozen fp32 graphs that read the model's first output, every ``window`` consecutive rows
    of a sample's output one input (openwakeword's wake-word heads read 16 consecutive
    embeddings). Their outputs are distilled too, so the student minimises the errors they
    amplify rather than an error spread evenly over the features."""

    graphs: tuple[Graph, ...]
    window: int = 1

    def digest(self) -> list[str]:
        return [graph_digest(g) for g in self.graphs] + [str(self.window)]

    def modules(self, sample: tuple[int, ...]) -> list[GraphModule]:
        """One frozen module per graph; refuses graphs the output rows cannot feed."""
        size = math.prod(sample)
        for g in self.graphs:
            shape = tuple(g.values[g.inputs[0]].shape)
            row = math.prod(shape) // self.window
            fits = row * self.window == math.prod(shape) and size % row == 0
            if len(g.inputs) != 1 or not fits or size // row < self.window:
                raise DistillError(
                    f"downstream graph {g.name!r} (input {shape}) cannot read windows of "
                    f"{self.window} rows of the model's output {sample}: give a graph with one "
                    "input whose size is window x a divisor of the output's size"
                )
        return [GraphModule(g).eval().requires_grad_(False) for g in self.graphs]

    def __call__(self, modules: list[GraphModule], out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every graph's outputs on every window of ``out`` [N, *sample]: [N * windows, ...]."""
        results: list[torch.Tensor] = []
        for g, m in zip(self.graphs, modules):
            shape = tuple(g.values[g.inputs[0]].shape)
            rows = out.reshape(len(out), -1, math.prod(shape) // self.window)
            wins = rows.unfold(1, self.window, 1).transpose(2, 3)  # N, W, window, row
            x = wins.reshape(-1, *shape)
            results.extend(run_batched(m, {g.inputs[0]: x}, g.inputs))
        return tuple(results)


def _roles(
    graph: Graph, scheme: Scheme, kept: frozenset[str] = frozenset()
) -> dict[str, tuple[str, int]]:
    """node name -> (CimLayer role, bits), as weight-pool / quantize-weights choose them;
    ``kept``: layers weight-pool would pool that stay at ``others`` bits (its keep_sensitive)."""
    layers = float_cim_layers(graph)
    if scheme.kind == "fp32":
        return {n.name: ("float", 0) for n in layers}
    if scheme.kind == "int":
        edges = {layers[0].name, layers[-1].name} if layers else set()
        return {n.name: ("int", 8 if n.name in edges else scheme.bits) for n in layers}
    chosen, left = select_layers(graph, True, True, True)
    roles = {n.name: ("pool", 0) for n in chosen}
    other = ("int", scheme.others) if scheme.others else ("float", 0)
    roles.update({n.name: other for n in left + [n for n in chosen if n.name in kept]})
    return roles


def sensitive_layers(
    graph: Graph, scheme: Scheme, data: dict[str, torch.Tensor], n: int
) -> frozenset[str]:
    """The ``n`` pooled layers whose pooling alone costs the most output fidelity on ``data``
    (ranked by :mod:`cimc.sensitivity` as ``weight-pool{keep_sensitive=n}`` ranks them): a
    deep chain of weak pooled copies loses its signal, so these stay at ``others`` bits. With
    them, every pooled layer that reads the same weight (the other steps of an unrolled LSTM:
    the ONNX file's one R holds them at one precision, so :func:`export` could not write a
    kept step beside pooled ones); :func:`export` writes how many were kept."""
    pooled = [name for name, (role, _) in _roles(graph, scheme).items() if role == "pool"]
    count = len(next(iter(data.values())))
    feeds = [{k: v[i].numpy() for k, v in data.items()} for i in range(count)]
    alone = replace(scheme, keep=None, act_bits=0).pipeline()  # the pool, no error term
    ranked = rank_sensitive(graph, feeds, alone, pooled, n)
    groups = weight_groups(graph, pooled).values()
    return frozenset(name for group in groups if ranked.intersection(group) for name in group)


def _torch_layer(node: Node, graph: Graph) -> nn.Module:
    """The Conv2d / Linear holding a CiM layer's weight (W[O, K] for Gemm/MatMul) and bias."""
    w = graph.values[node.inputs[1]].data
    if node.op == "Conv":
        o, cg, kh, kw = w.shape
        group = int(node.attrs.get("group", 1))
        layer: nn.Module = nn.Conv2d(cg * group, o, (kh, kw), groups=group, bias=False)
        layer.weight.data = torch.from_numpy(np.array(w, dtype=np.float32))
    else:
        wm = weight_matrix(node, graph)
        layer = nn.Linear(wm.shape[1], wm.shape[0], bias=False)
        layer.weight.data = torch.from_numpy(np.array(wm, dtype=np.float32))
    b = bias_vector(node, graph, w.shape[0] if node.op == "Conv" else layer.weight.shape[0])
    if b is not None:
        layer.bias = nn.Parameter(torch.from_numpy(np.array(b, dtype=np.float32)))
    return layer


def _onnx_weight(node: Node, w: torch.Tensor) -> torch.Tensor:
    """A CimLayer weight in the layout of the node's weight input."""
    if node.op == "Conv" or (node.op == "Gemm" and node.attrs.get("transB", 0)):
        return w
    return w.T


def _recompressed(m: CimLayer, lead: CimLayer) -> torch.Tensor:
    """The weight of a step whose role (``float`` or ``int``) differs from its recurrence's
    first step (the model's last CiM layer keeps 8 bits): the ONNX R holds the first step's
    compressed weight, and the compiler compresses that again for this step."""
    w = lead.effective_weight()
    if m.role == "float":
        return w
    hat = torch.from_numpy(quantized_weights(w.detach().double().numpy(), m.bits)).to(w.dtype)
    return w + (hat - w).detach() if (m.training and torch.is_grad_enabled()) else hat


def affine_constants(graph: Graph) -> dict[str, Node]:
    """The scale and shift of every BatchNormalization (constant name -> node): trained with
    the weights, they give each channel the free scale the pool's per-layer alpha lacks."""
    found = {}
    for n in graph.nodes():
        if n.op == "BatchNormalization":
            for name in n.inputs[1:3]:
                if graph.values[name].is_constant:
                    found[name] = n
    return found


class CompressedGraph(GraphModule):
    """The graph with every CiM layer compressed as the compiler compresses it under
    ``scheme`` (latent float weights trained through a straight-through estimator), the
    layers named in ``kept`` at ``others`` bits instead of on the pool."""

    def __init__(self, graph: Graph, scheme: Scheme, kept: frozenset[str] = frozenset()) -> None:
        super().__init__(graph, trainable=set(affine_constants(graph)))
        self.scheme, self.kept = scheme, kept
        self.roles = _roles(graph, scheme, kept)
        self.layer_nodes = [n for n in float_cim_layers(graph)]
        self.cim = nn.ModuleDict()
        self._key = {}
        self._lead: dict[str, str] = {}  # a step compressed otherwise -> the first step
        tied: dict[str, tuple[str, nn.Module]] = {}  # weight source -> its first layer
        for i, n in enumerate(self.layer_nodes):
            role, bits = self.roles[n.name]
            layer = _torch_layer(n, graph)
            lead, first = tied.setdefault(n.meta.get(SOURCE_KEY, n.name), (n.name, layer))
            if first is not layer and first.weight.shape == layer.weight.shape:
                # the steps of an unrolled recurrence: one trainable weight, so they cannot drift
                # apart (each keeps its own activation quantizer)
                layer.weight = first.weight
                if self.roles[lead] != (role, bits):
                    self._lead[n.name] = lead
            self._key[n.name] = f"l{i}"
            self.cim[f"l{i}"] = CimLayer(layer, role, bits, scheme)
        pooled = [n for n in self.layer_nodes if self.roles[n.name][0] == "pool"]
        if pooled:
            weights = {n.name: weight_matrix(n, graph).astype(np.float64) for n in pooled}
            distinct = distinct_weights(graph, weights)  # the pool weight-pool builds
            pool = build_pool(distinct, scheme.pool, scheme.vector, scheme.init, scheme.seed)
            for n in pooled:
                self.layer(n.name).pool = torch.from_numpy(pool.copy())
        self.capturing = False  # forward also returns every CiM layer's float input
        self.quantizing = True  # activation quantizers on (off while calibrating)

    def layer(self, name: str) -> CimLayer:
        return self.cim[self._key[name]]

    def blend(self, share: float) -> None:
        """Train with ``share`` of every compressed weight (the rest fp32; see CimLayer.blend)."""
        for m in self.cim.values():
            m.blend = share

    def forward(self, *inputs: torch.Tensor) -> Any:
        self._captured: dict[str, torch.Tensor] = {}
        outs = super().forward(*inputs)
        if self.capturing:
            return outs, tuple(self._captured[n.name] for n in self.layer_nodes)
        return outs

    def run_node(self, node: Node, args: list[Any]) -> list[torch.Tensor]:
        if node.name not in self._key:
            return super().run_node(node, args)
        m = self.layer(node.name)
        x = args[0]
        if self.capturing:  # float activations, as quantize-act sees them
            self._captured[node.name] = x
        if self.quantizing:
            x = m.act.quantize(x)
        if node.name in self._lead:
            w = _onnx_weight(node, _recompressed(m, self.layer(self._lead[node.name])))
        else:
            w = _onnx_weight(node, m.effective_weight())
        bias = [] if m.layer.bias is None else [m.layer.bias]  # MatMul takes none
        return [TORCH_OPS[node.op](node, x, w, *bias)]


# ---- data ---------------------------------------------------------------------------------------
def load_samples(path: str | Path, graph: Graph, minimum: int) -> dict[str, torch.Tensor]:
    """The graph inputs from an .npz (one array per input name, samples stacked along the
    first axis, as for calibration), as tensors [N, *graph input shape]."""
    feeds = load_calibration(str(path), graph, "data")
    if len(feeds) < minimum:
        raise FeedError(
            f"data {path} holds {len(feeds)} samples; label-free fine-tuning needs at least "
            f"{minimum} (hundreds are better): give more unlabelled inputs"
        )
    out = {}
    for name in graph.inputs:
        dtype = torch_dtype(graph.values[name].dtype)
        out[name] = torch.from_numpy(np.stack([f[name] for f in feeds])).to(dtype)
    return out


def augments(x: torch.Tensor, cfg: DistillConfig) -> bool:
    """Whether :func:`augment` changes samples ``x`` (float, with noise or shifted images)."""
    return x.is_floating_point() and bool(cfg.noise or (x.dim() == 5 and cfg.shift))


def augment(x: torch.Tensor, cfg: DistillConfig, std: float, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (images: rank-4 samples) and gaussian noise (float inputs)."""
    if not augments(x, cfg):
        return x
    shape = x.shape
    if len(shape) == 5 and cfg.shift:  # [N, 1, C, H, W]: one image per sample
        x = random_shift(x.reshape(-1, *shape[2:]), cfg.shift, gen).reshape(shape)
    if cfg.noise:
        x = x + cfg.noise * std * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x


# ---- loss ---------------------------------------------------------------------------------------
def output_kinds(outputs: tuple[torch.Tensor, ...], loss: str) -> list[str]:
    """Per output: ``probs`` (already a distribution), ``logits`` (class scores), ``score``
    (one probability, as a sigmoid gives: a detector's rare positives vanish under MSE) or
    ``values``."""
    kinds = []
    for t in outputs:
        if loss == "mse" or not t.is_floating_point():
            kinds.append("values")
        elif t.shape[-1] < 2:
            kinds.append(
                "score" if loss == "auto" and bool(((t >= 0) & (t <= 1)).all()) else "values"
            )
        elif bool((t >= 0).all()) and torch.allclose(t.sum(-1), torch.ones(()), atol=1e-4):
            kinds.append("probs")
        else:
            kinds.append("logits")
    return kinds


def balanced_kl(logq: torch.Tensor, p: torch.Tensor, power: float) -> torch.Tensor:
    """Mean over rows [R, C] of each row's KL(p || q), weighted by the frequency of the row's
    top teacher class among the rows to the power ``-power``, normalised so the weights average
    1: at 1 each class present gets the same share of the loss, however few rows it has
    (:attr:`DistillConfig.balance`)."""
    top = p.argmax(-1)
    weight = torch.bincount(top, minlength=p.shape[-1]).to(p.dtype)[top] ** -power
    weight = weight * len(weight) / weight.sum()
    return (weight * F.kl_div(logq, p, reduction="none").sum(-1)).mean()


def distill_loss(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    kinds: list[str],
    balance: float = 0.0,
) -> torch.Tensor:
    """The distillation loss summed over outputs; ``balance`` > 0: class scores through
    :func:`balanced_kl` instead of the plain mean of the rows' KL."""
    total = torch.zeros(())
    for s, t, kind in zip(student, teacher, kinds):
        if kind == "values":
            total = total + F.mse_loss(s, t) / (t.var() + 1e-8)
            continue
        if kind == "score":  # cross-entropy against the teacher's probability; not clamped: a
            # clamp has no gradient, so a student saturated below it would never recover
            total = total + F.binary_cross_entropy(s, t)
            continue
        s2, t2 = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        if kind == "probs":
            logq, p = torch.log(s2.clamp_min(1e-12)), t2
        else:
            logq, p = torch.log_softmax(s2, -1), torch.softmax(t2, -1)
        kl = balanced_kl(logq, p, balance) if balance else F.kl_div(logq, p, reduction="batchmean")
        total = total + kl
    return total


# ---- calibration --------------------------------------------------------------------------------
@torch.no_grad()
def calibrate(model: CompressedGraph, x: dict[str, torch.Tensor], batch: int = 64) -> None:
    """Each CiM layer's activation range: min and max of its float input over ``x`` with the
    compressed weights, as quantize-act{method=max} measures it on the compiled graph."""
    was = model.training
    model.eval()
    capturing = model.capturing
    model.capturing, model.quantizing = True, False
    lo = [math.inf] * len(model.layer_nodes)
    hi = [-math.inf] * len(model.layer_nodes)
    try:
        n = len(next(iter(x.values())))
        for start in range(0, n, batch):
            part = {k: v[start : start + batch] for k, v in x.items()}
            captured = run_batched(model, part, model.graph.inputs)[1]
            for i, c in enumerate(captured):
                lo[i] = min(lo[i], float(c.min()))
                hi[i] = max(hi[i], float(c.max()))
    finally:
        model.capturing, model.quantizing = capturing, True
        model.train(was)
    for i, n in enumerate(model.layer_nodes):
        act = model.layer(n.name).act
        act.lo.fill_(lo[i])
        act.hi.fill_(hi[i])
        act.seen.fill_(True)


@torch.no_grad()
def output_error(
    graph: Graph, model: nn.Module, data: dict[str, torch.Tensor], batch: int = 16
) -> float:
    """How far ``model``'s outputs are from fp32's on ``data``: the squared error over fp32's
    variance within each sample, summed over samples and averaged over the graph's outputs.

    On the distillation data this is the fit: when the fine-tuned student stays far above what
    int4 reaches on the same samples, the compression's bits are the limit, not the steps."""
    teacher = GraphModule(graph).eval()
    was = model.training
    model.eval()
    n = len(next(iter(data.values())))
    err = np.zeros(len(graph.outputs))
    var = np.zeros(len(graph.outputs))
    try:
        for start in range(0, n, batch):
            part = {k: v[start : start + batch] for k, v in data.items()}
            outs = zip(_run(model, part, graph.inputs)[0], _run(teacher, part, graph.inputs)[0])
            for i, (s, t) in enumerate(outs):
                s, t = s.double().flatten(1), t.double().flatten(1)
                err[i] += float(((s - t) ** 2).mean(1).sum())
                # one value a sample (a score): its mean square stands in for the variance
                var[i] += float(t.var(1).sum()) if t.shape[1] > 1 else float(t.square().sum())
    finally:
        model.train(was)
    return float(np.mean(err / np.maximum(var, 1e-30)))


def untrained_student(
    graph: Graph,
    scheme: Scheme,
    data: dict[str, torch.Tensor],
    cfg: DistillConfig,
    kept: frozenset[str] = frozenset(),
) -> CompressedGraph:
    """The student before any step (post-training compression), its activation ranges
    calibrated as :func:`distill` starts it."""
    student = CompressedGraph(graph, scheme, kept)
    if scheme.act_bits:
        calibrate(student, {k: v[: cfg.calib] for k, v in data.items()})
    return student.eval()


def features_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> Any:
    """Mean over CiM layers of the input's MSE to fp32's, scaled by its variance: a deep
    student whose every layer adds error learns layer by layer, not only through the output."""
    terms = [F.mse_loss(s, t) / (t.var() + 1e-8) for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def _run(model: nn.Module, feeds: dict[str, torch.Tensor], inputs: list[str]) -> tuple:
    """(outputs, CiM layer inputs) of ``model`` on a batch; no layer inputs unless capturing."""
    out = run_batched(model, feeds, inputs)
    return out if getattr(model, "capturing", False) else (out, ())


class _Targets:
    """The teacher's (outputs, layer inputs) for a step's picked samples. When it sees its
    samples unaugmented (``fixed``) and captures no layer inputs, each sample's outputs are
    computed once, alone (the same numbers whatever the order of the picks, or a resume), and
    kept: a step then runs only the student, and no sample runs more often than without."""

    def __init__(self, teacher: nn.Module, samples: dict[str, torch.Tensor], fixed: bool) -> None:
        self.teacher, self.samples = teacher, samples
        self.inputs = list(samples)
        self.keep = fixed and not getattr(teacher, "capturing", False)
        self.done = torch.zeros(len(next(iter(samples.values()))), dtype=torch.bool)
        self.outs: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, pick: torch.Tensor, batch: dict[str, torch.Tensor] | None) -> tuple:
        """For ``pick``: ``batch`` (None: the samples picked) through the teacher, or the kept
        outputs."""
        if not self.keep:
            fed = {k: v[pick] for k, v in self.samples.items()} if batch is None else batch
            return _run(self.teacher, fed, self.inputs)
        for i in torch.unique(pick[~self.done[pick]]).tolist():
            one = {k: v[i : i + 1] for k, v in self.samples.items()}
            out = _run(self.teacher, one, self.inputs)[0]
            if not self.outs:
                n = len(self.done)
                self.outs = [torch.empty((n, *o.shape[1:]), dtype=o.dtype) for o in out]
            for kept, o in zip(self.outs, out):
                kept[i] = o[0]
            self.done[i] = True
        return tuple(kept[pick] for kept in self.outs), ()


# ---- the loop -----------------------------------------------------------------------------------
def fingerprint(
    graph: Graph,
    scheme: Scheme,
    cfg: DistillConfig,
    downstream: Downstream | None = None,
    kept: frozenset[str] = frozenset(),
) -> str:
    """What a checkpoint belongs to: the graph, the scheme (pipeline, kept layers) and the
    recipe."""
    parts = [graph_digest(graph), scheme.to_dict(), cfg.to_dict()] + (
        [sorted(kept)] if kept else []
    )
    text = json.dumps(parts + (downstream.digest() if downstream else []), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def distill(
    graph: Graph,
    scheme: Scheme,
    data: dict[str, torch.Tensor],
    cfg: DistillConfig,
    *,
    teacher_data: dict[str, torch.Tensor] | None = None,
    downstream: Downstream | None = None,
    keep_sensitive: int | frozenset[str] = 0,
    log_path: str | Path | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    progress: ProgressFn | None = None,
) -> CompressedGraph:
    """Fine-tune ``graph`` compressed with ``scheme`` to match its fp32 outputs on ``data``
    (no labels); resumes from ``checkpoint`` when it exists (same graph, scheme and recipe).

    ``teacher_data``: the fp32 model's inputs, sample for sample, when they differ from the
    student's (a pipeline stage fed by an already compressed stage learns to undo its error);
    the teacher sees them without augmentation. ``downstream``: frozen graphs fed the first
    output, whose outputs are distilled as well (their kinds detected as for ``loss="auto"``).
    ``keep_sensitive``: that many pooled layers, the most sensitive on the calibration samples
    (:func:`sensitive_layers`), or these ones (ranked by the caller), stay at ``others`` bits;
    :func:`export`'s pipeline keeps them."""
    torch.manual_seed(cfg.seed)
    teacher: nn.Module = GraphModule(graph).eval()
    calib = {k: v[: cfg.calib] for k, v in data.items()}
    kept = (
        keep_sensitive
        if isinstance(keep_sensitive, frozenset)
        else sensitive_layers(graph, scheme, calib, keep_sensitive)
    )
    # calibrated here even when a checkpoint follows: it holds the ranges it trained with
    student = untrained_student(graph, scheme, data, cfg, kept)
    if cfg.features:  # both return their CiM layers' inputs too
        teacher = CompressedGraph(graph, Scheme(kind="fp32", keep=None, act_bits=0)).eval()
        teacher.capturing = student.capturing = True
    stds = {k: float(v.double().std()) if v.is_floating_point() else 0.0 for k, v in data.items()}
    n = len(next(iter(data.values())))
    with torch.no_grad():
        t_calib = {k: v[: cfg.calib] for k, v in (teacher_data or data).items()}
        t_out = _run(teacher, t_calib, graph.inputs)[0]
        kinds = output_kinds(t_out, cfg.loss)
        if downstream is not None:
            after = downstream.modules(tuple(t_out[0].shape[1:]))
            down_kinds = output_kinds(downstream(after, t_out[0]), "auto")
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    mark = fingerprint(graph, scheme, cfg, downstream, kept)
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists() and not ckpt.is_file():
        raise DistillError(f"checkpoint {ckpt} is not a file; remove it or give another -o folder")
    if ckpt is not None and ckpt.is_file():
        try:
            state = torch.load(ckpt, weights_only=False)
        except Exception as exc:  # torch raises many kinds on a damaged file
            raise DistillError(
                f"checkpoint {ckpt} is damaged ({type(exc).__name__}); delete it to start over"
            ) from None
        if not isinstance(state, dict) or state.get("fingerprint") != mark:
            raise DistillError(
                f"checkpoint {ckpt} belongs to another model, pipeline or recipe (written for "
                f"{state.get('what', 'something else') if isinstance(state, dict) else 'none'}); "
                "delete it or give another -o folder"
            )
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        start = state["step"]
    fixed = teacher_data is not None or not any(augments(v, cfg) for v in data.values())
    targets = _Targets(teacher, {k: (teacher_data or data)[k] for k in graph.inputs}, fixed)
    student.train()
    t0 = time.perf_counter()
    for step in range(start + 1, cfg.steps + 1):
        student.blend(min(1.0, step / cfg.blend) if cfg.blend else 1.0)
        pick = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        batch = {k: augment(v[pick], cfg, stds[k], gen) for k, v in data.items()}
        target, t_feats = targets(pick, batch if teacher_data is None else None)
        out, s_feats = _run(student, batch, graph.inputs)
        loss = distill_loss(out, target, kinds, cfg.balance)
        if cfg.features:
            loss = loss + cfg.features * features_loss(s_feats, t_feats)
        if downstream is not None:
            with torch.no_grad():
                t_down = downstream(after, target[0])
            loss = loss + distill_loss(downstream(after, out[0]), t_down, down_kinds, cfg.balance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if scheme.act_bits and (step % cfg.recalibrate == 0 or step == cfg.steps):
            calibrate(student, calib)
        if progress:
            progress(step, cfg.steps, loss.item())
        if log_path and (step % 10 == 0 or step == cfg.steps):
            rec = {
                "step": step,
                "loss": loss.item(),
                "lr": sched.get_last_lr()[0],
                "seconds": round(time.perf_counter() - t0, 3),
            }
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if ckpt is not None and (step % checkpoint_every == 0 or step == cfg.steps):
            _save(
                ckpt,
                {
                    "fingerprint": mark,
                    "what": f"{graph.name} / {scheme.label}",
                    "step": step,
                    "model": student.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "gen": gen.get_state(),
                },
            )
    student.capturing = False
    student.blend(1.0)
    return student.eval()


# ---- export -------------------------------------------------------------------------------------
def _initializer(model: onnx.ModelProto, name: str, data: np.ndarray) -> str:
    """Add (or replace) initializer ``name`` holding ``data``; returns the name."""
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(data, name))
            return name
    model.graph.initializer.append(numpy_helper.from_array(data, name))
    if model.ir_version < 4:  # before IR 4 every initializer is also a graph input
        model.graph.input.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, data.shape)
        )
    return name


def imported_names(graph: onnx.GraphProto, prefix: str = "") -> dict[str, onnx.NodeProto]:
    """The nodes of ``graph`` under the names the importer gives them, the nodes of an ``If``'s
    branches included (:func:`cimc.control_flow.branch_prefix`), so a layer inside a branch
    finds its node."""
    from ..control_flow import branch_prefix, onnx_node_name

    out = {}
    for i, n in enumerate(graph.node):
        name = prefix + onnx_node_name(n, i)
        out[name] = n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH and a.name in ("then_branch", "else_branch"):
                out.update(imported_names(a.g, branch_prefix(name, a.name) + "/"))
    return out


def recurrent_weights(nodes: dict[str, onnx.NodeProto]) -> dict[str, tuple[str, int, str]]:
    """The weight constants the importer unrolls the LSTM/GRU nodes into (constant name ->
    (node name, direction, tag of :func:`cimc.recurrent.weight_tags`)): the CiM layers whose
    tuned weights go back into the node's W and R."""
    found = {}
    for name, n in nodes.items():
        if n.op_type not in ("LSTM", "GRU"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        dirs = 2 if attrs.get("direction") == b"bidirectional" else 1
        for d in range(dirs):
            for tag in weight_tags(n.op_type, bool(attrs.get("linear_before_reset", 0))):
                found[constant_name(name, d, tag)] = (name, d, tag)
    return found


def _initializer_array(proto: onnx.ModelProto, name: str, source: str | Path) -> np.ndarray | None:
    """The value of initializer ``name`` of the main graph (None if it is not one)."""
    for t in proto.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t, base_dir=str(Path(source).parent))
    return None


def _constant_array(proto: onnx.ModelProto, name: str, source: str | Path) -> np.ndarray | None:
    """The value of ``name`` when an initializer or a Constant node of the main graph holds it."""
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return _initializer_array(proto, name, source)


def check_exportable(
    graph: Graph,
    source: str | Path,
    proto: onnx.ModelProto | None = None,
    scheme: Scheme | None = None,
    kept: frozenset[str] = frozenset(),
) -> None:
    """Refuse, before any training, a model whose tuned weights the ONNX file cannot carry.

    Every CiM layer and BatchNorm must be a node of ``source`` (``proto``, when loaded) or read
    an LSTM/GRU weight (:func:`recurrent_weights`); the node's W and R must be initializers and
    its initial hidden state not a nonzero constant (the importer folds the first step's
    product with the original R into a constant). With ``scheme``, no later step of a recurrent
    weight may be pooled unless its first step is (:func:`_check_steps_alike`)."""
    if proto is None:
        proto = onnx.load(str(source), load_external_data=False)
    nodes = imported_names(proto.graph)
    recurrent = recurrent_weights(nodes)
    for node in [*float_cim_layers(graph), *affine_constants(graph).values()]:
        if node.name not in nodes and node.inputs[1] not in recurrent:
            raise DistillError(
                f"layer {node.name!r} of {source} was made by the importer and holds no weight "
                "of an ONNX node, so the ONNX file cannot carry its fine-tuned weights; "
                "fine-tuning it is not supported (cimc compile still compresses it post-training)"
            )
    for name in sorted({node for node, _, _ in recurrent.values()}):
        _check_recurrent_node(proto, name, nodes[name], source)
    if scheme is not None:
        _check_steps_alike(graph, scheme, recurrent, kept)


def _check_recurrent_node(
    proto: onnx.ModelProto, name: str, node: onnx.NodeProto, source: str | Path
) -> None:
    """Refuse an LSTM/GRU whose W and R cannot be replaced or whose first step was folded."""
    inits = {t.name for t in proto.graph.initializer}
    for i, what in ((1, "W"), (2, "R")):
        if node.input[i] not in inits:
            raise DistillError(
                f"{node.op_type} node {name!r} of {source}: its {what} ({node.input[i]!r}) is not "
                "an initializer of the main graph, so the fine-tuned weights cannot be written "
                "back; make it one (e.g. with onnxsim) and fine-tune again"
            )
    h0 = node.input[5] if len(node.input) > 5 else ""
    state = _constant_array(proto, h0, source) if h0 else None
    if state is not None and np.any(state):
        raise DistillError(
            f"{node.op_type} node {name!r} of {source} starts from the constant nonzero state "
            f"{h0!r}, whose product with R the importer folds using the original R; fine-tuning "
            "it is not supported: feed the initial state as a graph input instead"
        )


def _check_steps_alike(
    graph: Graph,
    scheme: Scheme,
    recurrent: dict[str, tuple[str, int, str]],
    kept: frozenset[str] = frozenset(),
) -> None:
    """A later step may be compressed otherwise than the first step of its weight only if it
    is not pooled: the ONNX R holds the first step's compressed weight, which a pooled step's
    assignment could not reproduce."""
    roles = _roles(graph, scheme, kept)
    first: dict[str, tuple[str, tuple[str, int]]] = {}
    for n in float_cim_layers(graph):
        if n.inputs[1] not in recurrent:
            continue
        lead, role = first.setdefault(n.inputs[1], (n.name, roles[n.name]))
        if roles[n.name] != role and roles[n.name][0] == "pool":
            node = recurrent[n.inputs[1]][0]
            raise DistillError(
                f"the steps of recurrent node {node!r} share one weight but {scheme.label} "
                f"compresses step {lead!r} as {_role_text(role)} and the later step {n.name!r} "
                "on the pool, so the node's one R cannot hold both; fine-tuning such a model "
                "is not supported (cimc compile still compresses it post-training)"
            )


def _role_text(role: tuple[str, int]) -> str:
    return f"int{role[1]}" if role[0] == "int" else role[0]


def _write_recurrent(
    proto: onnx.ModelProto,
    node: onnx.NodeProto,
    parts: dict[tuple[int, str], np.ndarray],
    source: str | Path,
) -> None:
    """Replace ``node``'s W and R by the ones whose unrolled constants are ``parts`` ((direction,
    tag) -> constant); a constant no CiM layer read (R of a one-step sequence) keeps its value."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    lbr = bool(attrs.get("linear_before_reset", 0))
    w, r = (_initializer_array(proto, node.input[i], source) for i in (1, 2))
    new_w, new_r = np.empty_like(w), np.empty_like(r)
    for d in range(len(w)):
        base = direction_weights(node.op_type, lbr, w[d], r[d])
        mine = {tag: c for (dd, tag), c in parts.items() if dd == d}
        new_w[d], new_r[d] = direction_from_weights(base | mine)
    node.input[1] = _initializer(proto, f"{node.input[1]}.finetuned", new_w)
    node.input[2] = _initializer(proto, f"{node.input[2]}.finetuned", new_r)


def export(
    model: CompressedGraph, source: str | Path, onnx_path: str | Path, npz_path: str | Path
) -> str:
    """Write ``source`` with the fine-tuned CiM weights at ``onnx_path`` and, for CIMPool, the
    assignment at ``npz_path``; returns the pipeline that compiles them to these numbers.

    An LSTM/GRU's tuned input projection and recurrent weight (one per direction, shared by
    its steps) go back into the node's W and R through :func:`cimc.recurrent.
    direction_from_weights`; their assignment is keyed by the constant the importer makes of
    them. Its biases are added on the vector unit and not trained: B is written unchanged."""
    model.eval()
    proto = onnx.load(str(source))
    by_name = imported_names(proto.graph)
    check_exportable(model.graph, source, proto, model.scheme, model.kept)
    recurrent = recurrent_weights(by_name)
    graph = model.graph
    layers: dict[str, dict[str, np.ndarray]] = {}
    tuned: dict[str, dict[tuple[int, str], np.ndarray]] = {}  # LSTM/GRU node -> its constants
    done: set[str] = set()

    for node in model.layer_nodes:
        const = node.inputs[1]
        if const in done:
            continue  # a later step of a recurrent weight: R holds the first step's weight
        m = model.layer(node.name)
        with torch.no_grad():
            w = _onnx_weight(node, m.effective_weight()).detach().numpy()
        w = w.reshape(graph.values[const].shape).astype(np.float32)
        if const in recurrent:
            done.add(const)
            name, d, tag = recurrent[const]
            tuned.setdefault(name, {})[d, tag] = w
            key = const  # the importer names it so in the exported model too
        else:
            target = by_name[node.name]
            key = f"{const}.finetuned"
            target.input[1] = _initializer(proto, key, w)
            if m.layer.bias is not None:
                b = m.layer.bias.detach().numpy()  # [O]; Gemm's C may be one broadcast value
                shape = graph.values[node.inputs[2]].shape
                b = b.reshape(shape) if math.prod(shape) == b.size else b
                target.input[2] = _initializer(proto, f"{node.inputs[2]}.finetuned", b)
        if m.role == "pool":
            layers[key] = assignment_fields(m)
    for name, parts in tuned.items():
        _write_recurrent(proto, by_name[name], parts, source)
    for name, node in affine_constants(graph).items():
        target = by_name[node.name]
        pos = list(node.inputs).index(name)
        tuned_value = model.constant(name).detach().numpy()
        target.input[pos] = _initializer(proto, f"{name}.finetuned", tuned_value)
    used = {i for n in subgraph_nodes(proto.graph) for i in n.input}  # branches read them too
    dropped = {t.name for t in proto.graph.initializer if t.name not in used}
    kept = [t for t in proto.graph.initializer if t.name not in dropped]
    inputs = [i for i in proto.graph.input if i.name not in dropped]
    del proto.graph.initializer[:], proto.graph.input[:]
    proto.graph.initializer.extend(kept)
    proto.graph.input.extend(inputs)
    with atomic_path(onnx_path) as tmp:
        onnx.save(proto, str(tmp))
    if not layers:  # nothing pooled; if fine-tuning kept every pooled layer, so must the compiler
        return model.scheme.pipeline(kept=len(model.kept))
    pool = next(m.pool for _, m in model.cim.items() if m.role == "pool").numpy()
    write_assignment(npz_path, pool, layers, json.dumps(model.scheme.to_dict()))
    return model.scheme.pipeline(str(npz_path), len(model.kept))


__all__ = [
    "CompressedGraph",
    "DistillConfig",
    "Downstream",
    "calibrate",
    "check_exportable",
    "recurrent_weights",
    "distill",
    "sensitive_layers",
    "export",
    "load_samples",
    "output_error",
    "untrained_student",
]
