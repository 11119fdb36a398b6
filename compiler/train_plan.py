"""The training phases' layer plans (docs/training.md): the loss, a trained layer's backward and its weight
update, each a layer plan (`ttc.compiler.plan.LayerPlan`) whose walk codegen emits and the cost model
prices, as it prices inference layers (`ttc.compiler.cost.layer_cost`).

    loss      e = out - target                                           once per sample
    traces    the trace form's input traces, t = 0 ... T-1               once per sample
    backward  t = T-1 ... 0: nbwd, wgrad (and the bias's), the transposed dconv   once per sample
    update    sgd of the weights (and the bias)                          once per batch

A training plan is not tiled: its regions of each buffer are laid out once (`_Buffers`), and a layer whose
backward does not fit names the buffer. Its steps are its prologue, one step per time step and its
epilogue; steps at different time steps differ only in DRAM addresses, so the cost model prices one of each
kind. Its slots are 32 bytes, so that the cost model tells its regions apart as the machine's timeline does.
Arithmetic is counted at the options' densities (input spikes, the active fraction). `generate_training`
emits the step program; `predicted_step` prices it phase by phase (the program records it; the tests hold
its cycles to the simulator's)."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar, Iterator

import numpy as np

from ttc.isa.encoding import Instr, Ref
from ttc.isa.hwconfig import HwConfig, multiply_action, neuron_update_actions
from ttc.isa.program import Program, ttc_version
from ttc.isa.table import FORMAT_BYTES, elems_bytes

from .codegen import emit_layers
from .cost import graph_costs, layer_cost
from .ir import Conv2d, Graph, Linear, Op
from .layout import align, step_stride, value_addr, weight_bytes
from .plan import LayerPlan, Slots, Step, Stretch, turns
from .sync import place_tokens
from .train import GRAD_BITS, TrainedLayer, TrainError, TrainOptions, calibrate, decay_sum, plan_formats

ALIGN = 32


class _Buffers:
    """Regions of one plan in each buffer, laid out one after another (32-byte aligned); a plan that does
    not fit names its layer and the buffer."""

    def __init__(self, hw: HwConfig, where: str):
        self.hw, self.where, self.used = hw, where, {}

    def take(self, mem: str, nbytes: int) -> Ref:
        at = self.used.get(mem, 0)
        self.used[mem] = at + align(nbytes, ALIGN)
        if self.used[mem] > self.hw.buffers[mem].bytes:
            raise TrainError(f"{self.where}: its training step needs {self.used[mem]} bytes of the {mem} buffer, which "
                             f"holds {self.hw.buffers[mem].bytes} bytes in hardware config {self.hw.name!r} (training "
                             "does not tile layers yet)")
        return Ref(mem, at)


@dataclass
class TrainLayerPlan(LayerPlan):
    """What the training plans share: their regions, one stretch of steps, their layer-table entry (`kind`
    is its op)."""

    r: TrainedLayer | None = field(default=None, compare=False, repr=False)
    options: TrainOptions | None = field(default=None, compare=False, repr=False)
    shape: tuple = ()  # everything that decides the plan's on-chip work (its shape_key)

    phase: ClassVar[str] = "backward"

    def __post_init__(self):
        self.buf = _Buffers(self.hw, f"layer {self.title}")
        self.take_regions()
        self.slot_bytes = dict.fromkeys(self.buf.used, ALIGN)  # a region per 32 bytes: the cost model sees each apart
        self.double = frozenset()

    def take_regions(self) -> None:
        """Lay out the plan's regions (self.buf.take)."""

    @abstractmethod
    def parts(self) -> Iterator[tuple[tuple, Callable[[], list[Instr]]]]:
        """The walk's steps in program order: (what the step does, its instructions' builder)."""

    def stretches(self) -> Iterator[Stretch]:
        slots = [Slots(self, mem) for mem in self.slot_bytes]
        yield Stretch(self.shape, slots, lambda: (Step(work, turns(*slots), build) for work, build in self.parts()))

    def code(self) -> list[Instr]:
        return [i for step in self.walk() for i in step.instrs]

    @property
    def title(self) -> str:
        """What messages and the layer table call the plan's layer: its module's path, else its op's name."""
        return self.op.path or self.op.name

    def entry(self, first: int) -> dict:
        """The plan's row of the program's layer table."""
        return dict(name=f"{self.title}.{self.label}", path=self.op.path, op=self.kind, type="", first_instr=first,
                    phase=self.phase)

    def load_tape(self, neuron: Op, tape: str, t: int, n: int, spikes: bool) -> list[Instr]:
        """Step t's active bits of `neuron` (`tape`, into self.tape) and, with `spikes` (a hard reset's gate,
        a pool's maxima), its spikes (into self.spikes)."""
        code = [self.load(self.tape, self.step_addr(self.graph.op(tape), t).addr, elems_bytes("spike", n))]
        if spikes:
            code.append(self.load(self.spikes, self.step_addr(neuron, t).addr, elems_bytes("spike", n)))
        return code

    def nbwd(self, neuron: Op, n: int, src_shift: int, state: Ref, dst: Ref, decay_mul: int) -> Instr:
        """One backward step of `neuron`'s n membranes from the spike gradients in self.gs."""
        return self.instr("nbwd", src=self.gs, tape=self.tape, spikes=self.spikes, state=state, dst=dst, n=n,
                          decay_mul=decay_mul, decay_shift=neuron.decay_shift,
                          gate="spike" if neuron.reset == "hard" else "none", src_shift=src_shift, bits=GRAD_BITS)

    def load(self, dst: Ref, addr: int, nbytes: int) -> Instr:
        return self.copy("load", dst, Ref("dram", addr), nbytes)

    def store(self, addr: int, src: Ref, nbytes: int) -> Instr:
        return self.copy("store", Ref("dram", addr), src, nbytes)


