"""CiMNet reproduced on cimc: predictors and searches over an elastic family x the CiM hierarchy.

    python benchmarks/cimnet.py --quick        # elastic-resnet-chars, predictors only (< 10 min)
    python benchmarks/cimnet.py                # the three -chars families, predictors + fronts
    python benchmarks/cimnet.py --families elastic-resnet --archs 12   # ImageNet scale: cycles

Space: the family's architecture variables x the eight CiMNet hierarchy parameters, each at
``--multiples`` of the preset's value (default 1/4, 1/2, 1 and 2: CiMNet searched 1/8..1 of a
baseline whose values are unpublished; here the baseline, the preset, sits inside the space so a
search can be faster than it in both directions), on ``--target`` (default int8-sram: the
weights' numerics do not depend on the hierarchy, and int8 keeps the supernets' accuracy; CiMNet
does not compress). Everything else stays at the preset's value.

**Predictors** (CiMNet's table): ``--archs`` architectures (the largest and smallest among
them) are each evaluated on ``--hw`` hierarchy configs (the first the preset's), plus
``--static-hw`` hierarchy configs of the largest architecture. Three space kinds, as CiMNet:
elastic arch + static config (the preset's hierarchy rows), static arch + elastic config (the
largest architecture's rows), both elastic (all rows). In each, a seeded two-thirds of the rows
train cimc's predictors (Ridge / RBF-SVR by CV on one-hot encodings, ``cimc.search.Predictor``),
the other third scores Kendall tau and MAPE. Accuracy is the compiled graph's on ``--val``
validation images (720, --quick 360, at most 1,440; ``-chars`` families only: ImageNet-scale
weights are random); it cannot vary with the hierarchy, so its static-arch cell is empty.
The cycles predictor is offered products of the hierarchy variables' one-hots (``pairs``).
``--ceiling`` scores each architecture again on the next ``--val`` validation images: the two
scores' agreement bounds what any accuracy predictor can reach against ``--val`` images, and
their mean gives the predictors' taus at twice ``--val`` (an "accuracy, N images" row).

**Fronts** (not with --quick): the predictor-guided loop (``cimc.search``) over arch-only,
hardware-only and joint spaces, ``--budget`` true evaluations each (population ``--population``;
the joint space is two blocks, architecture and hierarchy, varied one at a time at the loop's
``Settings.block_rate``, and that share of each round runs the true front's networks on the
hierarchies the predictors rate best, their accuracy known; the other two are one block each;
every search takes an evaluated network's accuracy as measured, not as predicted); reported:
each front's hypervolume (common reference) and the speed-up at the largest subnet's accuracy
(CiMNet: 1.7x from architecture, 3.1x from both, for ViT-B): the preset hierarchy running the
largest subnet gives the baseline cycles; the fastest front point whose accuracy is at least
the baseline's gives the speed-up (the best reached is printed when none is).
Then the chosen-configuration table (the hierarchy multiples the joint front uses).

True evaluations are rows of ``cimc.search.Study`` databases in ``--workdir``, so a rerun reads
them back. Ends with one line ``joint_tau=<value>`` (the mean of the joint-space taus).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from cimc.targets.params import load_target, search_choices
from search import evaluate_missing, log  # benchmarks/search.py: the same evaluation table

from cimc.search import Evaluator, Predictor, Space, Study, rank_metrics
from cimc.search.architecture import (
    PREFIX,
    arch_config,
    calibration_inputs,
    default_objectives,
    has_labels,
    load_family,
    weights_digest,
)
from cimc.search.cache_limit import CACHE_GB
from cimc.search.executor import process_pool
from cimc.search.loop import (
    Settings,
    feasible_points,
    hypervolume,
    pareto_mask,
    reference_point,
    run_loop,
)
from cimc.search.objectives import OBJECTIVES
from cimc.search.predictors import hierarchy_blocks
from cimc.search.space import HIERARCHY, declared_variables
from cimc.search.study import config_hash

CIMNET_TAU = {  # published Kendall tau (arch / config / both), cycles predictor [CiMNet slides]
    "mbv3": (0.97, 0.97, 0.83),
    "resnet": (0.95, 0.90, 0.81),
    "vit": (1.00, 0.90, 0.78),
}
KINDS = ("arch", "config", "joint")


def space_file(
    target: Any, folder: Path, keep_arch: bool, keep_hw: bool, multiples: tuple[float, ...]
) -> Path:
    """A TOML restricting the space to (arch and/or) the eight hierarchy parameters, each at
    ``multiples`` of the preset's value."""
    declared = declared_variables(target)
    drop = [n for n in declared if not (keep_hw and n in HIERARCHY)]
    path = folder / f"space-{int(keep_arch)}{int(keep_hw)}.toml"
    lines = [f"drop = {json.dumps(sorted(drop))}", "[choices]"]
    if keep_hw:
        scaled = search_choices(target, multiples)
        lines += [f"{name} = {json.dumps(list(scaled[name]))}" for name in HIERARCHY]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_space(
    target: Any, family: str, folder: Path, arch: bool, hw: bool, multiples: tuple[float, ...]
) -> Space:
    space = Space.from_target(target, space_file(target, folder, arch, hw, multiples), family)
    if arch:
        return space
    largest = space.base_config()  # the architecture pinned at the largest subnet
    keep = [v for v in space.variables if not v.name.startswith(PREFIX)]
    pinned = [
        type(v)(v.name, (largest[v.name],), v.members)
        for v in space.variables
        if v.name.startswith(PREFIX)
    ]
    return Space(space.target, tuple(pinned + keep), family)


