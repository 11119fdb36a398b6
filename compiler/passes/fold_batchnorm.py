"""fold-batchnorm: y = BN(conv(x)) becomes one conv with

    w'[o] = w[o] * g[o],   b'[o] = (b[o] - mean[o]) * g[o] + beta[o],   g = gamma / sqrt(var + eps)

computed in float64 and rounded once to float32. For a tensor-train conv, w is its last core G4 (the
layer is linear in G4). A batchnorm after a max pool of the conv folds the same way when every g is
positive (then BN(max(a)) = max(BN(a))). A batchnorm that follows anything else, or whose conv feeds
other ops too, cannot be folded and is an error."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import BatchNorm, Conv2d, Graph, Linear, MaxPool, TTConv2d
from . import Pass, register


@register
@dataclass
class FoldBatchNorm(Pass):
    name = "fold-batchnorm"

    def run(self, graph: Graph) -> Graph:
        for bn in [o for o in graph.ops if isinstance(o, BatchNorm)]:
            producer = result = graph.op(bn.inputs[0])
            if isinstance(producer, MaxPool) and len(graph.users(producer.name)) == 1:
                producer = graph.op(producer.inputs[0])
            if not isinstance(producer, (Conv2d, Linear, TTConv2d)) or len(graph.users(producer.name)) != 1:
                bn.fail("does not directly follow a conv or linear layer (used by nothing else) that it could fold into")
            if (producer.fracs if isinstance(producer, TTConv2d) else producer.weight_frac) is not None:
                bn.fail("follows an already quantized layer")
            g = bn.weight.astype(np.float64) / np.sqrt(bn.var.astype(np.float64) + bn.eps)
            if result is not producer and (g <= 0).any():
                bn.fail(f"scales channel {int(np.argmax(g <= 0))} by {g[g <= 0][0]:.3g} after a max pool: a scale that is "
                        "not positive does not commute with the max, so it cannot fold into the conv before the pool")
            attr = "g4" if isinstance(producer, TTConv2d) else "weight"
            weight = getattr(producer, attr)
            w = weight.astype(np.float64) * g.reshape((-1,) + (1,) * (weight.ndim - 1))
            b = producer.bias.astype(np.float64) if producer.bias is not None else np.zeros(len(g))
            with np.errstate(over="ignore", invalid="ignore"):  # a value float32 cannot hold: quantize refuses it
                setattr(producer, attr, w.astype(np.float32))
                producer.bias = ((b - bn.mean) * g + bn.bias).astype(np.float32)
            graph.replace_all_uses_with(bn.name, result.name)
            graph.erase(bn)
        return graph.infer_types()
