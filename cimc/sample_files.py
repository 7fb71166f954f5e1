"""Input samples read from an .npz file (calibration, search and sensitivity data), validated
before any kernel sees them: arrays named after the graph's inputs, samples stacked along the
first axis, numeric, finite, of the model's dtype kind and sample shape, within a magnitude the
float32 arithmetic of calibration and assignment survives."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import FeedError
from .ir import Graph

MAX_MAGNITUDE = 1e9
"""Largest input value accepted: range calibration and the pool assignment sum squares of
activations in float32 (max 3.4e38), so inputs of 1e20 turn them into NaN; real inputs (pixels,
audio samples, features) are many orders of magnitude below this."""


def read_samples(path: str | Path, graph: Graph, what: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``, those named after ``graph``'s inputs checked and in
    the input's dtype (other arrays, such as labels, as stored). ``what`` names the file in
    messages."""
    path = Path(path)
    first = graph.inputs[0] if graph.inputs else "input"
    if not path.is_file():
        raise FeedError(f"{what} {path} does not exist; give an .npz of input samples")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise FeedError(
            f"{what} {path} is not a readable .npz ({exc}); save input samples with "
            f"np.savez(FILE, {first}=samples)"
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise FeedError(
            f"{what} {path} holds one bare array; it needs an .npz naming each input: "
            f"np.savez(FILE, {first}=samples)"
        )
    with data:
        missing = [i for i in graph.inputs if i not in data.files]
        if missing:
            raise FeedError(f"{what} {path} lacks arrays for inputs {missing}; it has {data.files}")
        try:
            arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:  # object arrays, bad members
            raise FeedError(f"{what} {path}: an array is unreadable ({exc})") from None
    for name in graph.inputs:
        _check(arrays[name], name, graph, f"{what} {path}")
        arrays[name] = arrays[name].astype(graph.values[name].dtype, copy=False)
    return arrays


def _check(a: np.ndarray, name: str, graph: Graph, where: str) -> None:
    value = graph.values[name]
    if a.ndim == 0 or a.size == 0 or a.dtype.kind not in "biuf":
        raise FeedError(
            f"{where}: array {name!r} is {a.dtype} of shape {a.shape}; give numeric input "
            "samples stacked along the first axis"
        )
    want = np.dtype(value.dtype)
    if a.dtype.kind != want.kind:
        raise FeedError(
            f"{where}: array {name!r} is {a.dtype}, the model's input is {want}; save it as "
            f"{want} ({name}.astype(np.{want.name}))"
        )
    if value.shape and tuple(a.shape[1:]) != tuple(value.shape[1:]):
        raise FeedError(
            f"{where}: array {name!r} has samples of shape {a.shape[1:]}, the model's input "
            f"needs {tuple(value.shape[1:])} (the model's shape {value.shape}); fix the data, or "
            "the model's shape with --input-shape / input_shapes"
        )
    if not np.isfinite(a).all():
        raise FeedError(f"{where}: array {name!r} holds NaN or infinity")
    if a.dtype.kind == "f" and np.abs(a).max() > MAX_MAGNITUDE:
        raise FeedError(
            f"{where}: array {name!r} holds values up to {np.abs(a).max():.3g}, beyond "
            f"+-{MAX_MAGNITUDE:.0e}, which overflows float32 calibration; scale the inputs"
        )
