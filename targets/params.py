"""The hardware template: one parameter set that unites the CiMNet hierarchy and the macros.

DRAM -> L2 decoder -> L1_num_child L1 decoders -> MA_num_child memory arrays (MA) each
(CiMNet, Kundu et al. 2024). Each MA is a CIMPool macro (pool array rows x pool_cols, error
array, permutation unit) or a conventional bit-sliced N-bit macro; a digital vector unit runs the
non-MVM ops. Presets are TOML files in ``targets/presets`` whose comments give every constant's
unit and, for energy and area, its source.

Every parameter declares its unit, valid range and the choices the joint search may try.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cimc.errors import OptionError

from .technology import PUBLISHED, scaled


@dataclass(frozen=True)
class Spec:
    """Unit, valid range and search choices of one parameter."""

    unit: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    allowed: tuple = ()
    doc: str = ""


SCALE = (0.125, 0.25, 0.5, 1.0)  # CiMNet searches each parameter at these multiples of a base

SPECS: dict[str, Spec] = {
    "macro": Spec("", doc="registered macro kind (targets.macros): cimpool, int, ..."),
    "weights": Spec("", allowed=("sram", "dram"), doc="weights resident on chip or streamed"),
    "weight_bits": Spec("bit", 1, 8, choices=(4, 8), doc="bits per weight of an int macro"),
    "DRAM_bw": Spec("B/cycle", 1, 4096, choices=SCALE, doc="DRAM -> L2 decoder bandwidth"),
    "L2_bw": Spec("B/cycle", 1, 4096, choices=SCALE, doc="L2 -> each L1 decoder (multicast)"),
    "L1_bw": Spec("B/cycle", 1, 4096, choices=SCALE, doc="L1 -> each memory array (multicast)"),
    "L1_num_child": Spec("count", 1, 1024, choices=SCALE, doc="number of L1 decoders"),
    "MA_num_child": Spec("count", 1, 1024, choices=SCALE, doc="memory arrays per L1 decoder"),
    "MA_bw": Spec("B/cycle", 1, 4096, choices=SCALE, doc="memory-array internal bandwidth"),
    "MA_mem_size": Spec("byte", 256, 2**30, choices=SCALE, doc="weight capacity per MA"),
    "MA_comp_per_core": Spec(
        "bit-MAC/cycle", 64, 2**24, choices=SCALE, doc="1b x 1b MACs per cycle per MA"
    ),
    "rows": Spec("row", 8, 1024, choices=(64, 128, 256), doc="array rows (vector length V)"),
    "pool_cols": Spec("col", 8, 1024, choices=(64, 128, 256), doc="pool array columns (S)"),
    "error_rows": Spec("row", 1, 1024, choices=(32, 64, 128), doc="error array rows"),
    "error_cols": Spec("col", 8, 1024, doc="error array columns (output channels per MVM)"),
    "array_cols": Spec("col", 8, 4096, doc="columns of an int macro array"),
    "act_bits": Spec("bit", 2, 16, choices=(4, 6, 8), doc="activation bits (bit-serial cycles)"),
    "adc_bits": Spec("bit", 0, 16, doc="per-column ADC bits; 0 = ideal digital adder tree"),
    "perm_lanes": Spec("route/cycle", 1, 1024, choices=(8, 16, 32), doc="permutation lanes"),
    "acc_banks": Spec("bank", 1, 1024, doc="accumulator banks of the permutation unit"),
    "vector_width": Spec("elem/cycle", 1, 4096, choices=(16, 32, 64), doc="vector unit width"),
    "vector_macs_per_cycle": Spec(
        "MAC/cycle", 1, 4096, choices=(16, 32, 64), doc="vector-unit multiply-accumulates"
    ),
    "attention": Spec(
        "",
        allowed=("vector", "cim"),
        doc="where activation x activation MatMuls run: the vector unit at its MAC rate, or the "
        "CiM arrays after one operand is written into them",
    ),
    "clock_mhz": Spec("MHz", 1, 10000, doc="clock frequency"),
    "tech_nm": Spec("nm", 5, 180, doc="technology node: energies not given are scaled to it"),
    "e_dram_pj_per_byte": Spec("pJ/B", 0, doc="DRAM access energy"),
    "e_sram_pj_per_byte": Spec("pJ/B", 0, doc="on-chip buffer access energy"),
    "e_link_pj_per_byte": Spec("pJ/B", 0, doc="one link hop (decoder to child) per byte"),
    "e_bitmac_fj": Spec("fJ", 0, doc="energy of one 1b x 1b MAC in a CiM array"),
    "e_route_pj": Spec("pJ", 0, doc="permutation route + accumulate of one result"),
    "e_vector_pj_per_op": Spec("pJ", 0, doc="vector-unit energy per element operation"),
    "e_adc_fj_per_step": Spec(
        "fJ", 0, doc="ADC energy per conversion step (Walden FoM): a conversion is FoM x 2^bits"
    ),
    "a_cim_bit_um2": Spec("um^2", 0, doc="CiM bitcell area incl. its share of periphery"),
    "a_sram_bit_um2": Spec("um^2", 0, doc="buffer SRAM bitcell area incl. periphery"),
    "a_perm_um2_per_lane": Spec("um^2", 0, doc="permutation crossbar + accumulator per lane"),
    "a_vector_um2_per_lane": Spec("um^2", 0, doc="vector unit area per lane"),
    "a_link_um2_per_Bpc": Spec("um^2", 0, doc="decoder + link area per B/cycle of bandwidth"),
    "a_adc_um2_per_step": Spec("um^2", 0, doc="column ADC area per conversion step (x 2^adc_bits)"),
    "p_leak_pw_per_bit": Spec("pW", 0, doc="static power of one SRAM / CiM bitcell"),
    "p_leak_uw_per_lane": Spec("uW", 0, doc="static power of one vector / permutation lane"),
    "buffer_bytes": Spec("byte", 0, doc="on-chip activation buffer (L2) capacity"),
}


@dataclass(frozen=True)
class Target:
    """A complete, validated parameter set (see SPECS for units)."""

    name: str
    macro: str
    weights: str
    weight_bits: int
    DRAM_bw: float
    L2_bw: float
    L1_bw: float
    L1_num_child: int
    MA_num_child: int
    MA_bw: float
    MA_mem_size: int
    MA_comp_per_core: int
    rows: int
    pool_cols: int
    error_rows: int
    error_cols: int
    array_cols: int
    act_bits: int
    adc_bits: int
    perm_lanes: int
    acc_banks: int
    vector_width: int
    vector_macs_per_cycle: int
    attention: str
    clock_mhz: float
    tech_nm: int
    e_dram_pj_per_byte: float
    e_sram_pj_per_byte: float
    e_link_pj_per_byte: float
    e_bitmac_fj: float
    e_route_pj: float
    e_vector_pj_per_op: float
    e_adc_fj_per_step: float
    a_cim_bit_um2: float
    a_sram_bit_um2: float
    a_perm_um2_per_lane: float
    a_vector_um2_per_lane: float
    a_link_um2_per_Bpc: float
    a_adc_um2_per_step: float
    p_leak_pw_per_bit: float
    p_leak_uw_per_lane: float
    buffer_bytes: int

    def __post_init__(self) -> None:
        for name, spec in SPECS.items():
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionError(f"target {self.name}: {name}={value} must be a finite number")
            if spec.allowed and value not in spec.allowed:
                raise OptionError(
                    f"target {self.name}: {name}={value!r} is not valid; choose one of "
                    f"{', '.join(spec.allowed)}"
                )
            if spec.lo is not None and (
                value < spec.lo or (spec.hi is not None and value > spec.hi)
            ):
                hi = "" if spec.hi is None else f", {spec.hi:g}]"
                rng = f"[{spec.lo:g}{hi}" if spec.hi is not None else f">= {spec.lo:g}"
                raise OptionError(
                    f"target {self.name}: {name}={value} {spec.unit} is out of range {rng}"
                )
        from .macros import macro_kind

        macro_kind(self).check_target(self)

    @property
    def num_arrays(self) -> int:
        return self.L1_num_child * self.MA_num_child

    @property
    def capacity_bytes(self) -> int:
        return self.num_arrays * self.MA_mem_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Target:
        values = self.to_dict()
        if "tech_nm" in changes:  # energies derived for the old node are derived anew
            values = {
                k: v
                for k, v in values.items()
                if k not in PUBLISHED or v != scaled(k, self.tech_nm)
            }
        return load_target(values | _coerce(changes))


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Convert string values (from --set or TOML) to each field's type, with clear errors."""
    types = {f.name: f.type for f in dataclasses.fields(Target)}
    out = {}
    for key, value in values.items():
        if key not in types:
            raise OptionError(
                f"unknown target parameter {key!r}; parameters are {', '.join(sorted(types))}"
            )
        kind = types[key]
        try:
            if isinstance(value, bool):  # a TOML true/false is an int to Python: never 1 or 0
                raise ValueError
            if kind == "int":
                out[key] = (
                    int(value) if not isinstance(value, float) or value.is_integer() else value
                )
                if isinstance(out[key], float):
                    raise ValueError
            elif kind == "float":
                out[key] = float(value)
            else:
                out[key] = str(value)
        except (TypeError, ValueError):
            want = "a number" if kind in ("int", "float") else "a string"
            shown = str(value).lower() if isinstance(value, bool) else repr(value)
            raise OptionError(
                f"target parameter {key}={shown} must be {want} ({kind}"
                f"{_range(SPECS.get(key))}), e.g. {key} = {_example(key)}"
            ) from None
    return out


