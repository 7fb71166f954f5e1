"""``cimc finetune``'s per-layer and downstream losses (--feature-loss, --downstream, --window)
and the refusals a user can meet before any training: one line, exit 2, nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from test_finetune_onnx import DATA, DIGITS, _head  # noqa: E402

from cimc.cli import main  # noqa: E402

ARGS = ("--input-shape", "input=1,1,16,16", "--data", str(DATA / "digits_calib.npz"))
ARGS += ("--steps", "3", "--batch-size", "8")


def _run(capsys, out: Path, *extra: str) -> tuple[int, str]:
    code = main(["finetune", str(DIGITS), *ARGS, "-o", str(out), *extra])
    return code, capsys.readouterr().err


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_feature_balance_and_downstream_losses_reach_the_training(tmp_path, capsys):
    _head(tmp_path, 1)  # a sigmoid detector reading the 10 logits: tmp_path/head1.onnx
    head = str(tmp_path / "head1.onnx")
    runs = {
        "plain": (),
        "features": ("--feature-loss", "1"),
        "balance": ("--balance",),
        "downstream": ("--downstream", head),
        "both heads": ("--downstream", f"{head},{head}", "--window", "1"),
    }
    weights = {}
    for name, extra in runs.items():
        code, err = _run(capsys, tmp_path / name, *extra)
        assert code == 0, err
        weights[name] = _weights(tmp_path / name / "model.onnx")
    config = json.loads((tmp_path / "features" / "summary.json").read_text())["config"]
    assert config["features"] == 1.0
    assert json.loads((tmp_path / "balance" / "summary.json").read_text())["config"]["balance"] == 1
    # the same seed and batches: only the added losses can make the tuned weights differ
    for name in ("features", "balance", "downstream"):
        assert any(not np.array_equal(v, weights["plain"][k]) for k, v in weights[name].items())
    # two copies of the head weigh its loss twice: not the one-head run
    assert any(
        not np.array_equal(v, weights["downstream"][k]) for k, v in weights["both heads"].items()
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--downstream", "{tmp}/missing.onnx"), "--downstream '.*missing.onnx': no such file"),
        (("--downstream", ","), "--downstream '': no such file"),
        (("--downstream", "{tmp}/head1.onnx", "--window", "0"), "--window 0: give at least 1"),
        (("--window", "2"), "--window 2: give the graphs it feeds with --downstream"),
        (("--feature-loss", "-1"), "--feature-loss -1.0: give a weight >= 0"),
        (("--feature-loss", "nan"), "--feature-loss nan: give a weight >= 0"),
        (("--balance", "-0.5"), "--balance -0.5: give a power >= 0"),
        # the model's output is 10 logits: no window of two rows of 10, no row of 7 values
        (("--downstream", "{tmp}/head2.onnx", "--window", "2"), "cannot read windows of 2 rows"),
        (("--downstream", "{tmp}/r7/head1.onnx"), r"input \(1, 1, 7\)\) cannot read windows"),
    ],
)
def test_bad_loss_options_are_refused_before_training(tmp_path, capsys, extra, message):
    (tmp_path / "r7").mkdir()
    _head(tmp_path / "r7", 1, rows=7)  # reads 7 values
    _head(tmp_path, 1)
    _head(tmp_path, 2)
    out = tmp_path / "out"
    code, err = _run(capsys, out, *(e.format(tmp=tmp_path) for e in extra))
    assert code == 2 and re.search(message, err) and err.count("\n") == 1, err
    assert not out.exists()


def test_an_lstm_whose_first_step_is_the_first_layer_is_refused(tmp_path, capsys):
    # With a constant input sequence the importer folds the input projection, so the first
    # recurrent step (reading the state input) is the model's first CiM layer, kept at 8 bits,
    # and the later steps are pooled: one R cannot hold both (distill._check_steps_alike).
    from test_recurrent import recurrent_model

    model = recurrent_model("LSTM", states_as_inputs=True)
    x = next(i for i in model.graph.input if i.name == "X")
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    model.graph.input.remove(x)
    seq = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(seq, "X"))
    onnx.save(model, tmp_path / "m.onnx")
    state_shape = next(i for i in model.graph.input if i.name == "h0").type.tensor_type.shape
    dims = [d.dim_value for d in state_shape.dim]
    states = {s: np.zeros((32 * dims[0], *dims[1:]), np.float32) for s in ("h0", "c0")}
    np.savez(tmp_path / "d.npz", **states)
    out = tmp_path / "out"
    code = main(
        ["finetune", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "-o", str(out)]
    )
    err = capsys.readouterr().err
    want = "compresses step 'LSTM_0.hr' as int8 and the later step 'LSTM_0.hr_1' on the pool"
    assert code == 2 and want in err and err.count("\n") == 1, err
    assert not out.exists()


def test_keep_sensitive_reaches_the_pipeline(tmp_path, capsys):
    code, err = _run(capsys, tmp_path / "kept", "--keep-sensitive", "1")
    assert code == 0, err
    pipeline = json.loads((tmp_path / "kept" / "summary.json").read_text())["pipeline"]
    assert "keep_sensitive=1" in pipeline, pipeline


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--keep-sensitive", "-1"), "--keep-sensitive -1: give N >= 0"),
        (("--keep-sensitive", "1", "--target", "int8-sram"), "int8-sram pools no layer"),
    ],
)
def test_bad_keep_sensitive_is_refused(tmp_path, capsys, extra, message):
    code, err = _run(capsys, tmp_path / "out", *extra)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
