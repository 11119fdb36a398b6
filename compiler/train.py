"""Training steps (docs/training.md): the quantized graph of a model -> a training-step program.

A step runs a batch through three phases, each a list of layer plans walked in program order (the
training phases' plans: ttc.compiler.train_plan, which also generates the program):

    forward   the inference layers (ttc.compiler.plan), whose neurons also write their active bits
              (`tape` values): the spikes and the tape are what the backward reads, 1 bit per neuron-step
    backward  the loss gradient (mean squared error on chip against a target the host writes; or the softmax
              cross-entropy's, which the host computes between the forward and the backward), then the
              graph from the readout down (`plan_formats`), t = T-1 ... 0 inside each trained layer
              (BPTT): `nbwd` turns the spike gradients into membrane gradients, `wgrad` adds their weight
              gradient into the layer's accumulator (one per machine, shared by the samples), a transposed
              `dconv` gives the gradient of the layer's input; neurons on their own, average pools and the
              sums of forks' gradients between them
    update    once per batch: `sgd` moves every trained layer's weights by its accumulated gradient at a
              power-of-two learning rate, saturating, and clears the accumulator

The forward and backward run once per sample (the simulator runs the samples of a batch in lock-step,
the modelled machine one after another); the update runs once per batch, after its own `halt`.

Gradient formats. Every gradient is an i32 with a fixed binary point chosen here once, from a calibration
batch (`calibrate`: float64 autograd of the network on data the user gives, or on random inputs at the
options' spike density): each format puts the largest gradient measured there CAL_HEADROOM bits below
where it saturates (the membrane gradients g_h and the gradients a layer passes down saturate at GRAD_BITS
bits where they are made, nbwd and the transposed dconv, counted as `grad_saturated`; the weight-gradient
accumulators at 32 bits, WGRAD_HEADROOM bits above their measured sum). Formats set for the worst case
leave a deep chain (a tensor-train block's cores) no bits at all, and formats set by an estimate of each
layer's gains lose a few bits more at every layer down, which a residual network's first blocks cannot
spare. What the weight-gradient accumulators add is bounded by the gradients' widths, so no accumulator
can overflow; nothing else saturates but the weights.

    e        = out - T 2^F y: the loss gradient dL/dz[t] of every step's readout sums z[t], at frac
               F + 2 ceil(log2 T) (exactly dL/dz for L = 1/2 sum (mean_t z - y)^2 when T is a power of
               two; otherwise that loss times (T / 2^ceil(log2 T))^2)
    g_h[t]   = sat(R(g_s[t], src_shift) active[t] + G(s[t]) D(g_h[t+1])): src_shift gives the decays their
               guard bits (decay_shift per step back) as far as the width allows, so that with dyadic
               parameters nothing is rounded
    dW       = sum over samples and steps of R(x[t] g_h[t], wgrad_shift)   (one wgrad per step)
    g_s'[t]  = sat(R(W^T R(g_h[t], pre_shift), post_shift))    the layer below's spike gradients (the
               sums exact, at most ACC_BITS bits, then rounded: pre_shift is 0 unless they would be wider)
    w       -= R(dW, sgd_shift),  sgd_shift = F_w - lr_shift - frac(dW)

where every shift is the largest that is <= 0 (or <= the guard bits) and keeps its result's calibrated size
(with its headroom) below its width. With every rounding shift 0 the integer gradients equal float64 autograd of the same
network exactly (the surrogate 1 inside the band, the reset detached); the reference
(ttc.compiler.train_reference) computes them both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


from ttc.isa.hwconfig import HwConfig, multiply_action, neuron_update_actions
from ttc.isa.table import BY_NAME
from ttc.isa.train import ACC_BITS, band_fields

from .ir import (Add, AvgPool, Conv2d, Graph, Input, IRError, Linear, MaxPool, NeuronQ, Op, Tape, TimeConcat,
                 TimeReduce, TimeSlice)
from .tiling import fmt
from .train_float import float_backward

LIMIT_BITS = 31
#: Gradients (membrane gradients, the gradients layers pass down) saturate to this many bits (isa/train.py).
GRAD_BITS = 24
GRAD_MAX = (1 << (GRAD_BITS - 1)) - 1
#: A weight-gradient accumulator's shift leaves this many bits above its calibrated sum; it saturates (wgrad).
WGRAD_HEADROOM = 4
#: A gradient's format leaves this many bits above the largest value of it on the calibration batch.
CAL_HEADROOM = 3
#: The farthest right `sgd` shifts a weight gradient (the most negative value of its signed shift field):
#: finer weight-gradient formats are no use.
SGD_REACH = 1 << (next(f for f in BY_NAME["sgd"].fields if f.name == "shift").bits - 1)
#: Samples in the calibration batch made when the user gives none.
CAL_SAMPLES = 16


FORMS = ("auto", "explicit", "trace")
LOSSES = ("mse", "ce")
#: The softmax cross-entropy's gradient (p - y) / T, |p - y| <= 1, is held with this many fractional bits
#: (plus log2 T): the host rounds it half to even (`ce_gradient`).
CE_BITS = 20


class TrainError(IRError):
    """A model or option the training step cannot take (it names the layer)."""


@dataclass(frozen=True)
class TrainOptions:
    """`lr_shift`: the learning rate 2^-lr_shift, applied to the gradient summed over the batch.
    `band`: the rectangular surrogate's half-width as a fraction of the threshold (1 on |h - theta| <
    band theta). `sparse`: the backward skips the zero gradients outside the band (SSGD's active set):
    the same values, less work. `batch`: the largest batch a step takes (the weight-gradient bounds).
    `form`: how hidden layers' weight gradients are computed: 'explicit' (BPTT, any reset), 'trace'
    (SSGD's, where the reset is subtract or none) or 'auto' (per layer, the cheaper by `form_costs` at
    `densities`: the input spikes per neuron and step, and the active fraction)."""

    loss: str = "mse"
    lr_shift: int = 4
    surrogate: str = "rect"
    band: float = 1.0
    sparse: bool = False
    batch: int = 64
    weight_bits: int = 16
    form: str = "auto"
    spike_density: float = 0.1
    active_density: float = 0.1

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise TrainError(f"loss {self.loss!r}: 'mse' (the mean squared error, on the machine) or 'ce' (softmax "
                             "cross-entropy, its gradient computed by the host between the forward and the backward)")
        if self.surrogate != "rect":
            raise TrainError(f"surrogate {self.surrogate!r}: the tape holds one active bit per neuron-step, which is "
                             "the rectangular surrogate ('rect')")
        if self.form not in FORMS:
            raise TrainError(f"gradient form {self.form!r}: one of {', '.join(FORMS)}")
        if not (0 < self.spike_density <= 1 and 0 < self.active_density <= 1):
            raise TrainError(f"densities {self.spike_density}, {self.active_density}: each in (0, 1]")
        if self.weight_bits not in (8, 16):
            raise TrainError(f"weights of {self.weight_bits} bits: the machine stores 8- or 16-bit weights")
        if not 0 < self.band <= 64 or not 0 <= self.lr_shift <= 30 or not 1 <= self.batch <= 1 << 16:
            raise TrainError(f"band {self.band} (0 to 64), lr 2^-{self.lr_shift} (shift 0 to 30) or batch {self.batch} "
                             "(1 to 65536) out of range")


def fit_shift(bound: int, most: int = 0, roundings: int = 1, bits: int = LIMIT_BITS) -> int:
    """The largest shift <= `most` after which a sum of `roundings` rescaled terms whose magnitudes add up to
    at most `bound` stays below 2^bits (each R rounds up by at most one)."""
    shift = most
    while bound * 2.0 ** shift + roundings >= 1 << bits:
        shift -= 1
    return shift


def _qmax(op: Op) -> int:
    return (1 << (8 * op.weight.itemsize - 1))


@dataclass
class TrainedLayer:
    """One trained layer's geometry, formats and places: a conv or linear op (`name`; a linear layer is a 1x1
    conv of a 1x1 image) with its fused neuron (`neuron`), or without one (its output is read as it is), or
    the readout (summed over time). `grad_*` describe the gradient of its output sums (g_h, or e for the
    readout); `below_*` the gradient it gives its input. Fracs are those of the values' integers."""

    name: str  # the op's name in the graph
    path: str
    op: str  # linear or conv2d
    cin: int
    cout: int
    ih: int
    iw: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    wfmt: str
    weight_frac: int
    in_fmt: str  # its input: spikes, or multi-bit values
    input_grad: bool  # does the layer below need the gradient of this one's input
    readout: bool = False
    neuron: str | None = None  # the neuron op's name (a hidden layer with a neuron)
    tape: str | None = None
    pool: str | None = None  # the max pool of its spikes: its kernel, stride, padding and output size
    pool_k: int = 0
    pool_stride: int = 0
    pool_pad: int = 0
    pool_oh: int = 0
    pool_ow: int = 0
    grad_frac: int = 0
    grad_bound: int = 0
    src_shift: int = 0
    wgrad_shift: int = 0
    dw_frac: int = 0
    pre_shift: int = 0
    post_shift: int = 0
    below_frac: int = 0
    sgd_shift: int = 0
    form: str = "explicit"  # its weight gradient: explicit (x[t] g_h[t]) or trace (trace[t] D[t]); `form_costs`
    costs: dict | None = None  # the two forms' predicted backward energy (pJ per sample), where both apply
    trace_shift: int = 0  # trace form: the input trace's guard bits (trace[t] = D(trace[t-1]) + R(x[t], shift))
    trace_frac: int = 0
    bias: bool = False  # its bias (i32 at bias_frac, saturating to bias_bits) and dB = sum R(sum_yx g_h, db_shift)
    bias_frac: int = 0
    bias_bits: int = 0
    db_shift: int = 0
    db_frac: int = 0
    bias_sgd_shift: int = 0
    wdram: int = 0  # DRAM: its weights, its dW
    dw: int = 0
    grad_in: int = 0  # the gradient of its output (its neuron's spikes, or its sums): T steps, or 1 (constant)
    grad_in_steps: int = 0
    grad_out: int = 0  # the gradient of its input, which it writes for the layer below
    grad_out_steps: int = 0
    traces: int = 0  # trace form: the input traces of every step (i32)
    db: int = 0
    kind: str = "layer"

    @property
    def n_in(self) -> int:
        return self.cin * self.ih * self.iw

    @property
    def n_out(self) -> int:
        return self.cout * self.oh * self.ow

    @property
    def n_top(self) -> int:
        """The elements of its output as the layer above reads them (pooled, with a pool)."""
        return self.cout * self.pool_oh * self.pool_ow if self.pool else self.n_out

    @property
    def taps(self) -> int:
        return self.kh * self.kw