def _range(spec: Spec | None) -> str:
    """`` in [lo, hi]`` of a numeric parameter, for messages."""
    if spec is None or spec.lo is None:
        return ""
    return f" in [{spec.lo:g}, {spec.hi:g}]" if spec.hi is not None else f" >= {spec.lo:g}"


def _example(key: str) -> str:
    """The default preset's value of ``key`` as TOML, to show a valid setting."""
    value = getattr(load_target("cimpool-sram"), key)
    return f'"{value}"' if isinstance(value, str) else str(value)


def presets() -> dict[str, Path]:
    """Bundled preset name -> TOML path."""
    folder = resources.files("cimc.targets") / "presets"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_target(
    source: str | Path | dict[str, Any] = "cimpool-sram", overrides: dict[str, Any] | None = None
) -> Target:
    """A preset name, a TOML file (which may say ``base = "preset"``), or a dict; then overrides."""
    hint = ""  # how to supply missing parameters, when the source could inherit them
    if isinstance(source, dict):
        values = dict(source)
    else:
        known = presets()
        path = known.get(str(source)) if str(source) in known else Path(source)
        if not path.is_file():
            raise OptionError(
                f"unknown target {source!r}: not a preset ({', '.join(sorted(known))}) "
                "nor a TOML file"
            )
        try:
            values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise OptionError(f"target file {path}: not valid TOML ({exc})") from exc
        base = values.pop("base", None)
        name = values.get("name", path.stem)
        if base is not None:
            values = _raw_values(base, (str(path.resolve()),)) | values
        else:
            hint = (
                f'; add base = "<preset>" (one of {", ".join(sorted(known))}) to inherit the '
                "parameters the file does not set"
            )
        values["name"] = name
    values = values | dict(overrides or {})
    if "tech_nm" in values:
        node = _coerce({"tech_nm": values["tech_nm"]})["tech_nm"]
        values = {name: scaled(name, node) for name in PUBLISHED} | values
    missing = [f.name for f in dataclasses.fields(Target) if f.name not in values]
    if missing:
        shown = ", ".join(missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        raise OptionError(f"target {values.get('name', source)!r} lacks parameters {shown}{hint}")
    return Target(**_coerce(values))


def _raw_values(source: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's own values merged over its bases' (energies left to derive from tech_nm);
    ``chain``: the bases already followed, so a cycle is an error rather than a recursion."""
    known = presets()
    path = known.get(source) if source in known else Path(str(source))
    if not isinstance(source, str) or not path.is_file():
        raise OptionError(f"target base {source!r} is not a preset ({', '.join(sorted(known))})")
    key = str(path.resolve())
    if key in chain:
        raise OptionError(f"target base {source!r} names itself through its bases; break the cycle")
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"target base {path}: not valid TOML ({exc})") from None
    base = values.pop("base", None)
    return values if base is None else _raw_values(base, (*chain, key)) | values


def search_choices(target: Target, scales: tuple[float, ...] = SCALE) -> dict[str, tuple]:
    """Parameter -> concrete values the joint search may try around this target; scaled
    parameters take ``scales`` times the target's value (CiMNet's 1/8..1 by default)."""
    out = {}
    for name, spec in SPECS.items():
        if not spec.choices:
            continue
        base = getattr(target, name)
        if spec.choices == SCALE:
            kind = type(base)
            out[name] = tuple(sorted({kind(max(spec.lo or 1, base * s)) for s in scales}))
        else:
            out[name] = spec.choices
    return out