def sample_configs(space: Space, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Configs of the three space kinds (sharing rows where they coincide)."""
    fam = load_family(space.family)
    rng = np.random.default_rng(args.seed)
    base = space.base_config()
    hw_vars = [v for v in space.variables if not v.name.startswith(PREFIX)]

    def arch(a: dict[str, int]) -> dict[str, Any]:
        return {f"{PREFIX}{k}": v for k, v in a.items()}

    archs = [fam.largest(), fam.smallest()]
    seen = {json.dumps(a, sort_keys=True) for a in archs}
    while len(archs) < args.archs:
        a = fam.sample(rng)
        if json.dumps(a, sort_keys=True) not in seen:
            seen.add(json.dumps(a, sort_keys=True))
            archs.append(a)

    def hw(n: int) -> list[dict[str, Any]]:
        out = [{v.name: base[v.name] for v in hw_vars}]
        while len(out) < n:
            out.append({v.name: v.choices[int(rng.integers(len(v.choices)))] for v in hw_vars})
        return out

    preset = hw(1)[0]
    kinds = {
        "arch": [base | arch(a) | preset for a in archs],
        "config": [base | arch(archs[0]) | h for h in hw(args.static_hw)],
        "joint": [base | arch(a) | h for a in archs for h in hw(args.hw)],
    }
    return kinds


def identity(space: Space, args: argparse.Namespace) -> dict[str, Any]:
    """What a stored row depends on beyond its config: a rerun with other weights or another
    ``--val`` is refused instead of reading rows that measured something else back."""
    return {
        "space": space.describe(),
        "seed": args.seed,
        "weights": weights_digest(space.family),
        "calibration": calibration_inputs(space.family),
        "val": val_images(space.family, args),
    }


def val_images(family: str, args: argparse.Namespace) -> int | None:
    """``--val`` for a labelled family; None for a random-weight one, whose evaluator then
    measures its default few seeded inputs (they feed only fidelity): ``--val`` random 224 px
    inputs through the interpreter cost minutes per architecture and measure nothing."""
    return args.val if has_labels(family) else None


def predictor_scores(
    space: Space,
    rows: list[dict],
    table: dict[str, dict],
    objective: str,
    seed: int,
    splits: int = 1,
) -> dict[str, Any] | None:
    """Tau and MAPE of a predictor trained on a seeded 2/3 of the architectures in ``rows``
    (of the rows, when they share one architecture), scored on the rest: a test architecture
    is never seen in training, or accuracy would be looked up rather than predicted. With
    ``splits`` > 1, the mean over that many seeded splits (seed, seed + 1, ...) and the range
    of their taus: on 15 held-out architectures one split's tau moves by +-0.1."""
    runs = [_split_scores(space, rows, table, objective, s) for s in range(seed, seed + splits)]
    if runs[0] is None:
        return None
    taus = [r["kendall_tau"] for r in runs]
    mean = {
        k: float(np.mean([r[k] for r in runs])) for k in ("mape", "kendall_tau", "spearman_rho")
    }
    return runs[0] | mean | {"splits": splits, "tau_range": [min(taus), max(taus)]}


def _split_scores(
    space: Space, rows: list[dict], table: dict[str, dict], objective: str, seed: int
) -> dict[str, Any] | None:
    obj = OBJECTIVES[objective]
    ok = [c for c in rows if table[config_hash(c)]["error"] is None]
    y = np.array([obj.value(table[config_hash(c)]) for c in ok])
    if len(ok) < 6 or np.ptp(y) == 0:
        return None
    x = space.features(np.array([space.to_indices(c) for c in ok]), obj.summed)
    arch = [json.dumps({k: v for k, v in c.items() if k.startswith(PREFIX)}) for c in ok]
    groups = sorted(set(arch)) if len(set(arch)) > 1 else [str(i) for i in range(len(ok))]
    key = arch if len(set(arch)) > 1 else groups
    order = np.random.default_rng(seed).permutation(len(groups))
    train_groups = {groups[i] for i in order[: 2 * len(groups) // 3]}
    train = np.array([k in train_groups for k in key])
    model = Predictor(log=obj.log, pairs=hierarchy_blocks(space)).fit(x[train], y[train])
    scores = rank_metrics(y[~train], model.predict(x[~train]))
    return {"train": int(train.sum()), "test": int((~train).sum()), "model": model.chosen, **scores}


def accuracy_ceiling(
    evaluator: Evaluator, configs: list[dict], table: dict[str, dict], folder: Path, n: int
) -> tuple[dict[str, float], dict[str, float]]:
    """How well ``n`` validation images can rank the architectures, and each architecture's
    accuracy on the next ``n`` validation images (disjoint, cached in ``folder``; keyed by
    :func:`arch_key`), on which it is scored again. Across architectures the two
    scores' covariance is the variance of the true accuracies, the rest of a score's variance is
    sampling noise (:func:`noise_ceiling`)."""
    from cimc.atomic import write_text_atomic
    from cimc.interpreter import interpret
    from cimc.train.data import load

    path = folder / f"accuracy-second-{n}.json"
    second = json.loads(path.read_text()) if path.is_file() else {}
    s = load("chars")
    if 2 * n > len(s.y_val):
        return {}, {}
    x, labels = s.x_val[n : 2 * n].astype(np.float32), s.y_val[n : 2 * n]
    for i, config in enumerate(configs):
        key = arch_key(config)
        if key not in second:
            graph = evaluator.compressed(config)[0]["graph"]
            name, feed = graph.outputs[0], graph.inputs[0]
            pred = [int(interpret(graph, {feed: x[k : k + 1]})[name].argmax()) for k in range(n)]
            second[key] = float(np.mean(np.array(pred) == labels))
            write_text_atomic(path, json.dumps(second, indent=0))
            log(f"  second {n} images: {i + 1}/{len(configs)} architectures")
    first = np.array([table[config_hash(c)]["accuracy"] for c in configs])
    again = np.array([second[arch_key(c)] for c in configs])
    return noise_ceiling(first, again), second


def noise_ceiling(first: np.ndarray, again: np.ndarray) -> dict[str, float]:
    """From two scores of each item on disjoint samples: their covariance is the true values'
    variance, the rest of a score's variance its noise; a perfect predictor's tau against one
    score is 2/pi asin(sqrt(reliability)) (bivariate normal), and k times the samples divide
    the noise variance by k."""
    from scipy.stats import kendalltau

    true_var = float(np.cov(first, again)[0, 1])
    noise_var = float((first.var(ddof=1) + again.var(ddof=1)) / 2 - true_var)

    def ceiling(k: float) -> float:
        return float(2 / np.pi * np.arcsin(np.sqrt(max(true_var, 0) / (true_var + noise_var / k))))

    return {
        "architectures": len(first),
        "true_sd": float(np.sqrt(max(true_var, 0))),
        "noise_sd": float(np.sqrt(max(noise_var, 0))),
        "tau_two_sets": float(kendalltau(first, again).statistic),
        "ceiling_tau": ceiling(1),
        "ceiling_tau_4x": ceiling(4),
    }


def arch_key(config: dict[str, Any]) -> str:
    return json.dumps(arch_config(config), sort_keys=True)


def by_architecture(configs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """``configs`` in the order that compresses each architecture once: an architecture's
    configs one after another, so its compressed graph is still in the evaluator's (bounded)
    caches for its next hierarchy; with several workers, ``workers`` architectures' first
    configs side by side, then their second ones (a worker starting an architecture's second
    config while another still compresses it would compress it again)."""
    archs: dict[str, list[dict[str, Any]]] = {}
    for c in configs:
        archs.setdefault(arch_key(c), []).append(c)
    groups = list(archs.values())
    out = []
    for start in range(0, len(groups), max(1, workers)):
        batch = groups[start : start + max(1, workers)]
        for k in range(max(len(g) for g in batch)):
            out += [g[k] for g in batch if k < len(g)]
    return out


def pooled(table: dict[str, dict], configs: list[dict], second: dict[str, float]) -> dict:
    """``table`` with each accuracy measured on both image sets (what twice ``--val`` gives)."""
    out = {}
    for c in configs:
        m = table[config_hash(c)]
        both = None if m["accuracy"] is None else (m["accuracy"] + second[arch_key(c)]) / 2
        out[config_hash(c)] = m | {"accuracy": both}
    return out


def fronts(target: Any, family: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The guided loop on arch-only, hardware-only and joint spaces at equal budgets."""
    objectives = tuple(OBJECTIVES[o] for o in default_objectives(family))
    out: dict[str, Any] = {}
    kinds = {"arch": (True, False), "hardware": (False, True), "joint": (True, True)}
    for kind, (a, h) in kinds.items():
        space = make_space(target, family, folder, a, h, args.multiples)
        name = f"loop-{kind}" + (f"-seed{args.loop_seed}" if args.loop_seed != args.seed else "")
        study = Study(folder / name, identity(space, args))
        ev = Evaluator(
            "", space, None, None, str(folder / "cache"), val_images(family, args), args.cache_gb
        )
        settings = Settings(
            objectives,
            args.budget,
            args.population,
            args.loop_seed,
            initial=(space.base_config(),),
        )
        log(f"  {kind}-only search ({args.budget} true evaluations)")
        executor = process_pool(args.workers) if args.workers > 1 else None
        try:
            run_loop(space, ev, study, settings, executor)
        finally:
            if executor is not None:
                executor.shutdown()
        rows = study.rows()
        pts = feasible_points(rows, settings)
        out[kind] = {
            "points": pts.tolist(),
            "configs": [r.config for r in rows if r.feasible],
            "areas": [r.metrics["area_mm2"] for r in rows if r.feasible],
            "rounds": study.rounds(),
        }
    return out


LOSSES = (0.0, 0.01, 0.02)
"""Accuracy given up for the speed-ups reported: none (CiMNet's iso-accuracy), 1 and 2 points
(the validation accuracy's own sampling error is about 1 point at 720 images)."""


def speedups(res: dict[str, Any], baseline: dict[str, Any], objectives: list[str]) -> None:
    """Per search: the fastest point at least as accurate as the largest subnet on the preset
    hierarchy, less each of ``LOSSES`` (the smallest area among equally fast ones); its speed-up
    over that baseline and its area."""
    acc0, cyc0 = baseline.get("accuracy"), baseline["cycles"]
    all_pts = np.concatenate([np.array(f["points"]) for f in res.values() if f["points"]])
    ref = reference_point(all_pts)
    for f in res.values():
        pts = np.array(f["points"]).reshape(-1, len(objectives))
        areas = np.array(f["areas"])
        f["hypervolume"] = hypervolume(pts, ref)
        if acc0 is None or "accuracy" not in objectives:
            continue
        ia, ic = objectives.index("accuracy"), objectives.index("cycles")
        f["speedups"] = {}
        for loss in LOSSES:
            good = np.flatnonzero(-pts[:, ia] >= acc0 - loss - 1e-9)  # accuracy stored negated
            fastest = good[np.lexsort((areas[good], pts[good, ic]))[0]] if len(good) else None
            f["speedups"][f"{loss:g}"] = (
                None
                if fastest is None
                else {"speedup": float(cyc0 / pts[fastest, ic]), "area": float(areas[fastest])}
            )
        f["best_accuracy"] = float((-pts[:, ia]).max()) if len(pts) else None


def chosen_table(space: Space, configs: list[dict], points: np.ndarray) -> dict[str, dict]:
    """How often each hierarchy multiple appears on the joint front (CiMNet's table)."""
    base = space.target
    front = [c for c, keep in zip(configs, pareto_mask(points)) if keep]
    out: dict[str, dict] = {}
    for name in HIERARCHY:
        if name not in space.names:
            continue
        counts: dict[str, int] = {}
        for c in front:
            key = f"{c[name] / getattr(base, name):g}x"
            counts[key] = counts.get(key, 0) + 1
        out[name] = dict(sorted(counts.items()))
    return out


def bench_family(args: argparse.Namespace, family: str) -> dict[str, Any]:
    target = load_target(args.target)
    folder = Path(args.workdir) / f"{family}-{args.target}"
    folder.mkdir(parents=True, exist_ok=True)
    space = make_space(target, family, folder, True, True, args.multiples)
    study = Study(folder / "table", identity(space, args))
    evaluator = Evaluator(
        "", space, None, None, str(folder / "cache"), val_images(family, args), args.cache_gb
    )
    kinds = sample_configs(space, args)
    unique = {config_hash(c): c for k in kinds.values() for c in k}
    log(f"{family}: {len(unique)} configs ({args.archs} architectures)")
    todo = by_architecture(list(unique.values()), args.workers)
    table, _ = evaluate_missing(todo, evaluator, study, args.workers)
    objectives = ["cycles"] + (["accuracy"] if has_labels(family) else [])
    res: dict[str, Any] = {"family": family, "predictors": {}}
    for kind in KINDS:
        for objective in objectives:
            res["predictors"][f"{kind}/{objective}"] = predictor_scores(
                space, kinds[kind], table, objective, args.seed, args.splits
            )
    if args.ceiling and has_labels(family):
        res["ceiling"], second = accuracy_ceiling(evaluator, kinds["arch"], table, folder, args.val)
        for kind in ("arch", "joint") if second else ():
            res["predictors"][f"{kind}/accuracy, {2 * args.val} images"] = predictor_scores(
                space,
                kinds[kind],
                pooled(table, kinds[kind], second),
                "accuracy",
                args.seed,
                args.splits,
            )
    res["baseline"] = table[config_hash(kinds["arch"][0])]
    res["seconds"] = [m["seconds"] for m in table.values()]
    if not args.quick:
        res["fronts"] = fronts(target, family, folder, args)
        names = list(default_objectives(family))
        speedups(res["fronts"], res["baseline"], names)
        joint = res["fronts"]["joint"]
        res["chosen"] = chosen_table(space, joint["configs"], np.array(joint["points"]))
    return res


def print_family(res: dict[str, Any]) -> None:
    fam = res["family"]
    short = fam.removeprefix("elastic-").removesuffix("-chars")
    print(f"\n{fam}: Kendall tau / MAPE on held-out true evaluations (train rows in brackets)")
    print("| objective | elastic arch, static config | static arch, elastic config | both |")
    print("|---|---:|---:|---:|")
    for objective in dict.fromkeys(k.split("/")[1] for k in res["predictors"]):
        cells = []
        for kind in KINDS:
            s = res["predictors"].get(f"{kind}/{objective}")
            cells.append("–" if s is None else _cell(s))
        if any(c != "–" for c in cells):
            print(f"| {objective} | " + " | ".join(cells) + " |")
    if res.get("ceiling"):
        c = res["ceiling"]
        print(
            f"accuracy noise ceiling ({c['architectures']} architectures scored again on as many "
            f"other validation images): true sd {100 * c['true_sd']:.2f} pt, noise sd "
            f"{100 * c['noise_sd']:.2f} pt, tau of the two scores {c['tau_two_sets']:.2f}; a "
            f"perfect predictor's tau {c['ceiling_tau']:.2f} ({c['ceiling_tau_4x']:.2f} with 4x "
            "the images)"
        )
    if short in CIMNET_TAU:
        print("| CiMNet cycles tau | " + " | ".join(f"{t:.2f}" for t in CIMNET_TAU[short]) + " |")
    secs = np.array(res["seconds"])
    print(f"true evaluations: median {np.median(secs):.2f} s (first of an architecture: export,")
    print(f"compression, validation; max {secs.max():.1f} s)")
    if "fronts" in res:
        base = res["baseline"]
        print(
            f"baseline (largest subnet, preset hierarchy): {base['cycles']:,} cycles, "
            f"{base['area_mm2']:.1f} mm2",
            end="",
        )
        print(f", accuracy {base['accuracy']:.4f}" if base.get("accuracy") is not None else "")
        head = " | ".join(f"speed-up, -{100 * loss:g} pt (area mm2)" for loss in LOSSES)
        print(f"| search | feasible points | best accuracy | hypervolume | {head} |")
        print("|---|---:|---:|---:|" + "---:|" * len(LOSSES))
        for kind, f in res["fronts"].items():
            cells = [
                "none" if c is None else f"{c['speedup']:.2f}x ({c['area']:.0f})"
                for c in f.get("speedups", {}).values()
            ]
            print(
                f"| {kind} | {len(f['points'])} | {f['best_accuracy']:.4f} | "
                f"{f['hypervolume']:.4g} | " + " | ".join(cells) + " |"
            )
        print("chosen hierarchy multiples on the joint front:", json.dumps(res["chosen"]))


def _cell(s: dict[str, Any]) -> str:
    """tau / MAPE (train rows); with several splits the mean tau, then their range."""
    spread = "" if s.get("splits", 1) == 1 else " ({:.2f}-{:.2f})".format(*s["tau_range"])
    return f"{s['kendall_tau']:.2f}{spread} / {s['mape']:.1f}% ({s['train']})"


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Per family: accuracy vs cycles of every true evaluation of the three searches with their
    fronts and the baseline; beside it, the predictors' held-out tau against CiMNet's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cimc.atomic import atomic_path

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4.2 * len(results)), squeeze=False)
    for (front_ax, tau_ax), res in zip(axes, results):
        fam = res["family"]
        for kind, colour in zip(res.get("fronts", {}), ("tab:blue", "tab:orange", "tab:green")):
            pts = np.array(res["fronts"][kind]["points"]).reshape(-1, 2)
            if not len(pts):
                continue
            acc, cyc = -pts[:, 0], pts[:, 1]  # objectives (accuracy negated, cycles)
            front_ax.scatter(cyc, 100 * acc, s=8, alpha=0.35, color=colour)
            keep = pareto_mask(pts)
            order = np.argsort(cyc[keep])
            front_ax.step(
                cyc[keep][order],
                100 * acc[keep][order],
                where="post",
                marker="o",
                ms=4,
                color=colour,
                label=kind,
            )
        base = res["baseline"]
        if base.get("accuracy") is not None and "fronts" in res:
            front_ax.scatter(
                [base["cycles"]],
                [100 * base["accuracy"]],
                marker="*",
                s=160,
                color="k",
                label="largest subnet, preset hierarchy",
            )
        front_ax.set_xscale("log")
        front_ax.xaxis.set_minor_formatter(  # a front spans less than a decade: label 1, 2, 5
            matplotlib.ticker.FuncFormatter(
                lambda v, _: f"{v:,.0f}" if f"{v:.0e}"[0] in "125" else ""
            )
        )
        front_ax.set_xlabel("cycles"), front_ax.set_ylabel("validation accuracy %")
        front_ax.set_title(f"{fam}: searches at equal true evaluations", fontsize=9)
        front_ax.legend(fontsize=7)
        short = fam.removeprefix("elastic-").removesuffix("-chars")
        width = 0.27
        for j, objective in enumerate(("cycles", "accuracy")):
            taus = [(res["predictors"].get(f"{k}/{objective}") or {}) for k in KINDS]
            tau_ax.bar(
                np.arange(3) + (j - 1) * width,
                [t.get("kendall_tau", np.nan) for t in taus],
                width,
                label=f"cimc {objective}",
            )
        if short in CIMNET_TAU:
            tau_ax.bar(np.arange(3) + width, CIMNET_TAU[short], width, label="CiMNet cycles")
        tau_ax.set_xticks(range(3), ["elastic arch", "elastic config", "both"])
        tau_ax.set_ylabel("Kendall tau (held-out)"), tau_ax.set_ylim(-0.2, 1)
        tau_ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        tau_ax.legend(fontsize=7)
    with atomic_path(Path(path)) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--families", default=None, help="comma-separated (default: the -chars ones)")
    ap.add_argument("--target", default="int8-sram")
    ap.add_argument("--archs", type=int, default=None, help="architectures (40; --quick 30)")
    ap.add_argument("--hw", type=int, default=None, help="hierarchy configs per arch (6; 4)")
    ap.add_argument("--static-hw", type=int, default=60, help="configs of the largest arch")
    ap.add_argument("--budget", type=int, default=48, help="true evaluations per search")
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--splits",
        type=int,
        default=1,
        help="seeded train/test splits of the architectures the predictor scores average (1)",
    )
    ap.add_argument(
        "--loop-seed",
        type=int,
        default=None,
        help="the searches' seed (default --seed): other loop seeds on the same table",
    )
    ap.add_argument(
        "--multiples",
        default="0.25,0.5,1,2",
        help="hierarchy values searched, as multiples of the preset's (1 must be one: the "
        "baseline runs the preset)",
    )
    ap.add_argument(
        "--val", type=int, default=None, help="validation images per architecture (720; 360)"
    )
    ap.add_argument("--plot", default=None, help="PNG of the fronts and predictor scatter")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--workdir", default=".cimc-bench/cimnet")
    ap.add_argument("--cache-gb", type=float, default=CACHE_GB, help="each study's cache limit")
    ap.add_argument("--quick", action="store_true", help="elastic-resnet-chars, predictors only")
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="score each architecture again on the next --val validation images: how well "
        "--val images can rank them (the accuracy predictor's noise ceiling)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    default = "elastic-resnet-chars" if args.quick else "elastic-resnet-chars,elastic-mbv3-chars"
    args.families = (args.families or default + ("" if args.quick else ",elastic-vit-chars")).split(
        ","
    )
    args.archs = args.archs or (30 if args.quick else 40)
    args.hw = args.hw or (4 if args.quick else 6)
    args.val = args.val or (360 if args.quick else 720)
    args.multiples = tuple(float(m) for m in args.multiples.split(","))
    args.loop_seed = args.seed if args.loop_seed is None else args.loop_seed
    if args.splits < 1:
        ap.error("--splits must be at least 1")
    if 1.0 not in args.multiples:
        ap.error("--multiples must include 1 (the baseline is the preset's hierarchy)")

    import numba
    import torch
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(1)
    threadpool_limits(1)
    torch.set_num_threads(1)
    load = os.getloadavg()
    start = time.perf_counter()
    results = [bench_family(args, f) for f in args.families]
    print(
        f"\nCiMNet benchmark on {args.target}: {args.archs} architectures x {args.hw} hierarchy "
        f"configs (+{args.static_hw} of the largest), seed {args.seed}; load average "
        f"{load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
        f"{time.perf_counter() - start:.0f} s"
    )
    for res in results:
        print_family(res)
    if args.json:
        from cimc.atomic import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(results, indent=1, default=float))
    if args.plot:
        plot(results, args.plot)
    taus = [
        s["kendall_tau"]
        for r in results
        for k, s in r["predictors"].items()
        if k in ("joint/cycles", "joint/accuracy") and s is not None
    ]
    print(f"joint_tau={np.mean(taus):.3f}")


if __name__ == "__main__":
    main()
