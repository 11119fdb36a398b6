"""Layer plans: one plan per layer, decided once and walked by both codegen and the cost model
(docs/memory.md, docs/hardware.md).

A layer is an op that runs on the machine, with the consumer the fuse pass fused into it. Its plan
holds its tiles and the buffers they need, and exposes one ordered walk of steps: for a conv, one
step per output tile and time step, for a pool or an elementwise layer one per tile (or chunk) and
time step. A step is the instructions it issues, in program order (transfers, PE work, neuron and
vector work, each on the buffer slots it uses), and a key: steps with equal keys issue the same work
on the same on-chip slots (only DRAM addresses differ), so the cost model prices one of them for all.
Codegen (`ttc.compiler.codegen`) emits the walk; the cost model (`ttc.compiler.cost`) prices the same
walk; the tile pass chooses tiles by that price. Nothing else decides tiles, fusion or loop order.

    conv / linear (+ neuron, firing, time reduction, a max pool, or a residual add and the neuron after it):
        tiles of `co` output channels x `rows` output rows,
        each on all T steps while its membranes (or sums) stay on chip; each step sums its input in
        blocks of `ci` input channels; weights stay resident per output-channel tile when all of its
        input channels fit (the next tile's prefetched during the current one's last step), else stream
        per block
    max / sum pool: tiles of `channels` x `rows` of output, each step loads, pools, stores
    add, rescale, unfused neuron or firing: chunks of elements, each on all T steps
    time reduction (unfused): all T steps accumulated in one ofmap region, then stored

Buffers whose data changes every step (or every tile, for weights) are split into two slots used
alternately when two fit, so that the next load can run while the current step computes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Callable, ClassVar, Iterator

import numpy as np

from ttc.isa.encoding import Instr, Ref
from ttc.isa.hwconfig import (TTFS_FIRE_ACTIONS, TTFS_SYNAPSE_ACTIONS, HwConfig, multiply_action, neuron_update_actions,
                              spike_add_action)
from ttc.isa.neuron import PARAMS as NEURON_PARAMS
from ttc.isa.table import FORMAT_BYTES, LOG5, TIME, elems_bytes
from ttc.isa.train import band_fields

from .ir import (Add, AvgPool, Conv2d, Fire, Graph, Linear, MaxPool, Membrane, NeuronQ, Op, Rescale, Tape, TimeReduce,
                 live_synapses, tconv_base)
from .layout import plane_bytes, step_bytes, step_stride, value_addr
from .tiling import CONV_FIELD_MAX, Block, RowTile, candidates, ceil_to, channel_unit, fmt, row_tiles, row_unit, spans, split

SLOT_ALIGN = 32


class Step:
    """One step of a walk: `work` (what its instructions do: equal work, equal cycles and bytes), `place`
    (the turn each of its layer's `Slots` is at when it starts: it takes its slots from there in program
    order; `key` is both: equal keys, the same work on the same slots) and its instructions, built when
    first asked for (the cost model asks once per work and place)."""

    __slots__ = ("work", "place", "_build", "_instrs")

    def __init__(self, work: tuple, place: tuple, build: Callable[[], list[Instr]]):
        self.work, self.place, self._build, self._instrs = work, place, build, None

    @property
    def key(self) -> tuple:
        return self.work, self.place

    @property
    def instrs(self) -> list[Instr]:
        if self._instrs is None:
            self._instrs = self._build()
        return self._instrs


def turns(*slots: "Slots | None") -> tuple[int, ...]:
    return tuple(s.turn for s in slots if s is not None)


class Stretch:
    """Consecutive steps of a walk (a tile's time steps) whose keys, and the slots they take, follow
    from `signature` and the turn each of `slots` is at when it starts: the cost model walks the steps
    of each distinct stretch once and advances the slots of its repeats (a ResNet layer has thousands
    of tiles and few kinds). `steps()` yields them, taking the slots."""

    __slots__ = ("signature", "slots", "steps")

    def __init__(self, signature: tuple, slots: list["Slots"], steps: Callable[[], Iterator[Step]]):
        self.signature, self.slots, self.steps = signature, slots, steps

    def turns(self) -> tuple[int, ...]:
        return turns(*self.slots)


class Slots:
    """A buffer region of `plan.slots(mem)` slots used in turn (two: double buffering)."""

    def __init__(self, plan: "LayerPlan", mem: str):
        size = plan.slot_size(mem)
        self.refs = [Ref(mem, k * size) for k in range(plan.slots(mem))]
        self.used = 0

    def __getitem__(self, k: int) -> Ref:
        return self.refs[k % len(self.refs)]

    @property
    def turn(self) -> int:
        """Which slot is next."""
        return self.used % len(self.refs)

    def next(self) -> Ref:
        self.used += 1
        return self.refs[(self.used - 1) % len(self.refs)]

    def take(self, n: int) -> list[Ref]:
        """The next n slots in turn (one slot per block of a step)."""
        first, self.used = self.used % len(self.refs), self.used + n
        return (self.refs[first:] + self.refs[:first])[:n]


@dataclass
class LayerPlan(ABC):
    """What every layer plan offers: bytes per slot of each buffer it uses, how many slots fit,
    whether it fits at all, its walk and its arithmetic."""

    graph: Graph = field(repr=False, compare=False)
    op: Op = field(repr=False, compare=False)
    hw: HwConfig = field(repr=False, compare=False)
    placed: bool = field(default=False, repr=False, compare=False)  # DRAM addresses allocated (codegen)
    per_neuron: bool = False  # its neuron decays per channel: each tile loads its decays beside its states
    taped: bool = False  # training: its neuron writes active bits after its spikes, which a `tape` stores
    slot_bytes: dict[str, int] = field(init=False, repr=False, compare=False)
    double: frozenset = field(init=False, repr=False, compare=False)  # buffers that alternate two slots when two fit

    tile_names: ClassVar[tuple[str, ...]] = ()
    tile: ClassVar[tuple[int, ...]] = ()  # the tile: one size per name of tile_names

    # ---- buffers
    def slot_size(self, buffer: str) -> int:
        return ceil_to(self.slot_bytes[buffer], SLOT_ALIGN)

    def slots(self, buffer: str) -> int:
        return 2 if buffer in self.double and 2 * self.slot_size(buffer) <= self.hw.buffers[buffer].bytes else 1

    def fits(self, slots: int = 1) -> bool:
        """Do `slots` slots of every double-buffered buffer (one of the others) fit?"""
        return all((slots if b in self.double else 1) * self.slot_size(b) <= self.hw.buffers[b].bytes
                   for b in self.slot_bytes)

    def overflow(self) -> tuple[str, int, int] | None:
        """(buffer, bytes needed, bytes it holds) of the first buffer one slot does not fit, if any."""
        for buffer, need in self.slot_bytes.items():
            if need > self.hw.buffers[buffer].bytes:
                return buffer, need, self.hw.buffers[buffer].bytes
        return None

    def aligned(self) -> bool:
        return True

    def shape_key(self) -> tuple:
        """Everything that decides the walk's on-chip work: plans with equal keys cost the same."""
        return (type(self).__name__, self.time) + tuple(getattr(self, f.name) for f in fields(self) if f.compare)

    # ---- what the layer is
    @property
    def head(self) -> Op:
        """The op the layer table names the layer by: the fused consumer, else the op itself."""
        return self.graph.consumer(self.op) or self.op

    @property
    def kind(self) -> str:
        """The layer's ops: `conv2d+neuron_q`, `conv2d+add+neuron_q`, ..."""
        names, op = [self.op.opname], self.graph.consumer(self.op)
        while op is not None:
            names.append(op.opname)
            op = self.graph.consumer(op)
        return "+".join(names)

    def info(self) -> dict:
        """The layer table's extra fields for this layer."""
        return {}

    @property
    def time(self) -> int:
        return self.graph.op(self.op.inputs[0]).type.time

    @abstractmethod
    def stretches(self) -> Iterator[Stretch]:
        """The layer's steps in program order, in stretches: each plan kind walks its own loop nest."""

    @classmethod
    def sizes(cls, graph: Graph, op: Op) -> list[list[int]]:
        """The tile sizes the tile search tries in each dimension of `extents` (plans that have them)."""
        return [candidates(n) for n in cls.extents(graph, op)]

    def walk(self) -> Iterator[Step]:
        for stretch in self.stretches():
            yield from stretch.steps()

    @abstractmethod
    def arithmetic(self, density: float) -> dict[str, dict[str, float]]:
        """Arithmetic actions per inference by unit, the spike-driven ones at input spike `density`."""

    def pe_share(self, density: float, rows: float | None = None) -> float:
        """The share of its spike-driven convs' dense PE work that the array does under `[array] skip` (what
        their cycles follow): all of it, but in a plan that has such convs."""
        return 1.0

    # ---- instructions and DRAM addressing, shared by every walk
    def instr(self, op: str, **args) -> Instr:
        """Checked against the ISA table when the walk is emitted (codegen), not when it is only priced."""
        return Instr(op, args) if self.placed else Instr.unchecked(op, args)

    def copy(self, op: str, dst: Ref, src: Ref, nbytes: int, rows: int = 1, src_stride: int = 0, dst_stride: int = 0) -> Instr:
        return self.instr(op, dst=dst, src=src, rows=rows, row_bytes=nbytes, src_stride=src_stride, dst_stride=dst_stride)

    def addr(self, value: Op) -> int:
        return self.dram_layout(value)[0]

    def dram_layout(self, value: Op) -> tuple[int, int, int]:
        """(DRAM address of step 0, bytes between steps, bytes per spike plane) of a value the layer reads or writes."""
        layout = self._layouts.get(value.name)
        if layout is None:
            addr = value_addr(self.graph, value)
            if addr is None:
                if self.placed:
                    value.fail("is read or written by a layer but has no DRAM address (allocate bug)")
                addr = 0  # the cost model prices a plan before DRAM is allocated: addresses do not change costs
            layout = self._layouts[value.name] = (addr, step_stride(self.graph, value), plane_bytes(value.type))
        return layout

    @cached_property
    def _layouts(self) -> dict[str, tuple[int, int, int]]:
        return {}

    def step_addr(self, value: Op, t: int, offset: int = 0) -> Ref:
        addr, stride, _ = self.dram_layout(value)
        return Ref("dram", addr + t * stride + offset)

    def move_block(self, direction: str, value: Op, t: int, block: Block, chip: Ref) -> list[Instr]:
        """Load or store one block of step t of `value` between DRAM and `chip`: each of its spike
        planes (MT), the planes one after another on chip."""
        offset, rows, row_bytes, stride = block.run
        addr, step, plane = self.dram_layout(value)
        out = []
        for p in range(value.type.dtype.planes):
            dram = Ref("dram", addr + t * step + p * plane + offset)
            at = Ref(chip.mem, chip.addr + p * rows * row_bytes) if p else chip
            if direction == "load":
                out.append(self.copy("load", at, dram, row_bytes, rows, stride, row_bytes))
            else:
                out.append(self.copy("store", dram, at, row_bytes, rows, row_bytes, stride))
        return out

    def vmem_bytes(self, count: int) -> int:
        """vmem for `count` neurons: their states, and after them their decays when per neuron (nrn's per_neuron
        reads them there)."""
        return 4 * count * (2 if self.per_neuron else 1)

    def neuron_start(self, n: NeuronQ, count: int, states: Block) -> list[Instr]:
        """Before a tile's first step: its `count` states start at v_init and, per neuron, its decays (the
        i32 block `states` of the layer's decays in DRAM, laid out as its states) are loaded after them. Issued
        with the tile's first loads, so the decays arrive while the step's PE work runs."""
        code = [self.instr("vfill", dst=Ref("vmem", 0), n=count, value=n.v_init)]
        if self.per_neuron:
            if n.ddram is None and self.placed:
                n.fail("has decays per channel but no DRAM address for them (allocate bug)")
            offset, rows, row_bytes, stride = states.run  # i32 blocks both: the same offsets
            code.append(self.copy("load", Ref("vmem", 4 * count), Ref("dram", (n.ddram or 0) + offset), row_bytes, rows,
                                  stride, row_bytes))
        return code

    def neuron_step(self, n: NeuronQ, count: int, t: int, src: Ref, out: Ref, spikes: Block, states: Block) -> list[Instr]:
        """One step of `count` neurons whose input is at `src`; their spikes (and states) go to DRAM."""
        params = {p: getattr(n, p) for p in NEURON_PARAMS}
        if self.per_neuron:
            params["decay_mul"] = 0  # each neuron's own follows its state (neuron_start)
        band, band_exp = band_fields(n.band)
        code = [self.instr("nrn", src=src, state=Ref("vmem", 0), dst=out, n=count, per_neuron=int(self.per_neuron),
                           band=band, band_exp=band_exp, **params)]
        code += self.move_block("store", n, t, spikes, out)
        for m in self.membranes(n):
            code += self.move_block("store", m, t, states, Ref("vmem", 0))
        for tape in self.tapes(n):  # the active bits, after the spike planes
            _, rows, row_bytes, _ = spikes.run
            code += self.move_block("store", tape, t, spikes, Ref(out.mem, out.addr + n.levels * rows * row_bytes))
        return code

    def fire(self, f: Fire, count: int, t: int, src: Ref, out: Ref, times: Block) -> list[Instr]:
        """TTFS firing of `count` accumulators at `src`; the spike times go to DRAM."""
        x = self.graph.op(f.inputs[0]).type.dtype
        return [self.instr("tfire", src=src, dst=out, src_fmt=fmt(x), n=count, frac=x.frac, window=f.window),
                *self.move_block("store", f, t, times, out)]

    def membranes(self, neuron: Op) -> list[Op]:
        return [u for u in self.graph.users(neuron.name) if isinstance(u, Membrane)]

    def tapes(self, neuron: Op) -> list[Op]:
        return [u for u in self.graph.users(neuron.name) if isinstance(u, Tape)]


def _neuron_actions(n: NeuronQ) -> dict[str, int]:
    return neuron_update_actions(n.reset, n.in_shift, n.decay_mul, n.decay_shift, n.levels, n.mode)


_LIVE: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id of a weight array -> (it, its live synapses per tap)


def _live_per_tap(op: Conv2d | Linear) -> np.ndarray:
    """Live synapses per kernel tap, [kh, kw]: the same for every tiling the tile search prices."""
    hit = _LIVE.get(id(op.weight))
    if hit is None or hit[0] is not op.weight:
        if len(_LIVE) > 1024:
            _LIVE.clear()
        w = live_synapses(op)
        hit = _LIVE[id(op.weight)] = (op.weight, w.reshape(w.shape[0], -1, *(w.shape[2:] or (1, 1))).sum(axis=(0, 1)))
    return hit[1]


def _in_bounds(n_out: int, n_in: int, k: int, s: int, pad: int) -> np.ndarray:
    """For each kernel offset, how many of the n_out outputs read an input inside [0, n_in)."""
    pos = np.arange(n_out)[:, None] * s + np.arange(k)[None, :] - pad
    return ((pos >= 0) & (pos < n_in)).sum(axis=0)


# ------------------------------------------------------------------------------------ conv / linear

@dataclass
class ConvPlan(LayerPlan):
    """A conv (linear: a 1x1 conv of a 1x1 image) with its fused consumer, in tiles of co x rows x ci.

    A fused residual add (consumer "add"): each step's sums s meet the same block of the add's other operand
    r, loaded into the ifmap slot after the input blocks' (the next in turn, as one more block), as
    y = R(s, shift) + R(r, shift') (the add's shifts) in a second psum region;
    y is stored (narrowed through ofmap when the add stores fewer bits), and the neuron fused after the add,
    if any, runs on it there. A fused max pool (consumer "pool", its windows tiling the output): each step's
    sums are pooled from psum into ofmap (row tiles hold whole windows) and only the pooled values stored.
    A producer (a conv fused into this layer's conv, which reads each row of its input alone): each step
    makes the tile's input, the producer's sums of the tile's rows for all its channels, in psum after the
    layer's own regions, from the producer's input block and its weights (after the layer's in the slot)."""

    co: int = 0
    rows: int = 0
    ci: int = 0
    cin: int = 0
    cout: int = 0
    ih: int = 0
    iw: int = 0
    oh: int = 0
    ow: int = 0
    kh: int = 0
    kw: int = 0
    sh: int = 0
    sw: int = 0
    pt: int = 0
    pl: int = 0
    in_fmt: str = ""
    consumer: str = ""  # "neuron", "fire" (TTFS), "reduce", "add", "pool" or "" (the raw sums are stored)
    bias: bool = False
    membranes_out: int = 0  # membrane outputs of the fused neuron
    wfmt: str = "i8"
    out_fmt: str = "i32"  # how stored sums are stored (narrowed through ofmap when not i32)
    shift: int = 0
    in_window: int = 0  # TTFS: the window of the input's spike times (tconv)
    fire_window: int = 0  # TTFS: the window of the fused firing's
    in_planes: int = 1  # MT: the spike planes of the input, and how they weigh (ttc.isa.mt)
    in_mode: str = "parallel"
    out_planes: int = 1  # MT: the thresholds of the fused neuron, and its mode
    out_mode: str = "parallel"
    add_fmt: str = ""  # add: the sum's stored format, the other operand's, and (the sums', the operand's) shifts
    residual_fmt: str = ""
    add_shifts: tuple[int, int] = (0, 0)
    add_neuron: bool = False  # add: a neuron runs on the sum
    pool_k: int = 0  # pool: its window (= stride), and the pooled values' format
    pool_fmt: str = ""
    producer_key: tuple = ()  # the shape of the conv run inside this layer to make its input, if any
    producer: "ConvPlan | None" = field(default=None, repr=False, compare=False)

    tile_names: ClassVar = ("output channels", "output rows", "input channels")

    @classmethod
    def of(cls, graph: Graph, op: Conv2d | Linear, hw: HwConfig, tile, placed: bool = False) -> "ConvPlan":
        """The plan of the layer `op` heads: its own, or, when `op` is a producer fused into its 1x1 consumer
        conv, the consumer's with `op` computed inside it (every output channel, the tile's rows)."""
        main = cls.main_conv(graph, op)
        if main is op:
            return cls._of(graph, op, hw, tile, placed)
        producer = cls._of(graph, op, hw, (op.type.shape[0], tile[1], graph.op(op.inputs[0]).type.shape[0]), placed,
                           alone=True)
        return cls._of(graph, main, hw, tile, placed, producer)

    @staticmethod
    def main_conv(graph: Graph, op: Op) -> Op:
        """The conv whose plan is the layer `op` heads: `op`'s own, or the consumer conv a producer runs inside."""
        consumer = graph.consumer(op)
        return consumer if isinstance(consumer, Conv2d) else op

    @classmethod
    def _of(cls, graph: Graph, op: Conv2d | Linear, hw: HwConfig, tile, placed: bool, producer: "ConvPlan | None" = None,
            alone: bool = False) -> "ConvPlan":
        """`alone`: without what runs inside its layer (a producer's sums stay on chip for its consumer)."""
        x, consumer = graph.op(op.inputs[0]).type, None if alone else graph.consumer(op)
        oh, ow = op.type.shape[1:] or (1, 1)
        add = consumer if isinstance(consumer, Add) else None
        neuron_op = graph.consumer(add) if add is not None else consumer  # the neuron the layer runs, if any
        neuron = isinstance(neuron_op, NeuronQ)
        co, rows, ci = tile
        if isinstance(op, Linear):
            geometry = dict(cin=x.shape[0], ih=1, iw=1, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0)
        else:
            _, cin, kh, kw = op.weight.shape
            geometry = dict(cin=cin, ih=x.shape[1], iw=x.shape[2], kh=kh, kw=kw, sh=op.stride[0], sw=op.stride[1],
                            pt=op.padding[0], pl=op.padding[1])
        kind = ("add" if add is not None else "neuron" if neuron else "fire" if isinstance(consumer, Fire)
                else "pool" if isinstance(consumer, MaxPool) else "reduce" if consumer else "")
        if add is not None:
            mine = add.inputs.index(op.name)
            shifts = (add.shift_a, add.shift_b)
            residual = graph.op(add.inputs[1 - mine])
            consumer_fields = dict(add_fmt=fmt(add.type.dtype), residual_fmt=fmt(residual.type.dtype),
                                   add_shifts=(shifts[mine], shifts[1 - mine]), add_neuron=neuron)
        elif kind == "pool":
            consumer_fields = dict(pool_k=consumer.kernel, pool_fmt=fmt(consumer.type.dtype))
        else:
            consumer_fields = {}
        return cls(graph, op, hw, placed, co=co, rows=rows, ci=ci, cout=op.type.shape[0], oh=oh, ow=ow,
                   in_fmt="i32" if producer is not None else fmt(x.dtype), consumer=kind, bias=op.bias is not None,
                   membranes_out=sum(isinstance(u, Membrane) for u in graph.users(neuron_op.name)) if neuron else 0,
                   wfmt=LOG5 if op.log_scale is not None else f"i{8 * op.weight.itemsize}", out_fmt=fmt(op.type.dtype),
                   shift=tconv_base(op, x) if op.log_scale is not None else op.shift,
                   in_window=x.dtype.bits if x.dtype.kind == "ttfs" else 0,
                   fire_window=consumer.window if kind == "fire" else 0,
                   in_planes=x.dtype.planes, in_mode=x.dtype.mode,
                   out_planes=neuron_op.levels if neuron else 1, out_mode=neuron_op.mode if neuron else "parallel",
                   per_neuron=neuron and neuron_op.per_channel,
                   taped=neuron and any(isinstance(u, Tape) for u in graph.users(neuron_op.name)), **consumer_fields,
                   **geometry, **(dict(producer=producer, producer_key=producer.shape_key())
                                  if producer is not None else {}))

    @staticmethod
    def extents(graph: Graph, op: Op) -> tuple[int, ...]:
        """How many of each tiled dimension there are: output channels, output rows, input channels (of the
        consumer conv a producer runs inside)."""
        op = ConvPlan.main_conv(graph, op)
        return op.type.shape[0], (op.type.shape[1:] or (1,))[0], graph.op(op.inputs[0]).type.shape[0]

    @classmethod
    def sizes(cls, graph: Graph, op: Op) -> list[list[int]]:
        """With a producer, every output and input channel in one tile (the producer's sums, made once per row
        tile, are all of the layer's input): only the rows are tiled."""
        if cls.main_conv(graph, op) is not op:
            channels, rows, inputs = cls.extents(graph, op)
            return [[channels], candidates(rows), [inputs]]
        return super().sizes(graph, op)

    def __post_init__(self):
        taps = self.kh * self.kw
        wb = self.wbytes
        self.resident = self.co * (self.cin * taps) * wb + 4 * self.co <= self.hw.buffers["wgt"].bytes
        weights = self.co * (self.cin if self.resident else self.ci) * taps * wb
        n = self.co * self.rows * self.ow
        spikes = self.co * elems_bytes("spike", self.rows * self.ow) if self.rows < self.oh else elems_bytes("spike", n)
        fired = (self.out_planes + self.taped) * spikes if self.neuron else 0
        #: add: where the narrowed sum sits in an ofmap slot (after the neuron's spikes)
        self.narrow_at = ceil_to(fired, SLOT_ALIGN)
        if self.consumer == "add":
            out = (self.narrow_at + elems_bytes(self.add_fmt, n) if self.add_fmt != "i32" else fired) or None
        elif self.consumer == "pool":
            out = elems_bytes(self.pool_fmt, n // self.pool_k ** 2)
        else:
            out = {"neuron": fired, "fire": n, "reduce": 4 * n,
                   "": elems_bytes(self.out_fmt, n) if self.narrowed else None}[self.consumer]
        loaded = max(t.r1 - t.r0 for t in self.row_tiles)
        inputs = self.in_planes * (self.ci * elems_bytes(self.in_fmt, loaded * self.iw) if self.rows < self.oh
                                   else elems_bytes(self.in_fmt, self.ci * self.ih * self.iw))
        adding, p = self.consumer == "add", self.producer
        #: a producer's weights after the layer's own in a weight slot (its sums after the layer's in psum)
        self.producer_wgt_at = ceil_to(self.bias_offset(weights) + 4 * self.co, SLOT_ALIGN)
        if p is not None:
            inputs = p.slot_bytes["ifmap"]  # the producer's input block: the layer's own input is made on chip
        self.slot_bytes = {"wgt": self.producer_wgt_at + p.slot_bytes["wgt"] if p else self.bias_offset(weights) + 4 * self.co,
                           "ifmap": max(inputs, elems_bytes(self.residual_fmt, n)) if adding else inputs,
                           "psum": self.own_psum(n) + (p.slot_bytes["psum"] if p else 0)}
        if self.neuron:
            self.slot_bytes["vmem"] = self.vmem_bytes(n)
        if out is not None:
            self.slot_bytes["ofmap"] = out
        self.double = frozenset({"wgt", "ifmap", "psum"}
                                | ({"ofmap"} if self.consumer in ("neuron", "fire", "add", "pool") or self.narrowed
                                   else set()))

    def own_psum(self, n: int) -> int:
        """The psum bytes of the layer's own regions for a tile of n sums: the sums, then an add's sum with its
        operand (a producer's sums follow them)."""
        return 4 * n * (2 if self.consumer == "add" else 1)

    @property
    def kind(self) -> str:
        """With a producer first: `conv2d+conv2d+neuron_q`."""
        return f"{self.producer.op.opname}+{super().kind}" if self.producer is not None else super().kind

    @property
    def neuron(self) -> bool:
        """Does the layer run a neuron (fused into the conv, or after its fused add)?"""
        return self.consumer == "neuron" or self.add_neuron

    @property
    def neuron_op(self) -> NeuronQ | None:
        consumer = self.graph.consumer(self.op)
        return (self.graph.consumer(consumer) if self.consumer == "add" else consumer) if self.neuron else None

    @property
    def stored_fmts(self) -> tuple[str, ...]:
        """The formats of what the layer stores: spikes, spike times, sums, or an add's sum and its neuron's spikes."""
        if self.consumer == "add":
            return (self.add_fmt, "spike") if self.add_neuron else (self.add_fmt,)
        if self.consumer == "pool":
            return (self.pool_fmt,)
        return ({"neuron": "spike", "fire": TIME}.get(self.consumer, self.out_fmt),)

    @property
    def narrowed(self) -> bool:
        return self.consumer == "" and self.out_fmt != "i32"

    @property
    def wbytes(self) -> int:
        return FORMAT_BYTES[self.wfmt]

    @staticmethod
    def bias_offset(weights: int) -> int:
        return ceil_to(weights, 4)

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    def weights_at(self, tc: int, i0: int) -> int:
        """Offset in a weight slot of the [tc, ci, kh, kw] weights of the block from input channel i0:
        a resident slot holds every block of its output-channel tile in turn."""
        return tc * i0 * self.taps * self.wbytes if self.resident else 0

    def bias_at(self, tc: int) -> int:
        """Offset of a tile's bias in the slot it is loaded with, after the weights that slot holds."""
        held = self.cin if self.resident else self.ci_tiles[0][1]
        return self.bias_offset(tc * held * self.taps * self.wbytes)

    @cached_property
    def row_tiles(self) -> list[RowTile]:
        return row_tiles(self.oh, self.rows, self.ih, self.kh, self.sh, self.pt, row_unit(self.in_fmt, self.iw))

    @cached_property
    def co_tiles(self) -> list[tuple[int, int]]:
        return spans(self.cout, self.co)

    @cached_property
    def ci_tiles(self) -> list[tuple[int, int]]:
        tiles = spans(self.cin, self.ci)
        if len(tiles) > 1 and getattr(self.op, "sat_bits", None):  # sat(a + b) is not sat(sat(a) + b)
            self.op.fail(f"saturates its sums, which it must add in one block of input channels: its {self.cin} input "
                         f"channels take {len(tiles)} blocks in hardware config {self.hw.name!r}")
        return tiles

    @property
    def tiles(self) -> int:
        return len(self.co_tiles) * len(self.row_tiles) * len(self.ci_tiles)

    def input_block(self, ci: tuple[int, int], rt: RowTile) -> Block:
        return Block(self.in_fmt, (self.cin, self.ih, self.iw), *ci, rt.r0, rt.r1)

    def output_block(self, fmt_: str, co: tuple[int, int], rt: RowTile) -> Block:
        return Block(fmt_, (self.cout, self.oh, self.ow), *co, rt.y0, rt.y1)

    def conv_args(self, tci: int, rt: RowTile) -> dict:
        """The geometry operands of one block's convolution."""
        return dict(cin=tci, ih=rt.r1 - rt.r0, iw=self.iw, oh=rt.y1 - rt.y0, ow=self.ow, kh=self.kh, kw=self.kw,
                    sh=self.sh, sw=self.sw, pt=rt.pt, pl=self.pl)

    def aligned(self) -> bool:
        """Do the tiles of every spike tensor start on bytes, and do a tile's channels fit the conv
        instructions' `cin` and `cout` fields (a linear layer of 70,000 inputs must take them in tiles)?"""
        if self.ci > CONV_FIELD_MAX["cin"] or self.co > CONV_FIELD_MAX["cout"]:
            return False
        if self.consumer == "pool" and self.rows % self.pool_k:  # a row tile pools whole windows
            return False
        if self.producer is not None and (self.ci != self.cin or not self.producer.aligned()):  # one block, made here
            return False
        if self.rows < self.oh:
            if self.in_fmt == "spike" and self.ih * self.iw % 8:
                return False
            if "spike" in self.stored_fmts and (self.oh * self.ow % 8 or self.rows % row_unit("spike", self.ow)):
                return False
        else:
            if self.ci % channel_unit(self.in_fmt, self.ih * self.iw) and self.ci != self.cin:
                return False
            if any(self.co % channel_unit(f, self.oh * self.ow) for f in self.stored_fmts) and self.co != self.cout:
                return False
        return True

    @property
    def tile(self) -> tuple[int, ...]:
        return self.co, self.rows, self.ci

    def info(self) -> dict:
        size = self.op.weight.size
        return dict(tile=list(self.tile), source=self.op.path, weights=int(size),
                    macs_per_step=int(size * self.oh * self.ow))

    # ---- the walk
    def load_weights(self, slot: Ref, co: tuple[int, int], ci: tuple[int, int]) -> list[Instr]:
        """The weights of output channels `co` x input channels `ci` into `slot` (with the bias, once
        per slot: with the first block)."""
        op = self.op
        (c0, c1), (i0, i1), taps, cin, wb = co, ci, self.taps, self.cin, self.wbytes
        rows, per_row = (1, (c1 - c0) * cin * taps * wb) if i1 - i0 == cin else (c1 - c0, (i1 - i0) * taps * wb)
        code = [self.copy("load", Ref("wgt", slot.addr + self.weights_at(c1 - c0, i0)),
                      Ref("dram", self.wdram + (c0 * cin + i0) * taps * wb), per_row, rows, cin * taps * wb, per_row)]
        if i0 == 0 and self.bias:
            code.append(self.copy("load", Ref("wgt", slot.addr + self.bias_at(c1 - c0)),
                              Ref("dram", self.wdram + op.weight.nbytes + 4 * c0), 4 * (c1 - c0)))
        return code

    @property
    def wdram(self) -> int:
        if self.op.wdram is None and self.placed:
            self.op.fail("has no DRAM address for its weights (allocate bug)")
        return self.op.wdram or 0

    def resident_weights(self, slot: Ref, co: tuple[int, int]) -> list[Instr]:
        return [i for ci in self.ci_tiles for i in self.load_weights(slot, co, ci)] + self.producer_weights(slot)

    def producer_weights(self, slot: Ref) -> list[Instr]:
        """A producer's weights (all of them), after the layer's own in `slot`."""
        p = self.producer
        return p.load_weights(Ref("wgt", slot.addr + self.producer_wgt_at), (0, p.cout), (0, p.cin)) if p else []

    @cached_property
    def producer_rows(self) -> dict[int, RowTile]:
        """The producer's row tile that makes each of the layer's row tiles' rows (by its first row)."""
        return {rt.y0: rt for rt in self.producer.row_tiles}

    def produce(self, t: int, rt: RowTile, slot: Ref, w: Ref, dst: Ref) -> list[Instr]:
        """Step t of the producer, for the rows of row tile `rt` and every channel: its input block loaded
        into ifmap `slot`, its sums made at psum `dst` from its weights in weight slot `w`."""
        p, prt = self.producer, self.producer_rows[rt.y0]
        n = p.cout * (rt.y1 - rt.y0) * p.ow
        at = w.addr + self.producer_wgt_at
        code = [p.instr("vbias", dst=dst, bias=Ref("wgt", at + p.bias_at(p.cout)), channels=p.cout, plane=n // p.cout)
                ] if p.bias else []
        code += p.move_block("load", self.graph.op(p.op.inputs[0]), t, p.input_block((0, p.cin), prt), slot)
        return code + p.block_conv(slot, at, dst, p.cout, n, (0, p.cin), prt, accumulate=int(p.bias))

    def stretches(self) -> Iterator[Stretch]:
        """One stretch per output tile: its T steps. Resident weights are loaded before the first (the
        prologue) and the next tile's prefetched during the last step of a tile's last row tile."""
        slots = [Slots(self, m) for m in ("wgt", "ifmap", "psum")] + ([Slots(self, "ofmap")] if "ofmap" in self.slot_bytes else [])
        if self.resident:
            slots[0].next()
        for k, co in enumerate(self.co_tiles):
            upcoming = self.co_tiles[k + 1] if self.resident and k + 1 < len(self.co_tiles) else None
            for j, rt in enumerate(self.row_tiles):
                first, fetch = k == j == 0, upcoming if j == len(self.row_tiles) - 1 else None
                yield Stretch((co[1] - co[0], *self.rows_key(rt), first, fetch and fetch[1] - fetch[0]), slots,
                              lambda k=k, co=co, rt=rt, first=first, fetch=fetch: self.tile_steps(k, co, rt, first, fetch, *slots))

    def rows_key(self, rt: RowTile) -> tuple[int, ...]:
        """What of a row tile decides its steps' work: its rows, the input rows it loads and where they start (and
        those of the producer's row tile that makes its input)."""
        key = (rt.y1 - rt.y0, rt.r1 - rt.r0, rt.pt)
        if self.producer is not None:
            made = self.producer_rows[rt.y0]
            key += (made.r1 - made.r0, made.pt)
        return key

    def tile_steps(self, k: int, co: tuple[int, int], rt: RowTile, first: bool, fetch: tuple[int, int] | None,
                   wgt: Slots, ifmap: Slots, psum: Slots, out: Slots | None = None) -> Iterator[Step]:
        x_op, consumer, steps = self.graph.op(self.op.inputs[0]), self.graph.consumer(self.op), self.time
        w = wgt[wgt.used - 1] if self.resident else None  # the slot the tile's resident weights were loaded in
        prologue = self.resident_weights(w, co) if first and self.resident else []
        for t in range(steps):
            place = turns(wgt, ifmap, psum, out)
            acc = psum.next()
            # block b's input slot is inputs[b % len(inputs)]; an add's operand takes the next after the blocks'
            inputs = ifmap.take(len(self.ci_tiles) + (self.consumer == "add"))
            weights = [w] if self.resident else wgt.take(len(self.ci_tiles))
            prefetch = wgt.next() if fetch and t == steps - 1 else None
            dst = out.next() if out is not None and self.consumer != "reduce" else out[0] if out else None
            work = (co[1] - co[0], *self.rows_key(rt), t == 0, t == steps - 1, bool(prologue), prefetch and fetch[1] - fetch[0])
            yield Step(work, place,
                       lambda prologue=prologue, t=t, acc=acc, inputs=inputs, weights=weights, prefetch=prefetch, dst=dst:
                       prologue + self.conv_step(x_op, consumer, co, rt, t, acc, inputs, weights, prefetch, k, dst))
            prologue = []

    def conv_step(self, x_op: Op, consumer: Op | None, co: tuple[int, int], rt: RowTile, t: int, acc: Ref,
                  inputs: list[Ref], weights: list[Ref], fetch: Ref | None, k: int, dst: Ref | None) -> list[Instr]:
        """Step t of output tile (co, rt): acc = bias + the conv of the input, block by block of input
        channels (streaming each block's weights unless resident), then the fused consumer. Block b
        reads its input from slot inputs[b % len(inputs)] and its weights from weights[b % len(weights)]."""
        tc = co[1] - co[0]
        n = tc * (rt.y1 - rt.y0) * self.ow
        code = []
        if t == 0 and self.neuron:
            code += self.neuron_start(self.neuron_op, n, self.output_block("i32", co, rt))
        elif t == 0 and self.consumer == "reduce":
            code.append(self.instr("vfill", dst=dst, n=n, value=0))
        for b, (i0, i1) in enumerate(self.ci_tiles):
            w, src = weights[b % len(weights)], inputs[b % len(inputs)]
            if not self.resident:
                code += self.load_weights(w, co, (i0, i1)) + self.producer_weights(w)
            if b == 0 and self.bias:
                code.append(self.instr("vbias", dst=acc, bias=Ref("wgt", w.addr + self.bias_at(tc)), channels=tc,
                                                plane=n // tc))
            if self.producer is None:
                code += self.move_block("load", x_op, t, self.input_block((i0, i1), rt), src)
            else:  # the input is made here: the producer's sums of the tile's rows
                made = Ref("psum", acc.addr + self.own_psum(n))
                code += self.produce(t, rt, src, w, made)
                src = made
            code += self.block_conv(src, w.addr, acc, tc, n, (i0, i1), rt, accumulate=int(self.bias or b > 0))
        if fetch is not None:  # in DRAM's queue before this tile's last results
            code += self.resident_weights(fetch, self.co_tiles[k + 1])
        if self.consumer == "neuron":
            code += self.neuron_step(consumer, n, t, acc, dst, self.output_block("spike", co, rt),
                                     self.output_block("i32", co, rt))
        elif self.consumer == "add":
            code += self.add_step(consumer, co, rt, t, acc, inputs[-1], dst)
        elif self.consumer == "pool":
            k = self.pool_k
            code += [self.instr("pool", src=acc, dst=dst, mode="max", src_fmt="i32", dst_fmt=self.pool_fmt, channels=tc,
                                ih=rt.y1 - rt.y0, iw=self.ow, oh=(rt.y1 - rt.y0) // k, ow=self.ow // k, k=k, stride=k,
                                pt=0, pl=0),
                     *self.move_block("store", consumer, t, Block(self.pool_fmt, (self.cout, self.oh // k, self.ow // k),
                                                                  *co, rt.y0 // k, rt.y1 // k), dst)]
        elif self.consumer == "fire":
            code += self.fire(consumer, n, t, acc, dst, self.output_block(TIME, co, rt))
        elif self.consumer == "reduce":
            code.append(self.instr("vacc", dst=dst, src=acc, src_fmt="i32", dst_fmt="i32", n=n, shift=0, accumulate=1))
            if t == self.time - 1:
                code += self.move_block("store", consumer, 0, self.output_block("i32", co, rt), dst)
        elif self.narrowed:
            code.append(self.instr("vacc", dst=dst, src=acc, src_fmt="i32", dst_fmt=self.out_fmt, n=n, shift=0,
                                           accumulate=0))
            code += self.move_block("store", self.op, t, self.output_block(self.out_fmt, co, rt), dst)
        else:
            code += self.move_block("store", self.op, t, self.output_block(self.out_fmt, co, rt), acc)
        return code

    def block_conv(self, src: Ref, wgt_addr: int, acc: Ref, tc: int, n: int, ci: tuple[int, int], rt: RowTile,
                   accumulate: int) -> list[Instr]:
        """The conv of input channels `ci` at `src` into the tile's `tc` x n/tc sums at `acc`, one instruction per PE
        group, with the weights of the slot at `wgt_addr`."""
        (i0, i1), code = ci, []
        for group, (lo, hi) in enumerate(split(tc, self.hw.pe_groups)):
            args = dict(src=src, wgt=Ref("wgt", wgt_addr + self.weights_at(tc, i0) + lo * (i1 - i0) * self.taps * self.wbytes),
                        dst=Ref("psum", acc.addr + 4 * lo * n // tc), **self.conv_args(i1 - i0, rt),
                        cout=hi - lo, accumulate=accumulate, group=group, shift=self.shift)
            if self.in_fmt == TIME:
                code.append(self.instr("tconv", **args, window=self.in_window))
            elif self.in_fmt == "spike":
                code.append(self.instr("sconv", **args, wfmt=self.wfmt, planes=self.in_planes, mode=self.in_mode))
            else:
                code.append(self.instr("dconv", **args, wfmt=self.wfmt, fmt=self.in_fmt,
                                       sat_bits=getattr(self.op, "sat_bits", None) or 0))
        return code

    def add_step(self, add: Add, co: tuple[int, int], rt: RowTile, t: int, acc: Ref, operand: Ref,
                 dst: Ref | None) -> list[Instr]:
        """The fused add of step t: the other operand's block loaded into ifmap slot `operand`, the sum of it and
        the sums at `acc` made in i32 after them, stored (through `dst` when narrower), and the neuron after the
        add run on it."""
        n = (co[1] - co[0]) * (rt.y1 - rt.y0) * self.ow
        residual = self.graph.op(next(i for i in add.inputs if i != self.op.name))
        total = Ref("psum", acc.addr + 4 * n)
        own, other = self.add_shifts
        code = [*self.move_block("load", residual, t, self.output_block(self.residual_fmt, co, rt), operand),
                self.instr("vacc", dst=total, src=acc, src_fmt="i32", dst_fmt="i32", n=n, shift=own, accumulate=0),
                self.instr("vacc", dst=total, src=operand, src_fmt=self.residual_fmt, dst_fmt="i32", n=n, shift=other,
                           accumulate=1)]
        if self.add_fmt == "i32":
            code += self.move_block("store", add, t, self.output_block("i32", co, rt), total)
        else:
            narrow = Ref(dst.mem, dst.addr + self.narrow_at)
            code += [self.instr("vacc", dst=narrow, src=total, src_fmt="i32", dst_fmt=self.add_fmt, n=n, shift=0,
                                accumulate=0),
                     *self.move_block("store", add, t, self.output_block(self.add_fmt, co, rt), narrow)]
        if self.add_neuron:
            code += self.neuron_step(self.neuron_op, n, t, total, dst, self.output_block("spike", co, rt),
                                     self.output_block("i32", co, rt))
        return code

    def pe_share(self, density: float, rows: float | None = None) -> float:
        """Under skip "event", the spike-driven adds at input spike `density` over the dense pairs (the same
        share of every conv instruction's); under "tile", the pairs reading in-bounds rows times the share of
        spike rows holding a spike: `rows` as measured, else that of `iw` independent spikes at `density`."""
        mode = self.hw.pe_skip
        if self.producer is not None:  # its own input is multi-bit: only the producer's convs may be spike-driven
            return self.producer.pe_share(density, rows)
        if mode == "none" or self.in_fmt not in ("spike", TIME):
            return 1.0
        dense = self.cout * self.cin * self.oh * self.ow * self.kh * self.kw
        tap_rows = _in_bounds(self.oh, self.ih, self.kh, self.sh, self.pt)
        if mode == "event":
            reach = np.outer(tap_rows, _in_bounds(self.ow, self.iw, self.kw, self.sw, self.pl))
            return density * float((_live_per_tap(self.op) * reach).sum()) / dense
        occupied = rows if rows is not None else 1 - (1 - density) ** self.iw
        return occupied * int(tap_rows.sum()) / (self.oh * self.kh)

    def arithmetic(self, density: float) -> dict[str, dict[str, float]]:
        steps = self.time
        rows = _in_bounds(self.oh, self.ih, self.kh, self.sh, self.pt)
        cols = _in_bounds(self.ow, self.iw, self.kw, self.sw, self.pl)
        reach = np.outer(rows, cols)  # outputs each kernel tap reaches
        synapses = density * float((_live_per_tap(self.op) * reach).sum()) * self.in_planes  # per step, at the density
        pe: dict[str, float] = {}
        if self.in_fmt == TIME:
            pe = {action: n * synapses * steps for action, n in TTFS_SYNAPSE_ACTIONS.items()}
        elif self.in_fmt == "spike":
            pe = {spike_add_action(self.wfmt): synapses * steps}
        else:
            macs = self.cout * self.cin * int(reach.sum()) * steps
            pe = {"add32": macs, multiply_action(self.in_fmt, self.wfmt): macs}
        n = self.cout * self.oh * self.ow
        shifts = (self.shift != 0 and self.in_fmt != TIME)  # tconv's shift is its base, not a shift of the sums
        shifts += self.in_planes - 1 if self.in_mode == "cascade" else 0  # a cascade's doubling between planes
        if shifts:
            pe["shift32"] = pe.get("shift32", 0) + n * len(self.ci_tiles) * shifts * steps
        if self.producer is not None:  # made again for every output-channel tile
            for action, count in self.producer.arithmetic(density)["pe"].items():
                pe[action] = pe.get(action, 0) + count * len(self.co_tiles)
        out = {"pe": pe}
        if self.neuron:
            out["neuron"] = {a: c * n * steps for a, c in _neuron_actions(self.neuron_op).items()}
        if self.consumer == "add":  # the operand added (each vacc that shifts, shifts)
            out["vector"] = {"add32": n * steps, "shift32": sum(s != 0 for s in self.add_shifts) * n * steps}
        elif self.consumer == "pool":  # every sum in one window, compared
            out["vector"] = {"cmp32": n * steps}
        elif self.consumer == "fire":
            out["neuron"] = {a: c * n * steps for a, c in TTFS_FIRE_ACTIONS.items()}
        elif self.consumer == "reduce":
            out["vector"] = {"add32": n * steps}
        return out


# ------------------------------------------------------------------------------------------ pools

@dataclass
class PoolPlan(LayerPlan):
    """A max or sum pooling, in tiles of `channels` x `rows` of output."""

    channels: int = 0
    rows: int = 0
    c: int = 0
    ih: int = 0
    iw: int = 0
    oh: int = 0
    ow: int = 0
    k: int = 0
    stride: int = 0
    in_fmt: str = ""
    out_fmt: str = ""
    mode: str = "max"
    pad: int = 0  # zeros left and above (a max pool of spikes; the row tiles place those above)

    tile_names: ClassVar = ("channels", "output rows")

    @classmethod
    def of(cls, graph: Graph, op: MaxPool | AvgPool, hw: HwConfig, tile, placed: bool = False) -> "PoolPlan":
        x = graph.op(op.inputs[0]).type
        channels, rows = tile
        c, ih, iw = x.shape
        _, oh, ow = op.type.shape
        mode = "sum" if isinstance(op, AvgPool) else "min" if fmt(x.dtype) == TIME else "max"  # min: the earliest spike
        return cls(graph, op, hw, placed, channels=channels, rows=rows, c=c, ih=ih, iw=iw, oh=oh, ow=ow, k=op.kernel,
                   stride=op.stride, in_fmt=fmt(x.dtype), out_fmt=fmt(op.type.dtype), mode=mode,
                   pad=getattr(op, "padding", 0))

    @staticmethod
    def extents(graph: Graph, op: Op) -> tuple[int, ...]:
        return op.type.shape[0], op.type.shape[1]

    def __post_init__(self):
        loaded = max(t.r1 - t.r0 for t in self.row_tiles)
        per_channel_out = self.rows * self.ow
        self.slot_bytes = {
            "ifmap": self.channels * elems_bytes(self.in_fmt, loaded * self.iw) if self.rows < self.oh
            else elems_bytes(self.in_fmt, self.channels * self.ih * self.iw),
            "ofmap": self.channels * elems_bytes(self.out_fmt, per_channel_out) if self.rows < self.oh
            else elems_bytes(self.out_fmt, self.channels * per_channel_out)}
        self.double = frozenset({"ifmap", "ofmap"})

    @cached_property
    def row_tiles(self) -> list[RowTile]:
        return row_tiles(self.oh, self.rows, self.ih, self.k, self.stride, self.pad, row_unit(self.in_fmt, self.iw))

    @property
    def channel_tiles(self) -> list[tuple[int, int]]:
        return spans(self.c, self.channels)

    @property
    def tiles(self) -> int:
        return len(self.channel_tiles) * len(self.row_tiles)

    def aligned(self) -> bool:
        if self.rows < self.oh:
            if self.in_fmt == "spike" and self.ih * self.iw % 8:
                return False
            if self.out_fmt == "spike" and (self.oh * self.ow % 8 or self.rows % row_unit("spike", self.ow)):
                return False
            return True
        return all(self.channels % channel_unit(f, plane) == 0 or self.channels == self.c
                   for f, plane in ((self.in_fmt, self.ih * self.iw), (self.out_fmt, self.oh * self.ow)))

    @property
    def tile(self) -> tuple[int, ...]:
        return self.channels, self.rows

    def info(self) -> dict:
        return dict(tile=list(self.tile), source=self.op.path)

    def stretches(self) -> Iterator[Stretch]:
        slots = [Slots(self, "ifmap"), Slots(self, "ofmap")]
        for channels in self.channel_tiles:
            for rt in self.row_tiles:
                yield Stretch((channels[1] - channels[0], rt.y1 - rt.y0, rt.r1 - rt.r0, rt.pt), slots,
                              lambda channels=channels, rt=rt: self.tile_steps(channels, rt, *slots))

    def tile_steps(self, channels: tuple[int, int], rt: RowTile, ifmap: Slots, ofmap: Slots) -> Iterator[Step]:
        x_op = self.graph.op(self.op.inputs[0])
        for t in range(self.time):
            place, src, dst = turns(ifmap, ofmap), ifmap.next(), ofmap.next()
            yield Step((channels[1] - channels[0], rt.y1 - rt.y0, rt.r1 - rt.r0, rt.pt), place,
                       lambda t=t, src=src, dst=dst: self.pool_step(x_op, channels, rt, t, src, dst))

    def pool_step(self, x_op: Op, channels: tuple[int, int], rt: RowTile, t: int, src: Ref, dst: Ref) -> list[Instr]:
        (c0, c1) = channels
        return [*self.move_block("load", x_op, t, Block(self.in_fmt, (self.c, self.ih, self.iw), c0, c1, rt.r0, rt.r1), src),
                self.instr("pool", src=src, dst=dst, mode=self.mode, src_fmt=self.in_fmt, dst_fmt=self.out_fmt,
                                   channels=c1 - c0, ih=rt.r1 - rt.r0, iw=self.iw, oh=rt.y1 - rt.y0, ow=self.ow, k=self.k,
                                   stride=self.stride, pt=rt.pt, pl=self.pad),
                *self.move_block("store", self.op, t, Block(self.out_fmt, (self.c, self.oh, self.ow), c0, c1, rt.y0, rt.y1),
                                 dst)]

    def arithmetic(self, density: float) -> dict[str, dict[str, float]]:
        action = "add32" if self.mode == "sum" else "or1" if self.in_fmt == "spike" else "cmp32"
        return {"vector": {action: self.c * self.oh * self.ow * self.k ** 2 * self.time}}


# ------------------------------------------------------------------------------------ elementwise

@dataclass
class ElementwisePlan(LayerPlan):
    """An add, rescale, unfused neuron or TTFS firing over n elements a step, in chunks of `chunk`
    elements, each chunk on all T steps (a neuron's membranes stay in vmem meanwhile)."""

    chunk: int = 0
    n: int = 0
    kind: str = ""  # "add", "rescale", "neuron" or "fire"
    in_fmts: tuple[str, ...] = ()
    out_fmt: str = ""
    shifts: tuple[int, ...] = ()  # add, rescale: each operand's vacc shift
    out_planes: int = 1  # a neuron's thresholds (MT), and its mode
    out_mode: str = "parallel"
    membranes_out: int = 0

    tile_names: ClassVar = ("elements",)

    @classmethod
    def of(cls, graph: Graph, op: Op, hw: HwConfig, tile, placed: bool = False) -> "ElementwisePlan":
        ins = [fmt(graph.op(i).type.dtype) for i in op.inputs]
        kind = "neuron" if isinstance(op, NeuronQ) else op.opname  # or add, rescale, fire
        shifts = (op.shift_a, op.shift_b) if isinstance(op, Add) else (op.shift,) if isinstance(op, Rescale) else ()
        return cls(graph, op, hw, placed, chunk=tile[0], n=op.type.numel, kind=kind, in_fmts=tuple(ins),
                   out_fmt=fmt(op.type.dtype), shifts=shifts, out_planes=op.type.dtype.planes,
                   out_mode=op.type.dtype.mode, per_neuron=kind == "neuron" and op.per_channel,
                   membranes_out=sum(isinstance(u, Membrane) for u in graph.users(op.name)),
                   taped=any(isinstance(u, Tape) for u in graph.users(op.name)))

    def __post_init__(self):
        ins = [elems_bytes(f, self.chunk) for f in self.in_fmts]
        self.slot_bytes = {"ofmap": (self.out_planes + self.taped) * elems_bytes(self.out_fmt, self.chunk)}
        if self.kind == "neuron":
            self.slot_bytes.update(psum=ins[0], vmem=self.vmem_bytes(self.chunk))
        elif self.kind == "fire":
            self.slot_bytes["psum"] = ins[0]
        else:
            self.slot_bytes["ifmap"] = sum(ceil_to(b, SLOT_ALIGN) for b in ins[:-1]) + ins[-1]
        self.double = frozenset({"ifmap", "ofmap", "psum"})

    @cached_property
    def chunks(self) -> list[tuple[int, int]]:
        return spans(self.n, self.chunk)

    @property
    def tiles(self) -> int:
        return len(self.chunks)

    def operand_at(self, k: int) -> int:
        """Offset of input operand k in an ifmap slot."""
        return sum(ceil_to(elems_bytes(f, self.chunk), SLOT_ALIGN) for f in self.in_fmts[:k])

    def block(self, fmt_: str, chunk: tuple[int, int]) -> Block:
        """Elements [e0, e1) of one step, as the rows of a one-channel tensor."""
        return Block(fmt_, (1, self.n, 1), 0, 1, *chunk)

    def aligned(self) -> bool:
        return self.chunk % 8 == 0 or self.chunk == self.n

    @property
    def tile(self) -> tuple[int, ...]:
        return (self.chunk,)

    def info(self) -> dict:
        return dict(tile=list(self.tile), source=self.op.path)

    def stretches(self) -> Iterator[Stretch]:
        slots = [Slots(self, "psum" if self.kind in ("neuron", "fire") else "ifmap"), Slots(self, "ofmap")]
        for chunk in self.chunks:
            yield Stretch((chunk[1] - chunk[0],), slots, lambda chunk=chunk: self.chunk_steps(chunk, *slots))

    def chunk_steps(self, chunk: tuple[int, int], src: Slots, out: Slots) -> Iterator[Step]:
        for t in range(self.time):
            place, slot, dst = turns(src, out), src.next(), out.next()
            yield Step((chunk[1] - chunk[0], t == 0), place,
                       lambda t=t, slot=slot, dst=dst: self.chunk_step(chunk, t, slot, dst))

    def chunk_step(self, chunk: tuple[int, int], t: int, slot: Ref, dst: Ref) -> list[Instr]:
        op, count = self.op, chunk[1] - chunk[0]
        code = []
        if t == 0 and self.kind == "neuron":
            code += self.neuron_start(op, count, self.block("i32", chunk))
        operands = [Ref(slot.mem, slot.addr + self.operand_at(k)) for k in range(len(op.inputs))]
        for x, f, at in zip(op.inputs, self.in_fmts, operands):
            code += self.move_block("load", self.graph.op(x), t, self.block(f, chunk), at)
        if self.kind == "neuron":
            return code + self.neuron_step(op, count, t, slot, dst, self.block("spike", chunk), self.block("i32", chunk))
        if self.kind == "fire":
            return code + self.fire(op, count, t, slot, dst, self.block(TIME, chunk))
        for k, (f, at, shift) in enumerate(zip(self.in_fmts, operands, self.shifts)):
            code.append(self.instr("vacc", dst=dst, src=at, src_fmt=f, dst_fmt=self.out_fmt, n=count, shift=shift,
                                           accumulate=int(k > 0)))
        return code + self.move_block("store", op, t, self.block(self.out_fmt, chunk), dst)

    def arithmetic(self, density: float) -> dict[str, dict[str, float]]:
        updates = self.n * self.time
        if self.kind == "neuron":
            return {"neuron": {a: c * updates for a, c in _neuron_actions(self.op).items()}}
        if self.kind == "fire":
            return {"neuron": {a: c * updates for a, c in TTFS_FIRE_ACTIONS.items()}}
        return {"vector": {"add32": (len(self.in_fmts) - 1) * updates, "shift32": sum(s != 0 for s in self.shifts) * updates}}


# ------------------------------------------------------------------------------ time reduction

@dataclass
class ReducePlan(LayerPlan):
    """A sum over time not fused with a conv: every step loaded whole and added into one ofmap region."""

    n: int = 0
    in_fmt: str = ""

    @classmethod
    def of(cls, graph: Graph, op: TimeReduce, hw: HwConfig, tile=(), placed: bool = False) -> "ReducePlan":
        x = graph.op(op.inputs[0]).type
        return cls(graph, op, hw, placed, n=x.numel, in_fmt=fmt(x.dtype))

    def __post_init__(self):
        x = self.graph.op(self.op.inputs[0]).type
        self.slot_bytes = {"ifmap": step_bytes(x), "ofmap": 4 * self.n}
        self.double = frozenset()

    def info(self) -> dict:
        return dict(source=self.op.path)

    def stretches(self) -> Iterator[Stretch]:
        yield Stretch((), [], self.reduce_steps)

    def reduce_steps(self) -> Iterator[Step]:
        x_op = self.graph.op(self.op.inputs[0])
        for t in range(self.time):
            yield Step((t == 0, t == self.time - 1), (), lambda t=t: self.reduce_step(x_op, t))

    def reduce_step(self, x_op: Op, t: int) -> list[Instr]:
        acc, src = Ref("ofmap", 0), Ref("ifmap", 0)
        code = [self.instr("vfill", dst=acc, n=self.n, value=0)] if t == 0 else []
        code += [self.copy("load", src, self.step_addr(x_op, t), step_bytes(x_op.type)),
                 self.instr("vacc", dst=acc, src=src, src_fmt=self.in_fmt, dst_fmt="i32", n=self.n, shift=0, accumulate=1)]
        if t == self.time - 1:
            code.append(self.copy("store", Ref("dram", self.addr(self.op)), acc, 4 * self.n))
        return code

    def arithmetic(self, density: float) -> dict[str, dict[str, float]]:
        return {"vector": {"add32": self.n * self.time}}


# --------------------------------------------------------------------------------- the one dispatch

def plan_kind(graph: Graph, op: Op) -> type[LayerPlan] | None:
    """The plan kind of the layer `op` heads, or None if it is not a layer (fused into one, or free:
    input, flatten, repeat, time slices and concatenations, membranes)."""
    if isinstance(op, (Conv2d, Linear)) and graph.fused_into(op) is None:  # (not a conv its producer's layer runs)
        return ConvPlan
    if isinstance(op, (MaxPool, AvgPool)) and graph.fused_into(op) is None:
        return PoolPlan
    if isinstance(op, (Add, Rescale, NeuronQ, Fire)) and graph.fused_into(op) is None:
        return ElementwisePlan
    if isinstance(op, TimeReduce) and graph.fused_into(op) is None:
        return ReducePlan
    return None


def layer_plan(graph: Graph, op: Op, hw: HwConfig, tile=None, placed: bool = False) -> LayerPlan | None:
    """The plan of the layer `op` heads, with `tile` (default: its own, set by the tile pass), or None."""
    kind = plan_kind(graph, op)
    if kind is None:
        return None
    return kind.of(graph, op, hw, tuple(tile if tile is not None else (getattr(op, "tile", None) or ())), placed)
