"""``cimc run``: simulate a .cimx program and report outputs, cycles, energy and area."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CimcError, FeedError
from ..ir import Graph

if TYPE_CHECKING:
    from ..program import Program


def load_inputs(items: Sequence[str] | None, graph: Graph) -> tuple[dict[str, np.ndarray], bool]:
    """Feeds from --input NAME=FILE.npy, or seeded random ones (second value: were they random)."""
    if not items:
        rng = np.random.default_rng(0)
        feeds = {
            i: rng.standard_normal(graph.values[i].shape).astype(graph.values[i].dtype)
            for i in graph.inputs
        }
        return feeds, True
    feeds = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise CimcError(f"--input {item!r}: expected NAME=FILE.npy")
        if not Path(path).is_file():
            raise CimcError(f"--input {item!r}: {path} does not exist")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise FeedError(f"--input {item!r}: {path} is not a .npy array ({exc})") from None
        if not isinstance(feeds[name], np.ndarray):
            raise FeedError(f"--input {item!r}: {path} is an .npz archive; give one .npy array")
        if feeds[name].dtype.kind in "fc" and not np.isfinite(feeds[name]).all():
            raise FeedError(f"--input {item!r}: {path} holds NaN or infinity; give finite inputs")
    return feeds, False


def check_source(model: str, program: Program) -> str | None:
    """Refuse a --compare model other than the one the program was compiled from (comparing
    against another model would report a meaningless match); a warning when it cannot tell."""
    path = Path(model)
    if not path.is_file():
        raise CimcError(
            f"--compare {model}: no such file; give the ONNX model the program came from"
        )
    expected = program.manifest.get("source_sha256", "")
    if not expected:
        return f"warning: the program records no source model digest; cannot check {model}"
    if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        raise CimcError(
            f"--compare {model}: this is not the model the program was compiled from (its sha256 "
            f"differs from the program's source_sha256 {expected[:12]}...); give that model"
        )
    return None


def _describe(name: str, value: np.ndarray) -> str:
    text = f"output {name}: shape {tuple(value.shape)}, "
    text += f"mean {value.mean():.4g}, std {value.std():.4g}"
    if value.ndim >= 2:
        text += f", argmax {value.reshape(value.shape[0], -1).argmax(1)[:8].tolist()}"
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from ..atomic import check_output, write_text_atomic
    from ..program import load_program
    from ..report.fidelity import compare_with_onnx
    from ..report.plot import check_plot_path
    from ..report.tables import console, result_lines, result_table
    from ..targets.simulator import simulate

    if args.json:
        check_output(args.json)
    if args.plot:
        check_plot_path(args.plot)
    out = console()
    program = load_program(args.program)
    if args.compare and (warning := check_source(args.compare, program)):
        out.print(warning)
    feeds, random = load_inputs(args.input, program.graph)
    if random:
        out.print("no --input given: using seeded random standard-normal inputs")
    result = simulate(program, feeds)
    for name, value in result.outputs.items():
        out.print(_describe(name, value))
    out.print(result_table(result))
    for line in result_lines(result):
        out.print(line)
    report = json.loads(result.to_json())
    if args.compare:
        cmp = compare_with_onnx(args.compare, feeds, result.outputs)
        report["compare"] = cmp
        for name, c in cmp.items():
            out.print(
                f"vs onnxruntime fp32 ({args.compare}) {name}: cosine {c['cosine']:.4f}, "
                f"top-1 agreement {c['top1_agreement']:.3f}"
            )
            if c["reference_constant"]:
                out.print(
                    f"warning: the reference output {name} is constant, so the agreement above "
                    "says nothing; check the model's weights and inputs"
                )
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=1, sort_keys=True))
    if args.plot:
        from ..report.plot import plot_layers

        plot_layers(result, program, args.plot)
        out.print(f"wrote {args.plot}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="simulate a .cimx program: outputs, cycles, energy, area")
    p.add_argument("program")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    p.add_argument("--compare", metavar="MODEL.onnx", help="compare outputs with onnxruntime fp32")
    p.add_argument(
        "--json",
        metavar="OUT",
        help="write the result as JSON (cycles, energy, area, per layer; each output's shape, "
        "mean and std)",
    )
    p.add_argument("--plot", metavar="OUT.png", help="plot per-layer cycles by unit")
    p.set_defaults(func=cmd_run)
