"""cimc.train: compressed torch layers match the compiler's passes, and an exported fine-tuned
model compiles to a graph that gives the torch model's outputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cimc  # noqa: E402
from cimc.cim_ops import POOL_OP, QUANT_OP, quantize_input  # noqa: E402
from cimc.errors import CimcError, PassError  # noqa: E402
from cimc.train import data as D  # noqa: E402
from cimc.train import finetune as T  # noqa: E402
from cimc.train.evaluate import compile_export, compiled_logits  # noqa: E402
from cimc.train.export import export_model, plain_model  # noqa: E402
from cimc.train.layers import (  # noqa: E402
    ActQuant,
    CimLayer,
    calibrating,
    cim_layers,
    compress_model,
    get_scheme,
    weight_2d,
)

torch.set_num_threads(1)
WIDTHS = (16, 16, 32)  # tiny: K = 144 and 288 (two and three vectors of 128, padded)


@pytest.fixture(scope="module")
def splits() -> D.Splits:
    return D.load("digits").subset(192, 64, 64)


@pytest.fixture(scope="module")
def pretrained(splits):
    return T.pretrain(splits, T.TrainConfig(epochs=2, seed=0, batch_size=32), WIDTHS)


def tuned(pretrained, splits, name: str, **overrides):
    cfg = T.TrainConfig(epochs=1, seed=1, batch_size=64, calib=64)
    return T.finetune(pretrained, get_scheme(name, **overrides), splits, cfg)


def pool_nodes(graph):
    return {n.name: n for n in graph.nodes() if n.op == POOL_OP}


# ---- the torch layers compress as the passes do ----


@pytest.mark.parametrize("keep", [None, 1.0, 0.5, 0.25])
def test_pool_layers_match_weight_pool_pass(pretrained, splits, tmp_path, keep) -> None:
    """Same pool, indices, alpha, error bits, beta and mask as weight-pool (+ error-term /
    error-prune) computes post-training on the same float weights."""
    import copy

    model = compress_model(
        copy.deepcopy(pretrained), get_scheme("cimpool-keep1", keep=keep), torch.zeros(1, 1, 32, 32)
    )
    float_onnx = tmp_path / "float.onnx"
    export_model(pretrained, float_onnx, torch.from_numpy(splits.x_train[:1]))
    graph = cimc.import_onnx(str(float_onnx), {"input": (1, 1, 32, 32)})
    pipe = "zpack,weight-pool"
    if keep is not None:
        pipe += ",error-term" + ("" if keep == 1.0 else f",error-prune{{keep={keep}}}")
    compiled = cimc.run_passes(graph, pipe)
    nodes = [n for n in compiled.nodes() if n.op in (POOL_OP, QUANT_OP)]
    layers = dict(cim_layers(model))
    assert len(nodes) == len(layers) == 8
    vals = compiled.values
    n_pool = 0
    for node in nodes:
        w = node.meta["compression"]["weight"]
        (name,) = [
            n for n, m in layers.items() if np.array_equal(weight_2d(m.weight.detach()).numpy(), w)
        ]
        layer = layers[name]
        layer.compressed_weight()
        if node.op == QUANT_OP:
            assert layer.role == "int" and layer.bits == 8, name
            continue
        n_pool += 1
        a = layer.assignment
        np.testing.assert_array_equal(vals[node.inputs[1]].data, layer.pool.numpy())
        np.testing.assert_array_equal(vals[node.inputs[2]].data, a["idx"])
        np.testing.assert_allclose(vals[node.inputs[4]].data, a["alpha"], rtol=1e-12)
        if keep is None:
            assert node.inputs[3] == "" and "err" not in a
            continue
        np.testing.assert_array_equal(vals[node.inputs[3]].data, a["err"])
        np.testing.assert_allclose(vals[node.inputs[5]].data, a["beta"], rtol=1e-12)
        if keep < 1.0:
            np.testing.assert_array_equal(node.meta["compression"]["error_mask"], a["mask"])
            assert np.mean(a["err"] != 0) <= keep
    assert n_pool == 6


def test_straight_through_gradient_and_assignment_updates() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=False)
    scheme = get_scheme("cimpool-keep0.5", act_bits=0)
    layer = CimLayer(lin, "pool", 0, scheme)
    layer.pool = torch.from_numpy(
        np.where(np.random.default_rng(0).standard_normal((128, 128)) > 0, 1, -1).astype(np.int8)
    )
    layer.train()
    x = torch.randn(8, 256)
    y = layer(x)
    hat = layer.compressed_weight()
    torch.testing.assert_close(y, x @ hat.T, rtol=1e-5, atol=1e-5)
    # the compressed weight takes only the values +-alpha +-beta (kept) and +-alpha (pruned)
    a = layer.assignment
    levels = np.unique(np.round(np.abs(hat.numpy().astype(np.float64)), 6))
    alpha, beta = float(a["alpha"][0]), float(a["beta"][0])
    expected = np.unique(np.round([alpha, abs(alpha - beta), alpha + beta], 6))
    assert set(levels) <= set(expected)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(lin.weight.grad, g.T @ x)  # identity STE
    before = a["idx"].copy()
    with torch.no_grad():
        lin.weight.mul_(-1.0)  # the latent weight changes: the assignment is recomputed
    layer.compressed_weight()
    assert not np.array_equal(before, layer.assignment["idx"])


@pytest.mark.parametrize("signed", [False, True])
def test_act_quant_matches_quantize_input(signed) -> None:
    aq = ActQuant(8)
    x = torch.rand(4, 3, 5, 5) * 3 - (1.5 if signed else 0)
    with torch.no_grad():
        aq.calibrating = True
        aq(x)
        aq.calibrating = False
    aq.eval()
    scale, _, qmax, is_signed = aq.params()
    assert is_signed == signed
    assert scale == pytest.approx(float(x.abs().max()) / qmax, rel=1e-12)
    attrs = {"act_bits": 8, "act_scale": scale, "act_signed": int(signed)}
    expect = quantize_input(x.numpy(), attrs) * scale
    np.testing.assert_allclose(aq(x).numpy(), expect.astype(np.float32), rtol=0, atol=0)


def test_execution_order_decides_edges() -> None:
    """First and last layer (kept at 8 bits) are those a forward pass calls first and last,
    as in the exported graph, not the first and last registered modules."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(8, 3)
            self.mid = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            return self.head(self.mid(self.stem(x)).mean((2, 3)))

    model = compress_model(Net(), get_scheme("int4"), torch.zeros(1, 1, 6, 6))
    roles = {n: (m.role, m.bits) for n, m in cim_layers(model)}
    assert roles == {"stem": ("int", 8), "mid": ("int", 4), "head": ("int", 8)}
    pooled = compress_model(Net(), get_scheme("cimpool-keep1"), torch.zeros(1, 1, 6, 6))
    assert {n: m.role for n, m in cim_layers(pooled)} == {
        "stem": "int",
        "mid": "pool",
        "head": "int",
    }


