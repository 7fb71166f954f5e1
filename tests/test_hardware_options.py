"""One source of truth for the macro's geometry and precision: the passes take rows, pool_cols,
error_rows, error_cols, act_bits and an int macro's weight_bits from the target, a pipeline or a
precompiled graph that contradicts the target is refused, and changing a parameter with
``overrides`` (what ``--set`` passes) changes the program consistently."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cimc.targets.params import load_target, presets
from cimc.targets.simulator import simulate
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc.cim_ops import POOL_OP, QUANT_OP
from cimc.compiler import random_calibration


def tiny_cnn() -> onnx.ModelProto:
    """conv 3->16, conv 16->32 (K = 144: two 128-row vectors), conv 32->32, FC: two pooled layers
    between the first and last, which weight-pool leaves at 8 bits."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        fan_in = int(np.prod(shape[1:]))
        data = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(data.astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Flatten", ["r3"], ["f"]),
        helper.make_node("Gemm", ["f", "w4"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [w("w1", 16, 3, 3, 3), w("w2", 32, 16, 3, 3), w("w3", 32, 32, 3, 3), w("w4", 10, 1152)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def feeds():
    return {"x": np.random.default_rng(3).standard_normal((1, 3, 6, 6)).astype(np.float32)}


def build(model, preset, **overrides):
    return cimc.compile(model, target=preset, overrides=overrides, calibration=2)


@pytest.fixture(scope="module")
def baseline(model, feeds):
    out = {}
    for preset in sorted(presets()):
        program = build(model, preset)
        out[preset] = (program, simulate(program, feeds))
    return out


def layers(program, op):
    return [n for n in program.graph.nodes() if n.op == op]


# (parameter, new value) per macro kind: each must change the program or be refused
CHANGES = {
    "cimpool": [
        ("rows", 64),
        ("pool_cols", 64),
        ("error_rows", 32),
        ("error_rows", 128),
        ("error_cols", 16),  # narrower than the 32-channel layers
        ("act_bits", 4),
        ("adc_bits", 5),
    ],
    "int": [("rows", 64), ("act_bits", 4), ("weight_bits", 4), ("adc_bits", 5)],
}


@pytest.mark.parametrize(
    "preset, param, value",
    [
        (p, param, v)
        for p in sorted(presets())
        for param, v in CHANGES[load_target(p).macro]
        if getattr(load_target(p), param) != v
    ],
)
def test_changing_a_parameter_changes_the_program(model, feeds, baseline, preset, param, value):
    base, base_result = baseline[preset]
    program = build(model, preset, **{param: value})
    target = program.target
    result = simulate(program, feeds)
    reference = cimc.interpret(program.graph, feeds)
    assert np.array_equal(result.outputs["y"], reference["y"])  # still bit-identical
    # Every compiled layer carries the target's geometry and precision.
    for node in layers(program, POOL_OP) + layers(program, QUANT_OP):
        assert node.attrs["act_bits"] == target.act_bits
        assert node.attrs.get("adc_bits", 0) == target.adc_bits
    for node in layers(program, POOL_OP):
        assert node.attrs["vector"] == target.rows
        assert program.graph.values[node.inputs[1]].shape == (target.pool_cols, target.rows)
        keep = node.meta["compression"]["error_keep"]
        assert round(keep * target.rows) == target.error_rows
        assert node.meta["compression"]["error_group"] % target.error_cols == 0
    if target.macro == "int":
        bits = [n.meta["compression"]["bits"] for n in layers(program, QUANT_OP)]
        assert bits[1:-1] == [target.weight_bits] * (len(bits) - 2)
    # ... and the program differs where the parameter acts.
    if param in ("act_bits", "adc_bits", "weight_bits", "pool_cols") or (
        param in ("rows", "error_rows") and target.macro == "cimpool"
    ):
        assert not np.array_equal(result.outputs["y"], base_result.outputs["y"])  # numerics
    if param in ("act_bits", "rows", "weight_bits", "error_rows", "error_cols"):
        changed = (
            result.cycles != base_result.cycles
            or program.graph.meta["weight_bytes"] != base.graph.meta["weight_bytes"]
        )
        assert changed  # cycles or storage
    if param in ("pool_cols", "adc_bits") or (param == "rows" and target.macro == "cimpool"):
        assert result.area_mm2 != base_result.area_mm2  # area (int arrays: MA_mem_size's)


@pytest.mark.parametrize(
    "preset, pipeline, words",
    [
        ("cimpool-sram", "zpack{vector=64},weight-pool{vector=64}", ["vector=64", "rows=128"]),
        ("cimpool-sram", "zpack,weight-pool{pool=64}", ["pool=64", "pool_cols=128"]),
        ("cimpool-sram", "zpack,weight-pool,error-term,error-prune{keep=0.25}", ["error_rows=32"]),
        ("cimpool-sram", "zpack,weight-pool,error-term,error-prune{group=32}", ["error_cols=128"]),
        ("cimpool-sram", "zpack,weight-pool,quantize-act{bits=4}", ["bits=4", "act_bits=8"]),
        ("int8-sram", "quantize-weights{bits=4},quantize-act", ["bits=4", "weight_bits=8"]),
    ],
)
def test_a_contradicting_pipeline_is_refused(model, preset, pipeline, words):
    with pytest.raises(cimc.CimcError) as info:
        cimc.compile(model, target=preset, pipeline=pipeline, calibration=2)
    text = str(info.value)
    assert "--set" in text
    for word in words:
        assert word in text, text


def test_the_same_value_set_explicitly_is_accepted(model):
    pipe = "zpack{vector=128},weight-pool{vector=128,pool=128},error-term,error-prune{keep=0.5}"
    explicit = cimc.compile(model, pipeline=pipe + ",quantize-act{bits=8}", calibration=2)
    default = cimc.compile(model, calibration=2)
    assert explicit.instructions.tobytes() == default.instructions.tobytes()


@pytest.mark.parametrize(
    "override, param",
    [
        ({"act_bits": 6}, "act_bits=8"),
        ({"pool_cols": 64}, "pool_cols=128"),
        ({"rows": 256, "error_rows": 128}, "rows=128"),
        ({"error_rows": 32}, "error_rows=64"),
        ({"adc_bits": 6}, "adc_bits=0"),
        ({"error_cols": 256}, "error_cols=256"),
    ],
)
def test_a_precompiled_graph_that_contradicts_the_target_is_refused(model, override, param):
    graph = cimc.run_passes(
        cimc.import_onnx(model),
        "fold-bn,zpack,weight-pool,error-term,error-prune,quantize-act",
        calibration=random_calibration(cimc.import_onnx(model), 2),
        target=load_target("cimpool-sram"),
    )
    cimc.compile(graph, target="cimpool-sram", pipeline="zpack", calibration=[])  # agrees
    with pytest.raises(cimc.CimcError) as info:
        cimc.compile(graph, "cimpool-sram", "zpack", overrides=override, calibration=[])
    assert param in str(info.value) and "layer" in str(info.value)


def test_int_layers_of_other_bits_are_refused_on_an_int_macro(model):
    graph = cimc.run_passes(
        cimc.import_onnx(model),
        "quantize-weights{bits=4},quantize-act",
        calibration=random_calibration(cimc.import_onnx(model), 2),
    )
    cimc.compile(graph, target="int4-sram", pipeline="zpack", calibration=[])
    with pytest.raises(cimc.CimcError, match="weight_bits=4 but target int8-sram"):
        cimc.compile(graph, target="int8-sram", pipeline="zpack", calibration=[])


def test_without_a_target_the_passes_keep_their_defaults(model):
    graph = cimc.run_passes(
        cimc.import_onnx(model), "zpack,weight-pool,error-term,error-prune", calibration=None
    )
    pooled = [n for n in graph.nodes() if n.op == POOL_OP]
    assert pooled and all(n.attrs["vector"] == 128 for n in pooled)
    assert all(graph.values[n.inputs[1]].shape[0] == 128 for n in pooled)
    assert all(n.meta["compression"]["error_keep"] == 0.5 for n in pooled)
    assert all(n.meta["compression"]["error_group"] == 128 for n in pooled)


def test_an_error_array_fraction_error_prune_cannot_keep_is_refused(model):
    with pytest.raises(cimc.CimcError, match="error_rows to one of 128, 64, 32"):
        build(model, "cimpool-sram", error_rows=100)
