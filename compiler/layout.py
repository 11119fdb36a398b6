"""Where values live in DRAM (docs/memory.md): step sizes and strides, and the address of a value,
aliases included. The allocate pass places values with these rules; layer plans read addresses with them.

`flatten`, `repeat` and `time_slice` cost nothing: they alias their input (a repeat reads the same step
T times, a slice some of its steps)."""
from __future__ import annotations

from ttc.isa.table import elems_bytes

from .ir import Concat, Flatten, Graph, Op, Repeat, TensorType, TimeSlice
from .tiling import fmt

DRAM_ALIGN = 16
ALIASES = (Flatten, Repeat, TimeSlice)


def align(n: int, to: int = DRAM_ALIGN) -> int:
    return (n + to - 1) // to * to


def plane_bytes(t: TensorType) -> int:
    """Bytes of one step of a value, or of one of its spike planes (MT values: `planes` of them)."""
    return elems_bytes(fmt(t.dtype), t.numel)


def step_bytes(t: TensorType) -> int:
    return t.dtype.planes * plane_bytes(t)


def step_stride(graph: Graph, op: Op) -> int:
    """Bytes between consecutive time steps of a stored value (0 for a repeated static input; a part
    of a channel concatenation is stored in its steps)."""
    if isinstance(op, Repeat):
        return 0
    if isinstance(op, (Flatten, TimeSlice)):
        return step_stride(graph, graph.op(op.inputs[0]))
    concat = graph.only_user(op.name) if graph.has(op.name) else None
    if isinstance(concat, Concat):
        return step_stride(graph, concat)
    return align(step_bytes(op.type))


def value_addr(graph: Graph, op: Op) -> int | None:
    """The DRAM address of step 0 of `op`'s value (an alias reads its source's); None until allocated."""
    if isinstance(op, ALIASES):
        source = graph.op(op.inputs[0])
        start = op.start * step_stride(graph, source) if isinstance(op, TimeSlice) else 0
        base = value_addr(graph, source)
        return None if base is None else base + start
    return op.dram


def weight_bytes(op: Op) -> int:
    """A conv or linear layer's weights, then its bias (i32 per output channel) in DRAM."""
    return op.weight.nbytes + 4 * op.weight.shape[0]


def decay_bytes(op: Op) -> int:
    """A neuron layer's decays per channel in DRAM: one i32 per neuron of a step."""
    return 4 * op.type.numel
