"""quantize-act: per-tensor activation quantisation of every CiM layer input, from calibration."""

from __future__ import annotations

from dataclasses import dataclass

from cimc.calibration import METHODS, input_ranges
from cimc.cim_ops import CIM_OPS, act_range
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class QuantizeActivations(Pass):
    """Quantise each CiM layer's input to ``bits`` per tensor: unsigned when calibration never
    saw a negative value (after ReLU), symmetric signed otherwise. ``method=max`` uses the
    largest |x| seen; ``percentile`` clips at that percentile of |x|, ``mse`` where rounding
    plus clipping error is least, ``entropy`` where the KL divergence of the quantised
    histogram is least: each trades rare outliers for resolution (cimc.calibration). Inputs
    then enter the arrays bit-serially as integers."""

    name = "quantize-act"
    bits: int = 8
    method: str = "max"
    percentile: float = 99.99

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"bits": (4, 6, 8), "method": METHODS}

    def validate(self) -> None:
        self.check_range("bits", 2, 16)
        self.check_choice("method", METHODS)
        self.check_range("percentile", 50.0, 100.0)

    def run(self, graph: Graph, ctx: PassContext) -> None:
        layers = [n.name for n in graph.nodes() if n.op in CIM_OPS]
        ranges = input_ranges(
            graph, ctx.calibration, layers, self.method, self.percentile, self.bits
        )
        for name in layers:
            lo, hi = ranges[name]
            signed = lo < 0
            qmax = act_range(self.bits, signed)[1]
            amax = max(abs(lo), abs(hi)) if signed else hi
            node = graph.node(name)
            node.attrs.update(
                act_bits=self.bits,
                act_scale=float(amax / qmax) if amax > 0 else 1.0,
                act_signed=int(signed),
            )
