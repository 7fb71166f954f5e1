"""permute-schedule: minimal conflict-free permutation-unit schedules, on a real ResNet-18."""

from __future__ import annotations

import numpy as np
import pytest
from cimc.passes.permute_schedule import (
    block_starts,
    lower_bound,
    naive_cycles,
    schedule_routes,
)
from cimc.targets.params import load_target

import cimc
from cimc.cim_ops import POOL_OP
from cimc.errors import OptionError
from cimc.models import export_onnx

TARGET = load_target("cimpool-sram")  # S = 128, perm_lanes = acc_banks = 16, act_bits = 8


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    path = export_onnx("resnet18", tmp_path_factory.mktemp("m") / "r18.onnx", image_size=32)
    return cimc.import_onnx(path)


@pytest.fixture(scope="module")
def scheduled(resnet18):
    return cimc.run_passes(resnet18, "fold-bn,zpack,weight-pool,permute-schedule", target=TARGET)


@pytest.fixture(scope="module")
def scheduled_nearest(resnet18):
    return cimc.run_passes(
        resnet18, "fold-bn,zpack,weight-pool{assign=nearest},permute-schedule", target=TARGET
    )


def pool_layers(graph):
    layers = [n for n in graph.nodes() if n.op == POOL_OP]
    assert layers
    return layers


def blocks(graph, node):
    """(g, block index, start, stop, columns) of every pool MVM of a layer."""
    idx = graph.values[node.inputs[2]].data
    spans = block_starts(idx.shape[0], node.attrs.get("group", 1), node.meta["schedule"]["block"])
    for gi in range(idx.shape[1]):
        for bi, (start, stop) in enumerate(spans):
            yield gi, bi, start, stop, idx[start:stop, gi]


def check_order(order, cycles, columns, lanes, banks):
    """Every cycle conflict-free, every channel routed exactly once, nothing after ``cycles``."""
    assert (order[cycles:] == -1).all()
    seen = []
    for cyc in order[:cycles]:
        lane = np.flatnonzero(cyc >= 0)
        ch = cyc[lane].astype(np.int64)
        assert len(ch) >= 1  # no empty cycle inside the schedule
        assert len(ch) <= lanes
        read = columns[ch] % lanes
        write = ch % banks
        assert len(set(read.tolist())) == len(ch)
        assert len(set(write.tolist())) == len(ch)
        assert (read == lane).all()  # lane l reads read bank l
        seen.extend(ch.tolist())
    assert sorted(seen) == list(range(len(columns)))


