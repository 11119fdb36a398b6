"""fold-global-pool: a global average pool (one value per channel) over an area A that is not a power
of two (6x6 or 12x12 after a 48x48 ResNet), which fixed point cannot divide by, read only by a linear
layer through a flatten: the pool divides by D, the power of two at or above A, and the linear layer
makes up the difference,

    pool'(x)[c] = sum_p x[c, p] / D,    W'[o, c] = W[o, c] * D / A,

exact in real arithmetic; the pool's sum stays exact in fixed point (log2 D more fractional bits).
Pools of power-of-two areas stay as they are."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import AvgPool, Flatten, Graph, Linear
from . import Pass, register


@register
@dataclass
class FoldGlobalPool(Pass):
    name = "fold-global-pool"

    def run(self, graph: Graph) -> Graph:
        for pool in [o for o in graph.ops if isinstance(o, AvgPool)]:
            _, h, w = graph.op(pool.inputs[0]).type.shape
            area = h * w
            if pool.type.shape[1:] != (1, 1) or pool.kernel != h or h != w or not area & (area - 1):
                continue
            users = graph.users(pool.name)
            flat = users[0] if len(users) == 1 and isinstance(users[0], Flatten) else None
            readers = graph.users(flat.name) if flat is not None else []
            if len(readers) != 1 or not isinstance(readers[0], Linear) or pool.name in graph.outputs \
                    or flat.name in graph.outputs:
                pool.fail(f"averages {h}x{w} = {area} values, not a power of two: fixed point cannot divide by it "
                          "exactly, and only a global pool read by a linear layer (through a flatten) can pass the "
                          "difference on")
            pool.divisor = 1 << (area - 1).bit_length()
            linear = readers[0]
            linear.weight = (linear.weight.astype(np.float64) * pool.divisor / area).astype(np.float32)
        return graph.infer_types()
