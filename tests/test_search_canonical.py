"""The search evaluates one config per distinct chip: a variable the config's macro kind does not
read (an int config's pool, error term and permutation lanes) is pinned by ``Space.canonical``,
and ``MacroKind.unread_params`` really is unread by the cost model and the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cimc.targets.macros import MACRO_KINDS
from cimc.targets.simulator import simulate

import cimc
from cimc.search.loop import _take
from cimc.search.space import Space
from cimc.search.study import config_hash

DATA = Path(cimc.__file__).parent / "data"
MODEL, SHAPE = DATA / "digits_cnn.onnx", {"input": (1, 1, 16, 16)}
# each unread parameter moved away from the preset (cimpool-sram's 128 / 64 / 64 / 16)
MOVED = {"pool_cols": 256, "error_rows": 32, "error_cols": 16, "perm_lanes": 8}


def _costs(overrides: dict) -> tuple:
    calib = [{"input": np.load(DATA / "digits_calib.npz")["input"][i : i + 1]} for i in range(8)]
    program = cimc.compile(
        MODEL, "int8-sram", input_shapes=SHAPE, calibration=calib, overrides=overrides
    )
    r = simulate(program, functional=False)
    return r.cycles, r.energy_pj, r.area_mm2, r.area_used_mm2, r.layer_cycles


@pytest.mark.parametrize("adc_bits", [0, 6])
def test_an_int_macro_reads_none_of_its_unread_params(adc_bits):
    assert set(MACRO_KINDS["int"].unread_params) == set(MOVED)
    base = _costs({"adc_bits": adc_bits})
    for name, value in MOVED.items():
        assert _costs({"adc_bits": adc_bits, name: value}) == base, name
    # a parameter it reads does change them: the comparison can fail
    assert _costs({"adc_bits": adc_bits, "MA_comp_per_core": 4096}) != base


def test_canonical_pins_what_an_int_config_does_not_read():
    space = Space.from_target(cimc.load_target("cimpool-sram"))
    col = {n: j for j, n in enumerate(space.names)}
    base = space.to_indices(space.base_config())
    draws = space.sample(256, np.random.default_rng(0))
    canon = space.canonical(draws)
    assert np.array_equal(space.canonical(canon), canon)
    assert np.array_equal(space.features(canon), space.features(draws))
    scheme = np.asarray(space.variables[col["scheme"]].choices)[draws[:, col["scheme"]]]
    pinned = [col["pool"], col["keep"], col["perm_lanes"]]
    is_int = scheme != "cimpool"
    assert is_int.any() and (~is_int).any()
    assert (canon[np.ix_(is_int, pinned)] == base[pinned]).all()
    assert np.array_equal(canon[~is_int], draws[~is_int])  # a CIMPool config reads them all
    other = [j for j in range(len(space.names)) if j not in pinned]
    assert np.array_equal(canon[:, other], draws[:, other])
    # two int8 configs differing only in CIMPool knobs are one evaluation
    int8 = base.copy()
    int8[col["scheme"]] = space.variables[col["scheme"]].index("int8")
    twin = int8.copy()
    twin[pinned] = (base[pinned] + 1) % [len(space.variables[j].choices) for j in pinned]
    taken = {config_hash(space.from_indices(space.canonical(int8)))}
    assert _take(space, twin, taken) is None


def test_canonical_without_a_scheme_variable_follows_the_preset_macro(tmp_path):
    drop = tmp_path / "space.toml"
    drop.write_text('drop = ["scheme"]\n')
    for preset, pinned in (("int8-sram", True), ("cimpool-sram", False)):
        space = Space.from_target(cimc.load_target(preset), drop)
        j = space.names.index("perm_lanes")
        draws = space.sample(64, np.random.default_rng(1))
        canon = space.canonical(draws)
        base = space.to_indices(space.base_config())[j]
        if pinned:
            assert (canon[:, j] == base).all() and (draws[:, j] != base).any()
        else:
            assert np.array_equal(canon, draws)
