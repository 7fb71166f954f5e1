"""Where true evaluations run: any ``concurrent.futures.Executor`` (the seam a distributed
engine plugs into); the default is a local process pool. Results come back to the driver, the
only process that writes the study."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from typing import Any


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def process_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A local pool; "spawn" workers, since forking a process that runs Numba's threads is
    unsafe."""
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers or default_workers(), mp_context=ctx)


def run_all(
    executor: Executor | None, fn: Callable[[Any], Any], items: list[Any]
) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in completion order; without an executor, in this process in order."""
    if executor is None:
        for item in items:
            yield item, fn(item)
        return
    futures = {executor.submit(fn, item): item for item in items}
    for future in as_completed(futures):
        yield futures[future], future.result()
