"""Macro kinds: the registered hardware kinds a memory array (MA) can be.

A macro kind owns every rule that depends on what sits in the array: which compressed layer ops
it runs, the default compression pipeline for it, the geometry of a tile (bytes, bit-MACs and
cycles per input row), and the area of its arrays. The core (compiler, tile, lower, energy)
calls these rules through :data:`MACRO_KINDS`; nothing else branches on a target's ``macro``.

Built-in kinds:

* ``cimpool`` (CIMPool two-array macro, Li & Gupta 2025): a pool layer's tile is (group, vector
  slot g, block of ``error_cols`` output channels). Per input row it runs one bit-serial MVM on
  the pool array (rows x pool_cols) and, in parallel, on the error array (kept rows x channels);
  the permutation unit routes the pool results into the block's accumulators, pipelined with the
  next MVM. Layers left at N bits (first conv, last FC) run bit-sliced as on an int macro.
* ``int`` (conventional N-bit SRAM-CiM): a tile is (group, slice of ``rows`` inputs,
  ``array_cols / N`` channels), N bit slices per weight, one bit-serial MVM per input row.

A new kind subclasses :class:`MacroKind` and calls :func:`register_macro`; a target then names
it with ``macro = "<name>"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from cimc.cim_ops import POOL_OP, QUANT_OP
from cimc.errors import OptionError


@dataclass(frozen=True)
class LayerWork:
    """Shape of one CiM layer's work, independent of the mapping."""

    rows: int  # M: input rows (batch x output pixels)
    k: int  # inputs per output channel (one conv group)
    out: int  # output channels (all groups)
    groups: int
    scheme: str  # "pool" or "int"
    weight_bits: int  # int layers: bits per weight
    error_rows: int  # pool layers: kept error rows per vector slot (0 = no error term)
    route_cycles: int  # pool layers: permutation cycles per (slot, block), from permute-schedule
    has_error: bool


@dataclass(frozen=True)
class TileGeometry:
    """One tile of a layer: what it stores, what it computes per input row, and how long."""

    tiles: int  # tiles of one copy of the layer
    tile_bytes: int  # weight bytes of one tile
    k_tiles: int  # tiles along K that share the same outputs (partial sums to reduce)
    chan_per_tile: int
    per_row_cycles: int  # cycles one tile spends per input row
    bitops_per_row: int  # 1b x 1b MACs one tile performs per input bit plane and row
    slice_bytes: int  # input bytes one tile reads per row
    opcode: str  # the MVM instruction that runs the tile


class MacroKind:
    """Rules of one kind of memory array. Subclass, set ``name`` and ``layer_ops``, register."""

    name: ClassVar[str] = ""
    layer_ops: ClassVar[tuple[str, ...]] = ()  # the compressed layer ops its arrays run
    # target parameters none of this kind's rules (geometry, area, energy, simulator) read:
    # configs that differ only there cost alike, so the search evaluates one of them
    unread_params: ClassVar[frozenset[str]] = frozenset()

    def default_pipeline(self, target) -> str:
        """Compression for this macro; ``compile`` appends the backend passes."""
        raise NotImplementedError

    def check_target(self, target) -> None:
        """Raise OptionError for parameter combinations this macro cannot build."""

    def geometry(self, work: LayerWork, target) -> TileGeometry:
        """The tile of a layer this macro runs (``work.scheme`` says which layer op it is)."""
        if work.scheme == "int":
            return int_geometry(work, target)
        raise NotImplementedError(f"macro {self.name} has no rule for {work.scheme} layers")

    def array_area_bits(self, target) -> int:
        """Fixed bit cells per array besides the weight storage (CIMPool: the pool array)."""
        return 0

    def permutation_lanes(self, target) -> int:
        """Permutation-unit lanes per array (0: the macro has none)."""
        return 0


