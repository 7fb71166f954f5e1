"""Where true evaluations run: any ``concurrent.futures.Executor`` (the seam a distributed
engine plugs into); the default is a local process pool, :func:`cluster_executor` a Dask
cluster. Results come back to the driver, the only process that writes the study."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from ..errors import OptionError

if TYPE_CHECKING:
    from .dask_executor import DaskExecutor


class EvaluationFailed(Exception):
    """An executor gave up on a task (its worker kept dying, it raised, it ran past the
    timeout): :func:`run_all` yields it as that item's result, so the loop records a failed row
    and goes on instead of losing the study."""

    def __init__(self, reason: str, seconds: float = 0.0):
        super().__init__(reason)
        self.seconds = seconds


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def process_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A local pool; "spawn" workers, since forking a process that runs Numba's threads is
    unsafe."""
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers or default_workers(), mp_context=ctx)


def cluster_executor(
    scheduler: str | None = None, local_workers: int = 0, timeout: float | None = None
) -> DaskExecutor:
    """A :class:`~cimc.search.dask_executor.DaskExecutor` on the Dask scheduler at
    ``scheduler`` (``tcp://HOST:PORT``) or on a new local cluster of ``local_workers``
    processes; ``timeout`` bounds each evaluation in seconds. Needs the ``dist`` extra."""
    try:
        from . import dask_executor
    except ImportError:
        raise OptionError(
            "--scheduler / --dask-local need Dask's distributed scheduler, which is not "
            "installed; install it with: pip install 'cimc[dist]'"
        ) from None
    if timeout is not None and timeout <= 0:
        raise OptionError(f"--eval-timeout {timeout:g} must be a positive number of seconds")
    if scheduler:
        return dask_executor.DaskExecutor.connect(scheduler, timeout)
    if local_workers < 1:
        raise OptionError(f"--dask-local {local_workers} must be at least 1 worker process")
    return dask_executor.DaskExecutor.local(local_workers, timeout)


def run_all(
    executor: Executor | None, fn: Callable[[Any], Any], items: list[Any]
) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in completion order; without an executor, in this process in order.
    A task the executor gave up on yields its :class:`EvaluationFailed` in place of a result."""
    if executor is None:
        for item in items:
            yield item, fn(item)
        return
    futures = {executor.submit(fn, item): item for item in items}
    for future in as_completed(futures):
        try:
            result = future.result()
        except EvaluationFailed as exc:
            result = exc
        yield futures[future], result