@dataclass
class LossPlan(TrainLayerPlan):
    """e = out - target (i32, the readout's classes): the loss gradient, stored for the readout's backward."""

    target: int = field(default=0, compare=False)
    loss_grad: int = field(default=0, compare=False)
    label: ClassVar[str] = "mse"

    kind: ClassVar[str] = "loss_mse"

    def take_regions(self):
        n = self.r.cout
        self.out, self.tgt, self.acc = self.buf.take("ifmap", 4 * n), self.buf.take("ifmap", 4 * n), self.buf.take("psum", 4 * n)

    def parts(self):
        n = self.r.cout
        vacc = dict(src_fmt="i32", dst_fmt="i32", n=n, shift=0)
        yield ("loss",), lambda: [
            self.load(self.out, value_addr(self.graph, self.op), 4 * n), self.load(self.tgt, self.target, 4 * n),
            self.instr("vacc", dst=self.acc, src=self.out, accumulate=0, **vacc),
            self.instr("vacc", dst=self.acc, src=self.tgt, accumulate=1, neg=1, **vacc),
            self.store(self.loss_grad, self.acc, 4 * n)]

    def arithmetic(self, density: float) -> dict:
        return {"vector": {"add32": self.r.cout}}


@dataclass
class BackwardPlan(TrainLayerPlan):
    """Layer r's backward for one sample, t = T-1 ... 0: the gradient of its sums (nbwd from its neuron's
    spike gradients; or the gradient from above as it is, e for the readout), their weight gradient into
    the shared accumulator (in the trace form: the input traces against D), the bias's, and (unless r reads
    the model's input) the gradient of its input for the layer below (once when the same at every step)."""

    label: ClassVar[str] = "backward"

    @property
    def kind(self) -> str:
        return f"{self.op.opname}_bwd"

    @property
    def neuron(self) -> Op | None:
        return self.graph.op(self.r.neuron) if self.r.neuron else None

    @property
    def constant(self) -> bool:
        """Is the gradient from above the same at every step (the readout's e, and what it gives below)?"""
        return self.neuron is None and self.r.grad_in_steps == 1

    def take_regions(self):
        r, buf = self.r, self.buf
        if r.input_grad and r.pl > r.kw - 1:
            self.op.fail(f"pads {r.pl} columns, more than its kernel's {r.kw} - 1: its input gradient cannot be a "
                         "padded conv")
        weights = r.cout * r.cin * r.taps
        self.dw, self.gh = buf.take("psum", 4 * weights), buf.take("psum", 4 * r.n_out)
        self.gx = buf.take("psum", 4 * r.n_in) if r.input_grad else None
        self.scaled = buf.take("psum", 4 * r.n_out) if r.input_grad and r.pre_shift else self.gh
        self.w = buf.take("wgt", weights * FORMAT_BYTES[r.wfmt]) if r.input_grad else None
        self.xin = buf.take("ifmap", elems_bytes(r.in_fmt, r.n_in))
        if r.bias:  # dB[co] = sum over y, x of g_h[co, y, x]: the weight gradient of an input of ones
            self.ones, self.db = buf.take("ifmap", 4 * self.words), buf.take("psum", 4 * r.cout)
        if r.form == "trace":  # D[t] (nbwd without the carried gradient), and the input traces (TracePlan's)
            self.d, self.d_state, self.tr = buf.take("psum", 4 * r.n_out), buf.take("vmem", 4 * r.n_out), buf.take("ifmap", 4 * r.n_in)
        if self.neuron is not None:
            spike_bytes = elems_bytes("spike", r.n_out)
            self.gs, self.tape = buf.take("psum" if r.pool else "ifmap", 4 * r.n_out), buf.take("ifmap", spike_bytes)
            self.spikes = buf.take("ifmap", spike_bytes) if self.neuron.reset == "hard" or r.pool else self.tape
            self.state = buf.take("vmem", 4 * r.n_out)
        if r.pool:  # the gradient of the pooled spikes, routed back to the spikes (pbwd)
            self.pooled = buf.take("ifmap", 4 * r.n_top)

    @property
    def words(self) -> int:
        return -(-self.r.oh * self.r.ow // 32)

    def parts(self):
        steps = self.time
        yield ("start",), self.prologue
        for t in range(steps - 1, -1, -1):
            first, last = t == steps - 1, t == 0
            yield ("step", first and self.constant, last and self.constant), lambda t=t: self.step(t)
        yield ("end",), self.epilogue

    def prologue(self) -> list[Instr]:
        r = self.r
        code = [self.load(self.dw, r.dw, 4 * r.cout * r.cin * r.taps)]
        if r.bias:
            code += [self.instr("vfill", dst=self.ones, n=self.words, value=-1), self.load(self.db, r.db, 4 * r.cout)]
        if self.w is not None:
            code.append(self.load(self.w, self.op.wdram or 0, r.cout * r.cin * r.taps * FORMAT_BYTES[r.wfmt]))
        if self.neuron is not None:
            code.append(self.instr("vfill", dst=self.state, n=r.n_out, value=0))
        return code

    def step(self, t: int) -> list[Instr]:
        r, neuron, graph, sparse = self.r, self.neuron, self.graph, int(self.options.sparse)
        code = []
        g_step = t if r.grad_in_steps > 1 else 0
        trace = r.form == "trace"
        if neuron is not None:
            code += self.load_tape(neuron, r.tape, t, r.n_out, neuron.reset == "hard" or bool(r.pool))
            if r.pool:
                code += [self.load(self.pooled, r.grad_in + g_step * 4 * r.n_top, 4 * r.n_top),
                         self.instr("pbwd", src=self.pooled, x=self.spikes, dst=self.gs, x_fmt="spike", mode="max", channels=r.cout,
                                    ih=r.oh, iw=r.ow, oh=r.pool_oh, ow=r.pool_ow, k=r.pool_k, stride=r.pool_stride,
                                    pt=r.pool_pad, pl=r.pool_pad)]
            else:
                code.append(self.load(self.gs, r.grad_in + g_step * 4 * r.n_out, 4 * r.n_out))
            if trace:
                code.append(self.nbwd(neuron, r.n_out, r.src_shift, self.d_state, self.d, 0))
            if not trace or r.input_grad or r.bias:
                code.append(self.nbwd(neuron, r.n_out, r.src_shift, self.state, self.gh, neuron.decay_mul))
        elif not self.constant or t == self.time - 1:
            code.append(self.load(self.gh, r.grad_in + g_step * 4 * r.n_out, 4 * r.n_out))
        if trace:
            code.append(self.load(self.tr, r.traces + t * 4 * r.n_in, 4 * r.n_in))
            wgrad = dict(src=self.tr, grad=self.d, fmt="i32")
        else:
            x = graph.op(self.op.inputs[0])
            code.append(self.load(self.xin, self.step_addr(x, t).addr, elems_bytes(r.in_fmt, r.n_in)))
            wgrad = dict(src=self.xin, grad=self.gh, fmt=r.in_fmt)
        code.append(self.instr("wgrad", dst=self.dw, accumulate=1, shift=r.wgrad_shift, skip=sparse, group=0,
                               sat_bits=32, **wgrad, **_geometry(r)))
        if r.bias:
            code.append(self.instr("wgrad", src=self.ones, grad=self.gh, dst=self.db, fmt="spike", accumulate=1,
                                   shift=r.db_shift, skip=sparse, group=0, sat_bits=32, **_ones(r)))
        if r.input_grad and (not self.constant or t == 0):
            if r.pre_shift:
                code.append(self.instr("vacc", dst=self.scaled, src=self.gh, src_fmt="i32", dst_fmt="i32", n=r.n_out,
                                       shift=r.pre_shift, accumulate=0))
            code.append(self.instr("dconv", src=self.scaled, wgt=self.w, dst=self.gx, fmt="i32", wfmt=r.wfmt, shift=0,
                                   transposed=1, skip=sparse, accumulate=0, group=0, sat_bits=GRAD_BITS,
                                   round_shift=-r.post_shift, **_transposed(r)))
            out_step = t if r.grad_out_steps > 1 else 0
            code.append(self.store(r.grad_out + out_step * 4 * r.n_in, self.gx, 4 * r.n_in))
        return code

    def epilogue(self) -> list[Instr]:
        r = self.r
        code = [self.store(r.dw, self.dw, 4 * r.cout * r.cin * r.taps)]
        if r.bias:
            code.append(self.store(r.db, self.db, 4 * r.cout))
        return code

    def arithmetic(self, density: float) -> dict:
        """Per sample, at input spike `density` and the options' active fraction: what the walk's instructions
        count (the handlers' rules: spikes gate the weight-gradient adds, and with a sparse backward so do the
        non-zero gradients; the transposed conv multiplies every non-zero gradient by its fan-out)."""
        r, o, steps, neuron = self.r, self.options, self.time, self.neuron
        rho_x = density if r.in_fmt == "spike" else 1.0
        rho_d = o.active_density if o.sparse and neuron is not None else 1.0
        rho_g = min(1.0, rho_d * decay_sum(neuron, steps)) if o.sparse and neuron is not None else 1.0
        pairs = r.cout * r.cin * r.taps * r.oh * r.ow * steps
        pe, nrn, vec = {}, {}, {}
        if r.form == "trace":
            pe["add32"] = pairs * rho_d
            pe[multiply_action("i32", "i16")] = pairs * rho_d
        else:
            pe["add32"] = pairs * rho_x * rho_g
            if r.in_fmt != "spike":
                pe[multiply_action(r.in_fmt, "i16")] = pairs * rho_g
        if r.bias:
            pe["add32"] += r.n_out * steps * rho_g
        if r.input_grad:
            times = 1 if self.constant else steps
            macs = r.n_out * r.cin * r.taps * rho_g * times
            pe["add32"] += macs
            pe[multiply_action("i32", r.wfmt)] = pe.get(multiply_action("i32", r.wfmt), 0) + macs
            if r.pre_shift:
                vec["shift32"] = r.n_out * times
        if r.pool:
            vec["add32"] = r.n_top * steps
            vec["or1"] = r.n_top * r.pool_k ** 2 * steps
        if neuron is not None:
            passes = (r.form == "trace") + (r.form != "trace" or r.input_grad or r.bias)
            for a, c in neuron_update_actions("none", r.src_shift, neuron.decay_mul, neuron.decay_shift).items():
                nrn[a] = nrn.get(a, 0) + c * r.n_out * steps * passes
        return {"pe": pe, "neuron": nrn, "vector": vec}


@dataclass
class TracePlan(TrainLayerPlan):
    """The trace form's input traces of layer r, t = 0 ... T-1, stored for its backward's reverse walk (a layer
    of its own: its backward reads what it stored):

        trace[t] = D(trace[t-1]) + R(x[t], trace_shift)

    run by `nrn` as a neuron that never fires (no reset, the threshold the largest state), whose states are
    the traces."""

    label: ClassVar[str] = "traces"

    kind: ClassVar[str] = "traces"

    def take_regions(self):
        r, buf = self.r, self.buf
        self.xin, self.wide = buf.take("ifmap", elems_bytes(r.in_fmt, r.n_in)), buf.take("psum", 4 * r.n_in)
        self.tr_state, self.never = buf.take("vmem", 4 * r.n_in), buf.take("ofmap", elems_bytes("spike", r.n_in))

    def parts(self):
        yield ("start",), lambda: [self.instr("vfill", dst=self.tr_state, n=self.r.n_in, value=0)]
        for t in range(self.time):
            yield ("trace",), lambda t=t: self.trace_step(t)

    def trace_step(self, t: int) -> list[Instr]:
        """trace[t] = D(trace[t-1]) + R(x[t], trace_shift), stored for the reverse walk: `nrn` as a neuron that
        never fires (no reset, the threshold the largest state), whose states are the traces."""
        r, x, n = self.r, self.graph.op(self.op.inputs[0]), self.graph.op(self.r.neuron)
        return [self.load(self.xin, self.step_addr(x, t).addr, elems_bytes(r.in_fmt, r.n_in)),
                self.instr("vacc", dst=self.wide, src=self.xin, src_fmt=r.in_fmt, dst_fmt="i32", n=r.n_in, shift=0,
                           accumulate=0),
                self.instr("nrn", src=self.wide, state=self.tr_state, dst=self.never, n=r.n_in, theta=(1 << 31) - 1,
                           v_reset=0, decay_mul=n.decay_mul, decay_shift=n.decay_shift, in_shift=r.trace_shift, cmp="gt",
                           reset="none", order="reset_decay", levels=1, mode="parallel", per_neuron=0),
                self.store(r.traces + t * 4 * r.n_in, self.tr_state, 4 * r.n_in)]

    def arithmetic(self, density: float) -> dict:
        r, n = self.r, self.graph.op(self.r.neuron)
        actions = neuron_update_actions("none", r.trace_shift, n.decay_mul, n.decay_shift)
        return {"neuron": {a: c * r.n_in * self.time for a, c in actions.items()}}


@dataclass
class NeuronBackwardPlan(TrainLayerPlan):
    """A neuron on its own (a residual stream's): t = T-1 ... 0, nbwd turns the gradient of its spikes into
    its membranes' g_h, the gradient of its input, stored step by step."""

    label: ClassVar[str] = "backward"

    kind: ClassVar[str] = "neuron_bwd"

    def take_regions(self):
        n, buf = self.r.n, self.buf
        self.gs, self.tape = buf.take("ifmap", 4 * n), buf.take("ifmap", elems_bytes("spike", n))
        self.spikes = buf.take("ifmap", elems_bytes("spike", n)) if self.op.reset == "hard" else self.tape
        self.state, self.gh = buf.take("vmem", 4 * n), buf.take("psum", 4 * n)

    def parts(self):
        yield ("start",), lambda: [self.instr("vfill", dst=self.state, n=self.r.n, value=0)]
        for t in range(self.time - 1, -1, -1):
            yield ("step",), lambda t=t: self.step(t)

    def step(self, t: int) -> list[Instr]:
        r, neuron, n = self.r, self.op, self.r.n
        return [self.load(self.gs, r.grad_in + (t if r.grad_in_steps > 1 else 0) * 4 * n, 4 * n),
                *self.load_tape(neuron, r.tape, t, n, neuron.reset == "hard"),
                self.nbwd(neuron, n, r.src_shift, self.state, self.gh, neuron.decay_mul),
                self.store(r.grad_out + t * 4 * n, self.gh, 4 * n)]

    def arithmetic(self, density: float) -> dict:
        n = self.op
        actions = neuron_update_actions("none", self.r.src_shift, n.decay_mul, n.decay_shift)
        return {"neuron": {a: c * self.r.n * self.time for a, c in actions.items()}}


@dataclass
class PoolBackwardPlan(TrainLayerPlan):
    """An average pool of spikes: every input gets its window's gradient (pbwd avg), step by step (once when
    the gradient is the same at every step)."""

    label: ClassVar[str] = "backward"

    kind: ClassVar[str] = "avgpool_bwd"

    def take_regions(self):
        r, buf = self.r, self.buf
        self.g, self.dst = buf.take("ifmap", 4 * r.channels * r.oh * r.ow), buf.take("psum", 4 * r.channels * r.ih * r.iw)
        self.x = buf.take("ifmap", ALIGN)  # pbwd avg reads no input, but its operand must name a place

    def parts(self):
        for t in range(self.r.grad_in_steps - 1, -1, -1):
            yield ("step",), lambda t=t: self.step(t)

    def step(self, t: int) -> list[Instr]:
        r = self.r
        inputs, outputs = r.channels * r.ih * r.iw, r.channels * r.oh * r.ow
        return [self.load(self.g, r.grad_in + t * 4 * outputs, 4 * outputs),
                self.instr("pbwd", src=self.g, x=self.x, dst=self.dst, x_fmt="spike", mode="avg", channels=r.channels,
                           ih=r.ih, iw=r.iw, oh=r.oh, ow=r.ow, k=r.k, stride=r.stride, pt=0, pl=0),
                self.store(r.grad_out + t * 4 * inputs, self.dst, 4 * inputs)]

    def arithmetic(self, density: float) -> dict:
        r = self.r
        return {"vector": {"add32": r.channels * r.oh * r.ow * r.k * r.k * r.grad_in_steps}}


@dataclass
class SumPlan(TrainLayerPlan):
    """The gradient of a value several ops read: the sum of theirs, each rescaled to the coarsest frac (vacc),
    step by step; each covers its steps of the value (HTT's time slices), and a step none covers is zero."""

    label: ClassVar[str] = "sum"

    kind: ClassVar[str] = "grad_sum"

    def take_regions(self):
        n, buf = self.r.n, self.buf
        self.parts_at = [buf.take("ifmap", 4 * n) for _ in self.r.parts]
        self.acc = buf.take("psum", 4 * n)

    def covering(self, t: int) -> list[tuple]:
        """The parts that cover step t, with their regions."""
        return [(part, at) for part, at in zip(self.r.parts, self.parts_at) if part[3] <= t < part[4]]

    def parts(self):
        for t in range(self.r.steps):
            yield ("step", tuple(part[3] <= t < part[4] for part in self.r.parts)), lambda t=t: self.step(t)

    def step(self, t: int) -> list[Instr]:
        r, n, code = self.r, self.r.n, []
        for k, ((addr, steps, shift, start, _), at) in enumerate(self.covering(t)):
            code += [self.load(at, addr + (t - start if steps > 1 else 0) * 4 * n, 4 * n),
                     self.instr("vacc", dst=self.acc, src=at, src_fmt="i32", dst_fmt="i32", n=n, shift=shift,
                                accumulate=int(k > 0))]
        if not code:
            code.append(self.instr("vfill", dst=self.acc, n=n, value=0))
        return code + [self.store(r.out + t * 4 * n, self.acc, 4 * n)]

    def arithmetic(self, density: float) -> dict:
        n, adds, shifts = self.r.n, 0, 0
        for t in range(self.r.steps):
            covering = [part for part, _ in self.covering(t)]
            adds += n * max(0, len(covering) - 1)
            shifts += n * sum(part[2] != 0 for part in covering)
        return {"vector": {"add32": adds, "shift32": shifts}}


@dataclass
class UpdatePlan(TrainLayerPlan):
    """Once per batch: w = sat(w - R(dW, sgd_shift)), dW = 0 (and the bias by dB), back to DRAM."""

    phase: ClassVar[str] = "update"
    label: ClassVar[str] = "update"

    kind: ClassVar[str] = "sgd"

    def take_regions(self):
        r, n = self.r, self.r.cout * self.r.cin * self.r.taps
        self.params = [(self.buf.take("wgt", n * FORMAT_BYTES[r.wfmt]), self.buf.take("psum", 4 * n), self.op.wdram or 0,
                        r.dw, r.wfmt, 8 * FORMAT_BYTES[r.wfmt], n, r.sgd_shift)]
        if r.bias:
            self.params.append((self.buf.take("wgt", 4 * r.cout), self.buf.take("psum", 4 * r.cout),
                                (self.op.wdram or 0) + self.op.weight.nbytes, r.db, "i32", r.bias_bits, r.cout,
                                r.bias_sgd_shift))

    def parts(self):
        for k, (w, g, w_at, g_at, wfmt, bits, count, shift) in enumerate(self.params):
            size = count * FORMAT_BYTES[wfmt]
            yield ("update", k), lambda w=w, g=g, w_at=w_at, g_at=g_at, wfmt=wfmt, bits=bits, count=count, shift=shift, size=size: [
                self.load(w, w_at, size), self.load(g, g_at, 4 * count),
                self.instr("sgd", wgt=w, grad=g, wfmt=wfmt, bits=bits, n=count, shift=shift),
                self.store(w_at, w, size), self.store(g_at, g, 4 * count)]

    def arithmetic(self, density: float) -> dict:
        n = sum(p[6] for p in self.params)
        return {"vector": {"add32": n, "cmp32": n, "shift32": n}}


def _geometry(r: TrainedLayer) -> dict:
    """The forward conv's operands (wgrad's, whose sums run over the forward's outputs)."""
    return dict(cin=r.cin, cout=r.cout, ih=r.ih, iw=r.iw, oh=r.oh, ow=r.ow, kh=r.kh, kw=r.kw, sh=r.sh, sw=r.sw, pt=r.pt,
                pl=r.pl)


def _ones(r: TrainedLayer) -> dict:
    """The bias gradient's wgrad: one input channel of ones over the outputs, a 1x1 kernel."""
    return dict(cin=1, cout=r.cout, ih=r.oh, iw=r.ow, oh=r.oh, ow=r.ow, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0)


def _transposed(r: TrainedLayer) -> dict:
    """The input gradient's conv (dconv transposed): from the cout x oh x ow gradients (spread out by the
    forward's stride) to the cin x ih x iw inputs, the kernel flipped, padded by k - 1 - p."""
    return dict(cin=r.cout, cout=r.cin, ih=r.oh, iw=r.ow, oh=r.ih, ow=r.iw, kh=r.kh, kw=r.kw, sh=r.sh, sw=r.sw,
                pt=r.kh - 1 - r.pt, pl=r.kw - 1 - r.pl)


def training_plans(graph: Graph, hw: HwConfig, layers: list[TrainedLayer], nodes: list, options: TrainOptions,
                   target: int, loss_grad: int, placed: bool = False) -> list[TrainLayerPlan]:
    """The loss, the backward walk's nodes in order (a layer's backward, a neuron's, an average pool's, a
    gradient sum), then every layer's update."""
    def shape(r) -> tuple:
        return tuple(sorted((k, v if not isinstance(v, list) else str(v)) for k, v in vars(r).items()
                            if k not in ("name", "path", "value") and not isinstance(v, dict)))

    readout = graph.op(graph.outputs[0])
    plans: list[TrainLayerPlan] = []
    if options.loss == "mse":  # (the cross-entropy's gradient comes from the host)
        plans.append(LossPlan(graph, readout, hw, placed, r=layers[-1], options=options, shape=(layers[-1].cout,),
                              target=target, loss_grad=loss_grad))
    for node in nodes:
        if node.kind == "layer":
            if node.form == "trace":
                plans.append(TracePlan(graph, graph.op(node.name), hw, placed, r=node, options=options, shape=shape(node)))
            plans.append(BackwardPlan(graph, graph.op(node.name), hw, placed, r=node, options=options,
                                      shape=shape(node) + (options.sparse,)))
        else:
            kind = {"neuron": NeuronBackwardPlan, "avgpool": PoolBackwardPlan, "sum": SumPlan}[node.kind]
            op = graph.op(node.value if node.kind == "sum" else node.name)
            plans.append(kind(graph, op, hw, placed, r=node, options=options, shape=shape(node)))
    plans += [UpdatePlan(graph, graph.op(r.name), hw, placed, r=r, options=options, shape=shape(r)) for r in layers]
    return plans


def predicted_step(graph: Graph, hw: HwConfig, plans: list[TrainLayerPlan], options: TrainOptions) -> dict:
    """The cost model's price of each phase (cycles and energy by component): the forward's inference layers
    and the backward's plans per sample, the update per batch; a step of B samples takes B times the first
    two plus the update (the samples run one after another)."""
    phases = {}
    forward = graph_costs(graph, hw)
    phases["forward"] = [(c.cycles, c.energy_pj) for c in forward.values()]
    for plan in plans:
        cost = layer_cost(plan, options.spike_density)
        phases.setdefault(plan.phase, []).append((cost.cycles, cost.energy_pj))
    out = {}
    for phase, costs in phases.items():
        energy: dict = {}
        for _, pj in costs:
            for component, value in pj.items():
                energy[component] = energy.get(component, 0.0) + value
        out[phase] = dict(cycles=sum(c for c, _ in costs), energy_pj=energy)
    return out


def generate_training(graph: Graph, hw: HwConfig, options: TrainOptions, compile_options: dict, source: dict,
                      inference: Program, calibration: tuple[np.ndarray, np.ndarray] | None = None) -> Program:
    """The training-step program of the allocated graph (with tapes): forward, loss, backward, halt, update,
    halt (with the cross-entropy: forward, halt, backward, halt, update, halt; the host writes the loss
    gradient at the first halt). `inference`: the plain inference program of the same model, which shares
    its weights' places (`ttc train` writes it back with the trained weights). `calibration`: the (inputs,
    labels) the gradients' formats are set for (`ttc.compiler.train.calibrate`; random inputs if None)."""
    end = max(op.dram + step_stride(graph, op) * (op.type.time or 1) for op in graph.ops if op.dram is not None)
    end = max(end, max(op.wdram + weight_bytes(op) for op in graph.ops if isinstance(op, (Linear, Conv2d))))
    dram = [align(end)]  # the training step's own data after everything the graph stores

    def take(nbytes: int) -> int:
        at, dram[0] = dram[0], align(dram[0] + nbytes)
        return at

    sizes = calibrate(graph, options, calibration)
    records, nodes, target, e = plan_formats(graph, options, hw, take, sizes)
    steps = graph.op(graph.op(graph.outputs[0]).inputs[0]).type.time
    dram_bytes = dram[0]
    plans = training_plans(graph, hw, records, nodes, options, target, e, placed=True)
    forward, layers = emit_layers(graph, hw)
    for layer in layers:
        layer["phase"] = "forward"
    # segments, each ending in a halt: per sample (with the cross-entropy: the forward, then the backward once
    # the host has written the loss gradient), then the update once per batch
    per_sample = [p for p in plans if p.phase != "update"]
    segments = [(forward, layers), ([], [])] if options.loss == "ce" else [(forward, layers)]
    for plan in per_sample:
        segments[-1][1].append(plan.entry(len(segments[-1][0])))
        segments[-1][0].extend(plan.code())
    segments.append(([], []))
    for plan in plans[len(per_sample):]:
        segments[-1][1].append(plan.entry(len(segments[-1][0])))
        segments[-1][0].extend(plan.code())
    code, layers, starts = [], [], []
    for segment, table in segments:
        starts.append(len(code))
        for entry in table:
            layers.append({**entry, "first_instr": entry["first_instr"] + len(code)})
        code += place_tokens(segment + [Instr("halt", {})], barriers=[entry["first_instr"] for entry in table[1:]])
    meta = dict(inference.meta)
    meta.update(ttc_version=ttc_version(), dram_bytes=dram_bytes, layers=layers, options=compile_options,
                train=dict(options=asdict(options), update_at=starts[-1], backward_at=starts[1] if len(starts) > 2 else None,
                           steps=steps, target=target, loss_grad=e, calibration=sizes.source,
                           classes=records[-1].cout, out_frac=graph.op(graph.outputs[0]).type.dtype.frac,
                           layers=[asdict(r) for r in records], nodes=[asdict(n) for n in nodes],
                           predicted=predicted_step(graph, hw, plans, options)))
    return Program(code=code, data=inference.data, meta=meta, hw=hw)
