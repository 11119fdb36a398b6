"""Float64 autograd of a training step's network (docs/training.md): the network the integers of the
quantized graph (with its tapes) stand for, op by op, each value the float its integers stand for, every
conv and linear layer's weights and biases the parameters; the spike's gradient the rectangular surrogate
(1 inside the neuron's band), the reset detached. Where the forward rounds (a rescale, an add's alignment)
so does this network, the rounding's gradient taken as 1 (straight through), so its spikes are the
machine's.

Two uses: the check of the integer training reference (where no format rounds, the integer gradients equal
these exactly), and the calibration of the gradient formats (`ttc.compiler.train.plan_formats` sets every
gradient's binary point from how large these gradients are on a calibration batch)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .ir import Conv2d, Graph, Input, Linear, NeuronQ
from .reference import evaluate


class RectSpike(torch.autograd.Function):
    """H(v) forward (v > 0, or v >= 0), the rectangle |v| < band backward: the training step's surrogate."""

    @staticmethod
    def forward(ctx, v, band, inclusive):
        ctx.save_for_backward(v)
        ctx.band = band
        return (v >= 0 if inclusive else v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad * (v.abs() < ctx.band).to(grad.dtype), None, None


def float_neuron(z: torch.Tensor, decay: float, theta: float, band: float, reset: str, v_reset: float = 0.0,
                 v_init: float = 0.0, order: str = "reset_decay", cmp: str = "gt", frac: int | None = None) -> torch.Tensor:
    """The spikes [T, ...] of float neurons driven by z [T, ...], differentiable as the training step is: the
    rectangular surrogate (`RectSpike`) and the reset detached (ttc.compiler.ir.Neuron's equations). With
    `frac`, the decayed state and the input are rounded to it as the machine's neuron rounds them (where its
    state format has fewer guard bits than the decays need), straight through."""
    def rounded(v):
        return v if frac is None else _rounded(v, frac)

    u, s, spikes = torch.full_like(z[0], v_init), torch.zeros_like(z[0]), []
    for step in range(z.shape[0]):
        fired = s.detach()
        def after_reset(v):
            return v * (1 - fired) + v_reset * fired if reset == "hard" else v - theta * fired if reset == "subtract" else v
        u = rounded(decay * after_reset(u)) if order == "reset_decay" else after_reset(rounded(decay * u))
        u = u + rounded(z[step])
        s = RectSpike.apply(u - theta, band, cmp == "ge")
        spikes.append(s)
    return torch.stack(spikes)


def _rounded(v: torch.Tensor, frac: int) -> torch.Tensor:
    """v rounded half up to `frac` fractional bits (R of a rescale), its gradient passed straight through."""
    return v + (torch.floor(v * 2.0 ** frac + 0.5) * 2.0 ** -frac - v).detach()


def _saturated(v: torch.Tensor, bits: int, frac: int) -> torch.Tensor:
    """v clamped to what a signed integer of `bits` bits holds at `frac` (a saturating conv's sums), its gradient
    passed straight through."""
    top = ((1 << (bits - 1)) - 1) * 2.0 ** -frac
    return v + (v.clamp(-top, top) - v).detach()


def _channels(v, ndim: int):
    """A per-channel parameter (a [C] array) shaped to broadcast over a step's [B, C, ...]; a scalar as it is."""
    if np.ndim(v) == 0:
        return float(v)
    return torch.as_tensor(np.asarray(v, dtype=np.float64)).reshape(-1, *([1] * (ndim - 2)))


def _forward(graph: Graph, x: np.ndarray, parameter) -> dict[str, torch.Tensor]:
    """Every value of `graph` in float64, op by op ([T, B, ...] or [B, ...]): a quantized graph (with its tapes)
    as the network its integers stand for, rounding and saturating where its forward does (straight through), or
    a float graph (before quantize) as it is. `parameter(op, w, b)` gives a layer's weight and bias tensors from
    the floats they stand for (the training step's parameters)."""
    quantized = any(isinstance(op, NeuronQ) for op in graph.ops) or any(
        getattr(op, "weight_frac", None) is not None for op in graph.ops)
    env = evaluate(graph, [x]) if quantized else None
    values: dict[str, torch.Tensor] = {}
    for op in graph.ops:
        ins = [values.get(name) for name in op.inputs]
        if isinstance(op, Input):
            v = env[op.name] * 2.0 ** -op.type.dtype.frac if quantized else torch.from_numpy(np.asarray(x, np.float64))
        elif op.opname in ("flatten",):
            v = ins[0].flatten(2)
        elif op.opname == "rescale":
            v = _rounded(ins[0], op.type.dtype.frac)
        elif op.opname == "tape":
            v = ins[0]
        elif op.opname == "repeat":
            v = ins[0].unsqueeze(0).expand(op.steps, *ins[0].shape)
        elif isinstance(op, (Conv2d, Linear)):
            w = torch.from_numpy(op.weight.astype(np.float64))
            b = torch.from_numpy(op.bias.astype(np.float64)) if op.bias is not None else None
            if op.weight_frac is not None:
                w, b = w * 2.0 ** -op.weight_frac, b * 2.0 ** -op.type.dtype.frac if b is not None else None
            w, b = parameter(op, w, b)
            if isinstance(op, Linear):
                v = F.linear(ins[0], w, b)
            else:
                z = F.conv2d(ins[0].flatten(0, 1), w, b, stride=op.stride, padding=op.padding)
                v = z.reshape(*ins[0].shape[:2], *z.shape[1:])
            if op.sat_bits:
                v = _saturated(v, op.sat_bits, op.type.dtype.frac)
        elif op.opname == "neuron_q":
            frac = graph.op(op.inputs[0]).type.dtype.frac + op.in_shift
            v = float_neuron(ins[0], op.decay_mul / (1 << op.decay_shift), op.theta * 2.0 ** -frac, op.band * 2.0 ** -frac,
                             op.reset, op.v_reset * 2.0 ** -frac, op.v_init * 2.0 ** -frac, op.order, op.cmp, frac)
        elif op.opname == "neuron":  # a float graph's (one threshold: what the training step takes)
            ndim = ins[0].dim() - 1
            v = float_neuron(ins[0], _channels(op.decay, ndim), _channels(op.theta, ndim), 0.0, op.reset, op.v_reset,
                             op.v_init, op.order, op.cmp)
        elif op.opname == "maxpool":
            y = F.max_pool2d(ins[0].flatten(0, 1), op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode)
            v = y.reshape(*ins[0].shape[:2], *y.shape[1:])
        elif op.opname == "avgpool":
            y = F.avg_pool2d(ins[0].flatten(0, 1), op.kernel, op.stride, divisor_override=op.area)
            v = y.reshape(*ins[0].shape[:2], *y.shape[1:])
        elif op.opname == "add":
            a, c = ins if op.frac is None else (_rounded(i, op.frac - op.halve) for i in ins)
            v = (a + c) / (2 if op.halve else 1)
        elif op.opname == "time_slice":
            v = ins[0][op.start:op.stop]
        elif op.opname == "time_concat":
            v = torch.cat(ins)
        elif op.opname == "time_reduce":
            v = ins[0].mean(0)
        else:
            op.fail("has no float semantics for a training step")
        values[op.name] = v
    return values


def float_values(graph: Graph, x: np.ndarray) -> dict[str, float]:
    """The largest |v| of every value of a float graph (before quantize) on inputs x: what a training step's
    forward formats are calibrated for (`ttc.compiler.passes.quantize`)."""
    with torch.no_grad():
        return {name: float(v.abs().max()) if v.numel() else 0.0
                for name, v in _forward(graph, x, lambda op, w, b: (w, b)).items()}


def float_backward(graph: Graph, x: np.ndarray, labels: np.ndarray, loss: str, weights: dict | None = None,
                   biases: dict | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(dL/dW of every conv and linear layer of a quantized graph by its op's name, and dL/db keyed `name.bias`;
    dL/dv of every value v the loss depends on through a parameter, by its op's name, [T, B, ...]) for one batch,
    at the layers' integer `weights` and `biases` (those given; the graph's for the rest). L is the loss whose
    gradient the machine's e is: 1/2 sum (output - one-hot)^2 times (T / 2^ceil(log2 T))^2 ('mse'), or the
    softmax cross-entropy ('ce')."""
    params, weights, biases = {}, weights or {}, biases or {}

    def parameter(op, w, b):
        if op.name in weights:
            w = weights[op.name].double() * 2.0 ** -op.weight_frac
        params[op.name] = w = w.requires_grad_(True)
        if b is not None:
            if op.name in biases:
                b = biases[op.name].double() * 2.0 ** -op.type.dtype.frac
            params[f"{op.name}.bias"] = b = b.requires_grad_(True)
        return w, b

    values = _forward(graph, x, parameter)
    for v in values.values():
        if v.requires_grad:
            v.retain_grad()
    out, steps = values[graph.outputs[0]], graph.op(graph.op(graph.outputs[0]).inputs[0]).type.time
    if loss == "ce":
        total = F.cross_entropy(out, torch.from_numpy(labels), reduction="sum")
    else:
        target = torch.zeros_like(out)
        target[torch.arange(len(labels)), torch.from_numpy(labels)] = 1.0
        total = 0.5 * (steps / 2 ** math.ceil(math.log2(steps))) ** 2 * ((out - target) ** 2).sum()
    total.backward()
    return ({name: p.grad for name, p in params.items()},
            {name: v.grad for name, v in values.items() if v.requires_grad and v.grad is not None})


def float_gradients(graph: Graph, train: dict, x: np.ndarray, labels: np.ndarray,
                    weights: dict[str, torch.Tensor], biases: dict[str, torch.Tensor] | None = None) -> dict:
    """dL/dW (and dL/db, keyed `name.bias`) of every trained layer of a training-step program (`train`: its
    metadata) at the given integer weights and biases, by float64 autograd (`float_backward`)."""
    return float_backward(graph, x, labels, train["options"]["loss"], weights, biases)[0]
