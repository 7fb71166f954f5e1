"""``cimc targets`` and ``cimc passes``: what the compiler offers, as tables or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _dump(obj: Any) -> int:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from ..report.tables import console, targets_table
    from ..targets.params import SPECS, load_target, presets

    loaded = {name: load_target(name) for name in sorted(presets())}
    if args.json:
        return _dump({k: v.to_dict() for k, v in loaded.items()})
    console().print(targets_table(loaded, SPECS))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from ..passes_base import describe_passes
    from ..report.tables import console, passes_table

    passes = describe_passes()
    if args.json:
        return _dump(passes)
    console(140).print(passes_table(passes))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("passes", help="list registered passes with their options and defaults")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_passes)

    p = sub.add_parser("targets", help="list target presets and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_targets)
