"""Weight-pool compression against int8/int4 baselines: storage, output fidelity, pass time.

    python benchmarks/compression.py                          # all 13 models + ablation
    python benchmarks/compression.py --quick                  # resnet18 + 2 light models
    python benchmarks/compression.py --model resnet50         # default pipeline timing at 224
    python benchmarks/compression.py --model light_vgg19 --model resnet18 --json out.json
    python benchmarks/compression.py --blas-threads 1 ...     # on a loaded / shared machine

Models: the zoo (resnet18, resnet50, mobilenetv3_large, vit_b16; seeded He weights, see
cimc.models.zoo) and the nine light models that ship with the onnx package, named light_<name> after
their files (light_resnet50 is Caffe2's ResNet-50, not the zoo's). The light models' weights are
constants, so they get seeded random weights the way tests/helpers.py does. Each model runs

    pool        fold-bn,zpack,weight-pool,quantize-act
    pool+err    fold-bn,zpack,weight-pool,error-term,quantize-act
    pool+prune  fold-bn,zpack,weight-pool,error-term,error-prune{keep=0.5},quantize-act
    int8        fold-bn,quantize-weights{bits=8},quantize-act
    int4        fold-bn,quantize-weights{bits=4},quantize-act

with the same calibration set (used by weight-pool's output-aware assignment and by
quantize-act: 8-bit activations). The table gives bits per weight over all CiM weights
(storage_report()['bits_per_weight']: pool, error bits, masks, scales, the shared pool and the
layers left at 8 bits), bits per compressed weight, compression vs 8-bit, output cosine
similarity vs the fp32 graph (mean over the evaluation inputs), top-1 agreement (fraction of
evaluation inputs whose argmax matches fp32) and the wall time of the pipeline. Outputs are
compared before a trailing Softmax (the light models end in one): softmax of an untrained net's
small logits is nearly uniform, so its cosine would be ~1 whatever the compression did; the
argmax is the same either way. The models table gives, per model, the share of the fp32
output energy that varies with the input: where it is small (an untrained net's logits are often
mostly one fixed vector), cosine ~1 and top-1 agreement say little about the compressed layers.
So the table adds a centered cosine: the same cosine after subtracting from each model's outputs
their own mean over the evaluation inputs, i.e. how well the input-dependent part is kept
(n/a: the outputs do not vary with the input at float32 precision).

Inputs are fixed: seeded standard-normal images at batch 1, --calib for calibration (seed 1)
and --eval for evaluation (seed 2), 8 each by default. Resolution: zoo CNNs run at --size
(default 64) and ViT-B/16 at --vit-size (default 32, i.e. 4 patches + class token): a pool
pipeline runs the reference interpreter 16 times on calibration inputs and 8 times on
evaluation inputs, so 224 would make the zoo part ~12x slower, while the weights, and so
bits/weight, do not depend on the resolution. The light models have their input size fixed in
the file (224; AlexNet/VGG/ZFNet flatten into FC layers sized for it), so they run at 224; that
is affordable: the full run takes ~20-35 min on a busy 2-core machine, ~10 of it VGG-19.

An ablation (--ablate-model, default resnet18) varies one weight-pool choice at a time around
the default pool+prune pipeline: kmeans / random / hadamard pool, non-repeating / nearest
assignment, per-layer / per-channel scale, and with / without calibration for the assignment
(without: weight-pool, error-term and error-prune see no calibration data; quantize-act still
does, run as a second step).

--model resnet50 alone (or --timing) instead times the whole default compression pipeline
(cimc.passes.DEFAULT_COMPRESSION, with calibration) at 224 (or --size), per pass with the
cimc.Timing instrument. The goal is under 10 s on a 2-core machine.

The weights are seeded random, not trained: post-training compression to ~0.5 bits per weight
is expected to lose much of the output (DESIGN.md, weight-pool section: even a real pretrained
network loses its predictions without fine-tuning). The tables are measurements, not accuracy
claims.

On a machine that other jobs keep busy, OpenBLAS' threads spin-wait for each other and small
BLAS calls (the batched matmuls of calibration) can run 10-30x slower; --blas-threads 1 avoids
that (it needs threadpoolctl, which scikit-learn installs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import cimc
from cimc.atomic import write_text_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

ZOO_MODELS = ("resnet18", "resnet50", "mobilenetv3_large", "vit_b16")
QUICK_MODELS = ("resnet18", "light_squeezenet", "light_shufflenet")

POOL = "fold-bn,zpack,weight-pool"
PIPELINES: dict[str, str] = {
    "pool": f"{POOL},quantize-act",
    "pool+err": f"{POOL},error-term,quantize-act",
    "pool+prune": f"{POOL},error-term,error-prune{{keep=0.5}},quantize-act",
    "int8": "fold-bn,quantize-weights{bits=8},quantize-act",
    "int4": "fold-bn,quantize-weights{bits=4},quantize-act",
}
PRUNE_TAIL = "error-term,error-prune{keep=0.5}"
# (label, weight-pool options, calibrate the weight passes)
ABLATION: list[tuple[str, str, bool]] = [
    ("default (kmeans, non-repeating, per-layer, calibrated)", "", True),
    ("init=random", "init=random", True),
    ("init=hadamard", "init=hadamard", True),
    ("assign=nearest", "assign=nearest", True),
    ("scale=per-channel", "scale=per-channel", True),
    ("no calibration for weight passes", "", False),
]
NOTE = (
    "Seeded random (untrained) weights: post-training compression to ~0.5 b/w is expected to "
    "lose much fidelity (DESIGN.md); these are measurements, not accuracy claims."
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- models ------------------------------------------------------------------------------------
def light_models() -> list[str]:
    """The onnx package's light models, named after their files (light_resnet50 is not the
    zoo's resnet50)."""
    from helpers import LIGHT_MODELS

    return [f"light_{m}" for m in LIGHT_MODELS]


