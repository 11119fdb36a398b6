"""Layer plans: how one layer is cut into tiles that fit the on-chip buffers (docs/memory.md).

A conv or linear layer (with the neuron or time reduction fused into it) runs in tiles of `co` output
channels by `rows` output rows, each tile on all T steps while its membranes stay in `vmem`; every step
sums its input in blocks of `ci` input channels (rows plus the halo the kernel needs). A pooling layer
runs in tiles of `channels` by `rows`; an elementwise layer (add, rescale, a neuron of its own) in
chunks of elements, each chunk on all T steps. The allocate pass chooses the tile sizes with the cost model
(`ttc.compiler.cost`); the code generator emits exactly the plan; the cost model prices exactly it.

Spike tensors are bit-packed, [C, H, W] per step, so a block of rows of every channel starts on a
byte only if H*W and the first row times W are multiples of 8: tiles of spike tensors are cut on such
rows, and a block loads from the byte-aligned row at or above the first row it needs (the conv then
skips the extra rows: a negative top padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from ttc.isa.hwconfig import HwConfig
from ttc.isa.table import BY_NAME, FORMAT_BYTES, LOG5, TIME, elems_bytes

from .ir import (Add, AvgPool, Conv2d, DType, Fire, Graph, IRError, Linear, MaxPool, Membrane, NeuronQ, Op, Rescale,
                 TensorType, TimeReduce, tconv_base)

SLOT_ALIGN = 32


def _ceil(n: int, to: int) -> int:
    return -(-n // to) * to


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) in consecutive ranges of `size` (the last may be shorter)."""
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) in `parts` nearly equal, non-empty ranges (fewer if n < parts)."""
    cuts = [n * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def row_unit(fmt: str, w: int) -> int:
    """Rows of a [.., W] tensor that end on a byte: row r starts on a byte when r is a multiple."""
    return 8 // math.gcd(w, 8) if fmt == "spike" else 1


def channel_unit(fmt: str, plane: int) -> int:
    return 8 // math.gcd(plane, 8) if fmt == "spike" else 1


@dataclass(frozen=True)
class Block:
    """Channels [c0, c1) and rows [r0, r1) (all columns) of one step of a stored [C, H, W] tensor,
    packed densely on chip."""

    fmt: str
    shape: tuple[int, int, int]
    c0: int
    c1: int
    r0: int
    r1: int

    def copy(self) -> dict:
        """The load/store operands that move it: DRAM offset within the step, rows, row bytes, DRAM
        stride (one contiguous run when it holds whole channels)."""
        c, h, w = self.shape
        if self.r0 == 0 and self.r1 == h:
            return dict(offset=self._bytes_exact(self.c0 * h * w), rows=1,
                        row_bytes=elems_bytes(self.fmt, (self.c1 - self.c0) * h * w), stride=0)
        return dict(offset=self._bytes_exact(self.c0 * h * w + self.r0 * w), rows=self.c1 - self.c0,
                    row_bytes=self._bytes_exact((self.r1 - self.r0) * w), stride=self._bytes_exact(h * w))

    @property
    def nbytes(self) -> int:
        run = self.copy()
        return run["rows"] * run["row_bytes"]

    def _bytes_exact(self, n: int) -> int:
        if self.fmt == "spike" and n % 8:
            raise ValueError(f"block {self} does not start or end on a byte (tiling bug)")
        return elems_bytes(self.fmt, n)


@dataclass(frozen=True)
class RowTile:
    """Output rows [y0, y1) read input rows [r0, r1); `pt` is the conv's top padding relative to r0."""

    y0: int
    y1: int
    r0: int
    r1: int
    pt: int


def row_tiles(oh: int, rows: int, ih: int, k: int, s: int, pad: int, unit: int) -> list[RowTile]:
    if rows >= oh:
        return [RowTile(0, oh, 0, ih, pad)]
    tiles = []
    for y0, y1 in spans(oh, rows):
        lo, hi = y0 * s - pad, (y1 - 1) * s - pad + k
        r0 = max(0, lo) // unit * unit
        tiles.append(RowTile(y0, y1, r0, min(ih, _ceil(hi, unit)), r0 - lo))
    return tiles


