"""cimc.sensitivity and mixed precision: the layer whose weights quantise worst is ranked most
sensitive; ``keep_sensitive=N`` keeps the N most sensitive at 8 bits, with their bits, area and
cycles accounted; ``cimc sensitivity`` writes a table, JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cimc.targets.simulator import simulate
from onnx import TensorProto, helper

import cimc
from cimc.cli import main
from cimc.interpreter import interpret
from cimc.passes_base import PassContext
from cimc.program import to_bytes
from cimc.report.bits import storage_report
from cimc.report.fidelity import fidelity
from cimc.search.space import declared_variables
from cimc.sensitivity import layer_sensitivity, most_sensitive

DATA = Path(cimc.__file__).parent / "data"
DIGITS = str(DATA / "digits_cnn.onnx")
DIGITS_SHAPE = {"input": (1, 1, 16, 16)}
QUANT4 = "quantize-weights{bits=4,keep-edges=false%s},quantize-act{bits=8}"


def mlp(outlier: bool) -> cimc.Graph:
    """Three 32x32 layers with ReLUs; with ``outlier`` fc1 holds weights 200x the rest on an
    input that is always zero."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = rng.standard_normal((32, 32)).astype(np.float32) / 6
        if outlier and i == 0:
            w[:, 5] = 0  # fc0's output 5 is always 0 ...
        if outlier and i == 1:
            w[5, :] *= 200  # ... and fc1 weighs it 200x: no effect in float, but at int4 it
            # sets every output channel's scale and the other weights round to zero
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.ravel()))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 32])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [16, 32])],
        inits,
    )
    return cimc.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_outlier_layer_ranks_first():
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((16, 32)).astype(np.float32)} for _ in range(4)]
    pipeline = QUANT4 % ""
    rows = layer_sensitivity(mlp(True), feeds, pipeline)
    assert [r["layer"] for r in rows][0] == "fc1"
    assert len(rows) == 3 and all(r["op"] == "cimc.QuantMVM" for r in rows)
    # 32x32 int4 weights plus a 32-bit scale per output channel: 4 + 32/32 bits per weight
    assert all(r["weights"] == 1024 and r["bits_per_weight"] == 5.0 for r in rows)
    assert rows[0]["rel_error"] > 2 * rows[1]["rel_error"]
    # without the outlier no layer stands out so far
    plain = layer_sensitivity(mlp(False), feeds, pipeline)
    assert plain[0]["rel_error"] < rows[0]["rel_error"]


def test_fidelity_of_identical_outputs():
    x = np.arange(6.0).reshape(2, 3)
    got = fidelity(x, x)
    assert got["cosine"] == 1.0 and got["rel_error"] == 0.0 and got["top1_agreement"] == 1.0


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((16, 32)).astype(np.float32)} for _ in range(n)]


def test_keep_sensitive_keeps_the_outlier_layer_at_8_bits():
    graph, calib, held_out = mlp(True), _feeds(4, 1), _feeds(4, 2)
    ref = np.concatenate([interpret(graph, f)["r2"] for f in held_out])
    cos = {}
    for n in (0, 1):
        out = cimc.run_passes(graph, QUANT4 % f",keep-sensitive={n}", calibration=calib)
        layers = [x for x in out.nodes() if x.op == "cimc.QuantMVM"]
        bits = {x.name: x.meta["compression"]["bits"] for x in layers}
        marked = {x.name for x in layers if x.meta["compression"].get("sensitive")}
        assert bits == {"fc0": 4, "fc1": 8 if n else 4, "fc2": 4}
        assert marked == ({"fc1"} if n else set())
        got = np.concatenate([interpret(out, f)["r2"] for f in held_out])
        cos[n] = fidelity(got, ref)["cosine"]
    # int4 fc1 zeroes every weight but the outlier's: the output is all but lost; at 8 bits
    # the other weights survive (measured 0.36 -> 0.94; all three at 8 bits: 0.95, the rest is
    # activation quantisation), so the bounds sit far from both figures
    assert cos[0] < 0.5 and cos[1] > 0.9


def test_keep_sensitive_clamps_to_the_layers_there_are():
    """N above the candidate count keeps them all (a search choice must fit any model)."""
    graph, ctx = mlp(True), PassContext(calibration=_feeds(2, 1))
    layers = [n for n in graph.nodes() if n.op == "MatMul"]
    assert most_sensitive(graph, ctx, QUANT4 % "", layers, 99) == {"fc0", "fc1", "fc2"}
    out = cimc.run_passes(graph, QUANT4 % ",keep-sensitive=99", calibration=_feeds(2, 1))
    assert {x.meta["compression"]["bits"] for x in out.nodes() if x.op == "cimc.QuantMVM"} == {8}


def test_keep_sensitive_is_searchable():
    declared = declared_variables(cimc.load_target("cimpool-sram"))
    assert 2 in declared["weight-pool.keep_sensitive"].choices
    assert 2 in declared["quantize-weights.keep_sensitive"].choices


