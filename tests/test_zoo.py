"""Tests for cimc.models.zoo: torchvision-faithful architectures and a clean ONNX round trip."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cimc.models import ZOO, build, export_onnx

# Parameter counts of the torchvision models at 1000 classes / 224px
# (resnet18, resnet50, mobilenet_v3_large, vit_b_16).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenetv3_large": 5_483_032,
    "vit_b16": 86_567_656,
}


def test_zoo_names_cover_reference() -> None:
    assert set(ZOO) == set(TORCHVISION_PARAMS)


@pytest.mark.parametrize("name", ZOO)
def test_param_count_matches_torchvision(name: str) -> None:
    # CNN counts are resolution independent (adaptive avgpool), so build small;
    # ViT's positional embedding has (224/16)^2 + 1 = 197 rows only at 224px.
    size = 224 if name == "vit_b16" else 32
    model = build(name, num_classes=1000, image_size=size)
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(TORCHVISION_PARAMS[name], rel=1e-3)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        build("resnet19")


def test_resnet18_onnx_round_trip(tmp_path) -> None:
    path = export_onnx("resnet18", tmp_path / "r18.onnx", image_size=32, dynamic_batch=True)
    assert path.exists()
    assert not [p for p in tmp_path.iterdir() if p != path]  # temp file was renamed away

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    ops = {node.op_type for node in graph.node}
    # do_constant_folding=False keeps BN unfused for the downstream fold-bn pass.
    assert "BatchNormalization" in ops and "Conv" in ops

    model = build("resnet18", image_size=32)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # batch 3: dynamic
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["logits"], {"input": x.numpy()})

    assert out.shape == (3, 1000)
    assert np.isfinite(ref).all() and 1e-2 < np.abs(ref).max() < 1e4
    # Same weights and same math, but onnxruntime and torch use different conv
    # kernels, so fp32 sums are accumulated in a different order; the error is
    # ~1e-6 relative in practice, 1e-3 of the output scale leaves ample margin
    # while still catching any real layer or weight mismatch.
    assert np.abs(out - ref).max() <= 1e-3 * np.abs(ref).max()
