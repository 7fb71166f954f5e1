"""Macro kinds are registered objects: a kind defined outside the package compiles and simulates
through the same calls the built-in kinds use."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cimc.targets.macros import MACRO_KINDS, IntMacro, LayerWork, int_geometry, register_macro
from cimc.targets.params import load_target
from helpers import light_inputs, light_path

import cimc
from cimc.errors import OptionError


class WideAdderIntMacro(IntMacro):
    """A user's kind: an int macro whose adder tree sums two input bit planes per cycle, so a
    bit-serial MVM takes half the cycles (the arrays, storage and numerics are the int macro's)."""

    name = "int-wide-adder"

    def geometry(self, work: LayerWork, target):
        geo = int_geometry(work, target)
        return dataclasses.replace(geo, per_row_cycles=max(1, geo.per_row_cycles // 2))


@pytest.fixture(scope="module")
def wide_kind():
    register_macro(WideAdderIntMacro())
    yield
    MACRO_KINDS.pop(WideAdderIntMacro.name)


def test_a_kind_registered_from_outside_compiles_and_simulates(wide_kind, tmp_path):
    import onnx

    path = light_path("squeezenet")
    feeds = light_inputs(onnx.load(str(path), load_external_data=False))
    results = {}
    for macro in ("int", WideAdderIntMacro.name):
        target = load_target("int8-sram", {"macro": macro})
        program = cimc.compile(str(path), target=target, calibration=1)
        program = cimc.load_program(program.save(tmp_path / f"{macro}.cimx"))
        assert program.target.macro == macro
        results[macro] = cimc.simulate(program, feeds)
        reference = cimc.interpret(program.graph, feeds)
        for name, ref in reference.items():
            assert np.array_equal(results[macro].outputs[name], ref)  # bit for bit
    base, wide = results["int"], results[WideAdderIntMacro.name]
    for name in base.outputs:
        assert np.array_equal(base.outputs[name], wide.outputs[name])  # same numerics
    assert wide.unit_busy["array"] < base.unit_busy["array"]  # its own cycle rule is used


def test_an_unregistered_macro_is_refused():
    with pytest.raises(OptionError, match="registered macro kind"):
        load_target("int8-sram", {"macro": "analog"})
