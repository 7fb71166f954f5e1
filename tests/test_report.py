"""cimc.report: the fidelity figures ``cimc run --compare`` prints."""

from __future__ import annotations

import numpy as np
import pytest

from cimc.report.fidelity import fidelity


def test_fidelity_of_known_outputs():
    ref = np.array([[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]], dtype=np.float32)
    same = fidelity(ref, ref)
    assert same["cosine"] == pytest.approx(1.0) and same["top1_agreement"] == 1.0
    assert same["reference_constant"] is False
    assert fidelity(-ref, ref)["cosine"] == pytest.approx(-1.0)
    # only row 0 keeps its argmax (column 1); the cosine is computed by hand
    out = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    expect = 4.0 / (np.sqrt(5.0) * np.sqrt(15.25))  # norms of out and ref by hand
    got = fidelity(out, ref)
    assert got["top1_agreement"] == 0.5
    assert got["cosine"] == pytest.approx(expect, rel=1e-12)  # float64 throughout


def test_fidelity_of_zero_outputs_is_zero_not_nan():
    zero = np.zeros((2, 3), dtype=np.float32)
    assert fidelity(zero, zero)["cosine"] == 0.0
