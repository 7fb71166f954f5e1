"""Search benchmark: the predictor-guided loop against random search and NSGA-II, on a hardware
space small enough to evaluate exhaustively.

    python benchmarks/search.py --quick                  # resnet18 at 64 px, 1,024 configs, 3 seeds
    python benchmarks/search.py                          # resnet18 + mobilenetv3_large at 64 px
    python benchmarks/search.py --size 224               # the published setting (slow here)
    python benchmarks/search.py --models resnet18 --budgets 50,100 --seeds 2 --json search.json

For each zoo model (seeded weights, exported at --size) the script writes a hardware-only space
TOML (the eight CiMNet hierarchy parameters: four at 1/8, 1/4, 1/2, 1 x the preset's value and
four at 1/2, 1 x, 4,096 configurations; --quick keeps DRAM_bw and L2_bw at the preset's value:
1,024) and evaluates every config truly (``cimc.search.Evaluator``: the compression runs once and
is cached, each config re-runs tile, lower and the timing model). The results are rows of a
``cimc.search.Study`` (SQLite) in --workdir, so a rerun evaluates nothing again. The feasible
points of all configs give the true front and its hypervolume (objectives --objectives, default
cycles and chip area: the hierarchy cannot change the numerics, so fidelity is constant here;
reference point 10% beyond the worst feasible value of each objective, ``reference_point``).

Then, for each seed, three methods spend true evaluations (looked up in the exhaustive table,
so each costs nothing; a config evaluated twice counts once):

  random       distinct configs in a seeded random order
  NSGA-II      pymoo NSGA-II on true evaluations (population --population, DyNAS-T's operators)
  guided       ``cimc.search`` loop: seeded random population, then per round predictors refit
               on all true evaluations, NSGA-II on the predictors, the best new candidates
               evaluated truly (``run_loop``, population --population)

Each method runs once per seed to the largest budget; a smaller budget is the prefix of its
evaluation order. For NSGA-II and the guided loop that prefix is exactly what a run with the
smaller budget does (rounds depend only on the rows before them and on the seed; tested); for
random search it is a uniform random sample of that size. Reported per budget: hypervolume
of the feasible points evaluated as a fraction of the exhaustive front's (mean, standard
deviation and minimum over seeds), and for the guided loop the predictors' Kendall tau and
MAPE: refit on that budget's true evaluations, scored on every feasible config not yet evaluated.

Speed: hardware evaluations per second with the compression cached (--speed-samples configs
timed after a warm-up), beside one full ``cimc.compile`` + ``simulate`` of the model; one
hardware evaluation runs under cProfile and the functions with the most cumulative time are
printed, to show where an evaluation spends its time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import cimc
from cimc.models import ZOO, export_onnx
from cimc.search import Evaluator, Predictor, Space, Study, hypervolume, rank_metrics
from cimc.search.evaluate import Metrics, load_data
from cimc.search.executor import process_pool, run_all
from cimc.search.loop import Settings, nsga2_algorithm, reference_point, run_loop
from cimc.search.objectives import OBJECTIVES, Constraints, Objective, minimised
from cimc.search.space import HIERARCHY, declared_variables
from cimc.search.study import config_hash

FULL = ("MA_num_child", "MA_mem_size", "MA_comp_per_core", "L1_num_child")
"""Hierarchy parameters searched at all four multiples; the bandwidths get the top two."""
QUICK_FIXED = ("DRAM_bw", "L2_bw")
"""Left at the preset's value by --quick (4^4 x 2^2 = 1,024 configurations)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def space_toml(target: Any, quick: bool) -> str:
    """The hardware-only space: every other variable dropped, the hierarchy restricted."""
    declared = declared_variables(target)
    fixed = QUICK_FIXED if quick else ()
    drop = [n for n in declared if n not in HIERARCHY or n in fixed]
    lines = [f"drop = {json.dumps(sorted(drop))}", "", "[choices]"]
    for name in HIERARCHY:
        if name in fixed:
            continue
        choices = declared[name].choices if name in FULL else declared[name].choices[-2:]
        lines.append(f"{name} = {json.dumps(list(choices))}")
    return "\n".join(lines) + "\n"


def all_configs(space: Space) -> list[dict[str, Any]]:
    """Every config of the space, in index order."""
    grids = np.meshgrid(*[np.arange(len(v.choices)) for v in space.variables], indexing="ij")
    return [space.from_indices(idx) for idx in np.stack([g.ravel() for g in grids], axis=1)]


