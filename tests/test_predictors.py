"""The accuracy predictor's noise ceiling (benchmarks/cimnet.py) on synthetic scores whose true
values and noise are known."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_noise_ceiling_is_a_perfect_predictors_tau(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # cimnet imports its sibling search.py
    cimnet = importlib.import_module("cimnet")
    rng = np.random.default_rng(0)
    true = 0.9 + 0.008 * rng.standard_normal(2000)  # accuracies 0.8 points apart (sd)
    first, again = (true + 0.006 * rng.standard_normal(2000) for _ in range(2))
    c = cimnet.noise_ceiling(first, again)
    # 2,000 items: the sds are estimated to about 2 %, a tau to about 0.015 (so 0.03 is 2 se)
    assert c["true_sd"] == pytest.approx(0.008, rel=0.05)
    assert c["noise_sd"] == pytest.approx(0.006, rel=0.05)
    assert c["ceiling_tau"] == pytest.approx(kendalltau(true, first).statistic, abs=0.03)
    four = true + 0.003 * rng.standard_normal(2000)  # 4x the samples: half the noise sd
    assert c["ceiling_tau_4x"] == pytest.approx(kendalltau(true, four).statistic, abs=0.03)
    assert c["tau_two_sets"] < c["ceiling_tau"] < c["ceiling_tau_4x"] < 1


def test_speedups_take_the_fastest_then_smallest_point(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cimnet = importlib.import_module("cimnet")
    # (negated accuracy, cycles) and areas: two points tie at 1,000 cycles within 1 point
    fronts = {
        "joint": {
            "points": [[-0.93, 2000.0], [-0.925, 1000.0], [-0.925, 1000.0], [-0.90, 500.0]],
            "areas": [538.0, 1076.0, 270.0, 69.0],
        }
    }
    cimnet.speedups(fronts, {"accuracy": 0.93, "cycles": 2000}, ["accuracy", "cycles"])
    s = fronts["joint"]["speedups"]
    assert s["0"] == {"speedup": 1.0, "area": 538.0}
    assert s["0.01"] == {"speedup": 2.0, "area": 270.0}  # not the first of the tied points
    assert s["0.02"] == s["0.01"]  # 0.90 is 3 points below
    assert fronts["joint"]["best_accuracy"] == 0.93


def test_splits_average_seeded_splits_and_keep_the_tau_range(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cimnet = importlib.import_module("cimnet")
    seeds = []

    def one_split(space, rows, table, objective, seed):
        seeds.append(seed)
        return {
            "train": 40,
            "test": 20,
            "model": "Ridge",
            "mape": 2.0 * seed,
            "kendall_tau": seed / 10,
            "spearman_rho": 0.5,
        }

    monkeypatch.setattr(cimnet, "_split_scores", one_split)
    s = cimnet.predictor_scores(None, [], {}, "cycles", seed=3, splits=4)
    assert seeds == [3, 4, 5, 6]
    assert s["kendall_tau"] == pytest.approx(0.45) and s["mape"] == pytest.approx(9.0)
    assert s["tau_range"] == [0.3, 0.6] and s["splits"] == 4 and s["train"] == 40
    assert cimnet._cell(s) == "0.45 (0.30-0.60) / 9.0% (40)"
    one = cimnet.predictor_scores(None, [], {}, "cycles", seed=3)
    assert cimnet._cell(one) == "0.30 / 6.0% (40)"


def test_the_table_compresses_each_architecture_once(monkeypatch):
    """Configs run architecture by architecture (the bounded cache would otherwise lose an
    architecture's graph before its second hierarchy), ``workers`` architectures side by side."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cimnet = importlib.import_module("cimnet")
    configs = [{"arch.d": a, "L1_bw": h} for h in (1, 2) for a in (0, 1, 2)]  # as the kinds list
    one = cimnet.by_architecture(configs, 1)
    assert [(c["arch.d"], c["L1_bw"]) for c in one] == [
        (0, 1),
        (0, 2),
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    two = cimnet.by_architecture(configs, 2)
    assert [(c["arch.d"], c["L1_bw"]) for c in two] == [
        (0, 1),
        (1, 1),
        (0, 2),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
