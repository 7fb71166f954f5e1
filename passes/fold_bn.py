"""fold-bn: fold inference BatchNormalization into the Conv or Gemm that feeds it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.cim_ops import cim_kind
from cimc.ir import Graph, Node
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


def _foldable(graph: Graph, bn: Node) -> Node | None:
    """The Conv/Gemm feeding ``bn`` when folding is legal: it has constant weights (output
    channels first), only the BN reads it, and names the graph exposes stay intact."""
    producer = graph.producer(bn.inputs[0])
    if producer is None or producer.op not in ("Conv", "Gemm") or not cim_kind(producer, graph):
        return None
    if producer.op == "Gemm" and not producer.attrs.get("transB", 0):
        return None
    if len(graph.consumers(bn.inputs[0])) != 1 or bn.outputs[0] in graph.outputs:
        return None
    if not all(graph.values[i].is_constant for i in bn.inputs[1:5]):
        return None
    return producer


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold BatchNormalization into the preceding Conv/Gemm (so the arrays hold final weights)."""

    name = "fold-bn"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = 0
        for bn in graph.nodes():
            if bn.op != "BatchNormalization":
                continue
            layer = _foldable(graph, bn)
            if layer is None:
                continue
            scale, shift, mean, var = (
                graph.values[i].data.astype(np.float64) for i in bn.inputs[1:5]
            )
            inv = scale / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
            weight = graph.values[layer.inputs[1]]
            n_out = weight.shape[0]
            w = weight.data.astype(np.float64) * inv.reshape(
                (n_out,) + (1,) * (len(weight.shape) - 1)
            )
            b = np.zeros(n_out)
            if len(layer.inputs) > 2 and layer.inputs[2]:
                b = np.broadcast_to(graph.values[layer.inputs[2]].data, (n_out,)).astype(np.float64)
            b = (b - mean) * inv + shift
            w_name = graph.add_constant(
                graph.unique_name(f"{layer.name}.weight_bn"), w.astype(weight.dtype)
            )
            b_name = graph.add_constant(
                graph.unique_name(f"{layer.name}.bias_bn"), b.astype(weight.dtype)
            )
            if layer.op == "Gemm":
                layer.attrs["beta"] = 1.0
            graph.set_inputs(layer, [layer.inputs[0], w_name.name, b_name.name])
            graph.remove_node(bn.name)
            graph.replace_all_uses(bn.outputs[0], layer.outputs[0])
            folded += 1
        graph.prune_unused()
        return PassResult(changed=folded > 0, summary=f"{folded} BatchNorms folded")
