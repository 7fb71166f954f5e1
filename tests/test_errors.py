"""Bad input gives a CimcError subclass with a useful message; the CLI prints one line, exits 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import light_path
from onnx import TensorProto, helper

import cimc
from cimc.cli import main
from cimc.errors import CimcError, FeedError, ModelLoadError, UnsupportedOpError


def test_file_that_is_not_onnx(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a protobuf\n" * 20)
    with pytest.raises(ModelLoadError, match="notes.onnx"):
        cimc.import_onnx(p)


def test_truncated_file(tmp_path):
    data = light_path("resnet50").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="truncated"):
        cimc.import_onnx(p)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        cimc.import_onnx(tmp_path / "nope.onnx")


def _graph_model(nodes, opset=17):
    g = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_unsupported_ops_reported_all_at_once():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Hardmax", ["a"], ["b"], name="hm1"),
        helper.make_node("Celu", ["b"], ["c"], name="celu"),
        helper.make_node("Hardmax", ["c"], ["y"], name="hm2"),
    ]
    m = helper.make_model(
        helper.make_graph(
            nodes,
            "bad",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 4))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4))],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(UnsupportedOpError) as info:
        cimc.import_onnx(m)
    msg = str(info.value)
    assert "Hardmax" in msg and "hm1" in msg and "hm2" in msg
    assert "Celu" in msg and "celu" in msg
    assert info.value.unsupported == {"Hardmax": ["hm1", "hm2"], "Celu": ["celu"]}


def test_unsupported_attribute_value_is_reported_at_import():
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="cubic")
    g = helper.make_graph(
        [node],
        "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 1, 4, 4))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 1, 8, 8))],
        [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="mode=cubic.*up"):
        cimc.import_onnx(m)


def test_model_failing_the_checker():
    # Relu reads a value nothing defines: the checker rejects the graph.
    m = _graph_model([helper.make_node("Relu", ["undefined"], ["y"])])
    with pytest.raises(ModelLoadError, match="fails the ONNX checker"):
        cimc.import_onnx(m)


def test_feeds_are_checked():
    g = cimc.import_onnx(_graph_model([helper.make_node("Relu", ["x"], ["y"])]))
    with pytest.raises(FeedError, match="missing"):
        cimc.interpret(g, {})
    with pytest.raises(FeedError, match=r"shape \(2, 4\)"):
        cimc.interpret(g, {"x": np.zeros((2, 4), np.float32)})
    out = cimc.interpret(g, {"x": -np.ones((1, 4), np.float64)})  # same kind: cast
    assert out["y"].dtype == np.float32 and not out["y"].any()


def test_all_errors_share_the_base_class():
    for cls in (ModelLoadError, UnsupportedOpError, FeedError, cimc.errors.ShapeError):
        assert issubclass(cls, CimcError)


SQUEEZENET = str(light_path("squeezenet"))


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "{tmp}/garbage.onnx"],
        ["inspect", "{tmp}/missing.onnx"],
        ["inspect", str(light_path("squeezenet")), "--input-shape", "data_0"],
        ["inspect", str(light_path("squeezenet")), "--input-shape", "nope=1,3,224,224"],
        # a bare .npy where calibration needs an .npz naming each input
        ["compile", SQUEEZENET, "--calibration", "{tmp}/calib.npy", "-o", "{tmp}/a.cimx"],
        ["compile", SQUEEZENET, "--calibration", "{tmp}/garbage.onnx", "-o", "{tmp}/a.cimx"],
        ["compile", SQUEEZENET, "--calibration", "0", "-o", "{tmp}/no/such/dir/a.cimx"],
    ],
)
def test_cli_prints_one_line_and_exits_2(args, tmp_path, capsys):
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 10)
    np.save(tmp_path / "calib.npy", np.zeros((2, 3, 224, 224), np.float32))
    code = main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cimc: error: ") and err.count("\n") == 1
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # nothing half-written


def test_cli_as_a_process_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "cimc.cli", "inspect", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_failed_write_leaves_no_file(tmp_path):
    from cimc.atomic import atomic_path

    target = tmp_path / "out.cimx"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.cimx"]
    with (
        pytest.raises(cimc.errors.OutputError, match="does not exist"),
        atomic_path(tmp_path / "missing" / "x.cimx"),
    ):
        pass
