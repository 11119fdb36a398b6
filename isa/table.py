"""The instruction table: the single source of truth of ttc's ISA.

Everything that knows about instructions reads this table: the encoder and decoder
(`ttc.isa.encoding`), the lark grammar of the text assembly and the disassembler (`ttc.isa.asm`),
the simulator's dispatch (one handler per opcode name, checked against this table at import) and
docs/isa.md (`python -m ttc.isa.docs`). No opcode number or field position is written anywhere else.

An instruction is one 256-bit little-endian word: the opcode in bits [0, 8), then the opcode's
fields packed in table order from bit 8 upwards.

The machine has several units, each running its own in-order instruction queue (`QUEUES`): two DMA
queues (loads from DRAM, stores to DRAM), up to four PE-array groups, the neuron unit and the vector
unit. Every instruction but `halt` carries `wait` and `signal` masks over the queues: before it starts
it takes one dependency token from each queue named in `wait` (tokens from queue A to queue B are
counted, first in first out), and when it completes it gives one token to each queue named in
`signal`, as VTA's dependency queues do. `halt` waits for every queue to drain.

Each opcode also declares its footprint: the bytes each memory operand reads and writes, computed
from its fields. The compiler places tokens from footprints; the simulator checks that handlers stay
inside them and that no two instructions whose footprints conflict ever overlap in time.

And each opcode declares its cost: `cycles(hw, args)`, the cycles it occupies its unit (for `load` and
`store`: the DRAM interface), from the hardware config's rates (`HwConfig.conv_cycles` and friends; the
config is passed in, so this module does not import it), which the simulator's timeline reads; and for
the PE array, `pe_work(args)`, the dense (output, tap) pairs cout*oh*ow*cin*kh*kw the instruction
computes, which the reports' PE utilisation counts. PE work is the model's work, counted once per pair:
an MT `sconv` passes over its spike planes one after another, so it takes `planes` times as many cycles
for the same work, and its utilisation shows what the bit-planes cost. The spike-driven convs (`sconv`,
`tconv`: `spike_driven`) take those dense cycles on the SATA-like array; a config whose array skips
(`[array] skip`, `ttc.isa.hwconfig.SKIP_MODES`) gives them the cycles of the work their spikes leave
(`HwConfig.pe_cycles`), which the simulator counts per sample and the cost model predicts at a density.
"""
from __future__ import annotations

from functools import cached_property
from dataclasses import dataclass
from typing import Callable

from .errors import InternalError

ISA_VERSION = 10  # 7: pool's left padding (pl); 8: nrn's per-neuron decays (per_neuron); 9: training (nbwd, wgrad,
# sgd; nrn's active band, dconv's transposed weights, vacc's negation); 10: dconv's rounding of saturating sums
#: The oldest ISA whose programs this one runs unchanged: versions 9 and 10 only added opcodes, and fields whose
#: default (0) is the older behaviour; an older program that uses either is refused (`check_since`).
ISA_READS_FROM = 8
WORD_BYTES = 32
OPCODE_BITS = 8

#: Memory spaces an address operand can name. The id is the value of a reference's top 3 bits.
MEMORIES = ("dram", "wgt", "ifmap", "ofmap", "psum", "vmem")
ON_CHIP = MEMORIES[1:]
REF_MEM_BITS = 3
REF_ADDR_BITS = 29

#: Element formats of vector operands: bit-packed spikes or little-endian signed integers.
FORMATS = ("spike", "i8", "i16", "i32")
#: TTFS: a spike time per byte (a time >= the instruction's window is no spike), and 5-bit
#: logarithmic weight codes, one per byte (`ttc.isa.ttfs`).
TIME, LOG5 = "time", "log5"
FORMAT_BYTES = {"i8": 1, "i16": 2, "i32": 4, TIME: 1, LOG5: 1}

#: MT-SNN (isa/mt.py): how a neuron's spike planes weigh, and the most thresholds a neuron has.
MODES = ("parallel", "cascade")
MAX_LEVELS = 4

#: Instruction queues, one per unit; a PE instruction's queue is the PE group its `group` field names.
PE_GROUPS = 4
DMA = ("load", "store")  # the queues (and opcodes) that move data between DRAM and the buffers
QUEUES = (*DMA, *(f"pe{g}" for g in range(PE_GROUPS)), "neuron", "vector")


