"""Torch layers that compress a Conv2d/Linear exactly as the compiler's passes do.

A :class:`CimLayer` wraps a ``nn.Conv2d`` or ``nn.Linear`` (the *latent* float weight) and an
:class:`ActQuant` on its input. Its forward pass uses the weight the compiler would install:

- ``int``: per-output-channel symmetric N-bit weights (:func:`cimc.compress.quantized_weights`,
  what ``quantize-weights`` and weight-pool's ``others`` do);
- ``pool``: ``alpha P[idx] + beta (M * E)`` with the network's frozen pool P, indices and alpha
  from :func:`cimc.compress.assign` (the same rule, recomputed at every step), and the error
  term of ``error-term`` / ``error-prune`` (:func:`cimc.compress.full_error`,
  :func:`cimc.compress.pruned_error`).

The compressed weight is computed in float64 NumPy by the :mod:`cimc.compress` functions the
passes call, so a
fine-tuned layer and its compiled counterpart hold the same numbers. Gradients reach the latent
weight through a straight-through estimator: d(loss)/dW := d(loss)/dW_hat.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cimc.cim_ops import act_range, dense_weights
from cimc.compress import (
    KEEP_CHOICES,
    assign,
    build_pool,
    full_error,
    pack_vectors,
    pool_residual,
    pruned_error,
    quantized_weights,
    refit_alpha,
)
from cimc.errors import CimcError
from cimc.passes_base import Pipeline, make_pass

KINDS = ("fp32", "int", "pool")


@dataclass(frozen=True)
class Scheme:
    """How a network is compressed, in torch and in the compiler alike.

    kind: ``fp32`` (nothing), ``int`` (every CiM layer ``bits``-bit per channel; first and last
    at ``others`` bits) or ``pool`` (CIMPool; first, last and depthwise at ``others`` bits).
    keep: the error term (None: none; 1.0, 0.5, 0.25: the fraction error-prune keeps).
    act_bits: per-tensor activation bits at every CiM layer input (0: float activations).
    """

    kind: str = "pool"
    bits: int = 8
    keep: float | None = 0.5
    act_bits: int = 8
    vector: int = 128
    pool: int = 128
    init: str = "kmeans"
    assign: str = "non-repeating"
    scale: str = "per-layer"
    group: int = 128
    chunk: int = 8
    others: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"scheme kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.keep not in (None, *KEEP_CHOICES):
            raise ValueError(f"keep={self.keep}: choose None, 1.0, 0.5 or 0.25")
        if self.kind == "int" and self.others != 8:
            raise ValueError(
                f"others={self.others} with kind=int: quantize-weights keeps the first and last "
                "layers at 8 bits, so the int schemes need others=8"
            )
        # The passes check the options the torch side shares with them (OptionError).
        self.passes()
        pool_opts = {"init": self.init, "assign": self.assign, "scale": self.scale}
        make_pass("weight-pool", _texts({**pool_opts, "seed": self.seed, "pool": self.pool}))
        prune_opts = {"keep": self.keep or 1.0, "group": self.group, "chunk": self.chunk}
        make_pass("error-prune", _texts(prune_opts))

    @property
    def label(self) -> str:
        if self.kind == "fp32":
            return "fp32"
        if self.kind == "int":
            return f"int{self.bits}"
        if self.keep is None:
            return "cimpool-pool-only"
        return f"cimpool-keep{self.keep:g}"

    def stages(self, assignment: str = "", kept: int = 0) -> list[tuple[str, dict[str, Any]]]:
        """(pass name, options) of the compiler pipeline that reproduces a model tuned with this
        scheme (no fold-bn: BatchNorm stays after the compressed layer, on the vector unit);
        ``kept``: pooled layers the tuning kept at ``others`` bits (weight-pool keep_sensitive)."""
        if self.kind == "fp32":
            return []
        if self.kind == "int":
            stages = [("zpack", {"vector": self.vector}), ("quantize-weights", {"bits": self.bits})]
        else:
            opts: dict[str, Any] = {"vector": self.vector, "pool": self.pool, "others": self.others}
            if assignment:
                opts["assignment"] = assignment
            else:  # weight-pool computes the pool and assignment itself, as the scheme does
                opts.update(init=self.init, assign=self.assign, scale=self.scale, seed=self.seed)
            if kept:
                opts["keep_sensitive"] = kept
            stages = [("zpack", {"vector": self.vector}), ("weight-pool", opts)]
        if self.act_bits:
            # the training's activation quantisers take the calibration set's extremes
            stages.append(("quantize-act", {"bits": self.act_bits, "method": "max"}))
        return stages

    def passes(self, assignment: str = "", kept: int = 0) -> Pipeline:
        """The pipeline as pass objects, made through the pass registry (which checks them)."""
        return Pipeline(
            tuple(make_pass(name, _texts(opts)) for name, opts in self.stages(assignment, kept))
        )

    def pipeline(self, assignment: str = "", kept: int = 0) -> str:
        """The pipeline string, naming every option the scheme sets (defaults included, so it
        states the vector and bits a model was tuned with); it parses back to :meth:`passes`."""
        self.passes(assignment, kept)
        return ",".join(
            name + "{" + ",".join(f"{k}={v}" for k, v in _texts(opts).items()) + "}"
            for name, opts in self.stages(assignment, kept)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _texts(options: dict[str, Any]) -> dict[str, str]:
    """Pass options as the registry reads them from pipeline strings."""
    return {key: str(value) for key, value in options.items()}


SCHEMES = {
    "fp32": Scheme(kind="fp32", act_bits=0, keep=None),
    "int8": Scheme(kind="int", bits=8, keep=None),
    "int4": Scheme(kind="int", bits=4, keep=None),
    "cimpool-pool-only": Scheme(kind="pool", keep=None),
    "cimpool-keep1": Scheme(kind="pool", keep=1.0),
    "cimpool-keep0.5": Scheme(kind="pool", keep=0.5),
    "cimpool-keep0.25": Scheme(kind="pool", keep=0.25),
}


def get_scheme(name: str, **overrides: Any) -> Scheme:
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return replace(SCHEMES[name], **overrides)


# ---- the weight view the compiler uses ----
def weight_2d(w: torch.Tensor) -> torch.Tensor:
    """W[O, K] with K in (ky, kx, cin) order, cin fastest (cimc.cim_ops.weight_matrix)."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1) if w.dim() == 4 else w