def sizes(n: int, unit: int) -> list[int]:
    """Tile sizes worth trying for n items in multiples of `unit` (or n): the largest size for each
    tile count, largest first."""
    out = sorted({min(n, _ceil(-(-n // k), unit)) for k in range(1, n + 1)}, reverse=True)
    return out


@dataclass
class Plan:
    """What every tiled layer plan offers the allocate pass, codegen and the cost model: bytes per
    slot of each buffer it uses, how many slots fit, and whether it fits at all."""

    hw: HwConfig
    slot_bytes: dict[str, int] = field(init=False)
    double: frozenset = field(init=False)  # buffers that alternate between two slots when two fit

    def slot_size(self, buffer: str) -> int:
        return _ceil(self.slot_bytes[buffer], SLOT_ALIGN)

    def slots(self, buffer: str) -> int:
        return 2 if buffer in self.double and 2 * self.slot_size(buffer) <= self.hw.buffers[buffer].bytes else 1

    def fits(self, slots: int) -> bool:
        """Do `slots` slots of every double-buffered buffer (one of the others) fit?"""
        return all((slots if b in self.double else 1) * self.slot_size(b) <= self.hw.buffers[b].bytes
                   for b in self.slot_bytes)

    def overflow(self) -> tuple[str, int, int] | None:
        """(buffer, bytes needed, bytes it holds) of the first buffer one slot does not fit, if any."""
        for buffer, need in self.slot_bytes.items():
            if need > self.hw.buffers[buffer].bytes:
                return buffer, need, self.hw.buffers[buffer].bytes
        return None


CONV_FIELD_MAX = {f.name: (1 << f.bits) - 1 for f in BY_NAME["sconv"].fields if f.kind == "u"}


@dataclass
class ConvPlan(Plan):
    """A conv (linear: a 1x1 conv of a 1x1 image) with its fused consumer, in tiles of co x rows x ci."""

    co: int
    rows: int
    ci: int
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
    in_fmt: str
    consumer: str  # "neuron", "fire" (TTFS), "reduce" or "" (the raw sums are stored)
    bias: bool
    membranes: int  # membrane outputs of the fused neuron
    wfmt: str = "i8"
    out_fmt: str = "i32"  # how stored sums are stored (narrowed through ofmap when not i32)
    shift: int = 0
    in_window: int = 0  # TTFS: the window of the input's spike times (tconv)
    fire_window: int = 0  # TTFS: the window of the fused firing's
    in_planes: int = 1  # MT: the spike planes of the input, and how they weigh (ttc.isa.mt)
    in_mode: str = "parallel"
    out_planes: int = 1  # MT: the thresholds of the fused neuron, and its mode
    out_mode: str = "parallel"

    def __post_init__(self):
        taps = self.kh * self.kw
        wb = self.wbytes
        self.resident = self.co * (self.cin * taps) * wb + 4 * self.co <= self.hw.buffers["wgt"].bytes
        weights = self.co * (self.cin if self.resident else self.ci) * taps * wb
        n = self.co * self.rows * self.ow
        spikes = self.co * elems_bytes("spike", self.rows * self.ow) if self.rows < self.oh else elems_bytes("spike", n)
        out = {"neuron": self.out_planes * spikes, "fire": n, "reduce": 4 * n,
               "": elems_bytes(self.out_fmt, n) if self.narrowed else None}[self.consumer]
        loaded = max(t.r1 - t.r0 for t in self.row_tiles)
        self.slot_bytes = {"wgt": self.bias_offset(weights) + 4 * self.co,
                           "ifmap": self.in_planes * (self.ci * elems_bytes(self.in_fmt, loaded * self.iw) if self.rows < self.oh
                                                      else elems_bytes(self.in_fmt, self.ci * self.ih * self.iw)),
                           "psum": 4 * n}
        if self.consumer == "neuron":
            self.slot_bytes["vmem"] = 4 * n
        if out is not None:
            self.slot_bytes["ofmap"] = out
        self.double = frozenset({"wgt", "ifmap", "psum"}
                                | ({"ofmap"} if self.consumer in ("neuron", "fire") or self.narrowed else set()))

    @property
    def stored_fmt(self) -> str:
        """The format of what the layer stores: spikes, spike times, or sums."""
        return {"neuron": "spike", "fire": TIME}.get(self.consumer, self.out_fmt)

    @property
    def narrowed(self) -> bool:
        return self.consumer == "" and self.out_fmt != "i32"

    @property
    def wbytes(self) -> int:
        return FORMAT_BYTES[self.wfmt]

    @staticmethod
    def bias_offset(weights: int) -> int:
        return _ceil(weights, 4)

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
        return spans(self.cin, self.ci)

    @property
    def tiles(self) -> int:
        return len(self.co_tiles) * len(self.row_tiles) * len(self.ci_tiles)

    def input_block(self, ci: tuple[int, int], rt: RowTile) -> Block:
        return Block(self.in_fmt, (self.cin, self.ih, self.iw), *ci, rt.r0, rt.r1)

    def output_block(self, fmt: str, co: tuple[int, int], rt: RowTile) -> Block:
        return Block(fmt, (self.cout, self.oh, self.ow), *co, rt.y0, rt.y1)

    def conv_args(self, tci: int, rt: RowTile) -> dict:
        """The geometry operands of one block's convolution."""
        return dict(cin=tci, ih=rt.r1 - rt.r0, iw=self.iw, oh=rt.y1 - rt.y0, ow=self.ow, kh=self.kh, kw=self.kw,
                    sh=self.sh, sw=self.sw, pt=rt.pt, pl=self.pl)

    def aligned(self) -> bool:
        """Do the tiles of every spike tensor start on bytes, and do a tile's channels fit the conv
        instructions' `cin` and `cout` fields (a linear layer of 70,000 inputs must take them in tiles)?"""
        out_fmt = self.stored_fmt
        if self.ci > CONV_FIELD_MAX["cin"] or self.co > CONV_FIELD_MAX["cout"]:
            return False
        if self.rows < self.oh:
            if self.in_fmt == "spike" and self.ih * self.iw % 8:
                return False
            if out_fmt == "spike" and (self.oh * self.ow % 8 or self.rows % row_unit("spike", self.ow)):
                return False
        else:
            if self.ci % channel_unit(self.in_fmt, self.ih * self.iw) and self.ci != self.cin:
                return False
            if self.co % channel_unit(out_fmt, self.oh * self.ow) and self.co != self.cout:
                return False
        return True


@dataclass
class PoolPlan(Plan):
    """A max or sum pooling, in tiles of `channels` x `rows` of output."""

    channels: int
    rows: int
    c: int
    ih: int
    iw: int
    oh: int
    ow: int
    k: int
    stride: int
    in_fmt: str
    out_fmt: str

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
        return row_tiles(self.oh, self.rows, self.ih, self.k, self.stride, 0, row_unit(self.in_fmt, self.iw))

    @property
    def channel_tiles(self) -> list[tuple[int, int]]:
        return spans(self.c, self.channels)

    @property
    def tiles(self) -> int:
        return len(self.channel_tiles) * len(self.row_tiles)

    def input_block(self, channels: tuple[int, int], rt: RowTile) -> Block:
        return Block(self.in_fmt, (self.c, self.ih, self.iw), *channels, rt.r0, rt.r1)

    def output_block(self, channels: tuple[int, int], rt: RowTile) -> Block:
        return Block(self.out_fmt, (self.c, self.oh, self.ow), *channels, rt.y0, rt.y1)

    def aligned(self) -> bool:
        if self.rows < self.oh:
            if self.in_fmt == "spike" and self.ih * self.iw % 8:
                return False
            if self.out_fmt == "spike" and (self.oh * self.ow % 8 or self.rows % row_unit("spike", self.ow)):
                return False
            return True
        return all(self.channels % channel_unit(f, plane) == 0 or self.channels == self.c
                   for f, plane in ((self.in_fmt, self.ih * self.iw), (self.out_fmt, self.oh * self.ow)))


@dataclass
class ElementwisePlan(Plan):
    """An add, rescale, unfused neuron or TTFS firing over n elements a step, in chunks of `chunk`
    elements, each chunk on all T steps (a neuron's membranes stay in vmem meanwhile)."""

    chunk: int
    n: int
    kind: str  # "add", "rescale", "neuron" or "fire"
    in_fmts: tuple[str, ...]
    out_fmt: str
    shifts: tuple[int, ...] = ()  # add, rescale: each operand's vacc shift
    out_planes: int = 1  # a neuron's thresholds (MT), and its mode
    out_mode: str = "parallel"

    def __post_init__(self):
        ins = [elems_bytes(f, self.chunk) for f in self.in_fmts]
        self.slot_bytes = {"ofmap": self.out_planes * elems_bytes(self.out_fmt, self.chunk)}
        if self.kind == "neuron":
            self.slot_bytes.update(psum=ins[0], vmem=4 * self.chunk)
        elif self.kind == "fire":
            self.slot_bytes["psum"] = ins[0]
        else:
            self.slot_bytes["ifmap"] = sum(_ceil(b, SLOT_ALIGN) for b in ins[:-1]) + ins[-1]
        self.double = frozenset({"ifmap", "ofmap", "psum"})

    @cached_property
    def chunks(self) -> list[tuple[int, int]]:
        return spans(self.n, self.chunk)

    @property
    def tiles(self) -> int:
        return len(self.chunks)

    def operand_at(self, k: int) -> int:
        """Offset of input operand k in an ifmap slot."""
        return sum(_ceil(elems_bytes(f, self.chunk), SLOT_ALIGN) for f in self.in_fmts[:k])

    def block(self, fmt: str, chunk: tuple[int, int]) -> Block:
        """Elements [e0, e1) of one step, as the rows of a one-channel tensor."""
        return Block(fmt, (1, self.n, 1), 0, 1, *chunk)

    def aligned(self) -> bool:
        return self.chunk % 8 == 0 or self.chunk == self.n


# ------------------------------------------------------------------------- plans of IR ops

def fmt(dtype: DType) -> str:
    """The ISA element format a value is stored in."""
    if dtype.kind in ("spike", "mt"):  # MT: `planes` bit-planes, one after another
        return "spike"
    if dtype.kind == "fix":
        return f"i{dtype.bits}"
    if dtype.kind == "ttfs":
        return TIME
    raise IRError(f"a {dtype} value cannot be stored on the machine (quantize first)")


def fused_consumer(graph: Graph, op: Op) -> Op | None:
    """The neuron, TTFS firing or time reduction a conv/linear is fused with, if any."""
    if not isinstance(op, (Conv2d, Linear)) or op.name in graph.outputs:
        return None
    users = graph.users(op.name)
    if len(users) == 1 and isinstance(users[0], (NeuronQ, Fire, TimeReduce)):
        return users[0]
    return None


def conv_geometry(op: Op, x: TensorType) -> dict:
    """The conv a conv2d or linear op runs: linear is a 1x1 conv on a 1x1 image."""
    if isinstance(op, Linear):
        return dict(cin=x.shape[0], ih=1, iw=1, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0)
    _, cin, kh, kw = op.weight.shape
    return dict(cin=cin, ih=x.shape[1], iw=x.shape[2], kh=kh, kw=kw, sh=op.stride[0], sw=op.stride[1],
                pt=op.padding[0], pl=op.padding[1])


def conv_plan(graph: Graph, op: Conv2d | Linear, hw: HwConfig, tile) -> ConvPlan:
    x, consumer = graph.op(op.inputs[0]).type, fused_consumer(graph, op)
    oh, ow = op.type.shape[1:] or (1, 1)
    neuron = isinstance(consumer, NeuronQ)
    co, rows, ci = tile
    kind = "neuron" if neuron else "fire" if isinstance(consumer, Fire) else "reduce" if consumer else ""
    return ConvPlan(hw, co=co, rows=rows, ci=ci, cout=op.type.shape[0], oh=oh, ow=ow, in_fmt=fmt(x.dtype),
                    consumer=kind, bias=op.bias is not None,
                    membranes=sum(isinstance(u, Membrane) for u in graph.users(consumer.name)) if neuron else 0,
                    wfmt=LOG5 if op.log_scale is not None else f"i{8 * op.weight.itemsize}", out_fmt=fmt(op.type.dtype),
                    shift=tconv_base(op, x) if op.log_scale is not None else op.shift,
                    in_window=x.dtype.bits if x.dtype.kind == "ttfs" else 0,
                    fire_window=consumer.window if kind == "fire" else 0,
                    in_planes=x.dtype.planes, in_mode=x.dtype.mode,
                    out_planes=consumer.levels if neuron else 1, out_mode=consumer.mode if neuron else "parallel",
                    **conv_geometry(op, x))


def is_elementwise(graph: Graph, op: Op) -> bool:
    """An add, a rescale, or a neuron or firing that is not fused with the conv before it."""
    if isinstance(op, (NeuronQ, Fire)):
        return fused_consumer(graph, graph.op(op.inputs[0])) is None
    return isinstance(op, (Add, Rescale))


def elementwise_plan(graph: Graph, op: Op, hw: HwConfig, tile) -> ElementwisePlan:
    ins = [fmt(graph.op(i).type.dtype) for i in op.inputs]
    kind = "neuron" if isinstance(op, NeuronQ) else op.opname  # or add, rescale, fire
    shifts = (op.shift_a, op.shift_b) if isinstance(op, Add) else (op.shift,) if isinstance(op, Rescale) else ()
    return ElementwisePlan(hw, chunk=tile[0], n=op.type.numel, kind=kind, in_fmts=tuple(ins), out_fmt=fmt(op.type.dtype),
                           shifts=shifts, out_planes=op.type.dtype.planes, out_mode=op.type.dtype.mode)


def pool_plan(graph: Graph, op: MaxPool | AvgPool, hw: HwConfig, tile) -> PoolPlan:
    x = graph.op(op.inputs[0]).type
    channels, rows = tile
    c, ih, iw = x.shape
    _, oh, ow = op.type.shape
    return PoolPlan(hw, channels=channels, rows=rows, c=c, ih=ih, iw=iw, oh=oh, ow=ow, k=op.kernel, stride=op.stride,
                    in_fmt=fmt(x.dtype), out_fmt=fmt(op.type.dtype))
