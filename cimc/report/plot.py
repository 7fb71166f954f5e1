"""Per-layer charts; need matplotlib. ``cimc sensitivity --plot``: each CiM layer's output error
when only it is compressed (:func:`plot_sensitivity`). ``cimc run --plot``: cycles by unit kind:

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

from ..atomic import atomic_path, check_output
from .layers import UNIT_LABELS, LayerBar, top_layers

if TYPE_CHECKING:
    from ..program import Program
    from ..targets.simulator import SimResult

TOP_LAYERS = 24
WIDTH_IN = 12.0
DPI = 110
PLOT_SUFFIXES = (".png", ".pdf", ".svg")  # what --plot writes, by the file's extension


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
    _save(fig, path)


def plot_sensitivity(rows: list[dict], title: str, path: str, top: int = TOP_LAYERS) -> None:
    """Write the ``top`` least faithful layers of :func:`cimc.sensitivity.layer_sensitivity`'s
    ``rows`` (least faithful first) as horizontal bars of cosine loss, coloured by scheme, to
    PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows[:top]
    schemes = sorted({r["scheme"] for r in shown})
    colours = dict(zip(schemes, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 1.4 + 0.32 * len(shown)), layout="constrained")
    y = np.arange(len(shown))
    loss = [1 - r["cosine"] for r in shown]
    ax.barh(y, loss, color=[colours[r["scheme"]] for r in shown])
    labels = [
        f"{_short(r['layer'])} ({r['weights']:,} w, {r['bits_per_weight']:.2f} b/w)" for r in shown
    ]
    ax.set_yticks(y, labels, fontsize=7)
    for i, r in enumerate(shown):
        ax.text(loss[i], i, f" rel. error {r['rel_error']:.3f}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("1 - cosine of the model's outputs with only this layer compressed")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[s]) for s in schemes]
    ax.legend(handles, schemes, loc="lower right", fontsize=8)
    more = f" ({len(shown)} least faithful of {len(rows)})" if len(rows) > len(shown) else ""
    ax.set_title(f"{title}{more}", fontsize=9)
    _save(fig, path)


def check_plot_path(path: str) -> None:
    """Raise OutputError unless a plot can be written to ``path`` (see ``check_output``)."""
    check_output(path, PLOT_SUFFIXES)


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    check_plot_path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=tmp.suffix[1:].lower())
    plt.close(fig)
