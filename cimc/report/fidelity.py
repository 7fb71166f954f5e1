"""Output fidelity: how close simulated outputs are to onnxruntime's fp32 ones."""

from __future__ import annotations

import numpy as np


def fidelity(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Cosine similarity of the flattened outputs, their relative L2 error, the fraction of rows
    with the same argmax, and whether the reference is constant (then all say nothing)."""
    a, b = out.astype(np.float64), ref.astype(np.float64)
    cos = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
    rel = float(np.linalg.norm(a - b) / (np.linalg.norm(b) or 1.0))
    top1 = float(
        np.mean(a.reshape(a.shape[0], -1).argmax(1) == b.reshape(b.shape[0], -1).argmax(1))
    )
    return {
        "cosine": cos,
        "rel_error": rel,
        "top1_agreement": top1,
        "reference_constant": bool(np.ptp(b) == 0),
    }


def compare_with_onnx(
    model: str, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """:func:`fidelity` of every simulated output that onnxruntime's fp32 run also produces."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ref = dict(zip(names, sess.run(names, dict(feeds))))
    return {name: fidelity(outputs[name], r) for name, r in ref.items() if name in outputs}
