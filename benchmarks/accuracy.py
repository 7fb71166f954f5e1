"""Accuracy of CIMPool fine-tuning against fp32, int8 and int4 on real data.

    python benchmarks/accuracy.py [--quick] [--seeds 0,1,2] [--data digits,chars] [--out DIR]

For each data set (scikit-learn digits; procedurally rendered characters, 36 classes, see
cimc.train.data) and each seed: pre-train the ResNet-style CNN ResNetS of cimc.models in fp32,
then fine-tune a copy with one recipe per scheme -- fp32, int8, int4 (per-channel symmetric
weights, first/last layer 8-bit), CIMPool pool-only and with error keep 1, 1/2, 1/4 (first and
last layer 8-bit) -- all with 8-bit activations except fp32. Model selection on the validation
split; test accuracy on the test split. Every fine-tuned model is exported (ONNX +
assignment), compiled with its pipeline (no fold-bn) and scored through the reference
interpreter: bits per weight come from cimc.storage_report on the compiled graph, and the
compiled graph's predictions are compared with torch's.

Prints one table per data set (mean and standard deviation over seeds, min-max, gap to int8
in percentage points) and ends with ``cimpool_gap_pp=<value>``: the largest, over data sets,
of int8's mean test accuracy minus that of the best CIMPool scheme with at most 0.56 bits per
compressed weight (<= 1.0 is the goal). Writes results.json and train.log.jsonl to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cimc.cli.train import SCHEME_NAMES
from cimc.train import data as D
from cimc.train import finetune as T
from cimc.train.evaluate import compile_and_score
from cimc.train.export import export_model
from cimc.train.layers import get_scheme

SCHEMES = SCHEME_NAMES
BUDGET_BITS = 0.56

# per data set: split sizes (None: all; chars: images per class), epochs, fine-tune epochs
FULL = {
    "digits": {"split": None, "epochs": 12, "finetune": 5},
    "chars": {"split": (150, 40, 60), "epochs": 10, "finetune": 5},
}
QUICK = {
    "digits": {"split": None, "epochs": 6, "finetune": 2},
    "chars": {"split": (40, 10, 20), "epochs": 5, "finetune": 2},
}


def load(name: str, split) -> D.Splits:
    if name == "chars":
        return D.make_chars(*split) if split else D.make_chars()
    return D.load(name)


def run(args: argparse.Namespace) -> dict:
    plan = QUICK if args.quick else FULL
    out = Path(args.out or tempfile.mkdtemp(prefix="cimc-accuracy-"))
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train.log.jsonl"
    log_path.write_text("")
    (out / "runs.jsonl").write_text("")
    console = Console(stderr=True)
    rows: list[dict] = []
    n_runs = len(args.data) * len(args.seeds) * (1 + len(SCHEMES))
    with Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        overall = bar.add_task("all runs", total=n_runs)
        current = bar.add_task("", total=1)

        def progress(label: str, done: int, total: int) -> None:
            bar.update(current, completed=done, total=total)

        for name in args.data:
            p = plan[name]
            splits = load(name, p["split"])
            for seed in args.seeds:
                cfg = T.TrainConfig(
                    epochs=p["epochs"], seed=seed, batch_size=args.batch_size, refresh=args.refresh
                )
                kw = {"log_path": log_path, "progress": progress}
                bar.update(current, description=f"{name} s{seed} fp32 pre-train", completed=0)
                t0 = time.perf_counter()
                fp32 = T.pretrain(splits, cfg, **{**kw, "label": f"{name}/s{seed}/pretrain"})
                bar.advance(overall)
                ft = T.finetune_config(cfg, p["finetune"])
                for scheme_name in SCHEMES:
                    scheme = get_scheme(scheme_name)
                    bar.update(current, description=f"{name} s{seed} {scheme.label}", completed=0)
                    t1 = time.perf_counter()
                    label = f"{name}/s{seed}/{scheme.label}"
                    model = T.finetune(fp32, scheme, splits, ft, **{**kw, "label": label})
                    seconds = time.perf_counter() - t1
                    with tempfile.TemporaryDirectory() as tmp:
                        exported = export_model(
                            model, Path(tmp) / "model.onnx", torch.from_numpy(splits.x_train[:1])
                        )
                        scores = compile_and_score(
                            exported, splits, model, ft.calib, test_limit=args.compiled_test
                        )
                    rows.append(
                        {
                            "data": name,
                            "seed": seed,
                            "scheme": scheme.label,
                            "val_acc": model.best_val_acc,
                            "test_acc": T.accuracy(model, splits.x_test, splits.y_test),
                            "finetune_seconds": round(seconds, 1),
                            "pipeline": exported.pipeline.replace(str(exported.assignment), "FILE"),
                            **scores,
                        }
                    )
                    with open(out / "runs.jsonl", "a") as f:
                        f.write(json.dumps(rows[-1], default=float) + "\n")
                    bar.advance(overall)
                console.log(f"{name} seed {seed}: {time.perf_counter() - t0:.0f} s")
            rows.append({"data": name, "split": splits.sizes(), "plan": p})
    return {"rows": rows, "out": str(out)}


def summarize(rows: list[dict], data: list[str]) -> tuple[list[dict], float]:
    table, gaps = [], []
    for name in data:
        runs = [r for r in rows if r.get("data") == name and "scheme" in r]
        by = {
            s: [r for r in runs if r["scheme"] == s]
            for s in dict.fromkeys(r["scheme"] for r in runs)
        }
        mean = {s: 100 * statistics.fmean(r["test_acc"] for r in rs) for s, rs in by.items()}
        for s, rs in by.items():
            accs = [100 * r["test_acc"] for r in rs]
            table.append(
                {
                    "data": name,
                    "scheme": s,
                    "bits_compressed": rs[0]["bits_per_compressed_weight"],
                    "bits_all": rs[0]["bits_per_weight"],
                    "test_mean": mean[s],
                    "test_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                    "test_min": min(accs),
                    "test_max": max(accs),
                    "val_mean": 100 * statistics.fmean(r["val_acc"] for r in rs),
                    "gap_to_int8_pp": mean["int8"] - mean[s],
                    "compiled_agreement": min(r["compiled_agreement"] for r in rs),
                    "compiled_test_mean": 100
                    * statistics.fmean(r["compiled_test_acc"] for r in rs),
                    "seeds": len(rs),
                    "finetune_seconds": statistics.fmean(r["finetune_seconds"] for r in rs),
                }
            )
        ok = [
            t
            for t in table
            if t["data"] == name
            and t["scheme"].startswith("cimpool")
            and t["bits_compressed"] <= BUDGET_BITS
        ]
        gaps.append(min(t["gap_to_int8_pp"] for t in ok) if ok else math.inf)
    return table, max(gaps)


def print_table(table: list[dict], rows: list[dict]) -> None:
    console = Console(width=140)
    for name in dict.fromkeys(t["data"] for t in table):
        info = next(r for r in rows if r.get("data") == name and "split" in r)
        sub = [t for t in table if t["data"] == name]
        tab = Table(
            title=f"{name}: split {info['split']}, pre-train {info['plan']['epochs']} + "
            f"fine-tune {info['plan']['finetune']} epochs, {sub[0]['seeds']} seed(s)"
        )
        for col in (
            "scheme",
            "b/w compressed",
            "b/w all",
            "test acc % (mean ± std)",
            "min-max",
            "gap to int8 (pp)",
            "compiled = torch",
        ):
            tab.add_column(col, justify="left" if col == "scheme" else "right")
        for t in sub:
            bc = t["bits_compressed"]
            tab.add_row(
                t["scheme"],
                "-" if isinstance(bc, float) and math.isnan(bc) else f"{bc:.3f}",
                f"{t['bits_all']:.3f}",
                f"{t['test_mean']:.2f} ± {t['test_std']:.2f}",
                f"{t['test_min']:.2f}-{t['test_max']:.2f}",
                f"{t['gap_to_int8_pp']:+.2f}",
                f"{100 * t['compiled_agreement']:.1f}%",
            )
        console.print(tab)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="one seed, small splits, few epochs")
    ap.add_argument("--seeds", help="comma-separated (default 0,1,2; --quick: 0)")
    ap.add_argument("--data", default="digits,chars")
    ap.add_argument("--out", help="directory for results.json and train.log.jsonl")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--refresh", type=int, default=4, help="CIMPool index refresh (steps)")
    ap.add_argument(
        "--compiled-test",
        type=int,
        default=None,
        help="score the compiled graph on the first n test images (default 1000; --quick 128)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible)")
    args = ap.parse_args(argv)
    args.data = [d.strip() for d in args.data.split(",") if d.strip()]
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    if args.compiled_test is None:
        args.compiled_test = 128 if args.quick else 1000
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    result = run(args)
    table, gap = summarize(result["rows"], args.data)
    wall = time.perf_counter() - start
    print_table(table, result["rows"])
    Path(result["out"], "results.json").write_text(
        json.dumps(
            {"table": table, "runs": result["rows"], "cimpool_gap_pp": gap, "seconds": wall},
            indent=1,
            default=float,
        )
        + "\n"
    )
    print(f"wall time {wall:.0f} s; results and per-epoch log in {result['out']}")
    print(f"cimpool_gap_pp={gap:.2f}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
