"""cimc search: encodings, predictors, hypervolume, the study (resume after SIGKILL), the CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cimc.targets.params import load_target

from cimc.cli import main
from cimc.search import Predictor, Space, Study, StudyError, hypervolume, rank_metrics
from cimc.search.predictors import hierarchy_blocks
from cimc.search.space import HIERARCHY

DATA = Path(__file__).resolve().parents[1] / "cimc" / "data"
MODEL = str(DATA / "digits_cnn.onnx")
SHAPE = ["--input-shape", "input=1,1,16,16"]
# hardware-only int8 space: one compression (~2 s), so every evaluation after it is the backend
HW_SPACE = """drop = ["vector", "pool", "keep", "act_bits", "perm_lanes", "vector_width"]
[choices]
scheme = ["int8"]
"""


@pytest.fixture(scope="module")
def hw_space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.toml"
    path.write_text(HW_SPACE)
    return path


def _search(study: Path, space: Path, budget: int, population: int, *extra: str) -> list[str]:
    return [
        "search", MODEL, *SHAPE, "--space", str(space), "--study", str(study),
        "--budget", str(budget), "--population", str(population), "--workers", "1", *extra,
    ]  # fmt: skip


def test_encodings_round_trip():
    space = Space.from_target(load_target("cimpool-sram"))
    idx = space.sample(200, np.random.default_rng(1))
    configs = [space.from_indices(i) for i in idx]
    back = np.array([space.to_indices(c) for c in configs])
    assert np.array_equal(back, idx)
    onehot = space.one_hot(idx)
    assert onehot.shape[1] == sum(len(v.choices) for v in space.variables)
    assert np.all(onehot.sum(axis=1) == len(space.variables))  # one 1 per variable
    assert np.array_equal(space.from_one_hot(onehot), idx)


def test_linked_variable_sets_pipeline_and_target():
    space = Space.from_target(load_target("cimpool-sram"))
    config = space.base_config() | {"vector": 64, "act_bits": 4, "keep": 0.25}
    pipe = space.pipeline_for(config)
    assert "zpack{vector=64}" in pipe and "weight-pool{vector=64," in pipe
    assert "quantize-act{bits=4}" in pipe and "error-prune{keep=0.25}" in pipe
    target = space.target_for(config)
    assert (target.rows, target.act_bits, target.error_rows) == (64, 4, 16)
    int4 = space.pipeline_for(config | {"scheme": "int4"})
    assert "quantize-weights{bits=4,rounding=gptq}" in int4 and "weight-pool" not in int4


def test_predictor_ranks_known_order():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 4, size=(160, 6))
    x = np.concatenate([np.eye(4)[idx[:, j]] for j in range(6)], axis=1)
    x = np.concatenate([x, np.ones((160, 3))], axis=1)  # constant features: dropped
    y = 1000 * np.exp(0.6 * idx[:, 0] - 0.4 * idx[:, 1] + 0.2 * idx[:, 2])
    model = Predictor(log=True).fit(x[:80], y[:80])
    stats = rank_metrics(y[80:], model.predict(x[80:]))
    assert stats["kendall_tau"] > 0.9, stats
    assert stats["mape"] < 10, stats  # exact in log space up to the fit's regularisation


def test_predictor_pairs_capture_bottleneck_interactions():
    # cycles of a two-level memory: a network's work times, per level pair, the slower of two
    # bandwidths (a max: not additive in log space, but the products of the bandwidth one-hots
    # fit it); the bandwidth variables are the interacting blocks
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    idx = rng.integers(0, 4, size=(300, 6))
    x = np.concatenate([np.eye(4)[idx[:, j]] for j in range(6)], axis=1)
    bw = 2.0 ** idx[:, 2:]
    work = 100 * (1 + idx[:, 0]) * (1 + 0.5 * idx[:, 1])
    y = work * (np.maximum(8 / bw[:, 0], 4 / bw[:, 1]) + np.maximum(8 / bw[:, 2], 2 / bw[:, 3]))
    pairs = tuple(slice(4 * j, 4 * j + 4) for j in range(2, 6))
    crossed = Predictor(log=True, pairs=pairs).fit(x[:150], y[:150])
    assert crossed.chosen == "Ridge+pairs"
    tau = rank_metrics(y[150:], crossed.predict(x[150:]))["kendall_tau"]
    for plain in (Predictor(Ridge(), log=True), Predictor(log=True)):  # one-hot Ridge; the CV
        plain_tau = rank_metrics(y[150:], plain.fit(x[:150], y[:150]).predict(x[150:]))
        assert tau > plain_tau["kendall_tau"] + 0.01, (tau, plain_tau)
    assert tau > 0.94  # seed 0: 0.956 (one-hot Ridge 0.897, the CV without pairs 0.942)


def test_hierarchy_blocks_are_the_hierarchy_columns():
    space = Space.from_target(load_target("int8-sram"))
    idx = space.sample(5, np.random.default_rng(0))
    onehot = space.one_hot(idx)
    blocks = hierarchy_blocks(space)
    assert len(blocks) == len(HIERARCHY)
    for block, name in zip(blocks, HIERARCHY):
        j = space.names.index(name)
        assert np.array_equal(onehot[:, block], np.eye(len(space.variables[j].choices))[idx[:, j]])


def test_hypervolume_hand_computed():
    # minimise both; points (1,3), (2,2), (3,1) and reference (4,4): a staircase of
    # 1x3 + 1x2 + 1x1 = 6; a dominated point (3,3) and one outside the reference add nothing
    pts = np.array([[1, 3], [2, 2], [3, 1], [3, 3], [5, 0]], float)
    assert hypervolume(pts, np.array([4.0, 4.0])) == pytest.approx(6.0)


def test_study_refuses_another_model(tmp_path):
    Study(tmp_path, {"model_sha256": "a", "space": {"v": 1}}).close()
    with pytest.raises(StudyError, match="another model_sha256"):
        Study(tmp_path, {"model_sha256": "b", "space": {"v": 1}})


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, hw_space) -> Path:
    study = tmp_path_factory.mktemp("study")
    start = time.perf_counter()
    assert main(_search(study, hw_space, 16, 8)) == 0
    assert time.perf_counter() - start < 60
    return study


def test_cli_end_to_end(finished_study, capsys):
    for name in ("study.db", "report.json", "front.png", "predicted_vs_true.png",
                 "hypervolume.png", "hierarchy_multiples.png"):  # fmt: skip
        assert (finished_study / name).is_file(), name
    db = sqlite3.connect(finished_study / "study.db")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT hash) FROM evals").fetchone() == (16, 16)
    assert db.execute("SELECT COUNT(*) FROM rounds").fetchone() == (2,)
    capsys.readouterr()
    assert main(["search", "show", str(finished_study)]) == 0
    assert "Pareto front" in capsys.readouterr().out


def test_first_round_starts_from_the_baseline():
    """The preset's own configuration is a candidate from the start (the front is never worse
    than the hardware the user began with); one the space cannot express is left out."""
    from cimc.search.loop import _first_round

    space = Space.from_target(load_target("cimpool-sram"))
    base = space.base_config()
    assert None not in base.values()
    first = _first_round(space, (base,), np.random.default_rng(0), 8)
    assert first[0] == base and len(first) == 8 and base not in first[1:]
    partial = base | {"scheme": None}  # e.g. a space file that drops the preset's scheme
    first = _first_round(space, (partial,), np.random.default_rng(0), 8)
    assert len(first) == 8 and partial not in first


def test_rerun_recomputes_nothing(finished_study, hw_space):
    """Neither the rows nor the rounds' history (a rerun once recorded every round with the
    final count of evaluations)."""
    query = "SELECT hash, finished FROM evals ORDER BY hash"
    db = sqlite3.connect(finished_study / "study.db")
    before, rounds = db.execute(query).fetchall(), Study(finished_study).rounds()
    assert [r["evaluations"] for r in rounds] == [8, 16]
    assert main(_search(finished_study, hw_space, 16, 8)) == 0
    assert db.execute(query).fetchall() == before
    assert Study(finished_study).rounds() == rounds


@pytest.mark.parametrize(
    "edit, extra, message",
    [
        ('drop = ["no_such_variable"]', [], "unknown variable 'no_such_variable'"),
        ("[choices]\nL1_num_child = [0]", [], "out of range"),
        ("[choices]\nscheme = ['int3']", [], "not a weight scheme"),
        ("", ["--objectives", "fidelity,speed"], "unknown objective"),
        ("", ["--budget", "4"], "smaller than --population"),
        ("", ["--cache-gb", "0"], "--cache-gb 0.0 must be positive"),
        ("", ["--data", str(DATA / "digits32_test.npz")], "needs"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, edit, extra, message):
    space = tmp_path / "space.toml"
    space.write_text(edit or HW_SPACE)
    assert main(_search(tmp_path / "st", space, 16, 8, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_study_of_another_model_refused(finished_study, hw_space, capsys):
    args = _search(finished_study, hw_space, 16, 8)
    args[1], args[3] = str(DATA / "digits_cimpool.onnx"), "input=1,1,32,32"
    assert main(args) == 2
    assert "another model_sha256" in capsys.readouterr().err


def test_resume_after_sigkill(tmp_path, hw_space):
    study = tmp_path / "st"
    cmd = [sys.executable, "-m", "cimc.cli", *_search(study, hw_space, 40, 8)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db_path = study / "study.db"
    deadline = time.monotonic() + 90
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db_path.is_file():
            try:
                seen = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM evals").fetchone()[0]
            except sqlite3.OperationalError:
                seen = 0
            if seen >= 12:  # killed in round 1, after the initial population
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    db = sqlite3.connect(db_path)
    kept = {h for (h,) in db.execute("SELECT hash FROM evals")}
    assert len(kept) >= seen  # every committed row survived the kill
    db.close()
    assert main(_search(study, hw_space, 40, 8)) == 0
    db = sqlite3.connect(db_path)
    count, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT hash) FROM evals").fetchone()
    assert (count, distinct) == (40, 40)
    assert kept <= {h for (h,) in db.execute("SELECT hash FROM evals")}


def test_pareto_table_shows_tied_configurations_once_as_the_smallest_simplest(tmp_path):
    """Configurations the objectives cannot tell apart (knobs they do not see) are one point of
    the front: the table shows it once, as its smallest chip changing fewest variables, and counts
    them."""
    from cimc.search.report import pareto_table
    from cimc.search.study import Row, Study, config_hash

    base = {"scheme": "int8", "perm_lanes": 16, "DRAM_bw": 32.0}
    settings = {"objectives": ["fidelity", "cycles"], "base_config": base}
    study = Study(tmp_path / "s", identity={"settings": settings})
    points = [  # (changes from base, cosine, cycles, area)
        ({"perm_lanes": 32, "DRAM_bw": 8.0}, 0.99, 100.0, 2.0),
        ({"perm_lanes": 32}, 0.99, 100.0, 2.0),  # as small, fewer changes: shown
        ({"scheme": "int4"}, 0.95, 60.0, 3.0),
        ({"scheme": "int4", "DRAM_bw": 8.0}, 0.95, 60.0, 1.5),  # smaller chip: shown
        ({"scheme": "int4", "perm_lanes": 32}, 0.90, 80.0, 1.0),  # dominated
    ]
    for change, cosine, cycles, area in points:
        config = {**base, **change}
        metrics = {"cosine": cosine, "cycles": cycles, "area_mm2": area}
        study.add(Row(config_hash(config), 0, config, metrics, None, 0.1))
    table = pareto_table(study)
    assert [(r["fidelity"], r["cycles"], r["configs"], r["area_mm2"]) for r in table] == [
        (0.99, 100.0, 2, 2.0),
        (0.95, 60.0, 2, 1.5),
    ]
    assert [r["change"] for r in table] == ["perm_lanes=32", "scheme=int4 DRAM_bwx0.25"]