# ---- export -> compile -> same outputs ----


@pytest.mark.parametrize("name", ["cimpool-keep0.5", "cimpool-keep1", "cimpool-pool-only", "int4"])
def test_compiled_export_matches_torch_float_activations(pretrained, splits, tmp_path, name):
    """Without activation quantisation the compiled graph equals the torch model to float32
    rounding (the compiler accumulates in float64, torch in float32): rtol 1e-5 of the logit
    range."""
    model = tuned(pretrained, splits, name, act_bits=0)
    out = export_model(model, tmp_path / "m.onnx", torch.from_numpy(splits.x_train[:1]))
    assert "fold-bn" not in out.pipeline and "quantize-act" not in out.pipeline
    assert (out.assignment is not None) == name.startswith("cimpool")
    graph = compile_export(out, splits.x_train[:64], batch=32)
    if name.startswith("cimpool"):
        nodes = pool_nodes(graph)
        assert len(nodes) == 6 and all(n.meta["compression"]["learned"] for n in nodes.values())
    got = compiled_logits(graph, splits.x_test, 32)
    want = T.predict(model, splits.x_test)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("name", ["cimpool-keep0.5", "int8"])
def test_compiled_export_matches_torch_8bit_activations(pretrained, splits, tmp_path, name):
    """With 8-bit activations, calibrated on the same images in torch and in the compiler,
    scales agree to 1e-6 and a rare input lands on the other side of a rounding boundary
    (float32 vs float64 sums before rounding): outputs agree to 2% of the logit range, and
    argmax on at least 95% of the test images (measured: max diff ~0.3%, argmax 100%)."""
    model = tuned(pretrained, splits, name)
    out = export_model(model, tmp_path / "m.onnx", torch.from_numpy(splits.x_train[:1]))
    assert "quantize-act{bits=8,method=max}" in out.pipeline
    graph = compile_export(out, splits.x_train[:64], batch=32)
    cim = [n for n in graph.nodes() if n.op in (POOL_OP, QUANT_OP)]
    torch_scales = sorted(m.act.params()[0] for _, m in cim_layers(model))
    np.testing.assert_allclose(sorted(n.attrs["act_scale"] for n in cim), torch_scales, rtol=1e-6)
    got = compiled_logits(graph, splits.x_test, 32)
    want = T.predict(model, splits.x_test)
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= 0.02 * scale
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.95


# ---- weight-pool{assignment=...} ----


@pytest.fixture(scope="module")
def keep_half(pretrained, splits, tmp_path_factory):
    model = tuned(pretrained, splits, "cimpool-keep0.5", act_bits=0)
    d = tmp_path_factory.mktemp("export")
    return model, export_model(model, d / "m.onnx", torch.from_numpy(splits.x_train[:1]))


