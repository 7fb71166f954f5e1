"""Output paths a command cannot write fail at once, before any work or other output: the
temporary-file-and-rename write would otherwise replace a device or pipe, write into a
directory's place, or overwrite the model being compiled. Ctrl-C and a closed stdout end a
command in one line or quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cimc
from cimc.atomic import check_output
from cimc.cli import main
from cimc.errors import OutputError

MODEL = str(Path(cimc.__file__).parent / "data" / "digits_cnn.onnx")
SHAPE = ["--input-shape", "input=1,1,16,16"]


def test_check_output_refuses_what_a_rename_would_destroy(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {
        fifo: "not a regular file",
        tmp_path: "is a directory",
        Path("."): "give a file name",
        tmp_path / "missing" / "x.cimx": "does not exist",
        tmp_path / "plot.txt": "extensions .png",
    }
    for path, message in cases.items():
        with pytest.raises(OutputError, match=message):
            check_output(path, (".png",) if path.suffix == ".txt" else ())
    assert fifo.exists() and not fifo.is_file()  # untouched
    assert check_output(tmp_path / "ok.png", (".png",)) == tmp_path / "ok.png"


def test_compile_refuses_to_overwrite_its_model(tmp_path, capsys):
    model = tmp_path / "mine.onnx"
    model.write_bytes(Path(MODEL).read_bytes())
    assert main(["compile", str(model), *SHAPE, "-o", str(model)]) == 2
    assert "is the model being compiled" in capsys.readouterr().err
    assert model.read_bytes() == Path(MODEL).read_bytes()


def test_a_bad_plot_path_fails_before_the_json_is_written(tmp_path, capsys):
    program = tmp_path / "p.cimx"
    assert main(["compile", MODEL, *SHAPE, "-o", str(program)]) == 0
    capsys.readouterr()
    out = tmp_path / "r.json"
    assert main(["run", str(program), "--json", str(out), "--plot", str(tmp_path / "p")]) == 2
    assert "extensions .png, .pdf, .svg" in capsys.readouterr().err
    assert not out.exists()
    svg = tmp_path / "p.svg"  # the format follows the extension, not the temporary name
    assert main(["run", str(program), "--plot", str(svg)]) == 0
    assert svg.read_text().lstrip().startswith("<?xml")


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    from cimc.cli import inspect

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect, "cmd_inspect", interrupted)
    assert main(["inspect", MODEL, *SHAPE]) == 130
    assert capsys.readouterr().err == "cimc: interrupted\n"


def test_a_closed_stdout_ends_a_table_command_quietly():
    cmd = f"{sys.executable} -m cimc.cli inspect {MODEL} {' '.join(SHAPE)} | head -c 10"
    proc = subprocess.run(
        ["bash", "-c", f"{cmd}; exit ${{PIPESTATUS[0]}}"], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stderr) == (0, "")
