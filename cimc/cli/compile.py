"""``cimc compile`` (ONNX -> .cimx program) and ``cimc disasm`` (a program as text)."""

from __future__ import annotations

import argparse
import sys

from .args import parse_calibration, parse_input_shapes, parse_sets


def cmd_compile(args: argparse.Namespace) -> int:
    from ..compiler import compile as compile_model
    from ..report.bits import storage_report
    from ..report.tables import compile_table, console

    out = console()
    with out.status("compiling") as status:
        program = compile_model(
            args.model,
            target=args.target,
            pipeline=args.pipeline,
            input_shapes=parse_input_shapes(args.input_shape),
            calibration=parse_calibration(args.calibration),
            overrides=parse_sets(args.set),
            progress=lambda i, name: status.update(f"pass {i}: {name}"),
        )
        program.save(args.output)
    out.print(compile_table(program))
    rep = storage_report(program.graph)
    counts = program.counts()
    out.print(
        f"wrote {args.output}: {len(program.instructions):,} instructions "
        f"({', '.join(f'{k} {v:,}' for k, v in counts.items())}); "
        f"{rep['bits_per_weight']:.3f} bits/weight overall, "
        f"{rep['compressed_bits_per_weight']:.3f} per compressed weight; "
        f"modelled CiM cycles {program.graph.meta['modelled_cim_cycles']:,}"
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
    p.add_argument(
        "--set", action="append", metavar="NAME=VALUE", help="override a target parameter"
    )
    p.add_argument("--pipeline", help="pass pipeline (default: the target's compression pipeline)")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    p.add_argument(
        "--calibration", metavar="N|FILE.npz", help="N random samples or an .npz of inputs"
    )
    p.add_argument("-o", "--output", required=True, help="output .cimx path")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("disasm", help="print a .cimx program readably")
    p.add_argument("program")
    p.add_argument("--limit", type=int, default=12, help="instructions shown per layer")
    p.add_argument("--full", action="store_true", help="show every instruction")
    p.set_defaults(func=cmd_disasm)
