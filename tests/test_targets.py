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


def test_energy_constants_cite_sources_and_scale_to_the_node():
    """Every energy constant has a published value, node and source; a preset gets it scaled to
    its own node (C V^2), DRAM unscaled; an explicit value wins."""
    from cimc.targets.technology import PUBLISHED, energy_scale

    for name, pub in PUBLISHED.items():
        assert any(w in pub.source for w in ("Horowitz", "Chih", "Murmann", "[ours]")), name
    t22 = load_target("cimpool-sram")
    t7 = t22.replace(tech_nm=7)
    assert t22.e_bitmac_fj == PUBLISHED["e_bitmac_fj"].value  # published at 22 nm
    assert t22.e_sram_pj_per_byte == pytest.approx(1.25 * (22 / 45) * (0.8 / 0.9) ** 2)
    assert t7.e_sram_pj_per_byte == pytest.approx(1.25 * energy_scale(45, 7))
    assert t7.e_dram_pj_per_byte == t22.e_dram_pj_per_byte == 160.0
    assert load_target("cimpool-sram", {"e_route_pj": 0.5}).e_route_pj == 0.5
    with pytest.raises(OptionError, match="supply voltage"):
        load_target("cimpool-sram", {"tech_nm": 11})


def test_cli_targets(capsys):
    assert main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["int4-sram"]["weight_bits"] == 4
