"""Fine-tuning with the most sensitive pooled layers kept at 8 bits (weight-pool's
keep_sensitive): the torch model keeps the layers the pass would keep, and the exported
assignment compiles to the same mixed-precision graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cimc  # noqa: E402
from cimc.errors import CimcError  # noqa: E402
from cimc.torch_backend import run_batched  # noqa: E402
from cimc.train.distill import DistillConfig, distill, export, load_samples  # noqa: E402
from cimc.train.layers import get_scheme  # noqa: E402

DATA = Path(cimc.__file__).parent / "data"
DIGITS = DATA / "digits_cnn.onnx"
SHAPE = {"input": (1, 1, 16, 16)}
CALIB = DATA / "digits_calib.npz"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sensitive(graph: cimc.Graph) -> set[str]:
    return {n.name for n in graph.nodes() if n.meta.get("compression", {}).get("sensitive")}


def test_kept_layers_train_at_8_bits_and_compile_so(tmp_path):
    graph = cimc.import_onnx(DIGITS, SHAPE)
    data = load_samples(CALIB, graph, 16)
    scheme = get_scheme("cimpool-keep0.5")
    model = distill(graph, scheme, data, DistillConfig(steps=20, lr=3e-3), keep_sensitive=2)
    # the two layers weight-pool{keep_sensitive=2} keeps post-training on the same samples
    post = cimc.compile(
        DIGITS,
        "cimpool-sram",
        pipeline="zpack,weight-pool{keep_sensitive=2},quantize-act",
        input_shapes=SHAPE,
        calibration=str(CALIB),
    )
    assert len(model.kept) == 2 and model.kept == _sensitive(post.graph)
    assert all(model.roles[name] == ("int", 8) for name in model.kept)
    # seven convs and the FC: first and last at 8 bits, two kept, four on the pool
    assert sum(role == "pool" for role, _ in model.roles.values()) == 4

    pipeline = export(model, DIGITS, tmp_path / "m.onnx", tmp_path / "m.npz")
    assert "keep_sensitive=2" in pipeline
    tuned = cimc.compile(
        tmp_path / "m.onnx", "cimpool-sram", pipeline, input_shapes=SHAPE, calibration=str(CALIB)
    )
    learned = [n for n in tuned.graph.nodes() if n.meta.get("compression", {}).get("learned")]
    assert len(learned) == 4 and _sensitive(tuned.graph) == model.kept
    x = np.load(DATA / "digits_test.npz")["input"][:40]
    got = np.concatenate([cimc.interpret(tuned.graph, {"input": s[None]})["logits"] for s in x])
    with torch.no_grad():
        ref = run_batched(model, {"input": torch.from_numpy(x[:, None])}, ["input"])[0][:, 0]
    ref = ref.numpy()
    # as for the fully pooled model (test_finetune_onnx): an activation on a rounding boundary
    # may flip by one step, so 1% of the output scale, and the same top-1
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).all()

    wrong = pipeline.replace("keep_sensitive=2", "keep_sensitive=1")
    with pytest.raises(CimcError, match="leaves 2 of the 6 layers out; give keep_sensitive=2"):
        cimc.compile(
            tmp_path / "m.onnx", "cimpool-sram", wrong, input_shapes=SHAPE, calibration=str(CALIB)
        )
