"""Seeded fuzzing of everything a user hands cimc: ONNX bytes, ONNX structure, feeds, compile
options and re-checksummed .cimx programs.

Cases run in worker subprocesses (many per worker, to keep the rate high) under an address-space
limit (RLIMIT_AS) and a per-case timeout; a worker that dies or hangs is replaced and its other
cases are run again in a fresh one, so one crash costs one result. Every case ends in one of
``OUTCOMES``; the goal is that only ``ok`` and ``cimc_error`` occur.

    python benchmarks/fuzz.py --cases 20000 --seed 1 --workers 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

OUTCOMES = ("ok", "cimc_error", "uncaught", "crash", "timeout", "oom", "altered")
BAD = ("uncaught", "crash", "timeout", "oom", "altered")
KINDS = ("onnx_bytes", "onnx_struct", "feeds", "options", "cimx_bytes", "cimx_fields")
BASE_MODEL = Path(__file__).resolve().parents[1] / "cimc" / "data" / "digits_cimpool.onnx"
AS_LIMIT = 3 * 2**30  # the worker's address space: bigger than cimc's own limit below
CIMC_LIMIT = "512M"  # CIMC_MEMORY_LIMIT in the workers: cimc must refuse before the OS does


# ---- the cases (run inside a worker) -----------------------------------------------------------
class Base:
    """What every case mutates: the model's bytes and proto, its program, its feeds."""

    def __init__(self, program_path: str, tiny_path: str):
        import onnx

        import cimc

        self.onnx_bytes = BASE_MODEL.read_bytes()
        self.proto = onnx.load_from_string(self.onnx_bytes)
        self.tiny = tiny_path
        self.cimx = Path(program_path).read_bytes()
        self.program = cimc.load_program(program_path)
        g = self.program.graph
        self.feeds = {
            i: np.random.default_rng(0).standard_normal(g.values[i].shape).astype(np.float32)
            for i in g.inputs
        }


def _flip(data: bytes, rng: np.random.Generator, start: int = 0) -> bytes:
    """Overwrite, delete or duplicate a few bytes at or after ``start``."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 8))):
        at = int(rng.integers(start, len(b)))
        how = rng.integers(3)
        if how == 0:
            b[at] = int(rng.integers(256))
        elif how == 1:
            del b[at : at + int(rng.integers(1, 16))]
        else:
            b[at:at] = b[at : at + int(rng.integers(1, 16))]
    return bytes(b)


def _rechecksum(payload: bytes) -> bytes:
    import hashlib

    from cimc.program import _HEADER, FORMAT_VERSION, MAGIC

    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()) + (
        payload
    )


_EVIL_INTS = (0, -1, -7, 1, 2, 3, 2**31 - 1, 2**40, 100000, 65536)
_EVIL_FLOATS = ("nan", "inf", "-inf", "0", "-1", "1e300", "1/0", "1/3", "x")


def _structured_model(base: Base, rng: np.random.Generator, tmp: Path) -> str:
    """The digits model with one attribute, dim, initializer or op broken the ONNX-legal way."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(base.proto)
    nodes = m.graph.node
    node = nodes[int(rng.integers(len(nodes)))]
    how = int(rng.integers(6))
    if how == 0 and node.attribute:
        a = node.attribute[int(rng.integers(len(node.attribute)))]
        if a.ints:
            a.ints[int(rng.integers(len(a.ints)))] = int(rng.choice(_EVIL_INTS))
        else:
            a.i = int(rng.choice(_EVIL_INTS))
    elif how == 1:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[int(rng.integers(len(dims)))].dim_value = int(rng.choice(_EVIL_INTS))
    elif how == 2 and m.graph.initializer:
        t = m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
        t.raw_data = t.raw_data[: int(rng.integers(len(t.raw_data) + 1))]
    elif how == 3:
        node.op_type = str(rng.choice(["Cast", "Range", "ConstantOfShape", "Foo", "Conv", "Add"]))
    elif how == 4:
        node.input.append(str(rng.choice(["", node.output[0], "missing"])))
    else:
        node.attribute.append(helper.make_attribute(str(rng.choice(["axis", "to", "group"])), 99))
    path = tmp / "struct.onnx"
    path.write_bytes(m.SerializeToString())
    return str(path)


def _evil_feed(base: Base, rng: np.random.Generator) -> dict[str, Any]:
    feeds = {k: v.copy() for k, v in base.feeds.items()}
    name = next(iter(feeds))
    x = feeds[name]
    how = int(rng.integers(7))
    if how == 0:
        x.reshape(-1)[rng.integers(x.size, size=int(rng.integers(1, 5)))] = np.nan
    elif how == 1:
        x.reshape(-1)[rng.integers(x.size, size=3)] = rng.choice([np.inf, -np.inf, 1e38])
    elif how == 2:
        feeds[name] = x.reshape(-1)[:-1]
    elif how == 3:
        feeds[name] = x.astype(rng.choice(["float64", "float16", "int64", "bool"]))
    elif how == 4:
        feeds[name] = np.array(1.0, np.float32)
    elif how == 5:
        feeds = {**feeds, "unknown": x}
    else:
        feeds[name] = x * np.float32(rng.choice([0.0, 1e-30, 1e30, -1e30]))
    return feeds