#: Ops a gradient passes through unchanged (the same integers: a rescale keeps the value it stands for).
PASS_THROUGH = ("flatten", "rescale", "repeat")


def _check(graph: Graph) -> None:
    """Refuse, naming the op, what a training step cannot take: it takes conv and linear layers, LIF/IF
    neurons (fused into the layer before them or on their own), max pools of a layer's spikes, average
    pools of spikes, residual adds (and the forks that feed them), time slices and concatenations (HTT's
    halves) and a linear readout summed or averaged over time, on one input."""
    if len(graph.outputs) != 1:
        raise TrainError(f"a training step needs a model with one output; this one has {len(graph.outputs)}")
    reduce = graph.op(graph.outputs[0])
    if not isinstance(reduce, TimeReduce) or not isinstance(graph.op(reduce.inputs[0]), Linear):
        reduce.fail("is the output: a training step needs a linear readout summed or averaged over time (TimeMean)")
    for op in graph.ops:
        if isinstance(op, (Input, Tape, Add, TimeSlice, TimeConcat)) or op.opname in PASS_THROUGH or op is reduce:
            continue
        if isinstance(op, (Linear, Conv2d)):
            if op.log_scale is not None:
                op.fail("has logarithmic weights (TTFS): training takes spiking layers")
        elif isinstance(op, NeuronQ):
            if op.per_channel or op.levels > 1:
                op.fail("has decays per channel or several thresholds: the training step takes one decay and one "
                        "threshold per layer so far")
        elif isinstance(op, MaxPool):
            if not isinstance(graph.op(op.inputs[0]), NeuronQ) or graph.op(graph.op(op.inputs[0]).inputs[0]).opname \
                    not in ("conv2d", "linear"):
                op.fail("max pools something other than the spikes of a conv's neuron: the training step routes a "
                        "max pool's gradient for those only so far")
        elif isinstance(op, AvgPool):
            if not isinstance(graph.op(op.inputs[0]), NeuronQ):
                op.fail("averages something other than spikes: the training step takes average pools of spikes")
        else:
            op.fail(f"is a {op.opname}: the training step takes conv and linear layers with LIF/IF neurons, max and "
                    "average pools of spikes, residual adds, time slices and concatenations and a linear readout so far")


