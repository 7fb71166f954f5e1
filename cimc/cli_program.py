"""CLI commands around programs: ``targets``, ``compile``, ``disasm``, ``run`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .atomic import atomic_path
from .errors import CimcError

console = Console(width=max(120, Console().width))


def parse_sets(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CimcError(f"--set {item!r}: expected NAME=VALUE, e.g. --set L1_bw=64")
        out[key.strip()] = value.strip()
    return out


def parse_calibration(value: str | None) -> Any:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    if not Path(value).is_file():
        raise CimcError(f"--calibration {value!r}: give a sample count N or an existing .npz file")
    return value


# ---- targets ----
def cmd_targets(args: argparse.Namespace) -> int:
    from .targets.params import SPECS, load_target, presets

    loaded = {name: load_target(name) for name in sorted(presets())}
    if args.json:
        json.dump({k: v.to_dict() for k, v in loaded.items()}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    table = Table(title="target presets (set any value with --set NAME=VALUE)")
    table.add_column("parameter")
    table.add_column("unit")
    for name in loaded:
        table.add_column(name, justify="right")
    for param, spec in SPECS.items():
        table.add_row(param, spec.unit, *[f"{getattr(t, param)}" for t in loaded.values()])
    console.print(table)
    return 0


# ---- compile ----
def compile_summary(program) -> Table:
    from .storage import storage_report

    graph = program.graph
    storage = {r["name"]: r for r in storage_report(graph)["layers"]}
    table = Table(title=f"{graph.name} for {program.manifest['target']['name']}")
    for col in (
        "layer",
        "op",
        "scheme",
        "bits/w",
        "tiles x rep",
        "order",
        "instr",
        "modelled cycles",
    ):
        table.add_column(
            col, justify="left" if col in ("layer", "op", "scheme", "order") else "right"
        )
    ins = program.instructions
    for li, entry in enumerate(program.layers):
        if entry["kind"] != "cim":
            continue
        node = graph.node(entry["node"])
        m = node.meta["mapping"]
        s = storage[node.name]
        table.add_row(
            node.name,
            node.op.removeprefix("cimc."),
            s["scheme"],
            f"{s['bits_per_weight']:.3f}",
            f"{m['tiles']} x {m['rep']}",
            m["order"],
            str(int((ins["layer"] == li).sum())),
            f"{m['modelled_cycles']:,}",
        )
    return table


def cmd_compile(args: argparse.Namespace) -> int:
    from .cli import parse_input_shapes
    from .compiler import compile as compile_model
    from .storage import storage_report

    with console.status("compiling") as status:
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
    console.print(compile_summary(program))
    rep = storage_report(program.graph)
    counts = program.counts()
    console.print(
        f"wrote {args.output}: {len(program.instructions):,} instructions "
        f"({', '.join(f'{k} {v:,}' for k, v in counts.items())}); "
        f"{rep['bits_per_weight']:.3f} bits/weight overall, "
        f"{rep['compressed_bits_per_weight']:.3f} per compressed weight; "
        f"modelled CiM cycles {program.graph.meta['modelled_cim_cycles']:,}"
    )
    if args.calibration is None:
        console.print(
            "calibration: 8 seeded random inputs (pass --calibration FILE.npz for real data)"
        )
    return 0


# ---- disasm ----
def disasm_text(program, limit: int | None = None) -> str:
    from .program import OPCODES

    lines = [
        f"; cimc program, format {program.manifest['format_version']}, "
        f"target {program.manifest['target']['name']}",
        f"; pipeline {program.manifest['pipeline']}",
        f"; source sha256 {program.manifest['source_sha256'] or '-'}",
    ]
    ins = program.instructions
    for li, entry in enumerate(program.layers):
        sel = np.flatnonzero(ins["layer"] == li)
        lines.append(
            f"\nlayer {li} {entry['node']} ({entry['op']}, {entry['kind']}): "
            f"{len(sel)} instructions"
        )
        shown = sel if limit is None else sel[:limit]
        for i in shown:
            r = ins[i]
            parts = [f"{i:>7}  {OPCODES[r['op']]:<8}"]
            if r["ma"] >= 0:
                arrays = f"ma={r['ma']}" + (f"+{r['stride']}x{r['span']}" if r["span"] > 1 else "")
                parts.append(arrays)
            for key in ("rows", "bytes", "work", "cycles", "routes"):
                if r[key]:
                    parts.append(f"{key}={r[key]}")
            deps = [str(d) for d in (r["dep0"], r["dep1"]) if d >= 0]
            if deps:
                parts.append("after " + ",".join(deps))
            lines.append("  ".join(parts))
        if limit is not None and len(sel) > limit:
            lines.append(f"         ... {len(sel) - limit} more")
    counts = program.counts()
    lines.append("\n; " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; total {len(ins)}")
    return "\n".join(lines) + "\n"


def cmd_disasm(args: argparse.Namespace) -> int:
    from .program import load_program

    sys.stdout.write(disasm_text(load_program(args.program), None if args.full else args.limit))
    return 0


# ---- run ----
def load_inputs(items: list[str] | None, graph) -> tuple[dict[str, np.ndarray], bool]:
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
        feeds[name] = np.load(path)
    return feeds, False


def compare_with_onnx(model: str, feeds: dict, outputs: dict) -> dict[str, dict[str, float]]:
    """Cosine similarity and top-1 agreement of the simulated outputs vs onnxruntime fp32."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ref = dict(zip(names, sess.run(names, {k: v for k, v in feeds.items()})))
    out = {}
    for name, r in ref.items():
        if name not in outputs:
            continue
        a, b = outputs[name].astype(np.float64), r.astype(np.float64)
        cos = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
        top1 = float(
            np.mean(a.reshape(a.shape[0], -1).argmax(1) == b.reshape(b.shape[0], -1).argmax(1))
        )
        out[name] = {"cosine": cos, "top1_agreement": top1}
    return out


