"""Real pretrained models (the devkit, ../shared/devkit): every model file imports, matches
onnxruntime in the interpreter, compiles on every preset and simulates bit-identically.

Skipped when the kit is not built (``bash ../shared/devkit/make_devkit.sh``). The inputs are
the kit's own real inputs, captured where its scoring code hands them to onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

KIT = Path(os.environ.get("CIMC_DEVKIT", Path.home() / ".cache" / "cimc-devkit"))
if not (KIT / "manifest.json").exists():
    pytest.skip("devkit not built: bash ../shared/devkit/make_devkit.sh", allow_module_level=True)
sys.path.insert(0, str(KIT))
import check_devkit  # noqa: E402
from cimc.targets.params import presets  # noqa: E402
from cimc.targets.simulator import simulate  # noqa: E402

import cimc  # noqa: E402

MANIFEST = json.loads((KIT / "manifest.json").read_text())["models"]
# The model files under test, by kit model. openwakeword's mel front end is a fixed STFT that
# feeds the models under test; it is imported and checked too.
FILES = {
    "mnist8": ["mnist8/model.onnx"],
    "magika": ["magika/model.onnx"],
    "ddddocr": ["ddddocr/common.onnx"],
    "silero_vad": ["silero_vad/silero_vad_16k_sequence.onnx"],
    "openwakeword": [
        "openwakeword/melspectrogram.onnx",
        "openwakeword/embedding_model.onnx",
        "openwakeword/hey_jarvis_v0.1.onnx",
        "openwakeword/alexa_v0.1.onnx",
        "openwakeword/hey_marvin_v0.1.onnx",
    ],
}
CASES = [(kit, f) for kit, files in FILES.items() for f in files]
OCR_WIDTH = 104  # the narrowest kit image: ddddocr images are cropped to it (one static shape)


class _Enough(Exception):
    pass


def real_feeds(kit_model: str, n: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """The first ``n`` feeds the kit's scoring code gives each model file (by kit path)."""
    ort_run = check_devkit.ort_run()
    got: dict[str, list] = {}

    def run(model: Path, feeds: dict) -> list:
        key = str(model.relative_to(KIT / "models"))
        if kit_model == "ddddocr":
            feeds = {k: np.ascontiguousarray(v[..., :OCR_WIDTH]) for k, v in feeds.items()}
        got.setdefault(key, [])
        if kit_model == "magika":  # scored as one batch of 235 files: cut into batches of 16
            got[key] = [{k: v[i * 16 : (i + 1) * 16] for k, v in feeds.items()} for i in range(n)]
        elif len(got[key]) < n:
            got[key].append(feeds)
        if len(got) == len(FILES[kit_model]) and all(len(v) >= n for v in got.values()):
            raise _Enough
        return ort_run(model, feeds)

    with contextlib.suppress(_Enough):
        check_devkit.evaluate(kit_model, run=run)
    return got


_FEEDS: dict[str, dict] = {}


def feeds_for(kit_model: str, path: str) -> list[dict[str, np.ndarray]]:
    if kit_model not in _FEEDS:
        _FEEDS[kit_model] = real_feeds(kit_model, 3)
    return _FEEDS[kit_model][path]


def shapes_of(feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for k, v in feeds.items()}


@pytest.mark.parametrize(("kit_model", "path"), CASES)
def test_imports_and_matches_onnxruntime(kit_model, path):
    """Tolerance: the interpreter widens sums and products to float64 and onnxruntime stays in
    float32, so outputs differ by float32 rounding carried through the network: at most 1e-4 of
    the output's largest magnitude, or 1e-4 absolute for outputs below 1 (probabilities)."""
    feeds = feeds_for(kit_model, path)[0]
    graph = cimc.import_onnx(KIT / "models" / path, shapes_of(feeds))
    assert not any(n.op in ("LSTM", "GRU", "If") for n in graph.nodes())
    got = cimc.interpret(graph, feeds)
    want = check_devkit.ort_run()(KIT / "models" / path, feeds)
    for name, expected in zip(graph.outputs, want):
        assert got[name].shape == expected.shape, name
        err = np.abs(got[name].astype(np.float64) - expected).max()
        assert err <= 1e-4 * max(np.abs(expected).max(), 1.0), (name, err)


@pytest.mark.parametrize("preset", sorted(presets()))
@pytest.mark.parametrize(("kit_model", "path"), CASES)
def test_compiles_and_simulates_bit_identically(kit_model, path, preset, tmp_path):
    feeds = feeds_for(kit_model, path)
    program = cimc.compile(
        KIT / "models" / path,
        target=preset,
        input_shapes=shapes_of(feeds[0]),
        calibration=feeds[:2],
    )
    program = cimc.load_program(program.save(tmp_path / "p.cimx"))
    result = simulate(program, feeds[2])
    reference = cimc.interpret(program.graph, feeds[2])
    for name, want in reference.items():
        assert np.array_equal(result.outputs[name], want), name  # bit for bit
        assert np.all(np.isfinite(want)), name
    assert result.cycles > 0
