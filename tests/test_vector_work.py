"""The vector unit is costed by its real work (issue 10, "work where it happens"): MACs for
matrix products left off the arrays, kernel taps for pooling windows, input elements for
reductions, passes over the input for softmax and normalisation, one operation per element
otherwise; and attention's activation x activation MatMuls run on the vector unit or, with
``attention = "cim"``, on the arrays after their second operand is written into them."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from cimc.targets.emit import Emitter, emit_vector_layer
from cimc.targets.params import load_target
from cimc.targets.simulator import simulate
from onnx import TensorProto, helper

import cimc
from cimc.compiler import random_calibration
from cimc.frontend import import_onnx
from cimc.models.export import export_module
from cimc.models.vit import EncoderBlock
from cimc.ops import vector_work
from cimc.program import OP

TARGET = load_target("cimpool-sram")


def _graph(nodes, inputs, output, inits=()):
    """A one-output ONNX graph imported into cimc's IR (shapes from ONNX shape inference)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output.extend(v for v in inferred.graph.value_info if v.name == output)
    return import_onnx(model)


def _vec(graph, target=TARGET) -> np.ndarray:
    """The instructions emit_vector_layer gives the graph's only node."""
    (node,) = graph.nodes()
    em = Emitter(target)
    emit_vector_layer(em, graph, node, 0)
    return em.array()