def result_table(result, program) -> Table:
    table = Table(title="per layer")
    for col in ("layer", "op", "cycles", "array busy", "vector busy"):
        table.add_column(col, justify="left" if col in ("layer", "op") else "right")
    ops = {e["node"]: e["op"] for e in program.layers}
    for name, cycles in result.layer_cycles.items():
        units = result.layer_units.get(name, {})
        array = units.get("MVM_POOL", 0) + units.get("MVM_INT", 0)
        vector = units.get("SCALE", 0) + units.get("VEC", 0)
        table.add_row(
            name, ops[name].removeprefix("cimc."), f"{cycles:,}", f"{array:,}", f"{vector:,}"
        )
    return table


def plot_layers(result, program, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.layer_cycles)
    array = [
        result.layer_units.get(n, {}).get("MVM_POOL", 0)
        + result.layer_units.get(n, {}).get("MVM_INT", 0)
        for n in names
    ]
    vector = [
        result.layer_units.get(n, {}).get("SCALE", 0) + result.layer_units.get(n, {}).get("VEC", 0)
        for n in names
    ]
    total = [result.layer_cycles[n] for n in names]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.18), 4.5))
    x = np.arange(len(names))
    ax.bar(x, array, label="array compute (busiest array)")
    ax.bar(x, vector, bottom=array, label="vector unit")
    ax.plot(x, total, "k.", label="layer cycles (wall)")
    ax.set_xticks(x, [n.split("/")[-2] if "/" in n else n for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("cycles")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"{program.graph.name} on {program.manifest['target']['name']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)


def print_result(result, program) -> None:
    e = result.energy_breakdown
    a = result.area_breakdown
    console.print(result_table(result, program))
    console.print(
        f"cycles {result.cycles:,} = {result.latency_s * 1e3:.3f} ms at {result.clock_mhz:g} MHz; "
        f"{result.instructions:,} instructions"
    )
    console.print(
        f"energy {result.energy_pj / 1e6:.3f} uJ ("
        + ", ".join(f"{k} {v / 1e6:.3f}" for k, v in e.items())
        + ")"
    )
    console.print(
        f"area {result.area_mm2:.3f} mm^2 (" + ", ".join(f"{k} {v:.3f}" for k, v in a.items()) + ")"
    )
    busy = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result.utilisation.items())
    console.print(f"utilisation of the busiest unit of each kind: {busy}")


def cmd_run(args: argparse.Namespace) -> int:
    from .program import load_program
    from .targets.simulator import simulate

    program = load_program(args.program)
    feeds, random = load_inputs(args.input, program.graph)
    if random:
        console.print("no --input given: using seeded random standard-normal inputs")
    result = simulate(program, feeds)
    for name, value in result.outputs.items():
        console.print(
            f"output {name}: shape {tuple(value.shape)}, "
            f"mean {value.mean():.4g}, std {value.std():.4g}"
            + (
                f", argmax {value.reshape(value.shape[0], -1).argmax(1)[:8].tolist()}"
                if value.ndim >= 2
                else ""
            )
        )
    print_result(result, program)
    report = json.loads(result.to_json())
    if args.compare:
        cmp = compare_with_onnx(args.compare, feeds, result.outputs)
        report["compare"] = cmp
        for name, c in cmp.items():
            console.print(
                f"vs onnxruntime fp32 ({args.compare}) {name}: cosine {c['cosine']:.4f}, "
                f"top-1 agreement {c['top1_agreement']:.3f}"
            )
    if args.json:
        from .atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(report, indent=1, sort_keys=True))
    if args.plot:
        plot_layers(result, program, args.plot)
        console.print(f"wrote {args.plot}")
    return 0


