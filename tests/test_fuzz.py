"""The fuzz campaign of benchmarks/fuzz.py on a fixed seeded sample: every case must end in a
result or a CimcError; and the harness itself must tell crashes, hangs and OOM apart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "fuzz", Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
)
fuzz = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fuzz)


def test_fixed_sample_has_no_bad_outcome():
    cases = fuzz.make_cases(2000, seed=1)
    results = fuzz.run(cases, workers=2, timeout=20.0)
    assert len(results) == len(cases)
    bad = sorted({r for r in results.values() if r.split(":")[0] in fuzz.BAD})
    assert bad == []
    counts = fuzz.summarise(results)
    # the sample exercises both sides: programs that must match interpret, and refusals
    assert counts["ok"] > 100 and counts["cimc_error"] > 1000


def test_harness_classifies_crash_hang_and_oom_without_losing_other_cases():
    normal = fuzz.make_cases(6, seed=3)
    selftests = [
        {"id": 100 + i, "kind": "selftest", "seed": 0, "do": do}
        for i, do in enumerate(("abort", "hang", "alloc"))
    ]
    cases = normal[:2] + selftests + normal[2:]
    results = fuzz.run(cases, workers=1, timeout=3.0, batch=len(cases))
    assert results[100].startswith("crash:") and results[101] == "timeout"
    assert results[102] == "oom"
    assert all(results[c["id"]] in ("ok", "cimc_error") for c in normal)
