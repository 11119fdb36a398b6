"""Binary encoding of instructions, driven by `ttc.isa.table`."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError
from .table import BY_CODE, BY_NAME, MEMORIES, OPCODE_BITS, REF_ADDR_BITS, WORD_BYTES, Field


class EncodingError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Ref:
    """An address in one of the machine's memories."""

    mem: str
    addr: int

    def __str__(self):
        return f"{self.mem}[{self.addr:#x}]"


@dataclass(frozen=True)
class Instr:
    """One instruction: an opcode name and its operands by field name (refs as `Ref`, enums as
    their names, masks as tuples of names, integers as ints). Omitted masks are empty; an omitted field
    with a default (`Field.default`) takes it."""

    op: str
    args: dict = field(default_factory=dict)

    def __post_init__(self):
        spec = BY_NAME.get(self.op)
        if spec is None:
            raise EncodingError(f"unknown opcode {self.op!r}")
        args = self.args
        if spec.defaults and not spec.defaults.keys() <= args.keys():
            args = {**spec.defaults, **args}
        if spec.masks:
            args = {**{f.name: () for f in spec.masks}, **args}
            for f in spec.masks:
                value = args[f.name]
                if not isinstance(value, (tuple, list, set, frozenset)) or not all(isinstance(v, str) for v in value):
                    raise EncodingError(f"{self.op}.{f.name}: expected a tuple of names, got {value!r}")
                args[f.name] = tuple(c for c in f.choices if c in value) + tuple(v for v in value if v not in f.choices)
        names = spec.field_names
        if len(args) != len(names) or not all(name in args for name in names):
            missing, extra = set(names) - set(args), set(args) - set(names)
            raise EncodingError(f"{self.op}: missing operands {sorted(missing)}, unknown operands {sorted(extra)}")
        object.__setattr__(self, "args", {name: args[name] for name in names})
        for f in spec.fields:
            _check_value(self.op, f, self.args[f.name])

    @classmethod
    def unchecked(cls, op: str, args: dict) -> "Instr":
        """An instruction whose operands are not checked against the table: for code that is priced
        and never encoded (the cost model walks every candidate tiling; codegen builds checked ones)."""
        instr = object.__new__(cls)
        defaults = BY_NAME[op].defaults  # (the cost model builds these by the million: merge only when one is missing)
        object.__setattr__(instr, "op", op)
        object.__setattr__(instr, "args", {**defaults, **args} if defaults and not defaults.keys() <= args.keys() else args)
        return instr

    def __getitem__(self, name):
        return self.args[name]

    def __hash__(self):
        return hash((self.op, tuple(self.args.values())))


def _check_value(op: str, f: Field, value) -> None:
    where = f"{op}.{f.name}"
    if f.kind == "ref":
        if not isinstance(value, Ref):
            raise EncodingError(f"{where}: expected a memory reference, got {value!r}")
        if value.mem not in f.choices:
            raise EncodingError(f"{where}: memory {value.mem!r} not allowed (one of {', '.join(f.choices)})")
        if not 0 <= value.addr < (1 << REF_ADDR_BITS):
            raise EncodingError(f"{where}: address {value.addr:#x} out of range")
    elif f.kind == "enum":
        if value not in f.choices:
            raise EncodingError(f"{where}: {value!r} is not one of {', '.join(f.choices)}")
    elif f.kind == "mask":
        unknown = [v for v in value if v not in f.choices]
        if unknown or len(set(value)) != len(value):
            raise EncodingError(f"{where}: {value!r} is not a set of {', '.join(f.choices)}")
    else:
        if not isinstance(value, int) or isinstance(value, bool):
            raise EncodingError(f"{where}: expected an integer, got {value!r}")
        lo, hi = (0, 1 << f.bits) if f.kind == "u" else (-(1 << (f.bits - 1)), 1 << (f.bits - 1))
        if not lo <= value < hi:
            raise EncodingError(f"{where}: {value} does not fit {f.bits} bits ({f.kind})")


def _field_bits(f: Field, value) -> int:
    if f.kind == "ref":
        return (MEMORIES.index(value.mem) << REF_ADDR_BITS) | value.addr
    if f.kind == "enum":
        return f.choices.index(value)
    if f.kind == "mask":
        return sum(1 << f.choices.index(v) for v in value)
    return value & ((1 << f.bits) - 1)


def _field_value(op: str, f: Field, bits: int):
    if f.kind == "ref":
        mem = bits >> REF_ADDR_BITS
        if mem >= len(MEMORIES):
            raise EncodingError(f"{op}.{f.name}: memory id {mem} does not exist")
        return Ref(MEMORIES[mem], bits & ((1 << REF_ADDR_BITS) - 1))
    if f.kind == "enum":
        if bits >= len(f.choices):
            raise EncodingError(f"{op}.{f.name}: enum value {bits} out of range")
        return f.choices[bits]
    if f.kind == "mask":
        return tuple(c for i, c in enumerate(f.choices) if bits >> i & 1)
    if f.kind == "s" and bits >> (f.bits - 1):
        return bits - (1 << f.bits)
    return bits


def encode(instr: Instr) -> bytes:
    spec = BY_NAME[instr.op]
    word, pos = spec.code, OPCODE_BITS
    for f in spec.fields:
        word |= _field_bits(f, instr.args[f.name]) << pos
        pos += f.bits
    return word.to_bytes(WORD_BYTES, "little")


def decode(raw: bytes, index: int = 0) -> Instr:
    """Decode one word; `index` only names the instruction in errors."""
    if len(raw) != WORD_BYTES:
        raise EncodingError(f"instruction {index}: {len(raw)} bytes, expected {WORD_BYTES}")
    word = int.from_bytes(raw, "little")
    code = word & ((1 << OPCODE_BITS) - 1)
    spec = BY_CODE.get(code)
    if spec is None:
        raise EncodingError(f"instruction {index}: unknown opcode {code:#04x}")
    args, pos = {}, OPCODE_BITS
    for f in spec.fields:
        args[f.name] = _field_value(spec.name, f, (word >> pos) & ((1 << f.bits) - 1))
        pos += f.bits
    if word >> pos:
        raise EncodingError(f"instruction {index} ({spec.name}): unused bits are set")
    return Instr(spec.name, args)


def encode_all(code: list[Instr]) -> bytes:
    return b"".join(encode(i) for i in code)


def decode_all(raw: bytes) -> list[Instr]:
    if len(raw) % WORD_BYTES:
        raise EncodingError(f"code section of {len(raw)} bytes is not a whole number of {WORD_BYTES}-byte words")
    return [decode(raw[i:i + WORD_BYTES], i // WORD_BYTES) for i in range(0, len(raw), WORD_BYTES)]
