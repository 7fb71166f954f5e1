"""Programs side by side (``cimc compare``): the figures a design choice trades, and each one's
ratio to the first program's, so "B takes 0.6x the cycles for 1.3x the area" reads directly.

Area is the configured chip's and the part the program uses; bits per weight is the storage
report of the program's graph. A ratio whose reference is zero (or not a number) is ``None``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .bits import storage_report

if TYPE_CHECKING:
    from ..program import Program
    from ..targets.simulator import SimResult

METRICS = ("cycles", "latency_s", "energy_pj", "area_mm2", "area_used_mm2", "bits_per_weight")


def program_figures(label: str, program: Program, result: SimResult) -> dict[str, Any]:
    """One program's row: its label, target, the compared figures and the energy breakdown."""
    return {
        "program": label,
        "target": program.manifest["target"]["name"],
        "cycles": result.cycles,
        "latency_s": result.latency_s,
        "energy_pj": result.energy_pj,
        "area_mm2": result.area_mm2,
        "area_used_mm2": result.area_used_mm2,
        "bits_per_weight": storage_report(program.graph)["bits_per_weight"],
        "energy_breakdown": result.energy_breakdown,
    }


def _ratio(value: float, reference: float) -> float | None:
    if not reference or math.isnan(reference) or math.isnan(value):
        return None
    return value / reference


def compare_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``ratios``: each metric divided by the first row's."""
    first = rows[0]
    return [row | {"ratios": {m: _ratio(row[m], first[m]) for m in METRICS}} for row in rows]
