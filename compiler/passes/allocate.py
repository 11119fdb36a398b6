"""allocate: place every value in DRAM and tile every layer to the on-chip buffers of the hardware
config (docs/memory.md).

DRAM holds, from address 0: the weights and biases of every conv and linear layer (the program's
data image), then every value that is stored, T steps one after another, each step aligned to 16
bytes. A conv or linear whose only user is a neuron or a reduction over time is fused with it and never
stored. `flatten` and `repeat` cost nothing: they alias their input (a repeat reads the same step T
times).

Layers run one at a time, each on all T steps while its weights stay on chip, in tiles of output
channels: the largest tile for which weights, partial sums, membranes and outputs fit their buffers
(spike tiles end on a byte boundary). A layer whose single input step or single output channel does not
fit is an error naming the layer, the buffer and the sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ttc.isa.hwconfig import HwConfig, load_hw

from ..ir import (AvgPool, Conv2d, DType, Flatten, Graph, IRError, Linear, MaxPool, Membrane, NeuronQ, Op,
                  Repeat, TensorType, TimeReduce)
from . import Pass, register

DRAM_ALIGN = 16


def align(n: int, to: int = DRAM_ALIGN) -> int:
    return (n + to - 1) // to * to


def fmt(dtype: DType) -> str:
    """The ISA element format a value is stored in."""
    if dtype.kind == "spike":
        return "spike"
    if dtype.kind == "fix":
        return f"i{dtype.bits}"
    raise IRError(f"a {dtype} value cannot be stored on the machine (quantize first)")


def elems_bytes(dtype: DType, n: int) -> int:
    return (n + 7) // 8 if dtype.kind == "spike" else n * dtype.bits // 8


def step_bytes(t: TensorType) -> int:
    return elems_bytes(t.dtype, t.numel)


def step_stride(graph: Graph, op: Op) -> int:
    """Bytes between consecutive time steps of a stored value (0 for a repeated static input)."""
    if isinstance(op, Repeat):
        return 0
    if isinstance(op, Flatten):
        return step_stride(graph, graph.op(op.inputs[0]))
    return align(step_bytes(op.type))


def storage(graph: Graph, op: Op) -> Op:
    """The op whose DRAM region holds `op`'s value (itself unless it is an alias)."""
    while isinstance(op, (Flatten, Repeat)):
        op = graph.op(op.inputs[0])
    return op


def fused_consumer(graph: Graph, op: Op) -> Op | None:
    """The neuron or time reduction a conv/linear is fused with, if any."""
    if not isinstance(op, (Conv2d, Linear)) or op.name in graph.outputs:
        return None
    users = graph.users(op.name)
    if len(users) == 1 and isinstance(users[0], (NeuronQ, TimeReduce)):
        return users[0]
    return None


def conv_geometry(op: Op, x: TensorType) -> dict:
    """The conv a conv2d or linear op runs: linear is a 1x1 conv on a 1x1 image."""
    if isinstance(op, Linear):
        return dict(cin=x.shape[0], ih=1, iw=1, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0)
    _, cin, kh, kw = op.weight.shape
    return dict(cin=cin, ih=x.shape[1], iw=x.shape[2], kh=kh, kw=kw, sh=op.stride[0], sw=op.stride[1],
                pt=op.padding[0], pl=op.padding[1])


def weight_bytes(op: Op) -> int:
    return op.weight.size + 4 * op.weight.shape[0]


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
            if isinstance(op, (Flatten, Repeat)) or fused_consumer(graph, op) is not None:
                op.dram = None
                continue
            op.dram = addr
            addr += step_stride(graph, op) * (op.type.time or 1)
        for op in graph.ops:
            self.tile(graph, op, hw)
        return graph

    def tile(self, graph: Graph, op: Op, hw: HwConfig) -> None:
        if isinstance(op, (Conv2d, Linear)):
            x = graph.op(op.inputs[0]).type
            consumer = fused_consumer(graph, op)
            plane = op.type.numel // op.type.shape[0]
            g = conv_geometry(op, x)
            per_channel = {
                "wgt": g["cin"] * g["kh"] * g["kw"] + 4,
                "psum": 4 * plane,
                "vmem": 4 * plane if isinstance(consumer, NeuronQ) else 0,
                "ofmap": plane / 8 if isinstance(consumer, NeuronQ) else 4 * plane,
            }
            self.fits(op, hw, "ifmap", step_bytes(x), "one time step of its input")
            op.tile = self.largest_tile(op, hw, op.type.shape[0], per_channel, [plane] if isinstance(consumer, NeuronQ) else [])
        elif isinstance(op, (MaxPool, AvgPool)):
            x = graph.op(op.inputs[0]).type
            c, h, w = x.shape
            out_plane = op.type.numel // c
            per_channel = {"ifmap": elems_bytes(x.dtype, h * w), "ofmap": elems_bytes(op.type.dtype, out_plane)}
            bit_planes = [n for n, t in ((h * w, x), (out_plane, op.type)) if t.dtype.kind == "spike"]
            op.tile = self.largest_tile(op, hw, c, per_channel, bit_planes)
        elif isinstance(op, NeuronQ) and fused_consumer(graph, graph.op(op.inputs[0])) is None:
            n = op.type.numel
            self.fits(op, hw, "psum", 4 * n, "one time step of its input")
            self.fits(op, hw, "vmem", 4 * n, "its membranes")
            self.fits(op, hw, "ofmap", (n + 7) // 8, "one time step of its spikes")
        elif isinstance(op, TimeReduce) and fused_consumer(graph, graph.op(op.inputs[0])) is None:
            x = graph.op(op.inputs[0]).type
            self.fits(op, hw, "ifmap", step_bytes(x), "one time step of its input")
            self.fits(op, hw, "ofmap", 4 * x.numel, "its accumulators")
        elif isinstance(op, Membrane) and not isinstance(graph.op(op.inputs[0]), NeuronQ):
            op.fail("membrane of a value that is not a quantized neuron")

    @staticmethod
    def fits(op: Op, hw: HwConfig, buffer: str, need: int, what: str) -> None:
        have = hw.buffers[buffer].bytes
        if need > have:
            op.fail(f"{what} needs {need} bytes of the {buffer} buffer, which holds {have} bytes in hardware "
                    f"config {hw.name!r} (spatial tiling is not implemented)")

    @staticmethod
    def largest_tile(op: Op, hw: HwConfig, channels: int, per_channel: dict, bit_planes: list[int]) -> int:
        """The most channels whose data fit every buffer; tiles of spike tensors (`bit_planes` bits a
        channel) hold whole bytes."""
        limit = channels
        for buffer, need in per_channel.items():
            if need:
                limit = min(limit, int(hw.buffers[buffer].bytes // need))
        if limit < 1:
            buffer, need = max(((b, n / hw.buffers[b].bytes) for b, n in per_channel.items()), key=lambda p: p[1])
            op.fail(f"one output channel needs {math.ceil(per_channel[buffer])} bytes of the {buffer} buffer, "
                    f"which holds {hw.buffers[buffer].bytes} bytes in hardware config {hw.name!r}")
        if limit == channels:
            return channels
        step = math.lcm(1, *(8 // math.gcd(8, p) for p in bit_planes))  # tiles of `step` channels end on a byte
        if limit < step:
            op.fail(f"a byte-aligned tile of {step} channels does not fit the buffers of hardware config {hw.name!r}")
        return limit // step * step
