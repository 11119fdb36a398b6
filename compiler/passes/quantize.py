"""quantize: float IR -> the integer IR the hardware runs (docs/numerics.md).

* the input: `fix{input_bits}.{input_frac}`; the runtime rounds half to even and saturates;
* weights: `weight_bits`-bit integers with one power-of-two scale per layer, the largest that holds
  max|w|: w = q * 2^-weight_frac; the accumulator has the input's frac plus weight_frac; biases are
  rounded into the accumulator's format;
* neurons become `neuron_q`: the decay is the nearest m * 2^-k with m < 2^decay_bits (a shift when
  m = 1, exact when the decay is such a dyadic number); the state keeps `in_shift` guard bits, as many
  as T-1 exact decays need (k each) while the worst-case state still fits 32 bits; threshold, reset
  and initial values are rounded into the state's format.

Every integer's worst-case magnitude is tracked; a layer that could overflow its 32-bit accumulator
or state is an error naming the layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir import AvgPool, Conv2d, Graph, Input, IRError, Linear, Membrane, Neuron, NeuronQ, Op, TimeReduce, fix
from . import Pass, register

LIMIT = 1 << 31


def dyadic(value: float, bits: int) -> tuple[int, int]:
    """(m, k) with m * 2^-k the value nearest `value` in [0, 1], m < 2^bits, k as small as possible."""
    for k in range(bits + 1):
        scaled = value * (1 << k)
        if scaled == int(scaled) and scaled < 1 << bits:
            return int(scaled), k
    m, k = int(round(value * (1 << bits))), bits
    while m and m % 2 == 0:
        m, k = m // 2, k - 1
    return m, k


def weight_scale(w: np.ndarray, bits: int) -> int:
    """The largest frac such that round(max|w| * 2^frac) fits a signed `bits`-bit integer."""
    qmax = (1 << (bits - 1)) - 1
    peak = float(np.abs(w).max()) if w.size else 0.0
    if peak == 0.0:
        return 0
    frac = math.floor(math.log2(qmax / peak))
    while round(peak * 2.0 ** frac) > qmax:
        frac -= 1
    return max(-16, min(frac, 24))


def _round_to(value: float, frac: int) -> int:
    return int(np.rint(np.float64(value) * 2.0 ** frac))


@register
@dataclass
class Quantize(Pass):
    name = "quantize"
    weight_bits: int = 8
    input_bits: int = 16
    input_frac: int = 8
    decay_bits: int = 16

    def run(self, graph: Graph) -> Graph:
        if self.weight_bits != 8:
            raise IRError("the hardware stores 8-bit weights (weight_bits=8)")
        self.bound: dict[str, int] = {}
        self.state_frac: dict[str, int] = {}
        done: dict[str, Op] = {}
        for op in graph.ops:
            ins = [done[i] for i in op.inputs]
            op = self.quantize_op(op, ins)
            op.type = op.infer([i.type for i in ins])
            self.check(op, self.bound[op.name])
            done[op.name] = op
        graph.ops = list(done.values())
        return graph.infer_types()

    def check(self, op: Op, bound: int) -> None:
        if bound >= LIMIT:
            op.fail(f"values may reach {bound}, beyond a 32-bit accumulator; reduce input_frac or the layer's fan-in")

    def quantize_op(self, op: Op, ins: list[Op]) -> Op:
        b_in = self.bound[ins[0].name] if ins else 0
        if isinstance(op, Input):
            op.declared = op.declared.with_(dtype=fix(self.input_bits, self.input_frac))
            self.bound[op.name] = 1 << (self.input_bits - 1)
        elif isinstance(op, (Conv2d, Linear)):
            frac = weight_scale(op.weight, self.weight_bits)
            q = np.clip(np.rint(op.weight.astype(np.float64) * 2.0 ** frac), -128, 127).astype(np.int8)
            out_frac = ins[0].type.dtype.frac + frac
            bias = op.bias.astype(np.float64) if op.bias is not None else np.zeros(q.shape[0])
            bq = np.rint(bias * 2.0 ** out_frac)
            if np.abs(bq).max(initial=0) >= LIMIT:
                op.fail(f"bias {np.abs(bias).max()} does not fit 32 bits at 2^-{out_frac}")
            op.weight, op.weight_frac = q, frac
            op.bias = bq.astype(np.int32) if op.bias is not None else None
            fan_in = np.abs(q.astype(np.int64)).reshape(q.shape[0], -1).sum(axis=1)
            self.bound[op.name] = int((fan_in * b_in + np.abs(bq).astype(np.int64)).max())
        elif isinstance(op, Neuron):
            op = self.neuron(op, ins[0], b_in)
        elif isinstance(op, Membrane):
            op.frac = self.state_frac[op.inputs[0]]
            self.bound[op.name] = self.bound[("state", op.inputs[0])]
        elif isinstance(op, AvgPool):
            area = op.kernel * op.kernel
            if area & (area - 1):
                op.fail(f"a {op.kernel}x{op.kernel} average is not exact in fixed point (area not a power of two)")
            op.area_bits = area.bit_length() - 1
            self.bound[op.name] = b_in * area
        elif isinstance(op, TimeReduce):
            self.bound[op.name] = b_in * ins[0].type.time
        elif isinstance(op, NeuronQ):
            op.fail("is already quantized")
        else:  # max pooling, flatten, repeat: values pass through unchanged
            self.bound[op.name] = b_in
        return op

    def neuron(self, n: Neuron, x: Op, x_bound: int) -> NeuronQ:
        if n.input_gain != 1.0 or n.charge != 0.0:
            n.fail("input gain or charge left (run fold-neuron-input first)")
        frac, steps = x.type.dtype.frac, x.type.time
        mul, shift = dyadic(n.decay, self.decay_bits)
        guard = shift * (steps - 1) if 0 < mul < (1 << shift) else 0
        while True:
            sf = frac + guard
            theta, v_reset, v_init = (_round_to(v, sf) for v in (n.theta, n.v_reset, n.v_init))
            bound = steps * ((x_bound << guard) + abs(theta)) + abs(v_reset) + abs(v_init)
            if bound < LIMIT or guard == 0:
                break
            guard -= 1
        self.check(n, bound)
        self.state_frac[n.name] = sf
        self.bound[("state", n.name)] = bound
        self.bound[n.name] = 1
        return NeuronQ(name=n.name, inputs=n.inputs, path=n.path, theta=theta, v_reset=v_reset, v_init=v_init,
                       decay_mul=mul, decay_shift=shift, in_shift=guard, reset=n.reset, order=n.order, cmp=n.cmp)
