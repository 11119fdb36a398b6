"""fuse: decide the layers. A conv or linear layer whose value only a neuron, a TTFS firing or a sum
over time reads (and that is not a graph output) runs with that consumer fused into it: its sums stay
on chip, the consumer works on them tile by tile, and the pair is one layer, named by the consumer.

Two fusions go further, each taken where the cost model prices the fused layer below the layers it
replaces (each tiled as the tile pass would) for the compile's `objective`; the prices of both go to
`graph.notes["fusion"]` (`ttc compile --explain` prints them):

- a conv whose value only a max pool reads, whose windows tile it (kernel = stride, no padding: a TT-SNN
  downsampling block's pool of its last core's sums), pools each tile's sums on chip and stores only the
  pooled values;
- a conv whose value only a residual add reads, when the add's other operand is computed before the conv,
  runs the add too: each tile's sums meet the same tile of the other operand, loaded from DRAM, and only
  the sum is stored (the conv's value never leaves the chip). If a neuron reads that sum (the next block
  of an MS-ResNet), it runs on the same tile as well, so that the sum is not read back.

The option `fusion` chooses: `all` (the default) weighs those pools and adds, `neuron` fuses only a conv's
neuron, firing or reduction (a training step's layers, whose backward walks each add and pool as a layer of
its own). The decision is recorded as the layer's `fused` field (the consumer's name; a fused add's own
`fused` names its neuron), which prints and parses back, and which everything downstream (tiling, the cost
model, codegen) reads instead of deciding again.
"""
from __future__ import annotations

from dataclasses import dataclass

from ttc.isa.hwconfig import HwConfig, load_hw

from ..cost import LayerCost, layer_cost, score
from ..ir import Add, Conv2d, Fire, Graph, IRError, Linear, MaxPool, NeuronQ, Op, TimeReduce, pointwise_rows
from ..plan import layer_plan
from . import Pass, register, user_option
from .tile import choose_tile

FUSIONS = ("all", "neuron")


def fuse_layer(graph: Graph, op: Op, fusion: str, hw: HwConfig, objective: str = "latency", weigh: bool = True) -> list[Op]:
    """Record what `op`'s layer runs inside it under `fusion` (FUSIONS): a max pool, residual add or producer
    only where the fused layer fits `hw` and (`weigh`) the cost model prefers it for `objective` (noted in
    graph.notes["fusion"]). Returns the ops whose `fused` field was set."""
    if not isinstance(op, (Conv2d, Linear)) or isinstance(graph.fused_into(op), Conv2d):
        return []  # (a conv its producer runs inside was decided with it)
    consumer = graph.only_user(op.name)
    op.fused = consumer.name if isinstance(consumer, (NeuronQ, Fire, TimeReduce)) else None
    if fusion != "all" or not _fusable(graph, op, consumer):
        return [op]
    decided = fuse_layer(graph, consumer, fusion, hw, objective, weigh) if isinstance(consumer, Conv2d) else []
    if _cheaper_fused(graph, op, consumer, hw, objective) if weigh else _fits(graph, op, consumer, hw):
        return _fuse(graph, op, consumer) + decided
    return [op] + decided


def _fits(graph: Graph, op: Op, consumer: Op, hw: HwConfig) -> bool:
    """Does a tile of the layer that runs `consumer` fit the machine? Leaves them unfused."""
    fused_ops = _fuse(graph, op, consumer)
    try:
        choose_tile(graph, op, hw)
        return True
    except IRError:
        return False
    finally:
        for o in fused_ops:
            o.fused = None


def _fusable(graph: Graph, op: Op, consumer: Op | None) -> bool:
    """Can `op`'s layer run its only reader `consumer`, a max pool, a residual add, or a conv reading its rows one
    to one (whose own reader is not a conv: one producer a layer)?"""
    if isinstance(consumer, MaxPool):
        return isinstance(op, Conv2d) and consumer.tiles_input(op.type)
    if isinstance(consumer, Conv2d):
        return (isinstance(op, Conv2d) and pointwise_rows(consumer)
                and not isinstance(graph.only_user(consumer.name), (Conv2d, Linear)))
    return isinstance(consumer, Add) and graph.runs_add(op, consumer)


def _fuse(graph: Graph, op: Op, consumer: Op) -> list[Op]:
    op.fused = consumer.name
    if not isinstance(consumer, Add):
        return [op]
    neuron = next((u for u in graph.users(consumer.name) if isinstance(u, NeuronQ)), None)
    consumer.fused = neuron.name if neuron is not None else None
    return [op, consumer]


def _cheaper_fused(graph: Graph, op: Op, consumer: Op, hw: HwConfig, objective: str) -> bool:
    """Is the layer that runs `consumer` (and a fused add's neuron) better for `objective` than the layers it
    replaces? Leaves `op` and `consumer` unfused; notes both prices."""
    fused_ops = _fuse(graph, op, consumer)
    neuron = graph.consumer(consumer) if isinstance(consumer, Add) else None  # (a conv's consumer is its own layer's)
    try:
        fused = _price(graph, op, hw)
    except IRError as e:  # no tile of the fused layer fits the machine
        fused, why = None, str(e).partition(": ")[2]
    for o in fused_ops:
        o.fused = None
    unfused = [_price(graph, o, hw) for o in (op, consumer, neuron) if o is not None]
    apart = LayerCost(sum(c.cycles for c in unfused), {"total": sum(c.total_pj for c in unfused)},
                      sum(c.dram_bytes for c in unfused))
    better = fused is not None and score(fused.cycles, fused.total_pj, objective) < score(apart.cycles, apart.total_pj,
                                                                                          objective)
    graph.notes.setdefault("fusion", {})[op.name] = {
        "consumer": consumer.name, "kind": consumer.opname + ("+" + neuron.opname if neuron is not None else ""),
        "objective": objective, "chosen": "fused" if better else "apart",
        **{name: {"cycles": round(c.cycles), "energy_pj": round(c.total_pj, 1), "dram_bytes": c.dram_bytes}
           if c is not None else {"unavailable": why} for name, c in (("fused", fused), ("apart", apart))}}
    return better


def _price(graph: Graph, op: Op, hw: HwConfig) -> LayerCost:
    """The predicted cost of the layer `op` heads, tiled as the tile pass would tile it."""
    return layer_cost(layer_plan(graph, op, hw, choose_tile(graph, op, hw)))


@register
@dataclass
class Fuse(Pass):
    name = "fuse"
    hw: str | HwConfig = "sata"
    fusion: str = user_option("all", "fusion", "what a conv layer runs inside it: its neuron, firing or time "
                              "reduction (neuron), and also a max pool of its sums or a residual add after it with "
                              "the neuron that reads the sum, where the cost model prefers (all; a training step's "
                              "adds and pools stay layers of their own)", choices=FUSIONS)
    objective: str = "latency"  # tt-schedule's option (`pipeline_arguments` passes it): what fusions are chosen for

    def run(self, graph: Graph) -> Graph:
        hw = self.hw if isinstance(self.hw, HwConfig) else load_hw(self.hw)
        graph.notes.pop("fusion", None)
        for op in graph.ops:  # decided afresh
            if hasattr(op, "fused"):
                op.fused = None
        for op in graph.ops:
            fuse_layer(graph, op, self.fusion, hw, self.objective)
        return graph
