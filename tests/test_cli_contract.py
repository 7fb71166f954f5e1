"""The CLI contract: user errors are one line with exit 2, bugs one line naming a saved
traceback with exit 1, a closed pipe is quiet; --compare refuses a model the program did not
come from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cimc.cli import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_missing_model_is_one_line(capsys, tmp_path):
    assert main(["compile", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.cimx")]) == 2
    assert "missing.onnx" in _one_line(capsys)


def test_non_positive_input_shape_is_one_line(capsys, tmp_path):
    args = ["compile", "cimc/data/digits_cimpool.onnx", "-o", str(tmp_path / "o.cimx")]
    assert main([*args, "--input-shape", "input=0,1,32,32"]) == 2
    assert "positive" in _one_line(capsys)


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile"])
    assert exc.value.code == 2
    _one_line(capsys)


def test_bug_is_one_line_with_saved_traceback(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("planted")

    monkeypatch.setattr("cimc.cli.build_parser", _parser_with(boom))
    assert main(["targets"]) == 1
    err = _one_line(capsys)
    path = Path(err.rsplit("traceback saved to ", 1)[1].strip())
    assert "bug" in err and "RuntimeError: planted" in path.read_text()
    path.unlink()


def _parser_with(func):
    from cimc import cli

    real = cli._Parser

    def build():
        parser = real(prog="cimc")
        sub = parser.add_subparsers(dest="command", required=True)
        sub.add_parser("targets").set_defaults(func=func)
        return parser

    return build


def test_broken_pipe_is_quiet():
    cmd = f"{sys.executable} -m cimc.cli targets --json | head -c 1"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stderr == ""


@pytest.fixture(scope="module")
def program_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "d.cimx"
    model = "cimc/data/digits_cimpool.onnx"
    assert main(["compile", model, "--input-shape", "input=1,1,32,32", "--calibration", "2",
                 "-o", str(out)]) == 0  # fmt: skip
    return out


def test_compare_refuses_a_different_model(capsys, program_path, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(Path("cimc/data/digits_cnn.onnx").read_bytes())
    assert main(["run", str(program_path), "--compare", str(other)]) == 2
    assert "not the model the program was compiled from" in _one_line(capsys)


def test_input_that_is_not_npy_is_one_line(capsys, program_path, tmp_path):
    bad = tmp_path / "x.npy"
    bad.write_text("not an array")
    assert main(["run", str(program_path), "--input", f"input={bad}"]) == 2
    assert "not a .npy" in _one_line(capsys)
