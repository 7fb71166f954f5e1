"""The ``cimc`` command line.

Every subcommand turns a :class:`cimc.CimcError` into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import CimcError


def parse_input_shapes(items: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x=1,3,224,224"]`` -> ``{"x": (1, 3, 224, 224)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise CimcError(
                f"--input-shape {item!r}: expected NAME=D0,D1,..., e.g. input=1,3,224,224"
            ) from None
    return shapes


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .frontend import import_onnx
    from .summary import summarize

    graph = import_onnx(args.model, parse_input_shapes(args.input_shape))
    report = summarize(graph)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    table = Table(title=f"{args.model}: {report['model']}", show_lines=False)
    for col, justify in (
        ("#", "right"),
        ("layer", "left"),
        ("op", "left"),
        ("input", "left"),
        ("output", "left"),
        ("params", "right"),
        ("MACs", "right"),
        ("unit", "left"),
    ):
        table.add_column(col, justify=justify)
    for i, r in enumerate(report["layers"]):
        table.add_row(
            str(i),
            r["name"],
            r["op"],
            " ".join("x".join(map(str, s)) for s in r["inputs"]) or "-",
            " ".join("x".join(map(str, s)) for s in r["outputs"]),
            _fmt_int(r["params"]),
            _fmt_int(r["macs"]),
            r["unit"],
        )
    t = report["totals"]
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print(
        f"{t['layers']} layers ({t['cim_layers']} on CiM arrays), "
        f"{_fmt_int(t['params'])} parameters ({_fmt_int(t['cim_params'])} in CiM layers), "
        f"{_fmt_int(t['macs'])} MACs ({100 * t['cim_macs'] / max(t['macs'], 1):.1f}% on CiM)"
    )
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .passes_base import describe_passes

    passes = describe_passes()
    if args.json:
        json.dump(passes, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    table = Table(title="registered passes")
    for col in ("pass", "options (defaults)", "searchable", "what it does"):
        table.add_column(col, overflow="fold")
    for p in passes:
        opts = ", ".join(f"{k}={v}" for k, v in p["options"].items()) or "-"
        table.add_row(p["name"], opts, ", ".join(p["search_space"]) or "-", p["summary"])
    Console(width=max(140, Console().width)).print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cimc", description="Compile ONNX models for SRAM compute-in-memory and simulate them."
    )
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("passes", help="list registered passes with their options and defaults")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_passes)

    from .cli_program import add_parsers

    add_parsers(sub)
    from .train.cli import add_parser as add_train_parser  # torch is imported only when run

    add_train_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CimcError as exc:
        print(f"cimc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
