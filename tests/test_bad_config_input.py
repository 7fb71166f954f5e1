"""Bad target, pipeline, space-file and CLI input is refused with a message that names the
parameter and the fix, instead of being read as something else (a TOML true as 1, a string as
its letters) or silently letting the last of two settings win."""

from __future__ import annotations

from pathlib import Path

import pytest
from cimc.targets.params import load_target

from cimc.cli import main
from cimc.errors import OptionError
from cimc.passes_base import parse_pipeline
from cimc.search.space import Space

DATA = Path(__file__).resolve().parents[1] / "cimc" / "data"
MODEL = str(DATA / "digits_cnn.onnx")
SHAPE = ["--input-shape", "input=1,1,16,16"]


def _error(capsys, args: list[str]) -> str:
    """The one line the CLI prints for bad input (exit status 2)."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def _compile(tmp_path: Path, *extra: str) -> list[str]:
    return ["compile", MODEL, *SHAPE, *extra, "-o", str(tmp_path / "x.cimx")]


def test_toml_boolean_for_a_number_is_refused(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('base = "cimpool-sram"\nrows = true\n')
    with pytest.raises(OptionError, match=r"rows=true must be a number \(int in \[8, 1024\]\)"):
        load_target(path)
    with pytest.raises(OptionError, match="clock_mhz=false must be a number"):
        load_target("cimpool-sram", {"clock_mhz": False})


def test_set_boolean_word_for_a_number_is_refused(tmp_path, capsys):
    err = _error(capsys, _compile(tmp_path, "--set", "rows=true"))
    assert "rows='true' must be a number" in err and "e.g. rows = 128" in err


def test_target_file_without_base_suggests_one(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('name = "mine"\nrows = 64\n')
    with pytest.raises(OptionError, match=r'lacks parameters .* add base = "<preset>" \(one of '):
        load_target(path)


def test_pipeline_option_given_twice_is_refused():
    with pytest.raises(OptionError, match="'quantize-act' sets option 'bits' twice"):
        parse_pipeline("quantize-act{bits=4,bits=8}")
    with pytest.raises(OptionError, match="option 'keep_sensitive' twice"):
        parse_pipeline("quantize-weights{keep-sensitive=1,keep_sensitive=2}")


def test_set_given_twice_is_refused(tmp_path, capsys):
    err = _error(capsys, _compile(tmp_path, "--set", "rows=64", "--set", "rows=256"))
    assert "parameter 'rows' is set twice" in err


def test_input_shape_given_twice_is_refused(tmp_path, capsys):
    err = _error(capsys, _compile(tmp_path, "--input-shape", "input=1,1,32,32"))
    assert "input 'input' is given twice" in err


@pytest.mark.parametrize(
    "text, message",
    [
        ('drop = "perm_lanes"\n', "drop = 'perm_lanes' must be a list of variable names"),
        ("drop = [1]\n", "must be a list of variable names"),
        ("choices = 3\n", "choices must be a table"),
        ('[choices]\nact_bits = "eight"\n', r"act_bits = 'eight' must be a list of choices"),
        ("[choices]\nact_bits = 8\n", "must be a list of choices, e.g. act_bits = \\["),
        ("[choices]\nact_bits = [8, 4, 8]\n", "act_bits lists 8 more than once"),
    ],
)
def test_space_file_shapes_are_checked(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(OptionError, match=message):
        Space.from_target(load_target("cimpool-sram"), path)


def test_compare_names_the_target_flag(tmp_path, capsys):
    err = _error(capsys, ["compare", str(tmp_path / "a.cimx")])
    assert "--target options" in err and "--targets" not in err


def test_compare_reports_an_unknown_target(capsys):
    err = _error(capsys, ["compare", MODEL, *SHAPE, "--target", "nope"])
    assert "unknown target 'nope'" in err


def test_int_macro_weight_bits_names_the_target_parameter(tmp_path, capsys):
    err = _error(capsys, _compile(tmp_path, "--set", "macro=int"))
    assert "weight_bits=1" in err and "--set weight_bits=8" in err
    assert "quantize-weights" not in err
    assert load_target("cimpool-sram", {"macro": "int", "weight_bits": 2}).weight_bits == 2
