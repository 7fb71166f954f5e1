"""cimc.compress as a library: the layering rule, the typed calibration moments passed from
weight-pool to the error passes, the assignment file round trip, and cimc.train's pipelines."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cimc
import cimc.compress.moments
from cimc.cim_ops import POOL_OP
from cimc.compress import SlotMoments, read_assignment, write_assignment
from cimc.errors import OptionError
from cimc.pass_manager import run_pipeline
from cimc.passes_base import PassContext, parse_pipeline

ROOT = Path(__file__).resolve().parents[1]
PASS_MODULES = {p.stem for p in (ROOT / "passes").glob("*.py")} - {"__init__"}
COMPRESSION_PASSES = (
    "fold_bn",
    "zpack",
    "weight_pool",
    "error_term",
    "error_prune",
    "quantize_weights",
)


def package_of(path: Path) -> list[str]:
    """The installed package a source file lives in (passes/ is installed as cimc.passes)."""
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "passes":
        return ["cimc", "passes"]
    return list(rel.parts[:-1])


def imported_modules(source: str, package: list[str]) -> set[str]:
    """Absolute names of what ``source`` (a module of ``package``) imports, relative imports
    resolved, each ``from m import n`` counted as both ``m`` and ``m.n``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_only_the_registry_imports_pass_modules():
    """cimc, targets and benchmarks reach the passes through the registry (passes_base imports
    the cimc.passes package), never a pass module; the compression passes share arithmetic
    through cimc.compress, not by importing one another."""
    forbidden = {f"cimc.passes.{m}" for m in PASS_MODULES}
    sources = [*ROOT.glob("cimc/**/*.py"), *ROOT.glob("targets/**/*.py")]
    sources += [*ROOT.glob("benchmarks/*.py")]
    sources += [ROOT / "passes" / f"{m}.py" for m in COMPRESSION_PASSES]
    assert len(sources) > 40 and set(COMPRESSION_PASSES) <= PASS_MODULES
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            imported_modules(path.read_text(), package_of(path)) & forbidden
        )
        for path in sources
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_scan_sees_sideways_imports():
    """The scan above catches what cimc.train used to do, and relative imports in passes/."""
    train = imported_modules("from cimc.passes.weight_pool import assign\n", ["cimc", "train"])
    sideways = imported_modules("from .error_term import x\n", ["cimc", "passes"])
    package = imported_modules("from . import passes\n", ["cimc"])
    assert "cimc.passes.weight_pool" in train and "cimc.passes.error_term" in sideways
    assert package == {"cimc", "cimc.passes"}


def small_model() -> onnx.ModelProto:
    """Conv 8->32 (3x3), Relu, Conv 32->32 (3x3), Relu, Conv 32->4 (1x1): the middle conv is
    the one weight-pool compresses (K = 288: nine vectors of 32)."""
    rng = np.random.default_rng(0)
    shapes = {"w0": (32, 8, 3, 3), "w1": (32, 32, 3, 3), "w2": (4, 32, 1, 1)}
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.2, name)
        for name, s in shapes.items()
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def small():
    return cimc.import_onnx(small_model())


def feeds(n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)} for _ in range(n)]


def betas(graph) -> dict[str, float]:
    return {
        n.name: float(graph.values[n.inputs[5]].data[0]) for n in graph.nodes() if n.op == POOL_OP
    }


def run_on_copy(graph, pipeline: str, ctx: PassContext):
    """A copy of ``graph`` with ``pipeline`` run on it in place (run_pipeline returns results)."""
    work = graph.copy()
    run_pipeline(work, pipeline, ctx)
    return work


