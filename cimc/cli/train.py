"""``cimc train``: pre-train, fine-tune one scheme, export ONNX + assignment, compile, report.

    cimc train --data chars --scheme cimpool-keep0.5 --out runs/chars-keep0.5

Writes into --out: ``fp32.pt`` (the pre-trained state dict; reused with --pretrained),
``model.onnx`` and ``model.npz`` (the learned assignment, CIMPool schemes only),
``train.log.jsonl`` (one line per epoch of every run), and ``summary.json`` (configuration,
validation and test accuracy in torch and through the compiled graph, the compile pipeline,
the storage report's bits per weight). Also usable as ``python -m cimc.cli train``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..atomic import atomic_path, output_folder, write_text_atomic
from ..errors import CimcError
from .args import parse_ints, positive_float, positive_int

SCHEME_NAMES = (
    "fp32",
    "int8",
    "int4",
    "cimpool-pool-only",
    "cimpool-keep1",
    "cimpool-keep0.5",
    "cimpool-keep0.25",
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a CIMPool / int8 / int4 model on digits or chars, export ONNX + assignment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", choices=("digits", "chars"), default="digits")
    p.add_argument("--scheme", choices=SCHEME_NAMES, default="cimpool-keep0.5")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--epochs", type=positive_int, default=20, help="fp32 pre-training epochs")
    p.add_argument("--finetune-epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument(
        "--lr", type=positive_float, default=3e-3, help="pre-training lr (fine-tuning: 1e-3)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--widths", default="128,128,256", help="stem/stage widths of the ResNet")
    p.add_argument(
        "--subset", metavar="TRAIN,VAL,TEST", help="use only the first n images of each split"
    )
    p.add_argument("--pretrained", help="fp32.pt from an earlier run: skip pre-training")
    p.add_argument(
        "--refresh", type=positive_int, default=4, help="CIMPool: recompute indices every n steps"
    )
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads (1: reproducible)"
    )
    p.add_argument("--no-compile", action="store_true", help="skip compiling the export")
    p.set_defaults(func=cmd_train)


def load_pretrained(path: str) -> dict:
    """The fp32 state dict of an earlier run's fp32.pt (--pretrained), or a CimcError."""
    import torch

    if not Path(path).is_file():
        raise CimcError(f"--pretrained {path} does not exist; give the fp32.pt of an earlier run")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises many kinds on a file that is not its own
        raise CimcError(
            f"--pretrained {path} is not a torch state dict ({type(exc).__name__}); give the "
            "fp32.pt an earlier `cimc train` wrote"
        ) from None
    if not isinstance(state, dict):
        raise CimcError(f"--pretrained {path} holds no state dict; give an earlier run's fp32.pt")
    return state


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise CimcError("cimc train needs torch: pip install 'cimc[train]'") from None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..train import data as D
    from ..train import finetune as T
    from ..train.evaluate import compile_and_score
    from ..train.export import export_model
    from ..train.layers import get_scheme

    torch.set_num_threads(args.threads)
    subset = parse_ints(args.subset, "--subset", 3) if args.subset else None
    widths = parse_ints(args.widths, "--widths")  # options first: a refusal leaves no --out
    out = output_folder(args.out)
    log_path = out / "train.log.jsonl"
    log_path.write_text("")
    console = Console(stderr=True)
    splits = D.load(args.data)
    if subset:
        splits = splits.subset(*subset)
    cfg = T.TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        refresh=args.refresh,
    )
    scheme = get_scheme(args.scheme)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        kw = {"log_path": log_path, "progress": progress}
        if args.pretrained:
            fp32 = T.build_model(splits, widths, args.seed)
            try:
                fp32.load_state_dict(load_pretrained(args.pretrained))
            except RuntimeError as exc:  # another network's weights
                raise CimcError(
                    f"--pretrained {args.pretrained} does not fit this network ({str(exc)[:80]}); "
                    "give the fp32.pt of a run with the same --widths and data"
                ) from None
        else:
            fp32 = T.pretrain(splits, cfg, widths, **kw)
            with atomic_path(out / "fp32.pt") as tmp:
                torch.save(fp32.state_dict(), tmp)
        model = T.finetune(fp32, scheme, splits, T.finetune_config(cfg, args.finetune_epochs), **kw)
    example = torch.from_numpy(splits.x_train[:1])
    exported = export_model(model, out / "model.onnx", example)
    summary = {
        "data": splits.name,
        "split": splits.sizes(),
        "scheme": scheme.to_dict(),
        "label": scheme.label,
        "config": cfg.to_dict(),
        "finetune_epochs": args.finetune_epochs,
        "widths": list(widths),
        "val_acc": model.best_val_acc,
        "test_acc": T.accuracy(model, splits.x_test, splits.y_test),
        "onnx": str(exported.onnx),
        "assignment": str(exported.assignment) if exported.assignment else None,
        "pipeline": exported.pipeline,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    if not args.no_compile:
        summary.update(compile_and_score(exported, splits, model, cfg.calib))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(
        f"{splits.name} {scheme.label}: val {summary['val_acc']:.4f} test {summary['test_acc']:.4f}"
    )
    if "compiled_test_acc" in summary:
        print(
            f"compiled: test {summary['compiled_test_acc']:.4f}, "
            f"{summary['bits_per_compressed_weight']:.3f} bits per compressed weight, "
            f"{summary['bits_per_weight']:.3f} bits per weight overall"
        )
    print(f"pipeline: {exported.pipeline or '(none)'}")
    print(
        f"wrote {out}/: model.onnx" + (", model.npz" if exported.assignment else "") + ", "
        "train.log.jsonl, summary.json"
    )
    return 0
