"""ONNX import: load, check, convert to the canonical opset, bind shapes, fold, build the IR.

After import every value has a static shape, every shape sub-graph (Shape/Gather/Concat/...
chains as exporters emit them) and every constant expression is folded into a constant,
Identity and Dropout are gone, and initializers listed as graph inputs (old exporters do that)
are constants rather than inputs. ``If`` nodes are inlined (``cimc.control_flow``) and LSTM and
GRU nodes unrolled into matrix products and gate arithmetic (``cimc.recurrent``), so the passes
and the backend see only straight-line graphs of registered ops.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message
from onnx import external_data_helper, numpy_helper, shape_inference, version_converter
from onnx.external_data_helper import uses_external_data

from .control_flow import (
    check_selects,
    expand_if,
    fold_constant_selects,
    onnx_node_name,
    subgraph_nodes,
)
from .errors import GraphError, ModelLoadError, NodeError, ShapeError, UnsupportedOpError
from .interpreter import peak_live_bytes
from .ir import Graph, Node, Value
from .limits import check_bytes, memory_limit
from .ops import REGISTRY, call_op
from .recurrent import unroll_recurrent

CANONICAL_OPSET = 17
_ONNX_DOMAINS = ("", "ai.onnx")
_PASS_THROUGH = ("Identity", "Dropout")
_EXPANDED = ("If",)  # rewritten into other ops at import (cimc.control_flow)


def import_onnx(
    src: str | os.PathLike | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    memory_limit_bytes: int | None = None,
) -> Graph:
    """Import an ONNX model (path or ``ModelProto``) as a :class:`cimc.Graph` with static shapes.

    ``input_shapes`` maps graph input names to full shapes and binds their dynamic dimensions
    (named, or a non-positive ``dim_value`` as some exporters write). A tensor, or the reference
    interpreter's peak live set, needing more than ``memory_limit_bytes`` (default
    :func:`cimc.limits.memory_limit`) is refused before anything that size is allocated.
    """
    limit = memory_limit() if memory_limit_bytes is None else memory_limit_bytes
    model, where = _load(src)
    _check_supported(model)
    model, weights = _without_weights(model)
    model = _to_canonical_opset(model, where)
    _bind_input_shapes(model, dict(input_shapes or {}), where)
    _check_generated_sizes(model, where, limit)
    try:
        model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several types here
        raise ShapeError(f"{where}: ONNX shape inference failed: {exc}") from exc
    graph = _build(model, weights, where)
    for v in graph.values.values():
        check_bytes(v.nbytes, f"{where}: tensor {v.name!r} {v.type_str()}", limit)
    expand_if(graph, lambda n: _attrs(n, n.name or n.op_type), _value_from_info)
    fold_constants(graph, where, limit)
    fold_constant_selects(graph)
    check_selects(graph)
    if unroll_recurrent(graph):
        fold_constants(graph, where, limit)
    remove_pass_through(graph)
    graph.prune_unused()
    _verify_import(graph, where)
    check_bytes(peak_live_bytes(graph), f"{where}: interpreting the model", limit)
    return graph


# ---- loading ------------------------------------------------------------------------------------
def _load(src: Any) -> tuple[onnx.ModelProto, str]:
    if isinstance(src, onnx.ModelProto):
        where = f"model {src.graph.name or '<in memory>'}"
        for t in _external_tensors(src):
            raise ModelLoadError(
                f"{where}: tensor {t.name!r} keeps its data in an external file; import the "
                "model from its path so the data is read from the model's folder"
            )
        _run_checker(src, where)
        return src, where
    path = Path(src)
    where = str(path)
    if not path.is_file():
        raise ModelLoadError(f"{where}: no such file; give the path of an .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"{where}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "the file may be truncated or of another format; re-export it"
        ) from exc
    if not model.graph.node or not model.opset_import:
        raise ModelLoadError(
            f"{where}: not an ONNX model (no graph or opset was found in the file); "
            "check the path, or re-export the model"
        )
    _load_external_data(model, path, where)
    _run_checker(path, where)
    return model, where


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in external_data_helper._get_all_tensors(model) if uses_external_data(t)]


def _load_external_data(model: onnx.ModelProto, path: Path, where: str) -> None:
    """Read external tensor data, only from existing files inside the model's folder."""
    tensors = _external_tensors(model)
    if not tensors:
        return
    folder = path.parent.resolve()
    for t in tensors:
        location = external_data_helper.ExternalDataInfo(t).location
        file = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not file.is_relative_to(folder):
            raise ModelLoadError(
                f"{where}: tensor {t.name!r} names external data {location!r} outside the "
                f"model's folder {folder}; keep the data file next to the model"
            )
        if not file.is_file():
            raise ModelLoadError(
                f"{where}: tensor {t.name!r}: external data file {location!r} is missing from "
                f"{folder}; copy it next to the model"
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{where}: external data cannot be read ({type(exc).__name__}: {exc}); "
            "re-save the model with its data"
        ) from None


