"""Text assembly: a lark grammar generated from the instruction table, the assembler and the
disassembler. The text is a complete image of prog.bin, so asm -> bin -> asm is the identity:

    .ttc format=1 isa=1
    .meta {...canonical JSON...}
    .hw {...canonical JSON...}
    .data 0x000000 00ff10...          (64 bytes a line, the initial DRAM image)
    .code
    load dst=ifmap[0x0] src=dram[0x40] rows=1 row_bytes=64 src_stride=0 dst_stride=0 wait={} signal={pe0}
    ...
    halt

`;` starts a comment.
"""
from __future__ import annotations

import json

import lark

from .encoding import Instr, Ref
from .errors import UserError
from .hwconfig import HwConfig
from .program import FORMAT_VERSION, Program, validate
from .table import BY_NAME, INSTRUCTIONS, ISA_READS_FROM, ISA_VERSION, Field

DATA_LINE_BYTES = 64


class AsmError(UserError, ValueError):
    pass


def _field_rule(op: str, f: Field) -> tuple[str, str]:
    """The grammar rule of one operand, `name=value`, and its name."""
    rule = f"f_{op}_{f.name}"
    if f.kind in ("u", "s"):
        return rule, f'{rule}: "{f.name}" "=" INT'
    if f.kind == "ref":
        alts = " | ".join(f'"{m}" "[" INT "]" -> mem_{m}' for m in f.choices)
    elif f.kind == "enum":
        alts = " | ".join(f'"{c}" -> choice_{i}' for i, c in enumerate(f.choices))
    elif f.kind == "mask":
        items = " | ".join(f'"{c}" -> choice_{i}' for i, c in enumerate(f.choices))
        return rule, (f'{rule}: "{f.name}" "=" "{{" [v_{rule} ("," v_{rule})*] "}}"\nv_{rule}: {items}')
    return rule, f'{rule}: "{f.name}" "=" v_{rule}\nv_{rule}: {alts}'


def grammar() -> str:
    rules, instr_alts = [], []
    for op in INSTRUCTIONS:
        field_rules = []
        for f in op.fields:
            name, text = _field_rule(op.name, f)
            rules.append(text)
            field_rules.append(f"[{name}]" if f.default is not None else name)  # an omitted field takes its default
        rules.append(f'i_{op.name}: "{op.name}" {" ".join(field_rules)}')
        instr_alts.append(f"i_{op.name}")
    return "\n".join([
        'start: header meta hw data* ".code" _NL instr*',
        'header: ".ttc" "format" "=" INT "isa" "=" INT _NL',
        'meta: ".meta" REST _NL',
        'hw: ".hw" REST _NL',
        'data: ".data" INT HEX _NL',
        f"?instr: ({' | '.join(instr_alts)}) _NL",
        *rules,
        "INT: /-?(0x[0-9a-fA-F]+|[0-9]+)/",
        "HEX: /[0-9a-f]+/",
        "REST: /\\{[^\\n]*/",
        "COMMENT: /;[^\\n]*/",
        "_NL: (/\\r?\\n/)+",
        "%import common.WS_INLINE",
        "%ignore WS_INLINE",
        "%ignore COMMENT",
    ])


_PARSER = lark.Lark(grammar(), parser="lalr")
_BY_RULE = {f"i_{op.name}": op for op in INSTRUCTIONS}


def _instr(tree: lark.Tree) -> Instr:
    op = _BY_RULE[tree.data]
    args = {}
    for f, sub in zip(op.fields, tree.children):
        if sub is None:  # an optional field left out
            continue
        if f.kind == "mask":
            args[f.name] = tuple(f.choices[int(v.data.removeprefix("choice_"))] for v in sub.children if v is not None)
            continue
        value = sub.children[0]
        if f.kind == "ref":
            args[f.name] = Ref(value.data.removeprefix("mem_"), int(value.children[0], 0))
        elif f.kind == "enum":
            args[f.name] = f.choices[int(value.data.removeprefix("choice_"))]
        else:
            args[f.name] = int(value, 0)
    return Instr(op.name, args)


def assemble(text: str, where: str = "<asm>") -> Program:
    try:
        tree = _PARSER.parse(text.lstrip("\n") if text.endswith("\n") else text + "\n")
    except lark.exceptions.UnexpectedInput as e:
        raise AsmError(f"{where}:{e.line}:{e.column}: syntax error near {e.get_context(text).splitlines()[0].strip()!r}") from None
    header, meta, hw, *rest = tree.children
    fmt, isa = (int(t, 0) for t in header.children)
    if fmt != FORMAT_VERSION or not ISA_READS_FROM <= isa <= ISA_VERSION:
        raise AsmError(f"{where}: format {fmt} / ISA {isa}; this ttc reads format {FORMAT_VERSION} / ISA "
                       f"{ISA_READS_FROM} to {ISA_VERSION}")
    data = bytearray()
    code = []
    try:
        for node in rest:
            if node.data == "data":
                addr, hexstr = int(node.children[0], 0), str(node.children[1])
                if addr != len(data):
                    raise AsmError(f"{where}: .data at {addr:#x} does not follow the previous line (expected {len(data):#x})")
                data += bytes.fromhex(hexstr)
            else:
                code.append(_instr(node))
        prog = Program(code=code, data=bytes(data), meta=json.loads(str(meta.children[0])),
                       hw=HwConfig.from_json(str(hw.children[0]), f"{where}: .hw"))
        validate(prog, where)
    except (UserError, ValueError) as e:  # ttc's errors, and JSON's or hex's
        raise AsmError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    return prog


def format_instr(instr: Instr) -> str:
    parts = [instr.op]
    for name in BY_NAME[instr.op].field_names:
        value = instr[name]
        parts.append(f"{name}={{{','.join(value)}}}" if isinstance(value, tuple) else f"{name}={value}")
    return " ".join(parts)


def disassemble(prog: Program) -> str:
    lines = [f".ttc format={FORMAT_VERSION} isa={ISA_VERSION}", f".meta {prog.meta_json()}", f".hw {prog.hw.to_json()}"]
    for addr in range(0, len(prog.data), DATA_LINE_BYTES):
        lines.append(f".data {addr:#08x} {prog.data[addr:addr + DATA_LINE_BYTES].hex()}")
    lines.append(".code")
    lines.extend(format_instr(i) for i in prog.code)
    return "\n".join(lines) + "\n"
