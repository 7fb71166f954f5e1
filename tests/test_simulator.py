"""The simulator: outputs bit-identical to the reference interpreter on every model and preset,
and cycle totals within their bounds."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from cimc.targets.params import load_target, presets
from cimc.targets.simulator import simulate
from cimc.targets.timing import time_program
from helpers import LIGHT_MODELS, light_inputs, light_path

import cimc
from cimc.cli import main
from cimc.compiler import random_calibration
from cimc.models import export_onnx

# Reduced resolution for the zoo (the same graphs; benchmarks/sim_speed.py runs 224 px).
ZOO = {"resnet18": 32, "resnet50": 32, "mobilenetv3_large": 32, "vit_b16": 32}
PRESETS = sorted(presets())
# One compressed graph per macro kind; each preset then tiles and lowers it. Weight compression
# runs without calibration (output-aware assignment is tested in test_compression.py and costs
# minutes on VGG-19's FC layers); activation quantisation, which the numerics need, runs with it.
COMPRESSION = {
    "cimpool": (
        "fold-bn,zpack,weight-pool,error-term,error-prune",
        "quantize-act,permute-schedule",
    ),
    "int8": ("fold-bn,quantize-weights{bits=8}", "quantize-act"),
    "int4": ("fold-bn,quantize-weights{bits=4}", "quantize-act"),
}


# Golden programs (process replay): sha256 of every program's instruction stream and its
# simulated cycles. A refactor must leave them unchanged; a change that means to alter programs
# or timing regenerates them with CIMC_UPDATE_GOLDEN=1 and says why in its commit. Not the whole
# file's bytes: its weights and scales carry float bits that follow the CPU's BLAS kernels (an
# AVX2-only CPU gave other bytes than the AVX-512 one the records were made on, with the same
# instructions and cycles); the outputs are checked bit for bit against the interpreter above.
GOLDEN = Path(__file__).parent / "data" / "golden_programs.json"


def check_golden(key: str, instructions: np.ndarray, cycles: int) -> None:
    digest = hashlib.sha256(np.ascontiguousarray(instructions).tobytes()).hexdigest()
    record = {"instructions_sha256": digest, "cycles": int(cycles)}
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("CIMC_UPDATE_GOLDEN"):
        golden[key] = record
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert key in golden, f"no golden record for {key}; run with CIMC_UPDATE_GOLDEN=1"
    assert golden[key] == record, f"{key}: program or cycles changed"


def kind_of(preset: str) -> str:
    t = load_target(preset)
    return "cimpool" if t.macro == "cimpool" else f"int{t.weight_bits}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    models = {n: export_onnx(n, out / f"{n}.onnx", image_size=s, seed=2) for n, s in ZOO.items()}
    models.update({n: light_path(n) for n in LIGHT_MODELS})
    return models


_compressed: dict[tuple[str, str], cimc.Graph] = {}


def compressed(sources, model: str, kind: str) -> cimc.Graph:
    """The model compressed for a weight kind; only one model's graphs are kept (the cases run
    model by model), so the big light models' weights do not pile up in the suite's memory."""
    key = (model, kind)
    if any(m != model for m, _ in _compressed):
        _compressed.clear()
    if key not in _compressed:
        graph = cimc.import_onnx(sources[model])
        calib = random_calibration(graph, 1, seed=7)
        weights, activations = COMPRESSION[kind]
        _compressed[key] = cimc.run_passes(
            cimc.run_passes(graph, weights),
            activations,
            calibration=calib,
            target=load_target("cimpool-sram"),  # permute-schedule's lanes and banks
        )
    return _compressed[key]


def feeds_for(model: str, graph) -> dict:
    if model in LIGHT_MODELS:
        return light_inputs(onnx.load(str(light_path(model)), load_external_data=False))
    rng = np.random.default_rng(11)
    return {i: rng.standard_normal(graph.values[i].shape).astype(np.float32) for i in graph.inputs}


# Streaming the big onnx light models' weights from DRAM takes minutes of CI per model and adds
# nothing the zoo on cimpool-dram does not check: those pairs run on the on-chip presets only.
HEAVY_ON_DRAM = {"vgg19", "bvlc_alexnet", "zfnet512", "densenet121", "resnet50"}
CASES = [
    (model, preset)
    for model in list(ZOO) + LIGHT_MODELS
    for preset in PRESETS
    if not (preset == "cimpool-dram" and model in HEAVY_ON_DRAM)
]


@pytest.mark.parametrize("model, preset", CASES)
def test_bit_identical_and_bounded(sources, model, preset, tmp_path):
    graph = compressed(sources, model, kind_of(preset))
    compiled = cimc.compile(graph, target=preset, pipeline="zpack", calibration=[])
    program = cimc.load_program(compiled.save(tmp_path / "p.cimx"))  # as users run it: a file
    feeds = feeds_for(model, graph)
    result = simulate(program, feeds)
    reference = cimc.interpret(compiled.graph, feeds)
    assert set(result.outputs) == set(reference)
    for name in reference:
        assert np.array_equal(result.outputs[name], reference[name]), name  # bit for bit
        assert np.all(np.isfinite(reference[name]))
    busy = time_program(program.instructions, program.target).busy
    assert busy.max() <= result.cycles <= busy.sum()
    assert result.energy_pj > 0 and result.area_mm2 > 0
    assert sum(result.layer_cycles.values()) == result.cycles
    check_golden(f"{model}@{preset}", program.instructions, result.cycles)
    # One cost truth: the cycles tile chose each mapping by are the simulator's for that layer.
    for node in program.graph.nodes():
        if "mapping" in node.meta:
            assert node.meta["mapping"]["modelled_cycles"] == result.layer_cycles[node.name]


def test_to_json_and_units(sources):
    graph = compressed(sources, "resnet18", "cimpool")
    program = cimc.compile(graph, target="cimpool-dram", pipeline="zpack", calibration=[])
    result = simulate(program, feeds_for("resnet18", graph))
    data = json.loads(result.to_json())
    for key in (
        "cycles",
        "latency_s",
        "energy_pj",
        "energy_breakdown",
        "area_mm2",
        "area_breakdown",
        "unit_busy",
        "utilisation",
        "layers",
        "area_used_mm2",
    ):
        assert key in data
    for unit in ("dram", "l2_link", "l1_link", "array", "array_write", "permutation", "vector"):
        assert unit in data["unit_busy"], unit
        assert 0 <= data["utilisation"][unit] <= 1
    assert data["unit_busy"]["dram"] > 0 and data["energy_breakdown"]["dram"] > 0
    assert data["latency_s"] == pytest.approx(data["cycles"] / 500e6)


def test_energy_parts_sum_and_area_is_the_configured_chips(sources):
    """Totals equal the sums of their parts (per layer and per component); area covers every
    configured array, so it grows with the array count while the used part does not."""
    graph = compressed(sources, "resnet18", "cimpool")
    results = {}
    for children in (4, 8):
        target = load_target("cimpool-sram", {"MA_num_child": children})
        program = cimc.compile(graph, target=target, pipeline="zpack", calibration=[])
        results[children] = simulate(program, functional=False)
    r = results[8]
    per_layer = sum(sum(layer.energy_pj.values()) for layer in r.layers)
    assert per_layer == pytest.approx(r.energy_pj, rel=1e-12)
    assert sum(r.energy_breakdown.values()) == pytest.approx(r.energy_pj, rel=1e-12)
    dynamic = {k: v for k, v in r.energy_breakdown.items() if k not in ("dram", "adc")}
    assert all(v > 0 for v in dynamic.values())  # weights on chip, ideal adder tree
    assert r.energy_breakdown["dram"] == 0 and r.energy_breakdown["leakage"] > 0
    assert r.area_mm2 == pytest.approx(sum(r.area_breakdown.values()))
    assert r.area_used_mm2 < r.area_mm2
    assert results[4].area_mm2 < results[8].area_mm2  # half the arrays, smaller chip
    for layer in r.layers:
        assert layer.bottleneck in layer.unit_busy or layer.unit_busy == {}
        assert 0 <= layer.utilisation <= 1


def test_timing_only_matches_full_timing(sources):
    graph = compressed(sources, "mobilenetv3_large", "int8")
    program = cimc.compile(graph, target="cimnet", pipeline="zpack", calibration=[])
    full = simulate(program, feeds_for("mobilenetv3_large", graph))
    timing = simulate(program, functional=False)
    assert timing.cycles == full.cycles and timing.outputs == {}
    assert timing.energy_pj == full.energy_pj


def test_cli_run(sources, tmp_path, capsys):
    out = tmp_path / "r.cimx"
    assert main(["compile", str(sources["resnet18"]), "--calibration", "1", "-o", str(out)]) == 0
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32))
    code = main(
        [
            "run",
            str(out),
            "--input",
            f"input={x}",
            "--compare",
            str(sources["resnet18"]),
            "--json",
            str(tmp_path / "r.json"),
            "--plot",
            str(tmp_path / "r.png"),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "cycles" in text and "energy" in text and "area" in text and "cosine" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= report["compare"]["logits"]["top1_agreement"] <= 1.0
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert main(["run", str(out)]) == 0
    assert "seeded random" in capsys.readouterr().out
