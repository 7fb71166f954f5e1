"""The rich tables and summary lines the commands print.

Each function takes the figures another module computed (summary, storage report, program,
simulation result) and only formats them; none of them computes a figure of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .bits import storage_report
from .layers import UNIT_LABELS

if TYPE_CHECKING:
    from ..program import Program
    from ..targets.params import Spec, Target
    from ..targets.simulator import SimResult


class _Console(Console):
    """A rich Console whose closed stdout (``cimc inspect ... | head``) reaches the CLI as
    BrokenPipeError, which ends the command quietly, rather than rich's exit status 1."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def console(min_width: int = 120, piped_width: int = 400) -> Console:
    """A console at least ``min_width`` wide, so tables do not wrap in narrow terminals; into a
    pipe or file ``piped_width``, so no layer or parameter name is cut short (``--set`` needs
    them whole)."""
    probe = Console()
    width = max(min_width, probe.width) if probe.is_terminal else piped_width
    return _Console(width=width)


def _columns(table: Table, names: tuple[str, ...], left: tuple[str, ...]) -> Table:
    for name in names:
        table.add_column(name, justify="left" if name in left else "right")
    return table


def _shapes(shapes: list[list[int]]) -> str:
    return " ".join("x".join(map(str, s)) for s in shapes)


def inspect_table(model: str, report: dict[str, Any]) -> Table:
    """``cimc inspect``: one row per layer of :func:`cimc.report.layers.summarize`."""
    table = Table(title=f"{model}: {report['model']}", show_lines=False)
    names = ("#", "layer", "op", "input", "output", "params", "MACs", "unit")
    _columns(table, names, left=("layer", "op", "input", "output", "unit"))
    for i, r in enumerate(report["layers"]):
        table.add_row(
            str(i),
            r["name"],
            r["op"],
            _shapes(r["inputs"]) or "-",
            _shapes(r["outputs"]),
            f"{r['params']:,}",
            f"{r['macs']:,}",
            r["unit"],
        )
    return table


def inspect_totals(report: dict[str, Any]) -> str:
    t = report["totals"]
    return (
        f"{t['layers']} layers ({t['cim_layers']} on CiM arrays), "
        f"{t['params']:,} parameters ({t['cim_params']:,} in CiM layers), "
        f"{t['macs']:,} MACs ({100 * t['cim_macs'] / max(t['macs'], 1):.1f}% on CiM)"
    )


def passes_table(passes: list[dict[str, Any]]) -> Table:
    """``cimc passes``: one row per registered pass of :func:`cimc.passes_base.describe_passes`."""
    table = Table(title="registered passes")
    for col in ("pass", "options (defaults)", "searchable", "what it does"):
        table.add_column(col, overflow="fold")
    for p in passes:
        opts = ", ".join(f"{k}={v}" for k, v in p["options"].items()) or "-"
        table.add_row(p["name"], opts, ", ".join(p["search_space"]) or "-", p["summary"])
    return table


def targets_table(targets: Mapping[str, Target], specs: Mapping[str, Spec]) -> Table:
    """``cimc targets``: one row per parameter, one column per preset."""
    table = Table(title="target presets (set any value with --set NAME=VALUE)")
    table.add_column("parameter")
    table.add_column("unit")
    for name in targets:
        table.add_column(name, justify="right")
    for param, spec in specs.items():
        table.add_row(param, spec.unit, *[f"{getattr(t, param)}" for t in targets.values()])
    return table


def _cim_cells(program: Program, name: str, storage: dict[str, dict[str, Any]]) -> list[str]:
    """Scheme, bits per weight, tiling and tile's modelled cycles of a CiM layer."""
    m = program.graph.node(name).meta["mapping"]
    s = storage[name]
    return [
        s["scheme"],
        f"{s['bits_per_weight']:.3f}",
        f"{m['tiles']} x {m['rep']}",
        m["order"],
        f"{m['modelled_cycles']:,}",
    ]


def compile_table(program: Program, result: SimResult) -> Table:
    """``cimc compile``: every layer in execution order with its simulated cycles and bottleneck
    (``result``: the timing model on ``program``), beside tile's choice for CiM layers."""
    graph = program.graph
    storage = {r["name"]: r for r in storage_report(graph)["layers"]}
    table = Table(title=f"{graph.name} for {program.manifest['target']['name']}")
    names = ("#", "layer", "op", "scheme", "bits/w", "tiles x rep", "order", "instr")
    names += ("tile cycles", "simulated cycles", "bottleneck")
    _columns(table, names, left=("layer", "op", "scheme", "order", "bottleneck"))
    index = {e["node"]: (li, e["kind"]) for li, e in enumerate(program.layers)}
    per_layer = np.bincount(program.instructions["layer"], minlength=len(program.layers))
    for i, layer in enumerate(result.layers):
        li, kind = index[layer.name]
        cim = _cim_cells(program, layer.name, storage) if kind == "cim" else ["-"] * 5
        table.add_row(
            str(i),
            layer.name,
            layer.op.removeprefix("cimc."),
            *cim[:4],
            f"{per_layer[li]:,}",
            cim[4],
            f"{layer.cycles:,}",
            UNIT_LABELS[layer.bottleneck],
        )
    return table


