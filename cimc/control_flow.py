"""ONNX ``If`` at import: both branches inlined, the taken one selected by ``Where``.

A data-dependent ``If`` becomes straight-line code: the nodes of both branches join the graph
(their own values renamed under the ``If`` node's name; values they read from the outer scope
keep their names) and each output of the ``If`` is ``Where(cond, then_out, else_out)``. Both
branches are therefore compiled and costed, and the run-time condition picks the result; the
reference semantics are unchanged because ONNX branches have no side effects. When the
condition is known at compile time, :func:`fold_constant_selects` keeps only the taken branch
and pruning drops the other.
"""

from __future__ import annotations

import numpy as np
import onnx

from .errors import ShapeError
from .ir import Graph, Node, Value

_BRANCHES = ("then_branch", "else_branch")


def subgraph_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of ``graph`` and of the branches nested in it, outermost first."""
    out = []
    for n in graph.node:
        out.append(n)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out.extend(subgraph_nodes(a.g))
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    out.extend(subgraph_nodes(g))
    return out


def expand_if(graph: Graph, attrs_of, value_of) -> int:
    """Inline every ``If`` node (nested ones too); returns how many were expanded.

    ``attrs_of(NodeProto)`` and ``value_of(ValueInfoProto)`` are the importer's converters,
    so branch nodes become IR nodes exactly as top-level ones do."""
    count = 0
    while True:
        ifs = [n for n in graph.nodes() if n.op == "If"]
        if not ifs:
            return count
        for node in ifs:
            _expand(graph, node, attrs_of, value_of)
            count += 1


def _expand(graph: Graph, node: Node, attrs_of, value_of) -> None:
    graph.remove_node(node.name)
    outs = [_inline(graph, node, key, attrs_of, value_of) for key in _BRANCHES]
    for i, (then_out, else_out) in enumerate(zip(*outs)):
        shapes = [
            graph.values[o].shape if o in graph.values else None for o in (then_out, else_out)
        ]
        if None not in shapes and shapes[0] != shapes[1]:
            _raise_shapes(node.name, i, node.outputs[i], *shapes)
    cond = _scalar(graph, node)
    for i, (out, then_out, else_out) in enumerate(zip(node.outputs, *outs)):
        name = graph.unique_name(f"{node.name}.select{i}")
        meta = {"if": node.name, "if_output": i}
        graph.add_node(Node(name, "Where", [cond, then_out, else_out], [out], {}, meta))


def _raise_shapes(if_name: str, i: int, out: str, then_shape, else_shape) -> None:
    raise ShapeError(
        f"If node {if_name!r}: output {i} ({out!r}) has shape {tuple(then_shape)} "
        f"in then_branch but {tuple(else_shape)} in else_branch; cimc compiles both branches "
        "and needs equal shapes: make both branches return the same shape"
    )


def _scalar(graph: Graph, node: Node) -> str:
    """The condition as a 0-d tensor, so Where does not broadcast the outputs to its rank."""
    shape = graph.add_constant(graph.unique_name(f"{node.name}.scalar"), np.zeros(0, np.int64))
    name = graph.unique_name(f"{node.name}.cond")
    graph.add_node(Node(name, "Reshape", [node.inputs[0], shape.name], [name]))
    return name


def onnx_node_name(node: onnx.NodeProto, index: int) -> str:
    """The name the importer gives the ``index``-th node of a graph: its own, or ``OP_index``
    when it has none (made unique with a suffix where two collide)."""
    return node.name or f"{node.op_type}_{index}"


def branch_prefix(if_name: str, key: str) -> str:
    """What the nodes of an If's ``then_branch`` / ``else_branch`` are named under."""
    return f"{if_name}/{key.split('_')[0]}"


def _inline(graph: Graph, node: Node, key: str, attrs_of, value_of) -> list[str]:
    """Add the nodes of one branch to ``graph``; returns the names of the branch's outputs."""
    body: onnx.GraphProto = node.attrs[key]
    prefix = branch_prefix(node.name, key)
    local = [t.name for t in body.initializer]
    local += [o for n in body.node for o in n.output if o]
    rename = {v: graph.unique_name(f"{prefix}/{v}") for v in local}
    for t in body.initializer:
        graph.add_constant(rename[t.name], onnx.numpy_helper.to_array(t))
    for info in list(body.value_info) + list(body.output):
        v = value_of(info)
        if v is not None and info.name in rename and rename[info.name] not in graph.values:
            graph.add_value(Value(rename[info.name], v.shape, v.dtype))
    for i, n in enumerate(body.node):
        attrs = attrs_of(n)
        for a in _BRANCHES:  # a nested If reads this branch's values under their new names
            if a in attrs:
                attrs[a] = _renamed(attrs[a], rename)
        name = graph.unique_name(f"{prefix}/{onnx_node_name(n, i)}")
        inputs = [rename.get(x, x) for x in n.input]
        graph.add_node(Node(name, _op(n), inputs, [rename.get(o, o) for o in n.output], attrs))
    return [rename.get(o.name, o.name) for o in body.output]


def _op(n: onnx.NodeProto) -> str:
    return n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"


def _renamed(body: onnx.GraphProto, rename: dict[str, str]) -> onnx.GraphProto:
    """A copy of a nested branch whose outer-scope reads follow ``rename``."""
    body = onnx.GraphProto.FromString(body.SerializeToString())
    for n in subgraph_nodes(body):
        for i, x in enumerate(n.input):
            n.input[i] = rename.get(x, x)
    for o in body.output:
        o.name = rename.get(o.name, o.name)
    return body


def fold_constant_selects(graph: Graph) -> int:
    """Keep only the taken branch of every expanded ``If`` whose condition is now constant."""
    folded = 0
    for node in graph.nodes():
        if "if" not in node.meta:
            continue
        cond = graph.constant(node.inputs[0])
        if cond is None:
            continue
        taken = node.inputs[1] if bool(cond) else node.inputs[2]
        out = node.outputs[0]
        graph.remove_node(node.name)
        graph.add_node(Node(node.name, "Identity", [taken], [out]))
        folded += 1
    return folded


def check_selects(graph: Graph) -> None:
    """Shapes of the two branches of every expanded ``If`` agree (once all shapes are static)."""
    for node in graph.nodes():
        if "if" not in node.meta:
            continue
        a, b = (graph.values[i].shape for i in node.inputs[1:])
        if a != b:
            _raise_shapes(node.meta["if"], node.meta["if_output"], node.outputs[0], a, b)
