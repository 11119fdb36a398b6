"""Generate docs/isa.md from the instruction table: `python -m ttc.isa.docs > docs/isa.md`.
A test checks that the committed file equals this output."""
from __future__ import annotations

from .asm import grammar
from .table import (FORMATS, INSTRUCTIONS, ISA_VERSION, LOG5, MEMORIES, OPCODE_BITS, REF_ADDR_BITS, REF_MEM_BITS, TIME,
                    WORD_BYTES)


def _kind(f) -> str:
    if f.kind == "ref":
        return f"ref ({' / '.join(f.choices)})"
    if f.kind == "enum":
        return "enum: " + ", ".join(f"{i}={c}" for i, c in enumerate(f.choices))
    if f.kind == "mask":
        return "mask: " + ", ".join(f"bit {i}={c}" for i, c in enumerate(f.choices))
    return {"u": "unsigned", "s": "signed"}[f.kind]


def render() -> str:
    out = [
        f"# ttc ISA, version {ISA_VERSION}",
        "",
        "Generated from `isa/table.py` by `python -m ttc.isa.docs`; do not edit by hand.",
        "",
        f"Every instruction is one {WORD_BYTES * 8}-bit little-endian word: the opcode in bits "
        f"[0, {OPCODE_BITS}), then the fields below packed in order from bit {OPCODE_BITS} upwards; "
        "unused high bits are zero. A memory reference (`ref`) is "
        f"{REF_MEM_BITS + REF_ADDR_BITS} bits: the memory id in the top {REF_MEM_BITS} bits, a byte "
        f"address in the low {REF_ADDR_BITS}.",
        "",
        "Memories: " + ", ".join(f"{i}=`{m}`" for i, m in enumerate(MEMORIES)) + ".",
        "Element formats: " + ", ".join(f"`{f}`" for f in FORMATS + (TIME, LOG5))
        + " (spikes are bit-packed, bit i of byte i//8 least significant first; integers are little-endian two's complement; "
        f"`{TIME}` is one TTFS spike time per byte; `{LOG5}` one 5-bit logarithmic weight code per byte, sign << 4 | e, "
        "e = 15 for zero; see docs/ttfs.md).",
        "",
        "| opcode | name | unit | semantics |",
        "|---|---|---|---|",
    ]
    for op in INSTRUCTIONS:
        out.append(f"| {op.code:#04x} | `{op.name}` | {op.unit} | {op.semantics} |")
    for op in INSTRUCTIONS:
        out += ["", f"## `{op.name}` ({op.code:#04x}, {op.unit} unit)", "", op.semantics, ""]
        if not op.fields:
            out.append("No operands.")
            continue
        out += ["| bits | field | kind | notes |", "|---|---|---|---|"]
        pos = OPCODE_BITS
        for f in op.fields:
            out.append(f"| [{pos}, {pos + f.bits}) | `{f.name}` | {_kind(f)} | {f.doc} |")
            pos += f.bits
    out += ["", "## Assembly grammar (lark)", "", "```", grammar(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