def test_resnet18_optimised_beats_naive_and_hits_bound(scheduled):
    s_total = n_total = full = 0
    for node in pool_layers(scheduled):
        s = node.meta["schedule"]
        assert (s["lanes"], s["banks"], s["block"], s["mvm_cycles"]) == (16, 16, 128, 8)
        g = scheduled.values[node.inputs[2]].shape[1]
        n_blocks = -(-scheduled.values[node.inputs[2]].shape[0] // 128)
        assert s["cycles"].shape == s["naive_cycles"].shape == (g, n_blocks)
        assert s["order"].dtype == np.int16 and s["order"].shape[:2] == (g, n_blocks)
        assert (s["cycles"] <= s["naive_cycles"]).all()
        assert s["total_cycles"] == s["cycles"].sum()
        assert s["naive_total_cycles"] == s["naive_cycles"].sum()
        assert s["stall_cycles_per_row"] == np.maximum(s["cycles"] - 8, 0).sum()
        for gi, bi, start, stop, cols in blocks(scheduled, node):
            assert len(set(cols.tolist())) == len(cols)  # non-repeating
            if stop - start == 128:  # full block: a permutation, 8 routes per bank
                assert s["cycles"][gi, bi] == 128 // 16
                full += 1
        s_total += s["total_cycles"]
        n_total += s["naive_total_cycles"]
    assert full > 100
    # Full permutations reach S / lanes = act_bits: routing hides entirely under the MVM.
    assert all(n.meta["schedule"]["stall_cycles_per_row"] == 0 for n in pool_layers(scheduled))
    # In-order issue stalls on bank conflicts: measured about 3.2x the optimised cycles.
    assert n_total > 2 * s_total


def test_orders_are_conflict_free_and_complete(scheduled, scheduled_nearest):
    for graph in (scheduled, scheduled_nearest):
        for node in pool_layers(graph):
            s = node.meta["schedule"]
            for gi, bi, _, _, cols in blocks(graph, node):
                check_order(s["order"][gi, bi], s["cycles"][gi, bi], cols, 16, 16)


def test_nearest_meets_bank_degree_bound(scheduled_nearest):
    stalls = 0
    for node in pool_layers(scheduled_nearest):
        s = node.meta["schedule"]
        for gi, bi, _, _, cols in blocks(scheduled_nearest, node):
            read_deg = np.bincount(cols % 16).max()
            write_deg = -(-len(cols) // 16)
            assert s["cycles"][gi, bi] >= read_deg
            assert s["cycles"][gi, bi] == max(read_deg, write_deg)
            assert s["cycles"][gi, bi] <= s["naive_cycles"][gi, bi]
        stalls += s["stall_cycles_per_row"]
    # nearest repeats popular columns, so some read banks exceed act_bits routes: routing stalls.
    assert stalls > 0


def test_hand_made_two_read_banks():
    # 16 channels of a block, lanes = banks = 16, columns 0,16,...,112 (all in read bank 0) then
    # 1,17,...,113 (all in read bank 1); write banks are 0..15, once each.
    # Optimal: read banks 0 and 1 each serve 8 routes, one per cycle -> 8 cycles (pairs
    # {bank-0 route, bank-1 route} with distinct write banks).
    # Naive: channels 0..6 each alone (read bank 0 busy) = 7 cycles, channel 7 + channel 8
    # (banks 0 and 1) = 1 cycle, channels 9..15 each alone = 7 cycles -> 15 cycles.
    cols = np.concatenate([np.arange(0, 128, 16), np.arange(1, 128, 16)])
    order, cycles = schedule_routes(cols, 16, 16)
    assert cycles == 8
    assert naive_cycles(cols, 16, 16) == 15
    assert lower_bound(cols, 16, 16) == 8
    check_order(order, cycles, cols, 16, 16)
    assert ((order >= 0).sum(axis=1) == 2).all()

    # 8 channels, lanes = banks = 4, columns 0,4,8,12 (read bank 0) and 1,5,9,13 (read bank 1):
    # optimal 4 cycles (4 routes per read bank). Naive: {0},{1},{2},{3,4},{5},{6},{7} = 7.
    small = np.array([0, 4, 8, 12, 1, 5, 9, 13])
    assert schedule_routes(small, 4, 4)[1] == 4
    assert naive_cycles(small, 4, 4) == 7
    # identity permutation: read bank = write bank, so in-order issue is already optimal.
    assert schedule_routes(np.arange(128), 16, 16)[1] == naive_cycles(np.arange(128), 16, 16) == 8


@pytest.mark.parametrize("lanes,banks", [(16, 16), (8, 32), (32, 8), (4, 16), (16, 5)])
def test_random_routes_are_minimal_for_any_lanes_and_banks(lanes, banks):
    rng = np.random.default_rng(lanes * 100 + banks)
    for trial in range(30):
        n = int(rng.integers(1, 129))
        if trial % 2:
            cols = rng.permutation(128)[:n]
        else:  # repeated columns, skewed towards a few banks (like nearest)
            cols = rng.integers(0, 128, n) * (1 + (trial % 3 == 0) * 15) % 128
        order, cycles = schedule_routes(cols, lanes, banks)
        read_deg = np.bincount(cols % lanes).max()
        write_deg = np.bincount(np.arange(n) % banks).max()
        assert cycles == max(read_deg, write_deg, -(-n // lanes))
        assert cycles <= naive_cycles(cols, lanes, banks)
        check_order(order, cycles, cols, lanes, banks)
        again, _ = schedule_routes(cols, lanes, banks)
        assert np.array_equal(order, again)  # deterministic


def test_overrides_and_default_target(scheduled):
    compressed = scheduled  # the pass recomputes meta["schedule"] from idx
    narrow = cimc.run_passes(compressed, "permute-schedule{lanes=8,banks=32}", target=TARGET)
    default = cimc.run_passes(
        compressed, "permute-schedule", target=cimc.load_target("cimpool-sram")
    )
    for a, b in zip(pool_layers(narrow), pool_layers(default)):
        sa, sb = a.meta["schedule"], b.meta["schedule"]
        assert (sa["lanes"], sa["banks"], sb["lanes"], sb["banks"]) == (8, 32, 16, 16)
        assert sa["order"].shape[-1] == 8
        for gi, bi, start, stop, cols in blocks(narrow, a):
            check_order(sa["order"][gi, bi], sa["cycles"][gi, bi], cols, 8, 32)
            if stop - start == 128:
                # 8 read banks of 16 routes each: 16 cycles, 8 beyond the 8-cycle MVM.
                assert sa["cycles"][gi, bi] == 16
                assert sb["cycles"][gi, bi] == 8
    with pytest.raises(OptionError):
        cimc.parse_pipeline("permute-schedule{lanes=-1}")
