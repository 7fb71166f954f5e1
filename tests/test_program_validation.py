"""A .cimx whose checksum is valid but whose contents cimc did not write is a ProgramError naming
the instruction or blob, never a kernel reading outside its arrays; a NaN input propagates
through a pool layer exactly as in interpret."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cimc.targets.simulator import simulate

import cimc
from cimc.errors import ProgramError
from cimc.program import load_program, to_bytes

MODEL = "cimc/data/digits_cimpool.onnx"


@pytest.fixture(scope="module")
def program():
    return cimc.compile(MODEL, input_shapes={"input": (1, 1, 32, 32)}, calibration=2)


def _save_altered(program, tmp_path, ins=None, graph=None):
    """Re-serialise with a fresh checksum and graph digest: only validation stands in the way."""
    altered = type(program)(
        program.instructions if ins is None else ins,
        program.layers,
        graph or program.graph,
        dict(program.manifest),
    )
    path = tmp_path / "altered.cimx"
    path.write_bytes(to_bytes(altered))
    return path


def test_unaltered_program_loads(program, tmp_path):
    back = load_program(_save_altered(program, tmp_path))
    np.testing.assert_array_equal(back.instructions, program.instructions)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("op", 200, "op=200"),
        ("ma", 10**6, "ma="),
        ("span", 10**6, "span="),
        ("dep0", None, "dep0="),  # set to the instruction's own index: not strictly earlier
        ("layer", -3, "layer=-3"),
        ("cycles", -1, "cycles=-1"),
    ],
)
def test_bad_instruction_field_names_the_instruction(program, tmp_path, field, value, words):
    ins = program.instructions.copy()
    i = len(ins) // 2
    ins[field][i] = i if value is None else value
    with pytest.raises(ProgramError, match=rf"instruction {i} .*{words}"):
        load_program(_save_altered(program, tmp_path, ins=ins))


def test_pool_index_out_of_range_names_the_blob(program, tmp_path):
    graph = program.graph.copy()
    node = next(n for n in graph.nodes() if n.op == "cimc.PoolMVM")
    v = graph.values[node.inputs[2]]
    idx = v.data.copy()
    idx.reshape(-1)[0] = graph.values[node.inputs[1]].shape[0]  # one past the pool
    v.data = idx
    with pytest.raises(ProgramError, match=rf"blob {node.inputs[2]!r}.*pool index"):
        load_program(_save_altered(program, tmp_path, graph=graph))


def test_blob_byte_change_is_caught_by_the_graph_digest(program, tmp_path):
    import json
    import struct

    from cimc.program import _HEADER, FORMAT_VERSION, MAGIC

    data = bytearray(to_bytes(program))
    payload_at = _HEADER.size
    (text_len,) = struct.unpack_from("<Q", data, payload_at)
    body = json.loads(data[payload_at + 8 : payload_at + 8 + text_len])
    blobs_at = payload_at + 8 + text_len + (-(8 + text_len)) % 64
    floats = [e for e in body["arrays"] if e["dtype"] == "<f4"]  # constants (scales, biases)
    weight = max(floats, key=lambda e: e["nbytes"])
    data[blobs_at + weight["offset"]] ^= 0x01  # one mantissa bit of the biggest one
    payload = bytes(data[payload_at:])
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    path = tmp_path / "p.cimx"
    path.write_bytes(header + payload)
    with pytest.raises(ProgramError, match="graph_sha256"):
        load_program(path)


def test_nan_input_propagates_bit_identically(program):
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    x[0, 0, 5, 5] = np.nan
    x[0, 0, 9, 9] = np.inf  # clipped by activation quantisation in both
    sim = simulate(program, {"input": x}).outputs["logits"]
    ref = cimc.interpret(program.graph, {"input": x})["logits"]
    assert np.isnan(ref).any()
    assert sim.tobytes() == ref.tobytes()