# ---- demo: the README's main job ----
def _demo_runs(data, targets: list[str]) -> list[dict[str, Any]]:
    """What the demo compiles: the bundled CNN for each target (post-training compression), and
    the ResNet fine-tuned by ``cimc train`` with the pool in the loop (its learned assignment)."""
    cnn = {
        "model": data / "digits_cnn.onnx",
        "test": data / "digits_test.npz",
        "calib": data / "digits_calib.npz",
        "size": 16,
    }
    tuned = {
        "model": data / "digits_cimpool.onnx",
        "test": data / "digits32_test.npz",
        "calib": data / "digits32_calib.npz",
        "size": 32,
    }
    runs = [{**cnn, "label": "CNN, post-training", "target": t, "pipeline": None} for t in targets]
    assignment = data / "digits_cimpool.npz"
    runs.append(
        {
            **tuned,
            "label": "ResNet, fine-tuned (cimc train)",
            "target": "cimpool-sram",
            "pipeline": (
                f"zpack,weight-pool{{assignment={assignment}}},quantize-act,permute-schedule"
            ),
        }
    )
    return runs


def _bits(report: dict[str, Any]) -> str:
    """Bits per weight overall, and per pool-compressed weight when there are any."""
    text = f"{report['bits_per_weight']:.3f}"
    if report["compressed_weights"]:
        text += f" ({report['compressed_bits_per_weight']:.3f})"
    return text


def cmd_demo(args: argparse.Namespace) -> int:
    """Compile the bundled digits models, simulate them on held-out digits, report accuracy."""
    import onnxruntime as ort

    from .compiler import compile as compile_model
    from .storage import storage_report
    from .targets.simulator import simulate

    data = resources.files("cimc") / "data"
    runs = _demo_runs(data, args.target or ["cimpool-sram", "int8-sram", "int4-sram"])
    batch = 8
    table = Table(title="digits: accuracy through the simulated CiM chip vs onnxruntime fp32")
    for col in (
        "model",
        "target",
        "accuracy",
        "fp32",
        "bits/w all (compressed)",
        "cycles/8 img",
        "latency ms",
        "energy uJ",
        "area mm^2",
    ):
        table.add_column(col, justify="left" if col in ("model", "target") else "right")
    for run in runs:
        with np.load(str(run["test"])) as test:
            x, y = test["input"], test["label"]
        n = len(x) if args.samples is None else min(args.samples, len(x))
        n -= n % batch
        x, y = x[:n], y[:n]
        sess = ort.InferenceSession(str(run["model"]), providers=["CPUExecutionProvider"])
        fp32 = sess.run(None, {"input": x})[0].argmax(1)
        with console.status(f"compiling {run['label']} for {run['target']}"):
            program = compile_model(
                str(run["model"]),
                target=run["target"],
                pipeline=run["pipeline"],
                input_shapes={"input": (batch, 1, run["size"], run["size"])},
                calibration=str(run["calib"]),
            )
        logits, result = [], None
        with console.status(f"simulating {n} images on {run['target']}"):
            for start in range(0, n, batch):
                result = simulate(program, {"input": x[start : start + batch]})
                logits.append(result.outputs["logits"])
        acc = float(np.mean(np.concatenate(logits).argmax(1) == y))
        rep = storage_report(program.graph)
        table.add_row(
            run["label"],
            run["target"],
            f"{100 * acc:.2f}%",
            f"{100 * np.mean(fp32 == y):.2f}%",
            _bits(rep),
            f"{result.cycles:,}",
            f"{result.latency_s * 1e3:.3f}",
            f"{result.energy_pj / 1e6:.3f}",
            f"{result.area_mm2:.2f}",
        )
    console.print(f"held-out digits: {n} images, never used in training or calibration")
    console.print(table)
    console.print(
        "CIMPool needs fine-tuning with the pool in the loop: post-training compression of the CNN "
        "loses the predictions, the fine-tuned ResNet keeps them at ~0.56 bits per weight."
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("targets", help="list target presets and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_targets)

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

    p = sub.add_parser("run", help="simulate a .cimx program: outputs, cycles, energy, area")
    p.add_argument("program")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    p.add_argument("--compare", metavar="MODEL.onnx", help="compare outputs with onnxruntime fp32")
    p.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="plot per-layer cycles by unit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="compile + simulate the bundled digits CNN on held-out digits")
    p.add_argument("--target", action="append", help="target preset (repeatable)")
    p.add_argument("--samples", type=int, help="number of test images (default: all 360)")
    p.set_defaults(func=cmd_demo, target=None)