def _measure(target: str, pipeline: str, src: str, shapes, calib, held_out) -> dict:
    """Storage, area used, cycles and output cosine (on ``held_out``) of one compile."""
    program = cimc.compile(src, target, pipeline, shapes, calibration=calib)
    graph = cimc.import_onnx(src, shapes)
    out, name = program.graph, graph.outputs[0]
    ref = np.concatenate([interpret(graph, f)[name] for f in held_out])
    got = np.concatenate([interpret(out, f)[name] for f in held_out])
    result = simulate(program, functional=False)
    return {
        "bits": storage_report(out)["bits_per_weight"],
        "area_used": result.area_used_mm2,
        "cycles": result.cycles,
        "cosine": fidelity(got, ref)["cosine"],
        "kept": sorted(
            n.name for n in out.nodes() if n.meta.get("compression", {}).get("sensitive")
        ),
        "bytes": to_bytes(program),
    }


def _digits_feeds() -> tuple[list, list]:
    x = np.load(DATA / "digits_calib.npz")["input"]
    feeds = [{"input": x[i : i + 1]} for i in range(len(x))]
    return feeds[:16], feeds[16:48]


def test_mixed_precision_on_cimpool_digits_raises_fidelity_bits_and_area():
    pipe = (
        "fold-bn,zpack,weight-pool{keep-sensitive=%d},error-term,error-prune,quantize-act,"
        "permute-schedule"
    )
    calib, held_out = _digits_feeds()
    m = {
        n: _measure("cimpool-sram", pipe % n, DIGITS, DIGITS_SHAPE, calib, held_out) for n in (0, 2)
    }
    assert m[0]["kept"] == [] and len(m[2]["kept"]) == 2
    # two pooled layers (~0.7 b/w) become int8 (8.5 b/w with scales): measured 1.09 -> 3.90
    assert m[2]["bits"] > m[0]["bits"] + 1.0
    assert m[2]["area_used"] > m[0]["area_used"]  # int8 layers take 8 columns per weight
    assert m[2]["cycles"] > m[0]["cycles"]  # and 8 bit-sliced columns per output
    # measured 0.42 -> 0.67 on the bundled trained model's real digits
    assert m[2]["cosine"] > m[0]["cosine"] + 0.1
    again = _measure("cimpool-sram", pipe % 2, DIGITS, DIGITS_SHAPE, calib, held_out)
    assert again["bytes"] == m[2]["bytes"]  # deterministic: same inputs, same program


def test_mixed_precision_on_int4_zoo_resnet18(tmp_path):
    pytest.importorskip("torch")
    from cimc.compiler import random_calibration
    from cimc.models import export_onnx

    src = str(export_onnx("resnet18", tmp_path / "r18.onnx", image_size=32, seed=2))
    graph = cimc.import_onnx(src)
    calib, held_out = random_calibration(graph, 2, seed=7), random_calibration(graph, 2, seed=8)
    pipe = "fold-bn,quantize-weights{keep-sensitive=%d},quantize-act"
    m = {n: _measure("int4-sram", pipe % n, src, None, calib, held_out) for n in (0, 2)}
    assert len(m[2]["kept"]) == 2  # 8-bit layers inside an int4 chip pass the target check
    assert m[2]["bits"] > m[0]["bits"] and m[2]["area_used"] > m[0]["area_used"]
    assert m[2]["cycles"] > m[0]["cycles"]
    assert m[2]["cosine"] > m[0]["cosine"]  # measured 0.936 -> 0.951


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_cli_on_digits_writes_table_json_and_plot(capsys, tmp_path):
    js, png = tmp_path / "s.json", tmp_path / "s.png"
    args = ["sensitivity", DIGITS, "--input-shape", "input=1,1,16,16"]
    args += ["--data", str(DATA / "digits_calib.npz"), "--json", str(js), "--plot", str(png)]
    assert main(args) == 0
    text = capsys.readouterr().out
    report = json.loads(js.read_text())
    rows = report["layers"]
    assert len(rows) == 8 and report["evaluation_samples"] == 32  # 64 samples: 16 + 32 used
    assert [r["cosine"] for r in rows] == sorted(r["cosine"] for r in rows)
    assert {r["scheme"] for r in rows} == {"int8", "pool128x128"}
    assert rows[0]["layer"] in text and "most sensitive" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_without_data_says_inputs_are_random(capsys):
    args = ["sensitivity", DIGITS, "--input-shape", "input=1,1,16,16", "--target", "int8-sram"]
    assert main(args) == 0
    assert "seeded random inputs (no --data)" in capsys.readouterr().out


def test_cli_refuses_data_not_matching_the_model(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 1, 8, 8), np.float32))
    args = ["sensitivity", DIGITS, "--input-shape", "input=1,1,16,16", "--data", str(bad)]
    assert main(args) == 2
    assert "(1, 16, 16)" in _one_line(capsys)
    np.savez(bad, image=np.zeros((4, 1, 16, 16), np.float32))
    assert main(args) == 2
    assert "lacks arrays for inputs ['input']" in _one_line(capsys)


def test_cli_refuses_a_negative_keep_sensitive(capsys):
    args = ["sensitivity", DIGITS, "--input-shape", "input=1,1,16,16"]
    assert main([*args, "--pipeline", "fold-bn,quantize-weights{keep-sensitive=-1}"]) == 2
    assert "keep_sensitive=-1 must be >= 0" in _one_line(capsys)
