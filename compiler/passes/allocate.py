"""allocate: place every value in DRAM and tile every layer to the on-chip buffers of the hardware
config (docs/memory.md).

DRAM holds, from address 0: the weights and biases of every conv and linear layer (the program's
data image), then every value that is stored, T steps one after another, each step aligned to 16
bytes. A conv or linear whose only user is a neuron or a reduction over time is fused with it and never
stored. `flatten`, `repeat` and `time_slice` cost nothing: they alias their input (a repeat reads the
same step T times, a slice some of its steps), and the two parts of a `time_concat` are stored in its
place, one after the other.

Layers run one at a time, each on all T steps while its weights stay on chip, in tiles
(`ttc.compiler.tiling`): of output channels x output rows x input channels for a conv or linear, of
channels x rows for a pooling, of elements for an elementwise layer (add, rescale, a neuron not fused
with a conv). Of the tilings whose tiles start on bytes and fit every buffer, the
pass takes the one the cost model (`ttc.compiler.cost`) predicts fastest, then least energy; the
choice also decides which buffers are double-buffered (those with room for two slots). A layer that no
tiling fits is an error naming the layer, the buffer and the sizes of its smallest tile.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from ttc.isa.hwconfig import HwConfig, load_hw
from ttc.isa.table import elems_bytes

from ..cost import op_cost
from ..ir import (AvgPool, Conv2d, Flatten, Graph, Linear, MaxPool, Membrane, NeuronQ, Op, Repeat, TensorType, TimeConcat,
                  TimeReduce, TimeSlice)
from ..tiling import Plan, conv_plan, elementwise_plan, fmt, fused_consumer, is_elementwise, pool_plan, sizes
from . import Pass, register

DRAM_ALIGN = 16
CYCLE_TIE = 0.01


def align(n: int, to: int = DRAM_ALIGN) -> int:
    return (n + to - 1) // to * to


def plane_bytes(t: TensorType) -> int:
    """Bytes of one step of a value, or of one of its spike planes (MT values: `planes` of them)."""
    return elems_bytes(fmt(t.dtype), t.numel)


def step_bytes(t: TensorType) -> int:
    return t.dtype.planes * plane_bytes(t)


_ALIASES = (Flatten, Repeat, TimeSlice)


def step_stride(graph: Graph, op: Op) -> int:
    """Bytes between consecutive time steps of a stored value (0 for a repeated static input)."""
    if isinstance(op, Repeat):
        return 0
    if isinstance(op, (Flatten, TimeSlice)):
        return step_stride(graph, graph.op(op.inputs[0]))
    return align(step_bytes(op.type))


def value_addr(graph: Graph, op: Op) -> int | None:
    """The DRAM address of step 0 of `op`'s value (an alias reads its source's)."""
    if isinstance(op, _ALIASES):
        source = graph.op(op.inputs[0])
        start = op.start * step_stride(graph, source) if isinstance(op, TimeSlice) else 0
        return value_addr(graph, source) + start
    return op.dram


def _concat_part(graph: Graph, op: Op) -> TimeConcat | None:
    users = graph.users(op.name)
    return users[0] if len(users) == 1 and isinstance(users[0], TimeConcat) and op.name not in graph.outputs else None


def weight_bytes(op: Op) -> int:
    return op.weight.nbytes + 4 * op.weight.shape[0]


def _candidates(n: int) -> list[int]:
    """Tile sizes to try for n items: every tile count's largest size, also in multiples of 2, 4, 8
    (byte-aligned tiles of spike tensors)."""
    return sorted({size for unit in (1, 2, 4, 8) for size in sizes(n, unit)}, reverse=True)


@register
@dataclass
class Allocate(Pass):
    name = "allocate"
    hw: str | HwConfig = "sata"

    def run(self, graph: Graph) -> Graph:
        hw = self.hw if isinstance(self.hw, HwConfig) else load_hw(self.hw)
        addr = 0
        for op in graph.ops:
            if isinstance(op, (Conv2d, Linear)):
                if op.weight_frac is None:
                    op.fail("is not quantized (run quantize first)")
                op.wdram, addr = addr, align(addr + weight_bytes(op))
        for op in graph.ops:
            if isinstance(op, _ALIASES) or fused_consumer(graph, op) is not None or _concat_part(graph, op):
                op.dram = None
                continue
            op.dram = addr
            addr += step_stride(graph, op) * (op.type.time or 1)
        for concat in [o for o in graph.ops if isinstance(o, TimeConcat)]:
            offset = concat.dram
            for part in (graph.op(i) for i in concat.inputs):
                if _concat_part(graph, part) is not concat or isinstance(part, _ALIASES) or fused_consumer(graph, part):
                    concat.fail(f"%{part.name} is read by more than the concatenation, or not stored itself: "
                                "its steps cannot be stored in place")
                part.dram, offset = offset, offset + step_stride(graph, part) * part.type.time
        for op in graph.ops:
            self.tile(graph, op, hw)
        return graph

    def tile(self, graph: Graph, op: Op, hw: HwConfig) -> None:
        if isinstance(op, (Conv2d, Linear)):
            x = graph.op(op.inputs[0]).type
            cout, oh = op.type.shape[0], (op.type.shape[1:] or (1,))[0]
            op.tile = self.choose(graph, op, hw, lambda tile: conv_plan(graph, op, hw, tile),
                                  [_candidates(cout), _candidates(oh), _candidates(x.shape[0])],
                                  ("output channels", "output rows", "input channels"))
        elif isinstance(op, (MaxPool, AvgPool)):
            c, oh, _ = op.type.shape
            op.tile = self.choose(graph, op, hw, lambda tile: pool_plan(graph, op, hw, tile),
                                  [_candidates(c), _candidates(oh)], ("channels", "output rows"))
        elif is_elementwise(graph, op):
            op.tile = self.elements(graph, op, hw)
        elif isinstance(op, TimeReduce) and fused_consumer(graph, graph.op(op.inputs[0])) is None:
            x = graph.op(op.inputs[0]).type
            self.fits(op, hw, "ifmap", step_bytes(x), "one time step of its input")
            self.fits(op, hw, "ofmap", 4 * x.numel, "its accumulators")
        elif isinstance(op, Membrane) and not isinstance(graph.op(op.inputs[0]), NeuronQ):
            op.fail("membrane of a value that is not a quantized neuron")

    @staticmethod
    def elements(graph: Graph, op: Op, hw: HwConfig) -> tuple[int]:
        """An elementwise layer streams: the largest chunk of which two slots fit every buffer (double
        buffering), else the largest of which one does."""
        n = op.type.numel
        unit = 8 if n % 8 == 0 else n  # spike chunks start on bytes
        for slots in (2, 1):
            hi = n // unit
            lo = 1
            while lo < hi:  # the largest count of units whose plan fits `slots` slots
                mid = (lo + hi + 1) // 2
                if elementwise_plan(graph, op, hw, (mid * unit,)).fits(slots):
                    lo = mid
                else:
                    hi = mid - 1
            if elementwise_plan(graph, op, hw, (lo * unit,)).fits(slots):
                return (lo * unit,)
        buffer, need, have = elementwise_plan(graph, op, hw, (unit,)).overflow()
        op.fail(f"its smallest tile ({unit} elements) needs {need} bytes of the {buffer} buffer, which holds {have} "
                f"bytes in hardware config {hw.name!r}")

    @staticmethod
    def fits(op: Op, hw: HwConfig, buffer: str, need: int, what: str) -> None:
        have = hw.buffers[buffer].bytes
        if need > have:
            op.fail(f"{what} needs {need} bytes of the {buffer} buffer, which holds {have} bytes in hardware "
                    f"config {hw.name!r} (this layer is not tiled)")

    @staticmethod
    def choose(graph: Graph, op: Op, hw: HwConfig, plan_of, candidates: list[list[int]], names: tuple[str, ...]) -> tuple:
        """The tile (one size per dimension) the cost model likes best. For every choice of the leading
        sizes, the largest last size that fits is a candidate; of those within `CYCLE_TIE` of the
        fewest cycles (each tile costs instructions the model does not time), the one with the fewest
        tiles wins, then the least energy."""
        *outer, last = candidates
        scored, smallest = [], None
        for lead in product(*outer):
            for size in last:
                tile = (*lead, size)
                plan: Plan = plan_of(tile)
                if not plan.aligned():
                    continue
                smallest = tile, plan
                if plan.overflow() is None:
                    cost = op_cost(graph, op, hw, tile)
                    scored.append((cost.cycles, plan.tiles, cost.total_pj, tile))
                    break
        if not scored:
            if smallest is None:
                op.fail(f"no tiling of it starts every spike tile on a byte in hardware config {hw.name!r}")
            tile, plan = smallest
            buffer, need, have = plan.overflow()
            op.fail(f"its smallest tile (({', '.join(names)}) = ({', '.join(map(str, tile))})) needs {need} bytes "
                    f"of the {buffer} buffer, which holds {have} bytes in hardware config {hw.name!r}")
        fastest = min(s[0] for s in scored)
        return min((s for s in scored if s[0] <= fastest * (1 + CYCLE_TIE)), key=lambda s: s[1:3])[3]
