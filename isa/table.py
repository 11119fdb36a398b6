"""The instruction table: the single source of truth of ttc's ISA.

Everything that knows about instructions reads this table: the encoder and decoder
(`ttc.isa.encoding`), the lark grammar of the text assembly and the disassembler (`ttc.isa.asm`),
the simulator's dispatch (one handler per opcode name, checked against this table at import) and
docs/isa.md (`python -m ttc.isa.docs`). No opcode number or field position is written anywhere else.

An instruction is one 256-bit little-endian word: the opcode in bits [0, 8), then the opcode's
fields packed in table order from bit 8 upwards.
"""
from __future__ import annotations

from dataclasses import dataclass

ISA_VERSION = 1
WORD_BYTES = 32
OPCODE_BITS = 8

#: Memory spaces an address operand can name. The id is the value of a reference's top 3 bits.
MEMORIES = ("dram", "wgt", "ifmap", "ofmap", "psum", "vmem")
ON_CHIP = MEMORIES[1:]
REF_MEM_BITS = 3
REF_ADDR_BITS = 29

#: Element formats of vector operands: bit-packed spikes or little-endian signed integers.
FORMATS = ("spike", "i8", "i16", "i32")
FORMAT_BYTES = {"i8": 1, "i16": 2, "i32": 4}


@dataclass(frozen=True)
class Field:
    """One operand: `kind` is 'u' (unsigned), 's' (two's complement), 'ref' (memory, address)
    or 'enum' (one of `choices`, encoded as its index)."""

    name: str
    kind: str
    bits: int
    choices: tuple[str, ...] = ()
    doc: str = ""

    def __post_init__(self):
        if self.kind not in ("u", "s", "ref", "enum"):
            raise ValueError(f"field {self.name}: unknown kind {self.kind!r}")
        if self.kind == "ref" and self.bits != REF_MEM_BITS + REF_ADDR_BITS:
            raise ValueError(f"field {self.name}: a ref is {REF_MEM_BITS + REF_ADDR_BITS} bits")
        if self.kind == "ref" and not set(self.choices) <= set(MEMORIES):
            raise ValueError(f"field {self.name}: unknown memories {self.choices}")
        if self.kind == "enum" and len(self.choices) > (1 << self.bits):
            raise ValueError(f"field {self.name}: {len(self.choices)} choices in {self.bits} bits")


@dataclass(frozen=True)
class Opcode:
    name: str
    code: int
    unit: str
    fields: tuple[Field, ...]
    semantics: str

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


def _u(name, bits, doc=""):
    return Field(name, "u", bits, doc=doc)


def _s(name, bits, doc=""):
    return Field(name, "s", bits, doc=doc)


def _ref(name, memories, doc=""):
    return Field(name, "ref", REF_MEM_BITS + REF_ADDR_BITS, tuple(memories), doc)


def _enum(name, choices, doc=""):
    return Field(name, "enum", max(1, (len(choices) - 1).bit_length()), tuple(choices), doc)


_CONV_GEOMETRY = (
    _u("cin", 16), _u("cout", 16), _u("ih", 12), _u("iw", 12),
    _u("kh", 4), _u("kw", 4), _u("sh", 4), _u("sw", 4), _u("ph", 4), _u("pw", 4),
    _u("accumulate", 1, "1: add to out; 0: overwrite out"),
)

INSTRUCTIONS: tuple[Opcode, ...] = (
    Opcode("halt", 0x00, "ctrl", (), "stop the machine"),
    Opcode(
        "dma", 0x01, "dma",
        (_ref("dst", MEMORIES), _ref("src", MEMORIES), _u("rows", 16), _u("row_bytes", 24),
         _u("src_stride", 24), _u("dst_stride", 24)),
        "for r < rows: dst[r*dst_stride : +row_bytes] = src[r*src_stride : +row_bytes]",
    ),
    Opcode(
        "vfill", 0x02, "vector",
        (_ref("dst", ON_CHIP), _u("n", 24), _s("value", 32)),
        "dst[i] = value for i < n (i32 elements)",
    ),
    Opcode(
        "vbias", 0x03, "vector",
        (_ref("dst", ("psum",)), _ref("bias", ("wgt",)), _u("channels", 16), _u("plane", 24)),
        "dst[c*plane + p] = bias[c] (i32) for c < channels, p < plane",
    ),
    Opcode(
        "sconv", 0x04, "pe",
        (_ref("src", ("ifmap",)), _ref("wgt", ("wgt",)), _ref("dst", ("psum",))) + _CONV_GEOMETRY,
        "dst[co,y,x] (+)= sum over spikes src[ci,y*sh+i-ph,x*sw+j-pw] of wgt[co,ci,i,j] (i8 weights, adds only)",
    ),
    Opcode(
        "dconv", 0x05, "pe",
        (_ref("src", ("ifmap",)), _ref("wgt", ("wgt",)), _ref("dst", ("psum",)),
         _enum("fmt", FORMATS[1:], "element format of src")) + _CONV_GEOMETRY,
        "dst[co,y,x] (+)= sum of src[ci,y*sh+i-ph,x*sw+j-pw] * wgt[co,ci,i,j] (multiply-accumulate)",
    ),
    Opcode(
        "pool", 0x06, "vector",
        (_ref("src", ("ifmap",)), _ref("dst", ("ofmap",)), _enum("mode", ("max", "sum")),
         _enum("src_fmt", FORMATS), _enum("dst_fmt", FORMATS), _u("channels", 16), _u("ih", 12),
         _u("iw", 12), _u("k", 4), _u("stride", 4)),
        "dst[c,y,x] = max or sum of src[c, y*stride+i, x*stride+j] for i, j < k (max of spikes is OR)",
    ),
    Opcode(
        "nrn", 0x07, "neuron",
        (_ref("src", ("psum",)), _ref("state", ("vmem",)), _ref("dst", ("ofmap",)), _u("n", 24),
         _s("theta", 32), _s("v_reset", 32), _u("decay_mul", 16), _u("decay_shift", 5),
         _u("in_shift", 5), _enum("cmp", ("gt", "ge")), _enum("reset", ("hard", "subtract", "none")),
         _enum("order", ("reset_decay", "decay_reset"))),
        "one time step of n neurons: u = state; s = u cmp theta; u = D(u, s); h = u + (src << in_shift); "
        "dst = h cmp theta (bit-packed); state = h (see docs/numerics.md)",
    ),
    Opcode(
        "vacc", 0x08, "vector",
        (_ref("dst", ON_CHIP), _ref("src", ON_CHIP), _enum("src_fmt", FORMATS), _u("n", 24)),
        "dst[i] += src[i] for i < n (dst i32; src spikes or integers)",
    ),
)

BY_NAME = {op.name: op for op in INSTRUCTIONS}
BY_CODE = {op.code: op for op in INSTRUCTIONS}


def _check_table():
    if len(BY_NAME) != len(INSTRUCTIONS) or len(BY_CODE) != len(INSTRUCTIONS):
        raise ValueError("duplicate opcode name or number in the instruction table")
    for op in INSTRUCTIONS:
        width = OPCODE_BITS + sum(f.bits for f in op.fields)
        if width > WORD_BYTES * 8:
            raise ValueError(f"{op.name}: {width} bits do not fit a {WORD_BYTES * 8}-bit word")
        if len(set(op.field_names)) != len(op.fields):
            raise ValueError(f"{op.name}: duplicate field names")


_check_table()
