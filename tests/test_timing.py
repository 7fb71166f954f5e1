"""Cycle-level timing on hand-built micro programs with cycle counts worked out by hand.

Target: 2 L1 decoders x 2 arrays; DRAM 4 B/cycle, L2 8 B/cycle, L1 8 B/cycle, MA write 8 B/cycle.
"""

from __future__ import annotations

import numpy as np
import pytest
from cimc.targets.params import load_target
from cimc.targets.timing import time_program, unit_names

from cimc.program import INSTR_DTYPE, OP

T = load_target(
    "cimpool-sram",
    {"L1_num_child": 2, "MA_num_child": 2, "DRAM_bw": 4, "L2_bw": 8, "L1_bw": 8, "MA_bw": 8},
)
NAMES = unit_names(T)


def prog(*rows):
    out = np.zeros(len(rows), dtype=INSTR_DTYPE)
    for i, r in enumerate(rows):
        out[i]["dep0"] = out[i]["dep1"] = -1
        out[i]["stride"] = 1
        out[i]["span"] = 1
        for k, v in r.items():
            out[i][k] = OP[v] if k == "op" else v
    return out


def busy(b, name):
    return int(b[NAMES.index(name)])


def test_one_mvm():
    t = time_program(prog({"op": "MVM_POOL", "ma": 0, "cycles": 64}), T)
    finish, b = t.finish, t.busy
    assert finish.max() == 64 and busy(b, "array0") == 64 and busy(b, "dram") == 0


def test_dram_bound_load():
    # 400 B: DRAM 400/4 = 100 cycles, L2 50, L1 50, write port 50 -> the load takes 100.
    t = time_program(prog({"op": "LOAD_W", "ma": 0, "bytes": 400}), T)
    finish, b = t.finish, t.busy
    assert finish[0] == 100
    assert busy(b, "dram") == 100 and busy(b, "l2_link0") == 50 and busy(b, "l1_link0") == 50
    assert busy(b, "array_write0") == 50


def test_load_overlaps_compute():
    # load A (200 B: 50 cycles), MVM after A (80 cycles: 50..130), prefetch B into the other
    # buffer (no dependency on the MVM): DRAM is free at 50, so B runs 50..100 under the MVM.
    p = prog(
        {"op": "LOAD_W", "ma": 0, "bytes": 200},
        {"op": "MVM_POOL", "ma": 0, "cycles": 80, "dep0": 0},
        {"op": "LOAD_W", "ma": 0, "bytes": 200},
    )
    t = time_program(p, T)
    start, finish = t.start, t.finish
    assert list(finish) == [50, 130, 100]
    assert start[2] == 50
    assert finish.max() == 130  # not 50 + 80 + 50 = 180


def test_multicast_to_several_arrays():
    # One LOAD_X of 80 B multicast to the 4 arrays: each L2 link (2 arrays behind it) carries
    # the 80 distinct bytes once (10 cycles) and each L1 link 80 B (10 cycles), in parallel.
    multicast = prog({"op": "LOAD_X", "ma": 0, "span": 4, "bytes": 80, "work": 80})
    t = time_program(multicast, T)
    finish, b = t.finish, t.busy
    assert finish[0] == 10
    assert busy(b, "l2_link0") == 10 and busy(b, "l1_link3") == 10
    # The same delivery as 4 unicasts of different data: an L2 link carries 2 x 80 B in turn.
    unicast = prog(*({"op": "LOAD_X", "ma": m, "bytes": 80, "work": 80} for m in range(4)))
    t = time_program(unicast, T)
    finish, b = t.finish, t.busy
    assert finish.max() == 20 and busy(b, "l2_link0") == 20


def test_layer_boundary_waits_for_everything():
    p = prog(
        {"op": "MVM_INT", "ma": 0, "cycles": 30},
        {"op": "MVM_INT", "ma": 1, "cycles": 50},
        {"op": "SCALE", "cycles": 5},
        {"op": "MVM_INT", "ma": 2, "cycles": 7, "dep0": 2},
    )
    t = time_program(p, T)
    start, finish = t.start, t.finish
    assert start[2] == 50 and finish[2] == 55 and finish[3] == 62


@pytest.mark.parametrize("lanes, expect_per_row", [(16, 8), (4, 32)])
def test_permutation_bound_layer(lanes, expect_per_row):
    """128 results per MVM: 16 lanes route them in 8 cycles (hidden under the 8-cycle
    bit-serial MVM); 4 lanes need 32 cycles, so the layer becomes permutation-bound."""
    from cimc.targets.macros import LayerWork, macro_kind

    target = load_target("cimpool-sram", {"perm_lanes": lanes})
    work = LayerWork(
        rows=100,
        k=256,
        out=128,
        groups=1,
        scheme="pool",
        weight_bits=1,
        error_rows=64,
        route_cycles=0,
        has_error=True,
    )
    geo = macro_kind(target).geometry(work, target)
    assert geo.tiles == 2 and geo.per_row_cycles == expect_per_row
