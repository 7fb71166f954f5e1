"""quantize-act: per-tensor activation quantisation of every CiM layer input, from calibration."""

from __future__ import annotations

from dataclasses import dataclass

from cimc.targets.agreement import from_target

from cimc.calibration import input_ranges
from cimc.cim_ops import CIM_OPS, act_range, adc_attrs
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class QuantizeActivations(Pass):
    """Quantise each CiM layer's input to ``bits`` per tensor: unsigned when calibration never
    saw a negative value (after ReLU), symmetric signed otherwise. ``method=max`` uses the
    largest |x| seen; ``percentile`` clips at that percentile of |x|, trading rare outliers for
    resolution. Inputs then enter the arrays bit-serially as integers. ``bits`` 0 takes the
    target's ``act_bits`` (8 without a target); the target's ADC goes into the layer attrs."""

    name = "quantize-act"
    bits: int = 0
    method: str = "max"
    percentile: float = 99.99

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"bits": (4, 6, 8), "method": ("max", "percentile")}

    def validate(self) -> None:
        if self.bits:
            self.check_range("bits", 2, 16)
        self.check_choice("method", ("max", "percentile"))
        self.check_range("percentile", 50.0, 100.0)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        bits = from_target(self.name, "bits", self.bits, ctx.target, "act_bits", 8)
        layers = [n.name for n in graph.nodes() if n.op in CIM_OPS]
        pct = self.percentile if self.method == "percentile" else None
        ranges = input_ranges(graph, ctx.calibration, layers, pct)
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
        return PassResult(changed=bool(layers), summary=f"{len(layers)} layer inputs quantised")