def _source(graph: Graph, name: str) -> Op:
    """The op whose value `name` is, through flattens and rescales (what a gradient reaches unchanged)."""
    op = graph.op(name)
    while op.opname in PASS_THROUGH:
        op = graph.op(op.inputs[0])
    return op


def add_tapes(graph: Graph, band: float) -> Graph:
    """Every trained neuron records its active bits: its band (`band` times its threshold) in state units,
    rounded to what nrn holds, and a `tape` value the forward stores."""
    _check(graph)
    for neuron in [op for op in graph.ops if isinstance(op, NeuronQ)]:
        mant, exp = band_fields(max(1, int(round(band * abs(neuron.theta)))))
        neuron.band = mant << exp
        graph.append(Tape(name=graph.fresh(f"{neuron.name}_tape"), inputs=(neuron.name,), path=f"{neuron.path}.tape"))
    return graph.infer_types()


def decay_sum(neuron: NeuronQ, steps: int) -> float:
    d = neuron.decay_mul / (1 << neuron.decay_shift)
    return sum(d ** j for j in range(steps))


def _layer(graph: Graph, op: Op, input_grad: bool, readout: bool) -> TrainedLayer:
    x = graph.op(op.inputs[0])
    if isinstance(op, Linear):
        (cout, cin), geometry = op.weight.shape, dict(ih=1, iw=1, oh=1, ow=1, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0)
    else:
        cout, cin, kh, kw = op.weight.shape
        geometry = dict(ih=x.type.shape[1], iw=x.type.shape[2], oh=op.type.shape[1], ow=op.type.shape[2], kh=kh, kw=kw,
                        sh=op.stride[0], sw=op.stride[1], pt=op.padding[0], pl=op.padding[1])
    return TrainedLayer(name=op.name, path=op.path, op=op.opname, cin=cin, cout=cout, wfmt=f"i{8 * op.weight.itemsize}",
                        weight_frac=op.weight_frac, in_fmt=fmt(x.type.dtype), input_grad=input_grad, readout=readout,
                        wdram=op.wdram or 0, **geometry)


