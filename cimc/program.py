"""The compiled program: instruction stream, constant blobs, manifest; the .cimx file format.

ISA (one row of ``INSTR_DTYPE`` per instruction; the simulator turns the work fields into unit
occupancy with the target's parameters)::

  op        opcode, see below
  layer     index into ``Program.layers`` (CiM and vector layers, execution order)
  ma        first memory array (MA) the instruction uses, -1 if none
  span      number of MAs it multicasts to / uses: ma, ma + stride, ... (mod the MA count)
  stride    distance between those MAs
  rows      input rows covered
  bytes     bytes moved per destination MA (loads, partial sums)
  work      1b x 1b MACs (MVMs), element operations (vector unit), or for LOAD_X the distinct
            bytes of the rows (what an L2 link carries at most, thanks to multicast)
  cycles    modelled busy cycles of the instruction's compute unit (MVMs, vector ops)
  routes    results routed by the permutation unit (pool MVMs)
  dep0/1    instructions that must finish first (-1: none)

SCALE and VEC also wait for every instruction issued before them (a layer boundary).

  LOAD_W    weights DRAM -> L2 -> L1 -> MA write port, multicast to ``span`` MAs
  LOAD_X    activation rows from the on-chip buffer -> L2 -> L1 -> ``span`` MAs (multicast)
  MVM_POOL  bit-serial pool-array MVM + error-array MVM + pipelined permute-accumulate
  MVM_INT   bit-serial MVM on a bit-sliced N-bit array
  PSUM      partial sums MA -> L1 -> buffer (reduction across K tiles)
  SCALE     apply alpha, beta, the activation scale and bias to a CiM layer's accumulators
  VEC       a non-MVM op on the vector unit (``layer`` names it); ``work`` = its element
            operations + MACs (``cimc.ops.vector_work``)
  LOAD_A    an activation operand written into an MA (attention on CiM): buffer -> L2 -> L1 ->
            MA write port, like LOAD_W without DRAM

A CiM layer's MVM instructions are timed one by one; its numbers are produced at its SCALE
instruction from the program's blobs (integer accumulations are order-independent).

File (.cimx): ``b"CIMX"``, u32 format version, u64 payload length, sha256(payload), payload.
The payload is a JSON manifest (length-prefixed) followed by 64-byte aligned raw arrays; the
manifest lists every array's dtype, shape and offset. Large int8 arrays of -1/0/+1 (error terms)
are stored as two bit planes (non-zero, negative): 2 bits per element instead of 8. Same program,
same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_bytes_atomic
from .errors import ProgramError
from .ir import Graph, Node, Value

FORMAT_VERSION = 3  # 3: LOAD_A; VEC work counts MACs, windows, passes
MAGIC = b"CIMX"
_HEADER = struct.Struct("<4sIQ32s")

OPCODES = ("LOAD_W", "LOAD_X", "MVM_POOL", "MVM_INT", "PSUM", "SCALE", "VEC", "LOAD_A")
OP = {name: i for i, name in enumerate(OPCODES)}

INSTR_DTYPE = np.dtype(
    [
        ("op", "u1"),
        ("layer", "<i4"),
        ("ma", "<i4"),
        ("span", "<i4"),
        ("stride", "<i4"),
        ("rows", "<i4"),
        ("bytes", "<i8"),
        ("work", "<i8"),
        ("cycles", "<i8"),
        ("routes", "<i8"),
        ("dep0", "<i4"),
        ("dep1", "<i4"),
    ]
)


@dataclass
class Program:
    """What ``cimc.compile`` returns and ``cimc.simulate`` runs."""

    instructions: np.ndarray
    layers: list[dict[str, Any]]
    graph: Graph
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self):
        from .targets.params import load_target

        return load_target(dict(self.manifest["target"]))

    def counts(self) -> dict[str, int]:
        ops, n = np.unique(self.instructions["op"], return_counts=True)
        return {OPCODES[o]: int(c) for o, c in zip(ops, n)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a temporary name beside ``path``, then rename."""
        return write_bytes_atomic(path, to_bytes(self))


