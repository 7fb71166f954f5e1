"""Command-line values parsed into typed ones; a malformed value raises a CimcError saying
which option, what was expected and an example."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import CimcError


def parse_input_shapes(items: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x=1,3,224,224"]`` -> ``{"x": (1, 3, 224, 224)}``; an input given twice is refused
    rather than the last shape silently winning."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        if sep and name in shapes:
            raise CimcError(
                f"--input-shape {item!r}: input {name!r} is given twice; give one shape per input"
            )
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
            if min(shapes[name]) < 1:
                raise ValueError
        except ValueError:
            raise CimcError(
                f"--input-shape {item!r}: expected NAME=D0,D1,... of positive sizes, "
                "e.g. input=1,3,224,224"
            ) from None
    return shapes


def parse_sets(items: Sequence[str] | None) -> dict[str, str]:
    """``["L1_bw=64"]`` -> ``{"L1_bw": "64"}`` (target overrides; the target checks values).
    A parameter set twice is refused: silently keeping the last would hide a typo."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CimcError(f"--set {item!r}: expected NAME=VALUE, e.g. --set L1_bw=64")
        if key in out:
            raise CimcError(
                f"--set {item!r}: parameter {key!r} is set twice (also to {out[key]!r}); "
                "give each parameter once"
            )
        out[key] = value.strip()
    return out


def parse_calibration(value: str | None) -> int | str | None:
    """A sample count, an existing .npz path, or None (the compiler's seeded default)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    if not Path(value).is_file():
        raise CimcError(f"--calibration {value!r}: give a sample count N or an existing .npz file")
    return value


def parse_ints(text: str, what: str, n: int | None = None) -> tuple[int, ...]:
    """``"128,128,256"`` -> ``(128, 128, 256)``, each at least 1 (sizes and counts); ``n``: the
    count required, if any."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CimcError(f"{what} {text!r}: expected comma-separated integers") from None
    if n is not None and len(vals) != n:
        raise CimcError(f"{what} {text!r}: expected {n} comma-separated integers")
    if min(vals) < 1:
        raise CimcError(f"{what} {text!r}: every value must be at least 1")
    return vals


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts of threads, samples, epochs, sizes)."""
    return _int_at_least(text, 1)


def count(text: str) -> int:
    """argparse type: an integer >= 0 (0: a default, e.g. one worker per core)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text} must be at least {low}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, areas)."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def cosine(text: str) -> float:
    """argparse type: a cosine bound, a finite number in [-1, 1]."""
    value = _number(text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} must be a cosine, in [-1, 1]")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