def form_costs(r: TrainedLayer, neuron: NeuronQ, x: Op, options: TrainOptions, steps: int, hw: HwConfig) -> dict:
    """The predicted energy (pJ per sample) of layer r's weight gradient in each form, at the options'
    densities (SSGD's trade: the explicit form pairs the input with every non-zero g_h, adds on spikes; the
    trace form pairs the dense multi-bit traces with D, non-zero only where active, by multiplies, and
    computes and stores the traces):

        explicit  pairs x rho_x x rho_gh x (add, or multiply-add on a multi-bit input)
        trace     pairs x rho_trace x rho_D x multiply-add + per input and step a neuron update and a
                  32-bit trace stored and loaded, + per output and step a second nbwd (D) where the layer
                  below needs g_h

    pairs = cout cin kh kw oh ow per step; with a dense backward (no active band) every gradient counts."""
    e = hw.energy_pj
    spikes = r.in_fmt == "spike"
    rho_x = options.spike_density if spikes else 1.0
    rho_d = options.active_density if options.sparse else 1.0
    rho_gh = min(1.0, rho_d * decay_sum(neuron, steps)) if options.sparse else 1.0
    rho_trace = min(1.0, rho_x * steps) if spikes else 1.0
    pairs = r.cout * r.cin * r.taps * r.oh * r.ow * steps
    mac32 = e[multiply_action("i32", r.wfmt)] + e["add32"]
    explicit = pairs * rho_x * rho_gh * (e["add32"] if spikes else e[multiply_action(r.in_fmt, r.wfmt)] + e["add32"])
    nrn = sum(c * e.get(a, 0.0) for a, c in neuron_update_actions("none", 1, neuron.decay_mul, neuron.decay_shift).items())
    moved = hw.access_pj("dram", "write", 4 * r.n_in) + hw.access_pj("dram", "read", 4 * r.n_in)
    trace = pairs * rho_trace * rho_d * mac32 + steps * r.n_in * (nrn + e["add32"]) + steps * moved
    if r.input_grad:
        trace += steps * r.n_out * nrn
    return {"explicit": explicit, "trace": trace}


@dataclass
class Calibration:
    """How large the gradients are on a calibration batch (float64 autograd, `float_backward`): the largest
    |dL/dv| of every value v (by op name, over its steps and samples) and of every layer's dL/dW and dL/db
    (by op name and `name.bias`, summed over the batch as the accumulators sum it, scaled to the options'
    batch). `source` says what the batch was."""

    values: dict[str, float]
    params: dict[str, float]
    source: str

    def value(self, name: str, frac: int) -> float:
        """The largest |dL/dv| of value `name` in integer units of a gradient at `frac`."""
        return self.values.get(name, 0.0) * 2.0 ** frac

    def param(self, name: str, frac: int) -> float:
        return self.params.get(name, 0.0) * 2.0 ** frac


