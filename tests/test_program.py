"""Compilation to .cimx: determinism, the file format, disassembly, capacity errors, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc.cli import main
from cimc.errors import CimcError, ProgramError
from cimc.models import export_onnx
from cimc.program import OPCODES, load_program
from cimc.program import __doc__ as isa_doc


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return export_onnx("resnet18", tmp_path_factory.mktemp("m") / "r18.onnx", image_size=32)


@pytest.fixture(scope="module")
def program(model):
    return cimc.compile(model, target="cimpool-sram", calibration=2)


def test_compile_is_byte_identical(model, program, tmp_path):
    again = cimc.compile(model, target="cimpool-sram", calibration=2)
    a, b = program.save(tmp_path / "a.cimx"), again.save(tmp_path / "b.cimx")
    assert a.read_bytes() == b.read_bytes()


def test_program_does_not_depend_on_the_blas_thread_count(model, tmp_path):
    # OpenBLAS splits long sums between threads and rounds differently per thread count; the
    # calibration statistics must not, or a program would depend on the machine it was built on.
    digests = []
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}.cimx"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        code = "import cimc, sys; cimc.compile(sys.argv[1], calibration=4).save(sys.argv[2])"
        subprocess.run([sys.executable, "-c", code, str(model), str(out)], env=env, check=True)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_round_trip(program, tmp_path):
    path = program.save(tmp_path / "p.cimx")
    back = load_program(path)
    np.testing.assert_array_equal(back.instructions, program.instructions)
    assert back.graph.to_text() == program.graph.to_text()
    assert back.layers == program.layers
    assert back.manifest["pipeline"] == program.manifest["pipeline"]
    assert back.manifest["source_sha256"] and len(back.manifest["source_sha256"]) == 64
    assert back.manifest["target"]["name"] == "cimpool-sram"
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    a, b = cimc.interpret(program.graph, x), cimc.interpret(back.graph, x)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_scalar_constants_survive_the_file(tmp_path):
    # A 0-d Gather index (ViT's q/k/v split) once came back from a .cimx as shape (1,), which
    # added an axis and broke the next Transpose.
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Gather", ["h", "i"], ["y"], axis=1),
        ],
        "scalar_index",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1, np.int64), "i")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    program = cimc.compile(model, target="int8-sram", calibration=2)
    back = load_program(program.save(tmp_path / "s.cimx"))
    for v in back.graph.values.values():
        assert v.data is None or v.data.shape == v.shape, v.name
    x = {"x": np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)}
    got = cimc.simulate(back, x).outputs["y"]
    np.testing.assert_array_equal(got, cimc.interpret(program.graph, x)["y"])
    assert got.shape == (1, 8)


def test_array_encodings_round_trip_exactly():
    from cimc.program import _Arrays, _read_array

    rng = np.random.default_rng(0)
    ternary = rng.integers(-1, 2, size=(3, 5, 128)).astype(np.int8)
    with_min = ternary.copy()
    with_min[0, 0, 0] = -128  # np.abs(-128) is -128 in int8: must not pass for ternary
    for arr in (ternary, with_min, rng.integers(-128, 128, 2000).astype(np.int8), np.array(3.0)):
        store = _Arrays()
        store.add(arr)
        back = _read_array(b"".join(store.chunks), 0, store.entries[0])
        assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)
    assert store.entries[0].get("encoding") is None
    store = _Arrays()
    store.add(ternary)
    assert store.entries[0]["encoding"] == "ternary-bitplanes" and store.offset < ternary.size / 3


def test_altered_truncated_or_foreign_files_are_rejected(program, tmp_path):
    path = program.save(tmp_path / "p.cimx")
    data = bytearray(path.read_bytes())
    (tmp_path / "cut.cimx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProgramError, match="truncated"):
        load_program(tmp_path / "cut.cimx")
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.cimx").write_bytes(bytes(data))
    with pytest.raises(ProgramError, match="checksum"):
        load_program(tmp_path / "bad.cimx")
    (tmp_path / "x.cimx").write_bytes(b"PK\x03\x04 not a program")
    with pytest.raises(ProgramError, match="not a cimc program"):
        load_program(tmp_path / "x.cimx")
    v2 = bytearray(path.read_bytes())
    v2[4] = 99
    (tmp_path / "v.cimx").write_bytes(bytes(v2))
    with pytest.raises(ProgramError, match="version 99"):
        load_program(tmp_path / "v.cimx")


def test_program_structure(program):
    ins = program.instructions
    counts = program.counts()
    assert {"LOAD_X", "MVM_POOL", "MVM_INT", "SCALE", "VEC"} <= set(counts)
    assert "LOAD_W" not in counts  # weights stay resident on cimpool-sram
    assert (ins["dep0"] < np.arange(len(ins))).all() and (ins["dep1"] < np.arange(len(ins))).all()
    cim = [e for e in program.layers if e["kind"] == "cim"]
    assert len(cim) == 21  # 20 convs + fc
    for op in OPCODES:
        assert op in isa_doc  # every opcode is documented in one place
    g = program.graph
    for n in g.nodes():
        if n.op.startswith("cimc."):
            m = n.meta["mapping"]
            assert m["modelled_cycles"] >= m["modelled_compute"] > 0
    assert g.meta["weight_bytes"] <= program.target.capacity_bytes


def test_program_file_is_compact(model, program, tmp_path):
    # The compression passes keep each layer's float weight in meta for the passes after them;
    # the program must not carry it (it was 80 % of the file, larger than the fp32 ONNX), and
    # error terms are stored as bit planes, not a byte per bit.
    for n in program.graph.nodes():
        assert "weight" not in n.meta.get("compression", {}), n.name
    size = program.save(tmp_path / "p.cimx").stat().st_size
    assert size < model.stat().st_size / 8
    back = load_program(tmp_path / "p.cimx")
    for name, v in program.graph.values.items():
        if v.data is not None:
            got = back.graph.values[name].data
            assert got.dtype == v.data.dtype and np.array_equal(got, v.data), name


def test_dram_target_streams_weights(model):
    p = cimc.compile(model, target="cimpool-dram", calibration=2)
    assert p.counts()["LOAD_W"] > 0


def test_model_too_big_says_how_many_bytes_are_missing(model):
    with pytest.raises(CimcError, match=r"bytes are missing") as info:
        cimc.compile(model, target="int8-sram", overrides={"MA_mem_size": 4096}, calibration=2)
    need = int(str(info.value).split("need ")[1].split(" bytes")[0].replace(",", ""))
    missing = int(str(info.value).split("; ")[1].split(" bytes")[0].replace(",", ""))
    assert missing == need - 64 * 4096


def test_pool_layers_need_a_cimpool_target(model):
    with pytest.raises(CimcError, match="target with a cimpool macro"):
        cimc.compile(
            model,
            target="int8-sram",
            pipeline="fold-bn,zpack,weight-pool,quantize-act",
            calibration=2,
        )


def test_float_activations_cannot_be_lowered(model):
    # The arrays take bit-serial integer inputs: without quantize-act there is nothing exact
    # to simulate, so compile says which layer and what to add.
    with pytest.raises(CimcError, match=r"float activations.*quantize-act"):
        cimc.compile(model, target="int8-sram", pipeline="fold-bn,quantize-weights{bits=8}")


def test_cli_compile_disasm(model, tmp_path, capsys):
    out = tmp_path / "r.cimx"
    code = main(
        [
            "compile",
            str(model),
            "--target",
            "int4-sram",
            "--set",
            "L1_bw=64",
            "--calibration",
            "2",
            "-o",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()
    text = capsys.readouterr().out
    assert "instructions" in text and "bits/weight" in text and "modelled" in text
    p = load_program(out)
    assert p.manifest["target"]["L1_bw"] == 64 and p.manifest["target"]["weight_bits"] == 4
    assert main(["disasm", str(out), "--limit", "3"]) == 0
    dis = capsys.readouterr().out
    assert "MVM_INT" in dis and "layer 0" in dis and "more" in dis and "total" in dis
    assert main(["compile", str(model), "--set", "L1_bw", "-o", str(out)]) == 2
    assert main(["disasm", str(tmp_path / "none.cimx")]) == 2


def test_cli_targets_json(capsys):
    assert main(["targets", "--json"]) == 0
    assert "cimpool-dram" in json.loads(capsys.readouterr().out)
