"""The intermediate representation: a typed wrapper over ``networkx.DiGraph``.

Nodes of the networkx graph are operation names; each carries its :class:`Node`. An edge u -> v
means v reads a value u writes. Values (tensors) live in ``Graph.values`` with a static shape,
a dtype and, for constants, their data. Shapes are static everywhere: the importer binds
dynamic dimensions and folds shape sub-graphs, so passes never reason about symbols.

Invariants (``Graph.verify`` checks them and raises :class:`GraphError`):
  * a node's ``inputs`` and ``outputs`` are tuples changed only through ``Graph.set_inputs``,
    ``Graph.set_outputs`` and ``Graph.replace_all_uses``, so the reader and writer indexes and
    the DAG edges always agree with them;
  * every value has at most one writer, and every input a node reads is a graph input, a
    constant or written by an earlier node; every graph output is defined;
  * constant data is read-only: replace a constant with ``add_constant``, never write into it.
    Copies share it, which keeps copying a large model cheap.

Documented ``Node.meta`` keys (set by passes, read by later passes and reports):
  ``zpack``        z-direction packing of a layer: ``vector``, ``k``, ``groups``, ``order``
                   (passes/zpack.py; read by weight-pool and tile)
  ``compression``  weight record of a CiM layer: ``scheme`` ("int" or "pool") and the float
                   ``weight`` (dropped by passes/lower.py); "int" adds ``bits``
                   (cimc/cim_ops.py); "pool" adds ``vector``, ``pool_size``, ``assign``,
                   ``scale``, ``calibrated``, optionally ``learned`` (passes/weight_pool.py),
                   then ``error_keep`` (error-term, error-prune, learned) and ``error_group``,
                   ``error_chunk``, ``error_mask`` (passes/error_prune.py)
  ``schedule``     permutation-unit schedule of a pool layer (passes/permute_schedule.py)
  ``mapping``      tiling and dataflow of a CiM layer, with ``modelled_cycles``
                   (passes/tile.py; read by lower and the CLI)
  ``weight_source`` the constant a recurrent step's MatMul shares with the other steps
                   (cimc/recurrent.py; read by cimc/weight_sharing.py)
Activation quantisation (passes/quantize_act.py) is not meta: it sets the node attributes
``act_bits``, ``act_scale`` and ``act_signed``, which the interpreter and simulator execute.

Documented ``Graph.meta`` keys:
  ``pipeline``              passes run so far, in order (cimc/pass_manager.py)
  ``source_sha256``         digest of the ONNX model compiled (cimc/compiler.py)
  ``target``                name of the target tiled for (passes/tile.py)
  ``modelled_cim_cycles``, ``weight_bytes``, ``weight_bytes_placed``, ``arrays_used``
                            totals of the tiling (passes/tile.py; read by the simulator and CLI)
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from .errors import GraphError


@dataclass
class Value:
    """A tensor: static shape, NumPy dtype, and data when it is a constant."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes the tensor needs, computed without overflow for any shape."""
        return math.prod(int(d) for d in self.shape) * np.dtype(self.dtype).itemsize

    def type_str(self) -> str:
        return f"{np.dtype(self.dtype).name}[{','.join(str(d) for d in self.shape)}]"


_WIRING = ("inputs", "outputs")


@dataclass
class Node:
    """One operation: op type, attributes, and ordered input/output value names.

    An omitted optional input is the empty string, as in ONNX. ``inputs`` and ``outputs`` may be
    given as any sequence and are kept as tuples; once set they change only through the owning
    Graph (``set_inputs``, ``set_outputs``, ``replace_all_uses``), which keeps its reader and
    writer indexes in step with them.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _WIRING:
            if key in self.__dict__:
                raise AttributeError(
                    f"node {self.name!r}: {key} cannot be reassigned; call "
                    f"Graph.set_{key}(node, ...) so the graph's indexes follow the change"
                )
            value = tuple(value)
        super().__setattr__(key, value)


def _wire(node: Node, key: str, names: Any) -> None:
    """Set a node's inputs or outputs; only Graph calls this, after unlinking the old ones."""
    node.__dict__[key] = tuple(names)


def _read_only(data: np.ndarray) -> np.ndarray:
    """``data`` itself when already read-only, else a read-only view (the caller's array keeps
    its own flags)."""
    if not data.flags.writeable:
        return data
    view = data.view()
    view.flags.writeable = False
    return view


_ATOMS = (str, int, float, bool, type(None), np.generic)


