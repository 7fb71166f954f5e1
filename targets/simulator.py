"""``cimc.simulate``: run a Program: real outputs, cycles, energy and area.

Functional: each CiM layer is computed at its SCALE instruction from the program's blobs the way
the macro does it: integer activations, the pool array's column sums for every vector slot (read
through the column ADCs, per bit plane, when the layer has them), the permutation unit's routing
of column idx[o, g] into accumulator o (a Numba kernel), the error array's sums, then alpha, beta,
the activation scale and bias in float64 in the order of the numerics contract. VEC instructions
run the op registry's implementation. The arrays' sums (ADCs included) are ``cimc.cim_ops``'s, so
the outputs are bit-identical to ``cimc.interpret(program.graph, feeds)``.

Timing: ``targets.timing``, run layer by layer so every unit's busy cycles are attributed to
layers (each layer's bottleneck unit). Energy and area: ``targets.energy``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
from numba import njit

from cimc.cim_ops import (
    POOL_OP,
    QUANT_OP,
    act_scale,
    array_sums,
    fold,
    pool_accumulators,
    quantize_input,
    unfold,
)
from cimc.errors import ProgramError
from cimc.interpreter import Interpreter
from cimc.ir import Node
from cimc.ops import REGISTRY
from cimc.program import OP, Program

from .energy import chip_area, energy_by_layer, used_area
from .timing import UNIT_KINDS, TimingState, as_columns, busiest_per_kind, unit_kind_index


@njit(cache=True)
def route_accumulate(columns: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Permutation unit: acc[m, o] = sum_g columns[g, m, idx[o, g]], in int64 accumulators
    (columns hold exact integers in floating point)."""
    g, m, _ = columns.shape
    o = idx.shape[0]
    acc = np.zeros((m, o), np.int64)
    for r in range(m):
        for gi in range(g):
            col = columns[gi, r]
            for oi in range(o):
                acc[r, oi] += np.int64(col[idx[oi, gi]])
    return acc


def _pool_layer(rows: np.ndarray, pool, idx, err, alpha, beta, attrs: dict) -> np.ndarray:
    """One conv group: array sums (through the column ADCs when the layer has them), the
    permutation unit's routing, then the scales (float64)."""
    columns, err_acc = array_sums(rows, pool, idx.shape[1], err, attrs)
    if np.isfinite(columns).all() and (err_acc is None or np.isfinite(err_acc).all()):
        if idx.size and not 0 <= idx.min() <= idx.max() < columns.shape[2]:
            raise ProgramError("pool index out of range of the pool array")  # kernel: no checks
        acc = route_accumulate(columns, idx.astype(np.int64)).astype(np.float64)
        err_acc = None if err_acc is None else err_acc.astype(np.int64).astype(np.float64)
    else:  # NaN input: integer accumulators cannot hold it; NaN where interpret has NaN
        acc, err_acc = pool_accumulators(rows, pool, idx, err, attrs)
    y = alpha * acc
    if err_acc is not None:
        y = y + beta * err_acc
    return y


class _Machine(Interpreter):
    """Executes the program's layers; CiM layers through the macro model above."""

    def run_node(self, node: Node, args: list) -> list[np.ndarray]:
        if node.op == POOL_OP:
            return [self._pool(node, *args)]
        if node.op == QUANT_OP:
            return [self._quant(node, *args)]
        return super().run_node(node, args)

    @staticmethod
    def _pool(node: Node, x, pool, idx, err=None, alpha=None, beta=None, bias=None) -> np.ndarray:
        a = node.attrs
        rows, lead = unfold(quantize_input(x, a), a)
        group, n_out = rows.shape[0], idx.shape[0]
        og = n_out // group
        parts = []
        for gi in range(group):
            out = slice(gi * og, (gi + 1) * og)
            al = alpha if alpha.size == 1 else alpha[out]
            e = None if err is None else err[out]
            parts.append(_pool_layer(rows[gi], pool, idx[out], e, al, beta, a))
        y = (parts[0] if group == 1 else np.concatenate(parts, axis=1)) * act_scale(a)
        if bias is not None:
            y = y + bias
        return fold(y, a, lead).astype(x.dtype)

    @staticmethod
    def _quant(node: Node, x, wq, wscale, bias=None) -> np.ndarray:
        return REGISTRY[QUANT_OP].impl(node, x, wq, wscale, bias)


@dataclass(frozen=True)
class LayerReport:
    """One layer of a simulated program, in execution order."""

    name: str
    op: str
    cycles: int  # its last finish minus the finish of everything before it
    bottleneck: str  # the unit kind whose busiest unit was busy longest in this layer
    utilisation: float  # that unit's busy cycles / the layer's cycles
    unit_busy: dict[str, int]  # per unit kind, its busiest unit's cycles in this layer
    energy_pj: dict[str, float]  # per component


