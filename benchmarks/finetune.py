"""Label-free fine-tuning of the bundled digits CNN: fp32, int8, post-training CIMPool and
CIMPool fine-tuned by distillation from the fp32 model (no labels), each compiled and scored.

    python benchmarks/finetune.py [--steps 4000] [--keep 0.25] [--threads 1] [--json out.json]

The unlabelled data are the images of the model's own training split (scikit-learn digits,
the split of benchmarks/make_digits_model.py; labels dropped); the test split
(cimc/data/digits_test.npz, never seen) scores. Every row is the compiled graph run by the
reference interpreter (bit-identical to the simulator), calibrated on the first 256 unlabelled
images; "agree" is top-1 agreement with fp32, wall time includes compiling (and training).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cimc
from cimc.compiler import default_pipeline
from cimc.report.bits import storage_report
from cimc.train.distill import DistillConfig, distill, export, load_samples
from cimc.train.layers import get_scheme

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "cimc" / "data" / "digits_cnn.onnx"
SHAPE = {"input": (1, 1, 16, 16)}


def unlabelled_digits(folder: Path) -> tuple[Path, Path]:
    """(all training images, the first 256 of them) as .npz files of input samples."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_digits_model import load_splits, to_input

    x = np.asarray(to_input(load_splits(0)["train"][0]), dtype=np.float32)
    np.savez(folder / "unlabelled.npz", input=x)
    np.savez(folder / "calib.npz", input=x[:256])
    return folder / "unlabelled.npz", folder / "calib.npz"


def score(
    model: str | Path, target: str | None, pipeline: str | None, calib: Path, keep: float = 0.5
) -> dict:
    """Top-1 predictions, accuracy and bits of ``model`` compiled for ``target`` (None: fp32);
    a pool target gets error rows for ``keep`` of its rows."""
    test = np.load(ROOT / "cimc" / "data" / "digits_test.npz")
    if target is None:  # fp32: the imported graph as it is
        graph = cimc.import_onnx(model, SHAPE)
    else:
        graph = cimc.compile(
            model,
            target,
            pipeline=pipeline,
            input_shapes=SHAPE,
            calibration=str(calib),
            overrides={"error_rows": int(128 * keep)} if target == "cimpool-sram" else None,
        ).graph
    logits = np.concatenate(
        [cimc.interpret(graph, {"input": x[None]})["logits"] for x in test["input"]]
    )
    report = storage_report(graph)
    return {
        "pred": logits.argmax(1),
        "acc": float((logits.argmax(1) == test["label"]).mean()),
        "bits_compressed": report["compressed_bits_per_weight"],
        "bits_all": report["bits_per_weight"],
    }


def post_training(keep: float) -> str:
    """The target's default pipeline with error-prune keeping ``keep``."""
    text = default_pipeline(cimc.load_target("cimpool-sram"))
    return text.replace("error-prune", f"error-prune{{keep={keep:g}}}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--keep", type=float, default=0.25, help="error-term fraction kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="cimc-finetune-"))
    data_path, calib = unlabelled_digits(folder)
    rows = []
    for label, target, pipeline in [
        ("fp32", None, None),
        ("int8 (post-training)", "int8-sram", None),
        (f"CIMPool keep {args.keep:g}, post-training", "cimpool-sram", post_training(args.keep)),
    ]:
        t0 = time.perf_counter()
        r = score(MODEL, target, pipeline, calib, args.keep)
        rows.append({"row": label, **r, "seconds": time.perf_counter() - t0})
    t0 = time.perf_counter()
    graph = cimc.import_onnx(MODEL, SHAPE)
    data = load_samples(data_path, graph, 16)
    cfg = DistillConfig(steps=args.steps, lr=args.lr)
    model = distill(graph, get_scheme(f"cimpool-keep{args.keep:g}"), data, cfg)
    pipe = export(model, MODEL, folder / "tuned.onnx", folder / "tuned.npz")
    r = score(folder / "tuned.onnx", "cimpool-sram", pipe, calib, args.keep)
    rows.append(
        {
            "row": f"CIMPool keep {args.keep:g}, fine-tuned without labels",
            **r,
            "seconds": time.perf_counter() - t0,
        }
    )
    fp32 = rows[0]["pred"]
    print(f"digits CNN, {len(data['input'])} unlabelled images, {args.steps} steps\n")
    print(
        "| model | bits per compressed weight | bits per weight, all | test accuracy % | "
        "top-1 agreement with fp32 % | wall time (s) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        pooled = r["row"] != "fp32" and np.isfinite(r["bits_compressed"])
        bits = f"{r['bits_compressed']:.3f}" if pooled else "–"
        all_bits = "32" if r["row"] == "fp32" else f"{r['bits_all']:.3f}"
        agree = 100 * float((r["pred"] == fp32).mean())
        print(
            f"| {r['row']} | {bits} | {all_bits} | {100 * r['acc']:.2f} | {agree:.2f} | "
            f"{r['seconds']:.1f} |"
        )
    if args.json:
        out = [{k: v for k, v in r.items() if k != "pred"} for r in rows]
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
