"""Shared helpers for the tests: real models, seeded weights, and the onnxruntime reference."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))


def light_path(name: str) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx"


def light_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The inputs onnx's backend test runner uses for the light models: arange(n)/n."""
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        n = int(np.prod(shape))
        feeds[inp.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def light_expected(name: str) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(str(LIGHT_DIR / f"light_{name}_output_0.pb")))


def _role(model: onnx.ModelProto, name: str) -> tuple[str, int, dict]:
    for n in model.graph.node:
        if name in n.input:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            return n.op_type, list(n.input).index(name), attrs
    return "", -1, {}


def seeded_weight(model: onnx.ModelProto, name: str, shape, rng: np.random.Generator):
    """He-scaled weights (so activations stay finite through deep stacks) and sane BN stats."""
    op, pos, attrs = _role(model, name)
    shape = tuple(int(s) for s in shape)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        if op == "Gemm" and pos == 1 and not attrs.get("transB", 0):
            fan_in = shape[0]
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if op == "BatchNormalization" and pos in (1, 4):
        return rng.uniform(0.5, 1.0, shape).astype(np.float32)
    if op == "Mul":
        return rng.uniform(0.5, 1.0, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 0.01).astype(np.float32)  # small: keep inputs visible


def with_seeded_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of a light model whose ConstantOfShape weights become seeded random initializers."""
    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in consts:
            shape = consts[node.input[0]]
            w = seeded_weight(m, node.output[0], shape, rng)
            m.graph.initializer.append(numpy_helper.from_array(w, node.output[0]))
            if m.ir_version < 4:  # old IR: every initializer must also be a graph input
                m.graph.input.append(
                    onnx.helper.make_tensor_value_info(
                        node.output[0], onnx.TensorProto.FLOAT, w.shape
                    )
                )
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return _expose_logits(m)


def _expose_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the input of a final Softmax as a graph output: softmax of random-weight logits
    saturates to one-hot, which would hide errors; the logits do not."""
    last = model.graph.node[-1]
    if last.op_type != "Softmax":
        return model
    inferred = onnx.shape_inference.infer_shapes(model)
    info = next(v for v in inferred.graph.value_info if v.name == last.input[0])
    model.graph.output.append(info)
    return model


def run_ort(model: onnx.ModelProto | str | os.PathLike, feeds: dict) -> dict[str, np.ndarray]:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def assert_matches(actual: dict, reference: dict, rel: float = 1e-3) -> None:
    """max|diff| <= rel * max|reference| for every output (the foundation issue's criterion)."""
    assert set(actual) == set(reference)
    for name, ref in reference.items():
        got = actual[name]
        assert got.shape == ref.shape, name
        assert np.all(np.isfinite(got)), name
        scale = float(np.max(np.abs(ref)))
        err = float(np.max(np.abs(got.astype(np.float64) - ref)))
        assert err <= rel * scale, f"{name}: max|diff| {err:.3g} > {rel} * {scale:.3g}"
