"""The bundled default model (cimc/data/digits_cnn.onnx) against its bundled test split."""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

DATA = files("cimc") / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def info() -> dict:
    return json.loads((DATA / "digits_cnn.json").read_text())


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    with (DATA / "digits_test.npz").open("rb") as f, np.load(f) as npz:
        return npz["input"], npz["label"]


def test_test_set_shape(test_set, info) -> None:
    x, y = test_set
    assert x.dtype == np.float32 and x.shape == (info["split"]["test"], 1, 16, 16)
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert sorted(np.unique(y)) == list(range(10))


def test_onnx_accuracy(test_set, info) -> None:
    x, y = test_set
    sess = ort.InferenceSession(
        (DATA / "digits_cnn.onnx").read_bytes(), providers=["CPUExecutionProvider"]
    )
    logits = sess.run(["logits"], {"input": x})[0]
    assert logits.shape == (len(x), 10)
    acc = int((logits.argmax(1) == y).sum()) / len(y)  # computed as the script does
    assert acc >= 0.95
    assert acc == info["test_accuracy_onnx"]


def test_split_is_held_out(test_set, info) -> None:
    """The bundled test split is the script's test split, and shares no image with train/val."""
    pytest.importorskip("torch")  # the script imports torch for upsampling and training
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from make_digits_model import load_splits, to_input
    finally:
        sys.path.remove(str(BENCHMARKS))

    splits = load_splits(info["seed"])
    assert {k: len(v[1]) for k, v in splits.items()} == info["split"]

    raw_test, y_test = splits["test"]
    x, y = test_set
    np.testing.assert_array_equal(y, y_test)
    np.testing.assert_allclose(x, to_input(raw_test), rtol=0, atol=1e-6)

    def keys(images: np.ndarray) -> set[bytes]:
        return {img.tobytes() for img in np.ascontiguousarray(images, dtype=np.float64)}

    test_keys = keys(raw_test)
    assert len(test_keys) == len(raw_test)
    assert test_keys.isdisjoint(keys(splits["train"][0]))
    assert test_keys.isdisjoint(keys(splits["val"][0]))
