"""The one torch -> ONNX exporter, for zoo models and fine-tuned ones alike."""

from __future__ import annotations

import os
import pathlib
import warnings

import torch
from torch import nn

from ..atomic import atomic_path


def export_module(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    dynamic_batch: bool = False,
) -> pathlib.Path:
    """Export a torch module to ONNX (opset 17) at ``path``; return the path.

    Uses the TorchScript exporter with constant folding off so BatchNormalization nodes survive
    (fold-bn downstream needs them, and fine-tuned models keep them). Input ``input``, output
    ``logits``; ``dynamic_batch`` makes dim 0 of both a symbolic ``batch``. Written atomically.
    """
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
            do_constant_folding=False,
            dynamic_axes=dynamic_axes,
        )
    return pathlib.Path(path)
