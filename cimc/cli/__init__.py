"""The ``cimc`` command line: one module per command family, each adding its subparsers.

Every subcommand turns a :class:`cimc.CimcError` into one line on stderr and exit status 2;
anything else is a bug and keeps its traceback. Command modules import their heavy
dependencies (rich, the compiler, the simulator, onnxruntime, matplotlib, torch) inside the
command, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import CimcError
from . import compile, demo, inspect, run, search, targets, train

FAMILIES = (inspect, targets, compile, run, demo, train, search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cimc", description="Compile ONNX models for SRAM compute-in-memory and simulate them."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CimcError as exc:
        print(f"cimc: error: {exc}", file=sys.stderr)
        return 2
