"""The IR: deterministic text form, independent copies, and verify() catching broken graphs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import light_path

import cimc
from cimc.errors import CimcError, GraphError
from cimc.ir import Graph, Node, Value


@pytest.fixture(scope="module")
def squeezenet():
    return cimc.import_onnx(light_path("squeezenet"))


def test_text_is_stable_across_imports(squeezenet):
    again = cimc.import_onnx(light_path("squeezenet"))
    assert squeezenet.to_text() == again.to_text()
    text = squeezenet.to_text()
    assert text.startswith("graph ") and "Conv(" in text and text.endswith("}\n")


def test_text_shows_weight_changes(squeezenet):
    g = squeezenet.copy()
    conv = next(n for n in g.nodes() if n.op == "Conv")
    w = g.values[conv.inputs[1]]
    g.add_constant(w.name, w.data + 1)
    assert g.to_text() != squeezenet.to_text()


def test_copy_is_independent(squeezenet):
    g = squeezenet.copy()
    assert g.to_text() == squeezenet.to_text()
    relu = next(n for n in g.nodes() if n.op == "Relu")
    relu.attrs["x"] = 1
    g.values[g.inputs[0]].meta["touched"] = True
    assert "x" not in squeezenet.node(relu.name).attrs
    assert "touched" not in squeezenet.values[g.inputs[0]].meta
    with pytest.raises(ValueError):  # constants are shared read-only, never mutated in place
        g.values[next(n for n in g.nodes() if n.op == "Conv").inputs[1]].data[...] = 0


def _chain() -> Graph:
    """x -> Relu(a) -> Neg(b) -> y, with a constant the copy test can watch."""
    g = Graph("chain")
    for name in ("x", "h", "y"):
        g.add_value(Value(name, (2,), np.dtype(np.float32)))
    g.inputs, g.outputs = ["x"], ["y"]
    g.add_node(Node("a", "Relu", ["x"], ["h"]))
    g.add_node(Node("b", "Neg", ["h"], ["y"]))
    return g


def test_copy_leaves_the_source_alone():
    g = _chain()
    weights = np.arange(4, dtype=np.float32)
    g.add_constant("w", weights)
    text = g.to_text()
    c = g.copy()
    c.set_inputs(c.node("b"), ["x"])
    c.node("a").attrs["alpha"] = 1
    c.add_constant("w", weights * 2)
    assert weights.flags.writeable, "neither add_constant nor copy may freeze the caller's array"
    assert g.to_text() == text
    assert [n.name for n in g.consumers("h")] == ["b"] and g.node("b").inputs == ("h",)
    assert "alpha" not in g.node("a").attrs and g.constant("w")[1] == 1.0
    g.verify()
    c.verify()


def test_node_wiring_changes_only_through_the_graph():
    g = _chain()
    b = g.node("b")
    with pytest.raises(TypeError):
        b.inputs[0] = "x"  # tuples: the reader index can no longer go stale this way
    with pytest.raises(AttributeError, match="set_inputs"):
        b.inputs = ["x"]
    with pytest.raises(AttributeError, match="set_outputs"):
        b.outputs = ["z"]
    g.set_inputs(b, ["x"])
    assert [n.name for n in g.consumers("x")] == ["a", "b"] and g.consumers("h") == []
    g.add_value(Value("z", (2,), np.dtype(np.float32)))
    g.set_outputs(b, ["z"])
    assert g.producer("z") is b and g.producer("y") is None
    with pytest.raises(GraphError, match="'a'"):  # z already has a writer
        g.set_outputs(g.node("a"), ["z"])
    with pytest.raises(GraphError, match="not in graph"):
        g.set_inputs(Node("b", "Neg", ["h"], ["y"]), ["x"])


def test_verify_catches_a_stale_reader_index():
    g = _chain()
    b = g.node("b")
    b.__dict__["inputs"] = ("x",)  # what `b.inputs[0] = "x"` did before inputs were tuples
    with pytest.raises(GraphError, match="set_inputs"):
        g.verify()


def test_verify_catches_two_writers_and_missing_outputs():
    g = _chain()
    with pytest.raises(GraphError, match="already writes"):
        g.add_node(Node("c", "Relu", ["x"], ["h"]))
    with pytest.raises(GraphError, match="already used"):
        g.add_node(Node("a", "Relu", ["x"], ["q"]))
    g.outputs = ["nowhere"]
    with pytest.raises(GraphError, match="nowhere"):
        g.verify()
    g = _chain()
    g.add_constant("k", np.zeros(2, np.float32))
    g.add_node(Node("c", "Relu", ["x"], ["k"]))  # a constant is not a node's to write
    with pytest.raises(GraphError, match="'k'"):
        g.verify()
    g = _chain()
    g.values["k"] = Value("k", (2,), np.dtype(np.float32), np.zeros(2, np.float32))
    with pytest.raises(GraphError, match="writeable"):  # set around add_value
        g.verify()


def test_topological_order_respects_edges(squeezenet):
    seen = set(squeezenet.inputs) | {k for k, v in squeezenet.values.items() if v.is_constant}
    for n in squeezenet.nodes():
        assert all(i in seen for i in n.inputs if i)
        seen.update(n.outputs)


def test_verify_catches_breaks(squeezenet):
    squeezenet.verify()
    g = squeezenet.copy()
    relu = next(n for n in g.nodes() if n.op == "Relu")
    g.set_inputs(relu, ["does_not_exist"])
    with pytest.raises(GraphError, match="does_not_exist") as info:
        g.verify()
    assert isinstance(info.value, CimcError)
    g = squeezenet.copy()
    g.add_value(Value("dup", (1,), np.dtype(np.float32)))
    g.add_node(Node("weird", "NoSuchOp", [g.inputs[0]], ["dup"]))
    with pytest.raises(GraphError, match="NoSuchOp"):
        g.verify()


def test_replace_all_uses_and_prune(squeezenet):
    g = squeezenet.copy()
    relu = next(n for n in g.nodes() if n.op == "Relu")
    before = len(g)
    g.replace_all_uses(relu.outputs[0], relu.inputs[0])
    g.prune_unused()
    assert len(g) == before - 1
    g.verify()
