"""``cimc inspect``: the per-layer table of an ONNX model."""

from __future__ import annotations

import argparse
import json
import sys

from .args import parse_input_shapes


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..frontend import import_onnx
    from ..report.layers import summarize
    from ..report.tables import console, inspect_table, inspect_totals

    graph = import_onnx(args.model, parse_input_shapes(args.input_shape))
    report = summarize(graph)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    out = console()
    out.print(inspect_table(args.model, report))
    out.print(inspect_totals(report))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="per-layer table of an ONNX model")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=D0,D1,...",
        help="bind a dynamic input shape (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_inspect)
