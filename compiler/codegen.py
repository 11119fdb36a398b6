"""Code generation: an allocated, quantized IR graph -> a Program (code, DRAM data image, metadata).

Each layer runs alone, on all T steps, one tile of output channels at a time (docs/memory.md):

    load the tile's weights and bias; set the tile's membranes to v_init
    for t < T: load input step t; psum = bias; psum += conv(input, weights) on every PE group;
               neuron step (psum, membranes) -> spikes; store spikes (and membranes) of step t

Code is emitted in program order, as if one instruction ran at a time; buffers whose data changes every
step (or every tile, for weights) are split in two slots used alternately when two fit, so that the
next load can run while the current step computes. `ttc.compiler.sync` then adds the dependency tokens
that let the queues overlap exactly as far as the data allows.
"""
from __future__ import annotations

from ttc.isa.encoding import Instr, Ref
from ttc.isa.hwconfig import HwConfig
from ttc.isa.program import Program

from .ir import AvgPool, Conv2d, Graph, Linear, MaxPool, Membrane, NeuronQ, Op, TimeReduce
from .passes.allocate import conv_geometry, elems_bytes, fmt, fused_consumer, step_bytes, step_stride, storage
from .reference import output_divisor
from .sync import place_tokens

VERSION = "0.2.0"
SLOT_ALIGN = 32


def _copy(op: str, dst: Ref, src: Ref, nbytes: int) -> Instr:
    return Instr(op, dict(dst=dst, src=src, rows=1, row_bytes=nbytes, src_stride=0, dst_stride=0))


def _dram(addr: int) -> Ref:
    return Ref("dram", addr)