def _run_checker(model: onnx.ModelProto | Path, where: str) -> None:
    try:
        onnx.checker.check_model(str(model) if isinstance(model, Path) else model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(
            f"{where}: fails the ONNX checker: {first}; fix or re-export the model"
        ) from exc


def _check_supported(model: onnx.ModelProto) -> None:
    """Report every unsupported op type (with node names), all at once."""
    unsupported: dict[str, list[str]] = {}
    detail: dict[str, str] = {}
    for i, n in enumerate(subgraph_nodes(model.graph)):
        name = onnx_node_name(n, i)
        op = n.op_type if n.domain in _ONNX_DOMAINS else f"{n.domain}.{n.op_type}"
        if op in _EXPANDED:
            continue
        opdef = REGISTRY.get(op)
        if opdef is None:
            unsupported.setdefault(op, []).append(name)
            continue
        if opdef.check:
            problem = opdef.check(Node(name, op, n.input, n.output, _attrs(n, name)))
            if problem:
                unsupported.setdefault(op, []).append(name)
                detail[op] = problem
    if unsupported:
        raise UnsupportedOpError(unsupported, detail)


_WEIGHT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)


def _without_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of ``model`` whose large float initializers keep name, type and dims but no data,
    and those initializers by name.

    ONNX's version converter and shape inference serialise the whole model; on VGG-19 (575 MB)
    that was 16 of 18 seconds of import. Neither needs weight values (data propagation reads
    only small integer shape tensors), and the copy also keeps the caller's model unmodified."""
    light = onnx.ModelProto()
    _copy_fields(light, model, skip="graph")
    _copy_fields(light.graph, model.graph, skip="initializer")
    weights = {}
    for t in model.graph.initializer:
        if t.data_type in _WEIGHT_TYPES and math.prod(t.dims) >= 1024:
            stub = light.graph.initializer.add(name=t.name, data_type=t.data_type)
            stub.dims.extend(t.dims)
            weights[t.name] = t
        else:
            light.graph.initializer.append(t)
    return light, weights


def _check_generated_sizes(model: onnx.ModelProto, where: str, limit: int) -> None:
    """ConstantOfShape and Range with constant operands: their output size, checked before ONNX
    shape inference's data propagation materialises it (a [100000, 100000] fill is 37 GiB)."""
    consts = {t.name: t for t in model.graph.initializer if t.HasField("raw_data") or t.dims}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    for node in model.graph.node:
        ins = [consts.get(i) for i in node.input]
        if not ins or any(t is None for t in ins):
            continue
        try:
            vals = [numpy_helper.to_array(t) for t in ins]
        except Exception:  # undecodable constants are reported by the import that follows
            continue
        if node.op_type == "ConstantOfShape" and vals[0].dtype.kind in "iu":
            count = math.prod(int(d) for d in vals[0].reshape(-1))
            fill = [a.t for a in node.attribute if a.name == "value"]
            itemsize = (
                onnx.helper.tensor_dtype_to_np_dtype(fill[0].data_type).itemsize if fill else 4
            )  # the default fill is a float32 zero
        elif node.op_type == "Range" and len(vals) == 3 and all(v.size == 1 for v in vals):
            start, stop, delta = (float(v.reshape(-1)[0]) for v in vals)
            if delta == 0 or not all(map(math.isfinite, (start, stop, delta))):
                continue  # the Range rules at import name this
            count = max(math.ceil((stop - start) / delta), 0)
            itemsize = vals[0].dtype.itemsize
        else:
            continue
        what = f"{where}: output of node {node.name!r} ({node.op_type})"
        check_bytes(itemsize * count, what, limit)


