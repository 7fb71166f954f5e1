"""Simulation speed: one image through the full simulator, beside onnxruntime fp32.

    python benchmarks/sim_speed.py                                 # resnet18, 224, cimpool-sram
    python benchmarks/sim_speed.py --repeat 10 --threads 2         # pin BLAS/Numba/ORT threads
    python benchmarks/sim_speed.py --model resnet50 --target int8-sram
    python benchmarks/sim_speed.py --no-check --no-profile --json sim_speed.json

The zoo model (seeded weights, cimc.models.zoo) is exported to ONNX at --size and compiled once for
--target with the target's default pipeline (compile time is reported apart, with its slowest
passes). Then, on one seeded standard-normal image at batch 1:

  simulate, first run     ``simulate(program, feeds)`` in a fresh process: includes loading (or
                          compiling) the Numba kernels; reported, not used in the ratio
  simulate, full          functional + timing + energy/area, best of --repeat after that warm-up
  simulate, timing only   ``simulate(..., functional=False)``, best of --repeat; instructions/s
  timing kernel           ``time_program`` alone (the Numba event loop), best of --repeat
  functional (derived)    full - timing only: the share of simulate spent computing outputs
  reference interpreter   ``cimc.interpret(program.graph, feeds)`` on the compiled graph, and
                          whether the simulator's outputs are bit-identical to it (--no-check skips)
  onnxruntime             ``InferenceSession.run`` on the same ONNX (fp32), best of --repeat

The goal (issue) is simulate full / onnxruntime <= 10. When the ratio is above 10 (or with
--profile) one full simulate runs under cProfile and the top functions by own time are printed.
The output cosine against onnxruntime is informative only: the compiled model has compressed,
post-training weights (seeded, untrained), so it is not expected to be close.

Everything is seeded (export, calibration, input), so reruns time the same work. On a shared
machine wall times vary with the load (printed); --threads N pins OpenBLAS (threadpoolctl),
Numba and onnxruntime's intra-op pool to N threads so both sides use the same cores.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import cimc
from cimc.models import ZOO, export_onnx


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t, out = timed(fn)
        best = min(best, t)
    return best, out


def set_threads(n: int | None) -> dict[str, Any]:
    """Pin BLAS and Numba threads (onnxruntime gets n through its session options)."""
    import numba

    info: dict[str, Any] = {}
    if n is not None:
        numba.set_num_threads(n)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(n)
        except ImportError:  # threadpoolctl comes with scikit-learn; without it BLAS is unpinned
            log("threadpoolctl not installed: BLAS threads left at their default")
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [p.get("num_threads") for p in threadpool_info()]
    except ImportError:
        info["blas"] = "unknown"
    info["numba"] = numba.get_num_threads()
    info["onnxruntime"] = n if n is not None else "default"
    return info


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den else float("nan")


def profile_simulate(program, feeds, top: int) -> list[dict[str, Any]]:
    """Top functions by own time in one full simulate (cProfile)."""
    from cimc.targets.simulator import simulate

    prof = cProfile.Profile()
    prof.enable()
    simulate(program, feeds)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = stats.total_tt or 1e-12
    rows = []
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        short = path
        for root in (str(Path(cimc.__file__).resolve().parent.parent), sys.prefix):
            if short.startswith(root):
                short = short[len(root) + 1 :]
        rows.append(
            {
                "function": f"{short}:{line}({func})",
                "calls": ncalls,
                "own_s": tottime,
                "cum_s": cumtime,
                "own_share": tottime / total,
            }
        )
    rows.sort(key=lambda r: -r["own_s"])
    return rows[:top]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="resnet18", choices=ZOO)
    ap.add_argument("--size", type=int, default=224, help="image size (default 224)")
    ap.add_argument("--target", default="cimpool-sram", help="preset or TOML (cimpool-sram)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs after a warm-up (best of)")
    ap.add_argument("--calib", type=int, default=8, help="seeded random calibration inputs")
    ap.add_argument("--threads", type=int, default=None, help="pin BLAS/Numba/ORT threads")
    ap.add_argument("--top", type=int, default=15, help="profile rows to print")
    ap.add_argument("--profile", action="store_true", help="profile even if the ratio is <= 10")
    ap.add_argument("--no-profile", action="store_true", help="never profile")
    ap.add_argument("--no-check", action="store_true", help="skip the reference-interpreter check")
    ap.add_argument("--json", default=None, help="write the measurements to this file")
    args = ap.parse_args()

    threads = set_threads(args.threads)
    import onnxruntime as ort
    from cimc.targets.simulator import simulate
    from cimc.targets.timing import time_program

    res: dict[str, Any] = {
        "model": args.model,
        "size": args.size,
        "target": args.target,
        "repeat": args.repeat,
        "threads": threads,
        "load_avg_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        log(f"export {args.model} at {args.size} ...")
        path = export_onnx(args.model, Path(tmp) / f"{args.model}.onnx", image_size=args.size)
        log(f"compile for {args.target} ...")
        timing = cimc.Timing()
        t_compile, program = timed(
            lambda: cimc.compile(
                str(path), target=args.target, calibration=args.calib, instruments=[timing]
            )
        )
        passes = sorted(timing.records, key=lambda r: -r[1])
        x = (
            np.random.default_rng(0)
            .standard_normal((1, 3, args.size, args.size))
            .astype(np.float32)
        )
        feeds = {program.graph.inputs[0]: x}
        n_ins = int(len(program.instructions))

        log("simulate (first run, then best of --repeat) ...")
        t_first, sim = timed(lambda: simulate(program, feeds))
        t_full, sim = best_of(args.repeat, lambda: simulate(program, feeds))
        t_timing_first, _ = timed(lambda: simulate(program, feeds, functional=False))
        t_timing, _ = best_of(args.repeat, lambda: simulate(program, feeds, functional=False))
        target = program.target
        t_kernel, _ = best_of(args.repeat, lambda: time_program(program.instructions, target))
        t_functional = max(0.0, t_full - t_timing)

        t_interp, identical = float("nan"), None
        if not args.no_check:
            log("reference interpreter ...")
            t_interp, ref = timed(lambda: cimc.interpret(program.graph, feeds))
            identical = all(np.array_equal(sim.outputs[k], ref[k]) for k in ref)

        log("onnxruntime ...")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if args.threads is not None:
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
        t_session, sess = timed(
            lambda: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        )
        in_name = sess.get_inputs()[0].name
        sess.run(None, {in_name: x})  # warm-up
        t_ort, ort_out = best_of(args.repeat, lambda: sess.run(None, {in_name: x}))

    ratio = t_full / t_ort
    out_name = program.graph.outputs[0]
    cos = cosine(sim.outputs[out_name], ort_out[0])
    top1 = bool(np.argmax(sim.outputs[out_name]) == np.argmax(ort_out[0]))
    res.update(
        {
            "instructions": n_ins,
            "compile_s": t_compile,
            "compile_passes": [{"pass": p, "s": s} for p, s, _ in timing.records],
            "simulate_first_s": t_first,
            "simulate_full_s": t_full,
            "simulate_timing_first_s": t_timing_first,
            "simulate_timing_s": t_timing,
            "timing_kernel_s": t_kernel,
            "functional_s": t_functional,
            "interpret_s": t_interp,
            "bit_identical_to_interpreter": identical,
            "ort_session_s": t_session,
            "ort_run_s": t_ort,
            "ratio_full_vs_ort": ratio,
            "instructions_per_s_timing": n_ins / t_timing,
            "instructions_per_s_kernel": n_ins / t_kernel,
            "cycles": sim.cycles,
            "latency_s": sim.latency_s,
            "cosine_vs_ort": cos,
            "top1_agrees_with_ort": top1,
            "load_avg_end": os.getloadavg(),
        }
    )

    def ms(s: float) -> str:
        return f"{s * 1e3:10.1f} ms"

    print(
        f"\n{args.model} at {args.size}, batch 1, target {args.target}: {n_ins:,} instructions, "
        f"{sim.cycles:,} cycles ({sim.latency_s * 1e3:.3f} ms at {target.clock_mhz:g} MHz)"
    )
    print(
        f"threads: BLAS {threads['blas']}, Numba {threads['numba']}, onnxruntime "
        f"{threads['onnxruntime']}; load average {res['load_avg_start'][0]:.1f} at start, "
        f"{res['load_avg_end'][0]:.1f} at end ({os.cpu_count()} CPUs)"
    )
    slow = ", ".join(f"{p} {s:.1f} s" for p, s, _ in passes[:3])
    print(f"compile (once, not in the ratio): {t_compile:.2f} s; slowest passes: {slow}\n")
    rows = [
        ("simulate, first run (incl. Numba load)", t_first, ""),
        (f"simulate, full (best of {args.repeat})", t_full, f"{ratio:.1f}x ORT"),
        (
            "  functional (full - timing only)",
            t_functional,
            f"{100 * t_functional / t_full:.0f}% of full",
        ),
        (
            "  timing + energy/area (functional=False)",
            t_timing,
            f"{n_ins / t_timing:,.0f} instr/s",
        ),
        ("    of which timing kernel (Numba)", t_kernel, f"{n_ins / t_kernel:,.0f} instr/s"),
        (
            "reference interpreter (compiled graph)",
            t_interp,
            "" if identical is None else f"sim outputs bit-identical: {identical}",
        ),
        ("onnxruntime session creation", t_session, ""),
        (f"onnxruntime fp32 run (best of {args.repeat})", t_ort, "1.0x"),
    ]
    print(f"| {'step':<44} | {'wall time':>13} | {'note':<32} |")
    print(f"|{'-' * 46}|{'-' * 14}:|{'-' * 34}|")
    for name, t, note in rows:
        cell = "skipped" if t != t else ms(t)
        print(f"| {name:<44} | {cell:>13} | {note:<32} |")
    verdict = "meets" if ratio <= 10 else "misses"
    print(
        f"\nratio simulate (full) / onnxruntime = {ratio:.1f} ({verdict} the goal <= 10); "
        f"timing only: {n_ins / t_timing:,.0f} instructions/s"
    )
    print(
        f"output vs onnxruntime fp32: cosine {cos:.4f}, top-1 {'agrees' if top1 else 'differs'} "
        "(compressed post-training weights: informative only)"
    )

    if not args.no_profile and (args.profile or ratio > 10):
        log("profiling one full simulate ...")
        top = profile_simulate(program, feeds, args.top)
        res["profile"] = top
        print(f"\ntop {len(top)} functions by own time in one full simulate (cProfile):")
        print(f"| {'function':<64} | {'calls':>6} | {'own s':>7} | {'cum s':>7} | {'own %':>6} |")
        print(f"|{'-' * 66}|{'-' * 7}:|{'-' * 8}:|{'-' * 8}:|{'-' * 7}:|")
        for r in top:
            print(
                f"| {r['function'][-64:]:<64} | {r['calls']:>6} | {r['own_s']:>7.3f} | "
                f"{r['cum_s']:>7.3f} | {100 * r['own_share']:>5.1f}% |"
            )

    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
