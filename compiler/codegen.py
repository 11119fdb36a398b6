"""Code generation: an allocated, quantized IR graph -> a Program (code, DRAM data image, metadata).

Each layer runs alone, on all T steps, one tile of output channels at a time (docs/memory.md):

    load the tile's weights and bias; set the tile's membranes to v_init
    for t < T: load input step t; psum = bias; psum += conv(input, weights);
               neuron step (psum, membranes) -> spikes; store spikes (and membranes) of step t
"""
from __future__ import annotations

from ttc.isa.encoding import Instr, Ref
from ttc.isa.hwconfig import HwConfig
from ttc.isa.program import Program

from .ir import AvgPool, Conv2d, Graph, Linear, MaxPool, Membrane, NeuronQ, Op, TimeReduce
from .passes.allocate import conv_geometry, elems_bytes, fmt, fused_consumer, step_bytes, step_stride, storage
from .reference import output_divisor

VERSION = "0.1.0"


def _dma(dst: Ref, src: Ref, nbytes: int) -> Instr:
    return Instr("dma", dict(dst=dst, src=src, rows=1, row_bytes=nbytes, src_stride=0, dst_stride=0))


def _dram(addr: int) -> Ref:
    return Ref("dram", addr)


class _Emitter:
    def __init__(self, graph: Graph, hw: HwConfig):
        self.graph, self.hw = graph, hw
        self.code: list[Instr] = []
        self.layers: list[dict] = []

    def addr(self, op: Op) -> int:
        return storage(self.graph, op).dram

    def step_addr(self, op: Op, t: int, offset: int = 0) -> Ref:
        return _dram(self.addr(op) + t * step_stride(self.graph, op) + offset)

    def membranes(self, neuron: Op) -> list[Op]:
        return [u for u in self.graph.users(neuron.name) if isinstance(u, Membrane)]

    def neuron_step(self, n: NeuronQ, count: int, t: int, offset: int) -> None:
        """One step of `count` neurons whose input is in psum[0]; spikes and states go to DRAM."""
        self.code.append(Instr("nrn", dict(
            src=Ref("psum", 0), state=Ref("vmem", 0), dst=Ref("ofmap", 0), n=count, theta=n.theta,
            v_reset=n.v_reset, decay_mul=n.decay_mul, decay_shift=n.decay_shift, in_shift=n.in_shift,
            cmp=n.cmp, reset=n.reset, order=n.order)))
        self.code.append(_dma(self.step_addr(n, t, offset // 8), Ref("ofmap", 0), (count + 7) // 8))
        for m in self.membranes(n):
            self.code.append(_dma(self.step_addr(m, t, 4 * offset), Ref("vmem", 0), 4 * count))

    def layer(self, op: Op, kind: str, **extra) -> None:
        self.layers.append(dict(name=op.name, path=op.path, op=kind, type=str(op.type), first_instr=len(self.code), **extra))

    # ---- layer groups
    def conv(self, op: Conv2d | Linear) -> None:
        x_op = self.graph.op(op.inputs[0])
        x, consumer = x_op.type, fused_consumer(self.graph, op)
        g = conv_geometry(op, x)
        cout = op.type.shape[0]
        plane = op.type.numel // cout
        per_channel_weights = op.weight.size // cout
        bias_at = (op.tile * per_channel_weights + 3) // 4 * 4
        spiking = x.dtype.kind == "spike"
        last = consumer or op
        self.layer(last, type(op).opname + ("+" + consumer.opname if consumer else ""), tile=op.tile,
                   source=op.path, weights=int(op.weight.size), macs_per_step=int(op.weight.size * plane))
        for c0 in range(0, cout, op.tile):
            tc = min(op.tile, cout - c0)
            n = tc * plane
            self.code.append(_dma(Ref("wgt", 0), _dram(op.wdram + c0 * per_channel_weights), tc * per_channel_weights))
            if op.bias is not None:
                self.code.append(_dma(Ref("wgt", bias_at), _dram(op.wdram + op.weight.size + 4 * c0), 4 * tc))
            if isinstance(consumer, NeuronQ):
                self.code.append(Instr("vfill", dict(dst=Ref("vmem", 0), n=n, value=consumer.v_init)))
            elif isinstance(consumer, TimeReduce):
                self.code.append(Instr("vfill", dict(dst=Ref("ofmap", 0), n=n, value=0)))
            for t in range(x.time):
                self.code.append(_dma(Ref("ifmap", 0), self.step_addr(x_op, t), step_bytes(x)))
                if op.bias is not None:
                    self.code.append(Instr("vbias", dict(dst=Ref("psum", 0), bias=Ref("wgt", bias_at), channels=tc, plane=plane)))
                args = dict(src=Ref("ifmap", 0), wgt=Ref("wgt", 0), dst=Ref("psum", 0))
                if not spiking:
                    args["fmt"] = fmt(x.dtype)
                self.code.append(Instr("sconv" if spiking else "dconv",
                                       dict(args, **g, cout=tc, accumulate=int(op.bias is not None))))
                if isinstance(consumer, NeuronQ):
                    self.neuron_step(consumer, n, t, c0 * plane)
                elif isinstance(consumer, TimeReduce):
                    self.code.append(Instr("vacc", dict(dst=Ref("ofmap", 0), src=Ref("psum", 0), src_fmt="i32", n=n)))
                else:
                    self.code.append(_dma(self.step_addr(op, t, 4 * c0 * plane), Ref("psum", 0), 4 * n))
            if isinstance(consumer, TimeReduce):
                self.code.append(_dma(_dram(self.addr(consumer) + 4 * c0 * plane), Ref("ofmap", 0), 4 * n))

    def pool(self, op: MaxPool | AvgPool) -> None:
        x_op = self.graph.op(op.inputs[0])
        x = x_op.type
        c, h, w = x.shape
        out_plane = op.type.numel // c
        self.layer(op, op.opname, tile=op.tile, source=op.path)
        for c0 in range(0, c, op.tile):
            tc = min(op.tile, c - c0)
            for t in range(x.time):
                self.code.append(_dma(Ref("ifmap", 0), self.step_addr(x_op, t, elems_bytes(x.dtype, c0 * h * w)),
                                      elems_bytes(x.dtype, tc * h * w)))
                self.code.append(Instr("pool", dict(
                    src=Ref("ifmap", 0), dst=Ref("ofmap", 0), mode="max" if isinstance(op, MaxPool) else "sum",
                    src_fmt=fmt(x.dtype), dst_fmt=fmt(op.type.dtype), channels=tc, ih=h, iw=w, k=op.kernel,
                    stride=op.stride)))
                self.code.append(_dma(self.step_addr(op, t, elems_bytes(op.type.dtype, c0 * out_plane)), Ref("ofmap", 0),
                                      elems_bytes(op.type.dtype, tc * out_plane)))

    def neuron(self, op: NeuronQ) -> None:
        x_op = self.graph.op(op.inputs[0])
        n = op.type.numel
        self.layer(op, op.opname, source=op.path)
        self.code.append(Instr("vfill", dict(dst=Ref("vmem", 0), n=n, value=op.v_init)))
        for t in range(op.type.time):
            self.code.append(_dma(Ref("psum", 0), self.step_addr(x_op, t), 4 * n))
            self.neuron_step(op, n, t, 0)

    def time_reduce(self, op: TimeReduce) -> None:
        x_op = self.graph.op(op.inputs[0])
        x = x_op.type
        self.layer(op, op.opname, source=op.path)
        self.code.append(Instr("vfill", dict(dst=Ref("ofmap", 0), n=x.numel, value=0)))
        for t in range(x.time):
            self.code.append(_dma(Ref("ifmap", 0), self.step_addr(x_op, t), step_bytes(x)))
            self.code.append(Instr("vacc", dict(dst=Ref("ofmap", 0), src=Ref("ifmap", 0), src_fmt=fmt(x.dtype), n=x.numel)))
        self.code.append(_dma(_dram(self.addr(op)), Ref("ofmap", 0), 4 * x.numel))


def _io(graph: Graph, op: Op, **extra) -> dict:
    t = op.type
    stride = step_stride(graph, op)
    return dict(name=op.name, path=op.path, addr=storage(graph, op).dram, shape=list(t.shape), time=t.time,
                step_stride=stride, step_bytes=step_bytes(t), bytes=stride * (t.time or 1) if stride else step_bytes(t),
                fmt=fmt(t.dtype), frac=t.dtype.frac, **extra)


def generate(graph: Graph, hw: HwConfig, options: dict, source: dict) -> Program:
    emit = _Emitter(graph, hw)
    for op in graph.ops:
        if isinstance(op, (Conv2d, Linear)):
            emit.conv(op)
        elif isinstance(op, (MaxPool, AvgPool)):
            emit.pool(op)
        elif isinstance(op, NeuronQ) and fused_consumer(graph, graph.op(op.inputs[0])) is None:
            emit.neuron(op)
        elif isinstance(op, TimeReduce) and fused_consumer(graph, graph.op(op.inputs[0])) is None:
            emit.time_reduce(op)
    emit.code.append(Instr("halt", {}))

    weights_end = 0
    blobs = []
    for op in graph.ops:
        if isinstance(op, (Conv2d, Linear)):
            bias = op.bias if op.bias is not None else op.weight[:, 0].astype("<i4") * 0
            blob = op.weight.astype("i1").tobytes() + bias.astype("<i4").tobytes()
            blobs.append((op.wdram, blob))
            weights_end = max(weights_end, op.wdram + len(blob))
    data = bytearray(weights_end)
    for addr, blob in blobs:
        data[addr:addr + len(blob)] = blob
    stored = [op for op in graph.ops if op.dram is not None]
    dram_bytes = max([len(data)] + [op.dram + step_stride(graph, op) * (op.type.time or 1) for op in stored])
    meta = dict(
        ttc_version=VERSION, dram_bytes=dram_bytes, options=options, source=source, layers=emit.layers,
        inputs=[_io(graph, op, index=op.index, bits=op.type.dtype.bits) for op in graph.inputs],
        outputs=[_io(graph, graph.op(name), divide_by=output_divisor(graph, name)) for name in graph.outputs],
    )
    for io in meta["inputs"] + meta["outputs"]:
        if io["addr"] is None:
            raise ValueError(f"value %{io['name']} is an input or output but is not stored in DRAM")
    return Program(code=emit.code, data=bytes(data), meta=meta, hw=hw)
