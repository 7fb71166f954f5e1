"""Weight-sharing training of an elastic family, and the accuracy of its subnets.

:func:`train_supernet` follows OFA / BigNAS's sandwich rule: every step runs the largest subnet,
the smallest and ``randoms`` random ones on the same batch; the largest learns from the labels,
the others from the largest's soft outputs (in-place distillation: KL divergence to its
detached softmax); the summed gradients update the shared weights once. The same loop with one
fixed config and no teacher trains an architecture alone (:func:`train_alone`), so the two are
compared at an equal number of steps. :func:`subnet_accuracy` extracts a subnet, recalibrates its
BatchNorm statistics on training images (as OFA and DyNAS-T do before every evaluation) and
scores it.

The CNN families train with Adam (L2 on every tensor) and plain cosine decay; a ViT needs the
transformer recipe (``RECIPES``): AdamW with decoupled decay on its matrices only (not on
biases, LayerNorm, the position embedding or the class token), a linear warm-up and gradient
clipping; its largest subnet first (``largest_first`` steps, OFA's first phase); and, as NASViT
does, the smaller subnets' gradient stripped of its component against the largest's when the
two conflict: without both, the sandwich drove the largest subnet back to chance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from cimc.errors import OptionError
from cimc.models.elastic import Config, ElasticFamily, recalibrate_bn

from .data import Splits
from .finetune import accuracy, random_shift


@dataclass(frozen=True)
class ElasticTrainConfig:
    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"  # "adam": L2 on every tensor; "adamw": decoupled, matrices only
    warmup: int = 0  # steps of linear warm-up before the cosine decay
    clip: float = 0.0  # max global gradient norm; 0 leaves gradients as they are
    largest_first: int = 0  # steps that train the largest alone before the sandwich (OFA)
    project: bool = False  # drop the other subnets' gradient component against the first's
    shift: int = 2
    randoms: int = 2  # random subnets per step besides the largest and the smallest
    bn_images: int = 1024  # training images BatchNorm is recalibrated on before evaluation
    seed: int = 0
    log_every: int = 25

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, dict[str, Any]] = {
    "elastic-vit-chars": {
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.05,
        "warmup": 50,
        "largest_first": 180,
        "project": True,
        "clip": 1.0,
    },
    # the ViT's two sandwich fixes lift every subnet 7-10 points here (800 steps each way)
    "elastic-mbv3-chars": {"largest_first": 160, "project": True},
}
"""Per-family departures from :class:`ElasticTrainConfig`'s defaults (the CNN recipe)."""

NO_DECAY = ("pos_embedding", "class_token")
"""Parameters AdamW leaves undecayed besides every 1-d one (biases, norms)."""


def recipe(name: str, **overrides: Any) -> ElasticTrainConfig:
    """The training config of family ``name``: its recipe, then ``overrides``."""
    return ElasticTrainConfig(**(RECIPES.get(name, {}) | overrides))


