"""The nine model-zoo graphs that ship with the onnx package, imported and interpreted."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import (
    LIGHT_MODELS,
    assert_matches,
    light_expected,
    light_inputs,
    light_path,
    run_ort,
    with_seeded_weights,
)

import cimc


def test_all_nine_light_models_are_present():
    assert len(LIGHT_MODELS) == 9, LIGHT_MODELS


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_shipped_weights_match_shipped_outputs(name):
    model = onnx.load(str(light_path(name)))
    graph = cimc.import_onnx(light_path(name))
    feeds = light_inputs(model)
    out = cimc.interpret(graph, feeds)
    assert_matches(out, {graph.outputs[0]: light_expected(name)})


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_seeded_weights_match_onnxruntime(name):
    # The shipped weights are constants (every output is uniform), which would hide layout and
    # indexing bugs; seeded He-scaled weights make every channel and position distinct.
    model = with_seeded_weights(onnx.load(str(light_path(name))), seed=1)
    rng = np.random.default_rng(2)  # zero-mean images: a large DC input would drown the signal
    feeds = {
        k: rng.standard_normal(v.shape).astype(np.float32) for k, v in light_inputs(model).items()
    }
    graph = cimc.import_onnx(model)
    got = cimc.interpret(graph, feeds)
    ref = run_ort(model, feeds)
    assert_matches(got, ref)
    # The comparison is only meaningful when the logits are not constant. (With these seeded
    # weights DenseNet-121's and Inception v2's logits barely depend on the input; the shipped
    # outputs test and the zoo models cover input-dependent numerics.)
    logits = ref[list(ref)[-1]]
    assert np.std(logits) > 1e-3 * np.abs(logits).max()


def test_import_keeps_weights_and_leaves_the_callers_model_alone():
    # Import converts and shape-infers a weightless copy (version conversion from opset 3 here)
    # and takes the weights from the caller's model: they must arrive bit for bit, and the
    # caller's ModelProto must not change.
    model = with_seeded_weights(onnx.load(str(light_path("squeezenet"))), seed=3)
    before = model.SerializeToString()
    graph = cimc.import_onnx(model)
    assert model.SerializeToString() == before
    used = {i for n in model.graph.node for i in n.input}
    weights = {
        t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in used
    }
    assert len(weights) > 10 and set(weights) <= set(graph.values)
    for name in weights:
        np.testing.assert_array_equal(graph.values[name].data, weights[name])
