"""quantize-act's calibration methods on data whose best clipping is known."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import cimc
from cimc.calibration import METHODS, input_ranges
from cimc.errors import FeedError


def layer_graph(n_in: int = 64, rows: int = 256) -> cimc.Graph:
    w = np.eye(n_in, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n_in])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    return cimc.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def feeds(signed: bool, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Laplace activations (heavy-tailed, like real ones) with a rare outlier of 60."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(4):
        x = rng.laplace(0, 1, (256, 64))
        x = x if signed else np.abs(x)
        x[0, 0] = 60.0
        out.append({"x": x.astype(np.float32)})
    return out


def quant_mse(x: np.ndarray, lo: float, hi: float, bits: int) -> float:
    signed = lo < 0
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    scale = max(abs(lo), abs(hi)) / qmax
    q = np.clip(np.round(x / scale), -qmax if signed else 0, qmax) * scale
    return float(np.mean((q - x) ** 2))


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_clipping_methods(signed, bits):
    graph, data = layer_graph(), feeds(signed)
    x = np.concatenate([f["x"] for f in data])
    err, top = {}, {}
    for method in METHODS:
        lo, hi = input_ranges(graph, data, ["fc"], method, 99.99, bits)["fc"]
        assert (lo < 0) == signed
        top[method] = hi
        err[method] = quant_mse(x, lo, hi, bits)
    # mse minimises exactly this error over its candidates (to within one histogram step)
    assert err["mse"] <= min(err.values()) * 1.05, err
    # entropy clips the outlier but keeps the bulk of the Laplace (5% of |x| exceeds 3)
    assert 3.0 < top["entropy"] < 20.0, top
    if bits == 4:  # at 4 bits the outlier's scale costs the bulk more than clipping it
        for method in ("percentile", "mse", "entropy"):
            assert err[method] < err["max"], (method, err)


def test_percentile_matches_numpy():
    graph, data = layer_graph(), feeds(True)
    x = np.abs(np.concatenate([f["x"] for f in data]))
    _, hi = input_ranges(graph, data, ["fc"], "percentile", 99.0)["fc"]
    assert hi == pytest.approx(np.percentile(x, 99.0), abs=60 / 2048)  # one histogram bin


def test_default_max_is_the_extremes():
    graph, data = layer_graph(), feeds(True)
    x = np.concatenate([f["x"] for f in data])
    assert input_ranges(graph, data, ["fc"])["fc"] == (float(x.min()), float(x.max()))


def test_bias_correction_removes_the_mean_output_error():
    """int4 weights on non-negative inputs (after ReLU) shift every output channel by
    (W_q - W) E[x]; bias correction measures that shift on calibration data and removes it."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((48, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
        "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 48])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, [48], np.zeros(48)),
        ],
    )
    model = cimc.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    def data(seed):
        r = np.random.default_rng(seed)
        return [{"x": np.abs(r.normal(1.0, 1.0, (64, 32))).astype(np.float32)} for _ in range(4)]

    calib, held_out = data(4), data(5)
    base = "quantize-weights{bits=4,keep-edges=false},quantize-act"
    plain = cimc.run_passes(model, base, calibration=calib)
    corrected = cimc.run_passes(model, base + "{bias-correction=true}", calibration=calib)

    def mean_error(g):
        err = [cimc.interpret(g, f)["y"] - f["x"] @ w.T for f in held_out]
        return np.abs(np.mean(np.concatenate(err), axis=0))  # per output channel

    before, after = mean_error(plain), mean_error(corrected)
    assert before.mean() > 0.05  # the shift is real ...
    assert after.mean() < 0.3 * before.mean()  # ... and mostly gone on data it was not fit on


@pytest.mark.parametrize("layernorm", [True, False])
def test_smooth_act_keeps_the_function_and_tames_an_outlier_channel(layernorm):
    """Input channel 3 is 100x the others. smooth-act leaves the float graph's output unchanged
    (1e-5 relative: float32 rounding of the rescaled constants) and 8-bit activations then keep
    the other channels: the quantised output error falls several fold."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    gamma = np.ones(16, np.float32)
    gamma[3] = 100.0
    nodes = [helper.make_node("MatMul", ["h", "w"], ["y"], name="fc")]
    if layernorm:  # the scale and shift of a LayerNorm split into Mul and Add absorb 1/s
        nodes = [
            helper.make_node("Mul", ["x", "gamma"], ["xg"]),
            helper.make_node("Add", ["xg", "beta"], ["h"]),
        ] + nodes
    else:  # a graph input has no producer to absorb 1/s: a vector-unit Mul is inserted
        nodes[0].input[0] = "x"
    graph = helper.make_graph(
        nodes,
        "smooth",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 32])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [16, 32], w.T.ravel()),
            helper.make_tensor("gamma", TensorProto.FLOAT, [16], gamma),
            helper.make_tensor("beta", TensorProto.FLOAT, [16], np.full(16, 0.1)),
        ],
    )
    model = cimc.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    spread = np.float32(1.0) if layernorm else gamma

    def data():
        return {"x": (rng.standard_normal((64, 16)) * spread).astype(np.float32)}

    calib, test = [data() for _ in range(4)], data()
    smoothed = cimc.run_passes(model, "smooth-act", calibration=calib)
    want = cimc.interpret(model, test)["y"]
    got = cimc.interpret(smoothed, test)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert len(smoothed) == len(model) + (0 if layernorm else 1)

    quant = "quantize-weights{bits=8,keep-edges=false},quantize-act"
    plain = cimc.interpret(cimc.run_passes(model, quant, calibration=calib), test)["y"]
    smooth = cimc.interpret(cimc.run_passes(smoothed, quant, calibration=calib), test)["y"]
    assert np.abs(smooth - want).mean() < 0.5 * np.abs(plain - want).mean()


def test_too_few_values_for_entropy_say_how_many_feeds():
    """128 values per feed: the KL histogram needs a value per bin (2048), so 16 feeds."""
    graph = layer_graph(n_in=8, rows=16)
    one = [{"x": np.ones((16, 8), np.float32)}]
    with pytest.raises(FeedError, match=r"give at least 16 feeds"):
        input_ranges(graph, one, ["fc"], "entropy", 99.99)


def test_percentile_of_too_few_values_is_the_maximum():
    """Nearest rank: the 99.99th percentile of fewer than 10,000 values is the largest one, so
    a layer seeing too few keeps the extremes instead of failing (small calibration sets)."""
    graph = layer_graph(n_in=8, rows=16)
    x = np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32)
    few = input_ranges(graph, [{"x": x}], ["fc"], "percentile", 99.99)["fc"]
    assert few == input_ranges(graph, [{"x": x}], ["fc"], "max")["fc"]
    many = [{"x": x * (1 + k)} for k in range(80)]  # 10,240 values: the percentile clips
    lo, hi = input_ranges(graph, many, ["fc"], "percentile", 99.99)["fc"]
    assert hi < float(x.max()) * 80