def _depthwise(k: int):
    """A float depthwise 3x3/5x5 conv over 16 channels of 16x16, 'same' padding (it stays on
    the vector unit: no compression pass ran)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 1, k, k], np.ones(16 * k * k).tolist())
    conv = helper.make_node(
        "Conv", ["x", "w"], ["y"], group=16, kernel_shape=[k, k], pads=[k // 2] * 4
    )
    return _graph([conv], [("x", [1, 16, 16, 16])], "y", [w])


def test_depthwise_conv_cycles_grow_with_kernel_area():
    small, large = _vec(_depthwise(3)), _vec(_depthwise(5))
    out = 16 * 16 * 16
    # one VEC instruction whose work is the MACs: outputs x kernel taps (one input channel each)
    assert small["op"].tolist() == [OP["VEC"]]
    assert small["work"][0] == out * 9 and large["work"][0] == out * 25
    rate = TARGET.vector_macs_per_cycle
    assert small["cycles"][0] == math.ceil(out * 9 / rate)
    # exact: 4096 x 9 and 4096 x 25 are multiples of the 64 MAC/cycle rate
    assert large["cycles"][0] * 9 == small["cycles"][0] * 25


def test_activation_matmul_is_costed_at_its_macs():
    b, h, m, k, n = 1, 4, 32, 16, 48
    mm = helper.make_node("MatMul", ["q", "kt"], ["s"])
    g = _graph([mm], [("q", [b, h, m, k]), ("kt", [b, h, k, n])], "s")
    ins = _vec(g)
    assert ins["work"][0] == b * h * m * k * n  # M*K*N per matrix of the batch
    assert ins["cycles"][0] == math.ceil(b * h * m * k * n / TARGET.vector_macs_per_cycle)
    # the MAC rate is a target parameter that the cycles follow
    half = _vec(g, TARGET.replace(vector_macs_per_cycle=TARGET.vector_macs_per_cycle // 2))
    assert half["cycles"][0] == 2 * ins["cycles"][0]


@pytest.mark.parametrize(
    ("node", "per_input"),
    [
        (helper.make_node("Softmax", ["x"], ["y"], axis=-1), 5),  # max, sub, exp, sum, divide
        (helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1]), 1),  # one accumulate each
        (helper.make_node("Relu", ["x"], ["y"]), 1),  # element-wise: one op per output
        (helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1]), 1),  # data movement
    ],
    ids=["softmax", "reduce", "relu", "transpose"],
)
def test_work_rules_count_passes_over_the_input(node, per_input):
    g = _graph([node], [("x", [2, 24, 40])], "y")
    ins = _vec(g)
    assert ins["work"][0] == per_input * 2 * 24 * 40
    assert ins["cycles"][0] == math.ceil(per_input * 2 * 24 * 40 / TARGET.vector_width)


def test_layernorm_and_pooling_windows():
    scale = helper.make_tensor("s", TensorProto.FLOAT, [40], np.ones(40).tolist())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [40], np.zeros(40).tolist())
    ln = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)
    g = _graph([ln], [("x", [2, 24, 40])], "y", [scale, bias])
    # mean, subtract, square, variance sum, 1/sigma, scale, bias: 7 passes
    assert vector_work(g.nodes()[0], g).elem_ops == 7 * 2 * 24 * 40
    pool = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2])
    g = _graph([pool], [("x", [1, 8, 17, 17])], "y")
    assert _vec(g)["work"][0] == 8 * 8 * 8 * 9  # every output reads its 3x3 window


def _attention_block(seq: int, path) -> str:
    """One ViT encoder block (cimc.models.vit: pre-LN, 2 heads of 32) at sequence length seq."""
    torch.manual_seed(0)
    block = EncoderBlock(num_heads=2, dim=64, mlp_dim=128, dropout=0.0, seq_length=seq).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return str(export_module(block, torch.randn(1, seq, 64), path / f"block{seq}.onnx"))


def _attention_layers(program) -> set[str]:
    """The layers whose work grows with seq^2: QK^T, softmax, AV."""
    g = program.graph
    quad = {
        n.name
        for n in g.nodes()
        if n.op == "Softmax" or (n.op == "MatMul" and not g.values[n.inputs[1]].is_constant)
    }
    assert len(quad) == 3
    return quad


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    return {seq: _attention_block(seq, path) for seq in (128, 256)}


@pytest.mark.parametrize("attention", ["vector", "cim"])
def test_vit_attention_cycles_grow_with_sequence_squared(blocks, attention):
    cycles, array_cycles = {}, {}
    for seq, src in blocks.items():
        program = cimc.compile(src, "cimpool-sram", overrides={"attention": attention})
        feeds = random_calibration(program.graph, 1, seed=1)[0]
        result = simulate(program, feeds)
        expected = cimc.interpret(program.graph, feeds)
        for name, value in expected.items():  # the ISA change keeps the simulator exact
            np.testing.assert_array_equal(result.outputs[name], value)
        quad = _attention_layers(program)
        cycles[seq] = sum(layer.cycles for layer in result.layers if layer.name in quad)
        ins = program.instructions
        names = np.array([layer["node"] for layer in program.layers])
        mvm = np.isin(names[ins["layer"]], list(quad)) & (ins["op"] == OP["MVM_INT"])
        array_cycles[seq] = int(ins["cycles"][mvm].sum())
        written = ins[ins["op"] == OP["LOAD_A"]]
        if attention == "vector":
            assert len(written) == 0
        else:
            # K^T and V written into the arrays: at least their bytes at act_bits, through the
            # write port, and charged (buffer read and links) in the energy of those layers
            operand_bytes = 2 * (2 * 32 * seq) * TARGET.act_bits // 8
            assert written["bytes"].sum() >= operand_bytes
            layers = {layer.name: layer for layer in result.layers}
            mm = [layers[program.layers[i]["node"]] for i in np.unique(written["layer"])]
            assert len(mm) == 2
            assert all(layer.unit_busy.get("array_write", 0) > 0 for layer in mm)
    ratio = cycles[256] / cycles[128]
    if attention == "vector":
        # MACs and softmax passes over seq x seq scores, every count a multiple of the rates:
        # exactly 4x when the sequence doubles
        assert ratio == 4
        assert not array_cycles[128]
    else:
        # on the arrays the work (array-cycles summed over arrays) is exactly 4x: twice the
        # rows through twice the tiles (K and N are multiples of the tile at these sizes); the
        # latency grows less, since the new tiles run on otherwise idle arrays in parallel
        assert array_cycles[256] == 4 * array_cycles[128]
        assert 1.5 < ratio < 4
