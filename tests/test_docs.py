"""docs/architecture.md's code runs as it stands, and its layout tree names files that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def run_example(heading: str) -> subprocess.CompletedProcess:
    """Run the first python block after ``heading`` from the repository root."""
    section = DOC[DOC.index(heading) :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_hardware_kind_example_runs():
    macro, cycles = run_example("## A hardware kind of your own").stdout.split()
    assert macro == "int-wide-adder" and int(cycles) > 0


def test_layout_tree_names_real_files():
    tree = re.search(r"## Layout\n\n```\n(.*?)```", DOC, re.S).group(1)
    folder = ""
    for line in tree.splitlines():
        entry = line.split()[0]
        if not line.startswith(" "):
            folder = entry if entry.endswith("/") else ""
            path = ROOT / entry
        else:
            path = ROOT / folder / entry
        if "*" in entry:
            assert list(path.parent.glob(path.name)), entry
        else:
            assert path.exists(), f"docs/architecture.md names {path.relative_to(ROOT)}"


def test_search_objective_example_runs():
    proc = run_example("## A search objective of your own")
    count = int(proc.stderr.strip().splitlines()[-1].split()[0])
    assert 8 <= count <= 16  # the initial population, then rounds up to the budget
