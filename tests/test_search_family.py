"""The search's architecture axis: an elastic family's variables in the space, subnets
evaluated through the compiled graph."""

from __future__ import annotations

import numpy as np
import pytest
from cimc.targets.params import load_target

from cimc.cli import main
from cimc.errors import OptionError
from cimc.models.elastic import family
from cimc.search import Evaluator, Space
from cimc.search.architecture import EVALUATION, arch_config, check_objectives

FAMILY = "elastic-resnet-chars"


@pytest.fixture(scope="module")
def space():
    return Space.from_target(load_target("cimpool-sram"), None, FAMILY)


def test_family_variables_come_first_and_the_base_is_the_largest(space):
    fam = family(FAMILY)
    arch = [v.name for v in space.variables if v.name.startswith("arch.")]
    assert arch == [f"arch.{n}" for n in fam.variables()]
    assert space.names[: len(arch)] == arch
    assert arch_config(space.base_config()) == fam.largest()
    assert space.describe()["family"] == FAMILY
    # the architecture never leaks into the pipeline or the target
    assert "arch" not in space.pipeline_for(space.base_config())


def test_features_leave_out_missing_blocks_and_count_choices_for_sums(space):
    """Two networks that differ only in a block neither has encode alike; a cost's encoding adds,
    per stage, how many blocks take each expansion, which equal costs share."""
    fam = family(FAMILY)
    slot = next(s for s in fam.slots() if s.index >= min(fam.variables()[s.depth]))
    (var,) = slot.variables
    a = space.base_config() | {f"arch.{slot.depth}": min(fam.variables()[slot.depth])}
    choices = fam.variables()[var]
    b = a | {f"arch.{var}": choices[0]}
    a |= {f"arch.{var}": choices[-1]}
    idx = np.array([space.to_indices(a), space.to_indices(b)])
    assert not np.array_equal(space.one_hot(idx)[0], space.one_hot(idx)[1])
    plain = space.features(idx)
    assert plain.shape == space.one_hot(idx).shape and np.array_equal(plain[0], plain[1])
    summed = space.features(idx, summed=True)
    assert np.array_equal(summed[0], summed[1])
    counts = summed[:, plain.shape[1] :]
    present = [s for s in fam.slots() if a[f"arch.{s.depth}"] > s.index]
    assert counts[0].sum() == len(present)  # one count per block that exists
    # the largest network: every block, and the stage's blocks all at the largest expansion
    full = space.features(space.to_indices(space.base_config()), summed=True)
    assert full[0, plain.shape[1] :].sum() == len(fam.slots())
    assert np.array_equal(
        full[:, : plain.shape[1]], space.one_hot(space.to_indices(space.base_config()))
    )


def test_the_search_takes_one_config_per_network(space):
    """Configs that differ only in a block neither network has are one network: canonical()
    sets those variables to their first choice, and the loop proposes each network once."""
    from cimc.search.loop import _take
    from cimc.search.study import config_hash

    fam = family(FAMILY)
    rng = np.random.default_rng(0)
    draws = space.sample(64, rng)
    canon = space.canonical(draws)
    assert np.array_equal(space.canonical(canon), canon)
    assert np.array_equal(space.features(canon), space.features(draws))
    assert (canon != draws).any(), "64 draws leave out some blocks"
    for row in space.canonical(draws):
        config = space.from_indices(row)
        for slot in fam.slots():
            if config[f"arch.{slot.depth}"] <= slot.index:
                assert all(config[f"arch.{v}"] == fam.variables()[v][0] for v in slot.variables)
    twin = draws[np.flatnonzero((canon != draws).any(axis=1))[0]]
    taken = {config_hash(space.from_indices(space.canonical(twin)))}
    assert _take(space, twin, taken) is None
    base = space.to_indices(space.base_config())
    assert np.array_equal(_take(space, base, set()), base)  # the largest lacks no block


def test_space_file_restricts_an_architecture_variable(tmp_path):
    name = next(iter(family(FAMILY).variables()))
    choices = family(FAMILY).variables()[name]
    good = tmp_path / "good.toml"
    good.write_text(f'[choices]\n"arch.{name}" = [{choices[0]}]\n')
    sp = Space.from_target(load_target("cimpool-sram"), good, FAMILY)
    assert sp.variables[0].choices == (choices[0],)
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[choices]\n"arch.{name}" = [{max(choices) + 97}]\n')
    with pytest.raises(OptionError, match=rf"arch.{name}.*not in the family's space"):
        Space.from_target(load_target("cimpool-sram"), bad, FAMILY)


