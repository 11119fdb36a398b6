"""quantize: float IR -> the integer IR the hardware runs (docs/numerics.md).

* the input: `fix{input_bits}.{input_frac}`; the runtime rounds half to even and saturates; an input
  that is only fired (TTFS) is `fix{input_bits}.{input_bits - 2}` instead (values from 1 up fire alike);
  an input declared as spikes (the input-encoding pass) stays `spike` (bound 1);
* weights: `weight_bits`-bit integers with one power-of-two scale per layer, the largest that holds
  max|w|: w = q * 2^-weight_frac; the accumulator has the input's frac plus weight_frac; biases are
  rounded into the accumulator's format;
* tensor-train cores: each core its own scale (G2 and G3 one shared scale where their results are
  added), at most `tt_core_bits` bits, fewer where the exact products of the four cores could
  overflow 32 bits (no rounding between cores: every contraction plan computes the same integers);
* residual adds: the operands meet at the coarser of their fracs (the finer is shifted right,
  rounding half up), no finer than keeps the sum within `stream_bits` bits;
* a conv of a multi-bit value whose sums could overflow 32 bits reads it through a `rescale` that
  rounds off as few low bits as it needs;
* a training step's layers (`training`) hold any weights of their format the update can reach, so their
  worst case is far above what they compute; a layer on multi-bit values is formatted instead for the
  largest sums the float network reaches on the calibration inputs (`calibration`, or `random_inputs`),
  with 2^FORWARD_HEADROOM to spare, and saturates its sums to 32 bits (`sat_bits`, exact below ACC_BITS):
  a chain of them (a tensor-train layer's cores) keeps its bits, where worst-case bounds would round a
  later core's input to nothing;
* a conv or add whose every reader is a conv is stored in 8 or 16 bits where its bound allows;
* TTFS (docs/ttfs.md): a layer on spike times keeps its weights as 5-bit log codes, which must already
  lie on that grid (powers of two within 2^14 of the largest: CAT training's `LogConv2d` /
  `LogLinear`), and accumulates exactly (the input's frac W-1 plus the codes' finest exponent, the
  bias rounded into that) where 32 bits hold the worst case, else with as many fractional bits as fit,
  the terms below the last dropped (noted per layer in graph.notes["ttfs"]); an average pool of spike times becomes such a conv (weights 1/k^2);
  `fire` reads whatever fixed point it is given;
* neurons become `neuron_q`: the decay is the nearest m * 2^-k with m < 2^decay_bits (a shift when
  m = 1, exact when the decay is such a dyadic number; a decay that is not, such as a trained PLIF's, is
  noted with its error in graph.notes["decay"]; decays per channel share the largest k any of them
  needs, each its own m); the state keeps `in_shift` guard bits, as many
  as T-1 exact decays need (k each), plus up to K-1 that make a cascade MT neuron's threshold halve
  exactly, while the worst-case state still fits 32 bits (negative: the
  input's lowest bits are rounded off, where even that is needed); threshold, reset and initial values
  are rounded into the state's format; an MT neuron's planes hold level codes up to K (parallel) or
  2^K - 1 (cascade), which its readers' bounds use.

Every integer's worst-case magnitude is tracked; a layer that could overflow its 32-bit accumulator
or state is an error naming the layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ttc.isa.mt import max_code
from ttc.isa.train import ACC_BITS
from ttc.isa.table import rescale
from ttc.isa.ttfs import ZERO_EXPONENT, synapse_weights

from ..ir import (Add, AvgPool, Concat, Conv2d, Fire, Graph, Input, IRError, Linear, Membrane, Neuron, NeuronQ, Op, Repeat,
                  Rescale, SPIKE, TimeConcat, TimeReduce, TTConv2d, fix, tconv_base)
from ..layout import ALIASES
from ..train import random_inputs
from ..train_float import float_values
from . import Pass, register, user_option

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


def quantize_weights(w: np.ndarray, frac: int, bits: int) -> np.ndarray:
    qmax = (1 << (bits - 1)) - 1
    return np.clip(np.rint(w.astype(np.float64) * 2.0 ** frac), -qmax - 1, qmax).astype(np.int8 if bits <= 8 else np.int16)


#: Training (docs/training.md): weights keep this many bits above the largest initial weight, room to grow
#: before the update saturates them.
TRAIN_HEADROOM = 2
#: Training: a layer on multi-bit values leaves this many bits above its calibrated sums before they saturate.
FORWARD_HEADROOM = 4


def conv_bounds(weight: np.ndarray, x_bound) -> np.ndarray:
    """Per output channel, the largest |sum| a conv of `weight` [Cout, Cin, ...] reaches on inputs
    bounded by `x_bound` (a scalar or one bound per input channel)."""
    w = np.abs(weight.astype(np.int64)).reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)
    x = np.broadcast_to(np.asarray(x_bound, dtype=object), (weight.shape[1],))
    if int(w.sum(axis=1).max(initial=0)) * int(x.max(initial=0)) < 1 << 62:  # no int64 sum can overflow
        return (w @ x.astype(np.int64)).astype(object)
    return w @ x  # Python integers


def tt_bounds(op: TTConv2d, x_bound: int) -> list[int]:
    """The largest magnitude of each intermediate of the core-by-core contraction and, last, of the
    result before the bias: sum |K| x_bound for the contracted kernel K (tighter than chaining the
    cores' bounds), on inputs bounded by x_bound."""
    g1, g2, g3, g4 = op.cores
    u = conv_bounds(g1, x_bound)
    if op.variant == "stt":
        v = conv_bounds(g2, u)
        inner = [u, v, conv_bounds(g3, v)]
    else:
        inner = [u, conv_bounds(g2, u), conv_bounds(g3, u), conv_bounds(g2, u) + conv_bounds(g3, u)]
    y = conv_bounds(contracted(op), x_bound)
    if op.variant == "htt":
        y = np.maximum(y, conv_bounds(contracted(op, late=True), x_bound) << op.late_shift())
    return [int(b.max()) for b in inner] + [int(y.max())]


def contracted(op: TTConv2d, late: bool = False) -> np.ndarray:
    """The integer kernel of all four cores: [Cout, Cin, 3, 3] (stt, ptt; exact, int64), or for htt's
    late steps (`late`) the 1x1 kernel G4 G1. Its fracs add up to the cores'."""
    g1, g4 = op.g1[:, :, 0, 0].astype(np.int64), op.g4[:, :, 0, 0].astype(np.int64)
    inner = np.eye(g1.shape[0], dtype=np.int64)[:, :, None, None] if late else middle(op)
    # pair by pair (matrix products), in float64 where that is exact: every partial sum's magnitude is
    # at most the bound below, and NumPy multiplies float64 (not int64) matrices with BLAS
    bound = int(np.abs(g4).sum(1).max()) * int(np.abs(inner).sum((1, 2, 3)).max()) * int(np.abs(g1).max(initial=0))
    exact = np.float64 if bound < 1 << 53 else np.int64
    kernel = np.einsum("or,rsuv,si->oiuv", g4.astype(exact), inner.astype(exact), g1.astype(exact), optimize=True)
    return kernel.astype(np.int64)


def middle(op: TTConv2d) -> np.ndarray:
    """G2 and G3 as one 3x3 R -> R kernel: their contraction (stt) or their cross-shaped sum (ptt)."""
    g2, g3 = (c.astype(np.int64) for c in op.cores[1:3])
    if op.variant == "stt":
        return np.einsum("osv,siu->oiuv", g3[:, :, 0, :], g2[:, :, :, 0])  # G3 after G2
    k = np.zeros(g2.shape[:2] + (3, 3), dtype=np.int64)
    k[:, :, :, 1] += g2[:, :, :, 0]
    k[:, :, 1, :] += g3[:, :, 0, :]
    return k


def stored_bits(bound: int) -> int:
    return 8 if bound < 1 << 7 else 16 if bound < 1 << 15 else 32


@register
@dataclass
class Quantize(Pass):
    name = "quantize"
    weight_bits: int = 8
    input_bits: int = user_option(16, "input_bits", "bits of the quantized input", choices=(8, 16, 32))
    input_frac: int = user_option(8, "input_frac", "fractional bits of the quantized input")
    decay_bits: int = 16
    tt_core_bits: int = user_option(8, "tt_core_bits", "most bits per tensor-train core; fewer where the cores' exact "
                                    "products would overflow")
    stream_bits: int = 32
    training: int = 0  # weights for a training step: this many bits, with headroom; bounds for any such weights
    calibration: object = None  # a training step's calibration inputs (None: random_inputs at calibration_density)
    calibration_density: float = 0.1

    def run(self, graph: Graph) -> Graph:
        if self.weight_bits != 8:
            raise IRError("the hardware stores 8-bit weights (weight_bits=8)")
        if self.training:
            self.weight_bits = self.training
        self.graph = graph
        self.sizes = self.calibrated_sizes(graph) if self.training else None
        self.bound: dict[str, int] = {}
        self.state_frac: dict[str, int] = {}
        for op in list(graph.ops):  # in program order: every operand is quantized before its readers
            quantized = self.quantize_op(op, [graph.op(i) for i in op.inputs])
            if quantized is not op:
                graph.replace_op(op, [quantized])
            op = quantized
            if isinstance(op, (Conv2d, Add)) and getattr(op, "log_scale", None) is None and graph.users(op.name) \
                    and op.name not in graph.outputs \
                    and all(isinstance(u, (Conv2d, Linear, TTConv2d)) for u in graph.users(op.name)):
                op.out_bits = stored_bits(self.bound[op.name])
            op.type = op.infer([graph.op(i).type for i in op.inputs])
            self.check(op, self.bound[op.name])
        return graph.infer_types()

    def calibrated_sizes(self, graph: Graph) -> dict[str, float] | None:
        """The largest |v| of every value of the float graph on the calibration inputs (None where the float
        network cannot be evaluated: the training step's checks then name what it cannot take)."""
        x, op = self.calibration, next((o for o in graph.ops if isinstance(o, Input)), None)
        if op is None:
            return None
        t = op.declared
        if x is None:
            x = random_inputs(t.time, t.shape, t.dtype == SPIKE, self.input_bits, self.input_frac,
                              self.calibration_density)
        elif x.shape[:1] + x.shape[2:] != (t.time,) + tuple(t.shape) and x.shape[1:] != tuple(t.shape):
            raise IRError(f"calibration data of shape {x.shape}: the model's input takes "
                          f"{'[T, N, ...]' if t.time is not None else '[N, ...]'} with T, ... = "
                          f"{((t.time,) if t.time is not None else ()) + tuple(t.shape)}")
        try:
            return float_values(graph, x)
        except IRError:
            return None

    def check(self, op: Op, bound: int) -> None:
        if bound >= LIMIT:
            op.fail(f"values may reach {bound}, beyond a 32-bit accumulator; reduce input_frac or the layer's fan-in")

    def quantize_op(self, op: Op, ins: list[Op]) -> Op:
        b_in = self.bound[ins[0].name] if ins else 0
        for name in ("weight", "bias"):
            values = getattr(op, name, None)
            if isinstance(values, np.ndarray) and values.dtype.kind == "f" and not np.isfinite(values).all():
                op.fail(f"has a {name} holding NaN or infinite values (after batch norm is folded in), which no "
                        "fixed-point format holds")
        if isinstance(op, Input) and op.declared.dtype == SPIKE:  # events (input-encoding): stored as they are
            self.bound[op.name] = 1
        elif isinstance(op, Input):
            frac = self.input_bits - 2 if self.only_fired(op) else self.input_frac
            op.declared = op.declared.with_(dtype=fix(self.input_bits, frac))
            self.bound[op.name] = 1 << (self.input_bits - 1)
        elif isinstance(op, AvgPool) and ins[0].type.dtype.kind == "ttfs":
            op = self.logarithmic(self.average_as_conv(op, ins[0]), ins[0])
        elif isinstance(op, (Conv2d, Linear)) and ins[0].type.dtype.kind == "ttfs":
            op = self.logarithmic(op, ins[0])
        elif isinstance(op, Fire):
            self.bound[op.name] = 1 << (op.window - 1)
        elif isinstance(op, (Conv2d, Linear)):
            frac = weight_scale(op.weight, self.weight_bits) - (TRAIN_HEADROOM if self.training else 0)
            q = quantize_weights(op.weight, frac, self.weight_bits)
            fan_in = np.abs(q.astype(np.int64)).reshape(q.shape[0], -1).sum(axis=1)
            if self.training:  # training changes the weights: bound the sums for any the format holds
                fan_in = np.full_like(fan_in, q[0].size << (self.weight_bits - 1))
            bias = op.bias.astype(np.float64) if op.bias is not None else np.zeros(q.shape[0])
            x = ins[0]
            # a training step's layer on multi-bit values: formatted for its calibrated sums, saturating
            size = self.sizes.get(op.name) if self.sizes is not None and x.type.dtype.kind == "fix" else None
            for shift in range(0, -32, -1) if x.type.dtype.kind == "fix" else (0,):  # spikes cannot be rescaled
                bq = np.rint(bias * 2.0 ** (x.type.dtype.frac + shift + frac))
                x_bound = rescale(b_in, shift)
                worst = int((fan_in * x_bound).max())
                biases = self.bias_reserve(op, min(worst, LIMIT - 1), bq)
                if size is None and worst + biases < LIMIT:
                    break
                if size is not None and worst + biases < 1 << (ACC_BITS - 1) and (
                        size * 2.0 ** (x.type.dtype.frac + shift + frac + FORWARD_HEADROOM) < LIMIT):
                    break
            if shift < 0:
                x = self.insert_rescale(op, x, shift, x_bound)
            if np.abs(bq).max(initial=0) >= LIMIT:
                op.fail(f"bias {np.abs(bias).max()} does not fit 32 bits at 2^-{x.type.dtype.frac + frac}")
            op.weight, op.weight_frac = q, frac
            op.bias = bq.astype(np.int32) if op.bias is not None else None
            if worst + biases >= LIMIT:  # (calibrated: the worst case fits the accumulator, the result saturates)
                op.sat_bits = 32
            self.bound[op.name] = min(worst + biases, LIMIT - 1)
        elif isinstance(op, TTConv2d):
            self.tensor_train(op, ins[0], b_in)
        elif isinstance(op, Add):
            self.add(op, ins, b_in)
        elif isinstance(op, TimeConcat):
            self.time_concat(op, ins)
        elif isinstance(op, Concat):
            self.bound[op.name] = max(b_in, self.bound[ins[1].name])
        elif isinstance(op, Neuron):
            op = self.neuron(op, ins[0], b_in)
        elif isinstance(op, Membrane):
            op.frac = self.state_frac[op.inputs[0]]
            self.bound[op.name] = self.bound[("state", op.inputs[0])]
        elif isinstance(op, AvgPool):
            if op.area & (op.area - 1):
                op.fail(f"a {op.kernel}x{op.kernel} average divides by {op.area}, which fixed point cannot do exactly "
                        "(not a power of two)")
            op.area_bits = op.area.bit_length() - 1
            self.bound[op.name] = b_in * op.kernel * op.kernel
        elif isinstance(op, TimeReduce):
            self.bound[op.name] = b_in * ins[0].type.time
        elif isinstance(op, NeuronQ):
            op.fail("is already quantized")
        else:  # max pooling, flatten, repeat: values pass through unchanged
            self.bound[op.name] = b_in
        return op

    def bias_reserve(self, op: Op, sums: int, bq: np.ndarray) -> int:
        """The largest |bias| a layer's bound allows for: its biases', or in training (the biases change) a
        power of two at least its weighted sums' bound, at which the update saturates them (recorded in
        graph.notes["train_bias_bits"] as the bias's signed width)."""
        peak = int(np.abs(bq).max(initial=0))
        if not self.training or op.bias is None:
            return peak
        bits = max(sums, peak).bit_length()
        self.graph.notes.setdefault("train_bias_bits", {})[op.name] = bits + 1
        return 1 << bits

    def only_fired(self, value: Op) -> bool:
        """Is `value` only ever fired (TTFS encoding, through repeats)? Then it needs no integer bits
        beyond the value 1 (all above 2^-1/2 fire at t = 0): every other bit is fraction, placing the
        rounding edges 2^-(k+1/2) of the grid as finely as the input width allows."""
        users = self.graph.users(value.name)
        return bool(users) and all(isinstance(u, Fire) or (isinstance(u, Repeat) and self.only_fired(u)) for u in users)

    def logarithmic(self, op: Conv2d | Linear, x: Op) -> Op:
        """A layer on spike times: its weights as log codes (they must be on the 5-bit grid) and its
        accumulator's format: exact (every term's bits kept) when that fits 32 bits, else as many
        fractional bits as fit, the terms below the last one dropped (noted in graph.notes["ttfs"])."""
        w = op.weight.astype(np.float64)
        live = w != 0
        mantissa, exponent = np.frexp(np.abs(w))
        if (mantissa[live] != 0.5).any():
            op.fail("reads TTFS spike times but its weights are not powers of two: train it with "
                    "ttc.frontends.ttfs.LogConv2d / LogLinear (5-bit logarithmic weights)")
        k = exponent - 1  # |w| = 2^k
        scale = int(k[live].max()) if live.any() else 0
        e = np.where(live, scale - k, ZERO_EXPONENT)
        if (e[live] >= ZERO_EXPONENT).any():
            op.fail(f"weights span more than 2^{ZERO_EXPONENT - 1}: not 5-bit logarithmic weights")
        op.weight = np.where(live, (w < 0).astype(np.int64) << 4 | e, ZERO_EXPONENT).astype(np.uint8)
        op.log_scale = scale
        exact = int(e[live].max()) - scale if live.any() else -scale
        bias = op.bias.astype(np.float64) if op.bias is not None else np.zeros(op.weight.shape[0])
        for weight_frac in range(exact, -scale - x.type.dtype.frac - 1, -1):
            op.weight_frac = weight_frac
            base, frac = tconv_base(op, x.type), x.type.dtype.frac + weight_frac
            per_spike = np.abs(synapse_weights(op.weight, base)).reshape(op.weight.shape[0], -1).sum(axis=1)
            bq = np.rint(bias * 2.0 ** frac)
            bound = int((per_spike + np.abs(bq)).max())  # every input spiking at t = 0 adds the most
            if bound < LIMIT and base < 32:
                break
        else:
            op.fail("its TTFS accumulator does not fit 32 bits even with no fractional bits")
        self.graph.notes.setdefault("ttfs", {})[op.path or op.name] = {
            "accumulator_frac": frac, "dropped_bits": exact - weight_frac, "scale": scale}
        op.bias = bq.astype(np.int32) if op.bias is not None else None
        self.bound[op.name] = bound
        return op

    @staticmethod
    def average_as_conv(pool: AvgPool, x: Op) -> Conv2d:
        """A k x k average of spike times as the conv of weights 1/k^2 from each channel to itself."""
        if pool.area != pool.kernel ** 2 or pool.area & (pool.area - 1):
            pool.fail(f"a TTFS average over {pool.area} inputs: the weight 1/{pool.area} is not a power of two")
        channels = x.type.shape[0]
        weight = np.zeros((channels, channels, pool.kernel, pool.kernel), dtype=np.float32)
        weight[np.arange(channels), np.arange(channels)] = 1.0 / pool.area
        return Conv2d(name=pool.name, inputs=pool.inputs, path=pool.path, weight=weight,
                      stride=(pool.stride, pool.stride))

    def insert_rescale(self, conv: Op, x: Op, shift: int, bound: int, out_bits: int | None = None, index: int = 0) -> Op:
        """Insert y = R(x, shift) before `conv` as its input `index`, stored in `out_bits` or as narrow as its
        bound allows."""
        name = self.graph.fresh(f"{conv.name}.rescale")
        r = Rescale(name=name, inputs=(x.name,), path=conv.path, shift=shift, out_bits=out_bits or stored_bits(bound))
        r.type = r.infer([x.type])
        self.graph.insert_before(conv, r)
        self.bound[name] = bound
        self.graph.set_inputs(conv, conv.inputs[:index] + (name,) + conv.inputs[index + 1:])
        return r

    def time_concat(self, op: TimeConcat, ins: list[Op]) -> None:
        """The steps of both parts in one format, each stored in the concatenation's place: a part in another
        format is rescaled to the coarser frac (and the wider width), and an alias (a time slice) is copied."""
        if all(i.type.dtype.kind == "fix" for i in ins):
            frac = min(i.type.dtype.frac for i in ins)
            bounds = [rescale(self.bound[i.name], frac - i.type.dtype.frac) for i in ins]
            bits = max(stored_bits(max(bounds)), *(i.type.dtype.bits for i in ins))
            for k, (part, bound) in enumerate(zip(ins, bounds)):
                if part.type.dtype != fix(bits, frac) or isinstance(part, ALIASES):
                    self.insert_rescale(op, part, frac - part.type.dtype.frac, bound, bits, index=k)
        elif any(isinstance(i, ALIASES) for i in ins) or ins[0].type.dtype != ins[1].type.dtype:
            op.fail("concatenates spikes of a time slice or in two formats: only multi-bit parts are copied or rescaled")
        self.bound[op.name] = max(self.bound[i] for i in op.inputs)

    def tensor_train(self, op: TTConv2d, x: Op, x_bound: int) -> None:
        """The most bits per core (at most tt_core_bits) whose exact core-by-core products fit 32 bits."""
        floats = op.cores
        for bits in range(self.tt_core_bits, 1, -1):
            f1, f4 = (weight_scale(c, bits) for c in (floats[0], floats[3]))
            f2, f3 = ((weight_scale(floats[1], bits), weight_scale(floats[2], bits)) if op.variant == "stt"
                      else (weight_scale(np.concatenate([floats[1].ravel(), floats[2].ravel()]), bits),) * 2)
            op.fracs = (f1, f2, f3, f4)
            op.g1, op.g2, op.g3, op.g4 = (quantize_weights(c, f, bits) for c, f in zip(floats, op.fracs))
            out_frac = op.result_frac(x.type.dtype.frac)
            bias = np.rint(op.bias.astype(np.float64) * 2.0 ** out_frac) if op.bias is not None else np.zeros(1)
            bounds = tt_bounds(op, x_bound)
            bounds[-1] += int(np.abs(bias).max())
            if max(bounds) < LIMIT:
                break
            op.g1, op.g2, op.g3, op.g4 = floats
        else:
            op.fail(f"its cores' exact products exceed 32 bits even at 2 bits per core (bounds {bounds})")
        op.bias = bias.astype(np.int32) if op.bias is not None else None
        self.bound[op.name] = bounds[-1]

    def add(self, op: Add, ins: list[Op], a_bound: int) -> None:
        fa, fb = (_frac_of(i) for i in ins)
        b_bound = self.bound[ins[1].name]
        real = a_bound * 2.0 ** -fa + b_bound * 2.0 ** -fb
        stream = math.floor(math.log2(((1 << (self.stream_bits - 1)) - 2) / real)) if real else 0
        aligned = min(fa, fb, stream)
        op.shift_a, op.shift_b, op.frac = aligned - fa, aligned - fb, aligned + op.halve
        self.bound[op.name] = sum(rescale(b, s) for b, s in ((a_bound, op.shift_a), (b_bound, op.shift_b)))

    def neuron(self, n: Neuron, x: Op, x_bound: int) -> NeuronQ:
        if n.input_gain != 1.0 or n.charge != 0.0:
            n.fail("input gain or charge left (run fold-neuron-input first)")
        if n.amplitude != 1.0:
            n.fail("spike amplitude left (run fold-spike-amplitude first)")
        if x.type.dtype.bits != 32:  # the neuron adds 32-bit accumulators: widen a narrow input
            x = self.insert_rescale(n, x, 0, x_bound, out_bits=32)
        frac, steps = x.type.dtype.frac, x.type.time
        mul, shift = self.decays(n)
        # T-1 exact decays need k bits each, for the channel that needs the most
        guard = shift * (steps - 1) if ((0 < mul) & (mul < (1 << shift))).any() else 0
        guard += _halving_bits(n, frac + guard)
        while True:
            sf = frac + guard
            theta, v_reset, v_init = (_round_to(v, sf) for v in (n.theta, n.v_reset, n.v_init))
            reach = abs(theta) * (n.levels if n.mode == "parallel" else 2)  # the most one reset subtracts
            bound = steps * (rescale(x_bound, guard) + reach) + abs(v_reset) + abs(v_init)
            if bound < LIMIT or guard <= -31:
                break
            guard -= 1
        self.check(n, bound)
        self.state_frac[n.name] = sf
        self.bound[("state", n.name)] = bound
        self.bound[n.name] = max_code(n.levels, n.mode)
        per_channel = isinstance(n.decay, np.ndarray)
        return NeuronQ(name=n.name, inputs=n.inputs, path=n.path, theta=theta, v_reset=v_reset, v_init=v_init,
                       decay_mul=mul if per_channel else int(mul), decay_shift=shift, in_shift=guard, reset=n.reset,
                       order=n.order, cmp=n.cmp, levels=n.levels, mode=n.mode)

    def decays(self, n: Neuron) -> tuple[np.ndarray, int]:
        """The decay multipliers (int32, one per channel or a 0-d array) and their one shift: every
        channel's dyadic decay m * 2^-k, brought to the largest k any channel needs (exact: m * 2^-k is
        (m << d) * 2^-(k+d), and the result still fits `decay_bits` because it is at most 2^k). A decay
        that is not dyadic is noted with its error (one note per layer, the worst channel's)."""
        values = np.asarray(n.decay, dtype=np.float64)
        pairs = [dyadic(float(v), self.decay_bits) for v in values.ravel()]
        shift = max(k for _, k in pairs)
        mul = np.array([m << (shift - k) for m, k in pairs], dtype=np.int32).reshape(values.shape)
        quantized = mul / float(1 << shift)
        if (quantized != values).any():  # a trained (PLIF) decay is rarely dyadic
            worst = int(np.abs(quantized - values).argmax())
            self.graph.notes.setdefault("decay", {})[n.path or n.name] = {
                "decay": float(values.ravel()[worst]), "quantized": float(quantized.ravel()[worst]),
                "error": float(np.abs(quantized - values).ravel()[worst])}
        return mul, shift


def _halving_bits(n: Neuron, frac: int) -> int:
    """Extra state bits that make a cascade's threshold divisible by 2^(K-1) (its halvings exact)."""
    if n.mode != "cascade":
        return 0
    need = 1 << (n.levels - 1)
    return next((g for g in range(n.levels) if _round_to(n.theta, frac + g) % need == 0), 0)


def _frac_of(op: Op) -> int:
    dtype = op.type.dtype
    if dtype.kind == "f32":
        op.fail("is a float operand of a quantized add")
    return dtype.frac
