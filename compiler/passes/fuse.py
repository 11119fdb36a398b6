"""fuse: decide the layers. A conv or linear layer whose value only a neuron, a TTFS firing or a sum
over time reads (and that is not a graph output) runs with that consumer fused into it: its sums stay
on chip, the consumer works on them tile by tile, and the pair is one layer, named by the consumer.
The decision is recorded as the layer's `fused` field (the consumer's name), which prints and parses
back, and which everything downstream (tiling, the cost model, codegen) reads instead of deciding again.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import FUSABLE, Conv2d, Graph, Linear, Op
from . import Pass, register


def fuse_layer(graph: Graph, op: Op) -> None:
    """Record the consumer fused into `op`, if it has one."""
    if isinstance(op, (Conv2d, Linear)):
        consumer = graph.only_user(op.name)
        op.fused = consumer.name if isinstance(consumer, FUSABLE) else None


@register
@dataclass
class Fuse(Pass):
    name = "fuse"

    def run(self, graph: Graph) -> Graph:
        for op in graph.ops:
            fuse_layer(graph, op)
        return graph
