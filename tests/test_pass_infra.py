"""Pass infrastructure: registry, pipeline strings, instruments, errors, plugins."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass
from importlib import metadata

import pytest
from helpers import light_path

import cimc
from cimc import passes_base
from cimc.cli import main
from cimc.errors import OptionError, PassError
from cimc.passes_base import Pass, PassContext, PassResult, parse_pipeline, register_pass


@pytest.fixture(scope="module")
def squeezenet():
    return cimc.import_onnx(light_path("squeezenet"))


@pytest.mark.parametrize(
    "text",
    [
        "fold-bn,zpack,weight-pool,error-term,error-prune,quantize-act",
        "zpack{vector=64},weight-pool{vector=64,pool=64,init=hadamard,assign=nearest,seed=3}",
        "weight-pool{scale=per-channel,skip-first=false,others=0},error-prune{keep=0.25,group=32}",
        "quantize-weights{bits=4,keep-edges=false},quantize-act{bits=6,method=percentile}",
    ],
)
def test_pipeline_round_trips(text):
    p = parse_pipeline(text)
    assert parse_pipeline(str(p)) == p
    assert str(parse_pipeline(str(p))) == str(p)


def test_defaults_are_omitted_and_fractions_parse():
    p = parse_pipeline("error-prune{keep=1/4},weight-pool{vector=0}")  # 0: the target's rows
    assert p.passes[0].keep == 0.25
    assert str(p) == "error-prune{keep=0.25},weight-pool"


@pytest.mark.parametrize(
    "text, words",
    [
        ("weight-pool{vector=-1}", ["vector=-1", "weight-pool"]),
        ("weight-pool{pool=100}", ["pool=100", "power of two"]),
        ("weight-pool{init=pca}", ["init=pca", "kmeans", "random", "hadamard"]),
        ("error-prune{keep=0.3}", ["keep=0.3", "1.0", "0.5", "0.25"]),
        ("quantize-weights{bits=16}", ["bits=16", "8"]),
        ("weight-pool{colour=red}", ["unknown option 'colour'", "vector"]),
        ("weight-pool{vector=abc}", ["vector='abc'", "int"]),
        ("no-such-pass", ["unknown pass 'no-such-pass'", "weight-pool"]),
        ("fold-bn,,zpack", ["malformed pipeline"]),
        ("fold-bn{", ["malformed pipeline"]),
        ("weight-pool{vector}", ["malformed option 'vector'"]),
        ("fold-bn,", ["trailing comma"]),
    ],
)
def test_bad_pipelines_name_the_problem(text, words):
    with pytest.raises(OptionError) as info:
        parse_pipeline(text)
    for w in words:
        assert w in str(info.value)


def test_run_passes_leaves_input_unchanged(squeezenet):
    before = squeezenet.to_text()
    out = cimc.run_passes(squeezenet, "zpack,quantize-weights{bits=4}")
    assert squeezenet.to_text() == before
    assert out.to_text() != before
    assert out.meta["pipeline"] == ["zpack", "quantize-weights{bits=4}"]


def test_instruments_time_dump_and_verify(squeezenet, tmp_path):
    timing = cimc.Timing()
    cimc.run_passes(
        squeezenet,
        "zpack,quantize-weights",
        instruments=[timing, cimc.DumpIR(tmp_path), cimc.VerifyEach()],
    )
    assert [name for name, _, _ in timing.records] == ["zpack", "quantize-weights"]
    assert all(s >= 0 for _, s, _ in timing.records)
    assert all(changed for _, _, changed in timing.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000_input.txt",
        "001_zpack.txt",
        "002_quantize-weights.txt",
    ]
    assert "cimc.QuantMVM" in (tmp_path / "002_quantize-weights.txt").read_text()
    assert "cimc.QuantMVM" not in (tmp_path / "001_zpack.txt").read_text()


def test_passes_report_what_they_changed(squeezenet):
    """A pass's result says whether it changed the graph: fold-bn on a model without
    BatchNorm changes nothing, quantize-weights does; lower's product is the Program."""
    from cimc.pass_manager import run_pipeline

    graph = squeezenet.copy()
    ctx = cimc.PassContext(calibration=[], target=cimc.load_target("int8-sram"))
    results = run_pipeline(graph, "fold-bn,fold-bn,quantize-weights", ctx)
    assert [r.changed for r in results] == [False, False, True]
    assert "quantised" in results[2].summary


