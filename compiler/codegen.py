"""Code generation: an allocated, quantized IR graph -> a Program (code, DRAM data image, metadata).

Every layer's instructions are its plan's walk (`ttc.compiler.plan`), emitted in program order as if one
instruction ran at a time; `ttc.compiler.sync` then adds the dependency tokens that let the queues
overlap exactly as far as the data allows, with a barrier at the start of every layer.
"""
from __future__ import annotations

import numpy as np

from ttc.isa.encoding import Instr
from ttc.isa.errors import InternalError
from ttc.isa.hwconfig import HwConfig
from ttc.isa.program import Program, ttc_version

from .ir import Conv2d, Graph, Linear, NeuronQ, Op
from .layout import step_bytes, step_stride, value_addr
from .plan import layer_plan
from .reference import output_divisor
from .sync import place_tokens
from .tiling import fmt

def emit_layers(graph: Graph, hw: HwConfig) -> tuple[list[Instr], list[dict]]:
    """Every layer's walk in program order, and the layer table (where each layer's code starts)."""
    code: list[Instr] = []
    layers: list[dict] = []
    for op in graph.ops:
        plan = layer_plan(graph, op, hw, placed=True)
        if plan is None:
            continue
        head = plan.head
        layers.append(dict(name=head.name, path=head.path, op=plan.kind, type=str(head.type), first_instr=len(code),
                           **plan.info()))
        for step in plan.walk():
            code += step.instrs
    return code, layers


def io_record(graph: Graph, op: Op, **extra) -> dict:
    """How prog.bin describes a value in DRAM: its place, shape, steps and format."""
    t = op.type
    stride = step_stride(graph, op)
    return dict(name=op.name, path=op.path, addr=value_addr(graph, op), shape=list(t.shape), time=t.time,
                step_stride=stride, step_bytes=step_bytes(t), bytes=stride * (t.time or 1) if stride else step_bytes(t),
                fmt=fmt(t.dtype), frac=t.dtype.frac, **extra)


def generate(graph: Graph, hw: HwConfig, options: dict, source: dict) -> Program:
    code, layers = emit_layers(graph, hw)
    code = place_tokens(code + [Instr("halt", {})], barriers=[layer["first_instr"] for layer in layers[1:]])

    data_end = 0
    blobs = []
    for op in graph.ops:
        if isinstance(op, (Conv2d, Linear)):
            bias = op.bias if op.bias is not None else np.zeros(op.weight.shape[0])
            blob = op.weight.astype(f"<i{op.weight.itemsize}").tobytes() + bias.astype("<i4").tobytes()
            blobs.append((op.wdram, blob))
        elif isinstance(op, NeuronQ) and op.per_channel:  # read by each tile's nrn beside its states
            blobs.append((op.ddram, op.decays_per_neuron(op.type.shape).astype("<i4").tobytes()))
    for addr, blob in blobs:
        data_end = max(data_end, addr + len(blob))
    data = bytearray(data_end)
    for addr, blob in blobs:
        data[addr:addr + len(blob)] = blob
    stored = [op for op in graph.ops if op.dram is not None]
    dram_bytes = max([len(data)] + [op.dram + step_stride(graph, op) * (op.type.time or 1) for op in stored])
    meta = dict(
        ttc_version=ttc_version(), dram_bytes=dram_bytes, options=options, source=source, layers=layers,
        **{note: graph.notes.get(note, {}) for note in ("counts", "factorize", "schedule", "fusion", "ttfs", "decay")},
        inputs=[io_record(graph, op, index=op.index, bits=op.type.dtype.bits) for op in graph.inputs],
        outputs=[io_record(graph, graph.op(name), divide_by=output_divisor(graph, name)) for name in graph.outputs],
    )
    for io in meta["inputs"] + meta["outputs"]:
        if io["addr"] is None:
            raise InternalError(f"value %{io['name']} is an input or output but is not stored in DRAM")
    return Program(code=code, data=bytes(data), meta=meta, hw=hw)
