"""One source of truth for the macro's geometry and precision: pass options and compiled layers
against the target's parameters.

A pass option tied to a hardware parameter (zpack/weight-pool ``vector`` = ``rows``, weight-pool
``pool`` = ``pool_cols``, error-prune ``keep`` = ``error_rows / rows`` and ``group`` a multiple of
``error_cols``, quantize-act ``bits`` = ``act_bits``, quantize-weights ``bits`` = an int macro's
``weight_bits``) defaults to 0, meaning "the target's"; set to another value it is refused, with
both values and how to make them agree. Without a target the pass keeps its own default.

A graph compressed earlier (``cimc.compile`` from a ``Graph``) is checked layer by layer before it
is mapped, so a program never computes with numbers its target could not produce.
"""

from __future__ import annotations

from typing import Any

from cimc.cim_ops import CIM_OPS, POOL_OP
from cimc.errors import CimcError, OptionError
from cimc.ir import Graph

from .macros import macro_kind

ADC_GEOMETRY = {"array_rows": "rows", "error_rows": "error_rows"}  # ADC layer attr -> parameter
EDGE_BITS = 8  # bits of the first, last and keep_sensitive layers (quantize-weights, weight-pool)


def from_target(pass_name: str, option: str, value: Any, target, param: str, fallback: Any) -> Any:
    """The value of a pass option tied to target parameter ``param``: the target's when the
    option is 0 (``fallback`` without a target); a set value must equal the target's."""
    if target is None:
        return value or fallback
    want = getattr(target, param)
    if value and value != want:
        raise OptionError(
            f"{pass_name}{{{option}={value}}} but target {target.name} has {param}={want}; "
            f"--set {param}={value} or drop the option"
        )
    return want


def int_weight_bits(target) -> int | None:
    """The weight precision a target fixes: an int macro's ``weight_bits`` (its arrays hold only
    N-bit layers); None for macros that also run pool layers (their N-bit layers are a policy)."""
    if target is None or POOL_OP in macro_kind(target).layer_ops:
        return None
    return int(target.weight_bits)


def error_keep(target) -> float:
    """The error-term fraction the target's error array holds: ``error_rows / rows``."""
    return target.error_rows / target.rows


def check_layers_agree(graph: Graph, target) -> None:
    """Raise CimcError for the first CiM layer whose numbers contradict the target's macro."""
    layers = [n for n in graph.nodes() if n.op in CIM_OPS]
    int_bits = int_weight_bits(target)
    for i, node in enumerate(layers):
        comp = node.meta.get("compression", {})
        a = node.attrs
        found = [("act_bits", a["act_bits"]), ("adc_bits", a.get("adc_bits", 0))]
        found += [(p, a[k]) for k, p in ADC_GEOMETRY.items() if k in a]
        if node.op == POOL_OP:
            found += [("rows", a["vector"]), ("pool_cols", graph.values[node.inputs[1]].shape[0])]
            if node.inputs[3]:
                found.append(("error_rows", round(comp.get("error_keep", 1.0) * a["vector"])))
        elif int_bits is not None:
            bits = comp.get("bits", EDGE_BITS)
            kept = i in (0, len(layers) - 1) or comp.get("sensitive", False)
            found.append(("weight_bits", int_bits if kept and bits == EDGE_BITS else bits))
        for param, value in found:
            if value != getattr(target, param):
                raise CimcError(
                    f"layer {node.name!r} was compiled with {param}={value} but target "
                    f"{target.name} has {param}={getattr(target, param)}; recompile the layer "
                    f"for this target or --set {param}={value}"
                )
        group = comp.get("error_group")
        if node.op == POOL_OP and group and group % target.error_cols:
            raise CimcError(
                f"layer {node.name!r} shares error masks over {group} output channels but target "
                f"{target.name} has error_cols={target.error_cols} (the channels of one error-"
                f"array MVM share one mask); recompile with error-prune{{group=...}} a multiple "
                f"of {target.error_cols} or --set error_cols={group}"
            )
