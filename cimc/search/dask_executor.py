"""Search evaluations on a Dask cluster (the ``dist`` extra): a ``concurrent.futures.Executor``
whose tasks run on the workers of a ``distributed`` scheduler, an existing one or a
``LocalCluster`` started here.

The task function goes to each worker once, as a WorkerPlugin that the scheduler also installs
on every worker that joins or restarts later; an :class:`Evaluator` inside it travels with the
bytes of its model and data files, so workers need no shared filesystem, and each task carries
only its config. The compressed-graph cache of a worker is its memory, plus the study's cache
folder when the worker sees that folder (same machine or a shared filesystem).

Faults: a worker that dies mid-task has the task rescheduled by the scheduler, at most
``distributed.scheduler.allowed-failures`` times (Dask's setting, 3 by default); after that, a
task that raised, or one that ran past ``timeout`` seconds, is given up on with
:class:`EvaluationFailed`, and the loop records a failed row. A Python thread stuck in a Numba
kernel cannot be interrupted, so a timed-out task is cancelled and its worker process killed and
restarted by its nanny, which frees the worker's slot for the rest of the search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import pickle
import signal
import tempfile
import threading
import time
from concurrent.futures import CancelledError, Executor, Future
from pathlib import Path
from typing import Any

import distributed
from distributed import WorkerPlugin

from ..atomic import write_bytes_atomic
from ..errors import CimcError
from .evaluate import Evaluator
from .executor import EvaluationFailed

_STARTED = "cimc-task-started"  # event topic: a worker began a task (starts its timeout clock)
_CONNECT_S = 10


def _client_within(address: str, seconds: float) -> distributed.Client:
    """A Client of the scheduler at ``address``, or TimeoutError after ``seconds``: Client's own
    timeout bounds the TCP connect only, so a server that accepts and then never speaks Dask's
    protocol would hang the search (the attempt is left in a daemon thread). A server that
    answers garbage can make Dask read a huge frame length: a MemoryError, raised here too."""
    box: dict[str, Any] = {}

    def attempt() -> None:
        try:
            box["client"] = distributed.Client(address, timeout=_CONNECT_S)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=attempt, name="cimc-dask-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no Dask handshake within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["client"]


class ClusterError(CimcError):
    """The Dask scheduler cannot be reached."""


class DaskExecutor(Executor):
    """Runs ``submit``-ted calls on a Dask cluster; see the module docstring for the faults."""

    def __init__(
        self,
        client: distributed.Client,
        timeout: float | None = None,
        cluster: distributed.LocalCluster | None = None,
    ):
        self.client, self.timeout, self.cluster = client, timeout, cluster
        self._plugins: dict[int, tuple[Any, str]] = {}  # id(fn) -> (fn, plugin name)
        self._pending: dict[str, tuple[distributed.Future, Future]] = {}  # by task key
        self._running: dict[str, tuple[float, str]] = {}  # key -> (monotonic start, worker)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        client.subscribe_topic(_STARTED, self._started)
        if timeout is not None:
            threading.Thread(target=self._watch, name="cimc-eval-timeout", daemon=True).start()

    @classmethod
    def connect(cls, address: str, timeout: float | None = None) -> DaskExecutor:
        """On the scheduler at ``address`` (``tcp://HOST:PORT``)."""
        try:
            client = _client_within(address, 2 * _CONNECT_S)
        except (OSError, TimeoutError, ValueError, MemoryError) as exc:
            reason = (str(exc) or type(exc).__name__).splitlines()[0]
            raise ClusterError(
                f"cannot reach the Dask scheduler at {address} ({reason}); start one with "
                "'dask scheduler' and give its tcp://HOST:PORT"
            ) from None
        return cls(client, timeout)

    @classmethod
    def local(cls, workers: int, timeout: float | None = None) -> DaskExecutor:
        """On a new cluster of ``workers`` single-threaded worker processes on 127.0.0.1 (each
        under a nanny, which restarts it if it dies)."""
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # any free port: studies can run side by side
        )
        return cls(distributed.Client(cluster), timeout, cluster)

    def describe(self) -> str:
        """One line: where the cluster is, its workers and its dashboard."""
        info = self.client.scheduler_info()
        workers = len(info.get("workers", {}))
        board = (
            self.client.dashboard_link
            if importlib.util.find_spec("bokeh")
            else "none (pip install bokeh for one)"
        )
        return f"Dask scheduler {info['address']}: {workers} workers, dashboard {board}"

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        name = self._install(fn)
        timed = self.timeout is not None
        task = self.client.submit(_run_installed, name, args, kwargs, timed, pure=False)
        out: Future = Future()
        out.set_running_or_notify_cancel()
        with self._lock:
            self._pending[task.key] = (task, out)
        task.add_done_callback(self._finished)
        return out

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed.set()
        if cancel_futures:
            with self._lock:
                tasks = [task for task, _ in self._pending.values()]
            self.client.cancel(tasks)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def _install(self, fn: Any) -> str:
        """The name of the worker plugin holding ``fn``, registered on first use."""
        with self._lock:
            if id(fn) in self._plugins:
                return self._plugins[id(fn)][1]
        blob = _dumps(fn)
        name = f"cimc-task-{hashlib.sha256(blob).hexdigest()[:16]}"
        if name not in {n for _, n in self._plugins.values()}:
            self.client.register_plugin(_Installed(blob), name=name)
        with self._lock:
            self._plugins[id(fn)] = (fn, name)  # fn is kept, so its id is not reused
        return name

    def _started(self, event: tuple[float, dict[str, str]]) -> None:
        msg = event[1]
        with self._lock:
            if msg["key"] in self._pending:  # a retry after a worker died restarts the clock
                self._running[msg["key"]] = (time.monotonic(), msg["worker"])

    def _finished(self, task: distributed.Future) -> None:
        with self._lock:
            _, out = self._pending.pop(task.key, (None, None))
            start = self._running.pop(task.key, (time.monotonic(), ""))[0]
        if out is None:  # timed out already
            return
        if task.status == "finished":
            out.set_result(task.result())
        elif task.status == "error":
            out.set_exception(EvaluationFailed(_reason(task.exception()), time.monotonic() - start))
        else:
            out.set_exception(CancelledError(f"task {task.key} was cancelled"))

    def _watch(self) -> None:
        """Every 0.2 s: give up on tasks running past the timeout and restart their workers."""
        assert self.timeout is not None
        while not self._closed.wait(0.2):
            now = time.monotonic()
            late = []
            with self._lock:
                for key, (start, worker) in list(self._running.items()):
                    if now - start > self.timeout:
                        del self._running[key]
                        late.append((*self._pending.pop(key), worker, now - start))
            for task, out, worker, seconds in late:
                task.cancel()  # first, or the restart would reschedule it elsewhere
                restarted = self._restart(worker)
                out.set_exception(
                    EvaluationFailed(
                        f"timed out: still running after {self.timeout:g} s (--eval-timeout) "
                        f"on {worker}, which was {restarted}",
                        seconds,
                    )
                )

    def _restart(self, worker: str) -> str:
        """SIGKILL the worker process through its nanny, which starts a fresh one. (A graceful
        ``Client.restart_workers`` waits for the stuck thread, then races the nanny's own
        restart and can leave the nanny closed.)"""
        try:
            self.client.run(_kill_worker_process, workers=[worker], nanny=True)
        except Exception as exc:  # a worker without a nanny stays busy until the task returns
            return f"not restarted ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        return "restarted"


