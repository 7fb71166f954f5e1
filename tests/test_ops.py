"""Single-op ONNX models, run by cimc's reference implementations and by onnxruntime.

These cover the op forms real-world exporters emit that the zoo graphs do not exercise:
Clip/HardSigmoid/HardSwish, Pad modes, Resize modes, ConvTranspose, decomposed LayerNorm,
Erf/Gelu, Softmax, Split/Slice, grouped and depthwise Conv, pooling corner cases.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_matches, run_ort
from onnx import TensorProto, helper, numpy_helper

import cimc

RNG = np.random.default_rng(0)


def _model(node_kwargs, inputs, consts=None, opset=17, n_out=1):
    """One node; float inputs given by shape, constants as initializers."""
    consts = consts or {}
    in_names = list(inputs) + list(consts)
    node_inputs = node_kwargs.pop("inputs", in_names)
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(node_kwargs.pop("op"), node_inputs, outs, **node_kwargs)
    graph = helper.make_graph(
        [node],
        "t",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    return _finish(graph, opset)


def _finish(graph, opset=17):
    """A checker-clean model: onnx >= 1.16 wants every graph output's shape, so infer it."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _check(model, inputs):
    feeds = {k: RNG.standard_normal(s).astype(np.float32) for k, s in inputs.items()}
    got = cimc.interpret(cimc.import_onnx(model), feeds)
    assert_matches(got, run_ort(model, feeds), rel=1e-5)


