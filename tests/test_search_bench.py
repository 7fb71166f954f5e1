"""The search benchmark's helpers (benchmarks/search.py) on a synthetic table: the space it
writes, the methods' evaluation orders, and the prefix property its budgets rely on."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from cimc.targets.params import load_target

from cimc.search import Metrics, Space, hypervolume
from cimc.search.objectives import OBJECTIVES
from cimc.search.space import HIERARCHY
from cimc.search.study import config_hash

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "search.py"
_spec = importlib.util.spec_from_file_location("search_bench", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

OBJS = [OBJECTIVES["cycles"], OBJECTIVES["area"]]


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Space:
    target = load_target("cimpool-sram")
    path = tmp_path_factory.mktemp("space") / "quick.toml"
    path.write_text(bench.space_toml(target, quick=True))
    return Space.from_target(target, path)


@pytest.fixture(scope="module")
def table(space) -> dict[str, dict]:
    """Cycles fall and area grows with every parameter's index; index 0 of MA_mem_size with
    index 0 of MA_num_child does not fit (an infeasible corner, as real small chips are)."""
    out = {}
    for config in bench.all_configs(space):
        idx = space.to_indices(config)
        if idx[space.names.index("MA_mem_size")] == 0 == idx[space.names.index("MA_num_child")]:
            metrics = Metrics(fits=False, missing_bytes=10, error="does not fit")
        else:
            cycles = 1e6 * math.prod(1.0 / (1 + i) for i in idx)
            area = 1.0 + float(np.dot(idx, np.arange(1, len(idx) + 1)))
            metrics = Metrics(cycles=int(cycles), area_mm2=area, latency_s=cycles * 1e-9)
        out[config_hash(config)] = metrics.to_dict()
    return out


def test_space_is_the_hierarchy_at_the_stated_sizes(tmp_path, space):
    target = load_target("cimpool-sram")
    assert space.size == 1024
    assert set(space.names) == set(HIERARCHY) - set(bench.QUICK_FIXED)
    path = tmp_path / "full.toml"
    path.write_text(bench.space_toml(target, quick=False))
    full = Space.from_target(target, path)
    assert full.size == 4096 and set(full.names) == set(HIERARCHY)
    for v in full.variables:  # full multiples, or the preset's 1/2 x and 1 x
        assert len(v.choices) == (4 if v.name in bench.FULL else 2)
        assert v.choices[-1] == getattr(target, v.name)


def test_all_configs_are_the_space(space):
    hashes = {config_hash(c) for c in bench.all_configs(space)}
    assert len(hashes) == space.size


def test_random_order_is_distinct_and_seeded(space):
    a, b = bench.random_order(space, 0, 50), bench.random_order(space, 0, 50)
    assert a == b and len(set(a)) == 50
    assert bench.random_order(space, 1, 50) != a


def test_nsga2_order_spends_exactly_the_budget(space, table):
    order = bench.nsga2_order(space, table, OBJS, 60, 10, seed=0)
    assert len(order) == len(set(order)) == 60
    assert order == bench.nsga2_order(space, table, OBJS, 60, 10, seed=0)
    assert order[:30] == bench.nsga2_order(space, table, OBJS, 30, 10, seed=0)


def test_guided_order_prefix_is_the_smaller_budget(space, table):
    """A smaller budget is the prefix of the larger run: the benchmark's budgets share runs."""
    long = bench.guided_order(space, table, OBJS, 30, 10, seed=0)
    assert len(long) == len(set(long)) == 30
    assert bench.guided_order(space, table, OBJS, 20, 10, seed=0) == long[:20]


def test_points_skip_infeasible_and_hypervolume_fraction_is_at_most_one(space, table):
    every = bench.points(table, list(table), OBJS)
    assert len(every) == sum(m["error"] is None for m in table.values()) < len(table)
    ref = bench.reference_point(every)
    top = hypervolume(every, ref)
    some = bench.points(table, bench.random_order(space, 0, 100), OBJS)
    assert 0 < hypervolume(some, ref) / top <= 1.0
