"""Search evaluations on a Dask LocalCluster: true evaluations per second on 1 and 2 worker
processes, the scaling efficiency, and the scheduler's overhead per task.

    python benchmarks/search_scaling.py                 # resnet18 at 64 px
    python benchmarks/search_scaling.py --hw-evals 120 --comp-evals 24 --json scaling.json

Two studies of a zoo model (seeded weights, exported at --size):

  hardware-only   the compression and hardware parameters tied to numerics fixed at the preset,
                  the CiMNet hierarchy varied: one compression, then each evaluation is the
                  backend (tile, lower, timing model)
  compression     the preset's whole space (scheme, vector, pool, act_bits, keep and the
                  hierarchy): most evaluations compress the model anew (cache in a fresh folder
                  per run, shared by the workers as in a study on one machine)

For each worker count, a fresh ``cimc.search.cluster_executor(local_workers=N)``: two warm-up
evaluations per worker (imports, onnxruntime reference, Numba compilation, the hardware study's
compression), then the same seeded configs (distinct from the warm-ups) are timed from the
first submit to the last result. Efficiency = rate(2) / (2 x rate(1)); each worker is one process
with one thread, and BLAS / OpenMP / Numba are pinned to one thread, so N workers use N cores.
The default local process pool (``process_pool(2)``) runs the hardware study beside them.

"busy" is the fraction of the workers' wall time spent inside evaluations (measured on the
workers): below 1 means idle workers (dispatch, imbalance at the end); an efficiency below "busy"
means the evaluations themselves ran slower on 2 workers (cores shared with other processes).

Scheduler overhead: a no-op task (``abs``) through the same executor on one warm worker, as
throughput (wall / tasks, 200 submitted at once; also through a bare ``Client.submit``) and as a
single round trip (mean of 30).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_name] = "1"  # before NumPy / Numba load, and inherited by the workers

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from cimc.targets.params import load_target  # noqa: E402

from cimc.atomic import write_text_atomic  # noqa: E402
from cimc.models import export_onnx  # noqa: E402
from cimc.search import Evaluator, Space, cluster_executor, process_pool  # noqa: E402
from cimc.search.executor import run_all  # noqa: E402

NUMERICS = ["scheme", "vector", "pool", "act_bits", "keep", "perm_lanes", "vector_width"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def configs(space: Space, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct seeded configs."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    while len(out) < min(n, space.size):
        config = space.from_indices(space.sample(1, rng)[0])
        out[json.dumps(config, sort_keys=True, default=str)] = config
    return list(out.values())


def timed(executor: Any, evaluator: Evaluator, items: list[dict]) -> tuple[float, float, int]:
    """Wall seconds to evaluate ``items``, the seconds the workers spent inside evaluations,
    and how many were infeasible."""
    start = time.perf_counter()
    metrics = [m for _, m in run_all(executor, evaluator, items)]
    wall = time.perf_counter() - start
    return wall, sum(m.seconds for m in metrics), sum(m.error is not None for m in metrics)


def study_rate(
    name: str, model: Path, space: Space, workers: int, warm: list, measured: list, pool: bool
) -> dict[str, Any]:
    cache = Path(tempfile.mkdtemp(prefix=f"cimc-scaling-{name}-"))
    evaluator = Evaluator(str(model), space, None, None, str(cache))
    executor = process_pool(workers) if pool else cluster_executor(local_workers=workers)
    try:
        timed(executor, evaluator, warm[: 2 * workers])
        seconds, busy, errors = timed(executor, evaluator, measured)
    finally:
        executor.shutdown()
    rate = len(measured) / seconds
    kind = "process pool" if pool else "Dask"
    log(f"{name:14s} {kind:12s} {workers} workers: {len(measured)} evaluations in {seconds:.1f} s")
    return {
        "evaluations": len(measured),
        "infeasible": errors,
        "seconds": seconds,
        "rate": rate,
        "busy": busy / (workers * seconds),  # < 1: workers idle (dispatch, imbalance)
    }


def overhead(tasks: int = 200, trips: int = 30) -> dict[str, float]:
    """ms per no-op task through the executor and through a bare ``Client.submit``."""
    executor = cluster_executor(local_workers=1)
    client = executor.client
    try:
        list(run_all(executor, abs, list(range(20))))  # warm
        start = time.perf_counter()
        list(run_all(executor, abs, list(range(tasks))))
        batched = (time.perf_counter() - start) / tasks
        start = time.perf_counter()
        for i in range(trips):
            executor.submit(abs, i).result()
        trip = (time.perf_counter() - start) / trips
        start = time.perf_counter()
        client.gather([client.submit(abs, i, pure=False) for i in range(tasks)])
        bare = (time.perf_counter() - start) / tasks
    finally:
        executor.shutdown()
    return {"batched_ms": 1e3 * batched, "round_trip_ms": 1e3 * trip, "bare_dask_ms": 1e3 * bare}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="resnet18", help="zoo model")
    ap.add_argument("--size", type=int, default=64, help="image size")
    ap.add_argument("--hw-evals", type=int, default=80, help="timed hardware-only evaluations")
    ap.add_argument("--comp-evals", type=int, default=12, help="timed compression evaluations")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "cimc-bench-scaling"))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"{args.model}-{args.size}.onnx"
    if not model.is_file():
        log(f"export {args.model} at {args.size} px ...")
        export_onnx(args.model, model, image_size=args.size)
    target = load_target("cimpool-sram")
    hw_file = work / "space-hw.toml"
    hw_file.write_text(f"drop = {json.dumps(NUMERICS)}\n")
    spaces = {
        "hardware-only": (Space.from_target(target, hw_file), args.hw_evals),
        "compression": (Space.from_target(target), args.comp_evals),
    }
    results: dict[str, Any] = {"model": f"{args.model} at {args.size} px", "cores": os.cpu_count()}
    for name, (space, n) in spaces.items():
        items = configs(space, n + 4, seed=1)
        warm, measured = items[:4], items[4:]
        if name == "compression":  # warm-ups share the preset's compression
            warm = [c | {k: space.base_config()[k] for k in NUMERICS} for c in warm]
        runs = {w: study_rate(name, model, space, w, warm, measured, False) for w in (1, 2)}
        row = {f"dask_{w}": r for w, r in runs.items()}
        row["efficiency"] = runs[2]["rate"] / (2 * runs[1]["rate"])
        if name == "hardware-only":
            row["process_pool_2"] = study_rate(name, model, space, 2, warm, measured, True)
        results[name] = row
    results["overhead"] = overhead()

    print(f"{results['model']}, {results['cores']} cores; true evaluations per second")
    print(f"{'study':14s} {'1 worker':>9s} {'2 workers':>10s} {'efficiency':>11s} {'busy(2)':>8s}")
    for name in spaces:
        row = results[name]
        print(
            f"{name:14s} {row['dask_1']['rate']:9.2f} {row['dask_2']['rate']:10.2f} "
            f"{row['efficiency']:11.2f} {row['dask_2']['busy']:8.2f}"
        )
    pool = results["hardware-only"]["process_pool_2"]["rate"]
    print(f"hardware-only on the default process_pool(2): {pool:.2f}")
    o = results["overhead"]
    print(
        f"scheduler overhead per no-op task: {o['batched_ms']:.2f} ms batched "
        f"(bare Client.submit {o['bare_dask_ms']:.2f} ms), {o['round_trip_ms']:.2f} ms round trip"
    )
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
