"""Properties the joint search relies on, over seeded random configurations drawn from each
preset's search choices (two zoo models, 200 configurations in all): more bandwidth adds no more
than 1% of cycles (scheduling anomalies aside, none), more arrays (more L1 decoders, each with its
arrays) never add cycles on chip, cycles are at least the busiest unit's busy cycles, chip area
grows with the number and size of the arrays, energy and area are positive and finite.

More arrays per decoder (MA_num_child) is not monotone in cycles, and is not tested so: a layer's
tiles are placed on consecutive arrays, so with more children per decoder they sit under fewer L1
decoders and their inputs share fewer L2 links (seen: int4-sram, ResNet-18, +2.8% cycles)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from cimc.targets.params import load_target, presets, search_choices
from cimc.targets.simulator import simulate

import cimc
from cimc.compiler import default_pipeline, random_calibration
from cimc.models import export_onnx

MODELS = {
    "resnet18": 16,
    "mobilenetv3_large": 16,
}  # small images: the hierarchy, not the data, varies
CONFIGS_PER_PRESET = 20  # x 5 presets x 2 models = 200
HIERARCHY = ("DRAM_bw", "L2_bw", "L1_bw", "MA_bw", "L1_num_child", "MA_num_child", "MA_mem_size")
LINKS = ("DRAM_bw", "L2_bw", "L1_bw", "MA_bw")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """One compressed graph per (model, compression pipeline); each configuration then tiles and
    lowers it."""
    out = tmp_path_factory.mktemp("props")
    graphs = {}
    for name, size in MODELS.items():
        graph = cimc.import_onnx(export_onnx(name, out / f"{name}.onnx", image_size=size, seed=3))
        calib = random_calibration(graph, 1, seed=5)
        done: dict[str, cimc.Graph] = {}
        for preset in presets():
            target = load_target(preset)
            pipe = default_pipeline(target)
            if pipe not in done:
                done[pipe] = cimc.run_passes(graph, pipe, calibration=calib, target=target)
            graphs[name, preset] = done[pipe]
    return graphs


def run(graph, target):
    """Simulated result, or None when the configuration cannot hold the model."""
    try:
        program = cimc.compile(graph, target=target, pipeline="zpack", calibration=[])
    except cimc.CimcError as exc:
        assert "does not fit" in str(exc) or "error rows" in str(exc)
        return None
    return simulate(program, functional=False)


def random_configs(preset: str, rng: np.random.Generator, n: int) -> list[dict]:
    choices = {k: v for k, v in search_choices(load_target(preset)).items() if k in HIERARCHY}
    return [{k: v[rng.integers(len(v))] for k, v in choices.items()} for _ in range(n)]


@pytest.mark.parametrize("preset", sorted(presets()))
@pytest.mark.parametrize("model", list(MODELS))
def test_properties_over_random_configurations(graphs, model, preset):
    graph = graphs[model, preset]
    rng = np.random.default_rng(zlib.crc32(f"{model}@{preset}".encode()))
    checked = 0
    for config in random_configs(preset, rng, CONFIGS_PER_PRESET):
        target = load_target(preset, config)
        base = run(graph, target)
        if base is None:
            continue
        checked += 1
        assert base.cycles >= max(base.unit_busy.values())
        parts = (base.energy_pj, base.area_mm2, base.area_used_mm2, *base.energy_breakdown.values())
        for value in parts:
            assert math.isfinite(value) and value >= 0
        assert base.energy_pj > 0 and base.area_mm2 > 0
        link = LINKS[rng.integers(len(LINKS))]
        faster = run(graph, target.replace(**{link: getattr(target, link) * 2}))
        # Greedy per-layer mapping over a list-scheduled timing model is not strictly monotone
        # (Graham's scheduling anomalies): seen +0.14% on MobileNetV3 with L1_bw doubled.
        # Anything beyond 1% would be a modelling error, not an anomaly.
        assert faster.cycles <= base.cycles * 1.01, (link, config)
        denser = run(graph, target.replace(MA_num_child=target.MA_num_child * 2))
        assert denser.area_mm2 > base.area_mm2
        more = run(graph, target.replace(L1_num_child=target.L1_num_child * 2))
        assert more.area_mm2 > base.area_mm2
        if target.weights == "sram":
            assert more.cycles <= base.cycles, config
        larger = run(graph, target.replace(MA_mem_size=target.MA_mem_size * 2))
        assert larger.area_mm2 > base.area_mm2
    assert checked >= CONFIGS_PER_PRESET // 3  # most random configurations hold the model
