"""The reports a researcher reads: ``cimc compile`` and ``cimc run`` per-layer tables (cycles,
bottleneck unit, energy, utilisation), ``--json``, ``--plot`` and ``cimc compare``.

Programs are compiled from the bundled digits CNN (small: seconds per preset). Ratios and totals
are compared exactly or to 1e-12 relative: both sides are the same float64 arithmetic on the
same deterministic simulation, so any larger gap is a bug, not rounding.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
from pathlib import Path

import pytest
from cimc.targets.simulator import LayerReport, SimResult, simulate
from cimc.targets.timing import UNIT_KINDS

import cimc
from cimc.cli import main
from cimc.program import load_program
from cimc.report.compare import METRICS
from cimc.report.layers import UNIT_LABELS, top_layers
from cimc.report.plot import DPI, WIDTH_IN, plot_layers

DIGITS = Path(cimc.__file__).parent / "data" / "digits_cnn.onnx"
TARGETS = ("cimpool-sram", "int8-sram")
SHAPE = ("--input-shape", "input=1,1,16,16")


def _rows(text: str) -> list[list[str]]:
    """The cells of every row of the (one) rich table in ``text``, header first."""
    rows = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in text.splitlines()]
    return [r for r in rows if r]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """target -> (.cimx path, compile's stdout) for the digits CNN."""
    out = tmp_path_factory.mktemp("reports")
    mp = pytest.MonkeyPatch()
    mp.setenv("COLUMNS", "260")  # wide enough that rich never folds a layer name
    done = {}
    for target in TARGETS:
        path = out / f"{target}.cimx"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(
                [
                    "compile",
                    str(DIGITS),
                    "--target",
                    target,
                    *SHAPE,
                    "--calibration",
                    "2",
                    "-o",
                    str(path),
                ]
            )
        assert code == 0
        done[target] = (path, buf.getvalue())
    mp.undo()
    return done


def test_unit_labels_cover_every_unit_kind_of_the_simulator():
    assert set(UNIT_LABELS) == {*UNIT_KINDS, "permutation"}


@pytest.mark.parametrize("target", TARGETS)
def test_compile_prints_the_simulated_per_layer_cycles(compiled, target):
    path, text = compiled[target]
    program = load_program(path)
    result = simulate(program, functional=False)
    rows = _rows(text)
    header, body = rows[0], rows[1:]
    col = {name: header.index(name) for name in ("layer", "tile cycles", "simulated cycles")}
    bottleneck = header.index("bottleneck")
    assert [r[col["layer"]] for r in body] == [layer.name for layer in result.layers]
    cim = 0
    for row, layer in zip(body, result.layers):
        assert row[col["simulated cycles"]] == f"{layer.cycles:,}"
        assert row[bottleneck] == UNIT_LABELS[layer.bottleneck]
        if row[col["tile cycles"]] != "-":
            cim += 1
            assert row[col["tile cycles"]] == row[col["simulated cycles"]]
    assert cim > 0
    assert f"equal the simulated cycles on all {cim} CiM layers" in text
    assert f"cycles {result.cycles:,} =" in text


@pytest.mark.parametrize("target", TARGETS)
def test_run_lists_layers_with_bottleneck_energy_and_utilisation(
    compiled, target, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "260")
    path, _ = compiled[target]
    program = load_program(path)
    out = tmp_path / "r.json"
    assert main(["run", str(path), "--json", str(out), "--plot", str(tmp_path / "r.png")]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    layers = report["layers"]
    order = [e["node"] for e in program.layers]
    names = [layer["name"] for layer in layers]
    assert names == sorted(names, key=order.index)  # execution order
    assert sum(layer["cycles"] for layer in layers) == report["cycles"]
    for layer in layers:
        assert layer["bottleneck"] in UNIT_LABELS
        assert 0.0 <= layer["utilisation"] <= 1.0
        busiest = max(layer["unit_busy"].values(), default=0)
        assert layer["unit_busy"].get(layer["bottleneck"], 0) == busiest
        assert all(v >= 0 for v in layer["energy_pj"].values())
    for component, total in report["energy_breakdown"].items():
        parts = sum(layer["energy_pj"][component] for layer in layers)
        assert parts == pytest.approx(total, rel=1e-12)
    assert 0 < report["area_used_mm2"] <= report["area_mm2"]
    assert report["latency_s"] > 0

    rows = _rows(text)
    header, body = rows[0], rows[1:]
    assert header[:8] == ["#", "layer", "op", "cycles", "bottleneck", "busy", "util", "energy nJ"]
    assert [r[1] for r in body] == names
    for row, layer in zip(body, layers):
        assert row[3] == f"{layer['cycles']:,}"
        assert row[4] == UNIT_LABELS[layer["bottleneck"]]
        assert row[7] == f"{sum(layer['energy_pj'].values()) / 1e3:,.1f}"
    assert f"chip area {report['area_mm2']:.3f} mm^2" in text
    assert f"uses {report['area_used_mm2']:.3f} mm^2" in text
    assert _png_size(tmp_path / "r.png")[0] == WIDTH_IN * DPI


def _fake_result(n: int) -> SimResult:
    """A simulation result of ``n`` layers with varied cycles (for the plot's layout only)."""
    layers = []
    for i in range(n):
        cycles = 100 + (i * 7919) % 5000
        busy = {"array": cycles // 2, "vector": cycles // 5, "l1_link": cycles // 3}
        busy |= {"permutation": cycles // 4} if i % 3 else {"dram": cycles // 6}
        layers.append(
            LayerReport(f"/block{i // 6}/layer{i}/Conv", "Conv", cycles, "array", 0.5, busy, {})
        )
    total = sum(layer.cycles for layer in layers)
    return SimResult(
        outputs={},
        cycles=total,
        clock_mhz=500.0,
        layers=layers,
        unit_busy={"array": total // 3, "vector": total // 8, "l1_link": total // 4},
        utilisation={},
        energy_pj=1.0,
        energy_breakdown={},
        area_mm2=1.0,
        area_breakdown={},
        area_used_mm2=1.0,
        area_used_breakdown={},
        instructions=0,
    )


def test_top_layers_keeps_the_largest_in_order_and_sums_the_rest():
    result = _fake_result(170)
    rows = top_layers(result, 24)
    assert len(rows) == 25 and rows[-1].layers == 146
    kept = rows[:-1]
    index = {layer.name: i for i, layer in enumerate(result.layers)}
    assert [index[r.label] for r in kept] == sorted(index[r.label] for r in kept)
    smallest_kept = min(r.cycles for r in kept)
    rest = [layer for layer in result.layers if layer.name not in {r.label for r in kept}]
    assert max(layer.cycles for layer in rest) <= smallest_kept
    assert sum(r.cycles for r in rows) == result.cycles
    assert rows[-1].unit_busy["array"] == sum(layer.unit_busy["array"] for layer in rest)
    assert len(top_layers(_fake_result(5), 24)) == 5  # nothing left out: no summed row


def test_plot_of_170_layers_has_bounded_size(compiled, tmp_path):
    program = load_program(compiled["cimpool-sram"][0])
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    plot_layers(_fake_result(30), program, str(small))
    plot_layers(_fake_result(170), program, str(large))
    (w_small, h_small), (w_large, h_large) = _png_size(small), _png_size(large)
    assert w_small == w_large == WIDTH_IN * DPI
    assert h_large == h_small  # both show the top 24 layers and one summed row
    assert h_large <= 14 * DPI


def test_compare_programs_gives_ratios_to_the_first(compiled, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "260")
    paths = [compiled[t][0] for t in TARGETS]
    out = tmp_path / "c.json"
    assert main(["compare", *map(str, paths), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["program"] for r in rows] == [str(p) for p in paths]
    assert [r["target"] for r in rows] == list(TARGETS)
    assert rows[0]["ratios"] == {m: 1.0 for m in METRICS}
    first, second = (simulate(load_program(p), functional=False) for p in paths)
    bits = [cimc.storage_report(load_program(p).graph)["bits_per_weight"] for p in paths]
    expected = {
        "cycles": second.cycles / first.cycles,
        "latency_s": second.latency_s / first.latency_s,
        "energy_pj": second.energy_pj / first.energy_pj,
        "area_mm2": second.area_mm2 / first.area_mm2,
        "area_used_mm2": second.area_used_mm2 / first.area_used_mm2,
        "bits_per_weight": bits[1] / bits[0],
    }
    assert rows[1]["ratios"] == pytest.approx(expected, rel=1e-12)
    assert rows[1]["cycles"] == second.cycles and rows[1]["energy_pj"] == second.energy_pj
    assert rows[1]["ratios"]["bits_per_weight"] > 1.0  # int8 keeps more bits than the pool
    table = _rows(text)
    assert table[0][:2] == ["program", "target"]
    assert f"{second.cycles:,} ({expected['cycles']:.2f}x)" in table[2]


def test_compare_one_model_on_several_targets_matches_the_compiled_files(
    compiled, tmp_path, capsys
):
    out = tmp_path / "c.json"
    args = ["compare", str(DIGITS), *SHAPE, "--calibration", "2", "--json", str(out)]
    for target in TARGETS:
        args += ["--target", target]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert [(r["program"], r["target"]) for r in rows] == [(DIGITS.name, t) for t in TARGETS]
    for row, target in zip(rows, TARGETS):  # compilation is deterministic
        result = simulate(load_program(compiled[target][0]), functional=False)
        assert (row["cycles"], row["energy_pj"]) == (result.cycles, result.energy_pj)


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "{a}"],  # one program: nothing to compare
        ["compare", str(DIGITS), *SHAPE, "--target", "cimpool-sram"],  # one target
        ["compare", "{a}", "{a}", "--target", "int8-sram"],  # --target with .cimx files
        ["compare", "{a}", "/nonexistent/b.cimx"],  # a missing program
    ],
)
def test_compare_errors_are_one_line(compiled, args, capsys):
    a = str(compiled["cimpool-sram"][0])
    assert main([x.format(a=a) for x in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cimc: error: ") and err.count("\n") == 1