def test_weight_pool_hands_typed_moments_to_the_error_passes(small, monkeypatch):
    ctx = PassContext(calibration=feeds())
    # others=0: the first conv stays float, so the pool layer's input is the same before and
    # after weight-pool and error-term, gathering afresh, must find the same moments
    pipeline = "zpack{vector=32},weight-pool{vector=32,pool=32,others=0}"
    graph = run_on_copy(small, pipeline, ctx)
    pool_layers = [n.name for n in graph.nodes() if n.op == POOL_OP]
    assert isinstance(ctx.slot_moments, SlotMoments) and len(pool_layers) == 1
    assert sorted(ctx.slot_moments.layers) == pool_layers
    c = ctx.slot_moments.layers[pool_layers[0]]
    assert c.shape == (1, 9, 32, 32)  # [conv groups, G = 288 / 32 slots, V, V]
    # second moments: symmetric, non-negative diagonal, and some slot sees a non-zero input
    np.testing.assert_array_equal(c, c.transpose(0, 1, 3, 2))
    assert (np.einsum("ngvv->ngv", c) >= 0).all() and c.max() > 0
    state_before = dict(ctx.state)

    def gather_again(*args, **kw):
        raise AssertionError("error-term gathered moments weight-pool had already gathered")

    monkeypatch.setattr(cimc.compress.moments, "slot_moments", gather_again)
    reused = betas(run_on_copy(graph, "error-term", ctx))
    assert ctx.state == state_before  # nothing travels through the untyped scratch
    monkeypatch.undo()
    # Without weight-pool's moments error-term gathers the same ones itself: the same sums in
    # the same order, so beta is bit-identical.
    fresh = betas(run_on_copy(graph, "error-term", PassContext(calibration=feeds())))
    assert reused == fresh and all(b > 0 for b in fresh.values())


def test_no_calibration_no_moments(small):
    ctx = PassContext()
    run_pipeline(small.copy(), "zpack{vector=32},weight-pool{vector=32,pool=32},error-term", ctx)
    assert ctx.slot_moments is None


def test_assignment_file_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    pool = rng.choice(np.array([-1, 1], dtype=np.int8), size=(4, 8))
    layers = {
        "conv.weight": {"idx": rng.integers(0, 4, (3, 2)).astype(np.int32), "alpha": np.ones(1)},
        "fc|odd.weight": {"idx": np.zeros((2, 1), np.int32), "alpha": np.full(2, 0.5)},
    }
    path = tmp_path / "a.npz"
    write_assignment(path, pool, layers, '{"kind": "pool"}')
    got_pool, got = read_assignment(str(path))
    np.testing.assert_array_equal(got_pool, pool)
    assert got.keys() == layers.keys()  # a "|" in a weight name survives (rpartition)
    for name, fields in layers.items():
        assert got[name].keys() == fields.keys()
        for key, arr in fields.items():
            np.testing.assert_array_equal(got[name][key], arr)
    with np.load(path) as npz:
        assert (
            str(npz["format"]) == "cimc-assignment-1" and str(npz["scheme"]) == '{"kind": "pool"}'
        )
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left behind


def test_assignment_file_errors(tmp_path):
    not_ours = tmp_path / "other.npz"
    np.savez(not_ours, pool=np.ones((2, 2)))
    with pytest.raises(OptionError, match="not a cimc assignment file"):
        read_assignment(str(not_ours))
    with pytest.raises(OptionError, match="does not exist"):
        read_assignment(str(tmp_path / "missing.npz"))


def test_train_schemes_build_their_pipelines_through_the_registry():
    layers = pytest.importorskip("cimc.train.layers")
    for name, scheme in layers.SCHEMES.items():
        text = scheme.pipeline("m.npz")
        assert parse_pipeline(text) == scheme.passes("m.npz"), name
        assert ("weight-pool{" in text) == (scheme.kind == "pool")
    keep = layers.get_scheme("cimpool-keep0.5")
    assert keep.pipeline("m.npz") == (
        "zpack{vector=128},weight-pool{vector=128,pool=128,others=8,assignment=m.npz},"
        "quantize-act{bits=8,method=max}"
    )
    assert layers.get_scheme("fp32").pipeline() == ""
    # without an assignment weight-pool computes the pool itself, with the scheme's choices
    own = layers.get_scheme("cimpool-keep0.5", scale="per-channel", init="hadamard", seed=3)
    pool = next(p for p in own.passes().passes if p.name == "weight-pool")
    assert (pool.scale, pool.init, pool.assign, pool.seed) == (
        "per-channel",
        "hadamard",
        "non-repeating",
        3,
    )


def test_train_scheme_options_are_checked_by_the_passes():
    layers = pytest.importorskip("cimc.train.layers")
    with pytest.raises(OptionError, match="power of two"):
        layers.get_scheme("cimpool-keep0.5", pool=100)
    with pytest.raises(OptionError, match="init=.*not allowed"):
        layers.get_scheme("cimpool-keep1", init="pca")
    with pytest.raises(OptionError, match="chunk"):
        layers.get_scheme("cimpool-keep0.5", chunk=0)
    with pytest.raises(ValueError, match="others=8"):
        layers.get_scheme("int4", others=4)
