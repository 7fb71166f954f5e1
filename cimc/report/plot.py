"""Per-layer cycles by unit as a bar chart (``cimc run --plot``); needs matplotlib."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_path
from .layers import busy_by_layer

if TYPE_CHECKING:
    from ..program import Program
    from ..targets.simulator import SimResult


def plot_layers(result: SimResult, program: Program, path: str) -> None:
    """Stacked array and vector busy cycles and the wall cycles of every layer, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    busy = busy_by_layer(result)
    names = list(busy)
    array = [busy[n][0] for n in names]
    vector = [busy[n][1] for n in names]
    total = [result.layer_cycles[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.18), 4.5))
    x = np.arange(len(names))
    ax.bar(x, array, label="array compute (busiest array)")
    ax.bar(x, vector, bottom=array, label="vector unit")
    ax.plot(x, total, "k.", label="layer cycles (wall)")
    ax.set_xticks(x, [n.split("/")[-2] if "/" in n else n for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("cycles")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"{program.graph.name} on {program.manifest['target']['name']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
