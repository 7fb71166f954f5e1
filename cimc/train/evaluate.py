"""Compile an exported model with its pipeline and score it through the reference interpreter."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from cimc.frontend import import_onnx
from cimc.interpreter import interpret
from cimc.pass_manager import run_passes
from cimc.report.bits import storage_report

from .data import Splits
from .export import Exported
from .finetune import predict


def compiled_logits(graph: Any, x: np.ndarray, batch: int) -> np.ndarray:
    """Run the compiled graph (input batch ``batch``) over x, padding the last chunk."""
    name = graph.inputs[0]
    out = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        res = interpret(graph, {name: chunk})
        y = next(iter(res.values())) if isinstance(res, dict) else res[0]
        out.append(np.asarray(y)[:n])
    return np.concatenate(out)


def compile_export(exported: Exported, x_calib: np.ndarray, batch: int = 128) -> Any:
    """The compiled graph: ONNX imported at batch ``batch``, the scheme's pipeline run with the
    calibration images (the ones the torch model calibrated on) as feeds."""
    graph = import_onnx(str(exported.onnx), {"input": (batch, *x_calib.shape[1:])})
    feeds = [
        {graph.inputs[0]: x_calib[i : i + batch]} for i in range(0, len(x_calib) - batch + 1, batch)
    ]
    return run_passes(graph, exported.pipeline, calibration=feeds or None)


def compile_and_score(
    exported: Exported,
    splits: Splits,
    model: nn.Module,
    calib: int = 256,
    test_limit: int | None = None,
    batch: int = 128,
) -> dict[str, Any]:
    """Compiled test accuracy, agreement with the torch model, and the storage report."""
    x_calib = splits.x_train[:calib]
    batch = min(batch, len(x_calib))
    graph = compile_export(exported, x_calib, batch)
    report = storage_report(graph)
    x, y = splits.x_test[:test_limit], splits.y_test[:test_limit]
    logits = compiled_logits(graph, x, batch)
    torch_logits = predict(model, x)
    return {
        "compiled_test_acc": float((logits.argmax(1) == y).mean()),
        "compiled_test_n": len(y),
        "compiled_agreement": float((logits.argmax(1) == torch_logits.argmax(1)).mean()),
        "compiled_max_abs_diff": float(np.abs(logits - torch_logits).max()),
        "bits_per_weight": report["bits_per_weight"],
        "bits_per_compressed_weight": report["compressed_bits_per_weight"],
        "compressed_fraction": report["compressed_fraction"],
        "weights": report["weights"],
        "total_bytes": report["total_bytes"],
    }
