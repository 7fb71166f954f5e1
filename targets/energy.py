"""Energy and area from the target's constants (units in ``targets.params``, sources in the
presets and ``targets.technology``).

Energy, per instruction and component (pJ):

* ``dram``: bytes of weight loads, read once however many arrays a multicast reaches;
* ``buffer``: the on-chip activation buffer: a LOAD_X reads its rows' distinct bytes once (the
  decoders multicast them), PSUM writes each array's partial sums, VEC/SCALE read and write their
  ``bytes``;
* ``links``: every byte on every link hop: the L2 links as the timing kernel loaded them, then one
  L1 hop per destination array (loads, partial sums);
* ``arrays``: 1b x 1b MACs; ``permutation``: routed results; ``vector``: vector-unit operations;
* ``adc``: column ADC conversions, one per column per bit plane per MVM row (0 when adc_bits = 0);
* ``leakage``: static power of every bitcell and logic lane on the chip, times the cycles.

The per-layer table and the totals come from the same per-instruction numbers, so the totals are
the sums of their parts.

Area is the configured chip's: every array's weight cells (``L1_num_child x MA_num_child`` arrays
of ``MA_mem_size``), each array's fixed cells and permutation lanes (per macro kind), decoders and
links by bandwidth, the activation buffer and the vector unit. The part a program uses (the
arrays it occupies and the weight bytes it places) is reported beside it.
"""

from __future__ import annotations

import numpy as np

from cimc.cim_ops import POOL_OP
from cimc.program import OP

from .macros import macro_kind

UM2 = 1e-6  # mm^2 per um^2


def instruction_energy(ins: np.ndarray, target, l2_bytes: np.ndarray) -> dict[str, np.ndarray]:
    """pJ per instruction for each dynamic component (``l2_bytes`` from the timing kernel)."""
    op = ins["op"]
    span = np.maximum(ins["span"], 1).astype(np.float64)
    nbytes = ins["bytes"].astype(np.float64)
    work = ins["work"].astype(np.float64)
    load_w = op == OP["LOAD_W"]
    load_x = op == OP["LOAD_X"]
    load_a = op == OP["LOAD_A"]  # an operand read from the buffer, written into arrays
    psum = op == OP["PSUM"]
    mvm = (op == OP["MVM_POOL"]) | (op == OP["MVM_INT"])
    vec = (op == OP["SCALE"]) | (op == OP["VEC"])
    l1_hops = np.where(load_w | load_x | load_a | psum, nbytes * span, 0.0)
    buffer = np.where(load_x, work, 0.0) + np.where(psum | load_a, nbytes * span, 0.0)
    buffer += np.where(vec, nbytes, 0.0)
    return {
        "dram": np.where(load_w, nbytes, 0.0) * target.e_dram_pj_per_byte,
        "buffer": buffer * target.e_sram_pj_per_byte,
        "links": (l2_bytes + l1_hops) * target.e_link_pj_per_byte,
        "arrays": np.where(mvm, work, 0.0) * (target.e_bitmac_fj / 1000.0),
        "permutation": ins["routes"].astype(np.float64) * target.e_route_pj,
        "vector": np.where(vec, work, 0.0) * target.e_vector_pj_per_op,
        "adc": adc_energy(ins, target),
    }


def adc_conversion_pj(target) -> float:
    """One conversion of an ``adc_bits``-bit column ADC: Walden FoM x 2^bits (0: no ADC)."""
    return target.e_adc_fj_per_step * 2**target.adc_bits / 1000.0 if target.adc_bits else 0.0


def adc_energy(ins: np.ndarray, target) -> np.ndarray:
    """pJ per instruction of the column ADCs: every MVM row converts each column it reads once
    per input bit plane: a pool MVM the pool array's columns and, with an error term, its block of
    error-array columns (its routes per row); an int MVM its channels' bit-slice columns (its
    bit-MACs per row over the array's rows)."""
    op = ins["op"]
    rows = np.maximum(ins["rows"], 1).astype(np.float64)
    per_plane = ins["work"] / target.act_bits  # an MVM's work counts every input bit plane
    pool = op == OP["MVM_POOL"]
    pool_only = rows * target.rows * target.pool_cols
    error_cols = np.where(per_plane > pool_only, ins["routes"] / rows, 0.0)
    columns = np.where(pool, target.pool_cols + error_cols, per_plane / (rows * target.rows))
    mvm = pool | (op == OP["MVM_INT"])
    conversions = np.where(mvm, rows * columns * target.act_bits, 0.0)
    return conversions * adc_conversion_pj(target)


def adc_area_um2(target) -> float:
    """Column ADCs of one array: one per column the macro reads (pool + error array, or the
    N-bit array's columns), each ``a_adc_um2_per_step x 2^adc_bits`` (0: no ADC)."""
    if not target.adc_bits:
        return 0.0
    if POOL_OP in macro_kind(target).layer_ops:
        columns = target.pool_cols + target.error_cols
    else:
        columns = target.array_cols
    return columns * target.a_adc_um2_per_step * 2**target.adc_bits


def static_power_w(target) -> float:
    """Leakage of the whole configured chip: bitcells of arrays and buffer, logic lanes."""
    kind = macro_kind(target)
    n = target.num_arrays
    bits = n * (target.MA_mem_size * 8 + kind.array_area_bits(target)) + target.buffer_bytes * 8
    lanes = target.vector_width + n * kind.permutation_lanes(target)
    return bits * target.p_leak_pw_per_bit * 1e-12 + lanes * target.p_leak_uw_per_lane * 1e-6


def energy_by_layer(
    ins: np.ndarray, target, l2_bytes: np.ndarray, layer_cycles: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Component names and [layers, components] pJ; leakage is charged to each layer for its
    own cycles."""
    parts = instruction_energy(ins, target, l2_bytes)
    n = len(layer_cycles)
    cols = [np.bincount(ins["layer"], weights=v, minlength=n)[:n] for v in parts.values()]
    seconds = layer_cycles.astype(np.float64) / (target.clock_mhz * 1e6)
    cols.append(static_power_w(target) * seconds * 1e12)
    return [*parts, "leakage"], np.stack(cols, axis=1)


def chip_area(target) -> dict[str, float]:
    """mm^2 per component of the configured chip."""
    return _area(target, target.num_arrays, target.num_arrays * target.MA_mem_size)


def used_area(target, placed_bytes: int, arrays_used: int) -> dict[str, float]:
    """mm^2 per component of the part a program occupies (DRAM targets: all staging arrays)."""
    if target.weights == "dram":
        return chip_area(target)
    return _area(target, arrays_used, placed_bytes)


def _area(target, arrays: int, weight_bytes: int) -> dict[str, float]:
    kind = macro_kind(target)
    link_bw = target.num_arrays * target.L1_bw + target.L1_num_child * target.L2_bw
    return {
        "cim_arrays": weight_bytes * 8 * target.a_cim_bit_um2 * UM2,
        "pool_arrays": arrays * kind.array_area_bits(target) * target.a_cim_bit_um2 * UM2,
        "permutation": arrays * kind.permutation_lanes(target) * target.a_perm_um2_per_lane * UM2,
        "links": (link_bw + target.DRAM_bw) * target.a_link_um2_per_Bpc * UM2,
        "buffer": target.buffer_bytes * 8 * target.a_sram_bit_um2 * UM2,
        "vector_unit": target.vector_width * target.a_vector_um2_per_lane * UM2,
        "adc": arrays * adc_area_um2(target) * UM2,
    }