def test_a_subnet_is_scored_on_validation_labels_through_the_compiled_graph(space, tmp_path):
    """The smallest subnet's accuracy is measured on the family's validation images after
    compression (int8 here, the quickest scheme); its ONNX is exported once per architecture."""
    fam = family(FAMILY)
    config = space.base_config() | {f"arch.{k}": v for k, v in fam.smallest().items()}
    config["scheme"] = "int8"
    ev = Evaluator("", space, None, None, str(tmp_path))
    m = ev(config)
    assert m.error is None, m.error
    assert m.accuracy is not None and 0.0 <= m.accuracy <= 1.0
    assert m.accuracy * EVALUATION == pytest.approx(round(m.accuracy * EVALUATION))
    assert m.cycles > 0 and m.cosine is not None
    exported = sorted(tmp_path.glob(f"{FAMILY}-*.onnx"))
    assert len(exported) == 1
    again = ev(
        config | {"L1_num_child": space.variables[space.names.index("L1_num_child")].choices[0]}
    )
    assert again.compress_cached and again.accuracy == m.accuracy
    assert sorted(tmp_path.glob(f"{FAMILY}-*.onnx")) == exported


def test_random_weight_families_take_hardware_objectives_only():
    check_objectives("elastic-mbv3", ("cycles", "energy"))
    with pytest.raises(OptionError, match="random weights"):
        check_objectives("elastic-mbv3", ("accuracy", "cycles"))


