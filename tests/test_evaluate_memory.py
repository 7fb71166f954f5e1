"""The evaluator keeps only the last few compressed graphs in memory (a family search makes one
per architecture; ViT-B's are 0.3-0.4 GB each): an evicted graph is read back from the study's
cache, or compressed again without one, and measures the same."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from cimc.targets.params import load_target

from cimc.search import Evaluator, Space

evaluation = importlib.import_module(
    "cimc.search.evaluate"
)  # the package exports a function of that name

DATA = Path(__file__).resolve().parents[1] / "cimc" / "data"
MODEL = str(DATA / "digits_cnn.onnx")
SHAPES = {"input": (1, 1, 16, 16)}


def _same(a, b) -> bool:
    skip = ("seconds", "compress_cached")
    return {k: v for k, v in a.to_dict().items() if k not in skip} == {
        k: v for k, v in b.to_dict().items() if k not in skip
    }


@pytest.mark.parametrize("cached", [True, False])
def test_evicted_graphs_are_read_back_or_recompressed(tmp_path, monkeypatch, cached):
    monkeypatch.setattr(evaluation, "GRAPHS_KEPT", 1)  # int8 and int4 schedule nothing
    monkeypatch.setattr(evaluation, "_GRAPHS", evaluation._RecentGraphs())
    space = Space.from_target(load_target("cimpool-sram"))
    ev = Evaluator(MODEL, space, SHAPES, None, str(tmp_path) if cached else None)
    base = space.base_config()
    int8, int4 = base | {"scheme": "int8"}, base | {"scheme": "int4"}
    first = ev(int8)
    assert not first.compress_cached and first.error is None, first.error
    other = ev(int4)  # another compressed graph: int8's leaves memory
    assert not other.compress_cached and len(evaluation._GRAPHS) == 1
    again = ev(int8)
    assert again.compress_cached == cached  # from the study's cache, else compressed again
    assert _same(first, again)
    sibling = ev(
        int8 | {"L1_num_child": space.variables[space.names.index("L1_num_child")].choices[0]}
    )
    assert sibling.compress_cached  # the graph just used is still in memory
    assert sibling.cosine == first.cosine