def agreement_line(agreement: Mapping[str, tuple[int, int]]) -> str:
    """Whether tile's modelled cycles equal the simulated ones on every CiM layer."""
    differ = {n: mc for n, mc in agreement.items() if mc[0] != mc[1]}
    if not differ:
        n = len(agreement)
        return f"tile's modelled cycles equal the simulated cycles on all {n} CiM layers"
    name, (modelled, simulated) = max(differ.items(), key=lambda kv: abs(kv[1][0] - kv[1][1]))
    return (
        f"tile's modelled cycles differ from the simulated cycles on {len(differ)} of "
        f"{len(agreement)} CiM layers (largest gap: {name}, {modelled:,} vs {simulated:,})"
    )


def result_table(result: SimResult) -> Table:
    """``cimc run``: every layer in execution order: cycles, the unit kind whose busiest unit was
    busy longest (its busy cycles and share of the layer's cycles), and energy."""
    table = _columns(
        Table(title="per layer (busy: the busiest unit of the bottleneck kind)"),
        ("#", "layer", "op", "cycles", "bottleneck", "busy", "util", "energy nJ"),
        left=("layer", "op", "bottleneck"),
    )
    for i, layer in enumerate(result.layers):
        table.add_row(
            str(i),
            layer.name,
            layer.op.removeprefix("cimc."),
            f"{layer.cycles:,}",
            UNIT_LABELS[layer.bottleneck],
            f"{layer.unit_busy.get(layer.bottleneck, 0):,}",
            f"{100 * layer.utilisation:.0f}%",
            f"{sum(layer.energy_pj.values()) / 1e3:,.1f}",
        )
    return table


def result_lines(result: SimResult) -> list[str]:
    """``cimc run``: cycles, energy, area and utilisation totals, one line each."""
    energy = ", ".join(f"{k} {v / 1e6:.3f}" for k, v in result.energy_breakdown.items())
    area = ", ".join(f"{k} {v:.3f}" for k, v in result.area_breakdown.items())
    busy = ", ".join(f"{UNIT_LABELS[k]} {100 * v:.0f}%" for k, v in result.utilisation.items())
    used = result.area_used_mm2 / result.area_mm2 if result.area_mm2 else 0.0
    return [
        f"cycles {result.cycles:,} = {result.latency_s * 1e3:.4g} ms at {result.clock_mhz:g} MHz; "
        f"{result.instructions:,} instructions",
        f"energy {result.energy_pj / 1e6:.3f} uJ ({energy})",
        f"chip area {result.area_mm2:.3f} mm^2 ({area}); this program uses "
        f"{result.area_used_mm2:.3f} mm^2 ({100 * used:.0f}%)",
        f"utilisation of the busiest unit of each kind: {busy}",
    ]


# The figures of :func:`cimc.report.compare.compare_rows`: column header and format.
_COMPARED = {
    "cycles": ("cycles", lambda v: f"{v:,}"),
    "latency_s": ("latency ms", lambda v: f"{v * 1e3:.4g}"),
    "energy_pj": ("energy uJ", lambda v: f"{v / 1e6:.3f}"),
    "area_mm2": ("chip mm^2", lambda v: f"{v:.3f}"),
    "area_used_mm2": ("used mm^2", lambda v: f"{v:.3f}"),
    "bits_per_weight": ("bits/w", lambda v: f"{v:.3f}"),
}


def compare_table(rows: list[dict[str, Any]]) -> Table:
    """``cimc compare``: one row per program, each figure with its ratio to the first row's."""
    table = Table(title="programs side by side (in brackets: ratio to the first)")
    headers = [header for header, _ in _COMPARED.values()]
    _columns(table, ("program", "target", *headers), left=("program", "target"))
    for row in rows:
        cells = []
        for key, (_, fmt) in _COMPARED.items():
            ratio = row["ratios"][key]
            cells.append(f"{fmt(row[key])} ({'-' if ratio is None else f'{ratio:.2f}'}x)")
        table.add_row(row["program"], row["target"], *cells)
    return table


def demo_table() -> Table:
    """``cimc demo``: the empty accuracy table; the demo adds a row per compiled model."""
    names = (
        "model",
        "target",
        "accuracy",
        "fp32",
        "bits/w all (compressed)",
        "cycles/8 img",
        "latency ms",
        "energy uJ",
        "area mm^2",
    )
    title = "digits: accuracy through the simulated CiM chip vs onnxruntime fp32"
    return _columns(Table(title=title), names, left=("model", "target"))


def bits_cell(report: dict[str, Any]) -> str:
    """Bits per weight overall, and per pool-compressed weight when there are any."""
    text = f"{report['bits_per_weight']:.3f}"
    if report["compressed_weights"]:
        text += f" ({report['compressed_bits_per_weight']:.3f})"
    return text


def sensitivity_table(rows: list[dict[str, Any]], title: str) -> Table:
    """``cimc sensitivity``: one row per CiM layer of :func:`cimc.sensitivity.layer_sensitivity`,
    least faithful first."""
    table = Table(title=title)
    names = ("#", "layer", "op", "scheme", "weights", "bits/w", "cosine", "rel. error", "top-1")
    _columns(table, names, left=("layer", "op", "scheme"))
    for i, r in enumerate(rows):
        table.add_row(
            str(i),
            r["layer"],
            r["op"],
            r["scheme"],
            f"{r['weights']:,}",
            f"{r['bits_per_weight']:.3f}",
            f"{r['cosine']:.5f}",
            f"{r['rel_error']:.4f}",
            f"{r['top1_agreement']:.3f}",
        )
    return table
