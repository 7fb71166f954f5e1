"""``cimc finetune``: label-free fine-tuning of an ONNX model for a target (distillation).

    cimc finetune model.onnx --target cimpool-sram --data unlabeled.npz --steps 400 -o runs/ft

--data is an .npz with one array per model input, samples stacked along the first axis (as
for calibration; other arrays, such as labels, are ignored). Writes into -o: ``model.onnx``
(the model with the fine-tuned weights), ``model.npz`` (the learned assignment, CIMPool
targets), ``finetune.log.jsonl``, ``checkpoint.pt`` (a rerun resumes from it) and
``calibration.npz`` (the samples the activation ranges were calibrated on) and
``summary.json`` (the pipeline that compiles the result to the fine-tuned numbers). Compile
with that pipeline and that calibration:

    cimc compile runs/ft/model.onnx --pipeline "$(jq -r .pipeline runs/ft/summary.json)" \\
        --calibration runs/ft/calibration.npz
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from ..atomic import atomic_path, write_text_atomic
from ..errors import CimcError
from .args import parse_input_shapes

POOL_SCHEMES = ("cimpool-keep0.5", "cimpool-keep1", "cimpool-keep0.25", "cimpool-pool-only")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="label-free fine-tuning of an ONNX model (distillation from its fp32 outputs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="ONNX model")
    p.add_argument("--target", default="cimpool-sram", help="preset (cimc targets) or TOML")
    p.add_argument("--data", required=True, help=".npz of unlabelled inputs")
    p.add_argument("-o", "--out", required=True, help="output directory (created)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--scheme",
        choices=POOL_SCHEMES,
        default="cimpool-keep0.5",
        help="CIMPool variant (pool targets)",
    )
    p.add_argument("--loss", choices=("auto", "kl", "mse"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible)")
    p.set_defaults(func=cmd_finetune)


def scheme_for(target_name: str, pool_scheme: str):  # noqa: ANN201 (torch-side type)
    """The training scheme a target's macro implies (vector and pool from the target)."""
    from ..targets.params import load_target
    from ..train.layers import get_scheme

    target = load_target(target_name, {})
    if target.macro == "int":
        return get_scheme(f"int{target.weight_bits}", act_bits=target.act_bits)
    return get_scheme(
        pool_scheme, vector=target.rows, pool=target.pool_cols, act_bits=target.act_bits
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise CimcError("cimc finetune needs torch: pip install 'cimc[train]'") from None
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..frontend import import_onnx
    from ..train.distill import DistillConfig, check_exportable, distill, export, load_samples

    torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch_size < 1:
        raise CimcError(f"--steps {args.steps} --batch-size {args.batch_size}: give at least 1")
    scheme = scheme_for(args.target, args.scheme)
    cfg = replace(
        DistillConfig(),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=args.loss,
        seed=args.seed,
    )
    graph = import_onnx(args.model, parse_input_shapes(args.input_shape))
    check_exportable(graph, args.model, scheme=scheme)
    data = load_samples(args.data, graph, cfg.min_samples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps, loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(f"finetune {scheme.label}", total=cfg.steps, loss=float("nan"))
        model = distill(
            graph,
            scheme,
            data,
            cfg,
            log_path=out / "finetune.log.jsonl",
            checkpoint=out / "checkpoint.pt",
            progress=lambda done, total, loss: bar.update(task, completed=done, loss=loss),
        )
    pipeline = export(model, args.model, out / "model.onnx", out / "model.npz")
    calib = {k: v[: cfg.calib].numpy() for k, v in data.items()}  # what the ranges came from
    with atomic_path(out / "calibration.npz") as tmp:
        np.savez(tmp, **{k: v.reshape(-1, *v.shape[2:]) for k, v in calib.items()})
    summary = {
        "model": args.model,
        "target": args.target,
        "scheme": scheme.to_dict(),
        "config": cfg.to_dict(),
        "samples": len(next(iter(data.values()))),
        "pipeline": pipeline,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"pipeline: {pipeline}")
    print(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    shapes = " ".join(
        f"--input-shape {i}={','.join(map(str, graph.values[i].shape))}" for i in graph.inputs
    )
    print(
        f"compile it: cimc compile {out}/model.onnx --target {args.target} {shapes} "
        f"--pipeline '{pipeline}' --calibration {out}/calibration.npz -o model.cimx"
    )
    return 0
