"""ddddocr's whole-image distillation feed in benchmarks/finetune.py (--ocr-whole): the images
edge-padded to one width, after the same crops that rank and calibrate, never a scored image."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc.train.distill import DistillConfig, distill, export, load_samples
from cimc.train.layers import get_scheme

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
finetune = pytest.importorskip("finetune")


def test_images_padded_on_the_right_with_their_last_column():
    rng = np.random.default_rng(0)
    images = [rng.random((1, 1, 64, w), dtype=np.float32) for w in (160, 128, 288)]
    out = finetune.ocr_whole(images)
    assert out.shape == (3, 1, 1, 64, 288) and out.dtype == np.float32
    for row, x in zip(out, images):
        w = x.shape[-1]
        assert np.array_equal(row[..., :w], x)
        assert np.array_equal(row[..., w:], np.repeat(x[..., -1:], 288 - w, axis=-1))


def test_crops_of_one_width_stacked_unchanged():
    crops = np.random.default_rng(1).random((5, 1, 1, 64, 128), dtype=np.float32)
    assert np.array_equal(finetune.ocr_whole(list(crops)), crops)


@pytest.mark.skipif(not (finetune.KIT / "manifest.json").exists(), reason="devkit not built")
def test_whole_feed_keeps_the_calibration_crops_and_the_split(tmp_path, monkeypatch):
    kit = finetune.check_devkit()
    crops = finetune.distillation_feeds(kit, "ddddocr", tmp_path / "c")[finetune.OCR]["input1"]
    monkeypatch.setitem(finetune.OCR_WHOLE, finetune.OCR, True)
    whole = finetune.distillation_feeds(kit, "ddddocr", tmp_path / "w")[finetune.OCR]["input1"]
    first = finetune.CALIB_ROWS[finetune.OCR]
    with np.load(finetune.KIT / "data" / "ddddocr.npz") as d:
        x, w = d["x"], d["w"]
    distil = np.arange(len(x)) % finetune.HELD_OUT["ddddocr"] != 0
    width = int(-(-w[distil].max() // 32) * 32)  # the widest distillation image, padded
    assert whole.shape == (first + distil.sum(), 1, 1, 64, width)
    # the same crops rank and calibrate (so the same layers stay int8), edge-padded
    assert np.array_equal(whole[:first, ..., :128], crops[:first])
    assert np.array_equal(
        whole[:first, ..., 128:], np.repeat(crops[:first, ..., -1:], width - 128, -1)
    )
    # then every distillation image once, whole; no scored image
    got = sorted(
        tuple(np.round(r[0, 0, :, :8] * 255).astype(np.uint8).ravel()) for r in whole[first:]
    )
    want = sorted(tuple(im[:, :8].ravel()) for im in x[distil])
    assert got == want


def test_named_kept_layers_train_at_8_bits_and_compile_so(tmp_path):
    """distill's keep_sensitive as names (ocr_kept ranks them on crops of another width): those
    layers, not the ones it would rank itself, stay at 8 bits, and the compiler installs the
    assignment with them kept."""
    model_path = Path(cimc.__file__).parent / "data" / "digits_cnn.onnx"
    calib = Path(cimc.__file__).parent / "data" / "digits_calib.npz"
    shape = {"input": (1, 1, 16, 16)}
    graph = cimc.import_onnx(model_path, shape)
    data = load_samples(calib, graph, 16)
    scheme = get_scheme("cimpool-keep0.5")
    first = distill(graph, scheme, data, DistillConfig(steps=0), keep_sensitive=2)
    others = [n for n, (role, _) in first.roles.items() if role == "pool"]
    named = frozenset(others[:2])  # two layers its own ranking pools
    model = distill(graph, scheme, data, DistillConfig(steps=2), keep_sensitive=named)
    assert model.kept == named and len(first.kept) == 2 and not named & first.kept
    assert all(model.roles[n] == ("int", 8) for n in named)
    pipeline = export(model, model_path, tmp_path / "m.onnx", tmp_path / "m.npz")
    program = cimc.compile(
        tmp_path / "m.onnx", "cimpool-sram", pipeline, input_shapes=shape, calibration=str(calib)
    )
    meta = {n.name: n.meta.get("compression", {}) for n in program.graph.nodes()}
    assert {n for n, m in meta.items() if m.get("learned")} == set(others[2:]) | first.kept
