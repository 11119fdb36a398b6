"""ttc's IR: a dataflow graph of typed ops on per-sample tensors.

Values are per sample: the batch axis never appears (a batch runs in lock-step). A value is either a
time series `seqT<dtype[shape]>` (T per-step tensors, SpikingJelly's multi-step convention without the
batch axis) or a static tensor `dtype[shape]`. Element types: `f32` (float model), `spike` (0/1),
`fixB.F` (a B-bit two's-complement integer q standing for q * 2^-F), `ttfsW` (TTFS spike times in a window of
W steps, one per neuron, a time t standing for 2^-t, i.e. the integer 2^(W-1-t) at frac W-1; docs/ttfs.md),
`mtKp` / `mtKc` (the K spike planes of multi-threshold neurons, parallel or cascade: the level code q of
ttc.isa.mt, standing for q at frac 0 (parallel) or K-1 (cascade), in units of the neuron's threshold; docs/mt.md).

Every op is a dataclass that validates its operands and infers its result type (`infer`); the math
is in each docstring. `Graph.verify` runs between passes. Text form: `ttc.compiler.ir_text`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from ttc.isa.errors import UserError
from ttc.isa.table import MAX_LEVELS, MODES, conv_out
from ttc.isa.ttfs import MAX_WINDOW, ZERO_EXPONENT
from ttc.isa.train import BAND_MANTISSA_BITS, band_fields


class IRError(UserError, ValueError):
    """An IR that breaks a rule; the message names the op and its source path."""


# ----------------------------------------------------------------------------------------- types

@dataclass(frozen=True)
class DType:
    kind: str  # 'f32' | 'spike' | 'fix' | 'ttfs' | 'mt'
    bits: int = 0  # ttfs: the window; mt: the planes
    frac: int = 0

    def __post_init__(self):
        if self.kind not in ("f32", "spike", "fix", "ttfs", "mt"):
            raise IRError(f"unknown element type {self.kind!r}")
        if self.kind == "fix" and self.bits not in (8, 16, 32):
            raise IRError(f"fixed-point values are 8, 16 or 32 bits wide, not {self.bits}")
        if self.kind == "ttfs" and not (1 <= self.bits <= MAX_WINDOW and self.frac == self.bits - 1):
            raise IRError(f"a TTFS window is 1..{MAX_WINDOW} steps (frac window - 1), not {self.bits}")
        if self.kind == "mt" and not (2 <= self.bits <= MAX_LEVELS and self.frac in (0, self.bits - 1)):
            raise IRError(f"multi-threshold spikes have 2..{MAX_LEVELS} planes (frac 0 or planes - 1), not {self.bits}")

    @property
    def planes(self) -> int:
        """Spike bit-planes a value of this type is stored in (1 for plain spikes)."""
        return self.bits if self.kind == "mt" else 1

    @property
    def mode(self) -> str:
        """An mt value's planes: 'parallel' (thermometer) or 'cascade' (binary)."""
        return "cascade" if self.kind == "mt" and self.frac else "parallel"

    def __str__(self):
        return {"fix": f"fix{self.bits}.{self.frac}", "ttfs": f"ttfs{self.bits}",
                "mt": f"mt{self.bits}{self.mode[0]}"}.get(self.kind, self.kind)


F32 = DType("f32")
SPIKE = DType("spike")


def fix(bits: int, frac: int) -> DType:
    return DType("fix", bits, frac)


def ttfs(window: int) -> DType:
    return DType("ttfs", window, window - 1)


