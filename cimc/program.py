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
  work      1b x 1b MACs (MVMs: weight bits x input bit planes), element operations (vector
            unit), or for LOAD_X the distinct bytes of the rows (what an L2 link carries at
            most, thanks to multicast)
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
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_bytes_atomic
from .cim_ops import CIM_OPS, POOL_OP
from .errors import CimcError, ProgramError
from .ir import Graph, Node, Value

FORMAT_VERSION = 4  # 3: LOAD_A, VEC work is real work; 4: MVM work counts input bit planes
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
    shape = entry["shape"]
    if dtype.hasobject or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"array of dtype {dtype} and shape {shape}")
    count = math.prod(shape)
    ternary = entry.get("encoding") == "ternary-bitplanes"
    size = 2 * -(-count // 8) if ternary else count * dtype.itemsize
    if entry["nbytes"] != size or not 0 <= start <= len(payload) - size:
        raise ValueError(f"array of {count} elements at {start} with nbytes {entry['nbytes']}")
    if ternary:
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


def graph_digest(graph: Graph) -> str:
    """sha256 of the graph's text form: the file's integrity check of its graph section,
    computed when a program is written (compiling in memory does not pay for it)."""
    return hashlib.sha256(graph.to_text().encode()).hexdigest()


def to_bytes(program: Program) -> bytes:
    arrays = _Arrays()
    manifest = program.manifest | {"graph_sha256": graph_digest(program.graph)}
    body = {
        "manifest": arrays.encode(manifest),
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
        what = "truncated" if len(payload) < length else "has bytes after its payload"
        raise ProgramError(
            f"{path}: {what} ({len(payload)} of {length} payload bytes); recompile the model"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise ProgramError(f"{path}: checksum mismatch, the file was altered; recompile the model")
    try:
        program = _parse(payload)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error) as exc:
        # json, numpy and the IR's constructors on a manifest cimc did not write
        raise ProgramError(
            f"{path}: malformed manifest ({type(exc).__name__}: {exc}); recompile the model"
        ) from None
    try:
        return _validated(program, program.manifest.pop("graph_sha256", None))
    except ProgramError as exc:
        raise ProgramError(f"{path}: {exc}; recompile the model") from None


def _parse(payload: bytes) -> Program:
    (text_len,) = struct.unpack_from("<Q", payload)
    body = json.loads(payload[8 : 8 + text_len])
    base = 8 + text_len + ((-(8 + text_len)) % 64)
    arrays = [_read_array(payload, base + e["offset"], e) for e in body["arrays"]]
    graph = _graph_from_json(body["graph"], arrays)
    program = Program(
        instructions=arrays[body["instructions"]],
        layers=_decode(body["layers"], arrays),
        graph=graph,
        manifest=_decode(body["manifest"], arrays),
    )
    if not isinstance(program.manifest, dict) or not isinstance(program.manifest["target"], dict):
        raise TypeError("the manifest and its target must be objects")
    return program


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


# ---- validation on load -----------------------------------------------------------------------
# The checksum proves a file is what some writer wrote, not that the writer was cimc: every field
# the simulator indexes with or times is checked here, so a program that loads never makes the
# Numba kernels read outside their arrays, overflow a cycle count or disagree with ``interpret``.
_MAX_FIELD = 2**40  # per-instruction bytes / work / cycles / routes; sums stay far below 2**63
_ARRAY_OPS = ("LOAD_W", "LOAD_X", "MVM_POOL", "MVM_INT", "PSUM", "LOAD_A")


def check_instructions(
    ins: np.ndarray, n_arrays: int, n_layers: int | None, first: int = 0, last: int | None = None
) -> None:
    """Raise ProgramError naming the first instruction of ``ins[first:last]`` whose fields the
    timing kernel cannot take (the kernel itself does no bounds checks); ``n_layers`` None: the
    layer field is not checked."""
    if ins.dtype != INSTR_DTYPE or ins.ndim != 1:
        raise ProgramError(f"instruction table has dtype {ins.dtype}, expected {INSTR_DTYPE}")
    last = len(ins) if last is None else last
    if not 0 <= first <= last <= len(ins):
        raise ProgramError(f"instructions [{first}, {last}) are not within 0..{len(ins)}")
    n_layers = np.iinfo(np.int32).max if n_layers is None else n_layers
    part = ins[first:last]
    ids = np.arange(first, first + len(part))
    on_array = np.isin(part["op"], [OP[o] for o in _ARRAY_OPS])
    rules = {
        "op": part["op"] < len(OPCODES),
        "layer": (part["layer"] >= 0) & (part["layer"] < n_layers),
        "ma": np.where(on_array, part["ma"] >= 0, part["ma"] >= -1) & (part["ma"] < n_arrays),
        "span": (part["span"] >= 0) & (part["span"] <= n_arrays),
        "stride": (part["stride"] >= 0) & (part["stride"] <= n_arrays),
        "rows": part["rows"] >= 0,
        "dep0": (part["dep0"] >= -1) & (part["dep0"] < ids),
        "dep1": (part["dep1"] >= -1) & (part["dep1"] < ids),
    }
    for name in ("bytes", "work", "cycles", "routes"):
        rules[name] = (part[name] >= 0) & (part[name] < _MAX_FIELD)
    for name, ok in rules.items():
        if not ok.all():
            i = int(ids[np.argmin(ok)])
            raise ProgramError(
                f"instruction {i} ({_opname(ins[i]['op'])}): {name}={ins[i][name]} is out of "
                f"range ({n_arrays} arrays, {n_layers} layers, dependencies strictly earlier)"
            )


def program_layers(graph: Graph) -> list[dict]:
    """Execution-order layer table: which node each ``layer`` field of an instruction means."""
    return [
        {"node": n.name, "op": n.op, "kind": "cim" if n.op in CIM_OPS else "vector"}
        for n in graph.nodes()
    ]


def _check_node(graph: Graph, node: Node) -> None:
    """A registered op whose attributes and inputs keep ONNX's rules (as at import)."""
    from .ops import REGISTRY

    if node.op not in REGISTRY:
        raise ProgramError(f"node {node.name!r}: unknown op {node.op!r}")
    rule = REGISTRY[node.op].validate
    problem = (
        rule(node, [graph.values.get(i) if i else None for i in node.inputs]) if rule else None
    )
    if problem:
        raise ProgramError(f"node {node.name!r} ({node.op}): {problem}")


def _opname(code: int) -> str:
    return OPCODES[code] if code < len(OPCODES) else f"opcode {code}"


def _check_blobs(graph: Graph) -> None:
    """Constants match their values' dtype and shape; CiM layers' indices and error terms are
    within range, so the permutation kernel and ``interpret`` read the same elements."""
    for name, v in graph.values.items():
        if v.dtype.hasobject or not all(type(d) is int and d >= 0 for d in v.shape):
            raise ProgramError(f"value {name!r}: dtype {v.dtype} and shape {v.shape}")
        if v.data is not None and (v.data.shape != v.shape or v.data.dtype != v.dtype):
            raise ProgramError(
                f"blob {name!r}: {v.data.dtype}{list(v.data.shape)}, the graph says "
                f"{np.dtype(v.dtype)}{list(v.shape)}"
            )
    for node in graph.nodes():
        if node.op != POOL_OP:
            continue
        consts = [graph.values[i].data if i else None for i in node.inputs]
        pool, idx, err = (consts + [None] * 3)[1:4]
        if pool is None or idx is None or pool.ndim != 2 or idx.ndim != 2 or idx.dtype.kind != "i":
            raise ProgramError(f"node {node.name!r}: pool and idx must be constant 2-d blobs")
        if idx.size and (idx.min() < 0 or idx.max() >= pool.shape[0]):
            raise ProgramError(
                f"blob {node.inputs[2]!r} of node {node.name!r}: pool index out of "
                f"[0, {pool.shape[0]})"
            )
        if err is not None and err.size and (np.abs(err.astype(np.int64)).max() > 1):
            raise ProgramError(
                f"blob {node.inputs[3]!r} of node {node.name!r}: error values outside {{-1, 0, 1}}"
            )
        if not 1 <= node.attrs.get("act_bits", 0) <= 16:
            raise ProgramError(f"node {node.name!r}: act_bits must be in [1, 16]")


def _validated(program: Program, stored_digest: str | None) -> Program:
    """The checks of this section, then the program."""
    try:
        target = program.target
    except CimcError as exc:
        raise ProgramError(f"the program's target is invalid: {exc}") from None
    graph = program.graph
    try:
        graph.verify()
    except CimcError as exc:
        raise ProgramError(f"the program's graph is invalid: {exc}") from None
    if stored_digest != graph_digest(graph):
        raise ProgramError("the program's graph does not match its manifest's graph_sha256")
    for node in graph.nodes():
        _check_node(graph, node)
    layers = program_layers(graph)
    if program.layers != layers:
        raise ProgramError("the program's layer table does not match its graph's nodes")
    for key in ("weight_bytes_placed", "arrays_used"):
        value = graph.meta.get(key, 0)
        if type(value) is not int or value < 0:
            raise ProgramError(f"graph meta {key}={value!r} is not a non-negative integer")
    _check_blobs(graph)
    check_instructions(program.instructions, target.num_arrays, len(layers))
    return program