def drop_softmax(graph: cimc.Graph) -> bool:
    """Make the input of a trailing Softmax the graph output (compare logits, not probs)."""
    if len(graph.outputs) != 1:
        return False
    node = graph.producer(graph.outputs[0])
    if node is None or node.op != "Softmax":
        return False
    graph.outputs = [node.inputs[0]]
    graph.prune_unused()
    graph.verify()
    return True


def load_model(name: str, args: argparse.Namespace) -> tuple[cimc.Graph, dict[str, Any]]:
    """Import ``name`` with seeded weights; return the graph and facts about it."""
    start = time.perf_counter()
    if name in ZOO_MODELS:
        from cimc.models import export_onnx

        size = args.vit_size if name == "vit_b16" else args.size
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(name, Path(tmp) / f"{name}.onnx", image_size=size, seed=args.seed)
            graph = cimc.import_onnx(path)
        source = f"cimc.models seed={args.seed}"
    else:
        import onnx
        from helpers import light_path, with_seeded_weights

        path = light_path(name.removeprefix("light_"))
        model = with_seeded_weights(onnx.load(str(path)), seed=args.seed)
        graph = cimc.import_onnx(model)
        source = f"onnx light model, seeded weights seed={args.seed}"
    seconds = time.perf_counter() - start
    dropped = drop_softmax(graph)
    shape = graph.values[graph.inputs[0]].shape
    info = {
        "model": name,
        "source": source,
        "input_shape": list(shape),
        "import_seconds": seconds,
        "softmax_dropped": dropped,
    }
    return graph, info


