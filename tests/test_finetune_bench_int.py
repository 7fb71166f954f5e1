"""benchmarks/finetune.py --int-bits N: the kit models are fine-tuned to N-bit integer weights and
the exported model compiles for int4-sram with N-bit weights, so the row measures what was
trained."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cimc
from cimc.train.distill import DistillConfig, distill, export, load_samples

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
finetune = pytest.importorskip("finetune")


def test_int_scheme_and_target_replace_cimpool(monkeypatch):
    assert finetune.tuned_scheme(0.25).kind == "pool"
    assert finetune.tuned_target(0.25) == ("cimpool-sram", finetune.pool_target(0.25))
    monkeypatch.setitem(finetune.INT_BITS, "bits", 4)
    scheme = finetune.tuned_scheme(0.25)
    assert (scheme.kind, scheme.bits) == ("int", 4)
    assert finetune.tuned_target(0.25) == ("int4-sram", None)
    monkeypatch.setitem(finetune.INT_BITS, "bits", 2)
    assert finetune.tuned_scheme(0.25).bits == 2
    assert finetune.tuned_target(0.25) == ("int4-sram", {"weight_bits": 2})


@pytest.mark.parametrize("bits", [4, 2])
def test_the_int_tuned_model_compiles_to_its_trained_weights(monkeypatch, tmp_path, bits):
    monkeypatch.setitem(finetune.INT_BITS, "bits", bits)
    data_path, _ = finetune.unlabelled_digits(tmp_path)
    graph = cimc.import_onnx(finetune.MODEL, finetune.SHAPE)
    data = load_samples(data_path, graph, 16)
    model = distill(graph, finetune.tuned_scheme(0.25), data, DistillConfig(steps=2))
    pipeline = export(model, finetune.MODEL, tmp_path / "t.onnx", tmp_path / "t.npz")
    target, overrides = finetune.tuned_target(0.25)
    images = np.load(data_path)["input"]
    calib = [{"input": images[i : i + 1]} for i in range(DistillConfig().calib)]
    program = cimc.compile(
        tmp_path / "t.onnx",
        target,
        pipeline,
        input_shapes=finetune.SHAPE,
        calibration=calib,
        overrides=overrides,
    )
    # the CiM layers between the first and last (8-bit) hold N-bit weights
    meta = [n.meta["compression"] for n in program.graph.nodes() if "compression" in n.meta]
    assert {m["scheme"] for m in meta} == {"int"}
    assert sorted({m["bits"] for m in meta}) == [bits, 8]
    x = images[-1:]
    compiled = cimc.Interpreter(program.graph).run({"input": x})[program.graph.outputs[0]]
    with torch.no_grad():
        trained = model.eval()(torch.from_numpy(x))[0].numpy()
    # float64 in the interpreter vs float32 in torch, the same N-bit weights and 8-bit activation
    # grid (measured: 7e-7 of outputs up to 5); a different weight or range would be off by ~0.1
    np.testing.assert_allclose(compiled, trained, atol=1e-4 * np.abs(trained).max())


def test_embedding_fit_names_integer_schemes_by_their_bits():
    fit = pytest.importorskip("embedding_fit")
    assert (fit.scheme_named("int3").kind, fit.scheme_named("int3").bits) == ("int", 3)
    assert fit.scheme_named("cimpool-keep0.25").keep == 0.25
    assert [fit.scheme_named(n) for n in ("int1", "int9", "fp32", "int")] == [None] * 4
