"""Reference execution of a Graph in NumPy, one node at a time.

Like torch.fx's ``Interpreter``: ``run_node`` dispatches on the op registry, and subclasses
override it to observe or change what each node does (calibration records activation ranges
this way). Intermediate values are released after their last reader, so big models run in
bounded memory.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import FeedError
from .ir import Graph, Node
from .ops import REGISTRY


class Interpreter:
    """Executes a graph with the registry's reference implementations."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._order = graph.nodes()
        last_use: dict[str, int] = {}
        for step, node in enumerate(self._order):
            for i in node.inputs:
                last_use[i] = step
        keep = set(graph.outputs)
        self._release: list[list[str]] = [[] for _ in self._order]
        for name, step in last_use.items():
            v = graph.values.get(name)
            if name not in keep and v is not None and not v.is_constant:
                self._release[step].append(name)

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
        result = REGISTRY[node.op].impl(node, *args)
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
