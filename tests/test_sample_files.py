"""Input samples from files are checked before any pass or kernel sees them, the same way for
`compile --calibration`, `sensitivity --data` (and the search's --data), and `run --input`:
each bad file is one line naming the file and the fix, exit status 2."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc.cli import main

MODEL = str(Path(cimc.__file__).parent / "data" / "digits_cnn.onnx")
SHAPE = ["--input-shape", "input=1,1,16,16"]
GOOD = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)

BAD = {
    "huge": (GOOD * 1e20, "beyond \\+-1e\\+09"),
    "nan": (np.where(GOOD > 0.5, np.nan, GOOD), "NaN or infinity"),
    "uint8": ((GOOD * 255).astype(np.uint8), "is uint8, the model's input is float32"),
    "shape": (np.zeros((4, 3, 16, 16), np.float32), "samples of shape \\(3, 16, 16\\)"),
    "empty": (GOOD[:0], "shape \\(0, 1, 16, 16\\)"),
}


@pytest.mark.parametrize("command", ["compile", "sensitivity"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_samples_are_refused_before_any_pass(tmp_path, capsys, command, case):
    data, message = BAD[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, input=data)
    flag = "--calibration" if command == "compile" else "--data"
    out = ["-o", str(tmp_path / "o.cimx")] if command == "compile" else []
    assert main([command, MODEL, *SHAPE, flag, str(path), *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err
    assert "pass #" not in err  # the file is named, not the pass that would have tripped
    assert re.search(message, err), err


def test_the_same_file_when_good_calibrates(tmp_path):
    path = tmp_path / "good.npz"
    np.savez(path, input=GOOD, labels=np.arange(4))
    assert (
        main(["compile", MODEL, *SHAPE, "--calibration", str(path), "-o", str(tmp_path / "o.cimx")])
        == 0
    )


def test_run_refuses_a_non_finite_input(tmp_path, capsys):
    program = tmp_path / "p.cimx"
    assert main(["compile", MODEL, *SHAPE, "-o", str(program)]) == 0
    x = GOOD[:1].copy()
    x[0, 0, 0, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["run", str(program), "--input", f"input={tmp_path / 'x.npy'}"]) == 2
    assert "holds NaN or infinity" in capsys.readouterr().err
