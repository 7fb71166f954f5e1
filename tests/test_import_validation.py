"""Malformed ONNX models are refused at import with a CimcError naming the node or tensor,
never a raw NumPy/ONNX exception or an allocation of the size the model asks for."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import cimc
from cimc.errors import ModelLoadError, NodeError, ShapeError, SizeLimitError
from cimc.interpreter import Interpreter, peak_live_bytes


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "m", inputs, outputs, list(inits))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def _vi(name: str, shape) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def _out(name: str, rank: int) -> onnx.ValueInfoProto:
    return _vi(name, [f"{name}{i}" for i in range(rank)])


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return nh.from_array(np.array(value, dtype), name)


def _conv(**attrs) -> onnx.ModelProto:
    w = _const("w", np.ones((4, 3, 3, 3)))
    node = h.make_node("Conv", ["x", "w"], ["y"], name="conv_bad", **attrs)
    return _model([node], [_vi("x", [1, 3, 8, 8])], [_out("y", 4)], [w])


def _unary(op: str, shape=(1, 3), opset=17, **attrs) -> onnx.ModelProto:
    node = h.make_node(op, ["x"], ["y"], name=f"{op.lower()}_bad", **attrs)
    return _model([node], [_vi("x", list(shape))], [_out("y", len(shape))], opset=opset)


@pytest.mark.parametrize(
    "model, node, words",
    [
        (_conv(pads=[-1, 0, 0, 0]), "conv_bad", "pads"),
        (_conv(strides=[0, 1]), "conv_bad", "strides"),
        (_conv(dilations=[1, 0]), "conv_bad", "dilations"),
        (_conv(strides=[1, 1, 1]), "conv_bad", "strides"),
        (_conv(group=2), "conv_bad", "group=2"),
        (_conv(group=0), "conv_bad", "group=0"),
        (
            _unary("MaxPool", (1, 3, 8, 8), kernel_shape=[2, 2], strides=[0, 2]),
            "maxpool_bad",
            "strides",
        ),
        (
            _unary("AveragePool", (1, 3, 8, 8), kernel_shape=[0, 2]),
            "averagepool_bad",
            "kernel_shape",
        ),
        (_unary("Softmax", axis=5), "softmax_bad", "axis=5"),
        (_unary("Flatten", axis=-4), "flatten_bad", "axis=-4"),
        (_unary("ArgMax", axis=2), "argmax_bad", "axis=2"),
        (_unary("Transpose", perm=[0, 0]), "transpose_bad", "perm"),
        (_unary("ReduceMean", opset=13, axes=[3]), "reducemean_bad", "axes"),
        (_unary("Cast", to=99), "cast_bad", "to=99"),
        (_unary("Cast", to=T.STRING), "cast_bad", "to=8"),
        (_unary("DepthToSpace", (1, 3, 2, 2), blocksize=2), "depthtospace_bad", "blocksize"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_attributes_break_onnx_rules(model, node, words):
    with pytest.raises(NodeError) as info:
        cimc.import_onnx(model)
    assert f"node {node!r}" in str(info.value) and words in str(info.value)


def test_concat_axis_and_unsqueeze_axes_out_of_range():
    concat = h.make_node("Concat", ["x", "x"], ["y"], name="cat", axis=2)
    with pytest.raises(NodeError, match="'cat'.*axis=2"):
        cimc.import_onnx(_model([concat], [_vi("x", [1, 3])], [_out("y", 2)]))
    unsq = h.make_node("Unsqueeze", ["x", "ax"], ["y"], name="unsq")
    model = _model([unsq], [_vi("x", [1, 3])], [_out("y", 3)], [_const("ax", [5], np.int64)])
    with pytest.raises(NodeError, match="'unsq'.*axes"):
        cimc.import_onnx(model)


def _range(limit: float, delta: float) -> onnx.ModelProto:
    rng = h.make_node("Range", ["a", "b", "d"], ["r"], name="range_bad")
    add = h.make_node("Add", ["x", "r"], ["y"], name="add")
    inits = [_const("a", 0.0), _const("b", limit), _const("d", delta)]
    return _model([rng, add], [_vi("x", [1])], [_out("y", 1)], inits)


def test_range_with_zero_delta():
    with pytest.raises(NodeError, match="'range_bad'.*delta is 0"):
        cimc.import_onnx(_range(5.0, 0.0))
    assert cimc.import_onnx(_range(5.0, 1.0)).values["y"].shape == (5,)


def test_non_utf8_string_attribute():
    model = _unary("Gelu", opset=20, approximate=b"\xff\xfe")
    with pytest.raises(NodeError, match="'gelu_bad'.*approximate.*UTF-8"):
        cimc.import_onnx(model)


def test_initializer_data_of_the_wrong_size(tmp_path):
    w = _const("w", np.ones((4, 3, 3, 3)))
    w.raw_data = w.raw_data[:-4]
    model = _conv()
    model.graph.initializer[0].CopyFrom(w)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for src in (model, path):
        with pytest.raises(ModelLoadError, match="'w'|tensor name: w"):
            cimc.import_onnx(src)


def _with_external_weights(tmp_path, location: str):
    model = _conv()
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    saved = onnx.load(path, load_external_data=False)
    for entry in saved.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(saved, path)
    return path


def test_external_data_only_from_the_model_folder(tmp_path):
    (tmp_path / "outside.bin").write_bytes(np.ones(108, np.float32).tobytes())
    sub = tmp_path / "model"
    sub.mkdir()
    ok = cimc.import_onnx(_with_external_weights(sub, "w.bin"))
    assert np.all(ok.constant("w") == 1.0)
    for location, words in [
        ("../outside.bin", "outside the model's folder"),
        (str(tmp_path / "outside.bin"), "outside the model's folder"),
        ("missing.bin", "missing"),
    ]:
        with pytest.raises(ModelLoadError, match=words) as info:
            cimc.import_onnx(_with_external_weights(sub, location))
        assert "'w'" in str(info.value)
    in_memory = onnx.load(_with_external_weights(sub, "w.bin"), load_external_data=False)
    with pytest.raises(ModelLoadError, match="'w'.*external"):
        cimc.import_onnx(in_memory)


def test_non_positive_dim_value_is_a_dynamic_dim():
    model = _unary("Relu", shape=(-1, 3))
    with pytest.raises(ShapeError, match="dim 0 is dynamic"):
        cimc.import_onnx(model)
    g = cimc.import_onnx(model, {"x": (2, 3)})
    assert g.values["x"].shape == (2, 3) and g.values["y"].shape == (2, 3)
    with pytest.raises(ShapeError, match="at least 1"):
        cimc.import_onnx(model, {"x": (0, 3)})


def test_huge_tensors_are_refused_before_allocation():
    relu = _unary("Relu", shape=(1, 3, 100_000, 100_000))
    with pytest.raises(SizeLimitError, match=r"'x'.*111\.8 GiB.*memory limit"):
        cimc.import_onnx(relu)
    cos = h.make_node("ConstantOfShape", ["s"], ["c"], name="cos")
    add = h.make_node("Add", ["x", "c"], ["y"], name="add")
    shape = _const("s", [100_000, 100_000], np.int64)
    model = _model([cos, add], [_vi("x", [1])], [_out("y", 2)], [shape])
    with pytest.raises(SizeLimitError, match=r"37\.3 GiB"):
        cimc.import_onnx(model)


def test_memory_limit_is_configurable(monkeypatch):
    model = _unary("Relu", shape=(1, 1024))  # 4 KiB in, 4 KiB out
    g = cimc.import_onnx(model)
    assert peak_live_bytes(g) == 8192  # input and output are live together
    with pytest.raises(SizeLimitError, match="interpreting"):
        cimc.import_onnx(model, memory_limit_bytes=6000)
    with pytest.raises(SizeLimitError, match="interpreting"):
        Interpreter(g, memory_limit_bytes=8191)
    monkeypatch.setenv("CIMC_MEMORY_LIMIT", "6K")
    with pytest.raises(SizeLimitError, match=r"6\.0 KiB"):
        cimc.import_onnx(model)
    monkeypatch.setenv("CIMC_MEMORY_LIMIT", "lots")
    with pytest.raises(cimc.errors.OptionError, match="CIMC_MEMORY_LIMIT"):
        cimc.import_onnx(model)


def _conv_with(w: np.ndarray, x_shape=(1, 3, 8, 8)) -> onnx.ModelProto:
    node = h.make_node("Conv", ["x", "w"], ["y"], name="conv_bad")
    return _model([node], [_vi("x", list(x_shape))], [_out("y", len(x_shape))], [_const("w", w)])


@pytest.mark.parametrize(
    "model, words",
    [
        (_conv_with(np.full((4, 3, 3, 3), np.nan)), "'w' holds 108 NaN or infinite"),
        (_conv_with(np.full((4, 3, 3, 3), np.inf)), "'w' holds 108 NaN or infinite"),
        (_conv_with(np.ones((4, 3, 3, 3, 3)), (1, 3, 4, 4, 4)), "3-D convolution"),
    ],
)
def test_weights_no_grid_holds_and_3d_convolutions_are_refused(model, words):
    with pytest.raises(NodeError, match=words):
        cimc.import_onnx(model)
    assert cimc.import_onnx(_conv_with(np.ones((4, 3, 3, 3)))).values["y"].shape == (1, 4, 6, 6)


def test_batchnorm_with_a_negative_variance():
    params = [_const(n, np.ones(3)) for n in ("s", "b", "m")]
    var = _const("v", [1.0, -2.0, 1.0])
    node = h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")
    model = _model([node], [_vi("x", [1, 3, 4, 4])], [_out("y", 4)], [*params, var])
    with pytest.raises(NodeError, match="variance 'v' has 1 negative entries"):
        cimc.import_onnx(model)


def test_numpy_refusing_a_node_is_a_node_error_naming_it():
    """Shapes ONNX's inference does not check (a Reshape whose target does not hold the
    elements) surface when the node runs: a NodeError naming it, not NumPy's ValueError."""
    shape = _const("shape", [5, 7], np.int64)
    node = h.make_node("Reshape", ["x", "shape"], ["y"], name="reshape_bad")
    graph = cimc.import_onnx(_model([node], [_vi("x", [1, 3, 8, 8])], [_out("y", 2)], [shape]))
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(NodeError, match=r"'reshape_bad' \(Reshape\).*size 192 into shape"):
        Interpreter(graph).run({"x": x})


def test_an_input_shape_too_large_for_onnx_is_a_shape_error():
    with pytest.raises(ShapeError, match="below 2\\*\\*63"):
        cimc.import_onnx(_conv(), {"x": (2**70, 3, 8, 8)})


def test_split_sizes_must_cover_the_axis():
    sizes = _const("split", [1, 5], np.int64)
    node = h.make_node("Split", ["x", "split"], ["a", "b"], name="split_bad", axis=1)
    model = _model([node], [_vi("x", [1, 3, 4])], [_out("a", 3), _out("b", 3)], [sizes])
    with pytest.raises(NodeError, match=r"split sizes \[1, 5\] do not add up to axis 1's length 3"):
        cimc.import_onnx(model)


def test_a_node_that_makes_an_empty_activation_is_named():
    model = _unary("MaxPool", (1, 3, 8, 8), kernel_shape=[20, 20])
    with pytest.raises(NodeError, match=r"'maxpool_bad' \(MaxPool\) makes 'y' of shape"):
        cimc.import_onnx(model)
    assert cimc.import_onnx(_unary("MaxPool", (1, 3, 8, 8), kernel_shape=[8, 8])).values[
        "y"
    ].shape == (1, 3, 1, 1)
