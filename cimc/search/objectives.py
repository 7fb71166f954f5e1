"""Objectives and constraints: what the search minimises, read from stored metrics.

Every objective is minimised internally (maximised ones negated, as in DyNAS-T). A config is
feasible when it evaluated without error (it fits on chip) and meets ``--max-area`` and
``--min-fidelity``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OptionError


@dataclass(frozen=True)
class Objective:
    """A figure of an evaluation to optimise: a stored metric, or ``compute(metrics)`` of them
    (a custom objective, registered with :func:`register_objective`)."""

    name: str
    metric: str
    maximise: bool
    log: bool  # positive and multiplicative in hardware parameters: predicted in log space
    label: str
    compute: Callable[[dict[str, Any]], float] | None = None
    graph_only: bool = False
    """A function of the compressed graph alone (the architecture and the pass options), not of
    the hierarchy that runs it: once a graph is evaluated, the search knows it exactly."""
    summed: bool = False
    """A sum over the network's blocks (cycles, energy): its predictor also reads how many
    blocks of each kind take each choice (``Space.features``)."""

    def value(self, metrics: dict[str, Any]) -> float:
        return float(self.compute(metrics) if self.compute else metrics[self.metric])


OBJECTIVES = {
    o.name: o
    for o in (
        Objective("fidelity", "cosine", True, False, "output cosine vs fp32", graph_only=True),
        Objective(
            "agreement", "top1_agreement", True, False, "top-1 agreement vs fp32", graph_only=True
        ),
        Objective("accuracy", "accuracy", True, False, "accuracy on the labels", graph_only=True),
        Objective("cycles", "cycles", False, True, "cycles", summed=True),
        Objective("latency", "latency_s", False, True, "latency (s)", summed=True),
        Objective("energy", "energy_pj", False, True, "energy (pJ)", summed=True),
        Objective("area", "area_mm2", False, True, "chip area (mm^2)"),
        Objective("bits", "bits_per_weight", False, False, "bits per weight", graph_only=True),
    )
}


def register_objective(objective: Objective) -> Objective:
    """Make ``objective`` available to ``cimc.search(objectives=...)`` by its name."""
    OBJECTIVES[objective.name] = objective
    return objective


def parse_objectives(names: list[str] | tuple[str, ...], has_labels: bool) -> list[Objective]:
    """Two or three known objectives; accuracy needs labelled data."""
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise OptionError(
            f"unknown objective(s) {unknown}; choose two or three of {', '.join(OBJECTIVES)}"
        )
    if not 2 <= len(names) <= 3 or len(set(names)) != len(names):
        raise OptionError(f"--objectives {list(names)}: give two or three distinct objectives")
    if "accuracy" in names and not has_labels:
        raise OptionError("objective accuracy needs --data with a 'labels' array; use fidelity")
    return [OBJECTIVES[n] for n in names]


def minimised(metrics: dict[str, Any], objectives: list[Objective]) -> np.ndarray:
    """The objectives' values as the search minimises them."""
    return np.array(
        [-o.value(metrics) if o.maximise else o.value(metrics) for o in objectives], float
    )


@dataclass(frozen=True)
class Constraints:
    max_area: float | None = None
    min_fidelity: float | None = None

    def violation(self, metrics: dict[str, Any]) -> float:
        """0 when feasible, else how far off (1 for an error, relative excess for bounds)."""
        if metrics.get("error") is not None:
            return 1.0
        out = 0.0
        if self.max_area is not None:
            out += max(0.0, metrics["area_mm2"] / self.max_area - 1.0)
        if self.min_fidelity is not None:
            out += max(0.0, self.min_fidelity - metrics["cosine"])
        return out
