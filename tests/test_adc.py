"""The column ADC (``adc_bits``): its quantiser, the bit-serial decomposition it acts on, the
interpreter and simulator agreeing bit for bit through it, and its energy and area."""

from __future__ import annotations

import numpy as np
import pytest
from cimc.targets.energy import adc_conversion_pj, chip_area
from cimc.targets.params import load_target
from cimc.targets.simulator import simulate
from test_hardware_options import tiny_cnn

import cimc
from cimc.cim_ops import adc, bit_planes


def test_adc_is_exact_when_its_codes_cover_the_full_scale():
    sums = np.arange(-128, 129, dtype=np.float64)  # a 128-row +-1 column: 257 values, 9 bits
    assert np.array_equal(adc(sums, 9, -128, 128), sums)


def test_adc_rounds_to_its_step_and_clips():
    # 6 bits over [-128, 128]: step 2^(9-6) = 8, codes 0..63 -> levels -128, -120, ..., 376
    sums = np.array([-128.0, -125.0, -124.0, 0.0, 3.0, 4.0, 128.0])
    out = adc(sums, 6, -128, 128)
    assert np.array_equal(out, [-128, -128, -120, 0, 0, 8, 128])  # half a step rounds up
    # 2 bits over [0, 128]: step 2^(8-2) = 64, codes 0..3 -> 0, 64, 128, 192; 4 bits saturate
    assert np.array_equal(adc(np.array([31.0, 32.0, 128.0]), 2, 0, 128), [0, 64, 128])
    assert np.array_equal(adc(np.array([200.0]), 1, 0, 255), [128])  # clipped at code 1
    assert np.all(adc(np.linspace(-64, 64, 129), 4, -64, 64) % 1 == 0)  # always integers


def test_a_coarser_adc_loses_more():
    sums = np.random.default_rng(0).integers(-40, 41, 10_000).astype(np.float64)
    errors = [np.abs(adc(sums, bits, -128, 128) - sums).mean() for bits in range(3, 10)]
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] == 0


@pytest.mark.parametrize("signed, lo, hi", [(False, 0, 255), (True, -127, 127)])
def test_bit_planes_rebuild_the_integers(signed, lo, hi):
    x = np.arange(lo, hi + 1, dtype=np.float64)
    planes = bit_planes(x, 8, signed)
    assert all(set(np.unique(p)) <= {0.0, 1.0} for _, p in planes)
    assert np.array_equal(sum(w * p for w, p in planes), x)


@pytest.fixture(scope="module")
def feeds():
    return {"x": np.random.default_rng(3).standard_normal((1, 3, 6, 6)).astype(np.float32)}


def run(preset, feeds, **overrides):
    program = cimc.compile(tiny_cnn(), target=preset, overrides=overrides, calibration=2)
    return program, simulate(program, feeds)


@pytest.mark.parametrize("preset", ["cimpool-sram", "int8-sram"])
def test_an_adc_changes_outputs_and_the_simulator_still_matches_the_interpreter(preset, feeds):
    _, ideal = run(preset, feeds)
    program, lossy = run(preset, feeds, adc_bits=4)
    reference = cimc.interpret(program.graph, feeds)
    assert np.array_equal(lossy.outputs["y"], reference["y"])  # bit for bit
    assert not np.array_equal(lossy.outputs["y"], ideal.outputs["y"])


def test_an_adc_covering_every_column_sum_is_the_ideal_adder_tree(feeds):
    # pool columns: 128 rows of +-1 -> 257 values (9 bits); error columns and int slices fewer
    _, ideal = run("cimpool-sram", feeds)
    _, exact = run("cimpool-sram", feeds, adc_bits=9)
    assert np.array_equal(exact.outputs["y"], ideal.outputs["y"])


def test_adc_energy_and_area_follow_the_conversions(feeds):
    _, ideal = run("cimpool-sram", feeds)
    assert ideal.energy_breakdown["adc"] == 0 and ideal.area_breakdown["adc"] == 0
    program, five = run("cimpool-sram", feeds, adc_bits=5)
    _, six = run("cimpool-sram", feeds, adc_bits=6)
    target = program.target
    # FoM x 2^bits per conversion: one more bit doubles energy and area (same conversions)
    assert six.energy_breakdown["adc"] == pytest.approx(2 * five.energy_breakdown["adc"], rel=1e-12)
    assert six.area_breakdown["adc"] == pytest.approx(2 * five.area_breakdown["adc"], rel=1e-12)
    # conversions: per MVM row, every pool column and the block's error columns, per bit plane
    ins = program.instructions
    pool = ins["op"] == cimc.program.OP["MVM_POOL"]
    per_row = target.pool_cols + ins["routes"][pool] / ins["rows"][pool]
    conversions = float((ins["rows"][pool] * per_row).sum()) * target.act_bits
    int_rows = ins["op"] == cimc.program.OP["MVM_INT"]
    conversions += float(ins["work"][int_rows].sum()) / target.rows  # work counts bit planes
    assert five.energy_breakdown["adc"] == pytest.approx(conversions * adc_conversion_pj(target))
    area = chip_area(load_target("cimpool-sram", {"adc_bits": 5}))["adc"]
    columns = target.num_arrays * (target.pool_cols + target.error_cols)
    assert area == pytest.approx(columns * target.a_adc_um2_per_step * 32 * 1e-6)
    assert five.energy_pj == pytest.approx(sum(five.energy_breakdown.values()))