@dataclass
class SimResult:
    """Outputs and the cost of producing them. Energy totals are the sums of the layers'."""

    outputs: dict[str, np.ndarray]
    cycles: int
    clock_mhz: float
    layers: list[LayerReport]
    unit_busy: dict[str, int]
    utilisation: dict[str, float]
    energy_pj: float
    energy_breakdown: dict[str, float]
    area_mm2: float  # the configured chip
    area_breakdown: dict[str, float]
    area_used_mm2: float  # the part this program occupies
    area_used_breakdown: dict[str, float]
    instructions: int

    @property
    def latency_s(self) -> float:
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def layer_cycles(self) -> dict[str, int]:
        return {layer.name: layer.cycles for layer in self.layers}

    def to_json(self) -> str:
        data = {
            "cycles": self.cycles,
            "latency_s": self.latency_s,
            "clock_mhz": self.clock_mhz,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "unit_busy": self.unit_busy,
            "utilisation": self.utilisation,
            "energy_pj": self.energy_pj,
            "energy_breakdown": self.energy_breakdown,
            "area_mm2": self.area_mm2,
            "area_breakdown": self.area_breakdown,
            "area_used_mm2": self.area_used_mm2,
            "area_used_breakdown": self.area_used_breakdown,
            "instructions": self.instructions,
            "outputs": {
                k: {"shape": list(v.shape), "mean": float(np.mean(v)), "std": float(np.std(v))}
                for k, v in self.outputs.items()
            },
        }
        return json.dumps(data, indent=1, sort_keys=True)


def _permutation_busy(ins: np.ndarray, target, n_layers: int) -> np.ndarray:
    """Per layer, the busiest array's permutation-unit cycles (conflict-free issue)."""
    out = np.zeros(n_layers, np.int64)
    pool = ins["op"] == OP["MVM_POOL"]
    if pool.any() and target.perm_lanes:
        n = target.num_arrays
        per_route = np.ceil(ins["routes"][pool] / target.perm_lanes).astype(np.int64)
        cells = np.zeros((n_layers, n), np.int64)
        np.add.at(cells, (ins["layer"][pool], ins["ma"][pool]), per_route)
        out = cells.max(axis=1)
    return out


def simulate(
    program: Program, feeds: dict[str, np.ndarray] | None = None, functional: bool = True
) -> SimResult:
    """Execute ``program`` on ``feeds`` (functional=False: timing, energy and area only)."""
    target = program.target
    ins = program.instructions
    outputs = _Machine(program.graph).run(feeds) if functional else {}
    n_layers = len(program.layers)
    state = TimingState.fresh(target, len(ins))
    kinds = unit_kind_index(target)
    # Time the stream layer by layer (a layer's instructions are contiguous) to attribute every
    # unit's busy cycles to layers; the result is the same as timing it in one go.
    bounds = np.flatnonzero(np.diff(ins["layer"])) + 1 if len(ins) else np.zeros(0, np.int64)
    starts = np.concatenate([[0], bounds]).astype(np.int64) if len(ins) else bounds
    stops = np.concatenate([bounds, [len(ins)]]).astype(np.int64) if len(ins) else bounds
    per_layer_busy = np.zeros((n_layers, len(UNIT_KINDS)), np.int64)
    layer_cycles_arr = np.zeros(n_layers, np.int64)
    cols = as_columns(ins, target)
    for first, last in zip(starts.tolist(), stops.tolist()):
        before_busy, before_horizon = state.busy.copy(), state.horizon
        state.run(cols, target, first, last)
        li = int(ins["layer"][first])
        per_layer_busy[li] = busiest_per_kind(state.busy - before_busy, kinds)
        layer_cycles_arr[li] += state.horizon - before_horizon
    total = int(state.horizon)
    perm = _permutation_busy(ins, target, n_layers)
    columns = [*UNIT_KINDS, "permutation"]
    per_layer = np.concatenate([per_layer_busy, perm[:, None]], axis=1)
    unit_busy = dict(zip(UNIT_KINDS, busiest_per_kind(state.busy, kinds).tolist()))
    if perm.any():
        pool = ins["op"] == OP["MVM_POOL"]
        per_ma = np.ceil(ins["routes"][pool] / target.perm_lanes)
        unit_busy["permutation"] = int(np.bincount(ins["ma"][pool], weights=per_ma).max())
    components, energy = energy_by_layer(ins, target, state.l2_bytes, layer_cycles_arr)
    layers: list[LayerReport] = []
    for li, entry in enumerate(program.layers):
        if not (ins["layer"] == li).any():
            continue
        cycles = int(layer_cycles_arr[li])
        busy = {c: int(b) for c, b in zip(columns, per_layer[li]) if b}
        bottleneck = max(busy, key=busy.get) if busy else "vector"
        layers.append(
            LayerReport(
                name=entry["node"],
                op=entry["op"],
                cycles=cycles,
                bottleneck=bottleneck,
                utilisation=busy.get(bottleneck, 0) / cycles if cycles else 0.0,
                unit_busy=busy,
                energy_pj=dict(zip(components, energy[li].tolist())),
            )
        )
    meta = program.graph.meta
    chip = chip_area(target)
    used = used_area(target, meta.get("weight_bytes_placed", 0), meta.get("arrays_used", 0))
    breakdown = dict(zip(components, energy.sum(axis=0).tolist()))
    return SimResult(
        outputs=outputs,
        cycles=total,
        clock_mhz=float(target.clock_mhz),
        layers=layers,
        unit_busy=unit_busy,
        utilisation={k: (v / total if total else 0.0) for k, v in unit_busy.items()},
        energy_pj=float(energy.sum()),
        energy_breakdown=breakdown,
        area_mm2=float(sum(chip.values())),
        area_breakdown=chip,
        area_used_mm2=float(sum(used.values())),
        area_used_breakdown=used,
        instructions=int(len(ins)),
    )