def exhaustive(
    space: Space, evaluator: Evaluator, study: Study, workers: int
) -> tuple[dict[str, dict], dict[str, float]]:
    """Every config of the space evaluated (see :func:`evaluate_missing`)."""
    return evaluate_missing(all_configs(space), evaluator, study, workers)


def evaluate_missing(
    configs: list[dict[str, Any]], evaluator: Evaluator, study: Study, workers: int
) -> tuple[dict[str, dict], dict[str, float]]:
    """Evaluate the configs not yet in the study; the table hash -> metrics of all rows, and
    the rate: the first config runs alone (compression, Numba), the rest on ``workers`` are
    timed."""
    done = {r.hash for r in study.rows()}
    todo = [c for c in configs if config_hash(c) not in done]
    log(f"  {len(done):,} stored, {len(todo):,} to evaluate")
    if todo:
        study.add(_row(todo[0], evaluator(todo[0])))
        todo = todo[1:]
    executor = process_pool(workers) if workers > 1 and todo else None
    start = time.perf_counter()
    try:
        for k, (config, metrics) in enumerate(run_all(executor, evaluator, todo), 1):
            study.add(_row(config, metrics))
            if k % 256 == 0:
                rate = k / (time.perf_counter() - start)
                log(f"  {k:,}/{len(todo):,} ({rate:.1f}/s)")
    finally:
        if executor is not None:
            executor.shutdown()
    wall = time.perf_counter() - start
    rate = {"timed": len(todo), "wall_s": wall, "per_s": len(todo) / wall if todo else 0.0}
    return {r.hash: r.metrics for r in study.rows()}, rate


def _row(config: dict[str, Any], metrics: Metrics) -> Any:
    from cimc.search.study import Row

    return Row(config_hash(config), 0, config, metrics.to_dict(), None, metrics.seconds)


class Lookup:
    """A true evaluation read from the exhaustive table."""

    def __init__(self, table: dict[str, dict]):
        self.table = table

    def __call__(self, config: dict[str, Any]) -> Metrics:
        return Metrics(**self.table[config_hash(config)])


def points(table: dict[str, dict], hashes: list[str], objectives: list[Objective]) -> np.ndarray:
    """The minimised objective values of the feasible configs among ``hashes``."""
    ok = [table[h] for h in hashes if table[h]["error"] is None]
    return np.array([minimised(m, objectives) for m in ok]).reshape(-1, len(objectives))


def random_order(space: Space, seed: int, budget: int) -> list[str]:
    """``budget`` distinct configs in a seeded random order."""
    rng = np.random.default_rng([seed, 1])
    picks = rng.choice(space.size, size=min(budget, space.size), replace=False)
    highs = [len(v.choices) for v in space.variables]
    return [config_hash(space.from_indices(np.unravel_index(p, highs))) for p in picks]


def nsga2_order(
    space: Space,
    table: dict[str, dict],
    objectives: list[Objective],
    budget: int,
    population: int,
    seed: int,
) -> list[str]:
    """Distinct configs in the order pymoo's NSGA-II evaluates them on true values."""
    from pymoo.core.evaluator import Evaluator as PymooEvaluator
    from pymoo.core.problem import Problem
    from pymoo.problems.static import StaticProblem

    highs = np.array([len(v.choices) - 1 for v in space.variables])
    feasible = points(table, list(table), objectives)
    worst = feasible.max(axis=0)  # what an infeasible config scores; its constraint rules it out
    problem = Problem(
        n_var=len(highs), n_obj=len(objectives), n_ieq_constr=1, xl=0, xu=highs, vtype=int
    )
    algorithm = nsga2_algorithm(population)  # the loop's operators, on true values
    algorithm.setup(problem, seed=seed, termination=("n_gen", 10**6))
    order: list[str] = []
    seen: set[str] = set()
    for _ in range(100 * budget):  # a converged population proposes nothing new: give up
        if len(order) >= budget:
            break
        pop = algorithm.ask()
        xs = np.clip(np.round(pop.get("X")), 0, highs).astype(np.int64)
        f, g = [], []
        for x in xs:
            h = config_hash(space.from_indices(x))
            if h not in seen and len(order) < budget:
                seen.add(h)
                order.append(h)
            m = table[h]
            f.append(worst if m["error"] is not None else minimised(m, objectives))
            g.append([1.0 if m["error"] is not None else -1.0])
        PymooEvaluator().eval(StaticProblem(problem, F=np.array(f), G=np.array(g)), pop)
        algorithm.tell(infills=pop)
    return order