def test_cli_refuses_accuracy_on_an_imagenet_family(tmp_path, capsys):
    args = ["search", "--family", "elastic-resnet", "--objectives", "fidelity,cycles"]
    assert main([*args, "--study", str(tmp_path / "s")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "random weights" in lines[0]


def test_cli_show_space_lists_the_family(capsys):
    assert main(["search", "--family", FAMILY, "--show-space"]) == 0
    out = capsys.readouterr().out
    n_arch = len(family(FAMILY).variables())
    assert sum(line.startswith("arch.") for line in out.splitlines()) == n_arch
    size = int(out.strip().splitlines()[-1].split()[2].replace(",", ""))
    assert size == Space.from_target(load_target("cimpool-sram"), None, FAMILY).size
    assert size >= 2**n_arch * Space.from_target(load_target("cimpool-sram")).size


def test_final_pareto_points_are_scored_on_the_test_split(tmp_path, monkeypatch):
    """Every point of the final front carries its accuracy on test images the search never
    saw. The test subset is cut to 216 images for time (6 per class); validation and test
    accuracy estimate the same quantity, so they differ by sampling noise only (a binomial
    standard deviation of about 2.4 points at 216 images and 90 %): 0.15 is 5+ deviations of
    both together, while scoring against the wrong labels would land near chance (2.8 %)."""
    import json

    from cimc import search
    from cimc.search import architecture
    from cimc.search.report import pareto_rows, write_report

    monkeypatch.setattr(architecture, "TEST", 216)
    space_file = tmp_path / "space.toml"
    space_file.write_text('[choices]\nscheme = ["int8"]\n')
    study = search.run(
        None, family=FAMILY, study=tmp_path / "s", space=space_file, budget=4, population=2
    )
    front = pareto_rows(study)
    scores = study.meta()["test_accuracy"]
    assert front and set(scores) == {r.hash for r in front}
    for row in front:
        test = scores[row.hash]
        assert test * 216 == pytest.approx(round(test * 216))
        assert abs(test - row.metrics["accuracy"]) < 0.15
    report = json.loads(write_report(study).read_text())
    # one row per point of the front (tied configs counted), each with a front row's test score
    assert sum(p["configs"] for p in report["pareto"]) == len(front)
    for p in report["pareto"]:
        point = [
            r
            for r in front
            if (r.metrics["accuracy"], r.metrics["cycles"]) == (p["accuracy"], p["cycles"])
        ]
        assert len(point) == p["configs"] and p["test_accuracy"] in {scores[r.hash] for r in point}


def test_random_weight_families_measure_few_inputs_labelled_ones_their_validation_split(tmp_path):
    """A random-weight family's objectives are hardware only, so its calibrating and fidelity
    inputs are kept to RANDOM_CALIBRATION and RANDOM_EVALUATION (360 of them through a 224 px
    ResNet-50 took minutes per architecture); a labelled family reads its validation images, as
    many as asked for."""
    import numpy as np

    from cimc.search.architecture import RANDOM_CALIBRATION, RANDOM_EVALUATION
    from cimc.search.evaluate import CALIBRATION

    imagenet = Space.from_target(load_target("int8-sram"), None, "elastic-resnet")
    ev = Evaluator("", imagenet, None, None, str(tmp_path))
    assert ev.data_for() == (None, RANDOM_CALIBRATION, RANDOM_EVALUATION)
    assert RANDOM_EVALUATION < EVALUATION and RANDOM_CALIBRATION < CALIBRATION
    chars = Space.from_target(load_target("int8-sram"), None, FAMILY)
    path, cal, n = Evaluator("", chars, None, None, str(tmp_path), evaluation=72).data_for()
    assert (cal, n) == (CALIBRATION, 72)
    with np.load(path) as data:
        assert len(data["labels"]) == len(data["input"]) == CALIBRATION + 72
    with pytest.raises(OptionError, match="validation images"):
        Evaluator("", chars, None, None, str(tmp_path), evaluation=10**6).data_for()


def test_the_calibration_count_changes_fidelity_inputs_not_hardware_objectives(
    space, tmp_path, monkeypatch
):
    """Why a random-weight family may calibrate on RANDOM_CALIBRATION inputs: cycles, energy and
    area of a compiled subnet do not depend on how many inputs calibrated it (checked here on
    the 32 px family, int8; the 224 px check is in RANDOM_CALIBRATION's docstring)."""
    import cimc.search.architecture as architecture

    fam = family(FAMILY)
    config = space.base_config() | {f"arch.{k}": v for k, v in fam.smallest().items()}
    config["scheme"] = "int8"
    runs = []
    for count in (16, 2):
        monkeypatch.setattr(architecture, "calibration_inputs", lambda name, n=count: n)
        runs.append(Evaluator("", space, None, None, str(tmp_path))(config))
    assert runs[0].error is None and runs[1].error is None
    assert not runs[1].compress_cached  # compressed again on 2 inputs, not read back
    assert (runs[0].cycles, runs[0].energy_pj, runs[0].area_mm2) == (
        runs[1].cycles,
        runs[1].energy_pj,
        runs[1].area_mm2,
    )


def test_the_pareto_table_leaves_out_blocks_the_subnet_lacks(space):
    from cimc.search.report import difference

    fam = family(FAMILY)
    slot = next(s for s in fam.slots() if s.index >= min(fam.variables()[s.depth]))
    (var,) = slot.variables
    base = space.base_config()
    config = base | {f"arch.{slot.depth}": min(fam.variables()[slot.depth])}
    config[f"arch.{var}"] = fam.variables()[var][0]  # canonical: changed, but the block is gone
    shown = difference(config, base, FAMILY)
    assert f"arch.{slot.depth}=" in shown and f"arch.{var}=" not in shown
    assert f"arch.{var}=" in difference(config, base)  # without the family: every change


def test_an_evicted_subnet_and_graph_are_rebuilt_and_measure_the_same(space, tmp_path, monkeypatch):
    """A study's cache over its limit loses the subnet's export and compressed graph; the next
    config on that architecture exports and compresses it again, with the same objectives."""
    import importlib

    import cimc.search.cache_limit as cache_limit

    evaluation = importlib.import_module("cimc.search.evaluate")  # not the function of that name
    monkeypatch.setattr(cache_limit, "IN_USE_S", 0.0)  # this process is the only user
    monkeypatch.setattr(evaluation, "_GRAPHS", evaluation._RecentGraphs())
    config = space.base_config() | {f"arch.{k}": v for k, v in family(FAMILY).smallest().items()}
    config["scheme"] = "int8"
    ev = Evaluator("", space, None, None, str(tmp_path), cache_gb=1e-9)
    first = ev(config)
    assert first.error is None and not first.compress_cached
    products = sorted(tmp_path.glob("*.onnx")) + sorted(tmp_path.glob("*.pkl"))
    assert products == [] and sorted(tmp_path.glob("*.npz"))  # evicted; the data file stays
    evaluation._GRAPHS.clear()  # a new worker process: nothing in memory either
    again = ev(config)
    assert not again.compress_cached  # not read back: rebuilt
    skip = ("seconds", "compress_cached")
    assert {k: v for k, v in first.to_dict().items() if k not in skip} == {
        k: v for k, v in again.to_dict().items() if k not in skip
    }
