"""``cimc finetune``: label-free fine-tuning of an ONNX model for a target (distillation).

    cimc finetune model.onnx --target cimpool-sram --data unlabeled.npz --steps 400 -o runs/ft

--data is an .npz with one array per model input, samples stacked along the first axis (as
for calibration; other arrays, such as labels, are ignored). Writes into -o: ``model.onnx``
(the model with the fine-tuned weights), ``model.npz`` (the learned assignment, CIMPool
targets), ``finetune.log.jsonl``, ``checkpoint.pt`` (a rerun resumes from it) and
``calibration.npz`` (the samples the activation ranges were calibrated on) and
``summary.json`` (the pipeline that compiles the result to the fine-tuned numbers).

--feature-loss W also matches every CiM layer's input to fp32's (MSE over its variance, weight
W). --downstream a.onnx,b.onnx --window N distils, besides the model's outputs, those of
frozen fp32 graphs reading every N consecutive rows of its first output (a wake-word head
reading 16 embeddings): the student then minimises the errors they amplify.

Compile with the pipeline and the calibration written:

    cimc compile runs/ft/model.onnx --pipeline "$(jq -r .pipeline runs/ft/summary.json)" \\
        --calibration runs/ft/calibration.npz
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path, output_folder, write_text_atomic
from ..errors import CimcError
from .args import parse_input_shapes, positive_float, positive_int

if TYPE_CHECKING:  # torch is optional: distill is imported when the command runs
    from ..ir import Graph
    from ..train.distill import Downstream

POOL_SCHEMES = ("cimpool-keep0.5", "cimpool-keep1", "cimpool-keep0.25", "cimpool-pool-only")


FIT_SAMPLES = 64  # distillation samples the printed fit is measured on (two forward passes each)


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
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument(
        "--scheme",
        choices=POOL_SCHEMES,
        default="cimpool-keep0.5",
        help="CIMPool variant (pool targets)",
    )
    p.add_argument("--loss", choices=("auto", "kl", "mse"), default="auto")
    p.add_argument(
        "--feature-loss",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of the per-layer loss (CiM layer inputs matched to fp32's; 0: off)",
    )
    add_balance_option(p)
    p.add_argument(
        "--downstream",
        metavar="GRAPH.onnx[,GRAPH2.onnx]",
        help="frozen fp32 graphs fed the first output, whose outputs are distilled too",
    )
    p.add_argument(
        "--window",
        type=int,
        metavar="N",
        help="consecutive rows of the first output each downstream input reads (default 1)",
    )
    p.add_argument(
        "--keep-sensitive",
        type=int,
        default=0,
        metavar="N",
        help="the N pooled layers whose pooling costs the most fidelity stay at 8 bits "
        "(weight-pool's keep_sensitive; pool targets)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads (1: reproducible)"
    )
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


def downstream_from_args(args: argparse.Namespace, graph: Graph) -> Downstream | None:
    """The --downstream graphs and --window, checked against ``graph``'s first output before
    any training (a graph that cannot read its rows is refused here, not at step 1)."""
    from ..frontend import import_onnx
    from ..train.distill import Downstream

    if args.downstream is None:
        if args.window is not None:
            raise CimcError(f"--window {args.window}: give the graphs it feeds with --downstream")
        return None
    window = 1 if args.window is None else args.window
    if window < 1:
        raise CimcError(f"--window {window}: give at least 1 (rows each downstream input reads)")
    paths = [p for p in args.downstream.split(",") if p]
    for path in paths or [""]:
        if not Path(path).is_file():
            raise CimcError(
                f"--downstream {path!r}: no such file; give ONNX graphs, comma-separated"
            )
    down = Downstream(tuple(import_onnx(p) for p in paths), window)
    down.modules(tuple(graph.values[graph.outputs[0]].shape))
    return down


def add_balance_option(p: argparse.ArgumentParser, scope: str = "") -> None:
    """``--balance [P]`` (DistillConfig.balance), also offered by benchmarks/finetune.py."""
    p.add_argument(
        "--balance",
        type=float,
        nargs="?",
        const=1.0,
        default=0.0,
        metavar="P",
        help=f"{scope}class scores: weight each row's KL by the frequency of fp32's top class in "
        "the batch to the power -P (alone: 1, every class alike; 0: off), so a dominant class, "
        "e.g. a CTC blank, no longer drowns the rare ones",
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
    from ..train.distill import (
        DistillConfig,
        check_exportable,
        distill,
        export,
        load_samples,
        output_error,
        untrained_student,
    )

    torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch_size < 1:
        raise CimcError(f"--steps {args.steps} --batch-size {args.batch_size}: give at least 1")
    if not args.feature_loss >= 0:  # also refuses nan
        raise CimcError(f"--feature-loss {args.feature_loss}: give a weight >= 0 (0: off)")
    if not args.balance >= 0:
        raise CimcError(f"--balance {args.balance}: give a power >= 0 (1: every class alike)")
    scheme = scheme_for(args.target, args.scheme)
    if args.keep_sensitive < 0 or (args.keep_sensitive and scheme.kind != "pool"):
        raise CimcError(
            f"--keep-sensitive {args.keep_sensitive}: give N >= 0 pooled layers to keep at 8 "
            f"bits, on a pool target (--target {args.target} pools no layer)"
        )
    cfg = replace(
        DistillConfig(),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=args.loss,
        features=args.feature_loss,
        balance=args.balance,
        seed=args.seed,
    )
    graph = import_onnx(args.model, parse_input_shapes(args.input_shape))
    check_exportable(graph, args.model, scheme=scheme)
    downstream = downstream_from_args(args, graph)
    data = load_samples(args.data, graph, cfg.min_samples)
    out = output_folder(args.out)
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
            downstream=downstream,
            keep_sensitive=args.keep_sensitive,
            log_path=out / "finetune.log.jsonl",
            checkpoint=out / "checkpoint.pt",
            progress=lambda done, total, loss: bar.update(task, completed=done, loss=loss),
        )
    # the fit on the first FIT_SAMPLES distillation samples, before and after
    fit_data = {k: v[:FIT_SAMPLES] for k, v in data.items()}
    before = untrained_student(graph, scheme, data, cfg, model.kept)
    fit = {
        "post_training": output_error(graph, before, fit_data),
        "fine_tuned": output_error(graph, model, fit_data),
        "samples": len(next(iter(fit_data.values()))),
    }
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
        "fit": fit,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(
        f"fit to fp32 on {fit['samples']} distillation samples (squared error over fp32's "
        f"variance): {fit['post_training']:.4f} post-training -> {fit['fine_tuned']:.4f} "
        "fine-tuned"
    )
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
