"""The devkit (../shared/devkit) from the benchmarks: where it is, the feeds its scorer gives
each model file, and cimc's compiled graphs run in onnxruntime's place.

Shared by benchmarks/ptq.py and benchmarks/finetune.py. A kit model file is named by its
``<model>/<file>`` key, so a copy of the kit holding a subset of the inputs (:func:`subset_kit`)
scores with the same runners.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

import cimc

KIT = Path(os.environ.get("CIMC_DEVKIT", Path.home() / ".cache" / "cimc-devkit"))
FRONT_END = {"openwakeword/melspectrogram.onnx"}  # a fixed STFT: runs in fp32 everywhere


def check_devkit() -> ModuleType | None:
    """The kit's scoring module, or None (with a message) when the kit is not built."""
    if not (KIT / "manifest.json").exists():
        print(f"no devkit at {KIT}: bash ../shared/devkit/make_devkit.sh", file=sys.stderr)
        return None
    sys.path.insert(0, str(KIT))
    import check_devkit as module

    return module


def manifest() -> dict:
    return json.loads((KIT / "manifest.json").read_text())["models"]


def key(model: Path) -> str:
    """``<model>/<file>``: the kit model file, whichever copy of the kit holds it."""
    return f"{model.parent.name}/{model.name}"


def subset_kit(name: str, keep: np.ndarray, folder: Path) -> Path:
    """A copy of the kit whose inputs for ``name`` are the items ``keep`` selects (a boolean
    mask over the first axis of its arrays); the models are links to the kit's."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    if not (folder / "models").exists():
        (folder / "models").symlink_to(KIT / "models")
    with np.load(KIT / "data" / f"{name}.npz") as d:
        np.savez(folder / "data" / f"{name}.npz", **{k: d[k][keep] for k in d.files})
    texts = KIT / "data" / f"{name}.json"
    if name == "ddddocr":  # the strings, one per image
        picked = [t for t, k in zip(json.loads(texts.read_text()), keep) if k]
        (folder / "data" / f"{name}.json").write_text(json.dumps(picked))
    return folder


def pad_width(feeds: dict[str, np.ndarray], multiple: int = 32) -> dict[str, np.ndarray]:
    """ddddocr's image padded on the right with its edge column to a multiple of 32 pixels."""
    x = feeds["input1"]
    extra = -x.shape[-1] % multiple
    return {"input1": np.pad(x, [(0, 0)] * 3 + [(0, extra)], mode="edge")}


def fit(feeds: dict[str, np.ndarray], shapes: dict[str, tuple]) -> list[dict[str, np.ndarray]]:
    """Feeds cut into batches of ``shapes`` (along the first axis), each cropped or edge-padded
    to ``shapes``: calibration data for another batch size or ddddocr width. Edge padding
    repeats samples, which leaves the ranges calibration measures unchanged."""
    batches = max(-(-len(v) // shapes[k][0]) for k, v in feeds.items())
    out = []
    for b in range(batches):
        one = {}
        for k, v in feeds.items():
            n = shapes[k][0]
            v = v[b * n : (b + 1) * n] if len(v) > n else v
            v = v[tuple(slice(0, s) for s in shapes[k])]
            one[k] = np.pad(v, [(0, s - d) for s, d in zip(shapes[k], v.shape)], mode="edge")
        out.append(one)
    return out


class _Enough(Exception):
    pass


def calibration_feeds(check_devkit: ModuleType, name: str, n: int) -> dict[str, list[dict]]:
    """The first ``n`` feeds the kit's scoring code gives each model file."""
    ort_run, got = check_devkit.ort_run(), {}

    def run(model: Path, feeds: dict) -> list:
        feeds = pad_width(feeds) if name == "ddddocr" else feeds
        got.setdefault(key(model), [])
        if len(got[key(model)]) < n:
            got[key(model)].append(feeds)
        elif all(len(v) >= n for v in got.values()):
            raise _Enough
        return ort_run(model, feeds)

    with contextlib.suppress(_Enough):
        check_devkit.evaluate(name, run=run)
    return got


class CimcRunner:
    """Compiles each model file once per input shape; runs the compiled graph.

    ``pipeline``: one for every file, or one per key; ``sources``: a replacement ONNX file
    per key (a fine-tuned model); ``overrides``: target parameters."""

    def __init__(
        self,
        target: str,
        pipeline: str | dict[str, str] | None,
        calib: dict[str, list[dict]],
        sources: dict[str, Path] | None = None,
        overrides: dict | None = None,
    ):
        self.target, self.pipeline, self.calib = target, pipeline, calib
        self.sources, self.overrides = sources or {}, overrides
        self.graphs: dict[tuple, cimc.Interpreter] = {}

    def __call__(self, model: Path, feeds: dict) -> list[np.ndarray]:
        k = key(model)
        shapes = {n: v.shape for n, v in feeds.items()}
        cache = (k, tuple(sorted(shapes.items())))
        if cache not in self.graphs:
            calib = [c for f in self.calib[k] for c in fit(f, shapes)]
            pipeline = self.pipeline.get(k) if isinstance(self.pipeline, dict) else self.pipeline
            program = cimc.compile(
                self.sources.get(k, model),
                self.target,
                pipeline,
                input_shapes=shapes,
                calibration=calib,
                overrides=self.overrides,
            )
            self.graphs[cache] = cimc.Interpreter(program.graph)
        runner = self.graphs[cache]
        out = runner.run(feeds)
        return [out[o] for o in runner.graph.outputs]


def magika_features(path: str, beg: int = 1024, end: int = 1024, block: int = 4096) -> list[int]:
    """magika 1.0.3's features, as the kit computed them: the first and last 4 KiB, whitespace
    stripped, the first ``beg`` and last ``end`` bytes, padded with 256."""
    size = os.path.getsize(path)
    n = min(block, size)
    with open(path, "rb") as f:
        head = f.read(n)
        f.seek(size - n)
        tail = f.read(n)
    head, tail = head.lstrip()[:beg], tail.rstrip()[-end:]
    return list(head) + [256] * (beg - len(head)) + [256] * (end - len(tail)) + list(tail)


MAGIKA_ROOTS = ("/usr/share", "/usr/include", "/usr/lib/x86_64-linux-gnu", "/usr/bin", "/etc")


def magika_unlabelled(n: int, seed: int = 0) -> np.ndarray:
    """Features [n, 2048] of ``n`` files of this machine (seeded pick, at least 1 KiB like the
    kit's) that are not among the kit's scored files: unlabelled inputs for magika."""
    scored = {f["sha256"] for f in json.loads((KIT / "data" / "magika.json").read_text())}
    paths = sorted(
        os.path.join(d, f) for root in MAGIKA_ROOTS for d, _, files in os.walk(root) for f in files
    )
    rng = np.random.default_rng(seed)
    picked = []
    for i in rng.permutation(len(paths)):
        p = paths[i]
        if not os.path.isfile(p) or not os.access(p, os.R_OK) or os.path.getsize(p) < 1024:
            continue
        with open(p, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() in scored:
                continue
        picked.append(magika_features(p))
        if len(picked) == n:
            break
    return np.array(picked, np.int32)
