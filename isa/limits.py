"""Resource limits on what a file may ask of the machine, checked before anything is allocated or run.

A prog.bin, its assembly or a hardware config states memory sizes and an instruction count; a crafted
one can ask for terabytes of simulated DRAM or millions of instructions. ttc refuses such a file up
front, with a UserError naming the file, the field and the limit, instead of failing in NumPy's
allocator (or the operating system's) or running for hours:

    memory        the simulator's memories (DRAM and the on-chip buffers, per sample of the batch):
                  at most the machine's free memory, or TTC_MEMORY_LIMIT bytes (e.g. 2G, 512M) if set
    instructions  at most MAX_INSTRUCTIONS, or TTC_MAX_INSTRUCTIONS if set
    JSON nesting  the metadata and hardware JSON nest at most MAX_JSON_DEPTH deep (Python's parser is
                  recursive: a document nested 100000 deep would exhaust its stack)

This module imports only ttc.isa.errors, so that every part of the ISA can use it.
"""
from __future__ import annotations

import json
import os

from .errors import UserError

MAX_INSTRUCTIONS = 10_000_000  # 320 MB of code; the largest ttc compiles are thousands
MAX_JSON_DEPTH = 64  # ttc's own metadata nests 5 deep
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip().upper().removesuffix("B").removesuffix("I")
    if not text:
        return None
    unit = text[-1] if text[-1] in _UNITS else ""
    try:
        value = int(float(text[:len(text) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise UserError(f"{name}={os.environ[name]!r} is not a size (e.g. 512M, 2G or a number of bytes)") from None
    if value <= 0:
        raise UserError(f"{name}={os.environ[name]!r} must be positive")
    return value


def memory_limit() -> int:
    """Bytes the simulator's memories may take: TTC_MEMORY_LIMIT, else the free physical memory."""
    value = _env_int("TTC_MEMORY_LIMIT")
    if value is not None:
        return value
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): a limit no real program reaches
        return 16 << 30


def instruction_limit() -> int:
    value = _env_int("TTC_MAX_INSTRUCTIONS")
    return MAX_INSTRUCTIONS if value is None else value


def check_memory(nbytes: int, what: str, where: str) -> None:
    """A UserError if `what` (a phrase: "DRAM of 2^40 bytes") would need more than the memory limit."""
    limit = memory_limit()
    if nbytes > limit:
        raise UserError(f"{where}: {what} needs {nbytes:,} bytes, more than the memory limit of {limit:,} bytes "
                        "(the free memory; set TTC_MEMORY_LIMIT to change it)")


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON `text` (strings skipped), without recursing."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def load_json(text: str | bytes, where: str, what: str):
    """Parse JSON from a file, refusing nesting beyond MAX_JSON_DEPTH and NaN/Infinity (not JSON, though
    Python's parser reads them), with UserErrors naming `where` and `what` (e.g. "metadata")."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{where}: {what} is not UTF-8 (byte {text[e.start]:#04x} at offset {e.start})") from None
    # cheap first: only a text with many brackets can nest deeply
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise UserError(f"{where}: {what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as e:  # JSONDecodeError, and ints of more digits than Python converts
        raise UserError(f"{where}: {what} is not valid JSON: {e}") from None
