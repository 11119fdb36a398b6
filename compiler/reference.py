"""The quantized reference: the integer IR evaluated with PyTorch (integers held exactly in float64
and int64 tensors; TTFS spike times as the integers 2^(W-1-t) they stand for). It computes what the
hardware must compute, independently of the code generator and the simulator, so `ttc run --check` can
hold the simulator to it bit for bit (DESIGN.md section 3). Like torch.fx's Interpreter, `evaluate`
walks the ops in order and runs each op kind's semantics from one table (`SEMANTICS`); the arithmetic
the machine defines (neuron step, rescaling, TTFS firing and synapses) comes from ttc.isa.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ttc.isa.io import decode_output, encode_input, spike_input
from ttc.isa.mt import level_code
from ttc.isa.neuron import PARAMS as NEURON_PARAMS, step as neuron_step
from ttc.isa.table import rescale
from ttc.isa.train import saturate
from ttc.isa.ttfs import fire_times, synapse_weights, time_values
from ttc.isa.train import active

from .ir import (Add, AvgPool, Conv2d, Fire, Flatten, Graph, Input, IRError, Linear, MaxPool, Membrane, NeuronQ, Op, Repeat,
                 Tape,
                 Rescale, TimeConcat, TimeReduce, TimeSlice, TTConv2d, Concat)


def _per_step(fn, x: torch.Tensor) -> torch.Tensor:
    t, b = x.shape[:2]
    y = fn(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


def _f64(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(a.astype(np.float64))


def tt_conv(op: TTConv2d, x: torch.Tensor) -> torch.Tensor:
    """The tensor-train layer core by core, exactly (integers in float64, every partial sum < 2^53)."""
    g1, g2, g3, g4 = (_f64(c) for c in op.cores)
    bias = _f64(op.bias)

    def steps(v):
        u = F.conv2d(v, g1)
        if op.variant == "stt":
            return F.conv2d(F.conv2d(F.conv2d(u, g2, padding=(1, 0)), g3, padding=(0, 1)), g4, bias)
        return F.conv2d(F.conv2d(u, g2, padding=(1, 0)) + F.conv2d(u, g3, padding=(0, 1)), g4, bias)

    if op.variant != "htt":
        return _per_step(steps, x)
    half = x.shape[0] // 2
    late = _per_step(lambda v: F.conv2d(F.conv2d(v, g1), g4), x[half:]) * 2.0 ** op.late_shift()
    if bias is not None:
        late = late + bias.reshape(-1, 1, 1)
    return torch.cat([_per_step(steps, x[:half]), late])


def ttfs_layer(op: Conv2d | Linear, window: int, x: torch.Tensor) -> torch.Tensor:
    """A TTFS conv or linear, spike time by spike time: the spikes at t (the inputs equal to 2^(W-1-t))
    each add synapse_weights(codes, base - t), exactly (integers in float64, every sum < 2^53)."""
    base = op.weight_frac + op.log_scale + window - 1
    y = 0
    for t in range(window):
        spikes = (x == 2.0 ** (window - 1 - t)).to(torch.float64)
        w = torch.from_numpy(synapse_weights(op.weight, base - t).astype(np.float64))
        y = y + (_per_step(lambda v: F.conv2d(v, w, None, op.stride, op.padding), spikes) if isinstance(op, Conv2d)
                 else F.linear(spikes, w))
    return y if op.bias is None else y + _f64(op.bias).reshape(-1, *(1,) * (len(op.type.shape) - 1))


def neuron_steps(op: NeuronQ, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Level codes (spikes when K = 1) and states h of every step (int64 [T, B, ...]): the machine's
    neuron step (ttc.isa.neuron) from the state v_init, once per time step; decays per channel are given
    to it as one per neuron (broadcast over the batch)."""
    x = x.to(torch.int64)
    u = torch.full_like(x[0], op.v_init)
    params = {p: getattr(op, p) for p in NEURON_PARAMS}
    if op.per_channel:
        params["decay_mul"] = torch.from_numpy(op.decays_per_neuron(tuple(x.shape[2:])).astype(np.int64))
    codes, states = [], []
    for t in range(x.shape[0]):
        planes, u = neuron_step(u, x[t], **params)
        codes.append(level_code(planes, op.mode))
        states.append(u)
    return torch.stack(codes), torch.stack(states)


@dataclass
class _Evaluation:
    """What the op semantics read besides their inputs' values: the graph (input formats), the inputs
    the graph is given, and the neuron states (for `Membrane`)."""

    graph: Graph
    inputs: list[np.ndarray]
    states: dict[str, torch.Tensor] = field(default_factory=dict)

    def input_dtype(self, op: Op):
        return self.graph.op(op.inputs[0]).type.dtype


def _input(ev: _Evaluation, op: Input) -> torch.Tensor:
    """What the runtime feeds the machine (ttc.isa.io): events as they are, checked to be 0/1; values
    rounded to the input's fixed point."""
    dt, x = op.type.dtype, ev.inputs[op.index]
    q = spike_input(x, op.path or op.name) if dt.kind == "spike" else encode_input(x, dt.bits, dt.frac)
    return torch.from_numpy(q).to(torch.float64)