def int_geometry(work: LayerWork, target) -> TileGeometry:
    """N-bit weights bit-sliced over N columns: ``array_cols / N`` channels per tile."""
    og = work.out // work.groups
    rows = target.rows
    chan = max(1, min(target.array_cols // work.weight_bits, og))
    k_tiles = math.ceil(work.k / rows)
    blocks = math.ceil(og / chan)
    bitops = rows * chan * work.weight_bits
    return TileGeometry(
        tiles=work.groups * k_tiles * blocks,
        tile_bytes=math.ceil(rows * chan * work.weight_bits / 8),
        k_tiles=k_tiles,
        chan_per_tile=chan,
        per_row_cycles=target.act_bits * math.ceil(bitops / target.MA_comp_per_core),
        bitops_per_row=bitops,
        slice_bytes=min(work.k, rows) * target.act_bits // 8 or 1,
        opcode="MVM_INT",
    )


class IntMacro(MacroKind):
    """Conventional N-bit SRAM-CiM macro: bit-sliced weights, bit-serial inputs."""

    name = "int"
    layer_ops = (QUANT_OP,)
    # no pool array, error array or permutation unit (tests/test_search_canonical.py checks
    # that changing them changes no program's cycles, energy or area)
    unread_params = frozenset({"pool_cols", "error_rows", "error_cols", "perm_lanes"})

    def check_target(self, target) -> None:
        """Its arrays hold the N-bit weights the quantiser makes: said here, naming the target
        parameter, not as the pass option the default pipeline derives from it (``--set
        macro=int`` on a cimpool preset inherits its weight_bits=1)."""
        from cimc.compress.quantize import WEIGHT_BITS

        if target.weight_bits not in WEIGHT_BITS:
            raise OptionError(
                f"target {target.name}: macro=int stores {min(WEIGHT_BITS)}- to "
                f"{max(WEIGHT_BITS)}-bit weights but weight_bits={target.weight_bits}; "
                "--set weight_bits=8 (or 4)"
            )

    def default_pipeline(self, target) -> str:
        """GPTQ rounding: chosen by measurement on the devkit's models (README, PTQ table)."""
        return f"fold-bn,quantize-weights{{bits={target.weight_bits},rounding=gptq}},quantize-act"


class CimPoolMacro(MacroKind):
    """CIMPool two-array macro: pool array, error array, permutation unit."""

    name = "cimpool"
    layer_ops = (POOL_OP, QUANT_OP)

    def default_pipeline(self, target) -> str:
        from cimc.passes import DEFAULT_COMPRESSION

        return f"{DEFAULT_COMPRESSION},permute-schedule"

    def check_target(self, target) -> None:
        if target.error_rows > target.rows:
            raise OptionError(
                f"target {target.name}: error_rows={target.error_rows} exceeds rows={target.rows}"
            )

    def geometry(self, work: LayerWork, target) -> TileGeometry:
        if work.scheme != "pool":
            return super().geometry(work, target)
        og = work.out // work.groups
        v, s = target.rows, target.pool_cols
        slots = math.ceil(work.k / v)
        chan = min(target.error_cols, og)
        blocks = math.ceil(og / chan)
        err_rows = work.error_rows if work.has_error else 0
        index_bits = chan * math.ceil(math.log2(s))
        bitops = v * s + err_rows * chan
        mvm = target.act_bits * math.ceil(bitops / target.MA_comp_per_core)
        route = work.route_cycles or math.ceil(chan / target.perm_lanes)
        return TileGeometry(
            tiles=work.groups * slots * blocks,
            tile_bytes=math.ceil((index_bits + err_rows * chan + (v if err_rows < v else 0)) / 8),
            k_tiles=slots,
            chan_per_tile=chan,
            per_row_cycles=max(mvm, route),
            bitops_per_row=bitops,
            slice_bytes=min(work.k, v) * target.act_bits // 8 or 1,
            opcode="MVM_POOL",
        )

    def array_area_bits(self, target) -> int:
        return target.rows * target.pool_cols

    def permutation_lanes(self, target) -> int:
        return target.perm_lanes


MACRO_KINDS: dict[str, MacroKind] = {}


def register_macro(kind: MacroKind) -> MacroKind:
    """Make a macro kind available to targets by its ``name``."""
    if not kind.name:
        raise TypeError(f"{type(kind).__name__}.name must be set")
    MACRO_KINDS[kind.name] = kind
    return kind


def macro_kind(target) -> MacroKind:
    """The registered kind of ``target``'s arrays."""
    kind = MACRO_KINDS.get(target.macro)
    if kind is None:
        raise OptionError(
            f"target {target.name}: macro={target.macro!r} is not a registered macro kind; known: "
            f"{', '.join(sorted(MACRO_KINDS))} (register a new one with "
            "cimc.targets.macros.register_macro)"
        )
    return kind


register_macro(IntMacro())
register_macro(CimPoolMacro())
