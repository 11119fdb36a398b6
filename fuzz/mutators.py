"""Mutators: how the fuzzer turns a real artefact into a plausible bad one.

Generic byte mutations (flips, inserts, deletes, splices) find what a damaged file does; the
structure-aware ones find what a crafted file does. A byte flip in prog.bin almost always stops at the
section CRCs or the SHA-256 trailer, so `mutate_program` edits the sections themselves (the metadata and
hardware JSON above all) and packs the container again with its checksums recomputed. The text
mutators edit tokens (numbers become huge, negative or words; lines are dropped or repeated) and
insert bytes that are not UTF-8. Every mutator takes a `random.Random`, so a run is reproducible
from its seed.
"""
from __future__ import annotations

import io
import json
import random
import re
import zipfile
from functools import lru_cache

from ttc.isa.program import _ENTRY, _HEADER, SECTIONS

#: Values that find missing type and range checks: wrong types, sizes beyond any memory, floats where
#: integers belong, non-finite numbers (Python's json reads NaN and Infinity).
INTERESTING_VALUES = [
    None, True, False, 0, -1, 1, 2, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64,
    10**30, -(2**63), 0.5, -0.0, 1e308, float("nan"), float("inf"), "", "x", "fix16.8", "spike", "int32",
    [], [0], [-1], [2**40, 2**40], {}, {"a": 1},
]
INTERESTING_NUMBERS = ["0", "-1", "1", "0x0", "0xffffffff", "4294967296", "18446744073709551616",
                       "99999999999999999999999999", "-99999999", "1e308", "nan", "inf", "0.5", "1_0"]


# ------------------------------------------------------------------------------------------- bytes

