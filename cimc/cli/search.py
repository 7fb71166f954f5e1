"""``cimc search``: joint search of pass options and hardware parameters (predictor-guided
NSGA-II), stored in a SQLite study; ``cimc search show STUDY`` prints its Pareto table."""

from __future__ import annotations

import argparse
from concurrent.futures import Executor
from typing import Any

from ..errors import CimcError, OptionError
from ..search.cache_limit import CACHE_GB
from .args import cosine, count, parse_input_shapes, positive_float


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="joint search of pass options and hardware (or: search show STUDY)",
        description="Predictor-guided NSGA-II over pass options x target parameters. "
        "'cimc search show STUDY' prints a study's Pareto table.",
    )
    p.add_argument("model", nargs="*", metavar="MODEL.onnx", help="the model, or: show STUDY")
    p.add_argument(
        "--family",
        help="search an elastic family's architecture too, instead of a model "
        "(elastic-resnet-chars, elastic-mbv3-chars, elastic-vit-chars; ImageNet-scale "
        "elastic-resnet, elastic-mbv3, elastic-vit: hardware objectives only)",
    )
    p.add_argument("--target", default="cimpool-sram", help="preset or TOML file (the base)")
    p.add_argument("--space", help="TOML file restricting / extending the space")
    p.add_argument("--show-space", action="store_true", help="print the space and exit")
    p.add_argument(
        "--objectives",
        help="two or three, comma-separated (default fidelity,cycles; with --family "
        "accuracy,cycles, or cycles,energy at ImageNet scale)",
    )
    p.add_argument("--budget", type=int, default=100, help="true evaluations in all")
    p.add_argument("--population", type=int, default=20, help="true evaluations per round")
    p.add_argument("--data", help=".npz of input samples named after the inputs (+ labels)")
    p.add_argument("--input-shape", action="append", help="NAME=D0,D1,... (repeatable)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=count, metavar="N", default=0, help="worker processes (default 0: cores)"
    )
    where.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="evaluate on this Dask scheduler's workers"
    )
    where.add_argument(
        "--dask-local", type=int, metavar="N", help="evaluate on a local Dask cluster of N workers"
    )
    p.add_argument(
        "--eval-timeout",
        type=float,
        metavar="S",
        help="with Dask: an evaluation running longer is cancelled and recorded as failed",
    )
    p.add_argument("--study", default="cimc-study", help="study folder (resumed if it exists)")
    p.add_argument(
        "--cache-gb",
        type=float,
        default=CACHE_GB,
        help=f"size limit of the study's cache of subnets and compressed graphs ({CACHE_GB:g})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-area", type=positive_float, help="constraint: chip area in mm^2")
    p.add_argument("--min-fidelity", type=cosine, help="constraint: output cosine")
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from .. import search
    from ..report.tables import console
    from ..search.report import print_pareto, write_report
    from ..targets.params import load_target

    if args.model[:1] == ["show"]:
        if len(args.model) != 2:
            raise CimcError("usage: cimc search show STUDY")
        study = search.Study(args.model[1])
        print_pareto(study)
        return 0
    if len(args.model) != (0 if args.family else 1):
        raise CimcError(f"cimc search takes one model or --family, got {args.model}")
    target = load_target(args.target)
    space = search.Space.from_target(target, args.space, args.family)
    if not space.searched_mask().any() and not args.show_space:
        raise CimcError(
            "the search space has no variable with two or more choices: nothing to search; "
            "keep some in the space file (cimc search --show-space lists them)"
        )
    out = console()
    if args.show_space:
        for v in space.variables:
            out.print(f"{v.name:18s} {list(v.choices)}  <- {', '.join(v.members)}")
        out.print(f"{len(space.variables)} variables, {space.size:,} configurations")
        return 0
    budget = args.budget

    def progress(info: dict[str, Any]) -> None:
        best = ", ".join(f"{k} {v:.4g}" for k, v in info["best"].items())
        share = info.get("hardware_share")
        tried = "" if share is None else f", {share:.0%} of it the front on other hierarchies"
        out.print(
            f"round {info['round']}: {info['evaluations']}/{budget} true evaluations "
            f"({info['feasible']} feasible){tried}, hypervolume {info['hypervolume']:.4g}, "
            f"best: {best}"
        )

    executor = None
    try:
        executor = _executor(args, out)
        study = search.run(
            args.model[0] if args.model else None,
            target,
            family=args.family,
            study=args.study,
            space=space,
            objectives=_objectives(args.objectives),
            budget=args.budget,
            population=args.population,
            data=args.data,
            input_shapes=parse_input_shapes(args.input_shape) or None,
            seed=args.seed,
            max_area=args.max_area,
            min_fidelity=args.min_fidelity,
            executor=executor,
            progress=progress,
            cache_gb=args.cache_gb,
        )
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    if study.meta()["settings"]["random_inputs"]:
        out.print("no --data: fidelity is measured on seeded random inputs")
    rows = len(study.rows())
    if rows < args.budget:
        out.print(f"the space ran out after {rows} distinct configurations (budget {args.budget})")
    failed = sum((r.metrics["error"] or "").startswith("failed: ") for r in study.rows())
    if failed:
        out.print(f"{failed} evaluations failed (worker died, raised, timed out); see study.db")
    write_report(study)
    print_pareto(study)
    if "test_accuracy" in study.meta():
        out.print(
            "test_accuracy: each Pareto point's compiled graph on the family's test split, "
            "which the search never saw (it chose on validation accuracy)"
        )
    out.print(f"study, report.json and plots in {study.folder}")
    return 0


def _executor(args: argparse.Namespace, out: Any) -> Executor | None:
    """Where true evaluations run: a Dask cluster, this process (--workers 1) or a local pool."""
    from .. import search

    if args.scheduler or args.dask_local is not None:
        executor = search.cluster_executor(args.scheduler, args.dask_local or 0, args.eval_timeout)
        out.print(executor.describe())
        return executor
    if args.eval_timeout is not None:
        raise OptionError(
            "--eval-timeout needs --scheduler or --dask-local: a local process pool cannot "
            "cancel a running evaluation"
        )
    return None if args.workers == 1 else search.process_pool(args.workers or None)


def _objectives(text: str | None) -> tuple[str, ...] | None:
    """--objectives as names (None: the default); an empty entry is a typo, not a default."""
    if text is None:
        return None
    names = tuple(o.strip() for o in text.split(","))
    if not all(names):
        raise CimcError(
            f"--objectives {text!r} has an empty entry; e.g. --objectives fidelity,cycles"
        )
    return names
