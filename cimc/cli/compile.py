"""``cimc compile`` (ONNX -> .cimx program) and ``cimc disasm`` (a program as text)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .args import parse_calibration, parse_input_shapes, parse_sets, positive_int

if TYPE_CHECKING:
    from ..program import Program


def compile_from_args(
    args: argparse.Namespace, model: str, target: str, progress: Callable[[int, str], None]
) -> Program:
    """Compile ``model`` for ``target`` with the options of :func:`add_model_options`."""
    from ..compiler import compile as compile_model

    return compile_model(
        model,
        target=target,
        pipeline=getattr(args, "pipeline", None),
        input_shapes=parse_input_shapes(args.input_shape),
        calibration=parse_calibration(args.calibration),
        overrides=parse_sets(args.set),
        progress=progress,
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options that say how a model is compiled, besides target and pipeline."""
    p.add_argument(
        "--set", action="append", metavar="NAME=VALUE", help="override a target parameter"
    )
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    p.add_argument(
        "--calibration", metavar="N|FILE.npz", help="N random samples or an .npz of inputs"
    )


def cmd_compile(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..errors import OutputError
    from ..report.bits import storage_report
    from ..report.layers import tile_agreement
    from ..report.tables import agreement_line, compile_table, console, result_lines
    from ..targets.simulator import simulate

    check_output(args.output)
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise OutputError(f"-o {args.output} is the model being compiled; give a .cimx path")
    out = console()
    with out.status("compiling") as status:
        program = compile_from_args(
            args, args.model, args.target, lambda i, name: status.update(f"pass {i}: {name}")
        )
        program.save(args.output)
        status.update("timing the program")
        result = simulate(program, functional=False)
    out.print(compile_table(program, result))
    out.print(agreement_line(tile_agreement(program, result)))
    out.print("simulated (timing model; `cimc run` reports the same figures):")
    for line in result_lines(result):
        out.print("  " + line)
    rep = storage_report(program.graph)
    counts = program.counts()
    pooled = rep["compressed_bits_per_weight"]  # NaN when no layer is weight-pool compressed
    out.print(
        f"wrote {args.output}: {len(program.instructions):,} instructions "
        f"({', '.join(f'{k} {v:,}' for k, v in counts.items())}); "
        f"{rep['bits_per_weight']:.3f} bits/weight overall"
        + (f", {pooled:.3f} per compressed weight" if math.isfinite(pooled) else "")
    )
    if args.calibration is None:
        out.print("calibration: 8 seeded random inputs (pass --calibration FILE.npz for real data)")
    return 0


def cmd_disasm(args: argparse.Namespace) -> int:
    from ..program import load_program
    from ..report.disasm import disasm_text

    sys.stdout.write(disasm_text(load_program(args.program), None if args.full else args.limit))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile an ONNX model to a .cimx program")
    p.add_argument("model")
    p.add_argument("--target", default="cimpool-sram", help="preset name or TOML file")
    p.add_argument("--pipeline", help="pass pipeline (default: the target's compression pipeline)")
    add_model_options(p)
    p.add_argument("-o", "--output", required=True, help="output .cimx path")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("disasm", help="print a .cimx program readably")
    p.add_argument("program")
    p.add_argument("--limit", type=positive_int, default=12, help="instructions shown per layer")
    p.add_argument("--full", action="store_true", help="show every instruction")
    p.set_defaults(func=cmd_disasm)
