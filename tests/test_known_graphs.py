"""The search loop's use of what it already knows: an objective of the compressed graph alone
(accuracy, fidelity, bits) is exact for every candidate that runs an evaluated graph, and a share
of each round tries the true front's networks on the hierarchies the predictors rate best."""

from __future__ import annotations

import numpy as np
from cimc.targets.params import load_target
from test_block_mutation import ARCH, HW, evaluate, synthetic_space

from cimc.search import Space
from cimc.search.loop import (
    Settings,
    _front_on_other_hardware,
    _hardware_share,
    _known_graphs,
    _propose,
)
from cimc.search.objectives import OBJECTIVES
from cimc.search.study import Row, config_hash

OBJ = [OBJECTIVES["accuracy"], OBJECTIVES["cycles"]]


def _rows(space: Space, indices: list[list[int]], round_: int = 0) -> list[Row]:
    out = []
    for idx in indices:
        config = space.from_indices(idx)
        metrics = evaluate(config).to_dict()
        out.append(Row(config_hash(config), round_, config, metrics, None, 0.0))
    return out


def test_graph_mask_is_the_architecture_scheme_and_pass_options():
    space = Space.from_target(load_target("cimpool-sram"), family="elastic-resnet-chars")
    mask = dict(zip(space.names, space.graph_mask()))
    assert all(mask[n] for n in space.names if n.startswith("arch."))
    for name in ("scheme", "vector", "keep"):
        assert mask[name], name
    for name in ("DRAM_bw", "L2_bw", "L1_num_child", "MA_mem_size", "vector_width"):
        assert not mask[name], name


def test_known_graphs_replace_predictions_of_evaluated_networks_only():
    space = synthetic_space()
    rows = _rows(space, [[2] * ARCH + [0] * HW, [0] * ARCH + [3] * HW])
    known = _known_graphs(space, rows, OBJ)
    x = np.array(
        [
            [2] * ARCH + [3] * HW,  # the first network on another hierarchy: known
            [0] * ARCH + [1] * HW,  # the second one: known
            [1] * ARCH + [0] * HW,  # a network never evaluated: predicted
        ]
    )
    predicted = np.array([[-0.5, 10.0], [-0.6, 20.0], [-0.7, 30.0]])
    filled = known.fill(x, predicted)
    assert filled[0, 0] == -rows[0].metrics["accuracy"]  # minimised: accuracy negated
    assert filled[1, 0] == -rows[1].metrics["accuracy"]
    assert filled[2, 0] == -0.7
    assert np.array_equal(filled[:, 1], predicted[:, 1])  # cycles depend on the hierarchy
    assert predicted[0, 0] == -0.5  # the caller's array is left as it was


def test_front_networks_go_to_other_hierarchies_extremes_first():
    """Three front networks: each candidate keeps one network's architecture and changes its
    hierarchy only; the two extremes of the front (most accurate, cheapest) come first."""
    space = synthetic_space()
    front = np.array([[2] * ARCH + [1] * HW, [1] * ARCH + [1] * HW, [0] * ARCH + [1] * HW])
    points = np.array([[-0.93, 300.0], [-0.90, 200.0], [-0.88, 100.0]])

    def predict(x):  # faster with every larger hierarchy value, as the synthetic cycles
        return np.stack([np.zeros(len(x)), -x[:, ARCH:].sum(1)], axis=1), None

    taken = {config_hash(space.from_indices(f)) for f in front}
    out = _front_on_other_hardware(
        space, front, points, predict, np.random.default_rng(0), 6, taken
    )
    assert len(out) == 6 and len({config_hash(space.from_indices(x)) for x in out}) == 6
    networks = [int(x[0]) for x in out]
    assert networks[:2] == [2, 0] and networks[2] == 1  # crowding order: extremes, then middle
    assert sorted(networks) == [0, 0, 1, 1, 2, 2]
    for x in out:
        assert np.all(x[:ARCH] == x[0])  # the architecture block is the front network's
    assert np.all(out[0][ARCH:] == 3)  # the local search reached the predicted best hierarchy


def test_proposals_record_what_the_predictors_expected():
    """Rows keep the predictors' own values (the rounds' held-out scores compare them with the
    truth), though the search ranked candidates of evaluated networks on their true accuracy."""
    space = synthetic_space()
    rng = np.random.default_rng(1)
    rows = _rows(space, [list(r) for r in space.sample(10, rng)] + [[2] * ARCH + [1] * HW])
    settings = Settings(tuple(OBJ), 30, 6, inner_evals=200)
    configs, predicted, recorded = _propose(space, rows, settings, np.random.default_rng(2), 6)
    assert recorded["hardware_share"] == settings.hardware_rate  # no proposing round before
    known = {
        config_hash(space.from_indices(np.r_[space.to_indices(r.config)[:ARCH], [0] * HW])): r
        for r in rows
    }
    seen = 0
    for config, pred in zip(configs, predicted):
        arch_only = space.from_indices(np.r_[space.to_indices(config)[:ARCH], [0] * HW])
        row = known.get(config_hash(arch_only))
        if row is not None:
            seen += 1
            assert pred["accuracy"] != row.metrics["accuracy"]
    assert seen >= 3  # half the batch: front networks on other hierarchies


def test_hardware_share_follows_what_each_kind_added_to_the_front():
    """A round whose known networks on new hierarchies added nothing to the true front (the
    largest network on a slower hierarchy) while a new network did: the next share is 0. The
    reverse (the largest network on a faster hierarchy; a new network dominated): the rate, as
    before any proposing round; rate 0 stays 0."""
    space = synthetic_space()
    graph_of = lambda r: _known_graphs(space, [], OBJ).key(space.to_indices(r.config))  # noqa: E731
    settings = Settings(tuple(OBJ), 30, 6, hardware_rate=0.5)
    largest, middle, smallest = [2] * ARCH, [1] * ARCH, [0] * ARCH
    slow, mid, fast = [0] * HW, [1] * HW, [3] * HW
    first = _rows(space, [largest + fast, smallest + fast])
    assert _hardware_share(first, settings, graph_of) == 0.5
    hierarchy_idle = first + _rows(space, [largest + slow, middle + fast], 1)
    assert _hardware_share(hierarchy_idle, settings, graph_of) == 0.0
    first = _rows(space, [largest + mid, smallest + fast])
    networks_idle = first + _rows(space, [largest + fast, middle + slow], 1)
    assert evaluate(space.from_indices(middle + slow)).cycles > first[0].metrics["cycles"]
    assert _hardware_share(networks_idle, settings, graph_of) == 0.5
    off = Settings(tuple(OBJ), 30, 6, hardware_rate=0.0)
    assert _hardware_share(networks_idle, off, graph_of) == 0.0


def test_no_share_leaves_the_rng_to_nsga2(monkeypatch):
    """A space of one block, or a share that rounds to no candidate, never enters the hierarchy
    share: its random hierarchies would draw from the generator NSGA-II then uses, and a search
    without the share would no longer be the one it was."""
    from cimc.search import loop

    def refuse(*args, **kwargs):
        raise AssertionError("the share drew candidates")

    monkeypatch.setattr(loop, "_front_on_other_hardware", refuse)
    rng = np.random.default_rng(1)
    for space, rate in ((synthetic_space(arch=False), 0.5), (synthetic_space(), 0.0)):
        rows = _rows(space, [list(r) for r in space.sample(10, rng)])
        settings = Settings(tuple(OBJ), 30, 6, inner_evals=200, hardware_rate=rate)
        configs, _, _ = _propose(space, rows, settings, np.random.default_rng(2), 6)
        assert len(configs) == 6
