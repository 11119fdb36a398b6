"""fuse: decide the layers. A conv or linear layer whose value only a neuron, a TTFS firing or a sum
over time reads (and that is not a graph output) runs with that consumer fused into it: its sums stay
on chip, the consumer works on them tile by tile, and the pair is one layer, named by the consumer.

A conv whose value only a residual add reads, when the add's other operand is computed before the conv,
runs the add too: each tile's sums meet the same tile of the other operand, loaded from DRAM, and only
the sum is stored (the conv's value never leaves the chip). If a neuron reads that sum (the next block of
an MS-ResNet), it runs on the same tile as well, so that the sum is not read back. The option `fusion`
chooses: `residual` (the default) fuses those adds, `neuron` only a conv's neuron, firing or reduction (a
training step's layers, whose backward walks each add as a layer of its own).

The decision is recorded as the layer's `fused` field (the consumer's name; a fused add's own `fused`
names its neuron), which prints and parses back, and which everything downstream (tiling, the cost model,
codegen) reads instead of deciding again.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Add, Conv2d, Fire, Graph, Linear, NeuronQ, Op, TimeReduce
from . import Pass, register, user_option

FUSIONS = ("residual", "neuron")


def fuse_layer(graph: Graph, op: Op, fusion: str = "residual") -> list[Op]:
    """Record what `op`'s layer runs inside it under `fusion` (FUSIONS); returns the ops whose `fused` field was
    set."""
    if not isinstance(op, (Conv2d, Linear)):
        return []
    consumer = graph.only_user(op.name)
    if isinstance(consumer, (NeuronQ, Fire, TimeReduce)):
        op.fused = consumer.name
        return [op]
    if isinstance(consumer, Add) and fusion == "residual" and _fusable_add(graph, op, consumer):
        op.fused = consumer.name
        neuron = next((u for u in graph.users(consumer.name) if isinstance(u, NeuronQ)), None)
        consumer.fused = neuron.name if neuron is not None else None
        return [op, consumer]
    op.fused = None
    return [op]


def _fusable_add(graph: Graph, op: Op, add: Add) -> bool:
    """Can `op`'s layer run `add`: its other operand is a fixed-point value ready before `op` runs."""
    if add.inputs.count(op.name) != 1:
        return False
    other = next(i for i in add.inputs if i != op.name)
    position = {o.name: k for k, o in enumerate(graph.ops)}
    return position[other] < position[op.name] and graph.op(other).type.dtype.kind == "fix"


@register
@dataclass
class Fuse(Pass):
    name = "fuse"
    fusion: str = user_option("residual", "fusion", "what a conv layer runs inside it: its neuron, firing or time "
                              "reduction (neuron), and also a residual add after it with the neuron that reads the "
                              "sum (residual; a training step's adds stay layers of their own)", choices=FUSIONS)

    def run(self, graph: Graph) -> Graph:
        for op in graph.ops:
            if isinstance(op, Add):
                op.fused = None
        for op in graph.ops:
            fuse_layer(graph, op, self.fusion)
        return graph
