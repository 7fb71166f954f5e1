"""Import + interpret wall time of ResNet-50 at 224, beside onnxruntime on the same machine.

    python benchmarks/import_speed.py [--model resnet50] [--size 224] [--repeat 3]

Prints cimc's import time and reference-interpreter time next to onnxruntime's session
creation and inference time, and the ratios. Best of --repeat runs for each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import cimc
from cimc.zoo import export_onnx


def best_of(repeat: int, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(args.model, Path(tmp) / f"{args.model}.onnx", image_size=args.size)
        x = (
            np.random.default_rng(0)
            .standard_normal((1, 3, args.size, args.size))
            .astype(np.float32)
        )

        t_import, graph = best_of(args.repeat, lambda: cimc.import_onnx(path))
        t_interp, out = best_of(args.repeat, lambda: cimc.interpret(graph, {"input": x}))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        t_session, sess = best_of(
            args.repeat,
            lambda: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]),
        )
        t_infer, ref = best_of(args.repeat, lambda: sess.run(None, {"input": x}))

    err = float(np.max(np.abs(out["logits"] - ref[0])) / np.max(np.abs(ref[0])))
    total_cimc, total_ort = t_import + t_interp, t_session + t_infer
    print(f"model {args.model} at {args.size}x{args.size}, batch 1, best of {args.repeat}")
    rows = [
        ("import / session creation", t_import, t_session),
        ("interpret / inference", t_interp, t_infer),
        ("total", total_cimc, total_ort),
    ]
    print(f"{'step':<28}{'cimc s':>10}{'onnxruntime s':>16}{'ratio':>9}")
    for label, ours, theirs in rows:
        print(f"{label:<28}{ours:>10.3f}{theirs:>16.3f}{ours / theirs:>9.1f}")
    print(f"max|diff| / max|ref| = {err:.2e}")


if __name__ == "__main__":
    main()