class _Slots:
    """`need` bytes of one buffer, twice (alternating) if two copies fit, else once."""

    def __init__(self, hw: HwConfig, mem: str, need: int, base: int = 0):
        self.mem, self.base = mem, base
        self.size = (need + SLOT_ALIGN - 1) // SLOT_ALIGN * SLOT_ALIGN
        self.count = 2 if base + 2 * self.size <= hw.buffers[mem].bytes else 1

    def __getitem__(self, k: int) -> Ref:
        return Ref(self.mem, self.base + k % self.count * self.size)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) in `parts` nearly equal, non-empty ranges (fewer if n < parts)."""
    cuts = [n * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


class _Emitter:
    def __init__(self, graph: Graph, hw: HwConfig):
        self.graph, self.hw = graph, hw
        self.code: list[Instr] = []
        self.layers: list[dict] = []

    def emit(self, op: str, **args) -> None:
        self.code.append(Instr(op, args))

    def load(self, dst: Ref, src: Ref, nbytes: int) -> None:
        self.code.append(_copy("load", dst, src, nbytes))

    def store(self, dst: Ref, src: Ref, nbytes: int) -> None:
        self.code.append(_copy("store", dst, src, nbytes))

    def addr(self, op: Op) -> int:
        return storage(self.graph, op).dram

    def step_addr(self, op: Op, t: int, offset: int = 0) -> Ref:
        return _dram(self.addr(op) + t * step_stride(self.graph, op) + offset)

    def membranes(self, neuron: Op) -> list[Op]:
        return [u for u in self.graph.users(neuron.name) if isinstance(u, Membrane)]

    def neuron_step(self, n: NeuronQ, count: int, t: int, offset: int, src: Ref, out: Ref) -> None:
        """One step of `count` neurons whose input is at `src`; spikes (and states) go to DRAM."""
        self.emit("nrn", src=src, state=Ref("vmem", 0), dst=out, n=count, theta=n.theta, v_reset=n.v_reset,
                  decay_mul=n.decay_mul, decay_shift=n.decay_shift, in_shift=n.in_shift, cmp=n.cmp,
                  reset=n.reset, order=n.order)
        self.store(self.step_addr(n, t, offset // 8), out, (count + 7) // 8)
        for m in self.membranes(n):
            self.store(self.step_addr(m, t, 4 * offset), Ref("vmem", 0), 4 * count)

    def layer(self, op: Op, kind: str, **extra) -> None:
        self.layers.append(dict(name=op.name, path=op.path, op=kind, type=str(op.type), first_instr=len(self.code), **extra))

    # ---- layer groups
    def conv(self, op: Conv2d | Linear) -> None:
        x_op = self.graph.op(op.inputs[0])
        x, consumer = x_op.type, fused_consumer(self.graph, op)
        g = conv_geometry(op, x)
        cout, oh, ow = op.type.shape[0], *(op.type.shape[1:] or (1, 1))
        plane = oh * ow
        per_channel_weights = op.weight.size // cout
        bias_at = (op.tile * per_channel_weights + 3) // 4 * 4
        spiking = x.dtype.kind == "spike"
        neuron, reduce = isinstance(consumer, NeuronQ), isinstance(consumer, TimeReduce)
        wgt = _Slots(self.hw, "wgt", bias_at + 4 * op.tile)
        ifmap = _Slots(self.hw, "ifmap", step_bytes(x))
        psum = _Slots(self.hw, "psum", 4 * op.tile * plane)
        out = _Slots(self.hw, "ofmap", (op.tile * plane + 7) // 8 if neuron else 4 * op.tile * plane)
        last = consumer or op
        self.layer(last, type(op).opname + ("+" + consumer.opname if consumer else ""), tile=op.tile,
                   source=op.path, weights=int(op.weight.size), macs_per_step=int(op.weight.size * plane))
        step = 0
        for k, c0 in enumerate(range(0, cout, op.tile)):
            tc = min(op.tile, cout - c0)
            n = tc * plane
            self.load(wgt[k], _dram(op.wdram + c0 * per_channel_weights), tc * per_channel_weights)
            bias = Ref("wgt", wgt[k].addr + bias_at)
            if op.bias is not None:
                self.load(bias, _dram(op.wdram + op.weight.size + 4 * c0), 4 * tc)
            if neuron:
                self.emit("vfill", dst=Ref("vmem", 0), n=n, value=consumer.v_init)
            elif reduce:
                self.emit("vfill", dst=out[0], n=n, value=0)
            for t in range(x.time):
                src, acc = ifmap[step], psum[step]
                self.load(src, self.step_addr(x_op, t), step_bytes(x))
                if op.bias is not None:
                    self.emit("vbias", dst=acc, bias=bias, channels=tc, plane=plane)
                for group, (lo, hi) in enumerate(_split(tc, self.hw.pe_groups)):
                    args = dict(src=src, wgt=Ref("wgt", wgt[k].addr + lo * per_channel_weights),
                                dst=Ref("psum", acc.addr + 4 * lo * plane), **g, cout=hi - lo, oh=oh, ow=ow,
                                accumulate=int(op.bias is not None), group=group)
                    if spiking:
                        self.emit("sconv", **args)
                    else:
                        self.emit("dconv", **args, fmt=fmt(x.dtype))
                if neuron:
                    self.neuron_step(consumer, n, t, c0 * plane, acc, out[step])
                elif reduce:
                    self.emit("vacc", dst=out[0], src=acc, src_fmt="i32", n=n)
                else:
                    self.store(self.step_addr(op, t, 4 * c0 * plane), acc, 4 * n)
                step += 1
            if reduce:
                self.store(_dram(self.addr(consumer) + 4 * c0 * plane), out[0], 4 * n)

    def pool(self, op: MaxPool | AvgPool) -> None:
        x_op = self.graph.op(op.inputs[0])
        x = x_op.type
        c, h, w = x.shape
        out_plane = op.type.numel // c
        ifmap = _Slots(self.hw, "ifmap", elems_bytes(x.dtype, op.tile * h * w))
        ofmap = _Slots(self.hw, "ofmap", elems_bytes(op.type.dtype, op.tile * out_plane))
        self.layer(op, op.opname, tile=op.tile, source=op.path)
        step = 0
        for c0 in range(0, c, op.tile):
            tc = min(op.tile, c - c0)
            for t in range(x.time):
                self.load(ifmap[step], self.step_addr(x_op, t, elems_bytes(x.dtype, c0 * h * w)), elems_bytes(x.dtype, tc * h * w))
                self.emit("pool", src=ifmap[step], dst=ofmap[step], mode="max" if isinstance(op, MaxPool) else "sum",
                          src_fmt=fmt(x.dtype), dst_fmt=fmt(op.type.dtype), channels=tc, ih=h, iw=w, k=op.kernel,
                          stride=op.stride)
                self.store(self.step_addr(op, t, elems_bytes(op.type.dtype, c0 * out_plane)), ofmap[step],
                           elems_bytes(op.type.dtype, tc * out_plane))
                step += 1

    def neuron(self, op: NeuronQ) -> None:
        x_op = self.graph.op(op.inputs[0])
        n = op.type.numel
        psum = _Slots(self.hw, "psum", 4 * n)
        ofmap = _Slots(self.hw, "ofmap", (n + 7) // 8)
        self.layer(op, op.opname, source=op.path)
        self.emit("vfill", dst=Ref("vmem", 0), n=n, value=op.v_init)
        for t in range(op.type.time):
            self.load(psum[t], self.step_addr(x_op, t), 4 * n)
            self.neuron_step(op, n, t, 0, psum[t], ofmap[t])

    def time_reduce(self, op: TimeReduce) -> None:
        x_op = self.graph.op(op.inputs[0])
        x = x_op.type
        ifmap = _Slots(self.hw, "ifmap", step_bytes(x))
        self.layer(op, op.opname, source=op.path)
        self.emit("vfill", dst=Ref("ofmap", 0), n=x.numel, value=0)
        for t in range(x.time):
            self.load(ifmap[t], self.step_addr(x_op, t), step_bytes(x))
            self.emit("vacc", dst=Ref("ofmap", 0), src=ifmap[t], src_fmt=fmt(x.dtype), n=x.numel)
        self.store(_dram(self.addr(op)), Ref("ofmap", 0), 4 * x.numel)


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
    code = place_tokens(emit.code)

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
    return Program(code=code, data=bytes(data), meta=meta, hw=hw)
