"""prog.bin: a versioned, self-describing, checksummed program container.

Layout (all integers little-endian):

    header   magic b"TTCPROG\\0" | format u16 | isa u16 | section count u16 | reserved u16 (0)
    table    per section: name (8 bytes, NUL-padded ASCII) | offset u64 | length u64 | crc32 u32 | 0 u32
    sections meta (canonical JSON), hw (canonical JSON hardware config), code (32-byte words),
             data (the initial DRAM image, from address 0)
    trailer  SHA-256 of every byte before it

The same program always gives the same bytes: JSON is written with sorted keys and no timestamps.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .encoding import Instr, decode_all, encode_all
from .errors import UserError
from .files import atomic_write
from .hwconfig import HwConfig
from .limits import check_memory, instruction_limit, load_json
from .meta import MetaError, check_meta
from .table import ISA_READS_FROM, ISA_VERSION, check_since

MAGIC = b"TTCPROG\0"
FORMAT_VERSION = 1


def pack_sections(bodies: dict[str, bytes], header: tuple | None = None) -> bytes:
    """The prog.bin container of these section bodies: header (`header`: its fields, default this
    format's), section table with offsets and CRCs, the bodies, the SHA-256 trailer."""
    offset = _HEADER.size + _ENTRY.size * len(SECTIONS)
    table, payload = b"", b""
    for name in SECTIONS:
        body = bodies[name]
        table += _ENTRY.pack(name.encode(), offset, len(body), zlib.crc32(body), 0)
        payload += body
        offset += len(body)
    blob = _HEADER.pack(*(header or (MAGIC, FORMAT_VERSION, ISA_VERSION, len(SECTIONS), 0))) + table + payload
    return blob + hashlib.sha256(blob).digest()


def ttc_version() -> str:
    """This ttc's version: the package metadata (pyproject.toml), the one source every program and
    every JSON ttc writes records."""
    try:
        return metadata.version("ttc")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"
SECTIONS = ("meta", "hw", "code", "data")
_HEADER = struct.Struct("<8sHHHH")
_ENTRY = struct.Struct("<8sQQII")
_DIGEST = 32


class ProgramError(UserError, ValueError):
    """A prog.bin that cannot be used; the message says what is wrong with it."""


@dataclass
class Program:
    code: list[Instr]
    data: bytes
    meta: dict
    hw: HwConfig

    def meta_json(self) -> str:
        return json.dumps(self.meta, sort_keys=True, separators=(",", ":"))

    def to_bytes(self) -> bytes:
        bodies = {
            "meta": self.meta_json().encode(),
            "hw": self.hw.to_json().encode(),
            "code": encode_all(self.code),
            "data": bytes(self.data),
        }
        return pack_sections(bodies)

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader never sees a half-written file."""
        blob = self.to_bytes()
        atomic_write(path, lambda tmp: tmp.write_bytes(blob))

    @classmethod
    def from_bytes(cls, blob: bytes, where: str = "prog.bin") -> "Program":
        if len(blob) < _HEADER.size + _DIGEST:
            raise ProgramError(f"{where}: truncated ({len(blob)} bytes is shorter than any program)")
        magic, fmt, isa, count, _ = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise ProgramError(f"{where}: not a ttc program (bad magic {magic!r})")
        if fmt != FORMAT_VERSION:
            raise ProgramError(f"{where}: format version {fmt}, this ttc reads version {FORMAT_VERSION}")
        if not ISA_READS_FROM <= isa <= ISA_VERSION:
            raise ProgramError(f"{where}: compiled for ISA version {isa}, this ttc runs versions {ISA_READS_FROM} to "
                               f"{ISA_VERSION}")
        if count != len(SECTIONS):
            raise ProgramError(f"{where}: {count} sections, expected {len(SECTIONS)}")
        end = _HEADER.size + _ENTRY.size * count
        bodies = {}
        for i in range(count):
            raw_name, offset, length, crc, _ = _ENTRY.unpack_from(blob, _HEADER.size + _ENTRY.size * i)
            name = raw_name.rstrip(b"\0").decode("ascii", "replace")
            if name != SECTIONS[i]:
                raise ProgramError(f"{where}: section {i} is {name!r}, expected {SECTIONS[i]!r}")
            if offset != end or offset + length > len(blob) - _DIGEST:
                raise ProgramError(f"{where}: truncated or malformed (section {name!r} runs past the end of the file)")
            body = blob[offset:offset + length]
            if zlib.crc32(body) != crc:
                raise ProgramError(f"{where}: section {name!r} is corrupted (CRC mismatch)")
            bodies[name] = body
            end = offset + length
        if len(blob) != end + _DIGEST:
            raise ProgramError(f"{where}: {len(blob) - end - _DIGEST:+d} bytes after the last section (truncated or padded)")
        if hashlib.sha256(blob[:end]).digest() != blob[end:]:
            raise ProgramError(f"{where}: checksum mismatch (the file is corrupted)")
        words, limit = len(bodies["code"]) // 32, instruction_limit()
        if words > limit:  # before decoding: each instruction becomes a Python object
            raise ProgramError(f"{where}: {words:,} instructions, more than the limit of {limit:,} (TTC_MAX_INSTRUCTIONS)")
        try:
            meta = load_json(bodies["meta"], where, "metadata")
            hw = HwConfig.from_json(bodies["hw"], f"{where}: hardware config")
            code = decode_all(bodies["code"])
        except UserError as e:
            raise ProgramError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
        newer = check_since(code, isa) if isa < ISA_VERSION else None
        if newer:
            raise ProgramError(f"{where}: compiled for ISA version {isa}, but {newer}")
        prog = cls(code=code, data=bodies["data"], meta=meta, hw=hw)
        validate(prog, where)
        return prog

    @classmethod
    def load(cls, path: str | Path) -> "Program":
        path = Path(path)
        if not path.is_file():
            raise ProgramError(f"{path}: no such file")
        return cls.from_bytes(path.read_bytes(), str(path))


def validate(prog: Program, where: str) -> None:
    """Check what the container cannot: the metadata's fields (ttc.isa.meta), that code and data fit,
    and that simulating one sample stays within the resource limits (ttc.isa.limits)."""
    limit = instruction_limit()
    if len(prog.code) > limit:
        raise ProgramError(f"{where}: {len(prog.code):,} instructions, more than the limit of {limit:,} (TTC_MAX_INSTRUCTIONS)")
    try:
        check_meta(prog.meta, len(prog.code), len(prog.data))
    except MetaError as e:
        raise ProgramError(f"{where}: metadata: {e}") from None
    if not prog.code or prog.code[-1].op != "halt":
        raise ProgramError(f"{where}: code does not end with halt")
    dram = prog.meta["dram_bytes"]
    try:
        check_memory(dram + sum(b.bytes for b in prog.hw.buffers.values()), f"its DRAM ({dram:,} bytes) and buffers",
                     where)
    except UserError as e:
        raise ProgramError(str(e)) from None