def _copy_fields(dst: Message, src: Message, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _to_canonical_opset(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Up-convert older models to opset 17. Newer models keep their opset: ONNX's converter
    cannot reliably go down, and the registry accepts both forms of the few ops that changed
    after 17 (axes and split sizes as inputs rather than attributes)."""
    version = next((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), None)
    if version is None or version >= CANONICAL_OPSET:
        return model
    try:
        return version_converter.convert_version(model, CANONICAL_OPSET)
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: cannot convert from opset {version} to opset {CANONICAL_OPSET} ({exc}); "
            f"re-export the model at opset {CANONICAL_OPSET} or newer"
        ) from exc


def _bind_input_shapes(
    model: onnx.ModelProto, shapes: dict[str, Sequence[int]], where: str
) -> None:
    inits = {i.name for i in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in inits]
    names = [i.name for i in real_inputs]
    for name in shapes:
        if name not in names:
            raise ShapeError(
                f"{where}: input_shapes names {name!r}, which is not a model input; "
                f"inputs are {names}"
            )
    for inp in real_inputs:
        dims = inp.type.tensor_type.shape.dim
        given = shapes.get(inp.name)
        if given is not None:
            given = [int(d) for d in given]
            if any(not 1 <= g < 2**63 for g in given):
                raise ShapeError(
                    f"{where}: input_shapes gives {inp.name!r} the shape {tuple(given)}; "
                    "every dimension must be at least 1 (and below 2**63)"
                )
            if len(given) != len(dims):
                raise ShapeError(
                    f"{where}: input {inp.name!r} has rank {len(dims)} but the given shape "
                    f"{tuple(given)} has rank {len(given)}"
                )
            for i, (d, g) in enumerate(zip(dims, given)):
                if _fixed(d) and d.dim_value != g:
                    raise ShapeError(
                        f"{where}: input {inp.name!r} dim {i} is fixed at {d.dim_value}, "
                        f"but {g} was given"
                    )
                d.Clear()
                d.dim_value = g
            continue
        for i, d in enumerate(dims):
            if not _fixed(d):
                sym = f" ({d.dim_param!r})" if d.dim_param else ""
                example = ",".join(str(x.dim_value) if _fixed(x) else "N" for x in dims)
                raise ShapeError(
                    f"{where}: input {inp.name!r} dim {i}{sym} is dynamic; bind it with "
                    f"input_shapes={{{inp.name!r}: (...)}} or --input-shape {inp.name}={example}"
                )


def _fixed(d: onnx.TensorShapeProto.Dimension) -> bool:
    """A fixed dimension; a missing or non-positive ``dim_value`` (exporters write -1 for a
    dynamic batch) is dynamic, bound like a named one."""
    return d.HasField("dim_value") and d.dim_value > 0


# ---- building the IR ---------------------------------------------------------------------------
def _attrs(node: onnx.NodeProto, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        try:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, onnx.TensorProto):
                v = numpy_helper.to_array(v)
            elif isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, list):
                v = [x.decode() if isinstance(x, bytes) else x for x in v]
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            raise NodeError(
                f"node {name!r} ({node.op_type}): attribute {a.name!r} cannot be read "
                f"({type(exc).__name__}: {exc}); strings must be UTF-8 and tensors match their "
                "shape: fix or re-export the model"
            ) from None
        out[a.name] = v
    return out


def _value_from_info(info: onnx.ValueInfoProto) -> Value | None:
    t = info.type.tensor_type
    if not t.HasField("elem_type") or not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if not _fixed(d):
            return None
        dims.append(d.dim_value)
    return Value(info.name, tuple(dims), onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))


def _build(model: onnx.ModelProto, weights: dict[str, onnx.TensorProto], where: str) -> Graph:
    """The IR of ``model``, with the data of initializers it holds as stubs from ``weights``."""
    g = Graph(model.graph.name or Path(where).stem)
    inits = {t.name: _tensor(weights.get(t.name, t), where) for t in model.graph.initializer}
    for name, data in inits.items():
        g.add_constant(name, data)
    for info in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if info.name in inits:
            continue
        v = _value_from_info(info)
        if v is not None:
            g.add_value(v)
    g.inputs = [i.name for i in model.graph.input if i.name not in inits]
    g.outputs = [o.name for o in model.graph.output]
    for i, n in enumerate(model.graph.node):
        name = g.unique_name(onnx_node_name(n, i))
        g.add_node(Node(name, n.op_type, n.input, n.output, _attrs(n, name)))
    return g


def _tensor(t: onnx.TensorProto, where: str) -> np.ndarray:
    """An initializer's data; data of the wrong size for its shape is a ModelLoadError."""
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(
            f"{where}: initializer {t.name!r} (dims {list(t.dims)}) has unreadable data "
            f"({type(exc).__name__}: {exc}); re-export the model"
        ) from None


def _placeholder(v: Value) -> np.ndarray:
    """The constant's data, or a zero-filled stand-in that costs no memory."""
    return v.data if v.is_constant else np.broadcast_to(np.zeros((), dtype=v.dtype), v.shape)


def _outputs_of(node: Node, result: Any) -> list[np.ndarray]:
    if isinstance(result, (tuple, list)):
        return [np.asarray(r) for r in result]
    return [np.asarray(result)]


def fold_constants(graph: Graph, where: str = "", limit: int | None = None) -> int:
    """Evaluate every node whose inputs are all known, and give every value a static shape.

    Shape and Size of a static-shape value are known even when the value is not. Nodes whose
    output shape ONNX inference left open are evaluated on placeholder inputs to learn it.
    Each node is first checked against its op's ONNX rules, and its outputs of known shape
    against the memory limit. Returns the number of nodes folded away.
    """
    where = where or f"graph {graph.name!r}"
    limit = memory_limit() if limit is None else limit
    folded = 0
    for node in graph.nodes():
        present = [i for i in node.inputs if i]
        _validate(graph, node, where, limit)
        inputs_known = all(i in graph.values and graph.values[i].is_constant for i in present)
        shape_query = node.op in ("Shape", "Size") and node.inputs[0] in graph.values
        if inputs_known or shape_query:
            args = [None if not i else _placeholder(graph.values[i]) for i in node.inputs]
            results = _outputs_of(node, call_op(node, args))
            if any(o in graph.outputs for o in node.outputs):
                _record_shapes(graph, node, results)
                continue
            for out, data in zip(node.outputs, results):
                if out:
                    graph.add_constant(out, data)
            graph.remove_node(node.name)
            folded += 1
            continue
        if any(o and o not in graph.values for o in node.outputs):
            missing = [i for i in present if i not in graph.values]
            if missing:
                raise ShapeError(
                    f"node {node.name!r} ({node.op}): input {missing[0]!r} has no static shape"
                )
            args = [None if not i else _placeholder(graph.values[i]) for i in node.inputs]
            _record_shapes(graph, node, _outputs_of(node, call_op(node, args)))
    return folded


def _validate(graph: Graph, node: Node, where: str, limit: int) -> None:
    """Apply the op's ONNX rules to ``node`` and check its known outputs fit in memory."""
    rule = REGISTRY[node.op].validate
    ins = [graph.values.get(i) if i else None for i in node.inputs]
    known = all(v is not None for i, v in zip(node.inputs, ins) if i)
    problem = rule(node, ins) if rule and known else None
    if not problem and node.op in WEIGHT_OPS:
        problem = _non_finite_weight(ins[1:])
    if problem:
        raise NodeError(
            f"{where}: node {node.name!r} ({node.op}): {problem}; fix the node or re-export "
            "the model"
        )
    for out in node.outputs:
        v = graph.values.get(out) if out else None
        if v is not None:
            check_bytes(v.nbytes, f"{where}: output {out!r} of node {node.name!r}", limit)


WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")
"""Ops whose constant operands become (or fold into) the quantised CiM weights."""


def _non_finite_weight(ins: list[Value | None]) -> str | None:
    """A constant float operand holding NaN or infinity, which no weight grid represents (the
    quantisers would turn it into zeros or NaN outputs without a word)."""
    for v in ins:
        if v is not None and v.is_constant and np.issubdtype(v.data.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(v.data)))
            if bad:
                return f"constant {v.name!r} holds {bad} NaN or infinite values"
    return None


def _record_shapes(graph: Graph, node: Node, results: list[np.ndarray]) -> None:
    for out, data in zip(node.outputs, results):
        if out and out not in graph.values:
            graph.add_value(Value(out, tuple(data.shape), data.dtype))


def remove_pass_through(graph: Graph) -> None:
    """Drop Identity and inference-mode Dropout, keeping the graph's output names."""
    for node in graph.nodes():
        if node.op not in _PASS_THROUGH:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if dst in graph.outputs:
            producer = graph.producer(src)
            renamable = (
                producer is not None and src not in graph.outputs and len(graph.consumers(src)) == 1
            )
            if not renamable:
                continue
            graph.remove_node(node.name)
            graph.set_outputs(producer, [dst if o == src else o for o in producer.outputs])
            continue
        graph.remove_node(node.name)
        graph.replace_all_uses(dst, src)


def _verify_import(graph: Graph, where: str) -> None:
    try:
        graph.verify()
    except GraphError as exc:
        raise ShapeError(f"{where}: imported graph is inconsistent: {exc}") from exc
    for node in graph.nodes():
        for out in node.outputs:
            v = graph.values.get(out) if out else None
            if v is not None and np.dtype(v.dtype).kind == "f" and 0 in v.shape:
                raise NodeError(
                    f"{where}: node {node.name!r} ({node.op}) makes {out!r} of shape {v.shape}, "
                    "with no elements (a window larger than its input, a scale of 0 or less, "
                    "pads that remove every element, ...); fix the node or re-export the model"
                )
