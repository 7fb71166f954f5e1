"""`cimc inspect`: the per-layer table and its totals."""

from __future__ import annotations

import json

from helpers import light_path

from cimc.cli import main


def test_inspect_json_totals_are_consistent(capsys):
    assert main(["inspect", str(light_path("resnet50")), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    layers = report["layers"]
    t = report["totals"]
    assert t["layers"] == len(layers)
    assert t["macs"] == sum(r["macs"] for r in layers)
    # ResNet-50 at 224: about 4.1 GMACs and 25.6 M parameters (published figures).
    assert 3.8e9 < t["macs"] < 4.3e9
    assert 25.0e6 < t["params"] < 26.0e6
    convs = [r for r in layers if r["op"] == "Conv"]
    assert convs and all(r["unit"] == "cim" for r in convs)
    assert all(r["unit"] == "vector" for r in layers if r["op"] in ("Relu", "MaxPool"))
    first = convs[0]
    assert first["outputs"] == [[1, 64, 112, 112]] and first["macs"] == 64 * 112 * 112 * 3 * 49


def test_inspect_table(capsys):
    assert main(["inspect", str(light_path("squeezenet"))]) == 0
    out = capsys.readouterr().out
    assert "MACs" in out and "Conv" in out and "on CiM" in out