def _copy_tree(obj: Any) -> Any:
    """Deep copy of attrs / meta: containers copied, arrays frozen and shared (``Graph.copy``)."""
    kind = type(obj)
    if kind is dict:
        return {k: _copy_tree(v) for k, v in obj.items()}
    if kind is list or kind is tuple:
        return kind(_copy_tree(v) for v in obj)
    if kind is np.ndarray:
        obj.flags.writeable = False
        return obj
    if isinstance(obj, _ATOMS):
        return obj
    return copy.deepcopy(obj)


def constant_digest(data: np.ndarray) -> str:
    """Short content hash of a constant, so the text form shows when weights change."""
    h = hashlib.sha256()
    h.update(str(data.dtype).encode())
    h.update(str(data.shape).encode())
    h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()[:12]


def _fmt_attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"tensor<{v.dtype.name}{list(v.shape)} {constant_digest(v)}>"
    if isinstance(v, float):
        return repr(float(np.float32(v)))
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_attr(x) for x in v) + "]"
    if isinstance(v, bytes):
        return repr(v.decode(errors="replace"))
    return repr(v)


class Graph:
    """A model: named inputs and outputs, values, and nodes in a DAG.

    Iteration order is a deterministic topological order (ties broken by insertion order), so
    every traversal, text dump and program built from a graph is reproducible.
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.values: dict[str, Value] = {}
        self.meta: dict[str, Any] = {}
        self._dag = nx.DiGraph()
        self._order: dict[str, int] = {}
        self._next = 0
        self._producer: dict[str, str] = {}
        self._readers: dict[str, set[str]] = {}
        self._topo: list[str] | None = None

    # ---- construction -------------------------------------------------------------------
    def add_value(self, value: Value) -> Value:
        """Add or replace a value; constant data is stored read-only (see the invariants)."""
        if value.data is not None:
            value.data = _read_only(np.asarray(value.data))
        self.values[value.name] = value
        return value

    def add_constant(self, name: str, data: np.ndarray) -> Value:
        data = np.asarray(data)
        return self.add_value(Value(name, tuple(data.shape), data.dtype, data))

    def add_node(self, node: Node) -> Node:
        if node.name in self._dag:
            raise GraphError(
                f"node name {node.name!r} is already used; pick another (Graph.unique_name)"
            )
        self._check_writers(node.name, node.outputs)
        self._dag.add_node(node.name, node=node)
        self._order[node.name] = self._next
        self._next += 1
        self._link_outputs(node)
        self._link_inputs(node)
        return node

    def _check_writers(self, name: str, outputs: tuple[str, ...] | list[str]) -> None:
        """Refuse outputs that another node already writes (each value has one writer)."""
        for i, out in enumerate(outputs):
            if out and out in outputs[:i]:
                raise GraphError(f"node {name!r} lists output {out!r} twice; name each once")
            other = self._producer.get(out, name) if out else name
            if other != name:
                raise GraphError(
                    f"node {name!r} would write {out!r}, which node {other!r} already writes; "
                    "a value has one writer: rename the output or remove the other writer first"
                )

    def _owned(self, node: Node) -> None:
        if node.name not in self._dag or self.node(node.name) is not node:
            raise GraphError(f"node {node.name!r} is not in graph {self.name!r}; add_node it first")

    def _link_outputs(self, node: Node) -> None:
        for out in node.outputs:
            if not out:
                continue
            self._producer[out] = node.name
            for user in self._readers.get(out, ()):
                if user != node.name:
                    self._dag.add_edge(node.name, user)
        self._topo = None

    def _link_inputs(self, node: Node) -> None:
        for inp in node.inputs:
            if not inp:
                continue
            self._readers.setdefault(inp, set()).add(node.name)
            src = self._producer.get(inp)
            if src is not None and src != node.name:
                self._dag.add_edge(src, node.name)
        self._topo = None

    def _unlink_inputs(self, node: Node) -> None:
        for inp in node.inputs:
            self._readers.get(inp, set()).discard(node.name)
        for src in list(self._dag.predecessors(node.name)):
            self._dag.remove_edge(src, node.name)
        self._topo = None

    def remove_node(self, name: str) -> None:
        node = self.node(name)
        self._unlink_inputs(node)
        for out in node.outputs:
            if self._producer.get(out) == name:
                del self._producer[out]
        self._dag.remove_node(name)
        del self._order[name]
        self._topo = None

    def set_inputs(self, node: Node, inputs: Sequence[str]) -> None:
        """Rewire a node's inputs, keeping the reader index and DAG edges consistent."""
        self._owned(node)
        self._unlink_inputs(node)
        _wire(node, "inputs", inputs)
        self._link_inputs(node)

    def set_outputs(self, node: Node, outputs: Sequence[str]) -> None:
        """Rename what a node writes, keeping the writer index and DAG edges consistent; the
        node keeps its place in the order."""
        self._owned(node)
        self._check_writers(node.name, list(outputs))
        for out in node.outputs:
            if self._producer.get(out) == node.name:
                del self._producer[out]
        for user in list(self._dag.successors(node.name)):
            self._dag.remove_edge(node.name, user)
        _wire(node, "outputs", outputs)
        self._link_outputs(node)

    def replace_all_uses(self, old: str, new: str) -> None:
        """Make every reader of value ``old`` (and the graph outputs) read ``new`` instead."""
        for user in self.consumers(old):
            self.set_inputs(user, [new if i == old else i for i in user.inputs])
        self.outputs = [new if o == old else o for o in self.outputs]

    def unique_name(self, base: str) -> str:
        """A value or node name not used yet, derived from ``base``."""
        if base not in self.values and base not in self._dag:
            return base
        i = 1
        while f"{base}_{i}" in self.values or f"{base}_{i}" in self._dag:
            i += 1
        return f"{base}_{i}"

    def prune_unused(self) -> None:
        """Drop nodes whose results nobody reads and values nobody references."""
        changed = True
        while changed:
            changed = False
            needed = set(self.outputs)
            for n in self.nodes():
                needed.update(n.inputs)
            for n in list(self.nodes()):
                if not any(o in needed for o in n.outputs):
                    self.remove_node(n.name)
                    changed = True
        referenced = set(self.inputs) | set(self.outputs)
        for n in self.nodes():
            referenced.update(n.inputs)
            referenced.update(n.outputs)
        for name in [v for v in self.values if v not in referenced]:
            del self.values[name]

    # ---- queries ------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self._dag.nodes[name]["node"]

    def nodes(self) -> list[Node]:
        """All nodes in deterministic topological order."""
        if self._topo is None:
            self._topo = list(
                nx.lexicographical_topological_sort(self._dag, key=lambda n: self._order[n])
            )
        return [self._dag.nodes[n]["node"] for n in self._topo]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes())

    def __len__(self) -> int:
        return self._dag.number_of_nodes()

    def producer(self, value: str) -> Node | None:
        name = self._producer.get(value)
        return None if name is None else self.node(name)

    def consumers(self, value: str) -> list[Node]:
        """Nodes reading ``value``, in topological order."""
        users = self._readers.get(value, ())
        return [self.node(u) for u in sorted(users, key=self._order.__getitem__)]

    def constant(self, name: str) -> np.ndarray | None:
        v = self.values.get(name)
        return None if v is None else v.data

    @property
    def dag(self) -> nx.DiGraph:
        """The underlying networkx graph (read it; mutate through Graph's methods)."""
        return self._dag

    # ---- whole-graph operations -------------------------------------------------------------
    def copy(self) -> Graph:
        """A deep copy that leaves this graph untouched. Arrays (constants, and those in attrs
        and meta) are shared, read-only in both graphs, to keep copies of big models cheap: a
        pass replaces an array, it never writes into one."""
        g = Graph(self.name)
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.meta = _copy_tree(self.meta)
        for v in self.values.values():
            g.add_value(Value(v.name, v.shape, v.dtype, v.data, _copy_tree(v.meta)))
        for n in self.nodes():
            g.add_node(
                Node(n.name, n.op, n.inputs, n.outputs, _copy_tree(n.attrs), _copy_tree(n.meta))
            )
        return g

    def verify(self) -> None:
        """Check the invariants every pass keeps; raise :class:`GraphError` naming the first
        break."""
        self._verify_indexes()
        self._verify_dataflow()
        for name, v in self.values.items():
            if v.data is None:
                continue
            if tuple(v.data.shape) != tuple(v.shape):
                raise GraphError(f"constant {name!r}: data shape {v.data.shape} != {v.shape}")
            if v.data.flags.writeable:
                raise GraphError(
                    f"constant {name!r} has writeable data (set outside Graph.add_value); "
                    "replace constants with Graph.add_constant"
                )

    def _verify_indexes(self) -> None:
        """The reader and writer indexes and the DAG edges agree with the nodes' own lists."""
        readers: dict[str, set[str]] = {}
        writers: dict[str, str] = {}
        for name, n in self._dag.nodes(data="node"):
            for inp in filter(None, n.inputs):
                readers.setdefault(inp, set()).add(name)
            for out in filter(None, n.outputs):
                if out in writers:
                    raise GraphError(
                        f"value {out!r} is written by nodes {writers[out]!r} and {name!r}; "
                        "a value has one writer"
                    )
                writers[out] = name
        edges = {
            (writers[v], user)
            for v, users in readers.items()
            for user in users
            if writers.get(v, user) != user
        }
        known = {v: users for v, users in self._readers.items() if users}
        stale = sorted(v for v in set(readers) | set(known) if readers.get(v) != known.get(v))
        stale += sorted(
            v for v in set(writers) | set(self._producer) if writers.get(v) != self._producer.get(v)
        )
        if stale or edges != set(self._dag.edges):
            where = f"value {stale[0]!r}" if stale else "its edges"
            raise GraphError(
                f"graph {self.name!r}: the reader/writer index disagrees with the nodes at "
                f"{where}; change a node's inputs and outputs only through Graph.set_inputs, "
                "set_outputs and replace_all_uses"
            )

    def _verify_dataflow(self) -> None:
        """Every read value is defined before it is read, every op is registered, every
        written value has a static shape, and every graph output is defined."""
        from .ops import REGISTRY

        seen: set[str] = set(self.inputs)
        for name in self.inputs:
            v = self.values.get(name)
            if v is None or v.is_constant:
                raise GraphError(f"graph input {name!r} has no non-constant value")
        seen.update(n for n, v in self.values.items() if v.is_constant)
        if not nx.is_directed_acyclic_graph(self._dag):
            raise GraphError(f"graph {self.name!r} has a cycle")
        for node in self.nodes():
            if node.op not in REGISTRY:
                raise GraphError(f"node {node.name!r}: op {node.op!r} is not registered")
            for inp in node.inputs:
                if inp and inp not in seen:
                    raise GraphError(
                        f"node {node.name!r} reads {inp!r} before it is defined (or never)"
                    )
                if inp and inp not in self.values:
                    raise GraphError(f"node {node.name!r} reads {inp!r} which has no Value")
            for out in node.outputs:
                if not out:
                    continue
                if out in seen:
                    raise GraphError(
                        f"node {node.name!r} writes {out!r}, which is already a graph input, "
                        "a constant or another node's output"
                    )
                v = self.values.get(out)
                if v is None:
                    raise GraphError(f"node {node.name!r} writes {out!r} which has no Value")
                if any((not isinstance(d, (int, np.integer))) or d < 0 for d in v.shape):
                    raise GraphError(f"value {out!r} has a non-static shape {v.shape}")
                seen.add(out)
        for out in self.outputs:
            if out not in seen:
                raise GraphError(f"graph output {out!r} is never defined")

    def to_text(self) -> str:
        """A stable, diffable listing: same graph, same text, byte for byte."""
        used_consts = []
        for n in self.nodes():
            for i in n.inputs:
                if i and self.values[i].is_constant and i not in used_consts:
                    used_consts.append(i)
        lines = [f"graph {self.name} {{"]
        for name in self.inputs:
            lines.append(f"  input %{name}: {self.values[name].type_str()}")
        for name in used_consts:
            v = self.values[name]
            lines.append(f"  const %{name}: {v.type_str()} #{constant_digest(v.data)}")
        for n in self.nodes():
            outs = ", ".join(f"%{o}: {self.values[o].type_str()}" if o else "_" for o in n.outputs)
            ins = ", ".join(f"%{i}" if i else "_" for i in n.inputs)
            attrs = ", ".join(f"{k}={_fmt_attr(n.attrs[k])}" for k in sorted(n.attrs))
            line = f"  {outs} = {n.op}({ins})"
            if attrs:
                line += f" {{{attrs}}}"
            line += f"  # {n.name}"
            lines.append(line)
            for key in sorted(n.meta):
                lines.append(f"    meta.{key} = {_fmt_meta(n.meta[key])}")
        for name in self.outputs:
            lines.append(f"  output %{name}: {self.values[name].type_str()}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, {len(self)} nodes, inputs={self.inputs}, outputs={self.outputs})"
        )


def _fmt_meta(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt_meta(v[k])}" for k in sorted(v)) + "}"
    if isinstance(v, np.ndarray):
        return f"array<{v.dtype.name}{list(v.shape)} {constant_digest(v)}>"
    if isinstance(v, (list, tuple)) and len(v) > 16:
        return f"[{len(v)} items]"
    return _fmt_attr(v)
