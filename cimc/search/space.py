"""The joint search space: pass options x target parameters, one variable per linked option.

A variable's *members* are the settings it drives, each ``pass.option`` or ``target.param``; a
linked variable (e.g. ``vector`` = ``zpack.vector`` = ``weight-pool.vector`` = ``target.rows``)
sets all of its members to one value, so the pipeline and the hardware cannot disagree. The
``scheme`` variable picks the weight scheme (CIMPool, int8, int4), i.e. the macro kind.
Choices come from the passes' ``search_space()`` and ``cimc.targets.params.search_choices``; a
TOML file restricts, extends or drops variables (see :meth:`Space.from_target`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError
from ..passes_base import load_passes, parse_pipeline

HIERARCHY = (
    "DRAM_bw",
    "L2_bw",
    "L1_bw",
    "L1_num_child",
    "MA_num_child",
    "MA_bw",
    "MA_mem_size",
    "MA_comp_per_core",
)
"""CiMNet's eight hierarchy parameters, searched at 1/8, 1/4, 1/2 and 1 x the preset's value."""

LINKS: dict[str, tuple[str, ...]] = {
    "vector": ("zpack.vector", "weight-pool.vector", "target.rows"),
    "pool": ("weight-pool.pool", "target.pool_cols"),
    "act_bits": ("quantize-act.bits", "target.act_bits"),
    "keep": ("error-prune.keep",),
}
"""Options that must agree, searched as one variable (choices: those every member allows)."""

SCHEMES: dict[str, dict[str, Any]] = {
    "cimpool": {"macro": "cimpool"},
    "int8": {"macro": "int", "weight_bits": 8},
    "int4": {"macro": "int", "weight_bits": 4},
}
"""Weight scheme -> the target parameters that select its macro kind."""

DEFAULT_HARDWARE = (*HIERARCHY, "perm_lanes", "vector_width")


@dataclass(frozen=True)
class Variable:
    """One searched dimension: its choices and the settings it drives."""

    name: str
    choices: tuple
    members: tuple[str, ...]

    def index(self, value: Any) -> int:
        try:
            return self.choices.index(value)
        except ValueError:
            raise OptionError(
                f"search variable {self.name}: {value!r} is not one of its choices "
                f"{list(self.choices)}"
            ) from None


@dataclass(frozen=True)
class Space:
    """Variables over a base target (a preset): encodes configs as indices and one-hot vectors.
    With an elastic ``family`` (its name), its architecture variables come first."""

    target: Any
    variables: tuple[Variable, ...]
    family: str | None = None

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_target(
        cls, target: Any, space_file: str | Path | None = None, family: str | None = None
    ) -> Space:
        """The default space of ``target`` (and of ``family``'s architecture), edited by
        ``space_file``::

        drop = ["vector_width"]            # variables left at the preset's value
        [choices]
        L1_num_child = [2, 4, 8]           # restrict (or extend: any value in range)
        "weight-pool.init" = ["kmeans", "random"]   # add a declared pass option
        "arch.depth0" = [1, 2]             # restrict an architecture variable
        """
        declared = declared_variables(target)
        arch = {}
        if family is not None:
            from .architecture import arch_variables

            arch = {n: Variable(n, c, m) for n, (c, m) in arch_variables(family).items()}
        declared = arch | declared
        chosen = {n: declared[n] for n in ("scheme", *LINKS, *DEFAULT_HARDWARE) if n in declared}
        chosen = arch | chosen
        if space_file is not None:
            chosen = _apply_file(chosen, declared, Path(space_file), target)
        return cls(target, tuple(v for v in chosen.values() if v.choices), family)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    def blocks(self) -> tuple[np.ndarray, ...]:
        """Column indices of the variables searched (more than one choice) per block: the
        family's architecture, then the passes and hardware. CiMNet's space is hierarchical, a
        network and the hierarchy that runs it; the loop varies one block at a time at a rate
        (``Settings.block_rate``). A space without an architecture axis is one block."""
        arch = np.array([v.members[0].startswith("arch.") for v in self.variables], bool)
        searched = self.searched_mask()
        return tuple(np.flatnonzero(g) for g in (searched & arch, searched & ~arch) if g.any())

    def searched_mask(self) -> np.ndarray:
        """Per variable: has it more than one choice?"""
        return np.array([len(v.choices) > 1 for v in self.variables], bool)

    def graph_mask(self) -> np.ndarray:
        """Per variable: does the compressed graph depend on it? The architecture, the scheme,
        pass options and the target parameters linked to them do (what ``pipeline_for`` and
        ``target_for(numerics_only=True)`` read); the rest, the hierarchy, change only what
        running the graph costs."""
        return np.array(
            [
                v.name == "scheme" or len(v.members) > 1 or not v.members[0].startswith("target.")
                for v in self.variables
            ],
            bool,
        )

    @property
    def size(self) -> int:
        return math.prod(len(v.choices) for v in self.variables)

    def describe(self) -> dict[str, Any]:
        """JSON-able description; equal descriptions mean the same space."""
        return {
            "target": self.target.name,
            "family": self.family,
            "variables": [
                {"name": v.name, "choices": list(v.choices), "members": list(v.members)}
                for v in self.variables
            ],
        }

    def digest(self) -> str:
        text = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    # --- encodings ---------------------------------------------------------------------------
    def to_indices(self, config: dict[str, Any]) -> np.ndarray:
        unknown = sorted(set(config) - set(self.names))
        if unknown:
            raise OptionError(f"config names unknown search variables {unknown}")
        return np.array([v.index(config[v.name]) for v in self.variables], dtype=np.int64)

    def from_indices(self, indices: Any) -> dict[str, Any]:
        return {v.name: v.choices[int(i)] for v, i in zip(self.variables, indices)}

    def one_hot(self, indices: np.ndarray) -> np.ndarray:
        """Rows of indices -> concatenated one-hot blocks over the declared choices (CiMNet)."""
        indices = np.atleast_2d(indices)
        blocks = [np.eye(len(v.choices))[indices[:, j]] for j, v in enumerate(self.variables)]
        return np.concatenate(blocks, axis=1)

    def features(self, indices: np.ndarray, summed: bool = False) -> np.ndarray:
        """What the predictors read: the one-hot, with the variables of a block the subnet does
        not have and those its scheme does not read (``canonical``) left out (zeros, as OFA
        encodes a skipped block: else they are noise to the fit); for a cost summed over the
        blocks (``summed``) also, per block kind, how many blocks take each choice of each of
        their variables (a block of one shape costs alike wherever it sits: ViT-B's cycles on
        the preset are exactly linear in these counts).
        One-hot columns first, so ``hierarchy_blocks`` still names theirs."""
        indices = np.atleast_2d(indices)
        x = self.one_hot(indices)
        col = {v.name: j for j, v in enumerate(self.variables)}
        start = np.concatenate([[0], np.cumsum([len(v.choices) for v in self.variables])])
        counts: dict[tuple[str, int, Any], np.ndarray] = {}
        for hit, unread in self._unread(indices):
            for j in unread:
                x[hit, start[j] : start[j + 1]] = 0
        for slot, present in self._presence(indices):
            for role, name in enumerate(slot.variables):
                j = col[name]
                x[~present, start[j] : start[j + 1]] = 0
                if not summed:
                    continue
                for k, choice in enumerate(self.variables[j].choices):
                    key = (slot.kind, role, choice)
                    counts[key] = counts.get(key, 0) + (present & (indices[:, j] == k))
        if not counts:
            return x
        return np.hstack([x, np.stack(list(counts.values()), axis=1).astype(x.dtype)])

    def canonical(self, indices: np.ndarray) -> np.ndarray:
        """``indices`` with the variables a config does not read pinned: those of every block
        the subnet lacks at their first choice, and those only another macro kind reads at the
        preset's choice (an int config runs no CIMPool pass and has no pool array, error array
        or permutation unit: ``MacroKind.unread_params``). Configs that differ only there are one
        network on one chip, so the search takes one of them."""
        out = np.array(indices, dtype=np.int64)
        rows = np.atleast_2d(out)
        col = {v.name: j for j, v in enumerate(self.variables)}
        for slot, present in self._presence(rows):
            rows[np.ix_(~present, [col[v] for v in slot.variables])] = 0
        for hit, unread in self._unread(rows):
            rows[np.ix_(hit, unread)] = self._base_indices[unread]
        return out

    def _unread(self, indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows, columns) pairs: the variables each row's scheme does not read."""
        scheme = self.names.index("scheme") if "scheme" in self.names else None
        return [
            (np.full(len(indices), True) if scheme is None else indices[:, scheme] == c, cols)
            for c, cols in self._unread_columns.items()
        ]

    @functools.cached_property
    def _unread_columns(self) -> dict[int | None, np.ndarray]:
        """Per choice of the scheme variable (None: no such variable, the preset's macro), the
        columns of the variables whose every member that scheme leaves unread: a target
        parameter its macro kind does not read, or an option of a pass its pipeline lacks."""
        from ..compiler import BACKEND
        from ..targets.macros import macro_kind

        if "scheme" in self.names:
            choices = self.variables[self.names.index("scheme")].choices
            targets = {i: self.target.replace(**SCHEMES[s]) for i, s in enumerate(choices)}
        else:
            targets = {None: self.target}
        out = {}
        for choice, target in targets.items():
            unread = macro_kind(target).unread_params
            passes = {p.name for p in parse_pipeline(_default_pipeline(target))} | set(BACKEND)
            cols = [
                j
                for j, v in enumerate(self.variables)
                if not any(_reads(m, unread, passes) for m in v.members)
            ]
            if cols:
                out[choice] = np.array(cols, dtype=np.int64)
        return out

    @functools.cached_property
    def _base_indices(self) -> np.ndarray:
        """Each variable's index of its preset value (the first choice where it has none)."""
        base = self.base_config()
        return np.array(
            [0 if base[v.name] is None else v.index(base[v.name]) for v in self.variables],
            dtype=np.int64,
        )

    def _presence(self, indices: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        """Each of the family's slots with, per row of ``indices``, whether its block exists."""
        col = {v.name: j for j, v in enumerate(self.variables)}
        out = []
        for slot in self._slots():
            depth = np.asarray(self.variables[col[slot.depth]].choices)[indices[:, col[slot.depth]]]
            out.append((slot, slot.present(depth)))
        return out

    def _slots(self) -> list[Any]:
        """The family's slots (``ElasticFamily.slots``) as named in this space."""
        if self.family is None:
            return []
        from .architecture import PREFIX, load_family

        names = set(self.names)
        return [
            dataclasses.replace(
                slot, depth=PREFIX + slot.depth, variables=tuple(PREFIX + v for v in slot.variables)
            )
            for slot in load_family(self.family).slots()
            if {PREFIX + slot.depth, *(PREFIX + v for v in slot.variables)} <= names
        ]

    def from_one_hot(self, encoded: np.ndarray) -> np.ndarray:
        encoded = np.atleast_2d(encoded)
        out, col = [], 0
        for v in self.variables:
            out.append(encoded[:, col : col + len(v.choices)].argmax(axis=1))
            col += len(v.choices)
        return np.stack(out, axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        highs = [len(v.choices) for v in self.variables]
        return np.stack([rng.integers(0, h, size=n) for h in highs], axis=1)

    # --- configs to pipeline and hardware ----------------------------------------------------
    def base_config(self) -> dict[str, Any]:
        """Each variable's value in the preset and its default pipeline (None if not a choice)."""
        pipe = {p.name: p.options() for p in parse_pipeline(_default_pipeline(self.target))}
        if self.family is not None:  # the architecture's base is the largest subnet
            from .architecture import PREFIX, load_family

            pipe["arch"] = {PREFIX + k: v for k, v in load_family(self.family).largest().items()}
        out = {}
        for v in self.variables:
            # a pass option left at 0 means "the target's": the target member is the truth
            values = [_member_value(m, self.target, pipe) for m in v.members]
            if v.name == "keep":
                values.append(self.target.error_rows / self.target.rows)
            out[v.name] = next((x for x in values if x in v.choices), None)
        return out

    def target_for(self, config: dict[str, Any], numerics_only: bool = False) -> Any:
        """The base target with the config's hardware values (``numerics_only``: only those
        tied to pass options and the scheme, which the compressed graph depends on)."""
        changes: dict[str, Any] = {}
        for v in self.variables:
            if v.name == "scheme":
                changes.update(SCHEMES[config[v.name]])
            for member in v.members:
                kind, _, key = member.partition(".")
                if kind == "target" and (not numerics_only or len(v.members) > 1):
                    changes[key] = config[v.name]
        if "keep" in config and "error_rows" not in config and not numerics_only:
            # the error array holds the kept rows
            rows = changes.get("rows", self.target.rows)
            changes["error_rows"] = max(1, round(config["keep"] * rows))
        return self.target.replace(**changes) if changes else self.target

    def pipeline_for(self, config: dict[str, Any]) -> str:
        """The compression pipeline of the config's scheme with its pass options set."""
        options: dict[str, dict[str, Any]] = {}
        for v in self.variables:
            for member in v.members:
                kind, _, key = member.partition(".")
                if kind not in ("target", "scheme", "arch"):
                    options.setdefault(kind, {})[key.replace("-", "_")] = config[v.name]
        pipe = parse_pipeline(_default_pipeline(self.target_for(config, numerics_only=True)))
        passes = [
            dataclasses.replace(p, **{k: val for k, val in options.get(p.name, {}).items()})
            for p in pipe
        ]
        return ",".join(str(p) for p in passes)


def _default_pipeline(target: Any) -> str:
    from ..compiler import default_pipeline

    return default_pipeline(target)


def _reads(member: str, unread_params: frozenset[str], passes: set[str]) -> bool:
    """Does a config read this variable member, given its macro's unread target parameters and
    the passes of its pipeline?"""
    kind, _, key = member.partition(".")
    if kind == "target":
        return key not in unread_params
    return kind in ("scheme", "arch") or kind in passes


def _member_value(member: str, target: Any, pipe: dict[str, dict[str, Any]]) -> Any:
    kind, _, key = member.partition(".")
    if kind == "target":
        return getattr(target, key)
    if kind == "arch":
        return pipe["arch"][member]
    if kind == "scheme":
        return next(
            (n for n, s in SCHEMES.items() if all(getattr(target, k) == x for k, x in s.items())),
            None,
        )
    return pipe.get(kind, {}).get(key.replace("-", "_"))


def declared_variables(target: Any) -> dict[str, Variable]:
    """Every variable the passes and the target declare, linked ones merged."""
    from ..targets.params import search_choices

    out: dict[str, Variable] = {"scheme": Variable("scheme", tuple(SCHEMES), ("scheme",))}
    members: dict[str, tuple] = {f"target.{k}": tuple(v) for k, v in search_choices(target).items()}
    for name, cls in sorted(load_passes().items()):
        for option, choices in cls.search_space().items():
            members[f"{name}.{option}"] = tuple(choices)
    linked = {m for group in LINKS.values() for m in group}
    for name, group in LINKS.items():
        if all(m in members for m in group):
            common = [c for c in members[group[0]] if all(c in members[m] for m in group[1:])]
            out[name] = Variable(name, tuple(common), group)
    for member, choices in members.items():
        if member not in linked and member != "target.weight_bits":
            name = member.removeprefix("target.")
            out[name] = Variable(name, choices, (member,))
    out.pop("quantize-weights.bits", None)  # the scheme variable chooses int8 / int4
    return out


def _apply_file(
    chosen: dict[str, Variable], declared: dict[str, Variable], path: Path, target: Any
) -> dict[str, Variable]:
    if not path.is_file():
        raise OptionError(f"space file {path} does not exist; give a TOML file (see --show-space)")
    try:
        spec = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"space file {path}: not valid TOML ({exc})") from None
    extra = sorted(set(spec) - {"drop", "choices"})
    if extra:
        raise OptionError(f"space file {path}: unknown keys {extra}; use 'drop' and [choices]")
    drop, choices = spec.get("drop", []), spec.get("choices", {})
    if not isinstance(drop, list) or not all(isinstance(n, str) for n in drop):
        raise OptionError(
            f"space file {path}: drop = {drop!r} must be a list of variable names, "
            'e.g. drop = ["perm_lanes"]'
        )
    if not isinstance(choices, dict):
        raise OptionError(
            f"space file {path}: choices must be a table, e.g. [choices] then act_bits = [4, 8]"
        )
    out = dict(chosen)
    for name in [*drop, *choices]:
        if name not in declared:
            raise OptionError(
                f"space file {path}: unknown variable {name!r}; variables are "
                f"{', '.join(sorted(declared))}"
            )
    for name in drop:
        out.pop(name, None)
    for name, values in choices.items():
        var = declared[name]
        out[name] = dataclasses.replace(var, choices=_file_choices(var, values, target, path))
    return out


def _file_choices(var: Variable, values: Any, target: Any, path: Path) -> tuple:
    """A space file's choices of one variable: a non-empty list of distinct allowed values (a
    scalar would be ambiguous, a repeat would weigh one choice twice in sampling)."""
    key = var.name if var.name.replace("_", "").isalnum() else json.dumps(var.name)
    example = f"{key} = {json.dumps(list(var.choices), default=str)}"
    if not isinstance(values, list):
        raise OptionError(
            f"space file {path}: {var.name} = {values!r} must be a list of choices, e.g. {example}"
        )
    if not values:
        raise OptionError(f"space file {path}: variable {var.name} has no choices")
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise OptionError(
            f"space file {path}: {var.name} lists {repeated[0]!r} more than once; "
            "give each choice once"
        )
    for value in values:
        _check_value(var, value, target, path)
    return tuple(values)


def _check_value(var: Variable, value: Any, target: Any, path: Path) -> None:
    """A value is allowed if every member accepts it (the target's range, the pass's checks)."""
    from ..passes_base import make_pass

    where = f"space file {path}: {var.name}={value!r}"
    if var.name == "scheme":
        if value not in SCHEMES:
            raise OptionError(f"{where} is not a weight scheme; choose from {list(SCHEMES)}")
        return
    if var.members[0].startswith("arch."):
        if value not in var.choices:
            raise OptionError(f"{where} is not in the family's space; choose from {var.choices}")
        return
    for member in var.members:
        kind, _, key = member.partition(".")
        try:
            if kind == "target":
                target.replace(**{key: value})
            else:
                make_pass(kind, {key: str(value)})
        except OptionError as exc:
            raise OptionError(f"{where} is out of range: {exc}") from None