def make_feeds(graph: cimc.Graph, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feeds.append(
            {
                i: rng.standard_normal(graph.values[i].shape).astype(graph.values[i].dtype)
                for i in graph.inputs
            }
        )
    return feeds


def outputs(graph: cimc.Graph, feeds: list[dict]) -> list[np.ndarray]:
    runner = cimc.Interpreter(graph)
    out = graph.outputs[0]
    return [np.asarray(runner.run(f)[out], dtype=np.float64).ravel() for f in feeds]


def input_dependent_fraction(ref: list[np.ndarray]) -> float:
    """Share of the fp32 output energy that varies with the input: sum ||y_i - mean y||^2 /
    sum ||y_i||^2 over the evaluation inputs. Near 0, the logits are mostly a fixed vector, so
    cosine ~1 and top-1 agreement say little about the compressed layers."""
    y = np.stack(ref)
    total = float(np.sum(y**2))
    return float(np.sum((y - y.mean(axis=0)) ** 2)) / total if total else float("nan")


def fidelity(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    cos = []
    for r, g in zip(ref, got, strict=True):
        den = float(np.linalg.norm(r) * np.linalg.norm(g))
        cos.append(float(r @ g) / den if den else float("nan"))
    top1 = [int(np.argmax(r) == np.argmax(g)) for r, g in zip(ref, got, strict=True)]
    ref_c = [r - np.mean(ref, axis=0) for r in ref]
    got_c = [g - np.mean(got, axis=0) for g in got]
    centered = []
    varies = input_dependent_fraction(ref) > 1e-9  # else the centered ref is rounding noise
    for r, g in zip(ref_c, got_c, strict=True):
        den = float(np.linalg.norm(r) * np.linalg.norm(g))
        centered.append(float(r @ g) / den if den and varies else float("nan"))
    return {
        "cosine": float(np.mean(cos)),
        "centered_cosine": float(np.mean(centered)),
        "cosine_min": float(np.min(cos)),
        "cosine_each": cos,
        "top1_agreement": float(np.mean(top1)),
        "finite": bool(all(np.all(np.isfinite(g)) for g in got)),
    }


# ---- running one configuration -----------------------------------------------------------------
def run_config(
    graph: cimc.Graph,
    steps: list[tuple[str, bool]],
    calib: list[dict],
    evals: list[dict],
    ref: list[np.ndarray],
) -> dict[str, Any]:
    """Run pipeline ``steps`` ((pipeline, calibrated) pairs, applied in turn), then measure."""
    timing = cimc.Timing()
    start = time.perf_counter()
    out = graph
    for pipe, calibrated in steps:
        out = cimc.run_passes(
            out, pipe, calibration=calib if calibrated else None, instruments=[timing]
        )
    seconds = time.perf_counter() - start
    rep = cimc.storage_report(out)
    t_eval = time.perf_counter()
    fid = fidelity(ref, outputs(out, evals))
    return {
        "pipeline": ",".join(p for p, _ in steps),
        "calibrated": [c for _, c in steps],
        "bits_per_weight": rep["bits_per_weight"],
        "compressed_bits_per_weight": rep["compressed_bits_per_weight"],
        "compressed_fraction": rep["compressed_fraction"],
        "compression_vs_int8": rep["compression_vs_int8"],
        "weights": rep["weights"],
        "total_bytes": rep["total_bytes"],
        **fid,
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - t_eval,
        "passes": [{"pass": name, "seconds": s} for name, s, _ in timing.records],
    }


def safe_run(label: str, fn, *fn_args) -> dict[str, Any]:
    """Run one configuration; a failure becomes a row with its error instead of a crash."""
    try:
        return fn(*fn_args)
    except Exception as exc:  # a benchmark reports failures and goes on
        log(f"    {label}: FAILED {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def bench_model(name: str, args: argparse.Namespace) -> tuple[dict, list[dict], cimc.Graph]:
    graph, info = load_model(name, args)
    calib = make_feeds(graph, args.calib, seed=1)
    evals = make_feeds(graph, args.eval, seed=2)
    t = time.perf_counter()
    ref = outputs(graph, evals)
    info["fp32_eval_seconds"] = time.perf_counter() - t
    info["cim_weights"] = cimc.storage_report(graph)["weights"]
    info["input_dependent_fraction"] = input_dependent_fraction(ref)
    log(
        f"{name}: input {tuple(info['input_shape'])}, import {info['import_seconds']:.1f} s, "
        f"fp32 eval {info['fp32_eval_seconds']:.1f} s"
    )
    rows = []
    for label, pipe in PIPELINES.items():
        row = {"model": name, "config": label}
        row.update(safe_run(label, run_config, graph, [(pipe, True)], calib, evals, ref))
        rows.append(row)
        if "error" not in row:
            log(
                f"    {label:<11} {row['bits_per_weight']:.3f} b/w  cos {row['cosine']:.4f}  "
                f"top-1 {row['top1_agreement']:.2f}  {row['seconds']:.1f} s"
            )
    return info, rows, graph


def ablation(
    name: str, args: argparse.Namespace, loaded: tuple[cimc.Graph, dict] | None = None
) -> tuple[dict, list[dict]]:
    graph, info = loaded or load_model(name, args)
    calib = make_feeds(graph, args.calib, seed=1)
    evals = make_feeds(graph, args.eval, seed=2)
    ref = outputs(graph, evals)
    log(f"ablation on {name}")
    rows = []
    for label, opts, calibrated in ABLATION:
        wp = f"weight-pool{{{opts}}}" if opts else "weight-pool"
        weights = f"fold-bn,zpack,{wp},{PRUNE_TAIL}"
        if calibrated:
            steps = [(f"{weights},quantize-act", True)]
        else:
            steps = [(weights, False), ("quantize-act", True)]
        row = {"model": name, "config": label}
        row.update(safe_run(label, run_config, graph, steps, calib, evals, ref))
        rows.append(row)
        if "error" not in row:
            log(
                f"    {label:<32} {row['bits_per_weight']:.3f} b/w  cos {row['cosine']:.4f}  "
                f"top-1 {row['top1_agreement']:.2f}  {row['seconds']:.1f} s"
            )
    return info, rows


def timing_run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Wall time of the default compression pipeline, per pass, best of --repeat."""
    from cimc.passes import DEFAULT_COMPRESSION

    size = args.size_given or 224
    args.size = args.vit_size = size
    graph, info = load_model(name, args)
    calib = make_feeds(graph, args.calib, seed=1)
    evals = make_feeds(graph, args.eval, seed=2)
    log(f"{name} at {size}: import {info['import_seconds']:.1f} s; timing {DEFAULT_COMPRESSION}")
    runs = []
    out = None
    for r in range(args.repeat):
        timing = cimc.Timing()
        start = time.perf_counter()
        out = cimc.run_passes(graph, DEFAULT_COMPRESSION, calibration=calib, instruments=[timing])
        seconds = time.perf_counter() - start
        runs.append({"seconds": seconds, "passes": list(timing.records)})
        log(f"    run {r + 1}/{args.repeat}: {seconds:.2f} s")
    best = min(runs, key=lambda x: x["seconds"])
    rep = cimc.storage_report(out)
    result = {
        **info,
        "pipeline": DEFAULT_COMPRESSION,
        "calibration_inputs": args.calib,
        "seconds": best["seconds"],
        "all_seconds": [x["seconds"] for x in runs],
        "passes": [{"pass": p, "seconds": s} for p, s in best["passes"]],
        "bits_per_weight": rep["bits_per_weight"],
        "compressed_bits_per_weight": rep["compressed_bits_per_weight"],
        "compression_vs_int8": rep["compression_vs_int8"],
    }
    if args.eval:
        result.update(fidelity(outputs(graph, evals), outputs(out, evals)))
    return result


# ---- printing ----------------------------------------------------------------------------------
def fmt(x: Any, spec: str, nan: str = "-") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return nan
    return format(x, spec)


def table(rows: list[dict], first: tuple[str, ...]) -> str:
    head = [
        *first,
        "b/w (all CiM)",
        "b/w (compressed)",
        "vs 8-bit",
        "cosine",
        "centered cos",
        "top-1",
        "time s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.get(k, "")) for k in first]
        if "error" in r:
            cells += ["error: " + r["error"][:60]] + [""] * 6
        else:
            cells += [
                fmt(r["bits_per_weight"], ".3f"),
                fmt(r["compressed_bits_per_weight"], ".3f"),
                fmt(r["compression_vs_int8"], ".2f") + "x",
                fmt(r["cosine"], ".4f") + ("" if r["finite"] else " (non-finite)"),
                fmt(r["centered_cosine"], ".3f", nan="n/a"),
                fmt(r["top1_agreement"], ".3f"),
                fmt(r["seconds"], ".1f"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_table(infos: list[dict]) -> str:
    lines = [
        "| model | input | CiM weights | import s | fp32 eval s | input-dependent output |",
        "|---|---|---|---|---|---|",
    ]
    for i in infos:
        shape = "x".join(str(d) for d in i["input_shape"])
        lines.append(
            f"| {i['model']} | {shape} | {i['cim_weights'] / 1e6:.2f} M | "
            f"{i['import_seconds']:.1f} | {i['fp32_eval_seconds']:.1f} | "
            f"{fmt(i['input_dependent_fraction'], '.2g')} |"
        )
    return "\n".join(lines)


def print_timing(res: dict[str, Any]) -> None:
    total = res["seconds"]
    print(
        f"\n## Default compression pipeline on {res['model']} at "
        f"{res['input_shape'][-1]}x{res['input_shape'][-2]}, {res['calibration_inputs']} "
        f"calibration inputs\n"
    )
    print(f"pipeline: `{res['pipeline']}`\n")
    print("| # | pass | ms | % |\n|---|---|---|---|")
    for i, p in enumerate(res["passes"]):
        print(
            f"| {i} | `{p['pass']}` | {p['seconds'] * 1e3:.0f} | {100 * p['seconds'] / total:.1f} |"
        )
    runs = ", ".join(f"{s:.2f}" for s in res["all_seconds"])
    print(
        f"\ntotal wall time: {total:.2f} s (best of {len(res['all_seconds'])}: {runs}); goal < 10 s"
    )
    print(
        f"bits/weight {res['bits_per_weight']:.3f} (compressed layers "
        f"{res['compressed_bits_per_weight']:.3f}), {res['compression_vs_int8']:.2f}x vs 8-bit"
        + (
            f"; cosine {res['cosine']:.4f}, top-1 agreement {res['top1_agreement']:.3f}"
            if "cosine" in res
            else ""
        )
    )


# ---- main --------------------------------------------------------------------------------------
def write_json_atomic(path: Path, data: Any) -> None:
    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return None if not math.isfinite(x) else x
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(clean(data), indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        action="append",
        help="model to run (repeatable; zoo or light name); default all 13. "
        "--model resnet50 alone runs the timing benchmark",
    )
    ap.add_argument("--quick", action="store_true", help="resnet18 + squeezenet + shufflenet")
    ap.add_argument("--timing", action="store_true", help="time the default pipeline instead")
    ap.add_argument("--size", type=int, default=None, help="zoo CNN resolution (default 64)")
    ap.add_argument("--vit-size", type=int, default=32, help="ViT-B/16 resolution (default 32)")
    ap.add_argument("--calib", type=int, default=8, help="calibration inputs (default 8)")
    ap.add_argument("--eval", type=int, default=8, help="evaluation inputs (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    ap.add_argument("--ablate-model", default="resnet18", help="ablation model ('' to skip)")
    ap.add_argument("--repeat", type=int, default=1, help="timing runs, best reported")
    ap.add_argument("--blas-threads", type=int, default=None, help="limit BLAS threads")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    args = ap.parse_args()
    args.size_given = args.size
    args.size = args.size or 64

    known = (*ZOO_MODELS, *light_models())
    models = list(QUICK_MODELS) if args.quick else (args.model or list(known))
    bad = [m for m in [*models, args.ablate_model] if m and m not in known]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {', '.join(known)}")
    timing_mode = args.timing or models == ["resnet50"]
    if args.calib < 1 or args.repeat < 1 or (args.eval < 1 and not timing_mode):
        ap.error("--calib and --repeat must be >= 1, and --eval too unless timing")

    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.blas_threads)

    started = time.perf_counter()
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("json", "size_given", "model")
        },
        "models": models,
        "note": NOTE,
    }
    if timing_mode:
        results["timing"] = [timing_run(m, args) for m in models]
        for res in results["timing"]:
            print_timing(res)
    else:
        infos, rows, keep = [], [], None
        for m in models:
            info, r, graph = bench_model(m, args)
            infos.append(info)
            rows.extend(r)
            if m == args.ablate_model:
                keep = (graph, info)
            del graph
        results["model_info"] = infos
        results["rows"] = rows
        print(f"\n## Models\n\n{model_table(infos)}")
        print(f"\n## Compression on {len(models)} models\n")
        print(table(rows, ("model", "config")))
        print(f"\n{NOTE}")
        print("Pipelines: " + "; ".join(f"{k} = `{v}`" for k, v in PIPELINES.items()))
        if args.ablate_model:
            info, arows = ablation(args.ablate_model, args, keep)
            results["ablation"] = {"model_info": info, "rows": arows}
            print(f"\n## Ablation on {args.ablate_model} (pool + error term + prune{{keep=0.5}})\n")
            print(table(arows, ("config",)))
    results["wall_seconds"] = time.perf_counter() - started
    results["loadavg_1min"] = {"start": load_before[0], "end": os.getloadavg()[0]}
    results["cpus"] = os.cpu_count()
    print(
        f"\ntotal benchmark wall time {results['wall_seconds']:.0f} s; {os.cpu_count()} CPUs, "
        f"1-min load average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
        f"BLAS threads: {args.blas_threads or 'library default'}"
    )
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