def elems_bytes(fmt: str, n: int) -> int:
    """Bytes of n elements in `fmt` (spikes bit-packed)."""
    return (n + 7) // 8 if fmt == "spike" else n * FORMAT_BYTES[fmt]


def conv_out(n: int, k: int, s: int, pad: int) -> int:
    return (n + 2 * pad - k) // s + 1


def rescale(v, shift: int):
    """R(v, shift) of `vacc` and `nrn`: v << shift, or for shift < 0 a right shift rounding half up.
    On integers of any kind (Python ints, NumPy or torch int64 arrays)."""
    return v << shift if shift >= 0 else (v + (1 << (-shift - 1))) >> -shift


@dataclass(frozen=True)
class Field:
    """One operand: `kind` is 'u' (unsigned), 's' (two's complement), 'ref' (memory, address),
    'enum' (one of `choices`, encoded as its index) or 'mask' (a set of `choices`, bit i for choice i)."""

    name: str
    kind: str
    bits: int
    choices: tuple[str, ...] = ()
    doc: str = ""
    default: object = None  # the value an instruction that omits the field takes (None: it must be given)
    since: int = 1  # the ISA version that added it (an older program leaves it at its default)

    def __post_init__(self):
        if self.kind not in ("u", "s", "ref", "enum", "mask"):
            raise InternalError(f"field {self.name}: unknown kind {self.kind!r}")
        if self.kind == "ref" and self.bits != REF_MEM_BITS + REF_ADDR_BITS:
            raise InternalError(f"field {self.name}: a ref is {REF_MEM_BITS + REF_ADDR_BITS} bits")
        if self.kind == "ref" and not set(self.choices) <= set(MEMORIES):
            raise InternalError(f"field {self.name}: unknown memories {self.choices}")
        if self.kind == "enum" and len(self.choices) > (1 << self.bits):
            raise InternalError(f"field {self.name}: {len(self.choices)} choices in {self.bits} bits")
        if self.kind == "mask" and len(self.choices) != self.bits:
            raise InternalError(f"field {self.name}: a mask has one bit per choice")


#: One memory operand's footprint: (field name, "r" / "w" / "rw", bytes from the operand's address), or
#: for a strided copy (..., bytes per row, rows, stride): `rows` runs of that many bytes, `stride` apart,
#: or (..., bytes per row, rows, stride, offset): those runs from `offset` bytes past the operand's
#: address (a region an instruction reads beside its operand: nrn's per-neuron decays follow its states).
Access = tuple


def accesses(op: "Opcode", args: dict) -> list[tuple[str, str, int, int, int, int]]:
    """`op`'s footprint on `args`, each access in full: (field, mode, bytes per run, runs, stride, offset).
    Everything that reads footprints (token placement, the hazard check, the cost model) reads them here."""
    out = []
    for name, mode, nbytes, *rest in op.footprint(args):
        rows, stride, offset = (*rest, 0) if len(rest) == 2 else tuple(rest) or (1, 0, 0)
        out.append((name, mode, nbytes, rows, stride, offset))
    return out


@dataclass(frozen=True)
class Opcode:
    """`unit` is a queue name, or "pe" (the queue is `pe{group}`) or "ctrl" (`halt`);
    `footprint(args)` lists the bytes each memory operand touches; `cycles(hw, args)` is how long it
    occupies its unit; `pe_work(args)`, PE instructions only, the dense (output, tap) pairs it computes."""

    name: str
    code: int
    unit: str
    fields: tuple[Field, ...]
    semantics: str
    footprint: Callable[[dict], list[Access]] = lambda args: []
    cycles: Callable[[object, dict], int] | None = None
    pe_work: Callable[[dict], int] | None = None
    since: int = 1  # the ISA version that added it
    spike_driven: bool = False  # its cycles follow its input's spikes under `[array] skip` (else `cycles`)

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @cached_property
    def defaults(self) -> dict:
        return {f.name: f.default for f in self.fields if f.default is not None}

    @cached_property
    def masks(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == "mask")

    def queue(self, args: dict) -> str:
        return f"pe{args['group']}" if self.unit == "pe" else self.unit


def _u(name, bits, doc="", default=None, since=1):
    return Field(name, "u", bits, doc=doc, default=default, since=since)


def _s(name, bits, doc="", default=None):
    return Field(name, "s", bits, doc=doc, default=default)


