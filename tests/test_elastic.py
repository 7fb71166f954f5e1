"""Elastic families: subnets export to ONNX that matches torch, onnxruntime and cimc's
interpreter, compile and simulate on every preset; weights are shared; bad configs are named."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from cimc.targets.params import presets
from cimc.targets.simulator import simulate
from test_readme import python_block_after

import cimc
from cimc.errors import CimcError
from cimc.models.elastic import FAMILIES, family
from cimc.train.elastic import calibrated_subnet

SMALL = [f for f in FAMILIES if f.endswith("-chars")]
LARGE = [f for f in FAMILIES if not f.endswith("-chars")]
# float32 logits of O(10) computed in a different summation order (onnxruntime, cimc's NumPy
# interpreter, torch): a few ulps per dot product of <= 1,728 terms, far below 1e-4.
TOL = {"rtol": 1e-4, "atol": 1e-4}


def configs(fam) -> dict[str, dict[str, int]]:
    return {
        "largest": fam.largest(),
        "smallest": fam.smallest(),
        "random": fam.sample(np.random.default_rng(3)),
    }


@pytest.mark.parametrize("name", SMALL)
def test_export_matches_torch_ort_and_interpreter(name, tmp_path):
    fam = family(name)
    x = fam.example(2)
    for which, config in configs(fam).items():
        sub = fam.subnet(config)
        with torch.no_grad():
            expected = sub(x).numpy()
        path = fam.export(config, tmp_path / f"{which}.onnx", dynamic_batch=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, **TOL, err_msg=f"{name} {which}: ort")
        graph = cimc.import_onnx(path, {"input": tuple(x.shape)})
        ref = cimc.interpret(graph, {"input": x.numpy()})
        np.testing.assert_allclose(
            next(iter(ref.values())), expected, **TOL, err_msg=f"{name} {which}: interpreter"
        )


@pytest.mark.parametrize("preset", sorted(presets()))
def test_smallest_subnets_compile_and_simulate(preset, tmp_path):
    for name in SMALL:
        fam = family(name)
        path = fam.export(fam.smallest(), tmp_path / f"{name}.onnx")
        program = cimc.compile(path, target=preset, calibration=1)
        feeds = {"input": fam.example(1).numpy()}
        result = simulate(program, feeds)
        reference = cimc.interpret(program.graph, feeds)
        (out,) = reference.values()
        assert out.shape == (1, 36)
        assert np.array_equal(next(iter(result.outputs.values())), out)  # bit for bit
        assert result.cycles > 0 and result.energy_pj > 0


@pytest.mark.parametrize("name", LARGE)
def test_imagenet_smallest_exports_and_imports(name, tmp_path):
    fam = family(name)
    assert all(len(c) > 1 for c in fam.variables().values())
    path = fam.export(fam.smallest(), tmp_path / "m.onnx")
    graph = cimc.import_onnx(path)
    assert graph.values[graph.inputs[0]].shape == (1, 3, 224, 224)
    assert graph.values[graph.outputs[0]].shape == (1, 1000)


def test_imagenet_spaces_are_dynast_sizes():
    """Variable and one-hot counts of METHODS.md section 3 (ViT's one-hot is by value)."""
    sizes = {n: family(n).variables() for n in LARGE}
    assert [len(v) for v in sizes.values()] == [29, 45, 25]
    assert sum(len(c) for c in sizes["elastic-resnet"].values()) == 87
    assert sum(len(c) for c in sizes["elastic-mbv3"].values()) == 135


@pytest.mark.parametrize("name", SMALL)
def test_subnets_share_weights(name):
    fam = family(name, trained=False)
    config = fam.smallest()
    fam.supernet.train()
    fam.runner(config)(fam.example(4)).logsumexp(1).sum().backward()
    sub = fam.subnet(config)
    full = dict(fam.supernet.named_parameters())
    for pname, p in sub.named_parameters():
        grad = full[pname].grad
        assert grad is not None, pname
        index = fam._index(pname, tuple(p.shape), tuple(full[pname].shape))
        outside = grad.clone()
        outside[index] = 0
        assert not outside.any(), f"{pname}: gradient outside its slice"
    first = next(iter(dict(sub.named_parameters())))
    before = full[first].detach().clone()
    with torch.no_grad():
        for p in sub.parameters():
            p.zero_()
    assert torch.equal(full[first].detach(), before), "subnet() must copy the shared weights"


def test_sampling_is_seeded_and_in_space():
    fam = family("elastic-mbv3-chars")
    a = [fam.sample(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    assert fam.validate(a[0]) == a[0]
    assert len({tuple(fam.sample(np.random.default_rng(s)).values()) for s in range(20)}) > 1


def test_bn_recalibration_uses_the_images():
    fam = family("elastic-resnet-chars", trained=False)
    images = np.random.default_rng(0).random((64, 1, 32, 32), dtype=np.float32)
    sub = calibrated_subnet(fam, fam.smallest(), images)
    stem_bn = sub.stem0[1]
    with torch.no_grad():
        conv_out = sub.stem0[0](torch.from_numpy(images))
    np.testing.assert_allclose(stem_bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name, change, words",
    [
        ("elastic-resnet-chars", {"expand3": 30}, ["expand3=30", "[20, 25, 35]"]),
        ("elastic-resnet-chars", {"depth2": -1}, ["depth2=-1", "no block", "[0, 1, 2]"]),
        ("elastic-mbv3-chars", {"kernel0": 7}, ["kernel0=7", "[3, 5]"]),
        ("elastic-mbv3-chars", {"depth4": 0}, ["depth4=0", "no block", "[1, 2, 3]"]),
        ("elastic-vit-chars", {"layers": 0}, ["layers=0", "no block", "[2, 3, 4]"]),
        ("elastic-vit-chars", {"heads1": 5}, ["heads1=5", "[2, 3, 4]"]),
        ("elastic-vit-chars", {"width": 1}, ["unknown variables ['width']"]),
    ],
)
def test_bad_configs_name_variable_and_choices(name, change, words):
    fam = family(name)
    with pytest.raises(CimcError) as err:
        fam.subnet({**fam.largest(), **change})
    for w in words:
        assert w in str(err.value)


def test_unknown_family():
    with pytest.raises(CimcError, match="elastic-resnet-chars"):
        family("elastic-nope")


def test_readme_example_runs(tmp_path):
    code = python_block_after("## Elastic families")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert cimc.import_onnx(tmp_path / "sub.onnx").outputs


class _Reads(dict):
    """A config that records which variables the subnet's construction reads."""

    def __init__(self, config: dict[str, int]) -> None:
        super().__init__(config)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> int:
        self.read.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("name", FAMILIES)
def test_slots_are_the_blocks_the_subnet_builds(name):
    """A slot's variables are read exactly while its depth variable keeps the block: what the
    predictors' encoding leaves out is what the subnet does not have."""
    fam = family(name)
    rng = np.random.default_rng(7)
    for config in [fam.smallest(), fam.largest()] + [fam.sample(rng) for _ in range(6)]:
        reads = _Reads(config)
        with torch.device("meta"):
            fam._build(reads)
        absent = {v for s in fam.slots() if not s.present(config[s.depth]) for v in s.variables}
        assert reads.read == set(config) - absent, config
    assert fam.slots(), "every family has depth variables"
