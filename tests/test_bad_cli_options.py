"""Options, study folders and checkpoints a user gets wrong end in one line and exit 2, before
any work: no traceback, no search that loops on an exhausted space, no folder left behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc.cli import main

DATA = Path(cimc.__file__).parent / "data"
MODEL = str(DATA / "digits_cnn.onnx")
SHAPE = ["--input-shape", "input=1,1,16,16"]
ONLY_VECTOR_WIDTH = (
    'drop = ["scheme", "vector", "pool", "act_bits", "keep", "DRAM_bw", "L2_bw", "L1_bw", '
    '"L1_num_child", "MA_num_child", "MA_bw", "MA_mem_size", "MA_comp_per_core", "perm_lanes"]\n'
)


def _refused(capsys, argv: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse's own refusals exit from parse_args
        code = main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and words in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["demo", "--samples", "0"], "--samples: 0 must be at least 1"),
        (["search", MODEL, "--max-area", "0"], "--max-area: 0 must be a finite number above 0"),
        (["search", MODEL, "--min-fidelity", "nan"], "must be a cosine, in [-1, 1]"),
        (["search", MODEL, "--workers", "-1"], "--workers: -1 must be at least 0"),
        (["finetune", MODEL, "--data", "x.npz", "-o", "o", "--lr", "inf"], "--lr: inf must be"),
        (["finetune", MODEL, "--data", "x.npz", "-o", "o", "--threads", "0"], "--threads: 0"),
        (["train", "--out", "o", "--subset", "0,0,0"], "--subset '0,0,0': every value"),
    ],
)
def test_out_of_range_options(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, argv, words)
    assert not (tmp_path / "o").exists()


def _space(tmp_path: Path, text: str, name: str = "space.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_search_stops_when_its_space_runs_out(tmp_path, capsys):
    space = _space(tmp_path, ONLY_VECTOR_WIDTH + "[choices]\nvector_width = [16, 32]\n")
    argv = ["search", MODEL, *SHAPE, "--budget", "6", "--population", "4", "--workers", "1"]
    assert main([*argv, "--space", space, "--study", str(tmp_path / "st")]) == 0
    assert "ran out after 2 distinct configurations (budget 6)" in capsys.readouterr().out
    nothing = _space(
        tmp_path,
        ONLY_VECTOR_WIDTH.replace('"perm_lanes"]', '"perm_lanes", "vector_width"]'),
        "nothing.toml",
    )
    assert main([*argv, "--space", nothing, "--study", str(tmp_path / "st2")]) == 2
    assert "no variable with two or more choices" in capsys.readouterr().err
    study = ["--space", space, "--study", str(tmp_path / "st")]
    other_data = tmp_path / "other.npz"
    np.savez(other_data, input=np.load(DATA / "digits_calib.npz")["input"][:20])
    for other, key in [(["--seed", "5"], "seed"), (["--data", str(other_data)], "data_sha256")]:
        assert main([*argv, *study, *other]) == 2  # resumed rows were drawn / measured otherwise
        assert f"was made for another {key}" in capsys.readouterr().err
    assert main([*argv, *study, "--objectives", "fidelity,"]) == 2
    assert "has an empty entry" in capsys.readouterr().err
    db = sqlite3.connect(tmp_path / "st" / "study.db")
    with db:
        db.execute("UPDATE evals SET metrics = 'garbage'")
    assert main(["search", "show", str(tmp_path / "st")]) == 2
    assert "holds a damaged record" in capsys.readouterr().err


def test_study_and_space_files_of_the_wrong_kind(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert main(["search", MODEL, *SHAPE, "--study", str(a_file)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "study.db").write_bytes(b"")
    assert main(["search", "show", str(tmp_path / "empty")]) == 2
    assert "holds no search settings" in capsys.readouterr().err
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(128, 256)))
    assert main(["search", MODEL, *SHAPE, "--space", str(binary)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_finetune_refuses_a_damaged_checkpoint_and_a_file_as_its_folder(tmp_path, capsys):
    data = str(DATA / "digits_calib.npz")
    argv = ["finetune", MODEL, *SHAPE, "--target", "cimpool-sram", "--data", data]
    argv += ["--steps", "2", "--threads", "1"]
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert main([*argv, "-o", str(a_file)]) == 2
    assert "it is a file; give a folder" in capsys.readouterr().err
    out = tmp_path / "ft"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    assert main([*argv, "-o", str(out)]) == 2
    assert "checkpoint" in (err := capsys.readouterr().err) and "is damaged" in err, err


def test_train_refuses_a_pretrained_file_that_is_not_a_state_dict(tmp_path, capsys):
    junk = tmp_path / "fp32.pt"
    junk.write_text("not torch")
    out = tmp_path / "tr"
    assert main(["train", "--out", str(out), "--pretrained", str(junk), "--no-compile"]) == 2
    assert "is not a torch state dict" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--pretrained", str(tmp_path / "no.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