X = {"x": (2, 8, 9, 10)}
W = lambda *s: (RNG.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
I64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
F32 = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731

CASES = {
    "clip": (dict(op="Clip"), X, {"lo": F32(-0.5), "hi": F32(0.7)}),
    "hardsigmoid": (dict(op="HardSigmoid", alpha=0.25, beta=0.4), X, None),
    "hardswish": (dict(op="HardSwish"), X, None),
    "erf": (dict(op="Erf"), X, None),
    "leakyrelu": (dict(op="LeakyRelu", alpha=0.1), X, None),
    "softmax_axis1": (dict(op="Softmax", axis=1), X, None),
    "pad_constant": (
        dict(op="Pad", mode="constant"),
        X,
        {"p": I64(0, 1, 2, 0, 0, 2, 1, 3), "v": F32(0.5)},
    ),
    "pad_reflect": (dict(op="Pad", mode="reflect"), X, {"p": I64(0, 0, 2, 1, 0, 0, 1, 3)}),
    "pad_edge_crop": (dict(op="Pad", mode="edge"), X, {"p": I64(0, 0, -1, 2, 0, 0, 1, -2)}),
    "resize_nearest_scales": (
        dict(op="Resize", mode="nearest", inputs=["x", "", "s"]),
        X,
        {"s": F32(1, 1, 2, 1.5)},
    ),
    "resize_linear_half_pixel": (
        dict(op="Resize", mode="linear", inputs=["x", "", "", "sz"]),
        X,
        {"sz": I64(2, 8, 17, 23)},
    ),
    "resize_linear_align_corners": (
        dict(
            op="Resize",
            mode="linear",
            coordinate_transformation_mode="align_corners",
            inputs=["x", "", "", "sz"],
        ),
        X,
        {"sz": I64(2, 8, 5, 21)},
    ),
    "resize_nearest_asymmetric_floor": (
        dict(
            op="Resize",
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
            inputs=["x", "", "s"],
        ),
        X,
        {"s": F32(1, 1, 0.5, 3)},
    ),
    "conv_grouped_strided_dilated": (
        dict(op="Conv", group=4, strides=[2, 1], dilations=[1, 2], pads=[1, 2, 0, 1]),
        X,
        {"w": W(12, 2, 3, 3), "b": W(12)},
    ),
    "conv_depthwise_multiplier": (
        dict(op="Conv", group=8, pads=[2, 2, 2, 2], strides=[2, 2]),
        X,
        {"w": W(16, 1, 5, 5)},
    ),
    "conv_same_upper": (
        dict(op="Conv", auto_pad="SAME_UPPER", strides=[2, 2]),
        X,
        {"w": W(4, 8, 4, 3)},
    ),
    "conv_1d": (dict(op="Conv", pads=[1, 1]), {"x": (2, 8, 11)}, {"w": W(5, 8, 3)}),
    "convtranspose": (
        dict(op="ConvTranspose", strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0]),
        X,
        {"w": W(8, 3, 3, 4), "b": W(3)},
    ),
    "convtranspose_grouped_dilated": (
        dict(op="ConvTranspose", group=2, strides=[1, 2], dilations=[2, 1]),
        X,
        {"w": W(8, 2, 3, 3)},
    ),
    "maxpool_ceil_pads": (
        dict(op="MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1),
        X,
        None,
    ),
    "avgpool_exclude_pad_ceil": (
        dict(op="AveragePool", kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        X,
        None,
    ),
    "avgpool_include_pad": (
        dict(
            op="AveragePool",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        X,
        None,
    ),
    "lrn": (dict(op="LRN", size=5, alpha=1e-3, beta=0.75, bias=2.0), X, None),
    "layernorm": (
        dict(op="LayerNormalization", axis=-2, epsilon=1e-3),
        X,
        {"g": W(9, 10), "b": W(9, 10)},
    ),
    "instancenorm": (dict(op="InstanceNormalization"), X, {"g": W(8), "b": W(8)}),
    "gemm_transposed": (
        dict(op="Gemm", transA=1, transB=1, alpha=0.5, beta=2.0),
        {"x": (6, 4)},
        {"w": W(5, 6), "c": W(5)},
    ),
    "matmul_batched": (dict(op="MatMul"), {"x": (2, 3, 7, 6)}, {"w": W(6, 5)}),
    "slice_negative_steps": (
        dict(op="Slice"),
        X,
        {"s": I64(-1, 1), "e": I64(-100, 9), "a": I64(3, 1), "st": I64(-2, 3)},
    ),
    "split_uneven": (dict(op="Split", axis=3), X, {"sp": I64(3, 3, 4)}),
    "gather_negative": (dict(op="Gather", axis=1), X, {"i": I64(-1, 0, 3)}),
    "transpose": (dict(op="Transpose", perm=[0, 2, 3, 1]), X, None),
    "reducemean_axes": (dict(op="ReduceMean", axes=[1, 3], keepdims=0), X, None),
    "reducesum_input_axes": (dict(op="ReduceSum", keepdims=1), X, {"a": I64(-1)}),
    "depthtospace_crd": (dict(op="DepthToSpace", blocksize=2, mode="CRD"), X, None),
    "expand": (dict(op="Expand"), {"x": (3, 1, 5)}, {"s": I64(2, 1, 4, 1)}),
    "prelu": (dict(op="PRelu"), X, {"slope": W(8, 1, 1)}),
}
SPLIT_OUTS = {"split_uneven": 3}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case):
    kwargs, inputs, consts = CASES[case]
    model = _model(dict(kwargs), inputs, consts, n_out=SPLIT_OUTS.get(case, 1))
    _check(model, inputs)


def test_gelu_at_opset_20_is_kept_not_down_converted():
    for approx in ("none", "tanh"):
        model = _model(dict(op="Gelu", approximate=approx), X, opset=20)
        _check(model, X)


def test_split_by_num_outputs_at_opset_18():
    model = _model(dict(op="Split", axis=1, num_outputs=3), X, opset=18, n_out=3)
    _check(model, X)


def test_layernorm_written_out_as_exporters_do():
    """ReduceMean/Sub/Pow/Sqrt/Div, as older torch exports spell LayerNorm."""
    n = helper.make_node
    nodes = [
        n("ReduceMean", ["x"], ["mu"], axes=[-1]),
        n("Sub", ["x", "mu"], ["d"]),
        n("Pow", ["d", "two"], ["d2"]),
        n("ReduceMean", ["d2"], ["var"], axes=[-1]),
        n("Add", ["var", "eps"], ["ve"]),
        n("Sqrt", ["ve"], ["sd"]),
        n("Div", ["d", "sd"], ["xn"]),
        n("Mul", ["xn", "g"], ["xg"]),
        n("Add", ["xg", "b"], ["y"]),
    ]
    inits = {"two": F32(2.0), "eps": F32(1e-5), "g": W(16), "b": W(16)}
    graph = helper.make_graph(
        nodes,
        "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 5, 16))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    _check(_finish(graph), {"x": (2, 5, 16)})


def test_shape_subgraph_is_folded():
    """x.view(x.size(0), -1) as the TorchScript exporter writes it."""
    n = helper.make_node
    nodes = [
        n("Shape", ["x"], ["s"]),
        n("Gather", ["s", "zero"], ["b"], axis=0),
        n("Unsqueeze", ["b", "ax0"], ["bu"]),
        n("Concat", ["bu", "minus1"], ["shape"], axis=0),
        n("Reshape", ["x", "shape"], ["flat"]),
        n("Identity", ["flat"], ["y"]),
    ]
    inits = {"zero": np.array(0, dtype=np.int64), "ax0": I64(0), "minus1": I64(-1)}
    graph = helper.make_graph(
        nodes,
        "view",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("N", 3, 4))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = _finish(graph)
    g = cimc.import_onnx(model, input_shapes={"x": (5, 3, 4)})
    assert [n.op for n in g.nodes()] == ["Reshape"]
    assert g.outputs == ["y"] and g.values["y"].shape == (5, 12)
    x = RNG.standard_normal((5, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(cimc.interpret(g, {"x": x})["y"], x.reshape(5, 12))
