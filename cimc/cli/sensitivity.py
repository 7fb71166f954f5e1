"""``cimc sensitivity``: per CiM layer, the output fidelity when only that layer is compressed,
least faithful first: the layers to keep at 8 bits with ``keep_sensitive=N``."""

from __future__ import annotations

import argparse
import json

from .args import parse_input_shapes, parse_sets


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from ..atomic import check_output, write_text_atomic
    from ..compiler import default_pipeline
    from ..frontend import import_onnx
    from ..report.plot import check_plot_path
    from ..report.tables import console, sensitivity_table
    from ..search.evaluate import load_data
    from ..sensitivity import layer_sensitivity
    from ..targets.params import load_target

    if args.json:
        check_output(args.json)
    if args.plot:
        check_plot_path(args.plot)

    out = console()
    target = load_target(args.target, parse_sets(args.set))
    graph = import_onnx(args.model, parse_input_shapes(args.input_shape))
    data = load_data(graph, args.data)
    pipeline = args.pipeline or default_pipeline(target)
    with out.status(f"compressing one layer at a time with {pipeline}"):
        rows = layer_sensitivity(
            graph, data.evaluation, pipeline, calibration=data.calibration, target=target
        )
    title = f"{graph.name} on {target.name}: output fidelity with only one layer compressed"
    out.print(sensitivity_table(rows, title))
    source = "seeded random inputs (no --data)" if data.random else args.data
    out.print(f"pipeline: {pipeline}")
    out.print(
        f"data: {len(data.calibration)} samples calibrate, {len(data.evaluation)} measure; {source}"
    )
    if rows:
        out.print(
            f"most sensitive: {rows[0]['layer']}; keep the N most sensitive at 8 bits with "
            "keep_sensitive=N on weight-pool or quantize-weights"
        )
    if args.json:
        report = {
            "model": args.model,
            "target": target.name,
            "pipeline": pipeline,
            "data": None if data.random else args.data,
            "calibration_samples": len(data.calibration),
            "evaluation_samples": len(data.evaluation),
            "layers": rows,
        }
        write_text_atomic(args.json, json.dumps(report, indent=1, sort_keys=True))
        out.print(f"wrote {args.json}")
    if args.plot:
        from ..report.plot import plot_sensitivity

        plot_sensitivity(rows, title, args.plot)
        out.print(f"wrote {args.plot}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sensitivity", help="per CiM layer: output fidelity when only that layer is compressed"
    )
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--target", default="cimpool-sram", help="preset name or TOML file")
    p.add_argument("--pipeline", help="compression pipeline (default: the target's)")
    p.add_argument("--data", help=".npz of input samples named after the inputs")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    p.add_argument(
        "--set", action="append", metavar="NAME=VALUE", help="override a target parameter"
    )
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart")
    p.set_defaults(func=cmd_sensitivity)
