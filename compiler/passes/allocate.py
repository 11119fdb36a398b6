"""allocate: place every value in DRAM (docs/memory.md).

DRAM holds, from address 0: the weights and biases of every conv and linear layer, then the decays of
every neuron layer with a decay per channel (one i32 per neuron of a step, in its [C, H, W] layout, so
that a tile's decays are a block like its states): the program's data image; then every value that is
stored, T steps one after another, each step aligned to 16 bytes
(`ttc.compiler.layout`). The sums of a conv or linear layer that runs its consumer inside it (the fuse
pass) are never stored: the consumer takes them on chip and stores its own result; aliases (flatten, repeat, time slices) take their
source's place, and the two parts of a `time_concat` are stored in its place, one after the other, and
those of a channel `concat` each at its channels' offset within every step of it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Concat, Conv2d, Graph, Linear, NeuronQ, Op, TimeConcat
from ..layout import ALIASES, align, decay_bytes, plane_bytes, step_stride, weight_bytes
from . import Pass, register


def _stored(graph: Graph, op: Op) -> bool:
    """Is `op`'s value written to DRAM in its own place? Not an alias, nor a conv's sums, which the consumer
    fused into its layer takes on chip (a fused add's sum is stored: later layers read it)."""
    return not (isinstance(op, ALIASES) or (isinstance(op, (Conv2d, Linear)) and op.fused))


def _concat_part(graph: Graph, op: Op) -> TimeConcat | Concat | None:
    user = graph.only_user(op.name)
    return user if isinstance(user, (TimeConcat, Concat)) else None


@register
@dataclass
class Allocate(Pass):
    name = "allocate"

    def run(self, graph: Graph) -> Graph:
        addr = 0
        for op in graph.ops:
            if isinstance(op, (Conv2d, Linear)):
                if op.weight_frac is None:
                    op.fail("is not quantized (run quantize first)")
                op.wdram, addr = addr, align(addr + weight_bytes(op))
        for op in graph.ops:
            if isinstance(op, NeuronQ) and op.per_channel:
                op.ddram, addr = addr, align(addr + decay_bytes(op))
        for op in graph.ops:
            if not _stored(graph, op) or _concat_part(graph, op):
                op.dram = None
                continue
            op.dram = addr
            addr += step_stride(graph, op) * (op.type.time or 1)
        for concat in [o for o in graph.ops if isinstance(o, (TimeConcat, Concat))]:
            offset, along = concat.dram, "channels" if isinstance(concat, Concat) else "steps"
            for part in (graph.op(i) for i in concat.inputs):
                if _concat_part(graph, part) is not concat or not _stored(graph, part):
                    concat.fail(f"%{part.name} is read by more than the concatenation, or not stored itself: "
                                f"its {along} cannot be stored in place")
                if along == "channels" and part.type.dtype.kind == "spike" and part.type.numel % 8:
                    concat.fail(f"%{part.name}'s {part.type.numel} spikes a step do not end on a byte: its channels "
                                "cannot be stored in place")
                part.dram = offset  # a channel part sits in each step of the concatenation, a time part before the next
                offset += plane_bytes(part.type) if along == "channels" else step_stride(graph, part) * part.type.time
        return graph
