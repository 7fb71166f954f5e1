"""The fast paths of the torch conversion and of distillation (magika's step, 2.0 -> ~1.1 s):
a k x 1 conv over width 1 as a 1-D conv, moves in input order as reshapes, and the teacher's
outputs kept per sample. Each must give the numbers of the general path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cimc  # noqa: E402
from cimc.torch_backend import GraphModule  # noqa: E402
from cimc.train.distill import _Targets, load_samples  # noqa: E402

DATA = Path(cimc.__file__).parent / "data"
# float32 torch against the float64 interpreter over at most 24 products per output: a real
# layout error is of the output's scale, rounding below 1e-6 of it
REL = 1e-5


def _graph(tmp_path: Path, nodes, inputs, outputs, inits) -> cimc.Graph:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return cimc.import_onnx(path)


def _same(graph: cimc.Graph, x: np.ndarray) -> torch.Tensor:
    """The module's output on ``x``, checked against the reference interpreter."""
    got = GraphModule(graph)(torch.from_numpy(x))[0]
    ref = cimc.interpret(graph, {graph.inputs[0]: x})[graph.outputs[0]]
    assert tuple(got.shape) == ref.shape
    assert np.abs(got.detach().numpy() - ref).max() <= REL * np.abs(ref).max()
    return got


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"strides": [2, 1], "pads": [2, 0, 1, 0]},
        {"dilations": [2, 1], "group": 2},
        {"strides": [3, 3], "pads": [1, 0, 1, 0], "group": 4},  # the width stride: no effect
    ],
)
def test_a_column_conv_runs_as_a_1d_conv_with_the_interpreters_numbers(tmp_path, attrs):
    rng = np.random.default_rng(0)
    group = attrs.get("group", 1)
    w = rng.standard_normal((8, 4 // group, 3, 1)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    graph = _graph(
        tmp_path,
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 1], **attrs)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 13, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list("nchw"))],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    _same(graph, rng.standard_normal((1, 4, 13, 1)).astype(np.float32))


def test_moves_in_input_order_are_reshapes_and_the_others_gathers(tmp_path):
    graph = _graph(
        tmp_path,
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Pad", ["f", "p"], ["y"], mode="constant"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list("nk"))],
        [numpy_helper.from_array(np.array([0, 1, 0, 2], np.int64), "p")],
    )
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    module = GraphModule(graph)
    flatten, pad = graph.nodes()
    t = torch.from_numpy(x)
    flat = module.run_node(flatten, [t])[0]
    assert flat.data_ptr() == t.data_ptr()  # a view of the input: no copy
    module(t)
    assert module._moves[flatten.name] == [None]
    assert module._moves[pad.name][0] is not None  # the fill value and the input, gathered
    y = _same(graph, x)
    assert torch.equal(y[:, 1:-2], flat) and not y[:, 0].any() and not y[:, -2:].any()


def test_the_teachers_outputs_are_kept_per_sample_whatever_the_order_of_the_picks():
    graph = cimc.import_onnx(DATA / "digits_cnn.onnx", {"input": (1, 1, 16, 16)})
    data = load_samples(DATA / "digits_calib.npz", graph, 16)
    teacher = GraphModule(graph).eval()
    calls = []
    forward = teacher.forward
    teacher.forward = lambda *x: calls.append(1) or forward(*x)
    n = len(data["input"])
    picks = torch.randint(0, n, (5, 8), generator=torch.Generator().manual_seed(0))
    kept = _Targets(teacher, data, fixed=True)
    first = [kept(p, None)[0][0] for p in picks]
    assert len(calls) == kept.done.sum() == len(torch.unique(picks))  # each picked sample once
    again = _Targets(teacher, data, fixed=True)
    for p, out in reversed(list(zip(picks, first))):
        assert torch.equal(again(p, None)[0][0], out)  # order-free, bit for bit
    with torch.no_grad():
        fresh = torch.func.vmap(teacher)(data["input"][picks[0]])[0]
    assert torch.allclose(first[0], fresh, rtol=0, atol=1e-6 * float(fresh.abs().max()))
    batch = {"input": data["input"][picks[0]] + 1}  # augmented: run as given, nothing kept
    loose = _Targets(teacher, data, fixed=False)
    assert not torch.allclose(loose(picks[0], batch)[0][0], first[0])
    assert not loose.done.any()
