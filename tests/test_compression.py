"""CIMPool compression passes, measured on a real exported ResNet-18."""

from __future__ import annotations

import math

import numpy as np
import pytest

import cimc
from cimc.cim_ops import POOL_OP, QUANT_OP
from cimc.errors import OptionError, PassError
from cimc.models import export_onnx

PIPE = "fold-bn,zpack,weight-pool"


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    path = export_onnx("resnet18", tmp_path_factory.mktemp("m") / "r18.onnx", image_size=32)
    return cimc.import_onnx(path)


@pytest.fixture(scope="module")
def feeds():
    rng = np.random.default_rng(5)
    return [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]


def reconstruct(graph, node) -> np.ndarray:
    """Dense W_hat[O, K] = alpha P[idx] + beta err, from a PoolMVM node's constants."""
    v = graph.values
    pool = v[node.inputs[1]].data.astype(np.float64)
    idx = v[node.inputs[2]].data
    alpha = v[node.inputs[4]].data
    w = (alpha.reshape(-1, 1, 1) if alpha.size > 1 else alpha[0]) * pool[idx]
    if node.inputs[3]:
        w = w + v[node.inputs[5]].data[0] * v[node.inputs[3]].data
    return w.reshape(w.shape[0], -1)[:, : node.attrs["k"]]


def rel_weight_error(graph) -> float:
    errs = []
    for n in graph.nodes():
        if n.op == POOL_OP:
            w = n.meta["compression"]["weight"].astype(np.float64)
            errs.append(np.linalg.norm(w - reconstruct(graph, n)) / np.linalg.norm(w))
    return float(np.mean(errs))


def test_fold_bn_keeps_outputs(resnet18, feeds):
    folded = cimc.run_passes(resnet18, "fold-bn")
    assert not [n for n in folded.nodes() if n.op == "BatchNormalization"]
    assert [n for n in resnet18.nodes() if n.op == "BatchNormalization"]
    for f in feeds:
        a, b = cimc.interpret(resnet18, f)["logits"], cimc.interpret(folded, f)["logits"]
        # float32 weights after folding: relative rounding of about 1e-7 per layer.
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a))


def test_non_repeating_indices_are_distinct_in_every_block(resnet18):
    g = cimc.run_passes(resnet18, PIPE)
    nearest = cimc.run_passes(resnet18, PIPE + "{assign=nearest}")
    layers = [n for n in g.nodes() if n.op == POOL_OP]
    assert len(layers) >= 15
    for n in layers:
        idx = g.values[n.inputs[2]].data
        for start in range(0, idx.shape[0], 128):
            block = idx[start : start + 128]
            for gi in range(block.shape[1]):
                assert len(np.unique(block[:, gi])) == len(block), (n.name, start, gi)
    # The check can fail: plain nearest assignment repeats indices within a block.
    repeats = 0
    for n in nearest.nodes():
        if n.op == POOL_OP:
            idx = nearest.values[n.inputs[2]].data
            repeats += sum(
                len(np.unique(idx[:128, gi])) < min(128, len(idx)) for gi in range(idx.shape[1])
            )
    assert repeats > 0


def test_pool_is_binary_shared_and_distinct(resnet18):
    g = cimc.run_passes(resnet18, PIPE)
    pools = {n.inputs[1] for n in g.nodes() if n.op == POOL_OP}
    assert len(pools) == 1
    pool = g.values[pools.pop()].data
    assert pool.shape == (128, 128) and set(np.unique(pool)) == {-1, 1}
    assert len({r.tobytes() for r in pool}) == 128
    h = cimc.run_passes(resnet18, PIPE + "{init=hadamard}")
    hp = next(h.values[n.inputs[1]].data for n in h.nodes() if n.op == POOL_OP).astype(int)
    np.testing.assert_array_equal(hp @ hp.T, 128 * np.eye(128))


