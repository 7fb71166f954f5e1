"""Per-layer cycles by unit kind as a chart (``cimc run --plot``); needs matplotlib.

Top panel: over the whole run, each unit kind's busiest unit's busy cycles beside the total.
Bottom panel: the layers with the most cycles (execution order, the rest summed in one row), each
a grey bar of its cycles with one thin bar per unit kind inside it: that kind's busiest unit's
busy cycles (one array, one link: never the sum over units). Horizontal bars keep layer names
readable; the size depends on the number of rows shown, not the model's layers, and the legend
sits outside the axes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_path
from .layers import UNIT_LABELS, LayerBar, top_layers

if TYPE_CHECKING:
    from ..program import Program
    from ..targets.simulator import SimResult

TOP_LAYERS = 24
WIDTH_IN = 12.0
DPI = 110


def _short(name: str, width: int = 34) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def _row_label(row: LayerBar) -> str:
    return f"{_short(row.label)} ({row.op})" if row.op else row.label


def _clip_summed_row(ax, rows: list[LayerBar], total: int) -> None:
    """Scale the axis to the largest single layer; a longer summed row is cut at the edge and
    its cycles written on it, so it does not squash the layers shown."""
    single = max((r.cycles for r in rows if r.op), default=0)
    summed = rows[-1]
    if summed.op or summed.cycles <= single or not single:
        return
    edge = 1.15 * single
    ax.set_xlim(0, edge)
    ax.text(
        0.99 * edge,
        len(rows) - 1,
        f"{summed.cycles:,} cycles ({100 * summed.cycles / total:.0f}% of the run), axis cut",
        ha="right",
        va="center",
        fontsize=8,
        bbox={"facecolor": "white", "edgecolor": "0.6", "pad": 2},
    )


def plot_layers(result: SimResult, program: Program, path: str, top: int = TOP_LAYERS) -> None:
    """Write the chart of ``result`` (simulated ``program``) to the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = top_layers(result, top)
    kinds = list(UNIT_LABELS)
    colours = dict(zip(kinds, plt.get_cmap("tab10").colors))
    height = 2.4 + 0.42 * len(rows)
    fig, (ax_total, ax) = plt.subplots(
        2,
        1,
        figsize=(WIDTH_IN, height),
        gridspec_kw={"height_ratios": [2.2, 0.42 * len(rows)]},
        layout="constrained",
    )
    idle = {k for k in kinds if not result.unit_busy.get(k, 0)}
    labels = {k: UNIT_LABELS[k] + (" (idle)" if k in idle else "") for k in kinds}

    totals = [result.unit_busy.get(k, 0) for k in kinds]
    y = np.arange(len(kinds))
    ax_total.barh(y, totals, color=[colours[k] for k in kinds])
    ax_total.axvline(result.cycles, color="k", lw=1, ls="--", label="total cycles")
    ax_total.set_yticks(y, [labels[k] for k in kinds], fontsize=8)
    ax_total.invert_yaxis()
    ax_total.set_xlabel("busy cycles of the busiest unit of each kind (whole run)")
    ax_total.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    band = 0.8 / len(kinds)
    y = np.arange(len(rows))
    ax.barh(y, [r.cycles for r in rows], height=0.9, color="0.88", label="layer cycles")
    for j, k in enumerate(kinds):
        offset = -0.4 + band * (j + 0.5)
        busy = [r.unit_busy.get(k, 0) for r in rows]
        ax.barh(y + offset, busy, height=band, color=colours[k], label=labels[k])
    ax.set_yticks(y, [_row_label(r) for r in rows], fontsize=7)
    _clip_summed_row(ax, rows, result.cycles)
    ax.invert_yaxis()
    ax.set_xlabel("cycles; coloured: busy cycles of the busiest unit of each kind in the layer")
    n = len(result.layers)
    title = f"{min(top, n)} of {n} layers with the most cycles, in execution order"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(
        f"{program.graph.name} on {program.manifest['target']['name']}: "
        f"{result.cycles:,} cycles, {result.latency_s * 1e3:.4g} ms"
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
