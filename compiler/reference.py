"""The quantized reference: the integer IR evaluated with PyTorch (integers held exactly in float64
and int64 tensors; TTFS spike times as the integers 2^(W-1-t) they stand for). It computes what the hardware must compute, independently of the code generator
and the simulator, so `ttc run --check` can hold the simulator to it bit for bit (DESIGN.md section 3).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ttc.isa.io import decode_output, encode_input
from ttc.isa.mt import fire, level_code
from ttc.isa.table import rescale
from ttc.isa.ttfs import fire_times, synapse_weights, time_values

from .ir import (Add, AvgPool, Conv2d, Fire, Flatten, Graph, Input, IRError, Linear, MaxPool, Membrane, NeuronQ, Op, Repeat,
                 Rescale, TimeConcat, TimeReduce, TimeSlice, TTConv2d)



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


def _decay(u: torch.Tensor, mul: int, shift: int) -> torch.Tensor:
    if shift == 0:
        return u * mul
    return (u * mul + (1 << (shift - 1))) >> shift


def neuron_steps(op: NeuronQ, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Level codes (spikes when K = 1) and states h of every step (int64 [T, B, ...]); the equations of
    ir.NeuronQ, the thresholds of ttc.isa.mt."""
    x = x.to(torch.int64)

    def fired(v):
        return fire(v, op.theta, op.levels, op.mode, op.cmp)

    def reset(u, planes, y):
        if op.reset == "hard":
            return torch.where(torch.stack(planes).any(0), torch.full_like(u, op.v_reset), u)
        return u - y if op.reset == "subtract" else u

    u = torch.full_like(x[0], op.v_init)
    codes, states = [], []
    for t in range(x.shape[0]):
        planes, y = fired(u)
        if op.order == "reset_decay":
            u = _decay(reset(u, planes, y), op.decay_mul, op.decay_shift)
        else:
            u = reset(_decay(u, op.decay_mul, op.decay_shift), planes, y)
        u = u + rescale(x[t], op.in_shift)
        codes.append(level_code(fired(u)[0], op.mode))
        states.append(u)
    return torch.stack(codes), torch.stack(states)


def evaluate(graph: Graph, inputs: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Every value of the quantized graph as integers, batch after time: [T, B, ...] or [B, ...]."""
    env: dict[str, torch.Tensor] = {}
    states: dict[str, torch.Tensor] = {}
    for op in graph.ops:
        x = env[op.inputs[0]] if op.inputs else None
        if isinstance(op, Input):
            dt = op.type.dtype
            env[op.name] = torch.from_numpy(encode_input(inputs[op.index], dt.bits, dt.frac)).to(torch.float64)
        elif isinstance(op, Repeat):
            env[op.name] = x.unsqueeze(0).expand(op.steps, *x.shape)
        elif isinstance(op, (Conv2d, Linear)) and op.log_scale is not None:
            env[op.name] = ttfs_layer(op, graph.op(op.inputs[0]).type.dtype.bits, x)
        elif isinstance(op, Conv2d):
            w, b = _f64(op.weight), _f64(op.bias)
            y = _per_step(lambda v: F.conv2d(v, w, None, op.stride, op.padding), x) * 2.0 ** op.shift
            env[op.name] = y if b is None else y + b.reshape(-1, 1, 1)
        elif isinstance(op, Linear):
            env[op.name] = F.linear(x, _f64(op.weight), _f64(op.bias))
        elif isinstance(op, TTConv2d):
            env[op.name] = tt_conv(op, x)
        elif isinstance(op, Add):
            b = env[op.inputs[1]]
            env[op.name] = (rescale(x.long(), op.shift_a) + rescale(b.long(), op.shift_b)).to(torch.float64)
        elif isinstance(op, Rescale):
            env[op.name] = rescale(x.long(), op.shift).to(torch.float64)
        elif isinstance(op, TimeSlice):
            env[op.name] = x[op.start:op.stop]
        elif isinstance(op, TimeConcat):
            env[op.name] = torch.cat([x, env[op.inputs[1]]])
        elif isinstance(op, NeuronQ):
            spikes, states[op.name] = neuron_steps(op, x)
            env[op.name] = spikes.to(torch.float64)
        elif isinstance(op, Fire):
            times = fire_times(x.long().numpy(), graph.op(op.inputs[0]).type.dtype.frac, op.window)
            env[op.name] = torch.from_numpy(time_values(times, op.window)).to(torch.float64)
        elif isinstance(op, Membrane):
            env[op.name] = states[op.inputs[0]].to(torch.float64)
        elif isinstance(op, MaxPool):
            env[op.name] = _per_step(lambda v: F.max_pool2d(v, op.kernel, op.stride), x)
        elif isinstance(op, AvgPool):
            env[op.name] = _per_step(lambda v: F.avg_pool2d(v, op.kernel, op.stride, divisor_override=1), x)
        elif isinstance(op, Flatten):
            env[op.name] = x.flatten(2)
        elif isinstance(op, TimeReduce):
            env[op.name] = x.sum(0)
        else:
            op.fail("has no quantized semantics (is the graph quantized?)")
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