def weight_from_2d(w2: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 4:
        o, c, kh, kw = shape
        return w2.reshape(o, kh, kw, c).permute(0, 3, 1, 2).contiguous()
    return w2.reshape(shape)


def pool_weight(
    w2: np.ndarray, pool: np.ndarray, s: Scheme, idx: np.ndarray | None = None
) -> tuple[np.ndarray, dict]:
    """alpha P[idx] + beta err as [O, K], and the assignment (idx, alpha, err, beta, mask).

    With ``idx`` given (a recent assignment, reused between refreshes while training) only
    alpha, the error signs, the mask and beta are recomputed, for the given indices."""
    k = w2.shape[1]
    per_channel = s.scale == "per-channel"
    vecs = pack_vectors(w2, s.vector)
    if idx is None:
        idx, alpha = assign(vecs, pool, k, s.assign, per_channel, None)
    else:
        alpha = refit_alpha(vecs, pool, idx, k, per_channel)
    state: dict[str, Any] = {"idx": idx, "alpha": alpha}
    err = beta = None
    if s.keep is not None:
        r, real = pool_residual(w2, pool, idx, alpha)
        if s.keep == 1.0:  # error-term
            (err, b), mask = full_error(r, real), None
        else:  # error-prune
            err, b, mask = pruned_error(r, real, s.keep, s.group, s.chunk, None)
        beta = np.array([b])
        state.update(err=err, beta=beta, keep=s.keep, mask=mask)
    return dense_weights(pool, idx, alpha, err, beta)[:, :k], state


# ---- modules ----
class ActQuant(nn.Module):
    """Per-tensor activation quantisation as quantize-act does it.

    Unsigned when the calibrated minimum is >= 0, symmetric signed otherwise;
    scale = max|x| / qmax; x_q = clip(round(x / scale)) (round half to even), in float64 in eval
    mode as cimc.cim_ops.quantize_input does. While training, the range is an exponential moving
    average of batch ranges; :func:`calibrate` sets it exactly as the compiler would.
    """

    def __init__(self, bits: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.calibrating = False
        self.register_buffer("lo", torch.zeros((), dtype=torch.float64))
        self.register_buffer("hi", torch.zeros((), dtype=torch.float64))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def params(self) -> tuple[float, int, int, bool]:
        """(scale, qmin, qmax, signed) from the current range; refused before there is one (an
        empty range would give scale 1: every activation rounded to an integer)."""
        if not bool(self.seen):
            raise CimcError(
                f"activation quantiser ({self.bits} bits) has no range: calibrate the model "
                "(cimc.train.layers.calibrate, or cimc.train.distill.calibrate for an imported "
                "graph) or train it before evaluating"
            )
        signed = bool(self.lo < 0)
        qmin, qmax = act_range(self.bits, signed)
        lo, hi = float(self.lo), float(self.hi)
        amax = max(abs(lo), abs(hi)) if signed else hi
        return (amax / qmax if amax > 0 else 1.0), qmin, qmax, signed

    def _observe(self, x: torch.Tensor, ema: bool) -> None:
        lo, hi = x.detach().min().double(), x.detach().max().double()
        if not bool(self.seen):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
        elif ema:
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)
        else:
            self.lo.copy_(torch.minimum(self.lo, lo))
            self.hi.copy_(torch.maximum(self.hi, hi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.bits:
            return x
        if self.calibrating:
            self._observe(x, ema=False)
            return x
        if self.training:
            self._observe(x, ema=True)
        return self.quantize(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """x through the current range, without observing it (safe under ``torch.func.vmap``):
        straight-through rounding while training, the compiler's float64 rounding in eval."""
        if not self.bits:
            return x
        scale, qmin, qmax, _ = self.params()
        if self.training:
            xq = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
            return x + (xq - x).detach()
        xq = torch.clamp(torch.round(x.double() / scale), qmin, qmax)
        return (xq * scale).to(x.dtype)


class CimLayer(nn.Module):
    """A CiM layer (Conv2d or Linear) whose weight is compressed as the compiler does it.

    role: ``float`` (weight as is), ``int`` (``bits``-bit per channel) or ``pool``.
    """

    refresh_every = 1  # training: recompute the indices every n weight updates (1: always)
    # training: the compressed share of the forward weight, (1 - blend) W + blend Ŵ; below 1 the
    # network meets its compression gradually (alpha-blending, Liu & Mattina, IJCAI 2019)
    blend = 1.0

    def __init__(self, layer: nn.Module, role: str, bits: int, scheme: Scheme) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"CimLayer wraps Conv2d or Linear, not {type(layer).__name__}")
        self.layer = layer
        self.role = role
        self.bits = bits
        self.scheme = scheme
        self.act = ActQuant(scheme.act_bits)
        self.register_buffer("pool", torch.zeros((0, scheme.vector), dtype=torch.int8))
        self.assignment: dict[str, Any] = {}
        self._cache: tuple[Any, torch.Tensor] | None = None
        self._stale = 0  # weight updates since the indices were last recomputed

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    def compressed_weight(self) -> torch.Tensor:
        """The weight the compiler installs (no gradient), cached until the latent one changes."""
        w = self.layer.weight
        key = (w._version, w.data_ptr(), self.role, self.bits, self.pool.shape[0], self.training)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        w2 = weight_2d(w.detach()).double().cpu().numpy()
        if self.role == "float":
            hat = w.detach()
        else:
            if self.role == "int":
                h2, self.assignment = quantized_weights(w2, self.bits), {}
            else:
                idx = None
                if self.training and "idx" in self.assignment:
                    self._stale += 1
                    if self._stale < self.refresh_every:
                        idx = self.assignment["idx"]
                if idx is None:
                    self._stale = 0
                h2, self.assignment = pool_weight(w2, self.pool.numpy(), self.scheme, idx)
            hat = weight_from_2d(torch.from_numpy(h2), w.shape).to(w.dtype)
        self._cache = (key, hat)
        return hat

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: compressed, with straight-through gradients to the
        latent weight while training."""
        w = self.layer.weight
        if self.role == "float":
            return w
        hat = self.compressed_weight()
        if self.training and torch.is_grad_enabled():
            return w + (self.blend * (hat - w)).detach()
        return hat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        w = self.effective_weight()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.in_channels // m.groups == 1


def execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of Conv2d/Linear modules in the order a forward pass calls them (the order of the
    exported graph, which decides what the compiler treats as first and last layer)."""
    order: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(lambda mod, i, o, n=name: order.append(n)))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def compress_model(model: nn.Module, scheme: Scheme, example: torch.Tensor) -> nn.Module:
    """Wrap every Conv2d/Linear of ``model`` (in place) as a :class:`CimLayer` under ``scheme``.

    Roles follow the compiler: int (``quantize-weights``, keep_edges): first and last layers at
    ``others`` bits, the rest at ``bits``; pool (``weight-pool``): first, last and depthwise
    layers at ``others`` bits, the rest pool-compressed with one pool built from the current
    (pretrained) weights by :func:`cimc.compress.build_pool` and then frozen.
    """
    order = execution_order(model, example)
    mods = dict(model.named_modules())
    roles: dict[str, tuple[str, int]] = {}
    for i, name in enumerate(order):
        edge = i in (0, len(order) - 1)
        if scheme.kind == "fp32":
            roles[name] = ("float", 0)
        elif scheme.kind == "int":
            roles[name] = ("int", scheme.others if edge else scheme.bits)
        elif edge or _is_depthwise(mods[name]):
            roles[name] = ("int", scheme.others) if scheme.others else ("float", 0)
        else:
            roles[name] = ("pool", 0)
    chosen = [n for n in order if roles[n][0] == "pool"]
    pool = None
    if chosen:
        weights = {n: weight_2d(mods[n].weight.detach()).double().numpy() for n in chosen}
        pool = build_pool(weights, scheme.pool, scheme.vector, scheme.init, scheme.seed)
    for name in order:
        role, bits = roles[name]
        wrapped = CimLayer(mods[name], role, bits, scheme)
        if role == "pool":
            wrapped.pool = torch.from_numpy(pool.copy())
        _set_module(model, name, wrapped)
    model.cim_scheme = scheme
    return model


def cim_layers(model: nn.Module) -> Iterator[tuple[str, CimLayer]]:
    for name, m in model.named_modules():
        if isinstance(m, CimLayer):
            yield name, m


@contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Inside: activation quantisers only record exact min/max (float activations)."""
    acts = [m for m in model.modules() if isinstance(m, ActQuant)]
    for a in acts:
        a.calibrating = True
        a.seen.fill_(False)
    try:
        yield
    finally:
        for a in acts:
            a.calibrating = False


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Set every activation range from ``x`` as quantize-act does: max/min over the calibration
    samples of each CiM layer input, with compressed weights and float activations."""
    was = model.training
    model.eval()
    try:
        with calibrating(model):
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size])
    finally:
        model.train(was)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics on ``x`` (cumulative average), as after any
    change of the weights before them: compression changes each layer's output scale."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    was = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was)