def _ref(name, memories, doc=""):
    return Field(name, "ref", REF_MEM_BITS + REF_ADDR_BITS, tuple(memories), doc)


def _enum(name, choices, doc="", default=None):
    return Field(name, "enum", max(1, (len(choices) - 1).bit_length()), tuple(choices), doc, default)


_SYNC = (
    Field("wait", "mask", len(QUEUES), QUEUES, "take one token from each queue named before starting"),
    Field("signal", "mask", len(QUEUES), QUEUES, "give one token to each queue named on completion"),
)


def _op(name, code, unit, fields, semantics, footprint, cycles, pe_work=None, since=1, added=(), spike_driven=False):
    """A unit instruction: its own fields, then the group (PE instructions) and the sync masks, then the
    fields later ISA versions `added` (after every older field, so that an older program decodes unchanged)."""
    group = (_u("group", (PE_GROUPS - 1).bit_length(), "PE group that runs it"),) if unit == "pe" else ()
    return Opcode(name, code, unit, tuple(fields) + group + _SYNC + tuple(added), semantics, footprint, cycles, pe_work,
                  since, spike_driven)


def _rows(a, stride) -> tuple[int, int, int]:
    """The runs a strided copy touches on the side of `stride`: (bytes per run, runs, stride)."""
    if a["rows"] <= 1 or a[stride] == a["row_bytes"]:
        return a["rows"] * a["row_bytes"], 1, 0
    return a["row_bytes"], a["rows"], a[stride]


def _conv_footprint(src_fmt, wfmt=lambda a: a["wfmt"], planes=lambda a: 1):
    def footprint(a):
        acc = "rw" if a["accumulate"] else "w"
        return [("src", "r", planes(a) * elems_bytes(src_fmt(a), a["cin"] * a["ih"] * a["iw"])),
                ("wgt", "r", elems_bytes(wfmt(a), a["cout"] * a["cin"] * a["kh"] * a["kw"])),
                ("dst", acc, 4 * a["cout"] * a["oh"] * a["ow"])]
    return footprint


def _conv_pairs(a) -> int:
    """The dense (output, tap) pairs of a convolution: every tap of every output, in bounds or not."""
    return a["cout"] * a["oh"] * a["ow"] * a["cin"] * a["kh"] * a["kw"]


def _conv_cycles(planes=lambda a: 1):
    return lambda hw, a: hw.conv_cycles(a["cout"], a["oh"], a["ow"], a["cin"], a["kh"], a["kw"], planes(a))


def _transfer_cycles(hw, a) -> int:
    return hw.transfer_cycles(a["rows"] * a["row_bytes"])


_CONV_GEOMETRY = (
    _u("cin", 16), _u("cout", 16), _u("ih", 12), _u("iw", 12), _u("oh", 12), _u("ow", 12),
    _u("kh", 4), _u("kw", 4), _u("sh", 4), _u("sw", 4),
    _s("pt", 5, "zero rows above the input (negative: input rows skipped)"),
    _u("pl", 4, "zero columns left of the input"),
    _u("accumulate", 1, "1: add to out; 0: overwrite out"),
)
_INTEGER_WEIGHTS = (
    _enum("wfmt", ("i8", "i16"), "element format of the weights"),
    _u("shift", 5, "the sums are shifted left by this many bits before they are added to out"),
)
_MT_MODE = _enum("mode", MODES, "MT-SNN: parallel (thermometer planes) or cascade (binary planes), isa/mt.py")
_WINDOW = _u("window", 5, "TTFS window: spike times below it are spikes, the rest none")
_CONV_INDEX = "src[ci, y*sh+i-pt, x*sw+j-pl] (zero outside the input) for y < oh, x < ow"
_POOL_INDEX = "src[c, y*stride+i-pt, x*stride+j] (zero outside the input) for i, j < k, y < oh, x < ow"

