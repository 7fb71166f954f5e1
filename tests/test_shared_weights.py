"""A recurrent weight every unrolled step reads is placed, counted and loaded once.

The models are tests/test_recurrent.py's seeded LSTM and GRU nodes (5 steps). Expected byte
counts are recomputed here from the ONNX weight shapes and the int macro's tile rule (N-bit
weights bit-sliced over N columns: ``rows`` inputs x ``array_cols / N`` channels per tile), not
read back from the tile pass. Every comparison is exact: bytes, tiles and cycles are integers.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from cimc.targets.params import load_target
from cimc.targets.simulator import simulate
from test_recurrent import HID, IN, SEQ, feeds_of, recurrent_model

import cimc
from cimc.cim_ops import weight_matrix
from cimc.compress import POOL_VALUE, build_pool, select_layers
from cimc.errors import CimcError
from cimc.program import OP
from cimc.weight_sharing import SOURCE_KEY

DIRS = 2
CALIBRATION = 3


def lstm() -> onnx.ModelProto:
    """Bidirectional, initial states as inputs, so no step's product folds away: per direction
    one input projection and SEQ recurrent products over one R^T."""
    return recurrent_model("LSTM", direction="bidirectional", states_as_inputs=True)


def compile_model(model, preset: str, graph=None, **overrides) -> cimc.Program:
    calibration = [feeds_of(model, seed=s) for s in range(CALIBRATION)]
    return cimc.compile(
        model if graph is None else graph,
        target=preset,
        calibration=calibration,
        overrides=overrides or None,
    )


def int_bytes(out: int, k: int, target) -> tuple[int, int]:
    """(tiles, bytes) of one copy of an int-N layer's W[out, k] on ``target``."""
    chan = min(target.array_cols // target.weight_bits, out)
    tiles = math.ceil(k / target.rows) * math.ceil(out / chan)
    return tiles, tiles * target.rows * chan * target.weight_bits // 8


def distinct_lstm_tiles(model: onnx.ModelProto, target) -> tuple[int, int]:
    """(tiles, bytes) of the distinct weights: per direction W^T [in, 4h] and R^T [h, 4h]."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    per = [int_bytes(init[n].shape[1], init[n].shape[2], target) for n in ("W", "R")]
    return DIRS * sum(t for t, _ in per), DIRS * sum(b for _, b in per)


def mappings(program: cimc.Program) -> dict[str, dict]:
    return {n.name: n.meta["mapping"] for n in program.graph.nodes() if "mapping" in n.meta}


def weight_loads(program: cimc.Program) -> int:
    return int(np.sum(program.instructions["op"] == OP["LOAD_W"]))


def simulate_checked(program: cimc.Program, model: onnx.ModelProto, tmp_path) -> None:
    """Saved and reloaded (the program checks run on load), then simulated: bit-identical to
    the interpreter, and every layer's simulated cycles are the ones tile chose it by."""
    program = cimc.load_program(program.save(tmp_path / "p.cimx"))
    feeds = feeds_of(model, seed=9)
    result = simulate(program, feeds)
    for name, want in cimc.interpret(program.graph, feeds).items():
        assert np.array_equal(result.outputs[name], want), name
    for name, m in mappings(program).items():
        assert m["modelled_cycles"] == result.layer_cycles[name], name


@pytest.mark.parametrize("preset", ["int8-sram", "cimnet"])
def test_a_shared_weight_is_placed_once(preset, tmp_path):
    model = lstm()
    target = load_target(preset)
    program = compile_model(model, preset)
    maps = mappings(program)
    followers = {n: m for n, m in maps.items() if "shares" in m}
    # per direction SEQ recurrent products: the first places R^T, the others reuse it
    assert len(maps) == DIRS * (1 + SEQ)
    assert len(followers) == DIRS * (SEQ - 1)
    for m in followers.values():
        lead = maps[m["shares"]]
        assert "shares" not in lead
        for key in ("first_array", "tiles", "tile_bytes", "rep", "order"):
            assert m[key] == lead[key], key
    tiles, nbytes = distinct_lstm_tiles(model, target)
    meta = program.graph.meta
    assert meta["weight_bytes"] == nbytes
    own = [m for m in maps.values() if "shares" not in m]
    assert meta["weight_bytes_placed"] == sum(m["tiles"] * m["rep"] * m["tile_bytes"] for m in own)
    assert meta["arrays_used"] == min(target.num_arrays, sum(m["tiles"] * m["rep"] for m in own))
    if target.weights == "sram":
        assert weight_loads(program) == 0  # on chip: loaded before the program runs
    else:  # one load per distinct tile (and replica span); nothing overwrites them in between
        assert weight_loads(program) == sum(m["tiles"] for m in own) == tiles
    simulate_checked(program, model, tmp_path)


def test_storage_report_counts_a_shared_weight_once():
    model = lstm()
    graph = compile_model(model, "int8-sram").graph
    report = cimc.storage_report(graph)
    distinct = DIRS * 4 * HID * (IN + HID)
    assert report["weights"] == distinct
    shared = [r for r in report["layers"] if "shares" in r]
    assert len(shared) == DIRS * (SEQ - 1)
    scale_bits = 32 * 4 * HID * 2 * DIRS  # per output channel, one W and one R per direction
    assert report["total_bits"] == 8 * distinct + scale_bits


def test_steps_compressed_differently_are_not_shared():
    """int4-sram keeps the last CiM layer (d1's last recurrent product) at 8 bits: it holds
    different weights, so it is placed on its own and the other steps still share."""
    program = compile_model(lstm(), "int4-sram")
    maps = mappings(program)
    last = [n.name for n in program.graph.nodes() if n.name in maps][-1]
    assert "shares" not in maps[last]
    assert sum("shares" in m for m in maps.values()) == DIRS * (SEQ - 1) - 1


def test_pool_steps_share_one_compression(tmp_path):
    """weight-pool compresses a shared R^T once against its steps' mean calibration moments,
    so on a CIMPool target the steps hold the same indices and error bits (the last step, left
    at 8 bits as the last layer, aside)."""
    model = lstm()
    program = compile_model(model, "cimpool-sram")
    maps = mappings(program)
    assert sum("shares" in m for m in maps.values()) == DIRS * (SEQ - 1) - 1
    simulate_checked(program, model, tmp_path)


def test_pool_kmeans_counts_a_shared_weight_once():
    """weight-pool's k-means sees the LSTM's distinct weights (told apart here by content, not
    by the importer's tags), not one copy of R^T per step; 8-long vectors and 16 pool rows, so
    the k-means has more vectors than rows to fit."""
    graph = cimc.import_onnx(lstm())
    chosen, _ = select_layers(graph, skip_first=True, skip_depthwise=True, skip_last=True)
    weights = {n.name: weight_matrix(n, graph).astype(np.float64) for n in chosen}
    distinct: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if not any(np.array_equal(w, d) for d in distinct.values()):
            distinct[name] = w
    # of each direction's W^T and R^T, the first layer (d0's W^T) is left out of the pool
    assert (len(weights), len(distinct)) == (DIRS * (1 + SEQ) - 2, 2 * DIRS - 1)
    pooled = cimc.run_passes(graph, "weight-pool{vector=8,pool=16}")
    pool = pooled.values[POOL_VALUE].data
    assert np.array_equal(pool, build_pool(distinct, 16, 8, "kmeans", 0))
    assert not np.array_equal(pool, build_pool(weights, 16, 8, "kmeans", 0))


def test_a_model_that_fits_only_when_shared_compiles():
    """Two arrays holding six tiles: the LSTM's four distinct tiles fit, its twelve layers'
    would not, and do not when the share marks are removed."""
    model = lstm()
    target = load_target("int8-sram")
    tiles, nbytes = distinct_lstm_tiles(model, target)
    tile_bytes = nbytes // tiles
    small = dict(L1_num_child=1, MA_num_child=2, MA_mem_size=3 * tile_bytes)
    program = compile_model(model, "int8-sram", **small)
    assert program.graph.meta["weight_bytes"] == nbytes <= 6 * tile_bytes
    graph = cimc.import_onnx(model)
    for node in graph.nodes():
        node.meta.pop(SOURCE_KEY, None)
    with pytest.raises(CimcError, match="does not fit"):
        compile_model(model, "int8-sram", graph=graph, **small)


def gru_on_one_array(**overrides) -> tuple[onnx.ModelProto, cimc.Program]:
    """GRU (linear_before_reset=0): per step two recurrent products, with R_zr^T [h, 2h] and
    R_h^T [h, h], compiled for one DRAM array after the input projection W^T [in, 3h]."""
    model = recurrent_model("GRU", states_as_inputs=True)
    program = compile_model(model, "cimnet", L1_num_child=1, MA_num_child=1, **overrides)
    assert sum("shares" in m for m in mappings(program).values()) == 2 * (SEQ - 1)
    return model, program


def loads_per_layer(program: cimc.Program) -> list[int]:
    """LOAD_W instructions of each CiM layer, in execution order."""
    ins = program.instructions
    layers = ins["layer"][ins["op"] == OP["LOAD_W"]]
    cim = [li for li, e in enumerate(program.layers) if e["kind"] == "cim"]
    return [int(np.sum(layers == li)) for li in cim]


def test_dram_keeps_weights_that_fit_side_by_side(tmp_path):
    """An array whose memory holds R_zr and R_h together loads each once, though each step
    loads the other onto the same array in between."""
    target = load_target("cimnet")
    zr, h = (int_bytes(out, HID, target)[1] for out in (2 * HID, HID))
    model, program = gru_on_one_array(MA_mem_size=zr + h)
    assert loads_per_layer(program) == [1, 1, 1] + [0, 0] * (SEQ - 1)
    simulate_checked(program, model, tmp_path)


def test_dram_reloads_weights_another_layer_overwrote(tmp_path):
    """A byte less and the array holds only one of R_zr and R_h: each evicts the other, so
    every step reloads both; the cycles still agree with the simulator."""
    target = load_target("cimnet")
    zr, h = (int_bytes(out, HID, target)[1] for out in (2 * HID, HID))
    model, program = gru_on_one_array(MA_mem_size=zr + h - 1)
    assert loads_per_layer(program) == [1] + [1, 1] * SEQ
    simulate_checked(program, model, tmp_path)


def test_dram_reloads_only_the_tiles_overwritten(tmp_path):
    """32-column arrays split R_zr^T into two tiles (4 channels each) and R_h^T into one, all of
    one size. The array holds two of them: R_h evicts the R_zr tile used longest ago, so each
    later step reloads that one tile of R_zr (its other tile stays) and R_h, which it evicts."""
    target = load_target("cimnet", overrides={"array_cols": 32})
    tiles, nbytes = int_bytes(2 * HID, HID, target)
    tile = nbytes // tiles
    assert tiles == 2 and int_bytes(HID, HID, target) == (1, tile)
    model, program = gru_on_one_array(array_cols=32, MA_mem_size=3 * tile - 1)
    w_tiles = next(iter(mappings(program).values()))["tiles"]  # the input projection
    assert loads_per_layer(program) == [w_tiles, 2, 1] + [1, 1] * (SEQ - 1)
    simulate_checked(program, model, tmp_path)
