"""``cimc.compile``: ONNX model -> compressed, tiled, lowered Program for a target."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import ModelLoadError, OptionError
from .frontend import import_onnx
from .ir import Graph
from .limits import check_bytes
from .pass_manager import Instrument, load_calibration, run_pipeline
from .passes_base import PassContext, parse_pipeline
from .program import Program

BACKEND = ("tile", "lower")


def default_pipeline(target) -> str:
    """Compression for the target's macro; the backend passes are appended by ``compile``."""
    from .targets.macros import macro_kind

    return macro_kind(target).default_pipeline(target)


MAX_RANDOM_CALIBRATION = 10_000


def random_calibration(graph: Graph, samples: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded standard-normal inputs, for when no real calibration data is given; the count is
    checked against the memory limit before any is drawn."""
    if not 1 <= samples <= MAX_RANDOM_CALIBRATION:
        raise OptionError(
            f"calibration={samples}: give a sample count in [1, {MAX_RANDOM_CALIBRATION:,}] "
            "(statistics settle within hundreds; more only costs time)"
        )
    per_sample = sum(graph.values[i].nbytes for i in graph.inputs)
    check_bytes(samples * per_sample, f"calibration with {samples:,} random samples")
    rng = np.random.default_rng(seed)
    return [
        {
            i: rng.standard_normal(graph.values[i].shape).astype(graph.values[i].dtype)
            for i in graph.inputs
        }
        for _ in range(samples)
    ]


def compile(  # noqa: A001  (the public name the issue asks for)
    src: str | os.PathLike | onnx.ModelProto | Graph,
    target: Any = "cimpool-sram",
    pipeline: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    calibration: Any = None,
    overrides: Mapping[str, Any] | None = None,
    instruments: Sequence[Instrument] = (),
    progress: Callable[[int, str], None] | None = None,
) -> Program:
    """Compile a model for a target preset, TOML file or ``Target``.

    ``calibration``: a list of feed dicts, an .npz path, or an int N for N seeded random inputs
    (the default is 8 random inputs: fine for timing studies, use real data for accuracy).
    """
    from .targets.params import Target, load_target

    tgt = target if isinstance(target, Target) else load_target(target, dict(overrides or {}))
    if isinstance(tgt, Target) and overrides:
        tgt = tgt.replace(**overrides)
    if isinstance(src, Graph):
        graph, digest = src.copy(), ""
    else:
        digest = _sha256(src)
        graph = import_onnx(src, input_shapes)
    graph.meta["source_sha256"] = digest
    if calibration is None or isinstance(calibration, int):
        calibration = random_calibration(graph, 8 if calibration is None else calibration)
    feeds = load_calibration(calibration, graph)
    pipe = parse_pipeline(pipeline or default_pipeline(tgt))
    names = [p.name for p in pipe]
    extra = [b for b in BACKEND if b not in names]
    pipe = parse_pipeline(",".join([str(pipe)] + extra) if str(pipe) else ",".join(extra))
    ctx = PassContext(calibration=feeds, target=tgt)
    steps = [] if progress is None else [_Progress(progress, len(pipe))]
    results = run_pipeline(graph, pipe, ctx, list(instruments) + steps)
    program = results[-1].product  # lower is always last
    program.manifest["pipeline"] = str(pipe)
    return program


class _Progress(Instrument):
    def __init__(self, report: Callable[[int, str], None], total: int):
        self.report, self.total = report, total

    def before(self, index, pass_, graph) -> None:
        self.report(index, str(pass_))


def _sha256(src: Any) -> str:
    if isinstance(src, onnx.ModelProto):
        return hashlib.sha256(src.SerializeToString()).hexdigest()
    if not Path(src).is_file():
        raise ModelLoadError(f"{src}: no such model file; give the path of an .onnx model")
    return hashlib.sha256(Path(src).read_bytes()).hexdigest()
