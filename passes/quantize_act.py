"""quantize-act: per-tensor activation quantisation of every CiM layer input, from calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cimc.targets.agreement import from_target

from cimc.calibration import METHODS, input_ranges, output_bias_error
from cimc.cim_ops import CIM_OPS, act_range, adc_attrs
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class QuantizeActivations(Pass):
    """Quantise each CiM layer's input to ``bits`` per tensor: unsigned when calibration never
    saw a negative value (after ReLU), symmetric signed otherwise. ``method=percentile`` (the
    default: measured closest to fp32 on the devkit's real models, README) clips at that
    percentile of |x| (the largest |x| when there are too few values); ``max`` uses the largest
    |x| seen, ``mse`` where rounding plus clipping error is least, ``entropy`` where the KL
    divergence of the quantised histogram is least: each trades rare outliers for resolution
    (cimc.calibration). Inputs
    then enter the arrays bit-serially as integers. ``bits`` 0 takes the target's ``act_bits``
    (8 without a target); the target's ADC goes into the layer attrs.

    ``bias_correction`` then measures each layer's mean output error per channel on the
    calibration data (weights and input quantised against both in float) and subtracts it
    from the layer's bias: free on the hardware, which adds the bias anyway."""

    name = "quantize-act"
    bits: int = 0
    method: str = "percentile"
    percentile: float = 99.99
    bias_correction: bool = False

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"bits": (4, 6, 8), "method": METHODS, "bias_correction": (False, True)}

    def validate(self) -> None:
        if self.bits:
            self.check_range("bits", 2, 16)
        self.check_choice("method", METHODS)
        self.check_range("percentile", 50.0, 100.0)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        bits = from_target(self.name, "bits", self.bits, ctx.target, "act_bits", 8)
        layers = [n.name for n in graph.nodes() if n.op in CIM_OPS]
        ranges = input_ranges(graph, ctx.calibration, layers, self.method, self.percentile, bits)
        for name in layers:
            lo, hi = ranges[name]
            signed = lo < 0
            qmax = act_range(bits, signed)[1]
            amax = max(abs(lo), abs(hi)) if signed else hi
            node = graph.node(name)
            node.attrs.update(
                act_bits=bits,
                act_scale=float(amax / qmax) if amax > 0 else 1.0,
                act_signed=int(signed),
                **adc_attrs(ctx.target),
            )
        if self.bias_correction:
            _correct_biases(graph, output_bias_error(graph, ctx.calibration, layers))
        return PassResult(changed=bool(layers), summary=f"{len(layers)} layer inputs quantised")


def _correct_biases(graph: Graph, errors: dict[str, np.ndarray]) -> None:
    for name, err in errors.items():
        node = graph.node(name)
        old = node.inputs[-1]
        bias = graph.values[old].data if old else 0.0
        new = graph.add_constant(
            graph.unique_name(f"{name}.bias_corrected"), (bias - err).astype(np.float32)
        )
        graph.set_inputs(node, [*node.inputs[:-1], new.name])
    graph.prune_unused()
