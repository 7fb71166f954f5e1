"""The benchmark zoo (torch exports, opset 17) imported and interpreted against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_matches, run_ort

import cimc
from cimc.models import export_onnx

# Reduced resolutions keep the suite fast on 2 cores: the graphs (ops, channel counts, strides)
# are the same at any size; only spatial extents shrink. ResNet-18 runs at its full 224, the
# others at the smallest size that still leaves every stage a spatial map larger than 1x1
# (ViT: 32 px = 2x2 patches + class token). benchmarks/import_speed.py runs full size.
SIZES = {"resnet18": 224, "resnet50": 64, "mobilenetv3_large": 96, "vit_b16": 32}


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    return {
        name: export_onnx(name, out / f"{name}.onnx", image_size=size, seed=3)
        for name, size in SIZES.items()
    }


@pytest.mark.parametrize("name", list(SIZES))
def test_zoo_model_matches_onnxruntime(name, zoo_files):
    path = zoo_files[name]
    graph = cimc.import_onnx(path)
    size = SIZES[name]
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    got = cimc.interpret(graph, {"input": x})
    ref = run_ort(path, {"input": x})
    assert_matches(got, ref)
    assert np.std(ref["logits"]) > 0


@pytest.mark.parametrize("name", list(SIZES))
def test_zoo_import_is_static_and_folded(name, zoo_files):
    graph = cimc.import_onnx(zoo_files[name])
    graph.verify()
    ops = {n.op for n in graph.nodes()}
    assert not ops & {"Shape", "Constant", "ConstantOfShape", "Identity", "Dropout"}
    cim = [n for n in graph.nodes() if cimc.ops.runs_on_cim(n, graph)]
    assert cim, "every zoo model has matrix products for the CiM arrays"


def test_dynamic_batch_must_be_bound(tmp_path):
    path = export_onnx("resnet18", tmp_path / "dyn.onnx", image_size=32, dynamic_batch=True)
    with pytest.raises(cimc.errors.ShapeError, match=r"input 'input' dim 0 \('batch'\)"):
        cimc.import_onnx(path)
    graph = cimc.import_onnx(path, input_shapes={"input": (2, 3, 32, 32)})
    assert graph.values["logits"].shape == (2, 1000)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert_matches(cimc.interpret(graph, {"input": x}), run_ort(path, {"input": x}))


def test_input_shapes_are_validated(tmp_path):
    path = export_onnx("resnet18", tmp_path / "dyn.onnx", image_size=32, dynamic_batch=True)
    with pytest.raises(cimc.errors.ShapeError, match="not a model input"):
        cimc.import_onnx(path, input_shapes={"image": (1, 3, 32, 32)})
    with pytest.raises(cimc.errors.ShapeError, match="rank 4"):
        cimc.import_onnx(path, input_shapes={"input": (1, 3, 32)})
    with pytest.raises(cimc.errors.ShapeError, match="fixed at 3"):
        cimc.import_onnx(path, input_shapes={"input": (1, 4, 32, 32)})


def test_model_with_external_data_loads(tmp_path):
    src = export_onnx("mobilenetv3_large", tmp_path / "m.onnx", image_size=32)
    model = onnx.load(str(src))
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    onnx.save_model(
        model, str(ext), save_as_external_data=True, location="m.weights", size_threshold=0
    )
    assert (ext.parent / "m.weights").stat().st_size > 1_000_000
    assert ext.stat().st_size < 200_000
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    got = cimc.interpret(cimc.import_onnx(ext), {"input": x})
    assert_matches(got, run_ort(src, {"input": x}))
