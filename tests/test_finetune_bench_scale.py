"""benchmarks/finetune.py --scale per-channel: the post-training pipeline and the scheme fine-tuning
trains both carry weight-pool's per-channel alpha, so the compiled rows are what was trained."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc.report.bits import storage_report
from cimc.train.distill import DistillConfig, distill, export, load_samples

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
finetune = pytest.importorskip("finetune")


@pytest.fixture
def per_channel(monkeypatch):
    monkeypatch.setitem(finetune.POOL_OPTIONS, "scale", "per-channel")


def compressed_bits(pipeline: str) -> float:
    graph = cimc.compile(
        finetune.MODEL,
        "cimpool-sram",
        pipeline=pipeline,
        input_shapes=finetune.SHAPE,
        overrides=finetune.pool_target(0.25),
    )
    return storage_report(graph.graph)["compressed_bits_per_weight"]


def test_per_channel_alpha_costs_bits_in_the_compiled_post_training_row(monkeypatch):
    per_layer = finetune.post_training(0.25)
    monkeypatch.setitem(finetune.POOL_OPTIONS, "scale", "per-channel")
    text = finetune.post_training(0.25)
    assert "scale=per-channel" in text
    assert "keep_sensitive=2" in finetune.post_training(0.25, sensitive=2)
    # an alpha per output channel instead of one per layer: strictly more bits per weight
    assert compressed_bits(text) > compressed_bits(per_layer)


def test_the_trained_and_exported_model_has_an_alpha_per_channel(per_channel, tmp_path):
    scheme = finetune.cimpool_scheme(0.25)
    assert scheme.scale == "per-channel" and scheme.keep == 0.25
    assert finetune.pool_tag() == ", per-channel scale"
    data_path, _ = finetune.unlabelled_digits(tmp_path)
    graph = cimc.import_onnx(finetune.MODEL, finetune.SHAPE)
    data = load_samples(data_path, graph, 16)
    model = distill(graph, scheme, data, DistillConfig(steps=1))
    export(model, finetune.MODEL, tmp_path / "t.onnx", tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as f:
        alphas = [f[k] for k in f.files if k.endswith("alpha")]
    assert alphas and all(a.size > 1 for a in alphas)


def test_default_is_per_layer():
    assert finetune.cimpool_scheme(0.5).scale == "per-layer"
    assert "scale" not in finetune.post_training(0.5) and finetune.pool_tag() == ""
