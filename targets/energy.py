"""Energy and area from the target's constants (sources in the preset TOML files).

Energy counts, per instruction: DRAM bytes of weight loads; on-chip bytes moved through the
L2 and L1 decoders (loads, partial sums); 1b x 1b MACs in the arrays; routed results in the
permutation unit; element operations on the vector unit. Leakage is not modelled.

Area is that of the chip the program needs: CiM cells for the weight bytes it places on the
arrays (replicas included; for DRAM targets, the staging capacity of all arrays), one pool
array and one permutation unit per array it uses (CIMPool), the activation buffer and the
vector unit.
"""

from __future__ import annotations

import numpy as np

from cimc.program import OP

from .macros import macro_kind


def energy_breakdown(ins: np.ndarray, target) -> dict[str, float]:
    """pJ per component for one run of the instruction stream."""
    op = ins["op"]
    span = np.maximum(ins["span"], 1)
    moved = ins["bytes"] * span
    load_w = op == OP["LOAD_W"]
    load_x = op == OP["LOAD_X"]
    psum = op == OP["PSUM"]
    mvm = (op == OP["MVM_POOL"]) | (op == OP["MVM_INT"])
    vec = (op == OP["SCALE"]) | (op == OP["VEC"])
    return {
        "dram": float(ins["bytes"][load_w].sum() * target.e_dram_pj_per_byte),
        "onchip_moves": float(
            (moved[load_w].sum() + moved[load_x].sum() + moved[psum].sum())
            * target.e_sram_pj_per_byte
        ),
        "arrays": float(ins["work"][mvm].sum() * target.e_bitmac_fj / 1000.0),
        "permutation": float(ins["routes"].sum() * target.e_route_pj),
        "vector": float(ins["work"][vec].sum() * target.e_vector_pj_per_op),
    }


def area_breakdown(target, placed_bytes: int, arrays_used: int) -> dict[str, float]:
    """mm^2 per component of the chip a program needs on ``target``."""
    um2 = 1e-6
    n = target.num_arrays if target.weights == "dram" else arrays_used
    stored = target.num_arrays * target.MA_mem_size if target.weights == "dram" else placed_bytes
    cim_bits = stored * 8
    kind = macro_kind(target)
    return {
        "cim_arrays": cim_bits * target.a_cim_bit_um2 * um2,
        "pool_arrays": n * kind.array_area_bits(target) * target.a_cim_bit_um2 * um2,
        "buffer": target.buffer_bytes * 8 * target.a_sram_bit_um2 * um2,
        "permutation": n * kind.permutation_lanes(target) * target.a_perm_um2_per_lane * um2,
        "vector_unit": target.vector_width * target.a_vector_um2_per_lane * um2,
    }