def _optimizer(net: nn.Module, cfg: ElasticTrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "adamw":
        raise OptionError(f"optimizer {cfg.optimizer!r} is not one of ['adam', 'adamw']")
    decay, rest = [], []
    for name, p in net.named_parameters():
        (rest if p.dim() < 2 or name.endswith(NO_DECAY) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _schedule(opt: torch.optim.Optimizer, cfg: ElasticTrainConfig) -> LRScheduler:
    """Cosine decay over the steps after ``cfg.warmup`` linear warm-up steps."""
    cosine = CosineAnnealingLR(opt, T_max=cfg.steps - cfg.warmup)
    if not cfg.warmup:
        return cosine
    warm = LinearLR(opt, start_factor=1 / cfg.warmup, total_iters=cfg.warmup)
    return SequentialLR(opt, [warm, cosine], milestones=[cfg.warmup])


def _drop_conflict(params: list[nn.Parameter], lead: list[torch.Tensor]) -> None:
    """NASViT's gradient-conflict rule: when the other subnets' summed gradient (``.grad``
    minus the first subnet's ``lead``) points against ``lead``, remove its component along
    ``lead``, so the shared step does not undo the largest subnet's own."""
    rest = [p.grad - g for p, g in zip(params, lead, strict=True)]
    dot = sum((r * g).sum() for r, g in zip(rest, lead, strict=True))
    if dot >= 0:
        return
    scale = dot / sum((g * g).sum() for g in lead)
    for p, g, r in zip(params, lead, rest, strict=True):
        p.grad = g + r - scale * g


LogFn = Callable[[dict[str, Any]], None]


def _fit(
    fam: ElasticFamily,
    data: Splits,
    cfg: ElasticTrainConfig,
    configs: Callable[[np.random.Generator, int], list[Config]],
    distil: bool,
    log: LogFn | None,
    label: str,
) -> None:
    """``cfg``'s optimiser and schedule, stepped per batch; each step trains ``configs(rng, step)``
    on one batch, the first on the labels and the rest (``distil``) on its soft outputs."""
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x_tr, y_tr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    net = fam.supernet.train()
    params = list(net.parameters())
    opt = _optimizer(net, cfg)
    sched = _schedule(opt, cfg)
    perm, pos, t0 = torch.randperm(len(x_tr), generator=gen), 0, time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if pos + cfg.batch_size > len(perm):
            perm, pos = torch.randperm(len(x_tr), generator=gen), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        x, y = random_shift(x_tr[idx], cfg.shift, gen), y_tr[idx]
        opt.zero_grad(set_to_none=True)
        losses, teacher = [], None
        for i, config in enumerate(configs(rng, step)):
            logits = fam.runner(config)(x)
            if i == 0 or not distil:
                loss = F.cross_entropy(logits, y)
                teacher = F.softmax(logits.detach(), 1)
            else:
                loss = F.kl_div(F.log_softmax(logits, 1), teacher, reduction="batchmean")
            loss.backward()
            losses.append(loss.item())
            if i == 0 and cfg.project:
                lead = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
        if cfg.project and len(losses) > 1:
            _drop_conflict(params, lead)
        if cfg.clip:
            nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        sched.step()
        if log and (step % cfg.log_every == 0 or step == cfg.steps):
            log(
                {
                    "run": label,
                    "step": step,
                    "of": cfg.steps,
                    "losses": [round(v, 4) for v in losses],
                    "lr": sched.get_last_lr()[0],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
    net.eval()


def train_supernet(
    fam: ElasticFamily, data: Splits, cfg: ElasticTrainConfig, log: LogFn | None = None
) -> ElasticFamily:
    """Sandwich-rule training with in-place distillation, in place; returns ``fam``."""

    def sandwich(rng: np.random.Generator, step: int) -> list[Config]:
        if step <= cfg.largest_first:
            return [fam.largest()]
        return [fam.largest(), fam.smallest(), *(fam.sample(rng) for _ in range(cfg.randoms))]

    _fit(fam, data, cfg, sandwich, True, log, fam.name)
    return fam


def train_alone(
    fam: ElasticFamily, config: Config, data: Splits, cfg: ElasticTrainConfig, log: LogFn | None
) -> nn.Module:
    """``config`` trained from ``fam``'s (fresh) weights for as many steps, alone; its subnet."""
    _fit(fam, data, cfg, lambda _rng, _step: [config], False, log, f"{fam.name}/alone")
    return fam.subnet(config)


def calibrated_subnet(fam: ElasticFamily, config: Config, images: np.ndarray) -> nn.Module:
    """The subnet with BatchNorm statistics re-estimated on ``images`` (eval mode)."""
    sub = fam.subnet(config)
    with torch.no_grad():
        recalibrate_bn(sub, torch.from_numpy(images))
    return sub.eval()


def subnet_accuracy(
    fam: ElasticFamily, configs: Sequence[Config], data: Splits, bn_images: int = 1024
) -> list[float]:
    """Validation accuracy of each config after BatchNorm recalibration."""
    images = data.x_train[:bn_images]
    return [accuracy(calibrated_subnet(fam, c, images), data.x_val, data.y_val) for c in configs]
