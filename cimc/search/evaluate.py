"""One evaluation path: config -> compressed graph (cached) -> program -> Metrics.

Stages are cached. The compressed graph depends on the model, the compression pipeline, the
calibration data and the target parameters tied to pass options (the scheme, vector, pool,
activation bits); its key is the digest of those. It is kept in memory (per process, the last
few: ``_RecentGraphs``) and pickled in the study folder, so configs that differ only in hardware
re-run only the backend (tile, lower) and the timing model, and fidelity is computed once per
compressed graph: the hardware parameters the search varies beside it do not change the numerics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CimcError
from ..sample_files import read_samples
from .cache_limit import CACHE_GB, mark_used, trim
from .space import Space

HARDWARE_PASSES = ("permute-schedule",)
"""Compression-pipeline passes that read hardware parameters the search varies; they run in the
backend stage, not in the cached compression stage, once per compressed graph and values of the
parameters they read (``_scheduled``: a pass added here must add what it reads to that key)."""

_MISSING = re.compile(r"([\d,]+) bytes are missing")
_MEMORY: dict[str, Any] = {}  # this process's sources (model digest, data, reference outputs)


class _RecentGraphs(OrderedDict):
    """The last ``GRAPHS_KEPT`` compressed and scheduled graphs of this process, by key: enough
    for the configs of a round that run one graph on several hierarchies, bounded because a
    search over a family makes a graph per architecture (ViT-B's are 0.3-0.4 GB each: all of a
    48-architecture table's would not fit in memory). An evicted graph is read back from the
    study's cache."""

    def get(self, key: str) -> Any:
        if key in self:
            self.move_to_end(key)
        return super().get(key)

    def keep(self, key: str, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > GRAPHS_KEPT:
            self.popitem(last=False)
        return value


GRAPHS_KEPT = 8
_GRAPHS = _RecentGraphs()


@dataclass
class Metrics:
    """What one true evaluation measured; ``error`` set means infeasible (nothing else is)."""

    cycles: int | None = None
    latency_s: float | None = None
    energy_pj: float | None = None
    area_mm2: float | None = None
    area_used_mm2: float | None = None
    bits_per_weight: float | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None
    fits: bool = True
    missing_bytes: int = 0
    error: str | None = None
    seconds: float = 0.0
    compress_cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Data:
    """Calibration and evaluation feeds (and labels, if the data has them)."""

    calibration: list[dict[str, np.ndarray]]
    evaluation: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    random: bool
    digest: str = field(default="")


CALIBRATION, EVALUATION = 16, 32  # samples that calibrate and that measure, by default


def load_data(
    graph: Any,
    path: str | Path | None,
    calibration: int = CALIBRATION,
    evaluation: int = EVALUATION,
) -> Data:
    """Feeds from an .npz named after the model's inputs (optional ``labels`` or ``label``), or
    seeded random inputs; the first ``calibration`` samples calibrate, the next ``evaluation``
    measure."""
    batch = {i: graph.values[i].shape[0] for i in graph.inputs}
    if path is None:
        rng = np.random.default_rng(0)
        n = calibration + evaluation
        arrays = {
            i: rng.standard_normal((n * batch[i], *graph.values[i].shape[1:])).astype(
                graph.values[i].dtype
            )
            for i in graph.inputs
        }
        labels = None
    else:
        arrays, labels = _read_npz(Path(path), graph)
    n = min(len(a) // batch[i] for i, a in arrays.items())
    feeds = [{i: a[k * batch[i] : (k + 1) * batch[i]] for i, a in arrays.items()} for k in range(n)]
    n_cal = min(calibration, max(1, n // 2)) if n > 1 else n
    evaluation_feeds = feeds[n_cal : n_cal + evaluation] or feeds[:n_cal]
    if labels is not None:
        b = batch[graph.inputs[0]]
        first = n_cal if len(feeds) > n_cal else 0
        labels = labels[first * b : (first + len(evaluation_feeds)) * b]
    digest = hashlib.sha256()
    for feed in feeds[:n_cal] + evaluation_feeds:
        for name in sorted(feed):
            digest.update(name.encode() + np.ascontiguousarray(feed[name]).tobytes())
    return Data(feeds[:n_cal], evaluation_feeds, labels, path is None, digest.hexdigest())


def _read_npz(path: Path, graph: Any) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    arrays = read_samples(path, graph, "--data")
    labels = arrays.get("labels", arrays.get("label"))
    return {i: arrays[i] for i in graph.inputs}, labels


@dataclass
class Evaluator:
    """Everything a true evaluation needs; picklable, so any executor can run it."""

    model: str
    space: Space
    input_shapes: dict[str, tuple[int, ...]] | None
    data_path: str | None
    cache_dir: str | None = None
    evaluation: int | None = None  # samples that measure (None: the data kind's default)
    cache_gb: float = CACHE_GB  # the cache folder's limit (``cache_limit``)

    def __call__(self, config: dict[str, Any]) -> Metrics:
        start = time.perf_counter()
        try:
            metrics = self._evaluate(config)
        except CimcError as exc:
            text = str(exc)
            found = _MISSING.search(text)
            metrics = Metrics(
                fits=found is None,
                missing_bytes=int(found.group(1).replace(",", "")) if found else 0,
                error=text,
            )
        metrics.seconds = time.perf_counter() - start
        return metrics

    def _evaluate(self, config: dict[str, Any]) -> Metrics:
        from ..compiler import compile
        from ..targets.simulator import simulate

        stage, cached = self.compressed(config)
        target = self.space.target_for(config)
        graph = _scheduled(stage, target) if stage["hardware_passes"] else stage["graph"]
        program = compile(graph, target=target, pipeline="tile", calibration=[])
        result = simulate(program, functional=False)
        return Metrics(
            cycles=int(result.cycles),
            latency_s=float(result.latency_s),
            energy_pj=float(result.energy_pj),
            area_mm2=float(result.area_mm2),
            area_used_mm2=float(result.area_used_mm2),
            compress_cached=cached,
            **stage["numerics"],
        )

    def model_for(self, config: dict[str, Any]) -> str:
        """The ONNX file ``config`` evaluates: the model, or its architecture's subnet."""
        if self.space.family is None:
            return self.model
        from .architecture import subnet_model

        return str(subnet_model(self.space.family, config, self._folder()))

    def _folder(self) -> Path:
        """Where exported subnets and data files go: the study's cache, or a temporary folder."""
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        if "folder" not in _MEMORY:
            import tempfile

            _MEMORY["folder"] = Path(tempfile.mkdtemp(prefix="cimc-search-"))
        return _MEMORY["folder"]

    def data_for(self) -> tuple[str | None, int, int]:
        """The data file and how many of its samples calibrate and measure (a labelled family's
        validation split, a random-weight family's few seeded inputs, else ``data_path``)."""
        if self.space.family is None:
            return self.data_path, CALIBRATION, self.evaluation or EVALUATION
        from .architecture import EVALUATION as FAMILY_EVALUATION
        from .architecture import RANDOM_EVALUATION, calibration_inputs, data_file, has_labels

        calibration = calibration_inputs(self.space.family)
        if not has_labels(self.space.family):
            return None, calibration, self.evaluation or RANDOM_EVALUATION
        n = self.evaluation or FAMILY_EVALUATION
        return str(data_file(self._folder(), n)), calibration, n

    def compressed(self, config: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The compression stage of ``config`` and whether it came from a cache."""
        from ..frontend import import_onnx

        model = self.model_for(config)
        pipeline = self.space.pipeline_for(config)
        kept = [p for p in pipeline.split(",") if p.split("{")[0] not in HARDWARE_PASSES]
        numerics = self.space.target_for(config, numerics_only=True)
        source = self._source(model)
        key_text = json.dumps(
            [source["model_sha256"], ",".join(kept), source["data"].digest, numerics.to_dict()],
            sort_keys=True,
            default=str,
        )
        key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
        if (stage := _GRAPHS.get(key)) is not None:
            return stage, True
        path = Path(self.cache_dir) / f"{key}.pkl" if self.cache_dir else None
        if path is not None and (stored := _read_if_present(path)) is not None:
            mark_used(path)
            return _GRAPHS.keep(key, pickle.loads(stored) | {"key": key}), True
        from ..pass_manager import run_passes

        graph = import_onnx(model, self.input_shapes)
        graph = run_passes(
            graph, ",".join(kept), calibration=source["data"].calibration, target=numerics
        )
        stage = {
            "key": key,
            "graph": graph,
            "hardware_passes": len(kept) < len(pipeline.split(",")),
            "numerics": self._numerics(graph, source),
        }
        if path is not None:
            from ..atomic import write_bytes_atomic

            write_bytes_atomic(path, pickle.dumps(stage, protocol=pickle.HIGHEST_PROTOCOL))
            trim(path.parent, self.cache_gb)
        return _GRAPHS.keep(key, stage), False

    def _source(self, model: str) -> dict[str, Any]:
        """The model's digest, data and onnxruntime reference outputs (once per process)."""
        data_path, calibration, evaluation = self.data_for()
        key = f"source:{model}:{self.input_shapes}:{data_path}:{calibration}:{evaluation}"
        if key not in _MEMORY:
            _MEMORY[key] = prepare_source(
                model, self.input_shapes, data_path, calibration, evaluation
            )
        return _MEMORY[key]

    def _numerics(self, graph: Any, source: dict[str, Any]) -> dict[str, Any]:
        from ..interpreter import interpret
        from ..report.bits import storage_report
        from ..report.fidelity import fidelity

        data: Data = source["data"]
        name = graph.outputs[0]
        out = np.concatenate([interpret(graph, feed)[name] for feed in data.evaluation])
        ref = source["reference"]
        fid = fidelity(out, ref)
        accuracy = None
        if data.labels is not None:
            pred = out.reshape(out.shape[0], -1).argmax(1)
            accuracy = float(np.mean(pred == data.labels.reshape(-1)[: len(pred)]))
        return {
            "bits_per_weight": float(storage_report(graph)["bits_per_weight"]),
            "cosine": fid["cosine"],
            "top1_agreement": fid["top1_agreement"],
            "accuracy": accuracy,
        }


def _read_if_present(path: Path) -> bytes | None:
    """The file's bytes, or None if it is not there (never written, or evicted by a worker)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _scheduled(stage: dict[str, Any], target: Any) -> Any:
    """The compressed graph after the hardware passes, cached per compressed graph and the only
    target parameters they read (permute-schedule: ``perm_lanes``, ``acc_banks``, ``act_bits``):
    configs that differ in the memory hierarchy share it, so they re-run only tile and lower."""
    from ..pass_manager import run_passes

    read = (target.perm_lanes, target.acc_banks, target.act_bits)
    key = f"scheduled:{stage['key']}:{read}"
    if (graph := _GRAPHS.get(key)) is None:
        graph = _GRAPHS.keep(
            key, run_passes(stage["graph"], ",".join(HARDWARE_PASSES), target=target)
        )
    return graph


def prepare_source(
    model: str,
    input_shapes: dict[str, tuple[int, ...]] | None,
    data_path: str | None,
    calibration: int = CALIBRATION,
    evaluation: int = EVALUATION,
) -> dict[str, Any]:
    """Model digest, calibration / evaluation data and fp32 onnxruntime outputs of the model."""
    import onnxruntime as ort

    from ..frontend import import_onnx

    graph = import_onnx(model, input_shapes)
    data = load_data(graph, data_path, calibration, evaluation)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = graph.outputs[0]
    ref = np.concatenate([sess.run([name], dict(feed))[0] for feed in data.evaluation])
    return {
        "model_sha256": hashlib.sha256(Path(model).read_bytes()).hexdigest(),
        "data": data,
        "reference": ref,
    }


def evaluate(
    model: str | Path,
    config: dict[str, Any],
    *,
    target: Any = "cimpool-sram",
    data: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    space: Space | None = None,
) -> Metrics:
    """Truly evaluate one config (variables not given take the preset's value)."""
    from ..targets.params import Target, load_target

    if space is None:
        tgt = target if isinstance(target, Target) else load_target(target)
        space = Space.from_target(tgt)
    full = {k: v for k, v in space.base_config().items() if v is not None} | dict(config)
    space.to_indices(full)  # validates names and values
    evaluator = Evaluator(str(model), space, input_shapes, None if data is None else str(data))
    return evaluator(full)
