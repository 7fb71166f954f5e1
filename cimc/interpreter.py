"""Reference execution of a Graph in NumPy, one node at a time.

Like torch.fx's ``Interpreter``: ``run_node`` dispatches on the op registry, and subclasses
override it to observe or change what each node does (calibration records activation ranges
this way). Intermediate values are released after their last reader, so big models run in
bounded memory, and that memory (the peak live set) is known before running and checked against
the memory limit (:mod:`cimc.limits`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import FeedError
from .ir import Graph, Node
from .limits import check_bytes
from .ops import call_op


def _release_schedule(graph: Graph, order: list[Node]) -> list[list[str]]:
    """For each step, the non-constant values whose last reader it is (graph outputs stay)."""
    last_use: dict[str, int] = {}
    for step, node in enumerate(order):
        for i in node.inputs:
            last_use[i] = step
    keep = set(graph.outputs)
    release: list[list[str]] = [[] for _ in order]
    for name, step in last_use.items():
        v = graph.values.get(name)
        if name not in keep and v is not None and not v.is_constant:
            release[step].append(name)
    return release


def peak_live_bytes(graph: Graph) -> int:
    """The most memory the interpreter's intermediate values hold at once (constants, which
    the graph holds anyway, are not counted)."""
    order = graph.nodes()
    live = peak = sum(graph.values[i].nbytes for i in graph.inputs)
    for node, released in zip(order, _release_schedule(graph, order)):
        live += sum(graph.values[o].nbytes for o in node.outputs if o)
        peak = max(peak, live)
        live -= sum(graph.values[r].nbytes for r in released)
    return peak


class Interpreter:
    """Executes a graph with the registry's reference implementations."""

    def __init__(self, graph: Graph, memory_limit_bytes: int | None = None):
        check_bytes(
            peak_live_bytes(graph), f"interpreting graph {graph.name!r}", memory_limit_bytes
        )
        self.graph = graph
        self._order = graph.nodes()
        self._release = _release_schedule(graph, self._order)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = self.check_feeds(feeds)
        for step, node in enumerate(self._order):
            args = [None if not i else self._fetch(env, i) for i in node.inputs]
            results = self.run_node(node, args)
            for name, data in zip(node.outputs, results):
                if name:
                    env[name] = data
            for name in self._release[step]:
                env.pop(name, None)
        return {o: self._fetch(env, o) for o in self.graph.outputs}

    def run_node(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray]:
        result = call_op(node, args)
        if isinstance(result, (tuple, list)):
            return [np.asarray(r) for r in result]
        return [np.asarray(result)]

    def _fetch(self, env: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name in env:
            return env[name]
        return self.graph.values[name].data

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate names, shapes and dtypes of the inputs; cast within the same kind."""
        g = self.graph
        unknown = sorted(set(feeds) - set(g.inputs))
        missing = [i for i in g.inputs if i not in feeds]
        if unknown or missing:
            raise FeedError(
                f"feeds do not match graph {g.name!r}: missing {missing}, unknown {unknown}; "
                f"the inputs are {[(i, g.values[i].shape) for i in g.inputs]}"
            )
        env: dict[str, np.ndarray] = {}
        for name in g.inputs:
            v = g.values[name]
            x = np.asarray(feeds[name])
            if tuple(x.shape) != tuple(v.shape):
                raise FeedError(
                    f"input {name!r} has shape {tuple(x.shape)}, the graph expects {v.shape}; "
                    "shapes are fixed at import: import or compile again with input_shapes "
                    "(CLI: --input-shape) to change it"
                )
            if x.dtype != v.dtype:
                if np.dtype(x.dtype).kind != np.dtype(v.dtype).kind:
                    raise FeedError(
                        f"input {name!r} has dtype {x.dtype}, the graph expects "
                        f"{np.dtype(v.dtype)}; convert it (x.astype({np.dtype(v.dtype).name}))"
                    )
                x = x.astype(v.dtype)
            env[name] = x
        return env


def interpret(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``feeds`` with the reference implementations; keyed by output name."""
    return Interpreter(graph).run(feeds)