def _nrn_footprint(a) -> list[Access]:
    """nrn reads its inputs and updates its states; with per_neuron it also reads the n decays that follow
    the states. The decays have no address operand of their own: a 32-bit reference does not fit beside
    nrn's other fields in one word (243 of its 256 bits are taken), so they sit at a fixed place."""
    n = a["n"]
    planes = a["levels"] + (a["band"] > 0)  # the active bits follow the spike planes
    out = [("src", "r", 4 * n), ("state", "rw", 4 * n), ("dst", "w", planes * ((n + 7) // 8))]
    return out + [("state", "r", 4 * n, 1, 0, 4 * n)] if a["per_neuron"] else out


INSTRUCTIONS: tuple[Opcode, ...] = (
    Opcode("halt", 0x00, "ctrl", (), "wait until every queue is idle, then stop the machine", cycles=lambda hw, a: 0),
    _op("load", 0x01, "load",
        (_ref("dst", ON_CHIP), _ref("src", ("dram",)), _u("rows", 16), _u("row_bytes", 24),
         _u("src_stride", 24), _u("dst_stride", 24)),
        "for r < rows: dst[r*dst_stride : +row_bytes] = src[r*src_stride : +row_bytes]",
        lambda a: [("src", "r", *_rows(a, "src_stride")), ("dst", "w", *_rows(a, "dst_stride"))], _transfer_cycles),
    _op("store", 0x02, "store",
        (_ref("dst", ("dram",)), _ref("src", ON_CHIP), _u("rows", 16), _u("row_bytes", 24),
         _u("src_stride", 24), _u("dst_stride", 24)),
        "for r < rows: dst[r*dst_stride : +row_bytes] = src[r*src_stride : +row_bytes]",
        lambda a: [("src", "r", *_rows(a, "src_stride")), ("dst", "w", *_rows(a, "dst_stride"))], _transfer_cycles),
    _op("vfill", 0x03, "vector",
        (_ref("dst", ON_CHIP), _u("n", 24), _s("value", 32)),
        "dst[i] = value for i < n (i32 elements)",
        lambda a: [("dst", "w", 4 * a["n"])], lambda hw, a: hw.vector_cycles(a["n"])),
    _op("vbias", 0x04, "vector",
        (_ref("dst", ("psum",)), _ref("bias", ("wgt",)), _u("channels", 16), _u("plane", 24)),
        "dst[c*plane + p] = bias[c] (i32) for c < channels, p < plane",
        lambda a: [("bias", "r", 4 * a["channels"]), ("dst", "w", 4 * a["channels"] * a["plane"])],
        lambda hw, a: hw.vector_cycles(a["channels"] * a["plane"])),
    _op("sconv", 0x05, "pe",
        (_ref("src", ("ifmap",)), _ref("wgt", ("wgt",)), _ref("dst", ("psum",))) + _CONV_GEOMETRY + _INTEGER_WEIGHTS
        + (_u("planes", 3, f"spike bit-planes of src, one after another (MT-SNN: 1..{MAX_LEVELS}; 1 for plain spikes)"),
           _MT_MODE),
        f"dst[co,y,x] (+)= (sum over planes p of (sum over spikes of plane p at {_CONV_INDEX} of wgt[co,ci,i,j]) "
        "<< plane_shift(p)) << shift, plane_shift(p) = planes-1-p (cascade) or 0 (adds only; cascade doubles the "
        "sum between planes)",
        _conv_footprint(lambda a: "spike", planes=lambda a: a["planes"]), _conv_cycles(lambda a: a["planes"]), _conv_pairs,
        spike_driven=True),
    _op("dconv", 0x06, "pe",
        (_ref("src", ("ifmap", "psum")), _ref("wgt", ("wgt",)), _ref("dst", ("psum",)),
         _enum("fmt", FORMATS[1:], "element format of src")) + _CONV_GEOMETRY + _INTEGER_WEIGHTS,
        f"dst[co,y,x] (+)= (sum of {_CONV_INDEX} times w[co,ci,i,j]) << shift (multiply-accumulate), "
        "w = wgt; transposed: w = wgt[ci,co,kh-1-i,kw-1-j], src spread out by (sh, sw) (sh-1 zero rows between "
        "its rows, sw-1 zero columns between its columns: a strided layer's input gradient) and read with stride 1",
        _conv_footprint(lambda a: a["fmt"]), _conv_cycles(), _conv_pairs,
        added=(_u("transposed", 1, "1: wgt holds a forward layer's [cin, cout, kh, kw] weights, read as "
                  "wgt[ci,co,kh-1-i,kw-1-j] (input gradients, training)", 0, since=9),
               _u("skip", 1, "1: zero src elements are skipped (counted work: non-zero src only)", 0, since=9),
               _u("sat_bits", 6, "the results saturate to a signed integer of this many bits (0: they must fit i32)",
                  0, since=9),
               _u("round_shift", 5, "with sat_bits: the exact sums are rounded right by this many bits, R(sums, "
                  "-round_shift), before they are added and saturate (a wide accumulator's output stage)", 0,
                  since=10))),
    _op("pool", 0x07, "vector",
        (_ref("src", ("ifmap", "psum")), _ref("dst", ("ofmap",)), _enum("mode", ("max", "sum", "min")),
         _enum("src_fmt", FORMATS + (TIME,)), _enum("dst_fmt", FORMATS + (TIME,)), _u("channels", 16), _u("ih", 12),
         _u("iw", 12), _u("oh", 12), _u("ow", 12), _u("k", 4), _u("stride", 4),
         _s("pt", 5, "zero rows above the input (negative: input rows skipped)"),
         _u("pl", 4, "zero columns left of the input")),
        f"dst[c,y,x] = max, sum or min of {_POOL_INDEX} (max of spikes is OR; min of spike times is the "
        "earliest spike, the max of the values they stand for); the input is padded as far as the outputs reach "
        "with zeros, or for a max of integers with the format's lowest value; written as spikes, a non-zero result is a spike",
        lambda a: [("src", "r", elems_bytes(a["src_fmt"], a["channels"] * a["ih"] * a["iw"])),
                   ("dst", "w", elems_bytes(a["dst_fmt"], a["channels"] * a["oh"] * a["ow"]))],
        lambda hw, a: hw.vector_cycles(a["channels"] * a["oh"] * a["ow"] * a["k"] ** 2)),
    _op("nrn", 0x08, "neuron",
        (_ref("src", ("psum",)), _ref("state", ("vmem",)), _ref("dst", ("ofmap",)), _u("n", 24),
         _s("theta", 32), _s("v_reset", 32), _u("decay_mul", 16), _u("decay_shift", 5),
         _s("in_shift", 6), _enum("cmp", ("gt", "ge")), _enum("reset", ("hard", "subtract", "none")),
         _enum("order", ("reset_decay", "decay_reset")),
         _u("levels", 3, f"thresholds K (MT-SNN: 1..{MAX_LEVELS}; 1 for a plain neuron)"), _MT_MODE,
         _u("per_neuron", 1, "1: each neuron's decay_mul is its own i32, state[n + i] (the n decays follow the n "
            "states; the immediate decay_mul is unused, 0)")),
        "one time step of n neurons: u = state; (s, y) = F(u); u = D(u, s, y); h = u + R(src, in_shift) (R as in vacc); "
        "dst = the K spike planes of F(h), one after another (bit-packed); state = h. F compares K thresholds "
        "(isa/mt.py: parallel k*theta, cascade theta/2^(k-1) on the residual), y is what the planes stand for, "
        "and a subtract reset subtracts y; D multiplies by decay_mul, or with per_neuron by each neuron's own "
        "(isa/neuron.py; see docs/numerics.md, docs/mt.md); with band > 0 one more plane follows the spike planes: "
        "the active bits |h - theta| < band << band_exp (training, isa/train.py)",
        _nrn_footprint, lambda hw, a: hw.neuron_cycles(a["n"], a["levels"], a["mode"]),
        added=(_u("band", 7, "training: the active band's mantissa (0: no active bits written)", 0, since=9),
               _u("band_exp", 5, "training: the active band is band << band_exp (isa/train.py)", 0, since=9))),
    _op("vacc", 0x09, "vector",
        (_ref("dst", ON_CHIP), _ref("src", ON_CHIP), _enum("src_fmt", FORMATS), _enum("dst_fmt", FORMATS[1:]),
         _u("n", 24), _s("shift", 6, "left shift (negative: right shift rounding half up)"),
         _u("accumulate", 1, "1: add to dst; 0: overwrite dst")),
        "dst[i] (+)= R(src[i], shift) (neg: -R(src[i], shift)) for i < n, R(v, s) = v << s (s >= 0) or "
        "(v + 2^(-s-1)) >> -s (s < 0); src spikes or integers, dst integers (written values must fit dst_fmt)",
        lambda a: [("src", "r", elems_bytes(a["src_fmt"], a["n"])),
                   ("dst", "rw" if a["accumulate"] else "w", elems_bytes(a["dst_fmt"], a["n"]))],
        lambda hw, a: hw.vector_cycles(a["n"]),
        added=(_u("neg", 1, "1: subtract R(src[i], shift) instead (a loss gradient: output minus target)", 0, since=9),)),
    _op("tconv", 0x0A, "pe",
        (_ref("src", ("ifmap",)), _ref("wgt", ("wgt",)), _ref("dst", ("psum",))) + _CONV_GEOMETRY
        + (_u("shift", 5, "base: a spike at t through code e adds sign * 2^(shift - e - t)"), _WINDOW),
        f"dst[co,y,x] (+)= sum over spike times t < window of {_CONV_INDEX} of sign(w) << (shift - e(w) - t), "
        "w = wgt[co,ci,i,j] a 5-bit log code, zero codes skipped (TTFS: shifts and adds, in time order)",
        _conv_footprint(lambda a: TIME, lambda a: LOG5), _conv_cycles(), _conv_pairs, spike_driven=True),
    _op("tfire", 0x0B, "neuron",
        (_ref("src", ("psum", "ifmap")), _ref("dst", ("ofmap",)), _enum("src_fmt", FORMATS[1:]), _u("n", 24),
         _u("frac", 6, "fractional bits of src"), _WINDOW),
        "dst[i] = max(0, round(-log2(src[i] / 2^frac))) if src[i] > 0 and that is below window, else window "
        "(TTFS: one spike time per neuron; the rounding is a leading-one position and one compare, see isa/ttfs.py)",
        lambda a: [("src", "r", elems_bytes(a["src_fmt"], a["n"])), ("dst", "w", elems_bytes(TIME, a["n"]))],
        lambda hw, a: hw.neuron_cycles(a["n"])),
)

def _nbwd_footprint(a) -> list[Access]:
    n, bits = a["n"], (a["n"] + 7) // 8
    out = [("src", "r", 4 * n), ("tape", "r", bits), ("state", "rw", 4 * n), ("dst", "w", 4 * n)]
    return out + [("spikes", "r", bits)] if a["gate"] == "spike" else out


def _wgrad_footprint(a) -> list[Access]:
    return [("src", "r", elems_bytes(a["fmt"], a["cin"] * a["ih"] * a["iw"])),
            ("grad", "r", 4 * a["cout"] * a["oh"] * a["ow"]),
            ("dst", "rw" if a["accumulate"] else "w", 4 * a["cout"] * a["cin"] * a["kh"] * a["kw"])]


#: Training (docs/training.md; the arithmetic in isa/train.py): the backward neuron step, the weight gradient
#: and the weight update. Weights and weight gradients are one per machine, shared by the samples of a batch:
#: `wgrad` adds every sample's gradient into the same accumulator.
TRAINING = (
    _op("nbwd", 0x0C, "neuron",
        (_ref("src", ("psum", "ifmap")), _ref("tape", ("ifmap",)), _ref("spikes", ("ifmap",)), _ref("state", ("vmem",)),
         _ref("dst", ("psum",)), _u("n", 24), _u("decay_mul", 16), _u("decay_shift", 5),
         _enum("gate", ("spike", "none"), "spike: a hard reset stops the carried gradient where the neuron spiked"),
         _s("src_shift", 6, "the spike gradients are rescaled R(src, src_shift) (guard bits for the decays)"),
         _u("bits", 6, "g saturates to a signed integer of this many bits (2..32)")),
        "one backward time step of n neurons: g = sat_bits(R(src, src_shift) * tape + G(spikes) * R(state * decay_mul, "
        "-decay_shift)); state = g; dst = g (i32; tape and spikes bit-packed, G(s) = 1 - s for gate spike, else 1; "
        "isa/train.py)",
        _nbwd_footprint, lambda hw, a: hw.neuron_cycles(a["n"]), since=9),
    _op("wgrad", 0x0D, "pe",
        (_ref("src", ("ifmap",)), _ref("grad", ("psum",)), _ref("dst", ("psum",)),
         _enum("fmt", FORMATS, "element format of src")) + _CONV_GEOMETRY
        + (_s("shift", 6, "each sample's sums are rescaled R(sum, shift) before they are added"),
           _u("skip", 1, "1: zero gradients are skipped (counted work: non-zero grad only)"),
           _u("sat_bits", 6, "the accumulator saturates to a signed integer of this many bits (0: it must fit i32)",
              0)),
        f"dst[co,ci,i,j] (+)= sum over the samples of the batch of R(sum over y, x of {_CONV_INDEX} times "
        "grad[co,y,x], shift): the weight gradient, one accumulator shared by the batch (spike src: adds gated by "
        "the spikes); the batch's sum is exact, then added to dst, saturating to sat_bits",
        _wgrad_footprint, _conv_cycles(), _conv_pairs, since=9),
    _op("pbwd", 0x0F, "vector",
        (_ref("src", ("psum", "ifmap")), _ref("x", ("ifmap",)), _ref("dst", ("psum",)),
         _enum("x_fmt", FORMATS, "element format of the pool's input"),
         _enum("mode", ("max", "avg"), "max: to each window's first maximum; avg: to every input of the window"),
         _u("channels", 16), _u("ih", 12),
         _u("iw", 12), _u("oh", 12), _u("ow", 12), _u("k", 4), _u("stride", 4),
         _s("pt", 5, "rows of padding above the input"), _u("pl", 4, "columns of padding left of the input")),
        "dst[c,iy,ix] = sum of src[c,y,x] over the outputs whose window's first maximum (row by row, "
        f"{_POOL_INDEX}, the padding never a maximum) is x[c,iy,ix] (mode max), or whose window holds it (mode "
        "avg; x unread): a pool's gradient routed back (i32)",
        lambda a: [("src", "r", 4 * a["channels"] * a["oh"] * a["ow"]),
                   *([("x", "r", elems_bytes(a["x_fmt"], a["channels"] * a["ih"] * a["iw"]))] if a["mode"] == "max" else []),
                   ("dst", "w", 4 * a["channels"] * a["ih"] * a["iw"])],
        lambda hw, a: hw.vector_cycles(a["channels"] * a["oh"] * a["ow"] * a["k"] ** 2), since=9),
    _op("sgd", 0x0E, "vector",
        (_ref("wgt", ("wgt",)), _ref("grad", ("psum",)),
         _enum("wfmt", ("i8", "i16", "i32"), "element format of the weights (i32: biases)"),
         _u("bits", 6, "the updated values saturate to a signed integer of this many bits (at most wfmt's)"),
         _u("n", 24), _s("shift", 6, "the learning rate and the formats: w -= R(grad, shift)")),
        "w[i] = saturate_bits(w[i] - R(grad[i], shift)); grad[i] = 0 for i < n (i32 grad; runs once per batch)",
        lambda a: [("wgt", "rw", elems_bytes(a["wfmt"], a["n"])), ("grad", "rw", 4 * a["n"])],
        lambda hw, a: hw.vector_cycles(a["n"]), since=9),
)

INSTRUCTIONS += TRAINING

BY_NAME = {op.name: op for op in INSTRUCTIONS}
BY_CODE = {op.code: op for op in INSTRUCTIONS}


def check_since(code: list, isa: int) -> str | None:
    """Why instructions `code` (decoded) are not a program of ISA version `isa`: the first one that uses an
    opcode, or sets a field, added after it. None if they are."""
    for k, instr in enumerate(code):
        op = BY_NAME[instr.op]
        if op.since > isa:
            return f"instruction {k} is {op.name}, which ISA version {op.since} added"
        for f in op.fields:
            if f.since > isa and instr[f.name] != f.default:
                return f"instruction {k} ({op.name}) sets {f.name}, which ISA version {f.since} added"
    return None


def _check_table(instructions: tuple[Opcode, ...] = INSTRUCTIONS):
    names, codes = {op.name for op in instructions}, {op.code for op in instructions}
    if len(names) != len(instructions) or len(codes) != len(instructions):
        raise InternalError("duplicate opcode name or number in the instruction table")
    for op in instructions:
        width = OPCODE_BITS + sum(f.bits for f in op.fields)
        if width > WORD_BYTES * 8:
            raise InternalError(f"{op.name}: {width} bits do not fit a {WORD_BYTES * 8}-bit word")
        if len(set(op.field_names)) != len(op.fields):
            raise InternalError(f"{op.name}: duplicate field names")
        if op.unit not in (*QUEUES, "pe", "ctrl"):
            raise InternalError(f"{op.name}: unknown unit {op.unit!r}")
        if op.cycles is None:
            raise InternalError(f"{op.name}: declares no cycles (the timeline needs them)")
        if (op.pe_work is not None) != (op.unit == "pe"):
            raise InternalError(f"{op.name}: PE work is declared by exactly the PE instructions")


_check_table()
