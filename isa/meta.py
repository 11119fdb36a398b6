"""prog.bin's metadata, checked when a program is read (Program.from_bytes, the assembler).

The simulator, the runtime and the reports index the metadata freely (`io["addr"]`, `layer["first_instr"]`);
a hand-edited or damaged program must therefore be refused here, at the boundary, with one UserError
naming the file, the field (`inputs[0].step_bytes`) and what is wrong, rather than raise a KeyError or
TypeError deep inside the simulator. Two steps:
1. the JSON Schema `schema/program-meta.schema.json` (jsonschema): every field's type and range;
2. the relations the schema cannot state: every input and output lies inside DRAM, its steps fit its
   byte count, its step size agrees with its shape and format, an input's bits match its format, the
   data image fits DRAM, and the layers' first instructions are in order and inside the code.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import jsonschema

from .table import FORMAT_BYTES

SCHEMA = Path(__file__).parent / "schema" / "program-meta.schema.json"
#: The bits an input format records (spikes: 0).
INPUT_BITS = {"i8": 8, "i16": 16, "i32": 32, "spike": 0}


class MetaError(ValueError):
    """One field of the metadata is wrong; Program.from_bytes turns it into a ProgramError naming the file."""


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    base = jsonschema.Draft202012Validator
    # JSON Schema counts 1.0 as an integer and Python counts True as one; an address or a size is neither
    exact = base.TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    return jsonschema.validators.extend(base, type_checker=exact)(json.loads(SCHEMA.read_text()))


def _field(path) -> str:
    """inputs[0].frac, as the messages name a field."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "metadata"


def _check_schema(meta) -> None:
    error = jsonschema.exceptions.best_match(_validator().iter_errors(meta))
    if error is not None:
        message = error.message if len(error.message) <= 160 else error.message[:160] + "..."
        raise MetaError(f"{_field(error.absolute_path)}: {message}")


def _io(io: dict, field: str, dram: int) -> None:
    steps = io["time"] or 1
    step_bytes, stride = io["step_bytes"], io["step_stride"] or io["step_bytes"]
    numel = math.prod(io["shape"])
    want = -(-numel // 8) if io["fmt"] == "spike" else numel * FORMAT_BYTES[io["fmt"]]
    if "bits" in io and io["bits"] != INPUT_BITS[io["fmt"]]:
        raise MetaError(f"{field}.bits = {io['bits']} does not match its format {io['fmt']}")
    if step_bytes != want:
        raise MetaError(f"{field}.step_bytes = {step_bytes}, but shape {io['shape']} of {io['fmt']} takes {want} bytes a step")
    if stride < step_bytes:
        raise MetaError(f"{field}.step_stride = {stride} is smaller than its step_bytes {step_bytes}")
    if steps * stride > io["bytes"]:
        raise MetaError(f"{field}: {steps} steps of {stride} bytes do not fit its {io['bytes']} bytes")
    if io["addr"] + io["bytes"] > dram:
        raise MetaError(f"{field} ({io['name']!r:.60}) at {io['addr']:#x}+{io['bytes']} lies outside DRAM ({dram} bytes)")


def check_meta(meta, instructions: int, data_bytes: int) -> None:
    """Raise MetaError on the first field of `meta` that the schema refuses, then on the first relation
    between fields that does not hold."""
    _check_schema(meta)
    dram = meta["dram_bytes"]
    if data_bytes > dram:
        raise MetaError(f"data image of {data_bytes} bytes exceeds DRAM size {dram}")
    for key in ("inputs", "outputs"):
        for k, io in enumerate(meta[key]):
            _io(io, f"{key}[{k}]", dram)
    previous = 0
    for k, layer in enumerate(meta["layers"]):
        first = layer["first_instr"]
        if first > max(instructions - 1, 0):
            raise MetaError(f"layers[{k}].first_instr must be 0 to {max(instructions - 1, 0)}, got {first}")
        if first < previous:
            raise MetaError(f"layers[{k}].first_instr = {first} comes before the previous layer's {previous}")
        previous = first
