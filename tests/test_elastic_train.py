"""Weight-sharing training recipes: the CNN families keep Adam with plain cosine decay; the ViT
gets AdamW (no decay on biases, norms and embeddings), a linear warm-up and clipping."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from cimc.errors import OptionError
from cimc.models.elastic import family
from cimc.train.data import Splits
from cimc.train.elastic import (
    RECIPES,
    ElasticTrainConfig,
    _drop_conflict,
    _optimizer,
    _schedule,
    recipe,
    train_supernet,
)


def lrs(cfg: ElasticTrainConfig) -> list[float]:
    """The learning rate each of ``cfg.steps`` optimiser steps uses."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=cfg.lr)
    sched = _schedule(opt, cfg)
    out = []
    for _ in range(cfg.steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", ["elastic-resnet-chars", "elastic-mbv3-chars"])
def test_cnn_recipe_is_the_committed_one(name):
    """Their committed weights came from Adam, L2 1e-4, torch's cosine schedule, no clipping
    (mbv3-chars' sandwich also trains the largest alone first and drops conflicting gradients)."""
    cfg = recipe(name, steps=40)
    assert replace(cfg, largest_first=0, project=False) == ElasticTrainConfig(steps=40)
    assert (cfg.largest_first, cfg.project) == ((160, True) if "mbv3" in name else (0, False))
    opt = _optimizer(family(name, trained=False).supernet, cfg)
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == 1e-4
    p = torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.Adam([p], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=cfg.steps)
    expected = []
    for _ in range(cfg.steps):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert lrs(cfg) == expected  # bit for bit


def test_warmup_rises_linearly_then_decays_to_zero():
    cfg = ElasticTrainConfig(steps=30, lr=1e-2, warmup=10)
    got = lrs(cfg)
    # lr / warmup at the first step, linearly up to lr at step ``warmup``; LinearLR's factors
    # are chained products, a few ulps off the closed form.
    warm = [1e-2 * (0.1 + 0.9 * s / 10) for s in range(10)]
    assert got[:10] == pytest.approx(warm, rel=1e-9)
    cosine = [1e-2 * (1 + math.cos(math.pi * s / 20)) / 2 for s in range(20)]
    assert got[10:] == pytest.approx(cosine, rel=1e-9, abs=1e-12)


def test_adamw_decays_matrices_only():
    cfg = recipe("elastic-vit-chars")
    assert cfg.optimizer == "adamw" and cfg.warmup > 0 and cfg.clip > 0
    net = family("elastic-vit-chars", trained=False).supernet
    opt = _optimizer(net, cfg)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in net.named_parameters() if id(p) in decay}
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in names
    assert {"conv_proj.weight", "heads.head.weight"} <= names
    kept = {n for n, _ in net.named_parameters()} - names
    assert {"encoder.pos_embedding", "class_token", "encoder.ln.weight"} <= kept
    assert not any(n.endswith("bias") for n in names)
    assert all(
        g["weight_decay"] in (0.0, RECIPES["elastic-vit-chars"]["weight_decay"])
        for g in opt.param_groups
    )


def test_unknown_optimizer_is_named():
    net = torch.nn.Linear(2, 2)
    with pytest.raises(OptionError, match="'sgd' is not one of"):
        _optimizer(net, ElasticTrainConfig(optimizer="sgd"))


def test_largest_first_then_the_sandwich():
    """``largest_first`` steps train the largest alone (one loss), then every step runs the
    largest, the smallest and ``randoms`` random subnets (four losses)."""
    g = np.random.default_rng(0)
    x = g.random((16, 1, 32, 32), dtype=np.float32)
    y = g.integers(0, 36, 16)
    data = Splits("noise", tuple(map(str, range(36))), x, y, x, y, x, y)
    records = []
    cfg = recipe("elastic-vit-chars", steps=3, largest_first=2, warmup=1, batch_size=4, log_every=1)
    train_supernet(family("elastic-vit-chars", trained=False), data, cfg, records.append)
    assert [len(r["losses"]) for r in records] == [1, 1, 2 + cfg.randoms]


def test_conflicting_gradient_loses_its_component_against_the_largest():
    """lead (1, 0), others (-1, 1): the others keep only (0, 1); agreeing ones are untouched."""
    p = torch.nn.Parameter(torch.zeros(2))
    lead = [torch.tensor([1.0, 0.0])]
    p.grad = lead[0] + torch.tensor([-1.0, 1.0])
    _drop_conflict([p], lead)
    assert p.grad.tolist() == [1.0, 1.0]
    p.grad = lead[0] + torch.tensor([0.5, 1.0])
    _drop_conflict([p], lead)
    assert p.grad.tolist() == [1.5, 1.0]