@pytest.mark.parametrize("name", ["tile", "lower", "permute-schedule"])
def test_hardware_passes_need_a_target(squeezenet, name):
    with pytest.raises(PassError, match="needs a target"):
        cimc.run_passes(squeezenet, name)


def test_compile_takes_the_program_from_lower(squeezenet):
    program = cimc.compile(squeezenet, target="int8-sram", calibration=1)
    assert isinstance(program, cimc.program.Program)
    assert program.manifest["pipeline"].endswith("tile,lower")


@register_pass
@dataclass(frozen=True)
class _Breaks(Pass):
    """Test pass that fails like a user's pass would."""

    name = "test-breaks"

    def run(self, graph, ctx):
        raise cimc.errors.CimcError("layer conv9 has no weights")


@register_pass
@dataclass(frozen=True)
class _Corrupts(Pass):
    """Test pass that leaves a dangling input behind."""

    name = "test-corrupts"

    def run(self, graph, ctx):
        node = graph.nodes()[1]
        graph.set_inputs(node, ["nowhere"])
        return PassResult(changed=True)


def test_pass_error_names_position_and_passes_already_run(squeezenet):
    with pytest.raises(PassError) as info:
        cimc.run_passes(squeezenet, "zpack,quantize-weights,test-breaks")
    msg = str(info.value)
    assert "pass #2 test-breaks" in msg and "conv9" in msg
    assert "passes already run: zpack, quantize-weights" in msg


def test_verify_each_catches_a_corrupting_pass(squeezenet):
    with pytest.raises(PassError, match="nowhere") as info:
        cimc.run_passes(squeezenet, "zpack,test-corrupts", instruments=[cimc.VerifyEach()])
    assert "pass #1 test-corrupts" in str(info.value)


def test_plugin_pass_from_an_entry_point(tmp_path, monkeypatch, squeezenet):
    """A separately 'installed' distribution registers a pass through cimc.passes."""
    pkg = tmp_path / "site"
    (pkg / "cimc_plugin_demo").mkdir(parents=True)
    (pkg / "cimc_plugin_demo" / "__init__.py").write_text(
        textwrap.dedent(
            '''
            from dataclasses import dataclass
            from cimc.passes_base import Pass, PassResult

            @dataclass(frozen=True)
            class CountLayers(Pass):
                """Counts nodes into graph.meta (a user's own pass)."""
                name = "count-layers"
                tag: str = "n"

                def run(self, graph, ctx):
                    graph.meta[self.tag] = len(graph)
                    return PassResult(changed=True)
            '''
        )
    )
    dist = pkg / "cimc_plugin_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cimc-plugin-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[cimc.passes]\ncount-layers = cimc_plugin_demo:CountLayers\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(passes_base, "_plugins_loaded", False)
    monkeypatch.delitem(passes_base.PASS_REGISTRY, "count-layers", raising=False)
    assert any(ep.name == "count-layers" for ep in metadata.entry_points(group="cimc.passes"))
    out = cimc.run_passes(squeezenet, "zpack,count-layers{tag=nodes}")
    assert out.meta["nodes"] == len(squeezenet)
    assert "count-layers" in {p["name"] for p in passes_base.describe_passes()}
    sys.modules.pop("cimc_plugin_demo", None)


def test_passes_must_be_frozen_dataclasses_with_kebab_names():
    with pytest.raises(TypeError):

        @register_pass
        class NotADataclass(Pass):
            name = "not-a-dataclass"

    with pytest.raises(TypeError):

        @register_pass
        @dataclass(frozen=True)
        class BadName(Pass):
            name = "Bad_Name"


def test_cli_lists_passes(capsys):
    assert main(["passes", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    for name in (
        "fold-bn",
        "zpack",
        "weight-pool",
        "error-term",
        "error-prune",
        "quantize-act",
        "quantize-weights",
        "canonicalize",
    ):
        assert name in listed
    assert listed["weight-pool"]["options"]["pool"] == "0"  # the target's pool_cols
    assert listed["error-prune"]["options"]["keep"] == "0.0"  # the target's error_rows / rows
    assert "vector" in listed["weight-pool"]["search_space"]


def test_context_defaults():
    ctx = PassContext()
    assert ctx.calibration is None and ctx.state == {}
