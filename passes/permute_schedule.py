"""permute-schedule: order the permutation unit's routes so every cycle is conflict-free and the
number of cycles is minimal.

Hardware model (our reconstruction of CIMPool's two-array macro; METHODS.md section 2). After the
bit-serial pool MVM of input slot g, the S column results sit in a result register file of
``lanes`` read banks (column c in bank ``c % lanes``). For every output channel o of a block of S
consecutive output channels the permutation unit routes column ``idx[o, g]`` to o's accumulator;
accumulators sit in ``banks`` write banks (channel o in bank ``(o - block_start) % banks``).
A route is (column, channel). Per cycle at most ``lanes`` routes issue, no two reading the same
read bank and no two writing the same write bank.

- *Naive* schedule: routes in channel order, issued in order; a cycle takes consecutive routes
  until the next one conflicts, then a new cycle starts (in-order issue stalls).
- *Optimised* schedule: the routes are the edges of a bipartite multigraph read bank x write
  bank; a conflict-free cycle is a matching, so a schedule is a proper edge colouring. By
  Koenig's edge-colouring theorem Delta colours (the largest bank degree) suffice, and no
  schedule can use fewer cycles, since a bank serves one route per cycle. Colours are found
  exactly and deterministically by alternating-path (Kempe chain) recolouring.
  The lane limit never binds separately: there are exactly ``lanes`` read banks, so a matching
  has at most ``min(lanes, banks)`` <= ``lanes`` routes, and ``ceil(routes / lanes)`` <= the
  largest read-bank degree <= Delta. Hence cycles = Delta = max(Delta, ceil(routes / lanes)) for
  ``lanes`` below, equal to or above ``banks``; no colour class is ever split.

Each (slot, block) is one pool MVM of ``act_bits`` cycles on one macro; the routing of its results
overlaps the next MVM, so routing costs extra time only beyond ``act_bits`` cycles.

Blocks are cut inside each conv group (a grouped conv's groups see different inputs, so their
routes come from different MVMs); for ordinary layers that is blocks of S consecutive channels.
S is the node's pool size (the rows of its pool constant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cimc.cim_ops import POOL_OP
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


def _banks(columns: np.ndarray, lanes: int, banks: int) -> tuple[np.ndarray, np.ndarray]:
    """Read bank and write bank of each route (route j goes to channel j of the block)."""
    cols = np.asarray(columns, dtype=np.int64).ravel()
    return cols % lanes, np.arange(len(cols), dtype=np.int64) % banks


def _check(lanes: int, banks: int) -> None:
    if lanes < 1 or banks < 1:
        raise ValueError(f"lanes={lanes} and banks={banks} must both be >= 1")


def lower_bound(columns: np.ndarray, lanes: int, banks: int) -> int:
    """Fewest cycles any conflict-free schedule needs: the largest read- or write-bank degree
    (which is also >= ceil(routes / lanes))."""
    _check(lanes, banks)
    read, write = _banks(columns, lanes, banks)
    if not len(read):
        return 0
    return int(max(np.bincount(read).max(), np.bincount(write).max()))


def edge_colouring(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """A proper edge colouring of the bipartite multigraph with edges (left[e], right[e]) using
    exactly Delta = max degree colours (Koenig), deterministic in the edge order.

    Edges are coloured one at a time with the smallest colour ``a`` free at its left end; when
    ``a`` is taken at the right end, the a/b alternating path from the right end (``b`` the
    smallest colour free there) is flipped first. That path enters left vertices only along
    ``a`` edges, so it never reaches the left end (which has no ``a`` edge): bipartiteness.
    """
    left = [int(x) for x in left]
    right = [int(x) for x in right]
    n = len(left)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    delta = max(max(np.bincount(left)), max(np.bincount(right)))
    at_l = [[-1] * delta for _ in range(max(left) + 1)]
    at_r = [[-1] * delta for _ in range(max(right) + 1)]
    colour = [-1] * n
    for e in range(n):
        u, v = left[e], right[e]
        a = at_l[u].index(-1)
        if at_r[v][a] != -1:
            b = at_r[v].index(-1)
            path, x, on_right, c = [], v, True, a
            while True:
                f = (at_r if on_right else at_l)[x][c]
                if f == -1:
                    break
                path.append(f)
                x = left[f] if on_right else right[f]
                on_right = not on_right
                c = b if c == a else a
            for f in path:
                at_l[left[f]][colour[f]] = -1
                at_r[right[f]][colour[f]] = -1
            for f in path:
                colour[f] = b if colour[f] == a else a
                at_l[left[f]][colour[f]] = f
                at_r[right[f]][colour[f]] = f
        colour[e] = a
        at_l[u][a] = e
        at_r[v][a] = e
    return np.asarray(colour, dtype=np.int64)


def schedule_routes(columns: np.ndarray, lanes: int, banks: int) -> tuple[np.ndarray, int]:
    """Minimal conflict-free schedule of one block's routes.

    ``columns[j]`` is the pool column routed to channel j of the block. Returns
    ``(order, cycles)``: ``order[cycle, lane]`` is the channel offset lane ``lane`` routes in that
    cycle, or -1 when the lane idles. Lane l serves read bank l (the column of ``order[t, l]`` is
    congruent to l mod ``lanes``), so each cycle reads distinct banks; write banks are distinct
    by construction. ``cycles`` equals :func:`lower_bound`, so it is optimal.
    """
    _check(lanes, banks)
    read, write = _banks(columns, lanes, banks)
    dtype = np.int16 if len(read) <= 2**15 else np.int32
    colour = edge_colouring(read, write)
    cycles = int(colour.max()) + 1 if len(colour) else 0
    order = np.full((cycles, lanes), -1, dtype=dtype)
    order[colour, read] = np.arange(len(read), dtype=dtype)
    return order, cycles


def naive_cycles(columns: np.ndarray, lanes: int, banks: int) -> int:
    """Cycles of in-order issue in channel order: a cycle takes consecutive routes until the next
    would reuse a read bank or write bank of this cycle, or the lanes are full."""
    _check(lanes, banks)
    read, write = _banks(columns, lanes, banks)
    cycles, used_r, used_w = 0, set(), set()
    for r, w in zip(read.tolist(), write.tolist()):
        if not cycles or r in used_r or w in used_w or len(used_r) == lanes:
            cycles += 1
            used_r, used_w = set(), set()
        used_r.add(r)
        used_w.add(w)
    return cycles


def block_starts(n_out: int, group: int, block: int) -> list[tuple[int, int]]:
    """(start, stop) of each block: S consecutive channels, cut inside each conv group."""
    og = n_out // group
    return [
        (gr * og + s, gr * og + min(s + block, og))
        for gr in range(group)
        for s in range(0, og, block)
    ]


def layer_schedule(
    idx: np.ndarray, block: int, lanes: int, banks: int, act_bits: int, group: int = 1
) -> dict[str, Any]:
    """The ``schedule`` record of a layer with indices idx[O, G] (see :class:`PermuteSchedule`)."""
    n_out, n_slots = idx.shape
    spans = block_starts(n_out, group, block)
    cycles = np.zeros((n_slots, len(spans)), dtype=np.int32)
    naive = np.zeros_like(cycles)
    orders: dict[tuple[int, int], np.ndarray] = {}
    for gi in range(n_slots):
        for bi, (start, stop) in enumerate(spans):
            cols = idx[start:stop, gi]
            orders[gi, bi], cycles[gi, bi] = schedule_routes(cols, lanes, banks)
            naive[gi, bi] = naive_cycles(cols, lanes, banks)
    dtype = np.int16 if block <= 2**15 else np.int32
    order = np.full((n_slots, len(spans), int(cycles.max(initial=0)), lanes), -1, dtype=dtype)
    for (gi, bi), o in orders.items():
        order[gi, bi, : len(o)] = o
    mvms = n_slots * len(spans)
    stall = int(np.maximum(cycles - act_bits, 0).sum())
    naive_stall = int(np.maximum(naive - act_bits, 0).sum())
    return {
        "lanes": lanes,
        "banks": banks,
        "block": block,
        "cycles": cycles,
        "naive_cycles": naive,
        "total_cycles": int(cycles.sum()),
        "naive_total_cycles": int(naive.sum()),
        "mvm_cycles": act_bits,
        "stall_cycles_per_row": stall,
        "naive_stall_cycles_per_row": naive_stall,
        "stall_fraction": stall / (act_bits * mvms) if mvms else 0.0,
        "naive_stall_fraction": naive_stall / (act_bits * mvms) if mvms else 0.0,
        "order": order,
    }


@register_pass
@dataclass(frozen=True)
class PermuteSchedule(Pass):
    """Schedule each pool layer's permutation routes: minimal conflict-free cycles per input slot
    and S-channel block (exact bipartite edge colouring), next to in-order issue for comparison.

    ``lanes`` / ``banks`` override the target's ``perm_lanes`` / ``acc_banks`` (0 = the target's;
    without a target both must be given and the layers' inputs quantised).
    Writes ``node.meta["schedule"]``:
    ``cycles`` / ``naive_cycles`` (int32 [G, n_blocks]), ``total_cycles`` /
    ``naive_total_cycles`` (per input row), ``mvm_cycles`` (= act_bits, the bit-serial MVM the
    routing overlaps), ``stall_cycles_per_row`` / ``naive_stall_cycles_per_row`` (sum of
    max(0, cycles - act_bits)), ``stall_fraction`` / ``naive_stall_fraction`` (stall over
    act_bits * G * n_blocks), ``order`` (int16 [G, n_blocks, max cycles, lanes]: channel offset
    within the block routed by each lane, lane l reading read bank l; -1 idle), and ``lanes``,
    ``banks``, ``block`` (S)."""

    name = "permute-schedule"
    lanes: int = 0
    banks: int = 0

    def validate(self) -> None:
        self.check_range("lanes", 0, 1024)
        self.check_range("banks", 0, 1024)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        layers = [n for n in graph.nodes() if n.op == POOL_OP]
        needs_target = not (self.lanes and self.banks) or any(
            not n.attrs.get("act_bits") for n in layers
        )
        target = ctx.require_target(self.name) if needs_target else ctx.target
        lanes = self.lanes or int(target.perm_lanes)
        banks = self.banks or int(target.acc_banks)
        for node in layers:
            block = int(graph.values[node.inputs[1]].shape[0])
            idx = graph.values[node.inputs[2]].data
            act_bits = int(node.attrs.get("act_bits") or target.act_bits)
            group = int(node.attrs.get("group", 1))
            node.meta["schedule"] = layer_schedule(idx, block, lanes, banks, act_bits, group)
        return PassResult(changed=bool(layers), summary=f"{len(layers)} layers scheduled")