def _evil_options(base: Base, rng: np.random.Generator) -> dict[str, Any]:
    how = int(rng.integers(5))
    if how == 0:
        opt = str(rng.choice(["keep", "group", "chunk"]))
        return {"pipeline": f"error-prune{{{opt}={rng.choice(_EVIL_FLOATS)}}}"}
    if how == 1:
        opt = str(rng.choice(["pool", "vector", "others"]))
        return {"pipeline": f"weight-pool{{{opt}={rng.choice(_EVIL_INTS)}}}"}
    if how == 2:
        key = str(rng.choice(["L1_bw", "clock_mhz", "rows", "MA_num_child", "e_route_pj", "no"]))
        return {"overrides": {key: str(rng.choice(_EVIL_FLOATS + ("64", "1", "-0")))}}
    if how == 3:
        return {"calibration": int(rng.choice([0, -1, 10**9, 10**6]))}
    return {"input_shapes": {"x": tuple(int(rng.choice(_EVIL_INTS)) for _ in range(4))}}


def _check_program(program, feeds) -> str:
    """'ok' when the simulator gives exactly what ``interpret`` gives on the program's graph."""
    import cimc

    sim = cimc.simulate(program, feeds).outputs
    ref = cimc.interpret(program.graph, feeds)
    same = sim.keys() == ref.keys() and all(
        sim[k].dtype == ref[k].dtype and np.array_equal(sim[k], ref[k], equal_nan=True) for k in ref
    )
    return "ok" if same else "altered"


def _cimx_fields(base: Base, rng: np.random.Generator) -> bytes:
    """The base program with instruction fields or CiM blobs set to edge values, re-serialised
    (graph digest updated): past the checksum, only load-time validation stands in the way."""
    import hashlib

    from cimc.program import to_bytes

    p = base.program
    ins = p.instructions.copy()
    i = int(rng.integers(len(ins)))
    field = str(rng.choice(ins.dtype.names))
    info = np.iinfo(ins.dtype[field])
    ins[field][i] = rng.choice([info.min, info.max, -1, -2, 0, 1, len(ins), 255, 10**6])
    graph = p.graph
    if rng.random() < 0.3:
        graph = p.graph.copy()
        blobs = [v for v in graph.values.values() if v.data is not None and v.data.size]
        v = blobs[int(rng.integers(len(blobs)))]
        data = v.data.copy()
        value = rng.choice([-1, 0, 2, 127, 10**6])
        if data.dtype.kind in "iu":
            value = np.clip(value, np.iinfo(data.dtype).min, np.iinfo(data.dtype).max)
        data.reshape(-1)[int(rng.integers(data.size))] = value
        v.data = data
    manifest = dict(p.manifest)
    manifest["graph_sha256"] = hashlib.sha256(graph.to_text().encode()).hexdigest()
    return to_bytes(type(p)(ins, p.layers, graph, manifest))


def run_case(base: Base, case: dict[str, Any], tmp: Path) -> str:
    """One case's outcome: 'ok', 'cimc_error', 'altered', or 'uncaught:<Type>'."""
    import cimc

    kind = case["kind"]
    if kind == "selftest":  # the harness's own check: a crash, a hang, an allocation too big
        {"abort": os.abort, "hang": lambda: time.sleep(3600), "alloc": lambda: None}[case["do"]]()
    rng = np.random.default_rng([case["seed"], KINDS.index(kind) if kind in KINDS else 99])
    try:
        if kind == "selftest":
            np.ones(2**40)
        if kind == "onnx_bytes":
            path = tmp / "bytes.onnx"
            path.write_bytes(_flip(base.onnx_bytes, rng))
            cimc.import_onnx(path)
        elif kind == "onnx_struct":
            cimc.import_onnx(_structured_model(base, rng, tmp))
        elif kind == "feeds":
            return _check_program(base.program, _evil_feed(base, rng))
        elif kind == "options":
            cimc.compile(base.tiny, **({"calibration": 1} | _evil_options(base, rng)))
        else:
            data = (
                _rechecksum(_flip(base.cimx[56:], rng))
                if kind == "cimx_bytes"
                else _cimx_fields(base, rng)
            )
            path = tmp / "p.cimx"
            path.write_bytes(data)
            return _check_program(cimc.load_program(path), base.feeds)
    except cimc.CimcError:
        return "cimc_error"
    except MemoryError:
        return "oom"
    except Exception as exc:  # what the fuzzer is here to find
        return f"uncaught:{type(exc).__name__}:{str(exc)[:120]}"
    return "ok"