def guided_order(
    space: Space,
    table: dict[str, dict],
    objectives: list[Objective],
    budget: int,
    population: int,
    seed: int,
) -> list[str]:
    """Configs in the order the ``cimc.search`` loop evaluates them."""
    settings = Settings(tuple(objectives), budget, population, seed, Constraints())
    with tempfile.TemporaryDirectory() as tmp:
        study = Study(tmp, {"benchmark": "search", "space": space.describe()})
        run_loop(space, Lookup(table), study, settings)
        hashes = [r.hash for r in study.rows()]
        study.close()
    return hashes


def predictor_quality(
    space: Space, table: dict[str, dict], hashes: list[str], objectives: list[Objective]
) -> dict[str, dict[str, float]]:
    """Predictors fitted on ``hashes`` (feasible ones), scored on every other feasible config."""
    configs = {config_hash(c): c for c in all_configs(space)}
    train = [h for h in hashes if table[h]["error"] is None]
    test = [h for h in configs if h not in set(hashes) and table[h]["error"] is None]

    def enc(hs: list[str], o: Objective) -> np.ndarray:
        return space.features(np.array([space.to_indices(configs[h]) for h in hs]), o.summed)

    out = {}
    for o in objectives:
        model = Predictor(log=o.log).fit(enc(train, o), [table[h][o.metric] for h in train])
        true = np.array([table[h][o.metric] for h in test], float)
        out[o.name] = rank_metrics(true, model.predict(enc(test, o)))
    return out


def summarise(fractions: list[float]) -> dict[str, float]:
    a = np.array(fractions)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min())}


def speed(
    model: Path, space: Space, evaluator: Evaluator, samples: int, full: bool
) -> dict[str, Any]:
    """Hardware evaluations per second (compression cached) and one full compile + simulate."""
    from cimc.targets.simulator import simulate

    from cimc.frontend import import_onnx

    rng = np.random.default_rng(12345)
    configs = [space.from_indices(i) for i in space.sample(samples + 1, rng)]
    evaluator(configs[0])  # warm: compression, schedule, Numba kernels
    start = time.perf_counter()
    results = [evaluator(c) for c in configs[1:]]
    wall = time.perf_counter() - start
    out: dict[str, Any] = {
        "samples": samples,
        "feasible": sum(m.error is None for m in results),
        "evals_per_s": samples / wall,
        "eval_ms": 1e3 * wall / samples,
    }
    if full:
        data = load_data(import_onnx(str(model)), None)
        t = time.perf_counter()
        program = cimc.compile(str(model), target=space.target, calibration=data.calibration)
        out["full_compile_s"] = time.perf_counter() - t
        t = time.perf_counter()
        simulate(program, data.evaluation[0])
        out["full_simulate_s"] = time.perf_counter() - t
    return out


def profile_one(evaluator: Evaluator, config: dict[str, Any], top: int) -> list[dict[str, Any]]:
    """cProfile of one hardware evaluation: the cimc functions with the most cumulative time."""
    evaluator(config)  # warm
    prof = cProfile.Profile()
    prof.enable()
    evaluator(config)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = stats.total_tt or 1e-12
    root = str(Path(cimc.__file__).resolve().parent.parent)
    rows = []
    for (path, line, func), (_, ncalls, own, cum, _) in stats.stats.items():
        if path.startswith(root) and "/.venv/" not in path:
            where = f"{path[len(root) + 1 :]}:{line}({func})"
            rows.append({"function": where, "calls": ncalls, "own_s": own, "cum_s": cum})
    rows.sort(key=lambda r: -r["cum_s"])
    return [r | {"cum_share": r["cum_s"] / total} for r in rows[:top]]


