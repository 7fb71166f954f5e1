"""zpack: lay every CiM layer's weights onto array rows along the input-channel (z) axis."""

from __future__ import annotations

from dataclasses import dataclass

from cimc.targets.agreement import from_target

from cimc.cim_ops import CIM_OPS, cim_kind, weight_matrix
from cimc.compress import n_slots
from cimc.ir import Graph
from cimc.passes_base import Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class ZPack(Pass):
    """Record the z-packing of each CiM layer: K = kh*kw*cin in (ky, kx, cin) order, cin fastest,
    cut into G = ceil(K / vector) row vectors, so layers with cin < vector still fill whole
    vectors (CIMPool Fig. 2). Later passes (weight-pool, tile) read ``meta['zpack']``.
    ``vector`` is the arrays' rows: 0 takes the target's ``rows`` (128 without a target)."""

    name = "zpack"
    vector: int = 0

    @classmethod
    def search_space(cls) -> dict[str, tuple]:
        return {"vector": (32, 64, 128)}

    def validate(self) -> None:
        self.check_range("vector", 0, 4096)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        vector = from_target(self.name, "vector", self.vector, ctx.target, "rows", 128)
        packed = 0
        for node in graph.nodes():
            if node.op in CIM_OPS:
                k = node.attrs["k"]
            elif cim_kind(node, graph):
                k = weight_matrix(node, graph).shape[1]
            else:
                continue
            node.meta["zpack"] = {
                "vector": vector,
                "k": int(k),
                "groups": n_slots(int(k), vector),
                "order": "ky,kx,cin",
            }
            packed += 1
        return PassResult(changed=packed > 0, summary=f"{packed} layers packed")