def random_inputs(time: int | None, shape: tuple, spike: bool, bits: int, frac: int, density: float,
                  seed: int = 0) -> np.ndarray:
    """CAL_SAMPLES random inputs laid out as a model's ([T, N, ...] or [N, ...]): spikes at `density`, or
    fixed-point values uniform over a quarter of the fix{bits}.{frac} format's positive range. The calibration
    batch of a training step when the user gives none (its forward's formats and its gradients')."""
    rng = np.random.default_rng(seed)
    layout = ((time,) if time is not None else ()) + (CAL_SAMPLES,) + tuple(shape)
    if spike:
        return (rng.random(layout) < density).astype(np.float32)
    return rng.uniform(0, 2.0 ** (bits - 3 - frac), layout).astype(np.float32)


def calibrate(graph: Graph, options: TrainOptions, data: tuple[np.ndarray, np.ndarray] | None = None,
              seed: int = 0) -> Calibration:
    """The gradients' sizes on `data` (inputs laid out as the model's input, integer labels), or on
    `random_inputs` with random labels."""
    x_op = next(op for op in graph.ops if isinstance(op, Input))
    time = (x_op.type.time,) if x_op.type.time is not None else ()
    classes = graph.op(graph.outputs[0]).type.shape[0]
    if data is None:
        dt = x_op.type.dtype
        x = random_inputs(x_op.type.time, x_op.type.shape, dt.kind == "spike", dt.bits, dt.frac, options.spike_density,
                          seed)
        labels = np.random.default_rng(seed).integers(0, classes, CAL_SAMPLES)
        source = f"{CAL_SAMPLES} random samples (seed {seed})"
    else:
        x, labels = np.asarray(data[0]), np.asarray(data[1])
        layout = time + (len(labels),) + tuple(x_op.type.shape)
        if x.shape != layout:
            raise TrainError(f"calibration data of shape {x.shape} for {len(labels)} labels: the model's input takes "
                             f"{'[T, N, ...]' if time else '[N, ...]'} = {layout}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.min(initial=0) < 0 or labels.max(initial=0) >= classes:
            raise TrainError(f"calibration labels must be class indices 0 to {classes - 1} (one per sample)")
        source = f"{len(labels)} samples of data"
    params, values = float_backward(graph, x, labels.astype(np.int64), options.loss)
    scale = options.batch / len(labels)
    return Calibration({name: float(g.abs().max()) for name, g in values.items()},
                       {name: float(g.abs().max()) * scale for name, g in params.items()}, source)


@dataclass
class Grad:
    """A gradient in DRAM: its frac, what it can reach (`bound`), its steps (as many as the value's it covers,
    or 1 when the same at every one of them), its place, and the steps of the value it covers ([start, stop):
    a time slice's gradient covers the slice's steps; stop None: to the value's last)."""

    frac: int
    bound: int
    steps: int
    addr: int
    start: int = 0
    stop: int | None = None


@dataclass
class NeuronNode:
    """A neuron on its own (its input a multi-bit value: a residual stream): nbwd turns the gradient of its
    spikes into its membranes' g_h, which is the gradient of its input."""

    name: str
    path: str
    n: int
    tape: str
    src_shift: int
    grad_in: int
    grad_in_steps: int
    grad_out: int
    kind: str = "neuron"


@dataclass
class PoolNode:
    """An average pool of spikes: every input gets its window's gradient (pbwd avg); the 1/area is area_bits
    more fractional bits."""

    name: str
    path: str
    channels: int
    ih: int
    iw: int
    oh: int
    ow: int
    k: int
    stride: int
    grad_in: int
    grad_in_steps: int
    grad_out: int
    kind: str = "avgpool"


@dataclass
class SumNode:
    """The gradient of a value several ops read (a fork, HTT's time slices): the sum of their gradients, each
    rescaled to the coarsest frac, parts = [[address, steps, shift, start, stop], ...], each covering the
    value's steps [start, stop) (zero where none does)."""

    value: str
    n: int
    parts: list
    out: int
    steps: int
    kind: str = "sum"


def plan_formats(graph: Graph, options: TrainOptions, hw: HwConfig, take,
                 sizes: Calibration) -> tuple[list[TrainedLayer], list, int, int]:
    """The backward walk of the graph, from the readout down: (the trained layers in forward order, the walk's
    nodes in backward order: TrainedLayer, NeuronNode, PoolNode and SumNode, the target's and the loss gradient's
    DRAM places). `take(nbytes)` places a buffer in DRAM. A value's gradient is the one gradient an op gives it,
    or the sum of several (SumNode); a residual add gives both operands its own gradient.

    Each gradient's binary point is set for its size on the calibration batch (`sizes`), to GRAD_BITS bits; the
    instructions that make gradients saturate them there, so what the weight-gradient sums add is bounded
    whatever the weights become."""
    _check(graph)
    reduce = graph.op(graph.outputs[0])
    readout = graph.op(reduce.inputs[0])
    classes = readout.type.shape[0]
    target, e = take(4 * classes), take(4 * classes)
    pending: dict[str, list[Grad]] = {}
    nodes: list = []
    layers: list[TrainedLayer] = []

    def contribute(name: str, g: Grad) -> None:
        source = _source(graph, name)
        if not isinstance(source, Input):  # the input needs no gradient
            pending.setdefault(source.name, []).append(g)

    def gradient(op: Op) -> Grad | None:
        parts, time = pending.pop(op.name, []), op.type.time
        spans = [(p.start, time if p.stop is None else p.stop) for p in parts]
        whole = all(span == (0, time) for span in spans)
        if len(parts) == 1 and whole:
            return parts[0]
        if not parts:
            return None
        frac, top = min(p.frac for p in parts), max(p.steps for p in parts) if whole else time
        shifts = [frac - p.frac for p in parts]
        bound = sum(math.ceil(p.bound * 2.0 ** k) + 1 for p, k in zip(parts, shifts))
        if bound >= 1 << LIMIT_BITS:
            op.fail(f"gradients of its {len(parts)} readers may sum to {bound}, beyond 32 bits")
        n = op.type.numel
        out = take(4 * n * top)
        nodes.append(SumNode(op.name, n, [[p.addr, p.steps, k, *span] for p, k, span in zip(parts, shifts, spans)], out,
                             top))
        return Grad(frac, bound, top, out)

    for op in reversed(graph.ops):
        if isinstance(op, (Linear, Conv2d)):
            neuron = graph.consumer(op) if isinstance(graph.consumer(op), NeuronQ) else None
            pool = next((u for u in graph.users(neuron.name) if isinstance(u, MaxPool)), None) if neuron else None
            if op is readout:
                g = _loss_grad(graph, op, options, op.type.time, e)
            else:
                g = gradient(pool or neuron or op)
                if g is None:
                    op.fail("reaches the output only through what the training step cannot differentiate")
            r = _layer_formats(graph, op, neuron, pool, g, options, hw, op.type.time, take, sizes)
            if r.input_grad:
                contribute(op.inputs[0], Grad(r.below_frac, GRAD_MAX, r.grad_out_steps, r.grad_out))
            nodes.append(r)
            layers.append(r)
        elif isinstance(op, NeuronQ) and graph.fused_into(op) is None:
            g = gradient(op)
            if g is None:
                continue
            src_shift = _membrane_shift(op, sizes.value(op.inputs[0], g.frac), op.type.time)
            n = op.type.numel
            out = take(4 * n * op.type.time)
            tape = next(u.name for u in graph.users(op.name) if isinstance(u, Tape))
            nodes.append(NeuronNode(op.name, op.path, n, tape, src_shift, g.addr, g.steps, out))
            contribute(op.inputs[0], Grad(g.frac + src_shift, GRAD_MAX, op.type.time, out))
        elif isinstance(op, AvgPool):
            g = gradient(op)
            if g is None:
                continue
            (c, ih, iw), (_, oh, ow) = graph.op(op.inputs[0]).type.shape, op.type.shape
            overlap = math.ceil(op.kernel / op.stride) ** 2
            out = take(4 * c * ih * iw * g.steps)
            nodes.append(PoolNode(op.name, op.path, c, ih, iw, oh, ow, op.kernel, op.stride, g.addr, g.steps, out))
            contribute(op.inputs[0], Grad(g.frac + op.area_bits, g.bound * overlap, g.steps, out))
        elif isinstance(op, Add):
            g = gradient(op)
            if g is not None:  # both operands' gradient is the sum's (halved: one more fractional bit)
                for operand in op.inputs:
                    contribute(operand, Grad(g.frac + op.halve, g.bound, g.steps, g.addr))
        elif isinstance(op, TimeSlice):
            g = gradient(op)
            if g is not None:  # the gradient of the steps it takes
                contribute(op.inputs[0], Grad(g.frac, g.bound, g.steps, g.addr, op.start, op.stop))
        elif isinstance(op, TimeConcat):
            g = gradient(op)
            if g is not None:  # each part's gradient: its own steps of the concatenation's (in place)
                first = graph.op(op.inputs[0]).type.time
                for operand, at in zip(op.inputs, (0, first)):
                    if g.steps > 1:
                        contribute(operand, Grad(g.frac, g.bound, graph.op(operand).type.time,
                                                 g.addr + at * 4 * op.type.numel))
                    else:
                        contribute(operand, g)
    return layers[::-1], nodes, target, e


def _loss_grad(graph: Graph, readout: Op, options: TrainOptions, steps: int, e: int) -> Grad:
    """The loss gradient e (see the module docstring), the same at every step."""
    reduce = graph.op(graph.outputs[0])
    x = graph.op(readout.inputs[0])
    if options.loss == "ce":  # e = round((p - y) / T, CE_BITS + log2 T), from the host
        return Grad(CE_BITS + math.ceil(math.log2(steps)), 1 << CE_BITS, 1, e)
    # e = out - target: exact, bounded by the forward's bound for any storable weights
    target = steps * (1 << reduce.type.dtype.frac)
    taps = readout.weight[0].size
    bound = steps * taps * _qmax(readout) * _bound(x) + target + _bias_bound(graph, readout)
    return Grad(reduce.type.dtype.frac + 2 * math.ceil(math.log2(steps)), bound, 1, e)


def _guard(neuron: NeuronQ, steps: int) -> int:
    """The guard bits that keep T-1 decays of a gradient exact: decay_shift per step back (none for a decay of 1)."""
    return neuron.decay_shift * (steps - 1) if neuron.decay_mul != 1 << neuron.decay_shift else 0


def _membrane_shift(neuron: NeuronQ, size: float, steps: int) -> int:
    """nbwd's src_shift for membrane gradients of calibrated `size` (at the spike gradients' frac): as many of
    the decays' guard bits as GRAD_BITS holds with CAL_HEADROOM to spare."""
    return fit_shift(math.ceil(size * 2.0 ** CAL_HEADROOM) + steps, _guard(neuron, steps), bits=GRAD_BITS - 1)


def _layer_formats(graph: Graph, op: Op, neuron: NeuronQ | None, pool: MaxPool | None, g: Grad,
                   options: TrainOptions, hw: HwConfig, steps: int, take, sizes: Calibration) -> TrainedLayer:
    """A trained layer's formats and DRAM places, from the gradient of its top (its pool's, its neuron's or
    its sums') and the calibrated sizes of its gradients."""
    x = graph.op(op.inputs[0])
    r = _layer(graph, op, not isinstance(_source(graph, op.inputs[0]), Input), op is graph.op(graph.op(graph.outputs[0]).inputs[0]))
    r.grad_in, r.grad_in_steps = g.addr, g.steps
    if neuron is not None and not r.readout:
        r.neuron = neuron.name
        r.tape = next(u.name for u in graph.users(neuron.name) if isinstance(u, Tape))
        if pool is not None:
            r.pool, r.pool_k, r.pool_stride, r.pool_pad = pool.name, pool.kernel, pool.stride, pool.padding
            r.pool_oh, r.pool_ow = pool.type.shape[1:]
        r.src_shift = _membrane_shift(neuron, sizes.value(op.name, g.frac), steps)  # g_h = dL/d(its sums)
        r.grad_frac, r.grad_bound = g.frac + r.src_shift, GRAD_MAX
        if neuron.reset != "hard":  # both forms apply: priced, unless the options choose
            r.costs = form_costs(r, neuron, x, options, steps, hw)
            r.form = min(r.costs, key=r.costs.get) if options.form == "auto" else options.form
        elif options.form == "trace":
            neuron.fail("has a hard reset: the trace form of the weight gradient needs a subtract reset or none "
                        "(SSGD's neuron); use --grad-form explicit or auto")
    else:  # the readout's e, or sums read as they are: their gradient is the one from above
        r.grad_frac, r.grad_bound = g.frac, g.bound
    x_frac, x_bound = x.type.dtype.frac, _bound(x)
    if r.form == "trace":  # trace[t] = D(trace[t-1]) + R(x[t], trace_shift), with the decays' guard bits
        d_sum = decay_sum(neuron, steps)
        r.trace_shift = fit_shift(math.ceil(x_bound * d_sum) + steps, _guard(neuron, steps))
        r.trace_frac = x_frac = x_frac + r.trace_shift
        x_bound = math.ceil((x_bound * 2.0 ** r.trace_shift + 1) * d_sum) + steps
        r.traces = take(4 * r.n_in * steps)
    # a weight-gradient accumulator adds a step's (y, x) terms of every sample: its calibrated sum with
    # 2^WGRAD_HEADROOM to spare (it saturates), or the worst case where that is smaller
    sums = options.batch * steps * r.oh * r.ow
    # (no finer than the update's shift reaches: R(dW, sgd_shift) shifts right by at most SGD_REACH bits)
    r.wgrad_shift = fit_shift(min(math.ceil(sizes.param(op.name, r.grad_frac + x_frac)) << WGRAD_HEADROOM,
                                  sums * x_bound * r.grad_bound), roundings=options.batch * steps,
                              most=min(0, r.weight_frac - options.lr_shift + SGD_REACH - r.grad_frac - x_frac))
    r.dw_frac = r.grad_frac + x_frac + r.wgrad_shift
    r.sgd_shift = r.weight_frac - options.lr_shift - r.dw_frac
    r.dw = take(4 * r.cout * r.cin * r.taps)
    if op.bias is not None:  # dB: the gradient summed over the outputs (a wgrad of a plane of ones)
        r.bias, r.bias_frac, r.bias_bits = True, op.type.dtype.frac, graph.notes["train_bias_bits"][op.name]
        r.db_shift = fit_shift(min(math.ceil(sizes.param(f"{op.name}.bias", r.grad_frac)) << WGRAD_HEADROOM,
                                   sums * r.grad_bound), roundings=options.batch * steps,
                               most=min(0, r.bias_frac - options.lr_shift + SGD_REACH - r.grad_frac))
        r.db_frac = r.grad_frac + r.db_shift
        r.bias_sgd_shift = r.bias_frac - options.lr_shift - r.db_frac
        r.db = take(4 * r.cout)
    if r.input_grad:  # g_s below = sat(R(W^T R(g_h, pre_shift), post_shift)): dL/dx's calibrated size fits
        size = math.ceil(sizes.value(op.inputs[0], r.grad_frac + r.weight_frac) * 2.0 ** CAL_HEADROOM)
        r.pre_shift = fit_shift(size, bits=ACC_BITS - 1)
        r.post_shift = fit_shift(math.ceil(size * 2.0 ** r.pre_shift), bits=GRAD_BITS - 1)
        r.below_frac = r.grad_frac + r.pre_shift + r.weight_frac + r.post_shift
        r.grad_out_steps = 1 if neuron is None and g.steps == 1 else steps
        r.grad_out = take(4 * r.n_in * r.grad_out_steps)
    return r


def _bias_bound(graph: Graph, op: Op) -> int:
    return 1 << (graph.notes["train_bias_bits"][op.name] - 1) if op.bias is not None else 0


def _bound(x: Op) -> int:
    """The largest magnitude of a layer's input: 1 for spikes, the format's for the fixed-point input."""
    dt = x.type.dtype
    return 1 if dt.kind == "spike" else 1 << (dt.bits - 1)


# ------------------------------------------------------------------------------------------ plans


def ce_gradient(out: np.ndarray, labels: np.ndarray, steps: int, out_frac: int) -> tuple[np.ndarray, float]:
    """The softmax cross-entropy's gradient with respect to every step's readout sums, as the host computes it
    between the forward and the backward: e = round_half_even((softmax(o) - onehot(y)) / T 2^(CE_BITS + ceil
    log2 T)) with o = out / (T 2^out_frac) the model's output (int64 [B, classes]), and the batch's loss
    sum -log softmax(o)[y] (float64)."""
    o = out.astype(np.float64) * 2.0 ** -out_frac / steps
    o = o - o.max(axis=1, keepdims=True)
    log_p = o - np.log(np.exp(o).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    p[np.arange(len(labels)), labels] -= 1.0
    frac = CE_BITS + math.ceil(math.log2(steps))
    return np.rint(p / steps * 2.0 ** frac).astype(np.int64), float(-log_p[np.arange(len(labels)), labels].sum())