def test_error_passes_leave_learned_layers(keep_half) -> None:
    _, out = keep_half
    graph = cimc.import_onnx(str(out.onnx), {"input": (1, 1, 32, 32)})
    base = cimc.run_passes(graph, out.pipeline)
    more = cimc.run_passes(graph, out.pipeline + ",error-term,error-prune{keep=0.25}")
    a, b = pool_nodes(base), pool_nodes(more)
    assert a.keys() == b.keys() and len(a) == 6
    for name in a:
        for i in (2, 3, 4, 5):
            np.testing.assert_array_equal(
                base.values[a[name].inputs[i]].data, more.values[b[name].inputs[i]].data
            )
        assert b[name].meta["compression"]["error_keep"] == 0.5
    # storage: 7-bit index per vector, keep*V error rows per vector (padding rows included),
    # V/chunk mask bits per (group of 128 channels, vector), 32-bit alpha and beta
    bits = weights = 0
    for node in a.values():
        o, g = base.values[node.inputs[2]].data.shape
        bits += o * g * (7 + 64) + -(-o // 128) * g * 16 + 64
        weights += o * node.attrs["k"]
    report = cimc.storage_report(base)
    assert report["compressed_bits_per_weight"] == pytest.approx(bits / weights, rel=1e-12)
    assert report["compressed_bits_per_weight"] > 0.56  # K = 16, 144, 288 need padding


def test_assignment_from_another_model_is_rejected(keep_half, pretrained, splits, tmp_path):
    _, out = keep_half
    other = tmp_path / "float.onnx"
    export_model(pretrained, other, torch.from_numpy(splits.x_train[:1]))
    graph = cimc.import_onnx(str(other), {"input": (1, 1, 32, 32)})
    with pytest.raises(PassError, match="does not reproduce the weights of layer"):
        cimc.run_passes(graph, out.pipeline)


def test_fold_bn_before_learned_assignment_is_rejected(keep_half) -> None:
    _, out = keep_half
    graph = cimc.import_onnx(str(out.onnx), {"input": (1, 1, 32, 32)})
    with pytest.raises(PassError, match="without fold-bn"):
        cimc.run_passes(graph, "fold-bn," + out.pipeline)


def test_assignment_layers_must_match_graph(keep_half, tmp_path) -> None:
    _, out = keep_half
    with np.load(out.assignment) as npz:
        arrays = {k: npz[k] for k in npz.files}
    dropped = [k for k in arrays if k.startswith("stages.1.conv2.weight|")]
    assert dropped
    for k in dropped:
        arrays.pop(k)
    arrays["nonexistent.weight|idx"] = np.zeros((1, 1), np.int32)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    graph = cimc.import_onnx(str(out.onnx), {"input": (1, 1, 32, 32)})
    with pytest.raises(PassError) as info:
        cimc.run_passes(graph, out.pipeline.replace(str(out.assignment), str(bad)))
    msg = str(info.value)
    assert "nonexistent.weight" in msg and "stages.1.conv2.weight" in msg


def test_assignment_pool_shape_and_missing_file(keep_half, tmp_path) -> None:
    _, out = keep_half
    graph = cimc.import_onnx(str(out.onnx), {"input": (1, 1, 32, 32)})
    with pytest.raises(PassError, match=r"pool of 128 x 128 .*pool=64"):
        cimc.run_passes(graph, f"weight-pool{{pool=64,assignment={out.assignment}}}")
    with pytest.raises(PassError, match="does not exist"):
        cimc.run_passes(graph, f"weight-pool{{assignment={tmp_path / 'none.npz'}}}")
    junk = tmp_path / "junk.npz"
    np.savez(junk, x=np.zeros(3))
    with pytest.raises(PassError, match="not a cimc assignment file"):
        cimc.run_passes(graph, f"weight-pool{{assignment={junk}}}")


def test_plain_model_holds_compressed_weights(keep_half) -> None:
    model, out = keep_half
    plain = plain_model(model)
    for name, layer in cim_layers(model):
        w = plain.get_submodule(name).weight
        if layer.role == "pool":
            a = layer.assignment
            w2 = weight_2d(w.detach()).double().numpy()
            pool = layer.pool.numpy().astype(np.float64)
            recon = (a["alpha"][0] * pool[a["idx"]] + a["beta"][0] * a["err"]).reshape(
                w2.shape[0], -1
            )[:, : w2.shape[1]]
            np.testing.assert_allclose(w2, recon, rtol=1e-6, atol=1e-7)


def test_an_uncalibrated_activation_quantiser_refuses_to_evaluate():
    """Without a range its scale would be 1 (every activation rounded to an integer): refused,
    naming the fix; once calibrated it quantises on the calibrated grid."""
    act = ActQuant(8).eval()
    x = torch.linspace(-0.3, 0.7, 11)
    with pytest.raises(CimcError, match="calibrate"):
        act(x)
    with calibrating(act):
        act(x)
    assert torch.allclose(act(x), x, atol=0.7 / 127)
