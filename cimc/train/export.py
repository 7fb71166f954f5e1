"""Export a fine-tuned model: ONNX holding the compressed weights, plus the learned assignment.

The ONNX file is the plain network (Conv/Linear + BatchNorm + ...) whose CiM-layer weights are
the compressed ones (alpha P[idx] + beta err, or the int-N grid), so onnxruntime alone already
gives the fine-tuned model's float-activation outputs. Activation quantisation is left to the
compiler's quantize-act. The assignment file (.npz, format ``cimc-assignment-1``, see
:mod:`cimc.compress.assignment_file`) holds the pool and, keyed by each compressed
layer's ONNX weight initializer, idx, alpha and the error term. Compile with the pipeline that
:meth:`Scheme.pipeline` gives, e.g. ``zpack,weight-pool{assignment=model.npz},quantize-act``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from cimc.compress import write_assignment
from cimc.errors import CimcError
from cimc.models import export_module

from .layers import CimLayer, Scheme, _set_module, cim_layers


@dataclass(frozen=True)
class Exported:
    onnx: Path
    assignment: Path | None
    pipeline: str


def plain_model(model: nn.Module) -> nn.Module:
    """A copy with every CimLayer replaced by its Conv2d/Linear holding the compressed weight."""
    model.eval()
    out = copy.deepcopy(model)
    for name, m in list(cim_layers(out)):
        layer = m.layer
        if m.role != "float":
            with torch.no_grad():
                layer.weight.copy_(m.compressed_weight())
        _set_module(out, name, layer)
    return out.eval()


def _initializer_names(path: Path, expected: dict[str, np.ndarray]) -> dict[str, str]:
    """module name -> the ONNX initializer holding its weight (by name, else by value)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    found = {}
    for module, weight in expected.items():
        name = f"{module}.weight"
        if name not in inits:
            same = [
                n
                for n, t in inits.items()
                if tuple(t.dims) == weight.shape
                and np.array_equal(onnx.numpy_helper.to_array(t), weight)
            ]
            if len(same) != 1:
                raise CimcError(
                    f"export: cannot find the ONNX initializer of layer {module!r}'s weight in "
                    f"{path}; the exporter renamed or merged it"
                )
            name = same[0]
        found[module] = name
    return found


def export_model(
    model: nn.Module,
    onnx_path: str | Path,
    example: torch.Tensor,
    assignment_path: str | Path | None = None,
) -> Exported:
    """Write the ONNX model and, for CIMPool models, the assignment file (default: the ONNX
    path with suffix .npz). Returns the paths and the pipeline that compiles them."""
    onnx_path = Path(onnx_path)
    scheme: Scheme = getattr(model, "cim_scheme", Scheme(kind="fp32", act_bits=0, keep=None))
    plain = plain_model(model)
    export_module(plain, example, onnx_path, dynamic_batch=True)
    pooled = {n: m for n, m in cim_layers(model) if m.role == "pool"}
    if not pooled:
        return Exported(onnx_path, None, scheme.pipeline())
    path = Path(assignment_path) if assignment_path else onnx_path.with_suffix(".npz")
    weights = {n: plain.get_submodule(n).weight.detach().numpy() for n in pooled}
    names = _initializer_names(onnx_path, weights)
    layers = {names[module]: assignment_fields(m) for module, m in pooled.items()}
    pool = next(iter(pooled.values())).pool.numpy()  # one pool, shared by every layer
    write_assignment(path, pool, layers, json.dumps(scheme.to_dict()))
    return Exported(onnx_path, path, scheme.pipeline(str(path)))


def assignment_fields(m: CimLayer) -> dict[str, np.ndarray]:
    """A pooled layer's fields in the assignment file, for its current weights."""
    m.compressed_weight()  # the assignment of the current weights
    st = m.assignment
    fields = {
        "idx": st["idx"].astype(np.int32),
        "alpha": np.asarray(st["alpha"], dtype=np.float64),
    }
    if "err" in st:
        fields.update(
            err=st["err"].astype(np.int8),
            beta=np.asarray(st["beta"], dtype=np.float64),
            keep=np.array(float(st["keep"])),
        )
        if st.get("mask") is not None:
            fields.update(
                mask=st["mask"].astype(bool),
                group=np.array(m.scheme.group),
                chunk=np.array(m.scheme.chunk),
            )
    return fields
