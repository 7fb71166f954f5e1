"""Cycle-level timing of an instruction stream (Numba).

Units: the DRAM channel, one L2 link per L1 decoder, one L1 link per memory array (MA), each
MA's compute and its write port, and the vector unit. Instructions are taken in program order;
each starts when its dependencies have finished and every unit it needs is free, occupies each
unit for its own duration (bytes / bandwidth, or modelled cycles), and finishes when its
slowest unit does, so transfers stream through the hierarchy and overlap with compute on other
units (double buffering and multicast come from the program's dependencies and spans).
SCALE and VEC wait for everything issued before them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cimc.errors import ProgramError
from cimc.program import INSTR_DTYPE, OP, check_instructions

U_DRAM = 0


@njit(cache=True)
def _ceil_div(a, b):
    return -(-a // b)


@njit(cache=True)
def run_timing(
    op,
    ma,
    span,
    stride,
    nbytes,
    work,
    cycles,
    dep0,
    dep1,
    n_l1,
    n_child,
    dram_bw,
    l2_bw,
    l1_bw,
    ma_bw,
    op_load_w,
    op_load_x,
    op_psum,
    op_scale,
    op_vec,
    op_load_a,
    free,
    busy,
    start,
    finish,
    l2_bytes,
    first,
    last,
    horizon,
):
    """Times instructions ``first`` to ``last`` (exclusive), updating ``free`` and ``busy`` (per
    unit) and ``start`` / ``finish`` / ``l2_bytes`` (bytes the L2 links carried, per instruction)
    in place; returns the new horizon (the latest finish). Earlier instructions' ``finish``
    must already be filled in (resuming a stream).
    Unit layout: [dram | L2 x n_l1 | L1 x N | MA compute x N | MA write x N | vector]."""
    n = n_l1 * n_child
    u_l2, u_l1, u_ma, u_wr, u_vec = 1, 1 + n_l1, 1 + n_l1 + n, 1 + n_l1 + 2 * n, 1 + n_l1 + 3 * n
    l2_load = np.zeros(n_l1, np.int64)
    for i in range(first, last):
        t = 0
        if dep0[i] >= 0:
            t = max(t, finish[dep0[i]])
        if dep1[i] >= 0:
            t = max(t, finish[dep1[i]])
        o = op[i]
        write = o == op_load_w or o == op_load_a  # through the MA write port
        if o == op_scale or o == op_vec:
            t = max(t, horizon, free[u_vec])
            d = max(cycles[i], 1)
            start[i] = t
            finish[i] = t + d
            free[u_vec] = t + d
            busy[u_vec] += d
        else:
            l2_load[:] = 0
            for j in range(span[i]):
                m = (ma[i] + j * stride[i]) % n
                l2_load[m // n_child] += 1
            # when may it start: all its units free
            for j in range(span[i]):
                m = (ma[i] + j * stride[i]) % n
                if write or o == op_load_x or o == op_psum:
                    t = max(t, free[u_l1 + m])
                if write:
                    t = max(t, free[u_wr + m])
                if not write and o != op_load_x and o != op_psum:
                    t = max(t, free[u_ma + m])
            if write or o == op_load_x:
                for d_ in range(n_l1):
                    if l2_load[d_] > 0:
                        t = max(t, free[u_l2 + d_])
            if o == op_load_w:
                t = max(t, free[U_DRAM])
            end = t + 1
            if o == op_load_w:
                d = _ceil_div(nbytes[i], dram_bw)
                free[U_DRAM] = t + d
                busy[U_DRAM] += d
                end = max(end, t + d)
            if write or o == op_load_x:
                for d_ in range(n_l1):
                    if l2_load[d_] > 0:
                        b = nbytes[i] * l2_load[d_]
                        if o == op_load_x:
                            b = min(b, work[i])
                        l2_bytes[i] += b
                        d = _ceil_div(b, l2_bw)
                        free[u_l2 + d_] = t + d
                        busy[u_l2 + d_] += d
                        end = max(end, t + d)
            for j in range(span[i]):
                m = (ma[i] + j * stride[i]) % n
                if write or o == op_load_x or o == op_psum:
                    d = _ceil_div(nbytes[i], l1_bw)
                    free[u_l1 + m] = t + d
                    busy[u_l1 + m] += d
                    end = max(end, t + d)
                if write:
                    d = _ceil_div(nbytes[i], ma_bw)
                    free[u_wr + m] = t + d
                    busy[u_wr + m] += d
                    end = max(end, t + d)
                if not write and o != op_load_x and o != op_psum:
                    d = max(cycles[i], 1)
                    free[u_ma + m] = t + d
                    busy[u_ma + m] += d
                    end = max(end, t + d)
            start[i] = t
            finish[i] = end
        horizon = max(horizon, finish[i])
    return horizon


def unit_count(target) -> int:
    n = target.num_arrays
    return 1 + target.L1_num_child + 3 * n + 1


def time_program(instructions: np.ndarray, target) -> TimingState:
    """Start and finish cycle of every instruction, busy cycles of every unit, L2 link bytes."""
    state = TimingState.fresh(target, len(instructions))
    state.run(as_columns(instructions, target), target, 0)
    return state


class TimingState:
    """The timing kernel's state after a prefix of a stream, so more instructions can be timed
    from there (``tile`` times each candidate mapping of a layer after the layers before it)."""

    def __init__(self, free, busy, start, finish, l2_bytes, horizon: int):
        self.free, self.busy, self.start, self.finish = free, busy, start, finish
        self.l2_bytes, self.horizon = l2_bytes, horizon

    @classmethod
    def fresh(cls, target, count: int) -> TimingState:
        units = unit_count(target)
        zeros = np.zeros(count, np.int64)
        return cls(
            np.zeros(units, np.int64),
            np.zeros(units, np.int64),
            zeros,
            zeros.copy(),
            zeros.copy(),
            0,
        )

    def extended(self, count: int) -> TimingState:
        """A copy with room for ``count`` more instructions."""
        pad = np.zeros(count, np.int64)
        return TimingState(
            self.free.copy(),
            self.busy.copy(),
            np.concatenate([self.start, pad]),
            np.concatenate([self.finish, pad]),
            np.concatenate([self.l2_bytes, pad]),
            self.horizon,
        )

    def run(self, cols: np.ndarray, target, first: int, last: int | None = None) -> None:
        """Time instructions ``first:last`` of ``cols`` (:func:`as_columns` of the whole
        stream so far)."""
        self.horizon = _run(cols, target, self, first, cols.shape[1] if last is None else last)


FIELDS = {name: i for i, name in enumerate(INSTR_DTYPE.names)}


def as_columns(ins: np.ndarray, target) -> np.ndarray:
    """An instruction table as int64 columns [field, instruction] (what the kernel reads),
    after checking every field is within what the kernel can index (it does no checks)."""
    check_instructions(ins, target.num_arrays, None)
    if len(ins) == 0:
        return np.zeros((len(FIELDS), 0), np.int64)
    return np.stack([ins[name].astype(np.int64) for name in INSTR_DTYPE.names])


def as_instructions(cols: np.ndarray) -> np.ndarray:
    """The inverse of :func:`as_columns`."""
    out = np.zeros(cols.shape[1], INSTR_DTYPE)
    for name, i in FIELDS.items():
        out[name] = cols[i]
    return out


def _run(cols: np.ndarray, target, state: TimingState, first: int, last: int) -> int:
    if len(state.finish) < last or len(state.free) != unit_count(target):
        raise ProgramError(f"timing state too small for instructions [{first}, {last})")
    f = FIELDS
    return run_timing(
        cols[f["op"]],
        cols[f["ma"]],
        cols[f["span"]],
        np.maximum(cols[f["stride"]], 1),
        cols[f["bytes"]],
        cols[f["work"]],
        cols[f["cycles"]],
        cols[f["dep0"]],
        cols[f["dep1"]],
        int(target.L1_num_child),
        int(target.MA_num_child),
        max(1, int(target.DRAM_bw)),
        max(1, int(target.L2_bw)),
        max(1, int(target.L1_bw)),
        max(1, int(target.MA_bw)),
        OP["LOAD_W"],
        OP["LOAD_X"],
        OP["PSUM"],
        OP["SCALE"],
        OP["VEC"],
        OP["LOAD_A"],
        state.free,
        state.busy,
        state.start,
        state.finish,
        state.l2_bytes,
        first,
        last,
        state.horizon,
    )


UNIT_KINDS = ("dram", "l2_link", "l1_link", "array", "array_write", "vector")


def unit_kind_index(target) -> np.ndarray:
    """Index into UNIT_KINDS of every unit, in the kernel's unit order."""
    n, n_l1 = target.num_arrays, target.L1_num_child
    counts = (1, n_l1, n, n, n, 1)
    return np.repeat(np.arange(len(UNIT_KINDS)), counts)


def busiest_per_kind(busy: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """For each unit kind, the busy cycles of its busiest unit."""
    out = np.zeros(len(UNIT_KINDS), np.int64)
    np.maximum.at(out, kinds, busy)
    return out


def unit_names(target) -> list[str]:
    n = target.num_arrays
    return (
        ["dram"]
        + [f"l2_link{i}" for i in range(target.L1_num_child)]
        + [f"l1_link{i}" for i in range(n)]
        + [f"array{i}" for i in range(n)]
        + [f"array_write{i}" for i in range(n)]
        + ["vector"]
    )
