"""The training recipe: fp32 pre-training, then the same fine-tuning for every scheme.

``pretrain`` trains the float model from scratch; ``finetune`` copies it, compresses it with a
:class:`~cimc.train.layers.Scheme` (fp32, int8, int4 or a CIMPool variant) and trains it
again with one schedule for all schemes, so comparisons are fair. Both use Adam with per-step
cosine decay, random shifts of up to ``shift`` pixels, and keep the epoch with the best
validation accuracy (measured as the compiler will run the model: activation ranges calibrated
on the first ``calib`` training images first). Each epoch is one line of the log (JSON lines).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cimc.models import ResNetS

from .data import Splits
from .layers import (
    ActQuant,
    Scheme,
    calibrate,
    cim_layers,
    compress_model,
    recalibrate_bn,
)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    shift: int = 2
    calib: int = 256
    seed: int = 0
    bn_calib: int = 1024  # images to re-estimate BatchNorm statistics on after compressing
    refresh: int = 1  # CIMPool: recompute pool indices every n steps (alpha, err, beta always)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def random_shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by dx, dy in [-pixels, pixels] (zero fill), offsets drawn from gen."""
    if not pixels:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4)
    off = torch.randint(0, 2 * pixels + 1, (n, 2), generator=gen)
    rows = (off[:, 0, None] + torch.arange(h))[:, :, None]
    cols = (off[:, 1, None] + torch.arange(w))[:, None, :]
    out = padded[torch.arange(n)[:, None, None], :, rows, cols]  # n, h, w, c
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 500) -> np.ndarray:
    was = model.training
    model.eval()
    x = torch.as_tensor(x)
    out = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x).argmax(1) == y).mean())


def has_act_quant(model: nn.Module) -> bool:
    return any(isinstance(m, ActQuant) and m.bits for m in model.modules())


ProgressFn = Callable[[str, int, int], None]  # (description, done steps, total steps)


def fit(
    model: nn.Module,
    data: Splits,
    cfg: TrainConfig,
    *,
    label: str = "",
    log: list[dict] | None = None,
    log_path: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> nn.Module:
    """Train in place; return the model at its best validation epoch (earliest on ties)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x_tr, y_tr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    calib_x = x_tr[: cfg.calib]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = -(-len(x_tr) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps))
    quant = has_act_quant(model)
    best_acc, best_state = -1.0, None
    records = log if log is not None else []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        loss_sum = correct = 0.0
        for step, start in enumerate(range(0, len(perm), cfg.batch_size)):
            idx = perm[start : start + cfg.batch_size]
            out = model(random_shift(x_tr[idx], cfg.shift, gen))
            loss = F.cross_entropy(out, y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += float((out.argmax(1) == y_tr[idx]).sum())
            if progress:
                progress(label, (epoch - 1) * steps + step + 1, cfg.epochs * steps)
        if quant:
            calibrate(model, calib_x)
        val_acc = accuracy(model, data.x_val, data.y_val)
        rec = {
            "run": label,
            "epoch": epoch,
            "loss": loss_sum / len(x_tr),
            "train_acc": correct / len(x_tr),
            "val_acc": val_acc,
            "lr": sched.get_last_lr()[0],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        records.append(rec)
        if log_path:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.best_val_acc = best_acc
    return model


def build_model(
    data: Splits, widths: tuple[int, ...] = (128, 128, 256), seed: int = 0
) -> nn.Module:
    seed_everything(seed)
    return ResNetS(len(data.classes), data.x_train.shape[1], widths)


def pretrain(
    data: Splits, cfg: TrainConfig, widths: tuple[int, ...] = (128, 128, 256), **kw: Any
) -> nn.Module:
    """The fp32 model, trained from scratch (seeded by cfg.seed)."""
    model = build_model(data, widths, cfg.seed)
    return fit(model, data, cfg, **{"label": "fp32-pretrain", **kw})


def finetune(
    pretrained: nn.Module, scheme: Scheme, data: Splits, cfg: TrainConfig, **kw: Any
) -> nn.Module:
    """A copy of ``pretrained`` compressed with ``scheme`` and fine-tuned (STE) with ``cfg``."""
    seed_everything(cfg.seed)
    model = copy.deepcopy(pretrained)
    compress_model(model, scheme, torch.from_numpy(data.x_train[:1]))
    for _, layer in cim_layers(model):
        layer.refresh_every = cfg.refresh
    calib_x = torch.from_numpy(data.x_train[: cfg.calib])
    if has_act_quant(model):
        calibrate(model, calib_x)
    recalibrate_bn(model, torch.from_numpy(data.x_train[: cfg.bn_calib]))
    if has_act_quant(model):
        calibrate(model, calib_x)
    return fit(model, data, cfg, **{"label": scheme.label, **kw})


FINETUNE_DEFAULTS = {"lr": 1e-3}


def finetune_config(cfg: TrainConfig, epochs: int) -> TrainConfig:
    return replace(cfg, epochs=epochs, **FINETUNE_DEFAULTS)
