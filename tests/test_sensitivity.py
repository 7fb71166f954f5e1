"""cimc.sensitivity: the layer whose weights quantise worst is ranked most sensitive."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

import cimc
from cimc.sensitivity import fidelity, layer_sensitivity


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
    pipeline = "quantize-weights{bits=4,keep-edges=false},quantize-act{bits=8}"
    rows = layer_sensitivity(mlp(True), feeds, pipeline)
    assert [r["layer"] for r in rows][0] == "fc1"
    assert len(rows) == 3 and all(r["op"] == "cimc.QuantMVM" for r in rows)
    assert rows[0]["rel_error"] > 2 * rows[1]["rel_error"]
    # without the outlier no layer stands out so far
    plain = layer_sensitivity(mlp(False), feeds, pipeline)
    assert plain[0]["rel_error"] < rows[0]["rel_error"]


def test_fidelity_of_identical_outputs():
    x = [np.arange(6.0).reshape(2, 3)]
    assert fidelity(x, x) == {"cosine": 1.0, "rel_error": 0.0}
