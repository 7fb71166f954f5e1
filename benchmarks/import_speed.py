"""Import + interpret wall time of ResNet-50 at 224, beside onnxruntime on the same machine.

    python benchmarks/import_speed.py [--model resnet50] [--size 224] [--repeat 3]
    python benchmarks/import_speed.py --model light_vgg19     # an opset-9 model of 575 MB

Prints cimc's import time and reference-interpreter time next to onnxruntime's session
creation and inference time, and the ratios. Best of --repeat runs for each. Models: the zoo
(cimc.models.zoo, exported at opset 17) or light_<name>, one of the onnx package's light models with
seeded weights as tests/helpers.py makes them (old opsets: import converts them to 17).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import cimc
from cimc.models import export_onnx


def best_of(repeat: int, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def write_model(model: str, size: int, folder: Path) -> Path:
    """The model as an .onnx file in ``folder``: a zoo export or a seeded light model."""
    if not model.startswith("light_"):
        return export_onnx(model, folder / f"{model}.onnx", image_size=size)
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers import light_path, with_seeded_weights

    path = folder / f"{model}.onnx"
    source = onnx.load(str(light_path(model.removeprefix("light_"))))
    onnx.save(with_seeded_weights(source, seed=1), str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = write_model(args.model, args.size, Path(tmp))
        t_import, graph = best_of(args.repeat, lambda: cimc.import_onnx(path))
        name = graph.inputs[0]
        value = graph.values[name]
        feeds = {name: np.random.default_rng(0).standard_normal(value.shape).astype(value.dtype)}
        t_interp, out = best_of(args.repeat, lambda: cimc.interpret(graph, feeds))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        t_session, sess = best_of(
            args.repeat,
            lambda: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]),
        )
        t_infer, ref = best_of(args.repeat, lambda: sess.run(None, feeds))

    got = out[graph.outputs[0]]
    err = float(np.max(np.abs(got - ref[0])) / np.max(np.abs(ref[0])))
    total_cimc, total_ort = t_import + t_interp, t_session + t_infer
    shape = "x".join(map(str, value.shape))
    print(f"model {args.model}, input {name} {shape}, best of {args.repeat}")
    rows = [
        ("import / session creation", t_import, t_session),
        ("interpret / inference", t_interp, t_infer),
        ("total", total_cimc, total_ort),
    ]
    print(f"{'step':<28}{'cimc s':>10}{'onnxruntime s':>16}{'ratio':>9}")
    for label, ours, theirs in rows:
        print(f"{label:<28}{ours:>10.3f}{theirs:>16.3f}{ours / theirs:>9.1f}")
    print(f"max|diff| / max|ref| = {err:.2e}")


if __name__ == "__main__":
    main()
