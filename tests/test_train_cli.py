"""cimc.train data sets (fixed, disjoint splits) and the ``cimc train`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from cimc.cli import main  # noqa: E402
from cimc.train import data as D  # noqa: E402


def test_chars_are_fixed_disjoint_and_cover_36_classes() -> None:
    a = D.make_chars(train=4, val=2, test=2)
    b = D.make_chars(train=4, val=2, test=2)
    assert len(a.classes) == 36 and a.sizes() == {"train": 144, "val": 72, "test": 72}
    for split in ("train", "val", "test"):
        x, y = getattr(a, f"x_{split}"), getattr(a, f"y_{split}")
        assert x.shape == (len(y), 1, 32, 32) and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.mean() > 0.05
        assert np.bincount(y, minlength=36).min() == len(y) // 36
        np.testing.assert_array_equal(x, getattr(b, f"x_{split}"))  # fixed: same images
    keys = {s: {img.tobytes() for img in getattr(a, f"x_{s}")} for s in ("train", "val", "test")}
    assert keys["train"].isdisjoint(keys["val"]) and keys["train"].isdisjoint(keys["test"])
    assert keys["val"].isdisjoint(keys["test"])
    # a different data seed draws different images; the training seed never enters
    assert not np.array_equal(a.x_train, D.make_chars(4, 2, 2, seed=1).x_train)


def test_digits_split_is_the_bundled_one() -> None:
    from importlib.resources import files

    s = D.load("digits")
    assert s.sizes() == {"train": 1078, "val": 359, "test": 360}
    assert s.x_test.shape == (360, 1, 32, 32)
    with (files("cimc") / "data" / "digits_test.npz").open("rb") as f, np.load(f) as npz:
        np.testing.assert_array_equal(s.y_test, npz["label"])


def test_cimc_train_cli(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--scheme", "cimpool-keep0.25", "--out", str(out)]
    args += ["--epochs", "1", "--finetune-epochs", "1", "--subset", "128,32,32"]
    args += ["--widths", "16,16", "--batch-size", "64"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "weight-pool{" in printed and "assignment=" in printed
    for name in ("fp32.pt", "model.onnx", "model.npz", "train.log.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    lines = [json.loads(line) for line in (out / "train.log.jsonl").read_text().splitlines()]
    assert [r["run"] for r in lines] == ["fp32-pretrain", "cimpool-keep0.25"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compiled_agreement"] >= 0.95
    assert summary["split"] == {"train": 128, "val": 32, "test": 32}
    assert 0 <= summary["test_acc"] <= 1 and summary["bits_per_compressed_weight"] > 0.25
    # reuse the pre-trained model; a bad option is one line and exit status 2
    again = ["train", "--data", "digits", "--scheme", "int4", "--out", str(tmp_path / "b")]
    again += ["--pretrained", str(out / "fp32.pt"), "--widths", "16,16", "--no-compile"]
    again += ["--finetune-epochs", "1", "--subset", "64,32,32"]
    assert main(again) == 0
    assert not (tmp_path / "b" / "model.npz").exists()
    bad = ["train", "--out", str(tmp_path / "c"), "--widths", "16,x"]
    assert main(bad) == 2
    assert "--widths" in capsys.readouterr().err