def bench_model(args: argparse.Namespace, name: str, objectives: list[Objective]) -> dict:
    from cimc.targets.params import load_target

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"{name}-{args.size}.onnx"
    if not model.is_file():
        log(f"export {name} at {args.size} ...")
        export_onnx(name, model, image_size=args.size)
    target = load_target(args.target)
    space_file = work / f"space-{'quick' if args.quick else 'full'}.toml"
    space_file.write_text(space_toml(target, args.quick))
    space = Space.from_target(target, space_file)
    folder = work / f"{name}-{args.size}-{args.target}-{space.digest()[:10]}"
    identity = {"model_sha256": _sha256(model), "space": space.describe()}
    study = Study(folder, identity)
    evaluator = Evaluator(str(model), space, None, None, str(folder / "cache"))
    log(f"{name}: space of {space.size:,} configs ({space_file}), study {folder}")
    start = time.perf_counter()
    table, rate = exhaustive(space, evaluator, study, args.workers)
    res: dict[str, Any] = {
        "model": name,
        "size": args.size,
        "space_size": space.size,
        "space_toml": space_file.read_text(),
        "study": str(folder),
        "exhaustive_wall_s": time.perf_counter() - start,
        "exhaustive_rate": rate | {"workers": args.workers},
        "stored_eval_s_total": float(sum(m["seconds"] for m in table.values())),
    }
    feasible = points(table, list(table), objectives)
    res["feasible"] = len(feasible)
    ref = reference_point(feasible)
    hv_true = hypervolume(feasible, ref)
    res["reference_point"] = ref.tolist()
    res["hv_exhaustive"] = hv_true

    budgets = sorted(b for b in args.budgets if b <= space.size)
    top = budgets[-1]
    orders: dict[str, list[list[str]]] = {"random": [], "nsga2": [], "guided": []}
    for seed in range(args.seeds):
        log(f"  seed {seed}: random, NSGA-II, guided loop to {top} evaluations ...")
        orders["random"].append(random_order(space, seed, top))
        orders["nsga2"].append(nsga2_order(space, table, objectives, top, args.population, seed))
        t = time.perf_counter()
        orders["guided"].append(guided_order(space, table, objectives, top, args.population, seed))
        log(f"    guided loop: {time.perf_counter() - t:.1f} s")
    rows = []
    for b in budgets:
        row: dict[str, Any] = {"budget": b, "fraction_of_space": b / space.size}
        for method, runs in orders.items():
            hv = [hypervolume(points(table, o[:b], objectives), ref) / hv_true for o in runs]
            row[method] = summarise(hv)
        quality = [predictor_quality(space, table, o[:b], objectives) for o in orders["guided"]]
        row["predictors"] = {
            o.name: {
                k: float(np.nanmean([q[o.name][k] for q in quality]))
                for k in ("kendall_tau", "mape")
            }
            for o in objectives
        }
        rows.append(row)
    res["budgets"] = rows

    log("  speed and profile ...")
    res["speed"] = speed(model, space, evaluator, args.speed_samples, not args.no_full)
    res["profile"] = profile_one(evaluator, space.from_indices(space.sample(1, rng0())[0]), 15)
    study.close()
    return res


