"""The IR: deterministic text form, independent copies, and verify() catching broken graphs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import light_path

import cimc
from cimc.ir import Node, Value


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
    with pytest.raises(ValueError, match="does_not_exist"):
        g.verify()
    g = squeezenet.copy()
    g.add_value(Value("dup", (1,), np.dtype(np.float32)))
    g.add_node(Node("weird", "NoSuchOp", [g.inputs[0]], ["dup"]))
    with pytest.raises(ValueError, match="NoSuchOp"):
        g.verify()


def test_replace_all_uses_and_prune(squeezenet):
    g = squeezenet.copy()
    relu = next(n for n in g.nodes() if n.op == "Relu")
    before = len(g)
    g.replace_all_uses(relu.outputs[0], relu.inputs[0])
    g.prune_unused()
    assert len(g) == before - 1
    g.verify()
