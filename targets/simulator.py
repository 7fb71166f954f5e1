"""``cimc.simulate``: run a Program: real outputs, cycles, energy and area.

Functional: each CiM layer is computed at its SCALE instruction from the program's blobs the way
the macro does it: integer activations, the pool array's column sums for every vector slot, the
permutation unit's routing of column idx[o, g] into accumulator o (a Numba kernel), the error
array's sums, then alpha, beta, the activation scale and bias in float64 in the order of the
numerics contract. VEC instructions run the op registry's implementation. With an ideal adder
tree this is bit-identical to ``cimc.interpret(program.graph, feeds)``.

Timing: ``targets.timing``. Energy and area: ``targets.energy``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from cimc.cim_ops import POOL_OP, QUANT_OP, act_scale, array_sums, fold, quantize_input, unfold
from cimc.interpreter import Interpreter
from cimc.ir import Node
from cimc.ops import REGISTRY
from cimc.program import OP, Program

from .energy import area_breakdown, energy_breakdown
from .timing import time_program, unit_names


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


def _pool_layer(rows: np.ndarray, pool, idx, err, alpha, beta, act_bits: int) -> np.ndarray:
    """One conv group: array sums, the permutation unit's routing, then the scales (float64)."""
    columns, err_acc = array_sums(rows, pool, idx.shape[1], err, act_bits)
    acc = route_accumulate(columns, idx.astype(np.int64))
    y = alpha * acc.astype(np.float64)
    if err_acc is not None:
        y = y + beta * err_acc.astype(np.int64).astype(np.float64)
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
            parts.append(_pool_layer(rows[gi], pool, idx[out], e, al, beta, a["act_bits"]))
        y = (parts[0] if group == 1 else np.concatenate(parts, axis=1)) * act_scale(a)
        if bias is not None:
            y = y + bias
        return fold(y, a, lead).astype(x.dtype)

    @staticmethod
    def _quant(node: Node, x, wq, wscale, bias=None) -> np.ndarray:
        return REGISTRY[QUANT_OP].impl(node, x, wq, wscale, bias)


@dataclass
class SimResult:
    """Outputs and the cost of producing them."""

    outputs: dict[str, np.ndarray]
    cycles: int
    clock_mhz: float
    layer_cycles: dict[str, int]
    unit_busy: dict[str, int]
    utilisation: dict[str, float]
    energy_pj: float
    energy_breakdown: dict[str, float]
    area_mm2: float
    area_breakdown: dict[str, float]
    instructions: int
    layer_units: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        return self.cycles / (self.clock_mhz * 1e6)

    def to_json(self) -> str:
        data = {
            "cycles": self.cycles,
            "latency_s": self.latency_s,
            "clock_mhz": self.clock_mhz,
            "layer_cycles": self.layer_cycles,
            "layer_units": self.layer_units,
            "unit_busy": self.unit_busy,
            "utilisation": self.utilisation,
            "energy_pj": self.energy_pj,
            "energy_breakdown": self.energy_breakdown,
            "area_mm2": self.area_mm2,
            "area_breakdown": self.area_breakdown,
            "instructions": self.instructions,
            "outputs": {
                k: {"shape": list(v.shape), "mean": float(np.mean(v)), "std": float(np.std(v))}
                for k, v in self.outputs.items()
            },
        }
        return json.dumps(data, indent=1, sort_keys=True)


def _group_busy(busy: np.ndarray, names: list[str]) -> dict[str, int]:
    """Busy cycles per unit kind (the busiest of each replicated kind) plus every unit."""
    out: dict[str, int] = {}
    for name, b in zip(names, busy):
        kind = name.rstrip("0123456789")
        out[kind] = max(out.get(kind, 0), int(b))
    return out


def simulate(
    program: Program, feeds: dict[str, np.ndarray] | None = None, functional: bool = True
) -> SimResult:
    """Execute ``program`` on ``feeds`` (functional=False: timing, energy and area only)."""
    target = program.target
    ins = program.instructions
    outputs = _Machine(program.graph).run(feeds) if functional else {}
    _, finish, busy = time_program(ins, target)
    total = int(finish.max()) if len(finish) else 0
    names = unit_names(target)
    kinds = _group_busy(busy, names)
    pool_mvm = ins["op"] == OP["MVM_POOL"]
    if pool_mvm.any():  # the busiest array's permutation unit, conflict-free issue
        per_ma = np.ceil(ins["routes"][pool_mvm] / target.perm_lanes)
        kinds["permutation"] = int(np.bincount(ins["ma"][pool_mvm], weights=per_ma).max())
    layer_cycles: dict[str, int] = {}
    layer_units: dict[str, dict[str, int]] = {}
    prev = 0
    order = ins["layer"]
    for li, entry in enumerate(program.layers):
        mask = order == li
        if not mask.any():
            continue
        end = int(finish[mask].max())
        layer_cycles[entry["node"]] = end - prev
        prev = max(prev, end)
        sel = ins[mask]
        layer_units[entry["node"]] = {
            op: int(sel["cycles"][sel["op"] == OP[op]].sum())
            for op in ("MVM_POOL", "MVM_INT", "SCALE", "VEC")
            if (sel["op"] == OP[op]).any()
        }
    util = {k: (v / total if total else 0.0) for k, v in kinds.items()}
    energy = energy_breakdown(ins, target)
    meta = program.graph.meta
    area = area_breakdown(target, meta.get("weight_bytes_placed", 0), meta.get("arrays_used", 0))
    return SimResult(
        outputs=outputs,
        cycles=total,
        clock_mhz=float(target.clock_mhz),
        layer_cycles=layer_cycles,
        unit_busy=kinds,
        utilisation=util,
        energy_pj=float(sum(energy.values())),
        energy_breakdown=energy,
        area_mm2=float(sum(area.values())),
        area_breakdown=area,
        instructions=int(len(ins)),
        layer_units=layer_units,
    )
