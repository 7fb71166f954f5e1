"""The architecture axis of the search: an elastic family's variables beside the pass options
and hardware parameters (CiMNet's joint space).

A config's ``arch.<name>`` values pick a subnet of the family; the evaluator exports it (its
BatchNorm statistics re-estimated on training images, as OFA and DyNAS-T do) to an ONNX file
cached by the architecture's digest, and from there on it is a model like any other: the same
compression, backend and timing, so the accuracy the search sees is the compiled graph's.
The rendered-characters families (``-chars``) are scored on their validation split (the
accuracy objective); ImageNet-scale families have random weights, so only hardware objectives
mean anything there. The final Pareto points are scored once more on the test split, which
the search never saw (``test_accuracy``).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError
from .cache_limit import mark_used
from .evaluate import CALIBRATION

PREFIX = "arch."
HARDWARE_ONLY = ("cycles", "latency", "energy", "area", "bits")
"""Objectives that mean something for a family with random weights."""
BN_IMAGES = 1024  # training images that re-estimate a subnet's BatchNorm statistics
EVALUATION = 360  # validation images scored per architecture (10 per class)
RANDOM_EVALUATION = RANDOM_CALIBRATION = 2
"""Seeded inputs measured and calibrating per architecture of a random-weight family: its
objectives are hardware only, which the inputs do not change (cycles, energy and area of three
ResNet-50 subnets on two hierarchies each were identical with 16 and 2 calibration inputs), so
they feed only the fidelity columns; 360 measured inputs through a 224 px ResNet-50 took minutes
per architecture, and 2 instead of 16 calibrating inputs cut one from 17 to 7 s."""
TEST = 2160  # test images that score the final Pareto points (the whole test split, 60 per class)


@cache
def load_family(name: str) -> Any:
    """The family ``name`` with its committed weights (once per process)."""
    from ..models.elastic import family

    return family(name)


def has_labels(name: str) -> bool:
    """Whether the family is scored on labelled data (the small, trained scale)."""
    return name.endswith("-chars")


def calibration_inputs(name: str) -> int:
    """How many inputs calibrate each architecture of the family (in a study's identity: rows
    calibrated on another number are not read back)."""
    return CALIBRATION if has_labels(name) else RANDOM_CALIBRATION


def arch_variables(name: str) -> dict[str, tuple[tuple, tuple[str, ...]]]:
    """``{arch.<var>: (choices, members)}`` of the family."""
    return {
        PREFIX + var: (tuple(choices), (PREFIX + var,))
        for var, choices in load_family(name).variables().items()
    }


def arch_config(config: dict[str, Any]) -> dict[str, int]:
    """The family config inside a search config."""
    return {k.removeprefix(PREFIX): v for k, v in config.items() if k.startswith(PREFIX)}


def default_objectives(name: str) -> tuple[str, ...]:
    return ("accuracy", "cycles") if has_labels(name) else ("cycles", "energy")


def check_objectives(name: str, objectives: list[str] | tuple[str, ...]) -> None:
    """ImageNet-scale families have random weights: refuse objectives that read numerics."""
    if has_labels(name):
        return
    numeric = [o for o in objectives if o not in HARDWARE_ONLY]
    if numeric:
        raise OptionError(
            f"--family {name} has random weights (no ImageNet offline): objectives {numeric} "
            f"mean nothing there; choose from {', '.join(HARDWARE_ONLY)} "
            "(or use the -chars family for accuracy)"
        )


@cache
def _splits() -> Any:
    from ..train.data import load

    return load("chars")


def data_file(folder: Path, evaluation: int = EVALUATION) -> Path:
    """The .npz the evaluator reads for a labelled family: calibration images (training split),
    then ``evaluation`` validation images with their labels."""
    from ..atomic import atomic_path

    path = folder / f"chars-val-{CALIBRATION}-{evaluation}.npz"
    if not path.is_file():  # rendering the data set takes seconds: only when the file is new
        s = _splits()
        if not 0 < evaluation <= len(s.y_val):
            raise OptionError(
                f"{evaluation} validation images asked for; the split has {len(s.y_val)}"
            )
        x = np.concatenate([s.x_train[:CALIBRATION], s.x_val[:evaluation]])
        y = np.concatenate([s.y_train[:CALIBRATION], s.y_val[:evaluation]])
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            np.savez(tmp, input=x.astype(np.float32), labels=y.astype(np.int64))
    return path


def subnet_model(name: str, config: dict[str, Any], folder: Path) -> Path:
    """The ONNX file of the config's subnet (BatchNorm re-estimated for a labelled family),
    exported once per architecture into ``folder``."""
    arch = load_family(name).validate(arch_config(config))
    digest = hashlib.sha256(json.dumps([name, arch], sort_keys=True).encode()).hexdigest()
    path = folder / f"{name}-{digest[:16]}.onnx"
    mark_used(path)  # first: a file in use is not evicted (cache_limit)
    if not path.is_file():
        import torch

        fam, module = load_family(name), None
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # BatchNorm sums split between threads round differently
        try:
            if has_labels(name):
                from ..train.elastic import calibrated_subnet

                module = calibrated_subnet(fam, arch, _splits().x_train[:BN_IMAGES])
            folder.mkdir(parents=True, exist_ok=True)
            fam.export(arch, path, module=module)
        finally:
            torch.set_num_threads(threads)
    return path


def weights_digest(name: str) -> str:
    """What identifies a family's weights in a study (the committed file, or the seed)."""
    from ..models.elastic import WEIGHTS

    path = WEIGHTS / f"{name}.pt"
    if has_labels(name) and path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"seed-{load_family(name).seed}"


def test_accuracy(evaluator: Any, config: dict[str, Any]) -> float:
    """Top-1 accuracy of ``config``'s compiled graph (the evaluator's cached compression stage:
    what the search scored, so what the chip computes) on the family's test split."""
    from ..interpreter import interpret

    graph = evaluator.compressed(config)[0]["graph"]
    s = _splits()
    x = s.x_test[:TEST].astype(np.float32)
    name, feed = graph.outputs[0], graph.inputs[0]
    pred = [int(interpret(graph, {feed: x[k : k + 1]})[name].argmax()) for k in range(len(x))]
    return float(np.mean(np.array(pred) == s.y_test[: len(x)]))
