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

import numpy as np

from ttc.isa.encoding import Instr, Ref
from ttc.isa.hwconfig import HwConfig
from ttc.isa.program import Program
from ttc.isa.table import TIME

from .ir import AvgPool, Conv2d, Fire, Graph, Linear, MaxPool, Membrane, NeuronQ, Op, TimeReduce
from .passes.allocate import plane_bytes, step_bytes, step_stride, value_addr
from .reference import output_divisor
from .sync import place_tokens
from .tiling import (Block, ConvPlan, Plan, RowTile, conv_plan, elementwise_plan, fmt, fused_consumer, is_elementwise,
                     pool_plan, split)

VERSION = "0.3.0"


def _dram(addr: int) -> Ref:
    return Ref("dram", addr)


class _Slots:
    """A buffer region of `plan.slots(mem)` slots used in turn (two: double buffering)."""

    def __init__(self, plan: Plan, mem: str):
        self.mem = mem
        self.size = plan.slot_size(mem)
        self.count = plan.slots(mem)
        self.used = 0

    def __getitem__(self, k: int) -> Ref:
        return Ref(self.mem, k % self.count * self.size)

    def next(self) -> Ref:
        self.used += 1
        return self[self.used - 1]


class _Emitter:
    def __init__(self, graph: Graph, hw: HwConfig):
        self.graph, self.hw = graph, hw
        self.code: list[Instr] = []
        self.layers: list[dict] = []

    def emit(self, op: str, **args) -> None:
        self.code.append(Instr(op, args))

    def copy(self, op: str, dst: Ref, src: Ref, nbytes: int, rows: int = 1, src_stride: int = 0, dst_stride: int = 0) -> None:
        self.emit(op, dst=dst, src=src, rows=rows, row_bytes=nbytes, src_stride=src_stride, dst_stride=dst_stride)

    def move_block(self, op: str, value: Op, t: int, block: Block, chip: Ref) -> None:
        """Load (`op` = "load") or store one block of step t of `value` between DRAM and `chip`: of each
        of its spike planes (MT), the planes one after another on chip."""
        run = block.copy()
        for p in range(value.type.dtype.planes):
            dram = self.step_addr(value, t, p * plane_bytes(value.type) + run["offset"])
            at = Ref(chip.mem, chip.addr + p * block.nbytes)
            if op == "load":
                self.copy("load", at, dram, run["row_bytes"], run["rows"], run["stride"], run["row_bytes"])
            else:
                self.copy("store", dram, at, run["row_bytes"], run["rows"], run["row_bytes"], run["stride"])

    def addr(self, op: Op) -> int:
        return value_addr(self.graph, op)

    def step_addr(self, op: Op, t: int, offset: int = 0) -> Ref:
        return _dram(self.addr(op) + t * step_stride(self.graph, op) + offset)

    def membranes(self, neuron: Op) -> list[Op]:
        return [u for u in self.graph.users(neuron.name) if isinstance(u, Membrane)]

    def neuron_step(self, n: NeuronQ, count: int, t: int, src: Ref, out: Ref, spikes: Block, states: Block) -> None:
        """One step of `count` neurons whose input is at `src`; spikes (and states) go to DRAM."""
        self.emit("nrn", src=src, state=Ref("vmem", 0), dst=out, n=count, theta=n.theta, v_reset=n.v_reset,
                  decay_mul=n.decay_mul, decay_shift=n.decay_shift, in_shift=n.in_shift, cmp=n.cmp,
                  reset=n.reset, order=n.order, levels=n.levels, mode=n.mode)
        self.move_block("store", n, t, spikes, out)
        for m in self.membranes(n):
            self.move_block("store", m, t, states, Ref("vmem", 0))

    def fire(self, f: Fire, count: int, t: int, src: Ref, out: Ref, times: Block) -> None:
        """TTFS firing of `count` accumulators at `src` (the fired op's input format); the spike times go to DRAM."""
        x = self.graph.op(f.inputs[0]).type.dtype
        self.emit("tfire", src=src, dst=out, src_fmt=fmt(x), n=count, frac=x.frac, window=f.window)
        self.move_block("store", f, t, times, out)

    def layer(self, op: Op, kind: str, **extra) -> None:
        self.layers.append(dict(name=op.name, path=op.path, op=kind, type=str(op.type), first_instr=len(self.code), **extra))

    def load_weights(self, op: Conv2d | Linear, plan: ConvPlan, slot: Ref, co: tuple[int, int], ci: tuple[int, int]) -> None:
        """The weights of output channels `co` x input channels `ci` into `slot` (with the bias, once
        per slot: with the first block)."""
        (c0, c1), (i0, i1), taps, cin, wb = co, ci, plan.taps, plan.cin, plan.wbytes
        rows, per_row = (1, (c1 - c0) * cin * taps * wb) if i1 - i0 == cin else (c1 - c0, (i1 - i0) * taps * wb)
        self.copy("load", Ref("wgt", slot.addr + plan.weights_at(c1 - c0, i0)), _dram(op.wdram + (c0 * cin + i0) * taps * wb),
                  per_row, rows, cin * taps * wb, per_row)
        if i0 == 0 and plan.bias:
            self.copy("load", Ref("wgt", slot.addr + plan.bias_at(c1 - c0)), _dram(op.wdram + op.weight.nbytes + 4 * c0),
                      4 * (c1 - c0))

    # ---- layer groups
    def conv(self, op: Conv2d | Linear) -> None:
        x_op, consumer = self.graph.op(op.inputs[0]), fused_consumer(self.graph, op)
        plan = conv_plan(self.graph, op, self.hw, op.tile)
        wgt, ifmap, psum = (_Slots(plan, m) for m in ("wgt", "ifmap", "psum"))
        out = _Slots(plan, "ofmap") if "ofmap" in plan.slot_bytes else None
        out_block = plan.stored_fmt
        size = op.weight.size
        self.layer(consumer or op, type(op).opname + ("+" + consumer.opname if consumer else ""), tile=list(op.tile),
                   source=op.path, weights=int(size), macs_per_step=int(size * plan.oh * plan.ow))
        def resident_weights(co: tuple[int, int]) -> Ref:
            slot = wgt.next()
            for ci in plan.ci_tiles:
                self.load_weights(op, plan, slot, co, ci)
            return slot

        w = resident_weights(plan.co_tiles[0]) if plan.resident else None
        for k, (c0, c1) in enumerate(plan.co_tiles):
            tc = c1 - c0
            prefetch = plan.resident and k + 1 < len(plan.co_tiles)  # the next tile's weights, during this one
            for rt in plan.row_tiles:
                n = tc * (rt.y1 - rt.y0) * plan.ow
                if plan.consumer == "neuron":
                    self.emit("vfill", dst=Ref("vmem", 0), n=n, value=consumer.v_init)
                elif plan.consumer == "reduce":
                    self.emit("vfill", dst=out[0], n=n, value=0)
                for t in range(x_op.type.time):
                    acc = psum.next()
                    w = self.conv_sums(op, plan, x_op, t, (c0, c1), rt, acc, w, wgt, ifmap)
                    if prefetch and (rt, t) == (plan.row_tiles[-1], x_op.type.time - 1):
                        upcoming = resident_weights(plan.co_tiles[k + 1])  # in DRAM's queue before this tile's last results
                    if plan.consumer == "neuron":
                        self.neuron_step(consumer, n, t, acc, out.next(), plan.output_block("spike", (c0, c1), rt),
                                         plan.output_block("i32", (c0, c1), rt))
                    elif plan.consumer == "fire":
                        self.fire(consumer, n, t, acc, out.next(), plan.output_block(TIME, (c0, c1), rt))
                    elif plan.consumer == "reduce":
                        self.emit("vacc", dst=out[0], src=acc, src_fmt="i32", dst_fmt="i32", n=n, shift=0, accumulate=1)
                    elif plan.narrowed:
                        narrow = out.next()
                        self.emit("vacc", dst=narrow, src=acc, src_fmt="i32", dst_fmt=plan.out_fmt, n=n, shift=0,
                                  accumulate=0)
                        self.move_block("store", op, t, plan.output_block(out_block, (c0, c1), rt), narrow)
                    else:
                        self.move_block("store", op, t, plan.output_block(out_block, (c0, c1), rt), acc)
                if plan.consumer == "reduce":
                    self.move_block("store", consumer, 0, plan.output_block("i32", (c0, c1), rt), out[0])
            if prefetch:
                w = upcoming

    def conv_sums(self, op: Conv2d | Linear, plan: ConvPlan, x_op: Op, t: int, co: tuple[int, int], rt: RowTile,
                  acc: Ref, w: Ref | None, wgt: "_Slots", ifmap: "_Slots") -> Ref:
        """acc = bias + the conv of step t of the input over output tile (co, rt), block by block of
        input channels, streaming each block's weights unless they are resident at `w`; returns the
        weight slot last used."""
        tc, taps = co[1] - co[0], plan.taps
        n = tc * (rt.y1 - rt.y0) * plan.ow
        for k, (i0, i1) in enumerate(plan.ci_tiles):
            if not plan.resident:
                w = wgt.next()
                self.load_weights(op, plan, w, co, (i0, i1))
            if k == 0 and plan.bias:
                self.emit("vbias", dst=acc, bias=Ref("wgt", w.addr + plan.bias_at(tc)), channels=tc, plane=n // tc)
            src = ifmap.next()
            self.move_block("load", x_op, t, plan.input_block((i0, i1), rt), src)
            for group, (lo, hi) in enumerate(split(tc, self.hw.pe_groups)):
                args = dict(src=src, wgt=Ref("wgt", w.addr + plan.weights_at(tc, i0) + lo * (i1 - i0) * taps * plan.wbytes),
                            dst=Ref("psum", acc.addr + 4 * lo * n // tc), **plan.conv_args(i1 - i0, rt),
                            cout=hi - lo, accumulate=int(plan.bias or k > 0), group=group, shift=plan.shift)
                if plan.in_fmt == TIME:
                    self.emit("tconv", **args, window=plan.in_window)
                elif plan.in_fmt == "spike":
                    self.emit("sconv", **args, wfmt=plan.wfmt, planes=plan.in_planes, mode=plan.in_mode)
                else:
                    self.emit("dconv", **args, wfmt=plan.wfmt, fmt=plan.in_fmt)
        return w

    def pool(self, op: MaxPool | AvgPool) -> None:
        x_op = self.graph.op(op.inputs[0])
        plan = pool_plan(self.graph, op, self.hw, op.tile)
        ifmap, ofmap = _Slots(plan, "ifmap"), _Slots(plan, "ofmap")
        self.layer(op, op.opname, tile=list(op.tile), source=op.path)
        for c0, c1 in plan.channel_tiles:
            for rt in plan.row_tiles:
                for t in range(x_op.type.time):
                    src, dst = ifmap.next(), ofmap.next()
                    self.move_block("load", x_op, t, plan.input_block((c0, c1), rt), src)
                    mode = "sum" if isinstance(op, AvgPool) else "min" if plan.in_fmt == TIME else "max"  # earliest spike
                    self.emit("pool", src=src, dst=dst, mode=mode,
                              src_fmt=plan.in_fmt, dst_fmt=plan.out_fmt, channels=c1 - c0, ih=rt.r1 - rt.r0, iw=plan.iw,
                              oh=rt.y1 - rt.y0, ow=plan.ow, k=plan.k, stride=plan.stride, pt=rt.pt)
                    self.move_block("store", op, t, plan.output_block((c0, c1), rt), dst)

    def elementwise(self, op: Op) -> None:
        """An add, rescale, neuron or firing, chunk by chunk, each chunk on all T steps."""
        plan = elementwise_plan(self.graph, op, self.hw, op.tile)
        ins = [self.graph.op(i) for i in op.inputs]
        out, src = _Slots(plan, "ofmap"), _Slots(plan, "psum" if plan.kind in ("neuron", "fire") else "ifmap")
        self.layer(op, op.opname, tile=list(op.tile), source=op.path)
        for chunk in plan.chunks:
            count = chunk[1] - chunk[0]
            if plan.kind == "neuron":
                self.emit("vfill", dst=Ref("vmem", 0), n=count, value=op.v_init)
            for t in range(op.type.time):
                slot, dst = src.next(), out.next()
                operands = [Ref(slot.mem, slot.addr + plan.operand_at(k)) for k in range(len(ins))]
                for x, f, at in zip(ins, plan.in_fmts, operands):
                    self.move_block("load", x, t, plan.block(f, chunk), at)
                if plan.kind == "neuron":
                    self.neuron_step(op, count, t, slot, dst, plan.block("spike", chunk), plan.block("i32", chunk))
                    continue
                if plan.kind == "fire":
                    self.fire(op, count, t, slot, dst, plan.block(TIME, chunk))
                    continue
                for k, (f, at, shift) in enumerate(zip(plan.in_fmts, operands, plan.shifts)):
                    self.emit("vacc", dst=dst, src=at, src_fmt=f, dst_fmt=plan.out_fmt, n=count, shift=shift,
                              accumulate=int(k > 0))
                self.move_block("store", op, t, plan.block(plan.out_fmt, chunk), dst)

    def time_reduce(self, op: TimeReduce) -> None:
        x_op = self.graph.op(op.inputs[0])
        x = x_op.type
        self.layer(op, op.opname, source=op.path)
        self.emit("vfill", dst=Ref("ofmap", 0), n=x.numel, value=0)
        for t in range(x.time):
            self.copy("load", Ref("ifmap", 0), self.step_addr(x_op, t), step_bytes(x))
            self.emit("vacc", dst=Ref("ofmap", 0), src=Ref("ifmap", 0), src_fmt=fmt(x.dtype), dst_fmt="i32", n=x.numel,
                      shift=0, accumulate=1)
        self.copy("store", _dram(self.addr(op)), Ref("ofmap", 0), 4 * x.numel)


def _io(graph: Graph, op: Op, **extra) -> dict:
    t = op.type
    stride = step_stride(graph, op)
    return dict(name=op.name, path=op.path, addr=value_addr(graph, op), shape=list(t.shape), time=t.time,
                step_stride=stride, step_bytes=step_bytes(t), bytes=stride * (t.time or 1) if stride else step_bytes(t),
                fmt=fmt(t.dtype), frac=t.dtype.frac, **extra)


def generate(graph: Graph, hw: HwConfig, options: dict, source: dict) -> Program:
    emit = _Emitter(graph, hw)
    for op in graph.ops:
        if isinstance(op, (Conv2d, Linear)):
            emit.conv(op)
        elif isinstance(op, (MaxPool, AvgPool)):
            emit.pool(op)
        elif is_elementwise(graph, op):
            emit.elementwise(op)
        elif isinstance(op, TimeReduce) and fused_consumer(graph, graph.op(op.inputs[0])) is None:
            emit.time_reduce(op)
    emit.code.append(Instr("halt", {}))
    code = place_tokens(emit.code, barriers=[layer["first_instr"] for layer in emit.layers[1:]])

    weights_end = 0
    blobs = []
    for op in graph.ops:
        if isinstance(op, (Conv2d, Linear)):
            bias = op.bias if op.bias is not None else np.zeros(op.weight.shape[0])
            blob = op.weight.astype(f"<i{op.weight.itemsize}").tobytes() + bias.astype("<i4").tobytes()
            blobs.append((op.wdram, blob))
            weights_end = max(weights_end, op.wdram + len(blob))
    data = bytearray(weights_end)
    for addr, blob in blobs:
        data[addr:addr + len(blob)] = blob
    stored = [op for op in graph.ops if op.dram is not None]
    dram_bytes = max([len(data)] + [op.dram + step_stride(graph, op) * (op.type.time or 1) for op in stored])
    meta = dict(
        ttc_version=VERSION, dram_bytes=dram_bytes, options=options, source=source, layers=emit.layers,
        **{note: graph.notes.get(note, {}) for note in ("counts", "factorize", "schedule", "ttfs", "decay")},
        inputs=[_io(graph, op, index=op.index, bits=op.type.dtype.bits) for op in graph.inputs],
        outputs=[_io(graph, graph.op(name), divide_by=output_divisor(graph, name)) for name in graph.outputs],
    )
    for io in meta["inputs"] + meta["outputs"]:
        if io["addr"] is None:
            raise ValueError(f"value %{io['name']} is an input or output but is not stored in DRAM")
    return Program(code=code, data=bytes(data), meta=meta, hw=hw)
