"""``cimc compare``: programs side by side (cycles, latency, energy, chip and used area, bits per
weight), each figure with its ratio to the first program's.

The programs are .cimx files, or one ONNX model compiled for each ``--target`` in turn (in the
order given; the first is the reference). Only the timing model runs: no inputs are needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CimcError
from .args import parse_sets
from .compile import add_model_options, compile_from_args

if TYPE_CHECKING:
    from ..program import Program


def _programs(args: argparse.Namespace, status) -> list[tuple[str, Program]]:
    """(label, Program) of every program to compare, in order."""
    from ..program import load_program
    from ..targets.params import load_target

    models = [s for s in args.sources if Path(s).suffix == ".onnx"]
    if models:
        for target in args.target or []:  # a misspelt target is named, not miscounted
            load_target(target, parse_sets(args.set))
        if len(args.sources) != 1 or len(args.target or []) < 2:
            raise CimcError(
                "cimc compare: give one MODEL.onnx with two or more --target options "
                "(e.g. --target cimpool-sram --target int8-sram), or two or more .cimx files"
            )
        programs = []
        for target in args.target:
            status.update(f"compiling for {target}")
            program = compile_from_args(args, models[0], target, lambda i, name: None)
            programs.append((Path(models[0]).name, program))
        return programs
    if args.target or args.set or args.input_shape or args.calibration:
        raise CimcError(
            "cimc compare: --target, --set, --input-shape and --calibration apply to an ONNX "
            "model; .cimx programs are already compiled (drop those options)"
        )
    if len(args.sources) < 2:
        raise CimcError(
            "cimc compare: give two or more .cimx files (or one MODEL.onnx with two or more "
            "--target options)"
        )
    return [(s, load_program(s)) for s in args.sources]


def cmd_compare(args: argparse.Namespace) -> int:
    from ..atomic import write_text_atomic
    from ..report.compare import compare_rows, program_figures
    from ..report.tables import compare_table, console
    from ..targets.simulator import simulate

    out = console()
    with out.status("loading") as status:
        rows = []
        for label, program in _programs(args, status):
            status.update(f"timing {label}")
            rows.append(program_figures(label, program, simulate(program, functional=False)))
    rows = compare_rows(rows)
    out.print(compare_table(rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=1, sort_keys=True))
        out.print(f"wrote {args.json}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="programs side by side: cycles, latency, energy, area, bits per weight"
    )
    p.add_argument("sources", nargs="+", metavar="A.cimx|MODEL.onnx")
    p.add_argument(
        "--target",
        action="append",
        metavar="PRESET|FILE.toml",
        help="with MODEL.onnx: compile for this target (repeat; the first is the reference)",
    )
    add_model_options(p)
    p.add_argument("--json", metavar="OUT", help="write the rows and ratios as JSON")
    p.set_defaults(func=cmd_compare)
