"""The schema of prog.bin's metadata, checked when a program is read (Program.from_bytes, the assembler).

The simulator, the runtime and the reports index the metadata freely (`io["addr"]`, `layer["first_instr"]`);
a hand-edited or damaged program must therefore be refused here, at the boundary, with one UserError
naming the file, the field (`inputs[0].step_bytes`) and what is wrong, rather than raise a KeyError or
TypeError deep inside the simulator. Types and ranges are checked field by field, then the relations:
every input and output lies inside DRAM, its steps fit its byte count, its step size agrees with its
shape and format, and the layers' first instructions are in order and inside the code.
"""
from __future__ import annotations

import math

from .table import FORMAT_BYTES, TIME

#: Formats an input may have (what the runtime encodes) and an output (what it decodes).
INPUT_FORMATS = {"i8": 8, "i16": 16, "i32": 32, "spike": 0}  # format: the bits codegen records (spikes: 0)
OUTPUT_FORMATS = ("i8", "i16", "i32", "spike", TIME)
MAX_FRAC = 62  # fractional bits of a fixed-point value: 2^frac must stay an exact, finite float
MAX_RANK = 8  # dimensions of an input or output tensor


class MetaError(ValueError):
    """One field of the metadata is wrong; Program.from_bytes turns it into a ProgramError naming the file."""


def _int(value, field: str, low: int = 0, high: int | None = None) -> int:
    # bool is an int in Python, but `true` is no size
    if isinstance(value, bool) or not isinstance(value, int):
        raise MetaError(f"{field} must be an integer, got {value!r:.60}")
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f">= {low}"
        raise MetaError(f"{field} must be {bounds}, got {value}")
    return value


def _str(value, field: str, optional: bool = False) -> None:
    if not (isinstance(value, str) or (optional and value is None)):
        raise MetaError(f"{field} must be a string, got {value!r:.60}")


def _table(value, field: str, kind: type = dict, name: str = "an object"):
    if not isinstance(value, kind):
        raise MetaError(f"{field} must be {name}, got {value!r:.60}")
    return value


def _require(d: dict, keys: tuple[str, ...], field: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise MetaError(f"{field} lacks {', '.join(missing)}")


def _io(io, field: str, is_input: bool, dram: int) -> None:
    _table(io, field)
    keys = ("name", "path", "addr", "bytes", "shape", "time", "fmt", "frac", "step_bytes", "step_stride")
    _require(io, keys + (("bits",) if is_input else ("divide_by",)), field)
    _str(io["name"], f"{field}.name")
    _str(io["path"], f"{field}.path", optional=True)
    addr, nbytes = _int(io["addr"], f"{field}.addr"), _int(io["bytes"], f"{field}.bytes")
    shape = _table(io["shape"], f"{field}.shape", list, "a list of dimensions")
    if len(shape) > MAX_RANK:
        raise MetaError(f"{field}.shape has {len(shape)} dimensions, at most {MAX_RANK}")
    for k, d in enumerate(shape):
        _int(d, f"{field}.shape[{k}]", low=1)
    steps = 1 if io["time"] is None else _int(io["time"], f"{field}.time", low=1)
    fmt = io["fmt"]
    formats = tuple(INPUT_FORMATS) if is_input else OUTPUT_FORMATS
    if fmt not in formats:
        raise MetaError(f"{field}.fmt must be one of {', '.join(formats)}, got {fmt!r:.60}")
    _int(io["frac"], f"{field}.frac", high=MAX_FRAC)
    if is_input:
        bits = _int(io["bits"], f"{field}.bits")
        if bits != INPUT_FORMATS[fmt]:
            raise MetaError(f"{field}.bits = {bits} does not match its format {fmt}")
    else:
        _int(io["divide_by"], f"{field}.divide_by", low=1)
    step_bytes = _int(io["step_bytes"], f"{field}.step_bytes")
    stride = _int(io["step_stride"], f"{field}.step_stride") or step_bytes
    numel = math.prod(shape)
    want = -(-numel // 8) if fmt == "spike" else numel * FORMAT_BYTES[fmt]
    if step_bytes != want:
        raise MetaError(f"{field}.step_bytes = {step_bytes}, but shape {shape} of {fmt} takes {want} bytes a step")
    if stride < step_bytes:
        raise MetaError(f"{field}.step_stride = {stride} is smaller than its step_bytes {step_bytes}")
    if steps * stride > nbytes:
        raise MetaError(f"{field}: {steps} steps of {stride} bytes do not fit its {nbytes} bytes")
    if addr + nbytes > dram:
        raise MetaError(f"{field} ({io['name']!r:.60}) at {addr:#x}+{nbytes} lies outside DRAM ({dram} bytes)")


def _layer(layer, field: str, instructions: int) -> int:
    _table(layer, field)
    _require(layer, ("name", "path", "op", "type", "first_instr"), field)
    for key in ("name", "path", "op", "type"):
        _str(layer[key], f"{field}.{key}")
    _str(layer.get("source", ""), f"{field}.source")
    if "tile" in layer:
        for k, d in enumerate(_table(layer["tile"], f"{field}.tile", list, "a list")):
            _int(d, f"{field}.tile[{k}]")
    for key in ("weights", "macs_per_step"):
        if key in layer:
            _int(layer[key], f"{field}.{key}")
    return _int(layer["first_instr"], f"{field}.first_instr", high=max(instructions - 1, 0))


#: Keys of the metadata; the first seven every program has, the others are notes of some passes.
REQUIRED = ("ttc_version", "dram_bytes", "inputs", "outputs", "layers", "options", "source")
OPTIONAL_OBJECTS = ("counts", "decay", "factorize", "schedule", "ttfs")


def check_meta(meta, instructions: int, data_bytes: int) -> None:
    """Raise MetaError on the first field of `meta` that is missing, of the wrong type or out of range."""
    _table(meta, "metadata")
    _require(meta, REQUIRED, "metadata")
    _str(meta["ttc_version"], "ttc_version")
    dram = _int(meta["dram_bytes"], "dram_bytes")
    if data_bytes > dram:
        raise MetaError(f"data image of {data_bytes} bytes exceeds DRAM size {dram}")
    for key in ("options", "source") + OPTIONAL_OBJECTS:
        if key in meta:
            _table(meta[key], key)
    for key, is_input in (("inputs", True), ("outputs", False)):
        ios = _table(meta[key], key, list, "a list")
        if not ios:
            raise MetaError(f"{key} is empty: a program has at least one")
        for k, io in enumerate(ios):
            _io(io, f"{key}[{k}]", is_input, dram)
    layers = _table(meta["layers"], "layers", list, "a list")
    previous = 0
    for k, layer in enumerate(layers):
        first = _layer(layer, f"layers[{k}]", instructions)
        if first < previous:
            raise MetaError(f"layers[{k}].first_instr = {first} comes before the previous layer's {previous}")
        previous = first