def flip_bytes(rng: random.Random, blob: bytes) -> bytes:
    if not blob:
        return bytes([rng.randrange(256)])
    b = bytearray(blob)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        i = rng.randrange(len(b))
        b[i] = b[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(b)


def insert_bytes(rng: random.Random, blob: bytes) -> bytes:
    i = rng.randrange(len(blob) + 1)
    junk = rng.choice((bytes([rng.randrange(256)]) * rng.randrange(1, 64), rng.randbytes(rng.randrange(1, 32)),
                       blob[i:i + rng.randrange(1, 256)]))
    return blob[:i] + junk + blob[i:]


def delete_bytes(rng: random.Random, blob: bytes) -> bytes:
    if not blob:
        return blob
    i = rng.randrange(len(blob))
    return blob[:i] + blob[i + rng.randrange(1, max(2, min(len(blob) - i, 512))):]


def splice(rng: random.Random, blob: bytes, other: bytes) -> bytes:
    """The head of one input and the tail of another (often of another seed of the same target)."""
    return blob[:rng.randrange(len(blob) + 1)] + other[rng.randrange(len(other) + 1):]


def mutate_bytes(rng: random.Random, blob: bytes, pool: list[bytes]) -> bytes:
    op = rng.randrange(4)
    if op == 0:
        return flip_bytes(rng, blob)
    if op == 1:
        return insert_bytes(rng, blob)
    if op == 2:
        return delete_bytes(rng, blob)
    return splice(rng, blob, rng.choice(pool))


# ------------------------------------------------------------------------------------------- JSON

def _paths(value, prefix=()):
    """Every path (a tuple of keys and indices) into a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def deep_nesting(rng: random.Random) -> object:
    depth = rng.choice((100, 1000, 5000, 100_000))
    value: object = 0
    for _ in range(min(depth, 2000)):  # built shallow enough to serialise; text_nesting goes deeper
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def mutate_json_value(rng: random.Random, doc):
    """`doc` with one value somewhere replaced (wrong type, huge, deeply nested), one key deleted or
    one key added."""
    paths = list(_paths(doc))
    path = rng.choice(paths)
    if not path:
        return rng.choice(INTERESTING_VALUES + [deep_nesting(rng)])
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    op = rng.randrange(10)
    if op < 5:
        parent[key] = rng.choice(INTERESTING_VALUES)
    elif op < 6:
        parent[key] = deep_nesting(rng)
    elif op < 8:
        del parent[key]
    elif op < 9 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = parent[key] * rng.choice((2, 1024, 2**20, 2**40, -1)) + rng.choice((0, 1, -1))
    elif isinstance(parent, dict):
        parent[rng.choice(("extra", "name", "addr", "bytes", "shape"))] = rng.choice(INTERESTING_VALUES)
    else:
        parent.append(rng.choice(INTERESTING_VALUES))
    return doc


def text_nesting(rng: random.Random) -> str:
    """JSON nested deeper than any recursive parser's stack: `[[[...0...]]]`."""
    depth = rng.choice((1000, 10_000, 200_000))
    return "[" * depth + "0" + "]" * depth


def mutate_json_text(rng: random.Random, text: str) -> str:
    if rng.random() < 0.05:
        return text_nesting(rng)
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    return json.dumps(mutate_json_value(rng, doc), sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------------------------------------------- prog.bin

def unpack_program(blob: bytes) -> dict[str, bytes]:
    """The four section bodies of a well-formed prog.bin (the seeds are)."""
    bodies = {}
    for i, name in enumerate(SECTIONS):
        _, offset, length, _, _ = _ENTRY.unpack_from(blob, _HEADER.size + _ENTRY.size * i)
        bodies[name] = blob[offset:offset + length]
    return bodies


def pack_program(bodies: dict[str, bytes], header_edit=None) -> bytes:
    """A prog.bin of these section bodies with correct offsets, CRCs and SHA-256 trailer, so that a
    mutation inside a section reaches the code that reads it. `header_edit(fields)` may change the
    header fields (magic, format, isa, count, reserved) before packing."""
    from ttc.isa.program import FORMAT_VERSION, MAGIC, pack_sections
    from ttc.isa.table import ISA_VERSION
    fields = [MAGIC, FORMAT_VERSION, ISA_VERSION, len(SECTIONS), 0]
    if header_edit:
        header_edit(fields)
    return pack_sections(bodies, tuple(fields))


def mutate_operand(rng: random.Random, code: bytes) -> bytes:
    """One operand of one instruction set to a value its field can encode but a compiler would not
    write (0, the field's largest value, off by one, a random value), re-encoded: the instruction
    decodes, and the simulator must refuse what the machine cannot execute."""
    from ttc.isa.encoding import Instr, Ref, decode_all, encode_all
    from ttc.isa.table import BY_NAME
    instrs = decode_all(code)
    k = rng.randrange(len(instrs))
    instr = instrs[k]
    fields = [f for f in BY_NAME[instr.op].fields if f.kind in ("u", "s", "ref")]
    if not fields:
        return code
    f = rng.choice(fields)
    bits = f.bits
    top = (1 << bits) - 1 if f.kind != "s" else (1 << (bits - 1)) - 1
    low = 0 if f.kind != "s" else -(1 << (bits - 1))
    old = instr.args[f.name].addr if f.kind == "ref" else instr.args[f.name]
    value = rng.choice((0, 1, top, low, old + 1, old - 1, old * 2, rng.randint(low, top)))
    value = min(max(value, low), top)
    args = dict(instr.args)
    args[f.name] = Ref(instr.args[f.name].mem, value) if f.kind == "ref" else value
    try:
        instrs[k] = Instr(instr.op, args)
        return encode_all(instrs)
    except ValueError:  # a ref address wider than its field: keep the code as it was
        return code


def _mutate_code(rng: random.Random, code: bytes) -> bytes:
    """Instruction words edited in place (operands out of range, other opcodes), dropped or repeated,
    or one operand re-encoded with a value the compiler would not choose."""
    if rng.random() < 0.5:
        try:
            return mutate_operand(rng, code)
        except ValueError:  # code that no longer decodes (an earlier mutation): edit the words instead
            pass
    words = [code[i:i + 32] for i in range(0, len(code), 32)]
    op = rng.randrange(4)
    if op == 0 and words:
        i = rng.randrange(len(words))
        w = bytearray(words[i])
        for _ in range(rng.choice((1, 2, 8))):
            w[rng.randrange(len(w))] = rng.choice((0, 0xFF, rng.randrange(256)))
        words[i] = bytes(w)
    elif op == 1 and len(words) > 1:
        del words[rng.randrange(len(words) - 1)]
    elif op == 2 and words:
        i = rng.randrange(len(words))
        words[i:i] = [words[i]] * rng.choice((1, 10, 200))
    elif words:
        i = rng.randrange(len(words))
        words[i] = flip_bytes(rng, words[i])
    return b"".join(words) + (rng.randbytes(rng.randrange(1, 32)) if rng.random() < 0.05 else b"")


def mutate_program(rng: random.Random, blob: bytes, pool: list[bytes]) -> bytes:
    """A structure-aware mutation of a well-formed prog.bin, checksums recomputed."""
    bodies = unpack_program(blob)
    op = rng.randrange(10)
    if op < 4:
        bodies["meta"] = mutate_json_text(rng, bodies["meta"].decode()).encode()
    elif op < 6:
        bodies["hw"] = mutate_json_text(rng, bodies["hw"].decode()).encode()
    elif op < 8:
        bodies["code"] = _mutate_code(rng, bodies["code"])
    elif op < 9:
        data = bodies["data"]
        bodies["data"] = rng.choice((data[:rng.randrange(len(data) + 1)], data + bytes(rng.choice((1, 4096, 1 << 20))),
                                     flip_bytes(rng, data)))
    else:
        name = rng.choice(SECTIONS)
        bodies[name] = mutate_bytes(rng, bodies[name], [b for b in bodies.values() if b])

    def edit(fields):
        if rng.random() < 0.03:
            i = rng.randrange(1, 5)
            fields[i] = rng.choice((0, 2, 0xFFFF, fields[i] + 1))
    return pack_program(bodies, edit)


# ------------------------------------------------------------------------------------------- text

_TOKEN = re.compile(r"0x[0-9a-fA-F]+|-?\d+(?:\.\d+)?(?:e-?\d+)?|[A-Za-z_][A-Za-z0-9_.]*|\s+|.", re.S)


@lru_cache(maxsize=16)
def _tokens(text: str) -> tuple[tuple[str, ...], list[int], list[int]]:
    """A text's tokens and the positions of its numbers and words (cached: most inputs start from one of
    the few seeds, and tokenizing a printed IR takes milliseconds)."""
    tokens = tuple(_TOKEN.findall(text))
    numbers = [k for k, t in enumerate(tokens) if t[:1].isdigit() or t[:1] == "-"]
    words = [k for k, t in enumerate(tokens) if t[:1].isalpha() or t[:1] == "_"]
    return tokens, numbers, words


def mutate_text(rng: random.Random, blob: bytes, pool: list[bytes]) -> bytes:
    """Token-level edits of a text artefact (assembly, IR, TOML), or bytes that are not UTF-8."""
    op = rng.randrange(12)
    if op == 0:
        i = rng.randrange(len(blob) + 1)
        return blob[:i] + rng.choice((b"\xff", b"\xc3", b"\x80\x80", b"\xed\xa0\x80", b"\x00")) + blob[i:]
    if op == 1:
        return mutate_bytes(rng, blob, pool)
    text = blob.decode("utf-8", "replace")
    if op == 2:  # drop, repeat or swap lines
        lines = text.split("\n")
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        choice = rng.randrange(3)
        if choice == 0:
            del lines[i]
        elif choice == 1:
            lines[i:i] = [lines[j]] * rng.choice((1, 2, 100))
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines).encode()
    if op == 3:  # a JSON line (.meta, .hw in assembly) edited structurally
        lines = text.split("\n")
        candidates = [k for k, line in enumerate(lines) if line.startswith((".meta ", ".hw "))]
        if candidates:
            k = rng.choice(candidates)
            head, _, body = lines[k].partition(" ")
            lines[k] = head + " " + mutate_json_text(rng, body)
            return "\n".join(lines).encode()
    tokens, numbers, words = _tokens(text)
    if not tokens:
        return blob
    tokens = list(tokens)
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.randrange(5)
        if kind <= 1 and numbers:
            tokens[rng.choice(numbers)] = rng.choice(INTERESTING_NUMBERS)
        elif kind == 2 and words:
            tokens[rng.choice(words)] = tokens[rng.choice(words)]
        elif kind == 3:
            k = rng.randrange(len(tokens))
            tokens.insert(k, rng.choice(tokens))
        else:
            del tokens[rng.randrange(len(tokens))]
    return "".join(tokens).encode()


# ------------------------------------------------------------------------------------------- model files

def mutate_model(rng: random.Random, blob: bytes, pool: list[bytes]) -> bytes:
    """A torch.save zip with one member changed (the pickle most often) and the zip rebuilt, so that
    the mutation passes the zip's own CRCs and reaches the unpickler; sometimes raw bytes."""
    if rng.random() < 0.2:
        return mutate_bytes(rng, blob, pool)
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            members = [(info.filename, z.read(info)) for info in z.infolist()]
    except (zipfile.BadZipFile, ValueError, EOFError):
        return mutate_bytes(rng, blob, pool)
    pickles = [k for k, (name, _) in enumerate(members) if name.endswith(".pkl")]
    k = rng.choice(pickles) if pickles and rng.random() < 0.7 else rng.randrange(len(members))
    name, body = members[k]
    members[k] = (name, mutate_bytes(rng, body, [b for _, b in members if b]) if body else rng.randbytes(8))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, body in members:
            z.writestr(name, body)
    return out.getvalue()