def worker(program_path: str, tiny_path: str) -> None:
    """Read cases (JSON lines) on stdin; write one JSON result line per case, flushed."""
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    import warnings

    warnings.simplefilter("ignore")
    base = Base(program_path, tiny_path)
    print(json.dumps({"ready": True}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for line in sys.stdin:
            case = json.loads(line)
            outcome = run_case(base, case, Path(tmp))
            print(json.dumps({"id": case["id"], "outcome": outcome}), flush=True)


# ---- the driver --------------------------------------------------------------------------------
def make_cases(n: int, seed: int, weights: dict[str, float] | None = None) -> list[dict]:
    """``n`` seeded cases; option cases (a whole compile each) are the rarest."""
    weights = weights or {"onnx_bytes": 4, "onnx_struct": 4, "feeds": 3, "options": 0.3}
    weights = {k: weights.get(k, 3) for k in KINDS}
    rng = np.random.default_rng(seed)
    p = np.array(list(weights.values()), float)
    kinds = rng.choice(KINDS, size=n, p=p / p.sum())
    return [
        {"id": i, "kind": str(k), "seed": int(rng.integers(2**31))} for i, k in enumerate(kinds)
    ]


def prepare(tmp: Path) -> tuple[str, str]:
    """The program every cimx/feeds case starts from and the tiny model option cases compile."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import cimc

    program = tmp / "base.cimx"
    cimc.compile(BASE_MODEL, input_shapes={"input": (1, 1, 32, 32)}, calibration=2).save(program)
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((10, 16 * 36)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Flatten", ["r"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [w1, w2],
    )
    tiny = tmp / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tiny)
    return str(program), str(tiny)


class Worker:
    """A worker process, the cases sent to it, and when its current case started."""

    def __init__(self, program: str, tiny: str):
        env = {**os.environ, "CIMC_MEMORY_LIMIT": CIMC_LIMIT, "OMP_NUM_THREADS": "1"}
        env["OPENBLAS_NUM_THREADS"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", program, tiny],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        self.partial = b""
        self.pending: collections.deque = collections.deque()
        self.ready = False
        self.since = time.monotonic()

    def send(self, cases: list[dict]) -> None:
        self.pending.extend(cases)
        for c in cases:
            self.proc.stdin.write(json.dumps(c) + "\n")
        self.proc.stdin.flush()

    def read_lines(self) -> list[str]:
        """The complete lines that have arrived (call when select says the pipe is readable).
        Raw reads, not readline: a buffered readline can swallow two lines and leave the second
        where select never sees it (a finished last case then looks like a hang)."""
        chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        return [line.decode() for line in lines]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run(
    cases: list[dict], workers: int = 2, timeout: float = 20.0, batch: int = 200
) -> dict[int, str]:
    """Outcome of every case, by id."""
    todo = collections.deque(cases)
    results: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        program, tiny = prepare(Path(tmp))
        pool: list[Worker] = []
        while todo or any(w.pending for w in pool):
            pool = [w for w in pool if w.proc.poll() is None or w.pending]
            while len(pool) < workers and todo:
                w = Worker(program, tiny)
                w.send([todo.popleft() for _ in range(min(batch, len(todo)))])
                pool.append(w)
            ready, _, _ = select.select([w.proc.stdout for w in pool], [], [], 0.5)
            for w in pool:
                if w.proc.stdout in ready:
                    for line in w.read_lines():
                        msg = json.loads(line)
                        w.since = time.monotonic()
                        if "ready" in msg:
                            w.ready = True
                            continue
                        results[msg["id"]] = msg["outcome"]
                        w.pending.popleft()
                        if not w.pending and todo:
                            w.send([todo.popleft() for _ in range(min(batch, len(todo)))])
                        elif not w.pending:
                            w.proc.stdin.close()
                limit = timeout if w.ready else timeout + 60  # startup compiles numba
                dead = w.proc.poll() is not None
                if w.pending and (dead or time.monotonic() - w.since > limit):
                    w.kill()
                    code = w.proc.returncode
                    case = w.pending.popleft()
                    results[case["id"]] = "timeout" if not dead else f"crash:{code}"
                    todo.extendleft(reversed(w.pending))  # re-run the rest elsewhere
                    w.pending.clear()
    return results


def summarise(results: dict[int, str]) -> collections.Counter:
    return collections.Counter(r.split(":")[0] for r in results.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--only", help="comma-separated case ids to run again (same --cases, --seed)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    t0 = time.perf_counter()
    cases = make_cases(args.cases, args.seed)
    if args.only:
        wanted = {int(i) for i in args.only.split(",")}
        cases = [c for c in cases if c["id"] in wanted]
    results = run(cases, args.workers, args.timeout)
    counts = summarise(results)
    by_kind = collections.Counter((c["kind"], results[c["id"]].split(":")[0]) for c in cases)
    print(f"{len(cases)} cases, seed {args.seed}, {time.perf_counter() - t0:.0f} s")
    for outcome in OUTCOMES:
        print(f"  {outcome:<11} {counts.get(outcome, 0):>6}")
    for (kind, outcome), n in sorted(by_kind.items()):
        print(f"    {kind:<12} {outcome:<11} {n:>6}")
    bad = [c for c in cases if results[c["id"]].split(":")[0] in BAD]
    for c in bad[:30]:
        print(f"  BAD case {c['id']} ({c['kind']}): {results[c['id']]}")
    if bad:
        ids = ",".join(str(c["id"]) for c in bad[:30])
        again = f"--cases {args.cases} --seed {args.seed} --only {ids}"
        print(f"  rerun: python benchmarks/fuzz.py {again}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
