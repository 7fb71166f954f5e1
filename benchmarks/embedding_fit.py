"""How closely openwakeword's embedding can fit its own distillation windows under each weight
compression: the training-set fit bounds what label-free fine-tuning (benchmarks/finetune.py)
can reach on the held-out clips, so it separates "the compression cannot represent it" from
"the recipe does not find it".

    python benchmarks/embedding_fit.py [--schemes cimpool-keep0.25,cimpool-keep0.5,int3,...]
                                       [--steps 200] [--threads 1] [--json out.json]

For each scheme the embedding is distilled from fp32 on the odd clips' 1,632 windows (a clip's
34 windows a step; MSE on the 96-d embeddings plus the per-layer feature loss, weight 1, as
finetune.py trains it, without the heads) and the relative MSE to fp32 (over the variance of
fp32's embedding, on the same windows) is printed before and after. Bits per compressed weight
come from the compiled post-training graph (the same storage report as finetune.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from finetune import KIT, bits, distillation_feeds, flat, pool_target, post_training
from kit import check_devkit

import cimc
from cimc.atomic import write_text_atomic
from cimc.train.distill import (
    DistillConfig,
    distill,
    load_samples,
    output_error,
    untrained_student,
)
from cimc.train.layers import SCHEMES, Scheme, get_scheme

EMBEDDING = "openwakeword/embedding_model.onnx"
SCHEMES_DEFAULT = "cimpool-keep0.25,cimpool-keep0.5,cimpool-keep1,int4"


def scheme_named(name: str) -> Scheme | None:
    """A scheme of cimc.train (fp32 excluded) or ``intN``, N-bit integer weights (2 to 8)."""
    bits = re.fullmatch(r"int([2-8])", name)
    if bits:
        return get_scheme("int4", bits=int(bits[1]))
    return get_scheme(name) if name in SCHEMES and name != "fp32" else None


def scheme_bits(name: str, shapes: dict, calib: list[dict]) -> float:
    """Bits per compressed weight of the compiled post-training graph (int schemes: their bits)."""
    scheme = scheme_named(name)
    if scheme.kind != "pool":
        return float(scheme.bits)
    keep = scheme.keep or 1.0
    program = cimc.compile(
        KIT / "models" / EMBEDDING,
        "cimpool-sram",
        post_training(keep),
        input_shapes=shapes,
        calibration=calib,
        overrides=pool_target(keep),
    )
    return bits([program.graph])["bits_compressed"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--schemes", default=SCHEMES_DEFAULT, help=f"of {', '.join(SCHEMES)} or int2..int8"
    )
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kit = check_devkit()
    if kit is None:
        return 2
    names = args.schemes.split(",")
    bad = [n for n in names if scheme_named(n) is None]
    if bad:
        known = ", ".join(sorted(set(SCHEMES) - {"fp32"}))
        ap.error(f"--schemes: unknown {bad}; choose of {known} or int2..int8")
    folder = Path(tempfile.mkdtemp(prefix="cimc-embedding-fit-"))
    samples = distillation_feeds(kit, "openwakeword", folder)[EMBEDDING]
    np.savez(folder / "data.npz", **flat(samples))
    clips = next(iter(samples.values()))  # [clips, windows, *window]
    shapes = {i: v.shape[1:] for i, v in samples.items()}
    graph = cimc.import_onnx(KIT / "models" / EMBEDDING, shapes)
    data = load_samples(folder / "data.npz", graph, 16)
    calib = [{i: v[0] for i, v in samples.items()}]
    cfg = DistillConfig(steps=args.steps, batch_size=1, lr=3e-3, loss="mse", features=1.0, calib=8)
    rows = []
    print(f"{len(clips)} clips x {clips.shape[1]} windows, {args.steps} steps of one clip")
    for name in names:
        t0 = time.perf_counter()
        scheme = scheme_named(name)
        before = output_error(graph, untrained_student(graph, scheme, data, cfg), data)
        after = output_error(graph, distill(graph, scheme, data, cfg), data)
        row = {
            "scheme": name,
            "bits_compressed": scheme_bits(name, shapes, calib),
            "rel_mse_post_training": before,
            "rel_mse_fitted": after,
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"{name}: {row['bits_compressed']:.3f} bits per compressed weight, relative MSE "
            f"post-training {before:.3f}, fitted {after:.3f} ({row['seconds']:.0f} s)",
            flush=True,
        )
        rows.append(row)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load {load} on {os.cpu_count()} cores")
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