def _weighted(dense):
    """A Conv2d or Linear: with log weights (TTFS) spike time by spike time, else `dense(op, x)`."""
    def semantics(ev: _Evaluation, op: Conv2d | Linear, x: torch.Tensor) -> torch.Tensor:
        return dense(op, x) if op.log_scale is None else ttfs_layer(op, ev.input_dtype(op).bits, x)
    return semantics


def _conv2d(op: Conv2d, x: torch.Tensor) -> torch.Tensor:
    w, b = _f64(op.weight), _f64(op.bias)
    y = _per_step(lambda v: F.conv2d(v, w, None, op.stride, op.padding), x) * 2.0 ** op.shift
    return _saturated(op, y if b is None else y + b.reshape(-1, 1, 1))


def _saturated(op: Conv2d | Linear, y: torch.Tensor) -> torch.Tensor:
    """A layer's sums as it stores them: saturated to sat_bits where it saturates (exact below 2^53 in float64,
    and the machine's accumulator holds ACC_BITS < 53 bits)."""
    return saturate(y, op.sat_bits)[0] if op.sat_bits else y


def _neuron_q(ev: _Evaluation, op: NeuronQ, x: torch.Tensor) -> torch.Tensor:
    codes, ev.states[op.name] = neuron_steps(op, x)
    return codes.to(torch.float64)


def _fire(ev: _Evaluation, op: Fire, x: torch.Tensor) -> torch.Tensor:
    times = fire_times(x.long().numpy(), ev.input_dtype(op).frac, op.window)
    return torch.from_numpy(time_values(times, op.window)).to(torch.float64)


def _integer(fn):
    """An op on the integers of its inputs (held as float64): fn(op, *int64 inputs) as float64."""
    return lambda ev, op, *xs: fn(op, *(x.long() for x in xs)).to(torch.float64)


#: The quantized semantics of each op kind: fn(evaluation, op, *input values) -> the op's value.
SEMANTICS = {
    Input: _input,
    Repeat: lambda ev, op, x: x.unsqueeze(0).expand(op.steps, *x.shape),
    Conv2d: _weighted(_conv2d),
    Linear: _weighted(lambda op, x: _saturated(op, F.linear(x, _f64(op.weight), _f64(op.bias)))),
    TTConv2d: lambda ev, op, x: tt_conv(op, x),
    Add: _integer(lambda op, a, b: rescale(a, op.shift_a) + rescale(b, op.shift_b)),
    Rescale: _integer(lambda op, x: rescale(x, op.shift)),
    TimeSlice: lambda ev, op, x: x[op.start:op.stop],
    TimeConcat: lambda ev, op, a, b: torch.cat([a, b]),
    Concat: lambda ev, op, a, b: torch.cat([a, b], dim=2),  # [T, B, C, ...]
    NeuronQ: _neuron_q,
    Fire: _fire,
    Membrane: lambda ev, op, spikes: ev.states[op.inputs[0]].to(torch.float64),
    Tape: lambda ev, op, spikes: active(ev.states[op.inputs[0]], ev.graph.op(op.inputs[0]).theta,
                                        ev.graph.op(op.inputs[0]).band).to(torch.float64),
    MaxPool: lambda ev, op, x: _per_step(lambda v: F.max_pool2d(v, op.kernel, op.stride, op.padding,
                                                                 ceil_mode=op.ceil_mode), x),
    AvgPool: lambda ev, op, x: _per_step(lambda v: F.avg_pool2d(v, op.kernel, op.stride, divisor_override=1), x),
    Flatten: lambda ev, op, x: x.flatten(2),
    TimeReduce: lambda ev, op, x: x.sum(0),
}


def evaluate(graph: Graph, inputs: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Every value of the quantized graph as integers, batch after time: [T, B, ...] or [B, ...]."""
    ev = _Evaluation(graph, inputs)
    env: dict[str, torch.Tensor] = {}
    for op in graph.ops:
        semantics = SEMANTICS.get(type(op))
        if semantics is None:
            op.fail("has no quantized semantics (is the graph quantized?)")
        env[op.name] = semantics(ev, op, *(env[name] for name in op.inputs))
        _check_range(op, env[op.name])
    return env


def _check_range(op: Op, v: torch.Tensor) -> None:
    bits = op.type.dtype.bits if op.type.dtype.kind == "fix" else 32
    if v.numel() and (v.max() >= 1 << (bits - 1) or v.min() < -(1 << (bits - 1))):
        peak = int(v.abs().max())
        raise IRError(f"{op.where()}: reached {peak}, beyond {bits} bits (a quantizer bound is wrong)")


def output_divisor(graph: Graph, name: str) -> int:
    op = graph.op(name)
    return graph.op(op.inputs[0]).type.time if isinstance(op, TimeReduce) and op.mode == "mean" else 1


def run_reference(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The graph's outputs, decoded exactly as the runtime decodes the machine's."""
    env = evaluate(graph, inputs)
    outs = []
    for name in graph.outputs:
        dt = graph.op(name).type.dtype
        q = env[name].numpy()
        outs.append(q.astype(np.float32) if dt.kind == "spike" else decode_output(q, dt.frac, output_divisor(graph, name)))
    return outs