def rng0() -> np.random.Generator:
    return np.random.default_rng(7)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def print_model(res: dict[str, Any], objectives: list[Objective]) -> None:
    sp = res["speed"]
    print(
        f"\n## {res['model']} at {res['size']} px: {res['space_size']:,} hardware configs, "
        f"{res['feasible']:,} feasible; objectives {', '.join(o.name for o in objectives)}"
    )
    print(
        f"exhaustive front: hypervolume {res['hv_exhaustive']:.6g} (reference "
        f"{[f'{v:.4g}' for v in res['reference_point']]}); {res['stored_eval_s_total']:.0f} s "
        f"of stored evaluation time ({res['exhaustive_wall_s']:.0f} s this run)"
    )
    rate = res["exhaustive_rate"]
    if rate["timed"]:
        print(
            f"exhaustive pass: {rate['timed']:,} evaluations in {rate['wall_s']:.1f} s on "
            f"{rate['workers']} worker(s) = {rate['per_s']:.1f} evaluations per second"
        )
    full = ""
    if "full_compile_s" in sp:
        one = sp["full_compile_s"] + sp["full_simulate_s"]
        full = (
            f"; one full compile + simulate: {one:.2f} s ({sp['full_compile_s']:.2f} + "
            f"{sp['full_simulate_s']:.2f}), {one * sp['evals_per_s']:,.0f}x one evaluation"
        )
    print(
        f"hardware evaluations, compression cached: {sp['evals_per_s']:.1f}/s "
        f"({sp['eval_ms']:.0f} ms each, {sp['samples']} configs, {sp['feasible']} feasible){full}\n"
    )
    names = [o.name for o in objectives]
    head = "| budget | % of space | random | NSGA-II (true) | guided loop |"
    head += "".join(f" tau {n} | MAPE {n} |" for n in names)
    print(head)
    print("|" + "---:|" * (5 + 2 * len(names)))
    for r in res["budgets"]:
        cells = [
            f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f} (min {r[m]['min']:.4f})"
            for m in ("random", "nsga2", "guided")
        ]
        q = "".join(
            f" {r['predictors'][n]['kendall_tau']:.3f} | {r['predictors'][n]['mape']:.1f}% |"
            for n in names
        )
        print(
            f"| {r['budget']} | {100 * r['fraction_of_space']:.1f}% | "
            + " | ".join(cells)
            + " |"
            + q
        )
    print("\nwhere one hardware evaluation spends its time (cProfile, cumulative, cimc code):")
    print(f"| {'function':<62} | {'calls':>6} | {'cum ms':>7} | {'own ms':>7} | {'cum %':>6} |")
    print(f"|{'-' * 64}|{'-' * 7}:|{'-' * 8}:|{'-' * 8}:|{'-' * 7}:|")
    for p in res["profile"]:
        print(
            f"| {p['function'][-62:]:<62} | {p['calls']:>6} | {1e3 * p['cum_s']:>7.1f} | "
            f"{1e3 * p['own_s']:>7.1f} | {100 * p['cum_share']:>5.1f}% |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default=None, help="comma-separated zoo models")
    ap.add_argument("--size", type=int, default=64, help="image size (default 64; 224 published)")
    ap.add_argument("--target", default="cimpool-sram")
    ap.add_argument("--budgets", default=None, help="true-evaluation budgets (50,100,200,400)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (5)")
    ap.add_argument("--population", type=int, default=None, help="loop / NSGA-II population (20)")
    ap.add_argument("--objectives", default="cycles,area", help=f"two of {', '.join(OBJECTIVES)}")
    ap.add_argument("--workers", type=int, default=1, help="processes for the exhaustive pass")
    ap.add_argument("--threads", type=int, default=1, help="pin BLAS/Numba threads (1)")
    ap.add_argument("--speed-samples", type=int, default=40, help="configs timed for speed")
    ap.add_argument("--no-full", action="store_true", help="skip the full compile + simulate")
    ap.add_argument("--workdir", default=".cimc-bench/search", help="models, spaces, studies")
    ap.add_argument("--quick", action="store_true", help="resnet18, 1,024 configs, 3 seeds")
    ap.add_argument("--json", default=None, help="write the measurements to this file")
    ap.add_argument("--plot", default=None, help="PNG: hypervolume vs budget per model")
    ap.add_argument("--from-json", default=None, help="plot a saved --json run, run nothing")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())["models"]
        plot_results(saved, Path(args.plot or Path(args.from_json).with_suffix(".png")))
        return
    quick = args.quick
    args.models = (args.models or ("resnet18" if quick else "resnet18,mobilenetv3_large")).split(
        ","
    )
    args.budgets = [
        int(b) for b in (args.budgets or ("20,50,100" if quick else "50,100,200,400")).split(",")
    ]
    args.seeds = args.seeds or (3 if quick else 5)
    args.population = args.population or (10 if quick else 20)
    unknown = [m for m in args.models if m not in ZOO]
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {', '.join(ZOO)}")
    objectives = [OBJECTIVES[n] for n in args.objectives.split(",")]

    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    load = os.getloadavg()
    results = [bench_model(args, name, objectives) for name in args.models]
    print(
        f"\ncimc search benchmark: target {args.target}, budgets {args.budgets}, {args.seeds} "
        f"seeds, population {args.population}; {args.threads} BLAS/Numba thread(s), load "
        f"average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end ({os.cpu_count()} CPUs)"
    )
    print("hypervolume as a fraction of the exhaustive front's: mean ± std over seeds (min)")
    for res in results:
        print_model(res, objectives)
    if args.json:
        from cimc.atomic import write_text_atomic

        write_text_atomic(
            Path(args.json),
            json.dumps({"args": vars(args), "models": results}, indent=1, default=float),
        )
        log(f"wrote {args.json}")
    if args.plot:
        plot_results(results, Path(args.plot))


METHODS = {"random": "random", "nsga2": "NSGA-II (true evals)", "guided": "predictor-guided"}


def plot_results(results: list[dict[str, Any]], path: Path) -> None:
    """Hypervolume fraction (mean, std over seeds; worst seed dotted) vs budget, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cimc.atomic import atomic_path

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, res in zip(axes[0], results):
        budgets = [b["budget"] for b in res["budgets"]]
        for key, label in METHODS.items():
            mean = np.array([b[key]["mean"] for b in res["budgets"]])
            std = np.array([b[key]["std"] for b in res["budgets"]])
            (line,) = ax.plot(budgets, mean, marker="o", label=label)
            ax.fill_between(budgets, mean - std, np.minimum(mean + std, 1), alpha=0.15)
            worst = [b[key]["min"] for b in res["budgets"]]
            ax.plot(budgets, worst, ls=":", color=line.get_color())
        ax.axhline(0.98, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel(f"true evaluations (of {res['space_size']:,} configs)")
        ax.set_ylabel("hypervolume / exhaustive front's")
        ax.set_title(f"{res['model']} at {res['size']} px")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