def _kill_worker_process(dask_worker: distributed.Nanny) -> None:
    os.kill(dask_worker.pid, signal.SIGKILL)


class _Installed(WorkerPlugin):
    """A pickled task function, unpickled once in each worker process."""

    def __init__(self, blob: bytes):
        self.blob = blob
        self.fn: Any = None

    def setup(self, worker: distributed.Worker) -> None:
        self.fn = pickle.loads(self.blob)


def _run_installed(name: str, args: tuple, kwargs: dict, timed: bool) -> Any:
    """Run the installed function; if ``timed``, first tell the driver the task started. That
    event goes through the worker's client and is acknowledged before the task runs (~10 ms): a
    kernel that then holds the GIL would keep the worker's batched event stream from sending it."""
    worker = distributed.get_worker()
    if timed:
        message = {"key": worker.get_current_task(), "worker": worker.address}
        distributed.get_client().log_event(_STARTED, message)
    return worker.plugins[name].fn(*args, **kwargs)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, distributed.KilledWorker):
        return (
            f"its worker died {exc.allowed_failures + 1} times while evaluating it (last "
            f"{exc.last_worker.address}; bounded by distributed.scheduler.allowed-failures)"
        )
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__} on a worker: {text}"


class _Pickler(pickle.Pickler):
    """Pickles an :class:`Evaluator` with the bytes of its model and data files (every other
    field as it is, so a worker measures what the driver would)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is not Evaluator:
            return NotImplemented
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        model = Path(obj.model).read_bytes() if obj.model else None  # None: a family's subnets
        data = None if obj.data_path is None else Path(obj.data_path).read_bytes()
        if obj.cache_dir is not None:
            fields["cache_dir"] = str(Path(obj.cache_dir).resolve())
        return _worker_evaluator, (model, data, fields)


def _dumps(fn: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(fn)
    return buffer.getvalue()


def _worker_evaluator(model: bytes | None, data: bytes | None, fields: dict) -> Evaluator:
    """The Evaluator on a worker: its files written once per machine under their digest, and the
    study's cache folder if this machine sees it (else the in-memory cache alone)."""
    folder = Path(tempfile.gettempdir()) / "cimc-dask"
    folder.mkdir(exist_ok=True)
    cache = fields["cache_dir"]
    return Evaluator(
        **fields
        | {
            "model": "" if model is None else _stored(folder, model, ".onnx"),
            "data_path": None if data is None else _stored(folder, data, ".npz"),
            "cache_dir": cache if cache is not None and Path(cache).is_dir() else None,
        }
    )


def _stored(folder: Path, content: bytes, suffix: str) -> str:
    path = folder / f"{hashlib.sha256(content).hexdigest()}{suffix}"
    if not path.is_file():
        write_bytes_atomic(path, content)
    return str(path)