def test_pool_sample_is_normalised_nonzero_vectors_of_every_layer():
    from cimc.compress import POOL_SAMPLE, pack_vectors, pool_sample

    rng = np.random.default_rng(0)
    weights = {"a": rng.standard_normal((6, 200)), "b": 5 * rng.standard_normal((4, 256))}
    weights["a"][2, 128:] = 0  # one all-zero (padded) vector: k-means must not see it
    packed = {n: pack_vectors(w, 128) for n, w in weights.items()}
    expected = np.concatenate(
        [
            (lambda r: r[np.any(r != 0, axis=1)])(packed[n].reshape(-1, 128))
            / np.sqrt(np.mean(w**2))
            for n, w in weights.items()
        ]
    )
    got = pool_sample(weights, packed, 128, np.random.default_rng(1))
    assert got.shape == (6 * 2 - 1 + 4 * 2, 128)
    np.testing.assert_array_equal(got, expected)
    # Over the limit: a sample of distinct rows of the same set.
    big = {"c": rng.standard_normal((POOL_SAMPLE // 64 + 8, 128 * 64))}
    packed = {"c": pack_vectors(big["c"], 128)}
    sample = pool_sample(big, packed, 128, np.random.default_rng(1))
    every = packed["c"].reshape(-1, 128) / np.sqrt(np.mean(big["c"] ** 2))
    assert sample.shape == (POOL_SAMPLE, 128)
    assert len(np.unique(sample, axis=0)) == POOL_SAMPLE
    assert set(map(bytes, sample)) <= set(map(bytes, every))


def test_layer_policy_first_last_depthwise(resnet18):
    g = cimc.run_passes(resnet18, PIPE)
    cim = [n for n in g.nodes() if n.op in (POOL_OP, QUANT_OP)]
    assert cim[0].op == QUANT_OP and cim[-1].op == QUANT_OP
    assert all(n.op == POOL_OP for n in cim[1:-1])
    assert cim[0].meta["compression"]["bits"] == 8
    all_pool = cimc.run_passes(resnet18, PIPE + "{skip-first=false,skip-last=false}")
    assert all(n.op == POOL_OP for n in all_pool.nodes() if n.op in (POOL_OP, QUANT_OP))


def test_pool_mvm_equals_dense_conv_with_reconstructed_weights(resnet18, feeds):
    """The pool-array-then-permute path computes exactly x . W_hat (float activations)."""
    comp = cimc.run_passes(resnet18, PIPE + "{others=0},error-term,error-prune")
    dense = cimc.run_passes(resnet18, "fold-bn")
    for n in comp.nodes():
        if n.op != POOL_OP:
            continue
        layer = dense.node(n.name)
        w = dense.values[layer.inputs[1]]
        o, c, kh, kw = w.shape
        w_hat = reconstruct(comp, n).reshape(o, kh, kw, c).transpose(0, 3, 1, 2)
        dense.add_constant(w.name, w_hat.astype(np.float32))
    for f in feeds:
        a = cimc.interpret(comp, f)["logits"]
        b = cimc.interpret(dense, f)["logits"]
        # W_hat is stored in float32 for the dense graph: about 1e-7 relative per layer.
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))


def test_error_term_and_pruning_reduce_and_trade_weight_error(resnet18):
    pool_only = rel_weight_error(cimc.run_passes(resnet18, PIPE))
    dense_err = rel_weight_error(cimc.run_passes(resnet18, PIPE + ",error-term"))
    half = rel_weight_error(cimc.run_passes(resnet18, PIPE + ",error-term,error-prune"))
    quarter = rel_weight_error(
        cimc.run_passes(resnet18, PIPE + ",error-term,error-prune{keep=0.25}")
    )
    assert dense_err < half < quarter < pool_only
    assert dense_err < 0.75 * pool_only


def test_error_prune_masks_are_structured(resnet18):
    g = cimc.run_passes(resnet18, PIPE + ",error-term,error-prune{keep=0.5,group=64,chunk=8}")
    for n in g.nodes():
        if n.op != POOL_OP:
            continue
        err = g.values[n.inputs[3]].data
        o, gs, v = err.shape
        kept = err != 0
        for start in range(0, o, 64):
            rows = kept[start : start + 64]
            # the same positions for every channel of the group
            assert (rows == rows[0:1]).all()
            for gi in range(gs):
                runs = rows[0, gi].reshape(v // 8, 8)
                assert ((runs.all(axis=1)) | (~runs.any(axis=1))).all()  # whole runs of 8
        k = n.attrs["k"]
        if k % v == 0:
            assert kept.sum() == o * gs * v // 2


def test_storage_from_first_principles(resnet18):
    g = cimc.run_passes(resnet18, PIPE + ",error-term,error-prune")
    report = cimc.storage_report(g)
    rows = {r["name"]: r for r in report["layers"]}
    for n in g.nodes():
        if n.op != POOL_OP:
            continue
        o, k = g.values[n.inputs[2]].shape[0], n.attrs["k"]
        gs = math.ceil(k / 128)
        expect = (
            o * gs * 7  # a 7-bit index per vector (S = 128)
            + o * gs * 128 // 2  # half of the 128 error rows kept per vector slot
            + math.ceil(o / 128) * gs * (128 // 8)  # mask: one bit per run of 8 rows
            + 2 * 32  # alpha and beta
        )
        assert rows[n.name]["total_bits"] == expect
        if k % 128 == 0:
            assert rows[n.name]["bits_per_weight"] <= 0.56
    assert report["compressed_bits_per_weight"] <= 0.56
    assert report["pool_bits"] == 128 * 128
    expected_total = sum(r["total_bits"] for r in report["layers"]) + 128 * 128
    assert report["total_bits"] == expected_total
    assert report["compression_vs_int8"] == pytest.approx(8 / report["bits_per_weight"])


def test_int8_is_faithful_int4_less_so(resnet18, feeds):
    def cos(g):
        vals = []
        for f in feeds:
            a, b = (
                cimc.interpret(resnet18, f)["logits"].ravel(),
                cimc.interpret(g, f)["logits"].ravel(),
            )
            vals.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        return float(np.mean(vals))

    c8 = cos(cimc.run_passes(resnet18, "fold-bn,quantize-weights{bits=8}"))
    c4 = cos(cimc.run_passes(resnet18, "fold-bn,quantize-weights{bits=4}"))
    assert c8 > 0.999 and c4 < c8


def test_output_aware_assignment_lowers_output_error(resnet18, feeds):
    """With calibration data the pass minimises the layer's output error, not the weight error."""
    pipe = PIPE + ",error-term,error-prune"
    plain = cimc.run_passes(resnet18, pipe)
    aware = cimc.run_passes(resnet18, pipe, calibration=feeds)
    assert all(n.meta["compression"]["calibrated"] for n in aware.nodes() if n.op == POOL_OP)
    ref = [cimc.interpret(resnet18, f)["logits"] for f in feeds]

    def mse(g):
        return float(
            np.mean(
                [np.mean((cimc.interpret(g, f)["logits"] - r) ** 2) for f, r in zip(feeds, ref)]
            )
        )

    assert mse(aware) < mse(plain)


def test_activation_quantisation_makes_accumulators_integers(resnet18, feeds):
    g = cimc.run_passes(resnet18, PIPE + ",error-term,quantize-act", calibration=feeds)
    cim = [n for n in g.nodes() if n.op in (POOL_OP, QUANT_OP)]
    assert all(n.attrs["act_bits"] == 8 for n in cim)
    assert cim[0].attrs["act_signed"] == 1  # image input has negative values
    assert any(n.attrs["act_signed"] == 0 for n in cim)  # after ReLU
    node = next(n for n in cim if n.op == POOL_OP)
    seen = {}

    class Grab(cimc.Interpreter):
        def run_node(self, n, args):
            if n.name == node.name:
                seen["x"] = args[0]
            return super().run_node(n, args)

    Grab(g).run(feeds[0])
    rows, _ = cimc.cim_ops.unfold(cimc.cim_ops.quantize_input(seen["x"], node.attrs), node.attrs)
    assert np.all(rows == np.round(rows)) and rows.min() >= 0 and rows.max() <= 255
    acc, err = cimc.cim_ops.pool_accumulators(
        rows[0],
        g.values[node.inputs[1]].data,
        g.values[node.inputs[2]].data,
        g.values[node.inputs[3]].data,
        node.attrs,
    )
    assert np.all(acc == np.round(acc)) and np.all(err == np.round(err))


def test_compression_is_deterministic(resnet18, feeds):
    pipe = PIPE + ",error-term,error-prune,quantize-act"
    a = cimc.run_passes(resnet18, pipe, calibration=feeds)
    b = cimc.run_passes(resnet18, pipe, calibration=feeds)
    assert a.to_text() == b.to_text()
    c = cimc.run_passes(
        resnet18,
        "fold-bn,zpack,weight-pool{seed=1},error-term,error-prune,quantize-act",
        calibration=feeds,
    )
    assert c.to_text() != a.to_text()


def test_run_time_option_errors(resnet18):
    with pytest.raises(PassError, match="vector=64.*vector=128"):
        cimc.run_passes(resnet18, "zpack,weight-pool{vector=64}")
    with pytest.raises(PassError, match="calibration"):
        cimc.run_passes(resnet18, "fold-bn,quantize-weights,quantize-act")
    with pytest.raises(OptionError, match="init=hadamard"):
        cimc.parse_pipeline("weight-pool{vector=96,init=hadamard}")


def test_calibration_from_npz(resnet18, feeds, tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=np.concatenate([f["input"] for f in feeds]), label=np.arange(4))
    a = cimc.run_passes(resnet18, "fold-bn,quantize-weights,quantize-act", calibration=path)
    b = cimc.run_passes(resnet18, "fold-bn,quantize-weights,quantize-act", calibration=feeds)
    assert a.to_text() == b.to_text()
