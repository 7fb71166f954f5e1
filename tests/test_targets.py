"""Targets: presets load, every parameter is settable and validated, search choices exist."""

from __future__ import annotations

import json

import pytest
from cimc.targets.params import SPECS, Target, load_target, presets, search_choices

from cimc.cli import main
from cimc.errors import OptionError

CIMNET = (
    "DRAM_bw",
    "L2_bw",
    "L1_bw",
    "L1_num_child",
    "MA_bw",
    "MA_num_child",
    "MA_mem_size",
    "MA_comp_per_core",
)
MACRO = (
    "rows",
    "pool_cols",
    "error_rows",
    "act_bits",
    "adc_bits",
    "perm_lanes",
    "vector_width",
    "clock_mhz",
)


def test_required_presets_exist_and_load():
    assert {"cimpool-sram", "cimpool-dram", "int8-sram", "int4-sram", "cimnet"} <= set(presets())
    for name in presets():
        t = load_target(name)
        assert isinstance(t, Target) and t.name == name
    assert load_target("cimpool-dram").weights == "dram"
    assert load_target("int4-sram").weight_bits == 4 and load_target("int4-sram").macro == "int"


@pytest.mark.parametrize("param", CIMNET + MACRO)
def test_every_parameter_is_settable_and_declares_a_unit(param):
    base = load_target("cimpool-sram")
    value = getattr(base, param)
    new = type(value)(value * 2) if param != "adc_bits" else 4
    if param == "error_rows":
        new = base.rows
    t = load_target("cimpool-sram", {param: str(new)})  # strings, as from --set
    assert getattr(t, param) == new
    assert SPECS[param].unit or param in ("macro", "weights")


@pytest.mark.parametrize(
    "override, words",
    [
        ({"L1_bw": 0}, ["L1_bw=0", "out of range", "[1, 4096]"]),
        ({"MA_num_child": -2}, ["MA_num_child", "out of range"]),
        ({"macro": "analog"}, ["macro='analog'", "cimpool", "int"]),
        ({"error_rows": 512, "rows": 128}, ["error_rows=512", "rows=128"]),
        ({"L2_bw": "fast"}, ["L2_bw='fast'", "float"]),
        ({"colour": 3}, ["unknown target parameter 'colour'"]),
    ],
)
def test_invalid_values_name_parameter_and_range(override, words):
    with pytest.raises(OptionError) as info:
        load_target("cimpool-sram", override)
    for w in words:
        assert w in str(info.value)


def test_toml_file_with_base(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "int8-sram"\nL1_num_child = 2\nclock_mhz = 800\n')
    t = load_target(path)
    assert t.name == "mine" and t.macro == "int" and t.L1_num_child == 2 and t.clock_mhz == 800
    bad = tmp_path / "bad.toml"
    bad.write_text("L1_bw = [")
    with pytest.raises(OptionError, match="not valid TOML"):
        load_target(bad)
    with pytest.raises(OptionError, match="not a preset"):
        load_target("no-such-preset")


def test_search_choices_follow_cimnet_multiples():
    t = load_target("cimnet")
    choices = search_choices(t)
    for p in CIMNET:
        base = getattr(t, p)
        # base x {1/8, 1/4, 1/2, 1}, counts floored at 1 (so small counts have fewer choices)
        assert max(choices[p]) == base and 3 <= len(choices[p]) <= 4, p
        assert min(choices[p]) == max(1, type(base)(base / 8)), p


def test_energy_and_area_constants_cite_sources():
    text = (presets()["cimpool-sram"]).read_text()
    for key in ("e_dram_pj_per_byte", "e_sram_pj_per_byte", "e_bitmac_fj", "e_route_pj"):
        line = next(line for line in text.splitlines() if line.startswith(key))
        assert "#" in line and ("Horowitz" in line or "Chih" in line), line


def test_cli_targets(capsys):
    assert main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["int4-sram"]["weight_bits"] == 4
