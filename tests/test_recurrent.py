"""LSTM, GRU and If: the reference op against onnxruntime, the unrolled graph against both, and
the compiled program bit-identical to the interpreter.

Tolerances: the reference runs in float64 and onnxruntime in float32, so they differ by float32
rounding accumulated over the steps: 2e-5 absolute on outputs of magnitude <= 1 (tanh-bounded
hidden states; the cell state of a few steps stays below 3), about 100 float32 ulps.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cimc.targets.params import presets
from cimc.targets.simulator import simulate
from onnx import TensorProto, helper

import cimc
from cimc.errors import ShapeError, UnsupportedOpError
from cimc.ir import Node
from cimc.ops import REGISTRY

SEQ, BATCH, IN, HID = 5, 2, 6, 4
ATOL = 2e-5


def recurrent_model(
    op: str,
    direction: str = "forward",
    bias: bool = True,
    states_as_inputs: bool = False,
    peepholes: bool = False,
    layout: int = 0,
    seed: int = 0,
    **attrs,
) -> onnx.ModelProto:
    """One LSTM or GRU node with seeded weights; initial states are graph inputs or omitted."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3}[op]
    dirs = 2 if direction == "bidirectional" else 1

    inits = {
        "W": rng.uniform(-0.6, 0.6, (dirs, gates * HID, IN)),
        "R": rng.uniform(-0.6, 0.6, (dirs, gates * HID, HID)),
    }
    if bias:
        inits["B"] = rng.uniform(-0.3, 0.3, (dirs, 2 * gates * HID))
    if peepholes:
        inits["P"] = rng.uniform(-0.5, 0.5, (dirs, 3 * HID))
    x_shape = [BATCH, SEQ, IN] if layout else [SEQ, BATCH, IN]
    state_shape = [BATCH, dirs, HID] if layout else [dirs, BATCH, HID]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    names = ["X", "W", "R", "B" if bias else "", ""]
    states = ["h0", "c0"] if op == "LSTM" else ["h0"]
    for s in states:
        if states_as_inputs:
            inputs.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, state_shape))
        names.append(s if states_as_inputs else "")
    if peepholes:
        names.append("P")
    while names and not names[-1]:
        names.pop()
    outs = ["Y", "Y_h", "Y_c"][: 1 + len(states)]
    node = helper.make_node(
        op, names, outs, hidden_size=HID, direction=direction, layout=layout, **attrs
    )
    y_shape = [BATCH, SEQ, dirs, HID] if layout else [SEQ, dirs, BATCH, HID]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)]
    outputs += [helper.make_tensor_value_info(o, TensorProto.FLOAT, state_shape) for o in outs[1:]]
    graph = helper.make_graph(
        [node],
        f"{op}_{direction}",
        inputs,
        outputs,
        [
            helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
            for k, v in inits.items()
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def feeds_of(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return {
        i.name: rng.uniform(-1, 1, [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(
            np.float32
        )
        for i in model.graph.input
        if i.name not in inits
    }


def ort_outputs(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, sess.run(names, feeds)))


def reference_outputs(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """The registered LSTM/GRU op run directly, not unrolled."""
    n = model.graph.node[0]
    node = Node("rnn", n.op_type, list(n.input), list(n.output), cimc.frontend._attrs(n, "rnn"))
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    args = [None if not i else feeds.get(i, consts.get(i)) for i in n.input]
    result = REGISTRY[n.op_type].impl(node, *args)
    return dict(zip(n.output, result))


CASES = [
    ("LSTM", dict(direction="forward")),
    ("LSTM", dict(direction="reverse", states_as_inputs=True)),
    ("LSTM", dict(direction="bidirectional", states_as_inputs=True)),
    ("LSTM", dict(direction="bidirectional", bias=False)),
    ("LSTM", dict(peepholes=True, states_as_inputs=True)),
    ("LSTM", dict(layout=1, direction="bidirectional", states_as_inputs=True)),
    ("LSTM", dict(input_forget=1, states_as_inputs=True)),
    (
        "LSTM",
        dict(
            activations=["HardSigmoid", "LeakyRelu", "Softsign"],
            activation_alpha=[0.3, 0.1],
            activation_beta=[0.4],
        ),
    ),
    ("GRU", dict(direction="forward")),
    ("GRU", dict(direction="reverse", states_as_inputs=True, linear_before_reset=1)),
    ("GRU", dict(direction="bidirectional", states_as_inputs=True)),
    ("GRU", dict(direction="bidirectional", linear_before_reset=1, bias=False)),
    ("GRU", dict(layout=1, states_as_inputs=True, linear_before_reset=1)),
]
IDS = [f"{op}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for op, kw in CASES]


def ort_expected(op: str, kw: dict, feeds: dict) -> dict[str, np.ndarray]:
    """onnxruntime's outputs; it has no layout=1 kernel, so those run the layout=0 model on
    transposed tensors (batch and sequence axes swapped in, and back out)."""
    if not kw.get("layout"):
        return ort_outputs(recurrent_model(op, **kw), feeds)
    time_major = recurrent_model(op, **{**kw, "layout": 0})
    out = ort_outputs(time_major, {k: v.swapaxes(0, 1) for k, v in feeds.items()})
    return {k: v.transpose(2, 0, 1, 3) if k == "Y" else v.swapaxes(0, 1) for k, v in out.items()}


@pytest.mark.parametrize(("op", "kw"), CASES, ids=IDS)
def test_reference_and_unrolled_match_onnxruntime(op, kw):
    model = recurrent_model(op, **kw)
    feeds = feeds_of(model)
    want = ort_expected(op, kw, feeds)
    ref = reference_outputs(model, feeds)
    graph = cimc.import_onnx(model)
    assert not any(n.op in ("LSTM", "GRU") for n in graph.nodes())
    got = cimc.interpret(graph, feeds)
    for name, expected in want.items():
        assert ref[name].shape == expected.shape and got[name].shape == expected.shape, name
        np.testing.assert_allclose(ref[name], expected, atol=ATOL, err_msg=f"reference {name}")
        np.testing.assert_allclose(got[name], expected, atol=ATOL, err_msg=f"unrolled {name}")


def test_projections_on_cim_and_steps_in_order():
    """Bidirectional LSTM: per direction one input projection over all steps and one recurrent
    product per step (the first step's is folded: zero initial state) run on the arrays."""
    graph = cimc.import_onnx(recurrent_model("LSTM", direction="bidirectional"))
    cim = [n for n in graph.nodes() if cimc.ops.runs_on_cim(n, graph)]
    projections = [n for n in cim if graph.values[n.inputs[0]].shape == (SEQ, BATCH, IN)]
    steps = [n for n in cim if graph.values[n.inputs[0]].shape == (BATCH, HID)]
    assert len(projections) == 2
    assert len(steps) == 2 * (SEQ - 1)
    # each direction's steps read a single shared R^T constant
    assert len({n.inputs[1] for n in steps}) == 2
    order = {n.name: i for i, n in enumerate(graph.nodes())}
    for d in ("d0", "d1"):
        mine = [n for n in steps if f".{d}." in n.inputs[1]]
        chain = sorted(mine, key=lambda n: order[n.name])
        for a, b in zip(chain, chain[1:]):  # step t+1's product comes after step t's
            assert order[a.name] < order[b.name]


def test_unsupported_attributes_are_named():
    with pytest.raises(UnsupportedOpError, match="clip"):
        cimc.import_onnx(recurrent_model("LSTM", clip=1.0))
    with pytest.raises(UnsupportedOpError, match="ScaledTanh"):
        cimc.import_onnx(recurrent_model("GRU", activations=["ScaledTanh", "Tanh"]))


@pytest.mark.parametrize("preset", sorted(presets()))
def test_compiled_recurrent_is_bit_identical(preset, tmp_path):
    model = recurrent_model("LSTM", direction="bidirectional", states_as_inputs=True)
    calibration = [feeds_of(model, seed=s) for s in range(3)]
    program = cimc.compile(model, target=preset, calibration=calibration)
    program = cimc.load_program(program.save(tmp_path / "p.cimx"))
    feeds = feeds_of(model, seed=9)
    result = simulate(program, feeds)
    reference = cimc.interpret(program.graph, feeds)
    for name, want in reference.items():
        assert np.array_equal(result.outputs[name], want), name
    fp32 = ort_outputs(model, feeds)["Y"]
    assert np.corrcoef(result.outputs["Y"].ravel(), fp32.ravel())[0, 1] > 0.9


# ---- If --------------------------------------------------------------------------------------
def if_model(cond: np.ndarray | None, else_shape=(1, 3)) -> onnx.ModelProto:
    """y = If(cond or sum(x) > 0, then: x @ A, else: x * 2 reshaped); x is [1, 3]."""
    a = np.arange(9, dtype=np.float32).reshape(3, 3) / 9
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "A"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 3])],
    )
    shape = helper.make_tensor("shape", TensorProto.INT64, [len(else_shape)], list(else_shape))
    else_g = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["e0"]),
            helper.make_node("Reshape", ["e0", "shape"], ["e_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, list(else_shape))],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]), shape],
    )
    nodes = []
    inits = [helper.make_tensor("A", TensorProto.FLOAT, [3, 3], a.ravel())]
    if cond is None:
        inits.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
        nodes += [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["cond"]),
        ]
    else:
        inits.append(helper.make_tensor("cond", TensorProto.BOOL, [1], cond.ravel()))
    nodes.append(
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="the_if"
        )
    )
    graph = helper.make_graph(
        nodes,
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("x", [[[1.0, 2.0, 3.0]], [[-1.0, -2.0, 0.5]]])
def test_data_dependent_if_selects_at_run_time(x):
    model = if_model(None)
    feeds = {"x": np.array(x, dtype=np.float32)}
    graph = cimc.import_onnx(model)
    ops = [n.op for n in graph.nodes()]
    assert "Where" in ops and "MatMul" in ops and "Mul" in ops  # both branches are compiled
    np.testing.assert_allclose(
        cimc.interpret(graph, feeds)["y"], ort_outputs(model, feeds)["y"], rtol=1e-6
    )


@pytest.mark.parametrize("cond", [True, False])
def test_constant_if_keeps_only_the_taken_branch(cond):
    model = if_model(np.array([cond]))
    graph = cimc.import_onnx(model)
    ops = {n.op for n in graph.nodes()}
    assert "Where" not in ops
    assert ("MatMul" in ops) == cond and ("Mul" in ops) != cond
    feeds = {"x": np.array([[1.0, -2.0, 3.0]], dtype=np.float32)}
    np.testing.assert_allclose(
        cimc.interpret(graph, feeds)["y"], ort_outputs(model, feeds)["y"], rtol=1e-6
    )


def test_if_with_branches_of_different_shapes_is_refused():
    with pytest.raises(ShapeError, match=r"If node 'the_if'.*\(1, 3\).*\(3, 1\)"):
        cimc.import_onnx(if_model(None, else_shape=(3, 1)))


def test_cli_names_the_if_node_in_one_line(tmp_path, capsys):
    from cimc.cli import main

    path = tmp_path / "bad_if.onnx"
    onnx.save(if_model(None, else_shape=(3, 1)), path)
    assert main(["compile", str(path), "-o", str(tmp_path / "p.cimx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "If node 'the_if'" in err, err


def test_steps_are_timed_one_after_another():
    """Each step's recurrent product waits for the previous hidden state, so the simulated
    cycles of the per-step layers grow with the sequence, at the same cost per step."""
    per_step = []
    for seq in (SEQ, 2 * SEQ):
        model = recurrent_model("GRU", linear_before_reset=1)
        x = model.graph.input[0].type.tensor_type.shape.dim[0]
        x.dim_value = seq
        for o in model.graph.output:  # Y has the sequence first; Y_h does not
            if o.name == "Y":
                o.type.tensor_type.shape.dim[0].dim_value = seq
        program = cimc.compile(model, target="int8-sram", calibration=[feeds_of(model)])
        result = simulate(program, feeds_of(model, seed=2))
        steps = [c for name, c in result.layer_cycles.items() if ".hr" in name]
        assert len(steps) == seq - 1  # the first step's product is folded (zero state)
        assert all(c > 0 for c in steps)
        per_step.append(sum(steps) / len(steps))
    assert per_step[1] == pytest.approx(per_step[0], rel=0.05)