# ---- serialisation ----------------------------------------------------------------------------
class _Arrays:
    """Collects arrays into the payload while JSON-encoding structures that contain them."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.chunks: list[bytes] = []
        self.offset = 0

    def add(self, arr: np.ndarray) -> int:
        entry = {"dtype": np.lib.format.dtype_to_descr(arr.dtype), "shape": list(arr.shape)}
        if _is_ternary(arr):
            raw = np.packbits(arr != 0).tobytes() + np.packbits(arr < 0).tobytes()
            entry["encoding"] = "ternary-bitplanes"
        else:
            raw = arr.tobytes(order="C")  # not np.ascontiguousarray: it makes 0-d arrays 1-d
        self.entries.append({**entry, "offset": self.offset, "nbytes": len(raw)})
        pad = (-len(raw)) % 64
        self.chunks.append(raw + b"\0" * pad)
        self.offset += len(raw) + pad
        return len(self.entries) - 1

    def encode(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return {"__array__": self.add(obj)}
        if isinstance(obj, dict):
            return {str(k): self.encode(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.encode(v) for v in obj]
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, float) and not np.isfinite(obj):
            return {"__float__": repr(obj)}
        return obj


def _is_ternary(arr: np.ndarray) -> bool:
    """(Not np.abs: it maps int8 -128 to -128.)"""
    return arr.dtype == np.int8 and arr.size >= 1024 and arr.min() >= -1 and arr.max() <= 1


def _read_array(payload: bytes, start: int, entry: dict[str, Any]) -> np.ndarray:
    dtype = np.lib.format.descr_to_dtype(entry["dtype"])
    count = int(np.prod(entry["shape"]))
    if entry.get("encoding") == "ternary-bitplanes":
        planes = np.frombuffer(payload, np.uint8, entry["nbytes"], start).reshape(2, -1)
        nonzero, negative = (np.unpackbits(p, count=count).astype(dtype) for p in planes)
        return (nonzero - 2 * (nonzero & negative)).reshape(entry["shape"])
    return np.frombuffer(payload, dtype, count, start).reshape(entry["shape"])


def _graph_to_json(graph: Graph, arrays: _Arrays) -> dict[str, Any]:
    values = []
    for name in sorted(graph.values):
        v = graph.values[name]
        values.append(
            {
                "name": v.name,
                "shape": list(v.shape),
                "dtype": np.dtype(v.dtype).str,
                "data": None if v.data is None else arrays.add(v.data),
                "meta": arrays.encode(v.meta),
            }
        )
    nodes = [
        {
            "name": n.name,
            "op": n.op,
            "inputs": n.inputs,
            "outputs": n.outputs,
            "attrs": arrays.encode(n.attrs),
            "meta": arrays.encode(n.meta),
        }
        for n in graph.nodes()
    ]
    return {
        "name": graph.name,
        "inputs": graph.inputs,
        "outputs": graph.outputs,
        "meta": arrays.encode(graph.meta),
        "values": values,
        "nodes": nodes,
    }


def to_bytes(program: Program) -> bytes:
    arrays = _Arrays()
    body = {
        "manifest": arrays.encode(program.manifest),
        "instructions": arrays.add(program.instructions),
        "layers": arrays.encode(program.layers),
        "graph": _graph_to_json(program.graph, arrays),
    }
    body["arrays"] = arrays.entries
    text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    payload = struct.pack("<Q", len(text)) + text
    payload += b"\0" * ((-len(payload)) % 64) + b"".join(arrays.chunks)
    digest = hashlib.sha256(payload).digest()
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), digest) + payload


def _decode(obj: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def load_program(path: str | os.PathLike) -> Program:
    """Read a .cimx file; a truncated, altered or unknown-version file is a ProgramError."""
    path = Path(path)
    if not path.is_file():
        raise ProgramError(f"{path}: no such program file; compile one with `cimc compile`")
    data = path.read_bytes()
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise ProgramError(f"{path}: not a cimc program (.cimx) file")
    _, version, length, digest = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ProgramError(
            f"{path}: format version {version}, this cimc reads version {FORMAT_VERSION}; "
            "recompile the model"
        )
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise ProgramError(
            f"{path}: truncated ({len(payload)} of {length} payload bytes); recompile the model"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise ProgramError(f"{path}: checksum mismatch, the file was altered; recompile the model")
    (text_len,) = struct.unpack_from("<Q", payload)
    body = json.loads(payload[8 : 8 + text_len])
    base = 8 + text_len + ((-(8 + text_len)) % 64)
    arrays = [_read_array(payload, base + e["offset"], e) for e in body["arrays"]]
    graph = _graph_from_json(body["graph"], arrays)
    return Program(
        instructions=arrays[body["instructions"]],
        layers=_decode(body["layers"], arrays),
        graph=graph,
        manifest=_decode(body["manifest"], arrays),
    )


def _graph_from_json(obj: dict[str, Any], arrays: list[np.ndarray]) -> Graph:
    g = Graph(obj["name"])
    g.inputs = list(obj["inputs"])
    g.outputs = list(obj["outputs"])
    g.meta = _decode(obj["meta"], arrays)
    for v in obj["values"]:
        data = None if v["data"] is None else arrays[v["data"]]
        g.add_value(
            Value(
                v["name"], tuple(v["shape"]), np.dtype(v["dtype"]), data, _decode(v["meta"], arrays)
            )
        )
    for n in obj["nodes"]:
        g.add_node(
            Node(
                n["name"],
                n["op"],
                n["inputs"],
                n["outputs"],
                _decode(n["attrs"], arrays),
                _decode(n["meta"], arrays),
            )
        )
    return g
