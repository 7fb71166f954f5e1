"""Pass infrastructure: passes as frozen dataclasses, a registry, and pipeline strings.

A pass has a kebab-case ``name``, its options as dataclass fields (with defaults), and
``run(graph, ctx) -> PassResult`` which rewrites the graph in place and says what it did (as
onnx-ir's passes do): whether the graph changed, and any product such as ``lower``'s Program.
``search_space()`` declares the option choices the joint search may try. Pipelines are strings
such as
``fold-bn,zpack{vector=128},weight-pool{pool=128,init=kmeans},error-prune{keep=0.5}`` that
round-trip: ``parse_pipeline(str(p)) == p``. Modelled on xDSL's ``passes.py``.

Passes register with :func:`register_pass` or, from another distribution, through the
entry-point group ``cimc.passes`` (each entry point names a Pass subclass).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import OptionError
from .ir import Graph

if TYPE_CHECKING:  # the compression library (scipy and all) loads with the passes, not here
    from .compress.moments import SlotMoments

ENTRY_POINT_GROUP = "cimc.passes"
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass
class PassContext:
    """What a pass may use besides the graph: calibration feeds, the target, a shared scratch.

    ``slot_moments``: the calibration moments weight-pool gathered, reused by error-term and
    error-prune (None until a pass gathers them)."""

    calibration: list[dict[str, np.ndarray]] | None = None
    target: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    slot_moments: SlotMoments | None = None

    def require_target(self, pass_name: str) -> Any:
        """The target, or a CimcError: hardware passes never guess a preset."""
        if self.target is None:
            raise OptionError(
                f"pass {pass_name} needs a target; compile with cimc.compile(..., target=...) "
                f"or give run_passes(..., target=cimc.load_target('cimpool-sram'))"
            )
        return self.target


@dataclass(frozen=True)
class PassResult:
    """What a pass did: ``changed`` says whether the graph was modified, ``product`` carries
    anything else it made (``lower``: the Program), ``summary`` a one-line account."""

    changed: bool
    product: Any = None
    summary: str = ""


@dataclass(frozen=True)
class Pass:
    """Base of every pass. Subclasses are frozen dataclasses; fields are options."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        """Option -> choices the joint search may try (empty: nothing to search)."""
        return {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise OptionError for bad option values (override; call ``check_choice`` etc.)."""

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __str__(self) -> str:
        changed = [
            f"{f.name.replace('_', '-')}={_fmt(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return self.name + ("{" + ",".join(changed) + "}" if changed else "")

    def check_choice(self, option: str, allowed: Sequence[Any]) -> None:
        value = getattr(self, option)
        if value not in allowed:
            raise OptionError(
                f"{self.name}: option {option}={_fmt(value)} is not allowed; "
                f"choose one of {', '.join(_fmt(a) for a in allowed)}"
            )

    def check_range(self, option: str, lo: float, hi: float | None = None, why: str = "") -> None:
        value = getattr(self, option)
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise OptionError(f"{self.name}: option {option}={_fmt(value)} must be {bound}{why}")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


PASS_REGISTRY: dict[str, type[Pass]] = {}
_plugins_loaded = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by name in pipeline strings."""
    params = cls.__dict__.get("__dataclass_params__")  # its own, not inherited from Pass
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__name__} must be decorated with @dataclass(frozen=True)")
    if not _NAME.match(cls.name or ""):
        raise TypeError(f"{cls.__name__}.name {cls.name!r} must be kebab-case")
    PASS_REGISTRY[cls.name] = cls
    return cls


def load_passes() -> dict[str, type[Pass]]:
    """The registry with built-ins and entry-point plugins loaded (once)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        from . import passes as _builtins  # noqa: F401  (registers on import)

        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Pass) and obj.name not in PASS_REGISTRY:
                register_pass(obj)
    return PASS_REGISTRY


# ---- pipeline strings ---------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*([a-z0-9][a-z0-9-]*)\s*(\{[^{}]*\})?\s*(,|$)")


def _convert(cls: type[Pass], option: str, raw: str) -> Any:
    hints = typing.get_type_hints(cls)
    kind = hints.get(option)
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if kind is int:
            return int(raw)
        if kind is float:
            num, _, den = raw.partition("/")
            value = float(num) / float(den) if den else float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        return raw
    except (ValueError, ZeroDivisionError):
        raise OptionError(
            f"{cls.name}: option {option}={raw!r} is not a valid {getattr(kind, '__name__', kind)}"
        ) from None


def make_pass(name: str, options: dict[str, str] | None = None) -> Pass:
    """Instantiate a registered pass from string options."""
    registry = load_passes()
    cls = registry.get(name)
    if cls is None:
        raise OptionError(
            f"unknown pass {name!r}; registered passes: {', '.join(sorted(registry))}"
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, raw in (options or {}).items():
        opt = key.replace("-", "_")
        if opt not in fields:
            raise OptionError(
                f"{name}: unknown option {key!r}; options are "
                f"{', '.join(sorted(f.replace('_', '-') for f in fields)) or '(none)'}"
            )
        kwargs[opt] = _convert(cls, opt, raw)
    return cls(**kwargs)


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of passes; ``str()`` gives the pipeline string, which parses back."""

    passes: tuple[Pass, ...]

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __iter__(self):
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)


def parse_pipeline(text: str | Pipeline | Iterable[Pass]) -> Pipeline:
    """Parse ``name{opt=value,...},name,...``; errors point at the offending text."""
    if isinstance(text, Pipeline):
        return text
    if not isinstance(text, str):
        return Pipeline(tuple(text))
    passes: list[Pass] = []
    pos = 0
    text = text.strip()
    if not text:
        return Pipeline(())
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise OptionError(
                f"malformed pipeline at character {pos}: {text[pos : pos + 30]!r}; "
                "expected name or name{option=value,...} separated by commas"
            )
        name, body, sep = m.group(1), m.group(2), m.group(3)
        options: dict[str, str] = {}
        if body:
            for item in filter(None, (s.strip() for s in body[1:-1].split(","))):
                key, eq, value = item.partition("=")
                if not eq or not key.strip() or not value.strip():
                    raise OptionError(
                        f"malformed option {item!r} of pass {name!r}; expected option=value"
                    )
                key = key.strip()
                if key.replace("-", "_") in {k.replace("-", "_") for k in options}:
                    raise OptionError(
                        f"pass {name!r} sets option {key!r} twice in {body!r}; "
                        "give each option once"
                    )
                options[key] = value.strip()
        passes.append(make_pass(name, options))
        pos = m.end()
        if sep == "," and pos >= len(text):
            raise OptionError("malformed pipeline: trailing comma")
    return Pipeline(tuple(passes))


def describe_passes() -> list[dict[str, Any]]:
    """Every registered pass with its options, defaults and search space (for `cimc passes`)."""
    out = []
    for name, cls in sorted(load_passes().items()):
        out.append(
            {
                "name": name,
                "summary": cls.summary or " ".join((cls.__doc__ or "").split("\n\n")[0].split()),
                "options": {
                    f.name.replace("_", "-"): _fmt(f.default) for f in dataclasses.fields(cls)
                },
                "search_space": {k: list(v) for k, v in cls.search_space().items()},
            }
        )
    return out
