"""Running a pipeline: instruments, verify-after-each, and errors that say where.

Instruments observe every pass (as in TVM's PassContext): :class:`Timing` records wall time,
:class:`DumpIR` writes numbered ``NNN_pass-name.txt`` text dumps, :class:`VerifyEach` checks
the IR invariants after each pass. ``run_passes`` works on a copy, so the caller's graph is
never changed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic
from .errors import CimcError, FeedError, PassError
from .ir import Graph
from .passes_base import Pass, PassContext, PassResult, Pipeline, parse_pipeline
from .sample_files import read_samples


class Instrument:
    """Hooks called around every pass; override what you need."""

    def before(self, index: int, pass_: Pass, graph: Graph) -> None: ...

    def after(
        self, index: int, pass_: Pass, graph: Graph, seconds: float, result: PassResult
    ) -> None: ...


@dataclass
class Timing(Instrument):
    """Wall time of each pass, in pipeline order, and whether it changed the graph."""

    records: list[tuple[str, float, bool]] = field(default_factory=list)

    def after(
        self, index: int, pass_: Pass, graph: Graph, seconds: float, result: PassResult
    ) -> None:
        self.records.append((str(pass_), seconds, result.changed))

    def report(self) -> str:
        total = sum(s for _, s, _ in self.records) or 1e-12
        lines = [
            f"{i:>3} {name:<48} {s * 1e3:>9.1f} ms {100 * s / total:5.1f}%"
            f"{'' if changed else '  (unchanged)'}"
            for i, (name, s, changed) in enumerate(self.records)
        ]
        return "\n".join(lines)


@dataclass
class DumpIR(Instrument):
    """Write the IR text after each pass to ``directory/NNN_name.txt`` (000 = the input)."""

    directory: str | os.PathLike

    def before(self, index: int, pass_: Pass, graph: Graph) -> None:
        if index == 0:
            self._write(0, "input", graph)

    def after(
        self, index: int, pass_: Pass, graph: Graph, seconds: float, result: PassResult
    ) -> None:
        self._write(index + 1, pass_.name, graph)

    def _write(self, number: int, name: str, graph: Graph) -> None:
        path = Path(self.directory) / f"{number:03d}_{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, graph.to_text())


class VerifyEach(Instrument):
    """Check the IR invariants after every pass."""

    def after(
        self, index: int, pass_: Pass, graph: Graph, seconds: float, result: PassResult
    ) -> None:
        graph.verify()


def load_calibration(
    calibration: Any, graph: Graph, what: str = "calibration file"
) -> list[dict[str, np.ndarray]] | None:
    """Feeds for calibration: a list of feed dicts, or an .npz whose arrays are named after the
    graph inputs with samples along the first axis (other arrays, such as labels, are ignored).
    ``what`` names the file in messages."""
    if calibration is None or isinstance(calibration, list):
        return calibration
    path = Path(calibration)
    stored = read_samples(path, graph, what)
    arrays = {i: stored[i] for i in graph.inputs}
    feeds = []
    batch = {i: graph.values[i].shape[0] if graph.values[i].shape else 1 for i in graph.inputs}
    n = min(len(a) // batch[i] for i, a in arrays.items())
    if n == 0:
        raise FeedError(
            f"{what} {path} holds fewer samples than one batch of the model "
            f"({batch}); compile with a smaller batch or give more samples"
        )
    for k in range(n):
        feeds.append({i: a[k * batch[i] : (k + 1) * batch[i]] for i, a in arrays.items()})
    return feeds


def run_pipeline(
    graph: Graph,
    pipeline: str | Pipeline,
    ctx: PassContext,
    instruments: list[Instrument] | tuple[Instrument, ...] = (),
) -> list[PassResult]:
    """Run passes in place on ``graph`` and return what each did, in order; a failing pass
    names its position and what ran before."""
    pipe = parse_pipeline(pipeline)
    done: list[str] = []
    results: list[PassResult] = []
    for index, pass_ in enumerate(pipe):
        for inst in instruments:
            inst.before(index, pass_, graph)
        start = time.perf_counter()
        try:
            result = pass_.run(graph, ctx)
            if not isinstance(result, PassResult):
                raise PassError(
                    f"run() returned {type(result).__name__}, not a cimc.PassResult; end it "
                    "with `return PassResult(changed=...)`"
                )
            seconds = time.perf_counter() - start
            for inst in instruments:
                inst.after(index, pass_, graph, seconds, result)
        except CimcError as exc:
            raise PassError(
                f"pass #{index} {pass_} failed: {exc} "
                f"(passes already run: {', '.join(done) or 'none'})"
            ) from exc
        except Exception as exc:
            exc.add_note(
                f"in pass #{index} {pass_}; passes already run: {', '.join(done) or 'none'}"
            )
            raise
        done.append(str(pass_))
        results.append(result)
    graph.meta.setdefault("pipeline", [])
    graph.meta["pipeline"] = list(graph.meta["pipeline"]) + done
    return results


def run_passes(
    graph: Graph,
    pipeline: str | Pipeline,
    *,
    calibration: Any = None,
    target: Any = None,
    instruments: list[Instrument] | tuple[Instrument, ...] = (),
) -> Graph:
    """Return a new graph with ``pipeline`` applied; ``graph`` itself is left unchanged.

    ``calibration`` is a list of feed dicts or the path of an .npz (see ``load_calibration``).
    """
    work = graph.copy()
    ctx = PassContext(calibration=load_calibration(calibration, graph), target=target)
    run_pipeline(work, pipeline, ctx, instruments)
    return work
