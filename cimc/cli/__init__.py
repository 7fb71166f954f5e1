"""The ``cimc`` command line: one module per command family, each adding its subparsers.

The contract every command keeps: a :class:`cimc.CimcError` (or a malformed argument) is one
line on stderr and exit status 2; anything else is a bug, reported in one line naming a file
that holds its traceback, exit status 1; Ctrl-C is one line and exit status 130; a closed
stdout (``cimc targets --json | head -1``) ends the command quietly. Command modules import
their heavy dependencies (rich, the compiler, the simulator, onnxruntime, matplotlib, torch)
inside the command, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..errors import CimcError
from . import compare, compile, demo, finetune, inspect, run, search, sensitivity, targets, train

FAMILIES = (inspect, targets, compile, run, compare, demo, train, finetune, search, sensitivity)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (subcommand parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        print(f"cimc: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are written atomically, so none is half-done
        print("cimc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away: send what is still buffered nowhere, so exit stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in cimc: keep the traceback, say where it is
        path = _save_traceback()
        print(
            f"cimc: internal error (a bug in cimc, please report it): {type(exc).__name__}: "
            f"{_one_line(exc)[:200]}; traceback saved to {path}",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _save_traceback() -> Path:
    """Write the current exception's traceback to a new file in the temporary folder."""
    from ..atomic import write_text_atomic

    name = f"cimc-traceback-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    return write_text_atomic(Path(tempfile.gettempdir()) / name, traceback.format_exc())