def spikes(levels: int, mode: str) -> DType:
    """What a neuron with `levels` thresholds emits: plain spikes, or mt planes."""
    return SPIKE if levels == 1 else DType("mt", levels, levels - 1 if mode == "cascade" else 0)


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[int, ...]
    time: int | None = None  # number of time steps; None for a static tensor

    def __post_init__(self):
        if any(d <= 0 for d in self.shape) or (self.time is not None and self.time <= 0):
            raise IRError(f"non-positive dimension in {self}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def with_(self, **changes) -> "TensorType":
        return TensorType(**{"dtype": self.dtype, "shape": self.shape, "time": self.time, **changes})

    def __str__(self):
        inner = f"{self.dtype}[{','.join(map(str, self.shape))}]"
        return inner if self.time is None else f"seq{self.time}<{inner}>"


# ------------------------------------------------------------------------------------------- ops

OPS: dict[str, type["Op"]] = {}


@dataclass(eq=False, kw_only=True)
class Op:
    """Base of all ops: `name` is the SSA value it defines, `inputs` the values it reads, `path` the
    qualified name of the source module (for errors and reports)."""

    name: str
    inputs: tuple[str, ...] = ()
    type: TensorType | None = None
    path: str = ""
    dram: int | None = None  # where the value lives in DRAM (set by the allocate pass; None if never stored)

    opname: ClassVar[str] = ""
    arity: ClassVar[int] = 1

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.opname:
            OPS[cls.opname] = cls

    def attrs(self) -> dict:
        skip = {"name", "inputs", "type", "path"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def where(self) -> str:
        return f"%{self.name} ({self.opname}{', from ' + repr(self.path) if self.path else ''})"

    def fail(self, msg: str):
        raise IRError(f"{self.where()}: {msg}")

    def infer(self, ins: list[TensorType]) -> TensorType:
        raise NotImplementedError(type(self).__name__)  # every concrete op overrides this

    def seq_input(self, t: TensorType) -> TensorType:
        if t.time is None:
            self.fail(f"needs a time series, got a static {t}")
        return t


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _accumulator(op: Op, x: TensorType, weight: np.ndarray, weight_frac: int | None, shift: int = 0,
                 out_bits: int = 32, log_scale: int | None = None, sat_bits: int | None = None) -> DType:
    """Result type of a conv or linear: float in, float out; integers in, the sums with the input's
    and the weight's fractional bits (plus `shift`), stored in `out_bits` (accumulated in 32). With
    `log_scale` s the weights are 5-bit log codes (TTFS, on a ttfs input): code e stands for the
    integer sign * 2^(weight_frac + s - e), so every non-zero e must be at most weight_frac + s."""
    if sat_bits is not None and (x.dtype.kind != "fix" or weight_frac is None or not 2 <= sat_bits <= out_bits):
        op.fail(f"saturates its sums to {sat_bits} bits: only a quantized layer on multi-bit values does, to at most "
                f"its {out_bits} stored bits")
    if log_scale is not None:
        if weight.dtype != np.uint8 or weight_frac is None:
            op.fail("logarithmic weights are u8 codes with a weight_frac")
        if x.dtype.kind != "ttfs":
            op.fail(f"logarithmic weights take TTFS spike times, not {x.dtype}")
        if (weight >= 32).any() or not 0 <= tconv_base(op, x) < 32:
            op.fail(f"weight codes outside 0..31, or the accumulator's base {tconv_base(op, x)} outside 0..31")
        if shift or out_bits != 32:
            op.fail("a TTFS layer accumulates in 32 bits, unshifted")
        return fix(32, x.dtype.frac + weight_frac)
    if weight_frac is None:
        if weight.dtype != np.float32:
            op.fail("float weights must be f32 (or give weight_frac for integer weights)")
        if x.dtype.kind == "fix":
            op.fail("float weights applied to a fixed-point input")
        if shift:
            op.fail("a float layer has no output shift")
        return F32
    if x.dtype.kind == "ttfs":
        op.fail("integer weights applied to TTFS spike times (they take 5-bit log weights: log_scale)")
    if weight.dtype not in (np.int8, np.int16):
        op.fail(f"quantized weights must be i8 or i16, not {weight.dtype}")
    if x.dtype.kind == "f32":
        op.fail("integer weights applied to a float input")
    if not 0 <= shift < 32:
        op.fail(f"output shift {shift} out of range")
    return fix(out_bits, x.dtype.frac + weight_frac + shift)


def live_synapses(op: "Conv2d | Linear") -> np.ndarray:
    """Where a quantized conv or linear has a non-zero weight (integer, or log code e < 15)."""
    return op.weight != 0 if op.log_scale is None else (op.weight & 0xF) != ZERO_EXPONENT


def tconv_base(op: "Conv2d | Linear", x: TensorType) -> int:
    """A TTFS layer's base: a spike at t through code e adds sign * 2^(base - e - t) to the accumulator
    (fix32 at frac = x's frac W-1 + weight_frac), dropped when base < e + t."""
    return x.dtype.frac + op.weight_frac + op.log_scale


def _check_bias(op: Op, bias, channels: int, weight_frac) -> None:
    if bias is None:
        return
    if bias.shape != (channels,):
        op.fail(f"bias of shape {bias.shape}, expected ({channels},)")
    want = np.float32 if weight_frac is None else np.int32
    if bias.dtype != want:
        op.fail(f"bias must be {np.dtype(want).name}")


@dataclass(eq=False, kw_only=True)
class Input(Op):
    """The model's forward input number `index`: `seqT<f32[...]>` laid out [T, B, ...] or static
    `f32[...]` laid out [B, ...]. Quantization turns it into `fixB.F`: the runtime feeds
    q = clamp(round_half_even(x * 2^F), -2^(B-1), 2^(B-1) - 1). An input declared as events (the
    input-encoding pass) is `spike` throughout: the runtime feeds it bit-packed and refuses any value
    but 0 and 1."""

    opname: ClassVar[str] = "input"
    arity: ClassVar[int] = 0
    index: int = 0
    declared: TensorType

    def infer(self, ins):
        if self.declared.dtype.kind not in ("f32", "fix", "spike"):
            self.fail(f"inputs are f32, fixed point or spikes, not {self.declared.dtype}")
        return self.declared


@dataclass(eq=False, kw_only=True)
class Repeat(Op):
    """Direct input coding: y[t] = x for t < steps (a static tensor repeated over time)."""

    opname: ClassVar[str] = "repeat"
    steps: int

    def infer(self, ins):
        (x,) = ins
        if x.time is not None:
            self.fail("input is already a time series")
        return x.with_(time=self.steps)


@dataclass(eq=False, kw_only=True)
class Conv2d(Op):
    """y[t,co,i,j] = b[co] + sum_{ci,u,v} w[co,ci,u,v] * x[t,ci,i*sh+u-ph,j*sw+v-pw] (zero padding).
    Quantized: w is i8 (or i16: a contracted tensor-train kernel) standing for w * 2^-weight_frac, the
    sums are shifted left by `shift` bits (y = b + (sum << shift)), b is i32 in the result's format, and
    the result is stored in `out_bits` (narrower than the 32-bit accumulator where the quantizer proves
    the values fit). TTFS (`log_scale` s set): x is spike times t (window W), w u8 codes sign << 4 | e
    standing for sign * 2^(s - e) (e = 15: zero), and the result at frac F = W - 1 + weight_frac is

        y = b + sum over spikes and codes of sign * 2^(base - e - t),  base = F + s  (`tconv_base`),

    each term dropped where base < e + t (below the accumulator's last bit): exact when weight_frac >= max e - s.

    `sat_bits` (a training step's layers on multi-bit inputs, whose sums are bounded for their calibrated size,
    not for every weight the update can reach): y = sat(b + (sum << shift)) to a signed integer of that many
    bits, the sum exact."""

    opname: ClassVar[str] = "conv2d"
    weight: np.ndarray
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    weight_frac: int | None = None
    shift: int = 0
    out_bits: int = 32
    log_scale: int | None = None
    sat_bits: int | None = None
    fused: str | None = None  # the neuron, firing, time reduction or residual add run inside this layer (fuse pass)
    wdram: int | None = None  # DRAM address of the weights, then the bias (allocate pass)
    tile: tuple[int, int, int] | None = None  # output channels, output rows, input channels per tile (tile pass)

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if self.weight.ndim != 4 or len(x.shape) != 3:
            self.fail(f"expects a [C,H,W] input and [Cout,Cin,kh,kw] weights, got {x} and {self.weight.shape}")
        cout, cin, kh, kw = self.weight.shape
        if x.shape[0] != cin:
            self.fail(f"input has {x.shape[0]} channels, weights expect {cin}")
        (sh, sw), (ph, pw) = _pair(self.stride), _pair(self.padding)
        _check_window(self, (kh, kw), (sh, sw), (ph, pw))
        oh, ow = conv_out(x.shape[1], kh, sh, ph), conv_out(x.shape[2], kw, sw, pw)
        if oh <= 0 or ow <= 0:
            self.fail(f"kernel {kh}x{kw} does not fit input {x.shape[1]}x{x.shape[2]}")
        _check_bias(self, self.bias, cout, self.weight_frac)
        dtype = _accumulator(self, x, self.weight, self.weight_frac, self.shift, self.out_bits, self.log_scale,
                             self.sat_bits)
        return x.with_(dtype=dtype, shape=(cout, oh, ow))


@dataclass(eq=False, kw_only=True)
class Linear(Op):
    """y[t,o] = b[o] + sum_i w[o,i] * x[t,i]. Quantized (and TTFS, and saturating) as conv2d."""

    opname: ClassVar[str] = "linear"
    weight: np.ndarray
    bias: np.ndarray | None = None
    weight_frac: int | None = None
    out_bits: int = 32
    log_scale: int | None = None
    sat_bits: int | None = None
    fused: str | None = None
    wdram: int | None = None
    tile: tuple[int, int, int] | None = None

    shift: ClassVar[int] = 0

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if self.weight.ndim != 2 or x.shape != (self.weight.shape[1],):
            self.fail(f"weights {self.weight.shape} do not take an input {x}")
        _check_bias(self, self.bias, self.weight.shape[0], self.weight_frac)
        dtype = _accumulator(self, x, self.weight, self.weight_frac, 0, self.out_bits, self.log_scale, self.sat_bits)
        return x.with_(dtype=dtype, shape=(self.weight.shape[0],))


TT_VARIANTS = ("stt", "ptt", "htt")


@dataclass(eq=False, kw_only=True)
class TTConv2d(Op):
    """A 3x3 convolution Cin -> Cout (stride 1, padding 1) factorised into tensor-train cores
    (TT-SNN), applied at every step as four convolutions without bias:

        G1 1x1 Cin -> R1,  G2 (3,1) R1 -> R2 (padding (1,0)),  G3 (1,3) R2 -> R3 (padding (0,1)),  G4 1x1 R3 -> Cout
        u = G1 * x[t]
        stt: y[t] = b + G4 * (G3 * (G2 * u))
        ptt: y[t] = b + G4 * ((G2 * u + G3 * u) / 2)
        htt: y[t] as ptt for t < T/2, y[t] = b + G4 * u for t >= T/2

    Quantized: each core is i8 with its own power-of-two scale, `fracs` = (f1, f2, f3, f4), f2 = f3 in
    ptt and htt; every product is exact (no rounding between cores), so the result has the input's
    frac plus f1 + f2 + f3 + f4 (stt) or f1 + f2 + 1 + f4 (ptt, htt: the /2 is one more fractional bit;
    htt's late steps are shifted left by f2 + 1 to match), and b is i32 in that format. ptt and htt
    add G2's and G3's results, so their three ranks are one R; stt's may differ (TT-SVD's do)."""

    opname: ClassVar[str] = "tt_conv2d"
    g1: np.ndarray
    g2: np.ndarray
    g3: np.ndarray
    g4: np.ndarray
    bias: np.ndarray | None = None
    variant: str = "stt"
    fracs: tuple[int, int, int, int] | None = None

    @property
    def cores(self) -> tuple[np.ndarray, ...]:
        return self.g1, self.g2, self.g3, self.g4

    @property
    def ranks(self) -> tuple[int, int, int]:
        return self.g1.shape[0], self.g2.shape[0], self.g3.shape[0]

    def late_shift(self) -> int:
        """htt: the left shift that puts G4 * u in the result's format."""
        return self.fracs[1] + 1

    def result_frac(self, x_frac: int) -> int:
        f1, f2, f3, f4 = self.fracs
        return x_frac + f1 + f4 + (f2 + f3 if self.variant == "stt" else f2 + 1)

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if self.variant not in TT_VARIANTS:
            self.fail(f"unknown variant {self.variant!r} (one of {', '.join(TT_VARIANTS)})")
        if len(x.shape) != 3:
            self.fail(f"expects a [C,H,W] input, got {x}")
        if x.dtype.kind == "mt":
            self.fail("reads multi-threshold spike planes: tensor-train layers take plain spikes or values")
        if any(c.ndim != 4 for c in self.cores):
            self.fail("cores must be 4-d convolution weights")
        (r1, cin), r2, r3 = self.g1.shape[:2], self.g2.shape[0], self.g3.shape[0]
        if self.variant != "stt" and not r1 == r2 == r3:
            self.fail(f"{self.variant} adds G2's and G3's results: its ranks must agree, got {r1}, {r2}, {r3}")
        want = {"g1": (r1, cin, 1, 1), "g2": (r2, r1, 3, 1), "g3": (r3, r2, 1, 3), "g4": (self.g4.shape[0], r3, 1, 1)}
        for core, shape in want.items():
            if getattr(self, core).shape != shape:
                self.fail(f"core {core} of shape {getattr(self, core).shape}, expected {shape}")
        if x.shape[0] != cin:
            self.fail(f"input has {x.shape[0]} channels, G1 expects {cin}")
        cout = self.g4.shape[0]
        _check_bias(self, self.bias, cout, self.fracs)
        if self.fracs is None:
            if any(c.dtype != np.float32 for c in self.cores) or x.dtype.kind == "fix":
                self.fail("a float tensor-train layer needs f32 cores and a float or spike input")
            return x.with_(dtype=F32, shape=(cout, *x.shape[1:]))
        if any(c.dtype != np.int8 for c in self.cores) or len(self.fracs) != 4:
            self.fail("quantized cores must be i8, with four fracs")
        if self.variant != "stt" and self.fracs[1] != self.fracs[2]:
            self.fail(f"{self.variant} adds G2's and G3's results: their fracs must agree, got {self.fracs}")
        if x.dtype.kind == "f32":
            self.fail("integer cores applied to a float input")
        return x.with_(dtype=fix(32, self.result_frac(x.dtype.frac)), shape=(cout, *x.shape[1:]))


@dataclass(eq=False, kw_only=True)
class BatchNorm(Op):
    """y[t,c,...] = (x[t,c,...] - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c] (inference
    statistics). Folded into the conv or linear before it by the fold-batchnorm pass."""

    opname: ClassVar[str] = "batchnorm"
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if x.dtype != F32:
            self.fail("batchnorm on a quantized value (it must be folded first)")
        for a in (self.weight, self.bias, self.mean, self.var):
            if a.shape != (x.shape[0],):
                self.fail(f"parameters of shape {a.shape} for {x.shape[0]} channels")
        return x


@dataclass(eq=False, kw_only=True)
class Neuron(Op):
    """A layer of spiking neurons, one update per time step (float semantics of the source model).

        u = state                               (state starts at v_init; it holds h of the last step)
        s = [u > theta] (cmp 'gt') or [u >= theta] (cmp 'ge')
        order 'reset_decay': u = decay * R(u, s);  order 'decay_reset': u = R(decay * u, s)
        R(u, s) = v_reset if s else u  (reset 'hard');  u - theta*s ('subtract');  u ('none')
        h = u + input_gain * x[t] + charge;   y[t] = [h cmp theta];   state = h

    TT-SNN mem_update is hard reset to 0 with order reset_decay; SpikingJelly LIFNode has
    decay = 1 - 1/tau, input_gain = 1/tau (decay_input), charge = v_reset/tau; snnTorch Leaky
    (subtract) is order decay_reset with decay = beta.

    Multi-threshold (MT-SNN, `levels` K > 1, reset 'subtract'; docs/mt.md): the compare is K compares
    (ttc.isa.mt.fire: 'parallel' against k*theta, 'cascade' against theta/2^(k-1) on the residual), y[t]
    is their K spike planes (`mtK`), standing for the level code q in units of theta, and the reset
    subtracts theta * q (parallel) or theta * q * 2^-(K-1) (cascade). Readers see y[t] times `amplitude`
    (an MT neuron passes on theta times its level; fold-spike-amplitude moves the factor into the
    readers' weights).

    `theta` may be one positive value per channel (a [C] array: snnTorch's per-neuron thresholds of a
    conv or linear layer): fold-neuron-input divides the channels of the layer feeding it by them.
    `decay` may be one value in [0, 1] per channel too (a float32 [C] array, C the first axis of a step,
    the features of a linear layer): the hardware neuron multiplies each state by its own decay."""

    opname: ClassVar[str] = "neuron"
    theta: float | np.ndarray
    decay: float | np.ndarray = 1.0
    v_reset: float = 0.0
    v_init: float = 0.0
    reset: str = "hard"
    order: str = "reset_decay"
    cmp: str = "gt"
    input_gain: float = 1.0
    charge: float = 0.0
    levels: int = 1
    mode: str = "parallel"
    amplitude: float = 1.0

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if self.reset not in ("hard", "subtract", "none") or self.order not in ("reset_decay", "decay_reset") \
                or self.cmp not in ("gt", "ge"):
            self.fail(f"unknown mode reset={self.reset} order={self.order} cmp={self.cmp}")
        decays = np.asarray(self.decay)
        if decays.ndim and decays.shape != x.shape[:1]:
            self.fail(f"decays per channel must be {x.shape[:1]} values, not {decays.shape}")
        if not ((decays >= 0.0) & (decays <= 1.0)).all():
            self.fail(f"decay {self.decay} is outside [0, 1]")
        if isinstance(self.theta, np.ndarray):
            if self.theta.shape != x.shape[:1] or not (self.theta > 0).all() or self.levels > 1:
                self.fail(f"thresholds per channel must be {x.shape[:1]} positive values of a one-threshold "
                          f"neuron, not {self.theta.shape}")
            return x.with_(dtype=spikes(self.levels, self.mode))  # v_init < every theta: fold-neuron-input checks
        _check_levels(self, self.theta)
        if not self.amplitude > 0:
            self.fail(f"spike amplitude {self.amplitude} is not positive")
        if x.dtype.kind != "f32":
            self.fail("a float neuron on a quantized input (quantize turns it into neuron_q)")
        fires_at_start = self.v_init > self.theta if self.cmp == "gt" else self.v_init >= self.theta
        if fires_at_start:
            self.fail(f"initial membrane {self.v_init} is already above threshold {self.theta}")
        return x.with_(dtype=spikes(self.levels, self.mode))


def _check_levels(op: Op, theta) -> None:
    if not 1 <= op.levels <= MAX_LEVELS or op.mode not in MODES:
        op.fail(f"levels {op.levels} (1..{MAX_LEVELS}) or mode {op.mode!r} (one of {', '.join(MODES)}) out of range")
    if op.levels > 1 and (op.reset != "subtract" or not theta > 0):
        op.fail(f"a multi-threshold neuron subtracts what it emits (reset 'subtract', not {op.reset!r}) and has a "
                f"positive threshold (not {theta})")


@dataclass(eq=False, kw_only=True)
class NeuronQ(Op):
    """The integer neuron the hardware runs (instruction `nrn`): as `neuron` with integers in the
    state format fix32.(F+in_shift) where F is the input's frac, input_gain = 1, charge = 0 and

        decay(u) = (u * decay_mul + 2^(decay_shift-1)) >> decay_shift   (u * decay_mul if decay_shift = 0)
        h = u + R(x[t], in_shift)     R(v, s) = v << s, or (v + 2^(-s-1)) >> -s for s < 0

    and, with `levels` K > 1, the K thresholds of ttc.isa.mt (cascade: theta_k = R(theta, -(k-1)));
    y[t] is the planes (`mtK`); the amplitude is 1 (folded into the readers).

    `decay_mul` may be one multiplier per channel (an int32 [C] array, one shared decay_shift): the
    allocate pass gives them, one i32 per neuron in the layer's [C, H, W] layout, a place in DRAM's data
    image (`ddram`), from which each tile loads its own beside its states (`nrn` per_neuron)."""

    opname: ClassVar[str] = "neuron_q"
    theta: int
    v_reset: int
    v_init: int
    decay_mul: int | np.ndarray
    decay_shift: int
    in_shift: int
    reset: str = "hard"
    order: str = "reset_decay"
    cmp: str = "gt"
    levels: int = 1
    mode: str = "parallel"
    tile: tuple[int] | None = None  # elements per chunk, when not fused with a conv (tile pass)
    ddram: int | None = None  # DRAM address of the decays per neuron, when per channel (allocate pass)
    band: int = 0  # training: the surrogate's band in state units, which a `tape` of it records (0: none)

    @property
    def per_channel(self) -> bool:
        return isinstance(self.decay_mul, np.ndarray)

    def decays_per_neuron(self, shape: tuple[int, ...]) -> np.ndarray:
        """The multiplier of every neuron of one step of `shape` ([C, H, W] or [F]), int32, C-major."""
        return np.broadcast_to(self.decay_mul.reshape(-1, *(1,) * (len(shape) - 1)), shape).astype(np.int32)

    def infer(self, ins):
        x = self.seq_input(ins[0])
        _check_levels(self, self.theta)
        if x.dtype.kind != "fix" or x.dtype.bits != 32:
            self.fail(f"input must be a 32-bit accumulator, got {x.dtype}")
        muls = np.asarray(self.decay_mul)
        if self.per_channel and (muls.shape != x.shape[:1] or muls.dtype != np.int32):
            self.fail(f"decay multipliers per channel must be {x.shape[:1]} int32 values, "
                      f"not {muls.dtype}{list(muls.shape)}")
        # one multiplier is nrn's 16-bit field; per-channel ones are i32 in memory, up to 2^16 (a decay of 1 beside
        # a channel that needs 16 fractional bits: a shift, never a multiply)
        if not ((0 <= muls).all() and (self.per_channel or muls < 1 << 16) and 0 <= self.decay_shift <= 16
                and -31 < self.in_shift < 31):
            self.fail("decay_mul, decay_shift or in_shift out of range")
        if (muls > 1 << self.decay_shift).any():
            self.fail("decay above 1")
        if self.band:
            mant, exp = band_fields(self.band) if self.band > 0 else (-1, 0)
            if mant << exp != self.band:
                self.fail(f"band {self.band} is not a {BAND_MANTISSA_BITS}-bit mantissa times a power of two (nrn's fields)")
        return x.with_(dtype=spikes(self.levels, self.mode))


@dataclass(eq=False, kw_only=True)
class Membrane(Op):
    """m[t] = the state h of the neuron op `inputs[0]` after step t (what snnTorch returns as mem)."""

    opname: ClassVar[str] = "membrane"
    frac: int | None = None

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if x.dtype.kind not in ("spike", "mt"):
            self.fail("membrane of a value that is not a neuron's spikes")
        return x.with_(dtype=F32 if self.frac is None else fix(32, self.frac))


@dataclass(eq=False, kw_only=True)
class Tape(Op):
    """a[t] = |h[t] - theta| < band: the active bits of the quantized neuron op `inputs[0]` (its state h
    after step t, its `band`), which the forward of a training step stores for the backward: the
    surrogate gradient is 1 where a neuron-step is active and 0 elsewhere (isa/train.py)."""

    opname: ClassVar[str] = "tape"

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if x.dtype.kind != "spike":
            self.fail("tape of a value that is not a one-threshold neuron's spikes")
        return x


@dataclass(eq=False, kw_only=True)
class Fire(Op):
    """TTFS firing (the CAT activation): one spike per neuron at

        t(x) = max(0, round(-log2 x))   if x > 0 and t(x) < window, else no spike;   y = 2^-t(x) (0: none)

    The result is the spike times, `ttfs{window}` (as a neuron's result is `spike` in float and
    quantized graphs alike). Quantized (fixed point in, x = a / 2^F), round(-log2 x) = F - round(log2 a)
    is integer arithmetic (ttc.isa.ttfs.fire_times)."""

    opname: ClassVar[str] = "fire"
    window: int

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if not 1 <= self.window <= MAX_WINDOW:
            self.fail(f"window {self.window} is not 1..{MAX_WINDOW}")
        if x.dtype.kind in ("spike", "ttfs", "mt"):
            self.fail(f"fires on values, not on {x.dtype}")
        return x.with_(dtype=ttfs(self.window))


def planes_only_to_layers(op: Op, x: TensorType) -> None:
    """MT spike planes are read by conv and linear layers (plane by plane, adds and shifts), nothing else."""
    if x.dtype.kind == "mt":
        op.fail(f"reads multi-threshold spikes ({x.dtype}), which only a conv or linear layer can read "
                "(pool, add or reduce the values before the neuron, or read the planes with a layer)")


def _check_window(op: Op, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]) -> None:
    """A sliding window covers at least one element, moves by at least one and pads by zero or more (a
    stride of 0 divides by zero in the output size)."""
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        op.fail(f"kernel {kernel}, stride {stride}, padding {padding}: a kernel and a stride are at least 1, "
                "a padding at least 0")


def _pool_out(op: Op, x: TensorType, k: int, s: int, pad: int = 0, ceil: bool = False) -> tuple[int, int, int]:
    """Output size as torch's pools: floor((n + 2 pad - k) / s) + 1, or with `ceil` rounded up while the
    last window starts inside the input or its left padding."""
    planes_only_to_layers(op, x)
    if len(x.shape) != 3:
        op.fail(f"pools a [C,H,W] tensor, got {x}")
    _check_window(op, (k,), (s,), (pad,))
    if not 0 <= pad <= k // 2:
        op.fail(f"padding {pad} is not between 0 and half the kernel {k}")
    c, h, w = x.shape

    def out(n):
        size = conv_out(n, k, s, pad) if not ceil else -(-(n + 2 * pad - k) // s) + 1
        return size - 1 if ceil and (size - 1) * s >= n + pad else size

    oh, ow = out(h), out(w)
    if oh <= 0 or ow <= 0:
        op.fail(f"kernel {k} does not fit {h}x{w}")
    return c, oh, ow


@dataclass(eq=False, kw_only=True)
class MaxPool(Op):
    """y[t,c,i,j] = max_{u,v<k} x[t,c,i*s+u,j*s+v] (on spikes: OR; on TTFS spike times: the earliest)."""

    opname: ClassVar[str] = "maxpool"
    kernel: int
    stride: int
    padding: int = 0  # torch's padding, on every side (the max ignores it: every window holds an input)
    ceil_mode: bool = False
    tile: tuple[int, int] | None = None  # channels, output rows per tile (tile pass)

    def tiles_input(self, x: "TensorType") -> bool:
        """Do its windows tile its input exactly (kernel = stride, no padding, every row and column in one
        window)? Then a conv's layer can pool its sums tile by tile (the fuse pass)."""
        return (self.kernel == self.stride and not self.padding and not self.ceil_mode and len(x.shape) == 3
                and x.shape[1] % self.kernel == 0 and x.shape[2] % self.kernel == 0)

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if (self.padding or self.ceil_mode) and x.dtype.kind in ("ttfs", "mt"):
            self.fail(f"pads {x.dtype} values (the machine pads spikes and integers only)")
        return x.with_(shape=_pool_out(self, x, self.kernel, self.stride, self.padding, self.ceil_mode))


@dataclass(eq=False, kw_only=True)
class AvgPool(Op):
    """y[t,c,i,j] = (1/d) sum_{u,v<k} x[t,c,i*s+u,j*s+v], d = `divisor` or k^2 (fold-global-pool sets a
    power-of-two d for an area that is not one, and scales the reader by d / k^2). Quantized
    (`area_bits` set) d must be a power of two, and this is exact: the integer sum, with
    area_bits = log2(d) more fractional bits."""

    opname: ClassVar[str] = "avgpool"
    kernel: int
    stride: int
    divisor: int | None = None
    area_bits: int | None = None
    tile: tuple[int, int] | None = None

    @property
    def area(self) -> int:
        return self.divisor or self.kernel * self.kernel

    def infer(self, ins):
        x = self.seq_input(ins[0])
        shape = _pool_out(self, x, self.kernel, self.stride)
        if self.area_bits is None:
            if x.dtype.kind == "fix":
                self.fail("a float average of a quantized input (quantize sets area_bits)")
            return x.with_(dtype=F32, shape=shape)
        if 1 << self.area_bits != self.area:
            self.fail(f"dividing by {self.area} is not exact in fixed point (not a power of two)")
        if x.dtype.kind == "ttfs":
            self.fail("a TTFS average is a conv of 2^-log2(k^2) weights (quantize lowers it so)")
        if x.dtype == SPIKE:  # sums of at most k^2 spikes
            return x.with_(dtype=fix(8 if self.kernel ** 2 < 128 else 16, self.area_bits), shape=shape)
        if x.dtype.kind != "fix":
            self.fail("a quantized average of a float input")
        return x.with_(dtype=fix(32, x.dtype.frac + self.area_bits), shape=shape)


@dataclass(eq=False, kw_only=True)
class Flatten(Op):
    """y[t] = x[t] flattened in C order (free: every tensor is stored C-major)."""

    opname: ClassVar[str] = "flatten"

    def infer(self, ins):
        x = self.seq_input(ins[0])
        return x.with_(shape=(x.numel,))


def _operand_frac(op: Op, t: TensorType) -> int:
    if t.dtype.kind in ("f32", "ttfs"):
        op.fail(f"a {t.dtype} operand (float, or spike times) in a quantized add")
    return t.dtype.frac  # spikes are integers: frac 0


@dataclass(eq=False, kw_only=True)
class Add(Op):
    """y[t] = (a[t] + b[t]) / 2^halve (a residual connection; halve = 1: PTT's mean of two branches).
    Quantized: y = R(a, shift_a) + R(b, shift_b) as fix{out_bits}.frac, where R(v, s) = v << s, or
    for s < 0 (v + 2^(-s-1)) >> -s (rounding half up); both operands land on frac - halve, and the
    halving is one more fractional bit."""

    opname: ClassVar[str] = "add"
    arity: ClassVar[int] = 2
    halve: int = 0
    shift_a: int = 0
    shift_b: int = 0
    frac: int | None = None
    out_bits: int = 32
    fused: str | None = None  # the neuron run on the sum, when the add is itself fused into its conv operand's layer
    tile: tuple[int] | None = None  # elements per chunk (tile pass)

    def infer(self, ins):
        a, b = (self.seq_input(t) for t in ins)
        if a.shape != b.shape or a.time != b.time:
            self.fail(f"operands {a} and {b} differ in shape or steps")
        if self.halve not in (0, 1):
            self.fail(f"halve is 0 or 1, not {self.halve}")
        for t in (a, b):
            planes_only_to_layers(self, t)
        if self.frac is None:
            if a.dtype.kind == "fix" or b.dtype.kind == "fix":
                self.fail("a float add of a quantized operand (quantize sets frac)")
            return a.with_(dtype=F32)
        for t, shift in ((a, self.shift_a), (b, self.shift_b)):
            if _operand_frac(self, t) + shift + self.halve != self.frac:
                self.fail(f"operand {t} shifted by {shift} does not land on frac {self.frac - self.halve}")
        return a.with_(dtype=fix(self.out_bits, self.frac))


@dataclass(eq=False, kw_only=True)
class Rescale(Op):
    """y[t] = R(x[t], shift) (R as in add): the quantizer's requantization of a multi-bit value, as
    fix{out_bits}.(frac + shift); a negative shift rounds off low bits."""

    opname: ClassVar[str] = "rescale"
    shift: int
    out_bits: int = 32
    tile: tuple[int] | None = None  # elements per chunk (tile pass)

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if x.dtype.kind != "fix":
            self.fail(f"rescales fixed-point values, not {x.dtype}")
        return x.with_(dtype=fix(self.out_bits, x.dtype.frac + self.shift))


@dataclass(eq=False, kw_only=True)
class TimeSlice(Op):
    """y[t] = x[start + t] for t < stop - start (free: it reads x's steps in place)."""

    opname: ClassVar[str] = "time_slice"
    start: int
    stop: int

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if not 0 <= self.start < self.stop <= x.time:
            self.fail(f"steps [{self.start}, {self.stop}) of a {x.time}-step series")
        return x.with_(time=self.stop - self.start)


@dataclass(eq=False, kw_only=True)
class TimeConcat(Op):
    """y = the steps of a, then the steps of b (free: a and b are stored in y's place)."""

    opname: ClassVar[str] = "time_concat"
    arity: ClassVar[int] = 2

    def infer(self, ins):
        a, b = (self.seq_input(t) for t in ins)
        if a.with_(time=b.time) != b:
            self.fail(f"operands {a} and {b} differ in type")
        return a.with_(time=a.time + b.time)


@dataclass(eq=False, kw_only=True)
class Concat(Op):
    """y[t] = the channels of a[t], then those of b[t] (torch.cat on the channel axis). Free: a and b
    are stored in y's place, each step of each at its channels' offset in y's step (so a spike part
    must end on a byte), and are read by nothing else."""

    opname: ClassVar[str] = "concat"
    arity: ClassVar[int] = 2

    def infer(self, ins):
        a, b = (self.seq_input(t) for t in ins)
        if a.dtype != b.dtype or a.time != b.time or a.shape[1:] != b.shape[1:] or not a.shape:
            self.fail(f"concatenates channels of operands of one type and size, not {a} and {b}")
        if a.dtype.planes > 1:
            self.fail(f"concatenates {a.dtype.planes}-plane (MT) values, whose planes are stored apart")
        return a.with_(shape=(a.shape[0] + b.shape[0], *a.shape[1:]))


@dataclass(eq=False, kw_only=True)
class TimeReduce(Op):
    """y = sum_t x[t] ('sum') or (1/T) sum_t x[t] ('mean'). Quantized, the hardware sums in a
    32-bit accumulator and the host divides by T when it decodes the output (exactly as float32
    `x.mean(0)` does after an exact sum), so a mean may only feed the graph's outputs."""

    opname: ClassVar[str] = "time_reduce"
    mode: str = "mean"

    def infer(self, ins):
        x = self.seq_input(ins[0])
        if self.mode not in ("sum", "mean"):
            self.fail(f"unknown mode {self.mode!r}")
        if x.dtype.kind == "ttfs":
            self.fail("sums spike times (reduce the accumulator they fire from instead)")
        planes_only_to_layers(self, x)
        if x.dtype.kind == "f32":
            return TensorType(F32, x.shape)
        return TensorType(fix(32, x.dtype.frac), x.shape)


#: What a conv or linear layer can run inside itself, on its sums, tile by tile (the fuse pass).
FUSABLE = (NeuronQ, Fire, TimeReduce, Add, MaxPool, Conv2d)  # what a conv or linear layer may run inside it (fuse)


def pointwise_rows(conv: "Conv2d") -> bool:
    """Does `conv` read each output row from that row of its input alone (kernel height 1, stride 1, no padding
    above), so that a producer conv can make its input tile by tile inside its layer (the fuse pass)?"""
    return conv.weight.shape[2] == 1 and conv.stride == (1, 1) and conv.padding[0] == 0

# ----------------------------------------------------------------------------------------- graph

@dataclass(eq=False)
class Graph:
    """Ops in program order (every operand defined before its use) and the values returned.

    Passes change a graph only through its def-use API (`append`, `insert_before`, `replace_op`,
    `erase`, `set_inputs`, `replace_all_uses_with`, `keep`), as torch.fx passes go through
    `Node.replace_all_uses_with`: it keeps the name and user indexes current, and `verify` checks that
    nothing changed the ops behind its back."""

    name: str
    ops: list[Op] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # what passes decided and why, for reports (not in the text form)

    def __post_init__(self):
        self._index: tuple[dict[str, Op], dict[str, list[Op]]] | None = None

    # ---- lookups (O(1) through an index rebuilt after each change)
    def _indexes(self) -> tuple[dict[str, Op], dict[str, list[Op]]]:
        if self._index is None:
            by_name, users = {}, {}
            for o in self.ops:
                by_name[o.name] = o
                for i in dict.fromkeys(o.inputs):
                    users.setdefault(i, []).append(o)
            self._index = by_name, users
        return self._index

    def defined_before(self, a: str, b: str) -> bool:
        """Is value `a` defined before value `b` (program order)?"""
        return next(name for name in self._indexes()[0] if name in (a, b)) == a != b

    def runs_add(self, conv: Op, add: "Add") -> bool:
        """Can `conv`'s layer run `add` (the fuse pass): it reads `conv` once, and its other operand is a
        fixed-point value defined before `conv` (ready when the layer runs)?"""
        if add.inputs.count(conv.name) != 1:
            return False
        other = next(i for i in add.inputs if i != conv.name)
        return self.defined_before(other, conv.name) and self.op(other).type.dtype.kind == "fix"

    def op(self, name: str) -> Op:
        found = self._indexes()[0].get(name)
        if found is None:
            raise IRError(f"no value %{name}")
        return found

    def has(self, name: str) -> bool:
        return name in self._indexes()[0]

    def users(self, name: str) -> list[Op]:
        """The ops that read `name`, in program order (each once)."""
        return list(self._indexes()[1].get(name, ()))

    def consumer(self, op: Op) -> Op | None:
        """The op fused into layer `op` (its `fused` field), if any."""
        fused = getattr(op, "fused", None)
        return self.op(fused) if fused else None

    def fused_into(self, op: Op) -> Op | None:
        """The op whose layer `op` runs inside (the operand that names it in its `fused` field), if it is a fused
        consumer: a conv for its neuron, firing, reduction or add, an add for the neuron after it."""
        return next((head for head in map(self.op, op.inputs) if getattr(head, "fused", None) == op.name), None)

    def only_user(self, name: str) -> Op | None:
        """The one op that reads `name` when it is not also a graph output, else None."""
        users = self.users(name)
        return users[0] if len(users) == 1 and name not in self.outputs else None

    # ---- the def-use API: every change to the ops goes through these
    def _changed(self) -> None:
        self._index = None

    def append(self, op: Op) -> Op:
        self.ops.append(op)
        self._changed()
        return op

    def insert_before(self, anchor: Op, op: Op) -> Op:
        self.ops.insert(self.ops.index(anchor), op)
        self._changed()
        return op

    def replace_op(self, old: Op, new: list[Op]) -> None:
        """Put `new` where `old` was; readers of `old` then read the last of `new` (which may keep its name)."""
        at = self.ops.index(old)
        self.ops[at:at + 1] = new
        self._changed()
        if new[-1].name != old.name:
            self.replace_all_uses_with(old.name, new[-1].name)

    def erase(self, op: Op) -> None:
        if self.users(op.name) or op.name in self.outputs:
            op.fail("is still read: replace its uses before erasing it")
        self.ops.remove(op)
        self._changed()

    def set_inputs(self, op: Op, inputs: tuple[str, ...]) -> None:
        op.inputs = tuple(inputs)
        self._changed()

    def replace_all_uses_with(self, old: str, new: str) -> None:
        """Every read of %old (and the graph's outputs) reads %new instead."""
        for o in self.users(old):
            o.inputs = tuple(new if i == old else i for i in o.inputs)
        self.outputs = [new if o == old else o for o in self.outputs]
        self._changed()

    def keep(self, predicate) -> None:
        """Drop every op for which `predicate(op)` is false (dead values)."""
        self.ops[:] = [o for o in self.ops if predicate(o)]
        self._changed()

    @property
    def inputs(self) -> list[Input]:
        return sorted((o for o in self.ops if isinstance(o, Input)), key=lambda o: o.index)

    def fresh(self, base: str) -> str:
        if not self.has(base):
            return base
        i = 1
        while self.has(f"{base}_{i}"):
            i += 1
        return f"{base}_{i}"

    def infer_types(self) -> "Graph":
        types: dict[str, TensorType] = {}
        for o in self.ops:
            missing = [i for i in o.inputs if i not in types]
            if missing:
                o.fail(f"reads %{missing[0]} before it is defined")
            if len(o.inputs) != o.arity:
                o.fail(f"takes {o.arity} operands, got {len(o.inputs)}")
            o.type = o.infer([types[i] for i in o.inputs])
            types[o.name] = o.type
        return self

    def _verify_fusion(self, o: Op) -> None:
        """A conv or linear runs inside it its only reader, a neuron, firing, time reduction, a residual add whose
        other operand is defined before it, a max pool whose windows tile its output, or a conv reading its rows
        one to one (which then makes the layer: the producer computed inside it); a fused add runs a neuron that
        reads it (the sum is stored too)."""
        consumer = self.op(o.fused) if self.has(o.fused) else None
        if isinstance(o, Add):
            if not (isinstance(consumer, NeuronQ) and consumer.inputs[0] == o.name and self.fused_into(o) is not None):
                o.fail(f"is fused with %{o.fused}, which is not a neuron reading it, or the add is not fused into a conv")
            return
        if not (consumer is not None and self.only_user(o.name) is consumer and isinstance(consumer, FUSABLE)):
            o.fail(f"is fused with %{o.fused}, which is not its only reader, or not a neuron, firing, time reduction, "
                   "add or max pool")
        if isinstance(consumer, MaxPool) and not (isinstance(o, Conv2d) and consumer.tiles_input(o.type)):
            o.fail(f"is fused with %{o.fused}, a max pool whose windows do not tile the conv's output")
        if isinstance(consumer, Conv2d) and not (isinstance(o, Conv2d) and pointwise_rows(consumer)
                                                 and self.fused_into(o) is None
                                                 and not isinstance(self.consumer(consumer), Conv2d)):
            o.fail(f"is fused with %{o.fused}, a conv that does not read its rows one to one, or a chain of more "
                   "than two convs")
        if isinstance(consumer, Add) and not self.runs_add(o, consumer):
            o.fail(f"is fused with %{o.fused}, whose other operand is not a fixed-point value defined before it")

    def verify(self) -> "Graph":
        """Names unique, operands defined before use, types as stored, means feed only outputs, and the
        def-use indexes current (no pass changed the ops behind the graph's API)."""
        if self._index is not None:
            stale, self._index = self._index, None
            if self._indexes() != stale:
                raise IRError(f"graph @{self.name}: ops changed behind the def-use API (a pass bug)")
        seen: dict[str, TensorType] = {}
        for o in self.ops:
            if o.name in seen:
                o.fail("redefines a value")
            for i in o.inputs:
                if i not in seen:
                    o.fail(f"reads %{i} before it is defined")
            if len(o.inputs) != o.arity:
                o.fail(f"takes {o.arity} operands, got {len(o.inputs)}")
            inferred = o.infer([seen[i] for i in o.inputs])
            if o.type != inferred:
                o.fail(f"type {o.type} but its operands give {inferred}")
            if isinstance(o, Membrane) and not isinstance(self.op(o.inputs[0]), (Neuron, NeuronQ)):
                o.fail("membrane of a value that no neuron op defines")
            if isinstance(o, Tape) and not (isinstance(self.op(o.inputs[0]), NeuronQ) and self.op(o.inputs[0]).band > 0):
                o.fail("tape of a value that no quantized neuron with a band defines")
            if getattr(o, "fused", None) is not None:
                self._verify_fusion(o)
            seen[o.name] = o.type
        if not self.outputs:
            raise IRError(f"graph @{self.name} has no outputs")
        for name in self.outputs:
            if name not in seen:
                raise IRError(f"graph @{self.name} returns undefined %{name}")
            if seen[name].dtype.kind == "mt":
                self.op(name).fail("returns multi-threshold spike planes: read them with a linear layer (a model "
                                   "returns values or plain spikes)")
        for o in self.ops:
            if isinstance(o, TimeReduce) and o.mode == "mean" and o.type.dtype.kind == "fix":
                if any(u for u in self.users(o.name)):
                    o.fail("a quantized mean over time may only feed the outputs")
        return self
