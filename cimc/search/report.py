"""What a study shows: the Pareto table, report.json and the PNG plots, from the file alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .loop import pareto_mask
from .objectives import OBJECTIVES, Constraints, minimised
from .space import HIERARCHY
from .study import Row, Study


def pareto_rows(study: Study) -> list[Row]:
    """The feasible rows on the true front of the study's objectives."""
    settings = study.meta()["settings"]
    objectives = [OBJECTIVES[n] for n in settings["objectives"]]
    limits = Constraints(settings.get("max_area"), settings.get("min_fidelity"))
    ok = [r for r in study.rows() if limits.violation(r.metrics) == 0]
    if not ok:
        return []
    points = np.array([minimised(r.metrics, objectives) for r in ok])
    front = [r for r, keep in zip(ok, pareto_mask(points)) if keep]
    return sorted(front, key=lambda r: minimised(r.metrics, objectives).tolist())


def difference(config: dict[str, Any], base: dict[str, Any], family: str | None = None) -> str:
    """A config as its change from the preset; hierarchy values as multiples of the preset's.
    The variables of a block the family's subnet does not have are left out (they mean nothing)."""
    return " ".join(changes(config, base, family)) or "(preset)"


def changes(config: dict[str, Any], base: dict[str, Any], family: str | None = None) -> list[str]:
    """The variables a config sets away from the preset, as :func:`difference` prints them."""
    absent = _absent_block_variables(config, family)
    parts = []
    for name, value in config.items():
        if value == base.get(name) or name in absent:
            continue
        if name in HIERARCHY and base.get(name):
            parts.append(f"{name}x{value / base[name]:g}")
        else:
            parts.append(f"{name}={value}")
    return parts


def _absent_block_variables(config: dict[str, Any], family: str | None) -> set[str]:
    if family is None:
        return set()
    from .architecture import PREFIX, load_family

    return {
        PREFIX + v
        for slot in load_family(family).slots()
        if not slot.present(config.get(PREFIX + slot.depth, slot.index + 1))
        for v in slot.variables
    }


def pareto_table(study: Study) -> list[dict[str, Any]]:
    """The front, one row per point: configurations reaching the same objective values (knobs
    the objectives do not see) are one row, the smallest chip of them changing fewest variables
    from the preset, with ``configs`` counting them. A labelled family's rows also carry their
    test-split accuracy."""
    meta = study.meta()
    settings, tested = meta["settings"], meta.get("test_accuracy")
    base, family = settings["base_config"], meta.get("family")
    objectives = [OBJECTIVES[n] for n in settings["objectives"]]
    points: dict[tuple[float, ...], list[Row]] = {}
    for r in pareto_rows(study):
        points.setdefault(tuple(minimised(r.metrics, objectives).tolist()), []).append(r)
    table = []
    for tied in points.values():
        # the smallest chip, then the fewest changes, then the first evaluated
        r = min(tied, key=lambda r: (r.metrics["area_mm2"], len(changes(r.config, base, family))))
        table.append(
            {
                "round": r.round,
                **{n: OBJECTIVES[n].value(r.metrics) for n in settings["objectives"]},
                **({} if tested is None else {"test_accuracy": tested.get(r.hash)}),
                "area_mm2": r.metrics["area_mm2"],
                "configs": len(tied),
                "change": difference(r.config, base, family),
            }
        )
    return table


def print_pareto(study: Study) -> None:
    from rich.table import Table

    from ..report.tables import console

    rows = pareto_table(study)
    table = Table(title=f"Pareto front of {study.folder} ({len(study.rows())} true evaluations)")
    for key in rows[0] if rows else ["(no feasible evaluation)"]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console().print(table)


def multiples_table(study: Study) -> dict[str, dict[str, int]]:
    """How many Pareto points use each multiple of each hierarchy parameter (CiMNet's table)."""
    base = study.meta()["settings"]["base_config"]
    out: dict[str, dict[str, int]] = {}
    for row in pareto_rows(study):
        for name in HIERARCHY:
            if name in row.config and base.get(name):
                key = f"{row.config[name] / base[name]:g}"
                out.setdefault(name, {}).setdefault(key, 0)
                out[name][key] += 1
    return out


def write_report(study: Study) -> Path:
    """report.json and the plots into the study folder."""
    from ..atomic import write_text_atomic

    meta = study.meta()
    report = {
        "settings": meta["settings"],
        "hv_reference": meta.get("hv_reference"),
        "rounds": study.rounds(),
        "pareto": pareto_table(study),
        "hierarchy_multiples": multiples_table(study),
        "evaluations": len(study.rows()),
        "inputs": "seeded random inputs (no --data)"
        if meta["settings"]["random_inputs"]
        else meta["settings"]["data"],
    }
    path = write_text_atomic(study.folder / "report.json", json.dumps(report, indent=1))
    _plots(study, report)
    return path


def _plots(study: Study, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    names = report["settings"]["objectives"]
    objectives = [OBJECTIVES[n] for n in names]
    rows = [r for r in study.rows() if r.feasible]
    x, y = objectives[1], objectives[0]

    fig, ax = plt.subplots(figsize=(6, 4.5))
    rounds = np.array([r.round for r in rows])
    ax.scatter(
        [x.value(r.metrics) for r in rows],
        [y.value(r.metrics) for r in rows],
        c=rounds,
        cmap="viridis",
        s=14,
        label="true evaluations (colour: round)",
    )
    pred = [r for r in rows if r.predicted]
    if pred:
        ax.scatter(
            [r.predicted[x.name] for r in pred],
            [r.predicted[y.name] for r in pred],
            marker="x",
            c="tab:red",
            s=14,
            label="predicted (candidates)",
        )
    ax.set_xlabel(x.label), ax.set_ylabel(y.label), ax.legend(fontsize=7)
    _save(fig, study.folder / "front.png", atomic_path)

    fig, axes = plt.subplots(1, len(objectives), figsize=(4 * len(objectives), 3.6))
    last = report["rounds"][-1]["held_out"] if report["rounds"] else {}
    for ax, o in zip(np.atleast_1d(axes), objectives):
        pairs = np.array([(o.value(r.metrics), r.predicted[o.name]) for r in pred]).reshape(-1, 2)
        ax.scatter(pairs[:, 0], pairs[:, 1], s=10)
        stats = last.get(o.name, {})
        ax.set_title(
            f"{o.name}: tau {stats.get('kendall_tau', float('nan')):.2f}, "
            f"MAPE {stats.get('mape', float('nan')):.1f}%",
            fontsize=9,
        )
        ax.set_xlabel("true"), ax.set_ylabel("predicted")
    _save(fig, study.folder / "predicted_vs_true.png", atomic_path)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(
        [r["evaluations"] for r in report["rounds"]],
        [r["hypervolume"] for r in report["rounds"]],
        marker="o",
    )
    ax.set_xlabel("true evaluations"), ax.set_ylabel("hypervolume")
    _save(fig, study.folder / "hypervolume.png", atomic_path)

    table = report["hierarchy_multiples"]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(HIERARCHY) + 1))
    cols = ["0.125", "0.25", "0.5", "1"]
    cells = [[str(table.get(p, {}).get(c, 0)) for c in cols] for p in HIERARCHY]
    ax.axis("off")
    ax.table(cells, rowLabels=list(HIERARCHY), colLabels=[f"x{c}" for c in cols], loc="center")
    ax.set_title("Pareto points per multiple of the preset")
    _save(fig, study.folder / "hierarchy_multiples.png", atomic_path)


def _save(fig: Any, path: Path, atomic_path: Any) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
