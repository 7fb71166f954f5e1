"""quantize-act's calibration methods on data whose best clipping is known."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import cimc
from cimc.calibration import METHODS, input_ranges


def layer_graph(n_in: int = 64) -> cimc.Graph:
    w = np.eye(n_in, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, n_in])],
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
