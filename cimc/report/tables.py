"""The rich tables and summary lines the commands print.

Each function takes the figures another module computed (summary, storage report, program,
simulation result) and only formats them; none of them computes a figure of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from .bits import storage_report
from .layers import busy_by_layer

if TYPE_CHECKING:
    from ..program import Program
    from ..targets.params import Spec, Target
    from ..targets.simulator import SimResult


def console(min_width: int = 120) -> Console:
    """A console at least ``min_width`` wide, so tables do not wrap in narrow terminals."""
    return Console(width=max(min_width, Console().width))


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


def compile_table(program: Program) -> Table:
    """``cimc compile``: scheme, bits per weight, tiling and modelled cycles per CiM layer."""
    graph = program.graph
    storage = {r["name"]: r for r in storage_report(graph)["layers"]}
    table = Table(title=f"{graph.name} for {program.manifest['target']['name']}")
    names = ("layer", "op", "scheme", "bits/w", "tiles x rep", "order", "instr", "modelled cycles")
    _columns(table, names, left=("layer", "op", "scheme", "order"))
    ins = program.instructions
    for li, entry in enumerate(program.layers):
        if entry["kind"] != "cim":
            continue
        node = graph.node(entry["node"])
        m = node.meta["mapping"]
        s = storage[node.name]
        table.add_row(
            node.name,
            node.op.removeprefix("cimc."),
            s["scheme"],
            f"{s['bits_per_weight']:.3f}",
            f"{m['tiles']} x {m['rep']}",
            m["order"],
            str(int((ins["layer"] == li).sum())),
            f"{m['modelled_cycles']:,}",
        )
    return table


def result_table(result: SimResult, program: Program) -> Table:
    """``cimc run``: simulated cycles per layer and the busy cycles of arrays and vector unit."""
    table = _columns(
        Table(title="per layer"),
        ("layer", "op", "cycles", "array busy", "vector busy"),
        left=("layer", "op"),
    )
    ops = {e["node"]: e["op"] for e in program.layers}
    busy = busy_by_layer(result)
    for name, cycles in result.layer_cycles.items():
        array, vector = busy[name]
        table.add_row(
            name, ops[name].removeprefix("cimc."), f"{cycles:,}", f"{array:,}", f"{vector:,}"
        )
    return table


def result_lines(result: SimResult) -> list[str]:
    """``cimc run``: cycles, energy, area and utilisation totals, one line each."""
    energy = ", ".join(f"{k} {v / 1e6:.3f}" for k, v in result.energy_breakdown.items())
    area = ", ".join(f"{k} {v:.3f}" for k, v in result.area_breakdown.items())
    busy = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result.utilisation.items())
    return [
        f"cycles {result.cycles:,} = {result.latency_s * 1e3:.3f} ms at {result.clock_mhz:g} MHz; "
        f"{result.instructions:,} instructions",
        f"energy {result.energy_pj / 1e6:.3f} uJ ({energy})",
        f"area {result.area_mm2:.3f} mm^2 ({area})",
        f"utilisation of the busiest unit of each kind: {busy}",
    ]


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
