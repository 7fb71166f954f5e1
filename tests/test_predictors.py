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
