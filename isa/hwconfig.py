"""The machine description: one TOML hardware config, validated on load.

The compiler (buffer fit, tiling) and the simulator (cycles, energy) both read this object; nothing
about the machine's sizes, speeds or energies is written anywhere else. Presets live in
`isa/presets/*.toml`; `load_hw("sata")` takes a preset by name, anything else is a path.

Every key a config may hold is declared once, in `SCHEMA` and `BUFFER_KEYS` (type, unit, allowed values,
default, meaning): the loader validates with them and `ttc.isa.hwdoc` writes docs/hardware-config.md
from them.
"""
from __future__ import annotations

from functools import lru_cache

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import read_text
from .limits import load_json
from .table import MAX_LEVELS, MEMORIES, ON_CHIP, PE_GROUPS

PRESET_DIR = Path(__file__).parent / "presets"


class HwConfigError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class Buffer:
    """An on-chip SRAM: size, access width, energy per access (pJ) and leakage (mW)."""

    kib: float
    access_bytes: int
    read_pj: float
    write_pj: float
    leakage_mw: float

    @property
    def bytes(self) -> int:
        return int(self.kib * 1024)


@dataclass(frozen=True)
class HwConfig:
    name: str
    description: str
    energy_source: str
    frequency_mhz: float
    pe_rows: int
    pe_cols: int
    pe_groups: int
    neuron_lanes: int
    vector_lanes: int
    dram_bytes_per_cycle: int
    dram_latency_cycles: int
    dram_access_bytes: int
    dram_pj_per_access: float
    buffers: dict[str, Buffer]
    energy_pj: dict[str, float]
    pe_skip: str = "none"  # what the PE array skips (SKIP_MODES)

    @property
    def pes(self) -> int:
        return self.pe_rows * self.pe_cols

    # ---- time per unit of work: the simulator's cycle model and the compiler's cost model both use these
    def conv_cycles(self, cout: int, oh: int, ow: int, cin: int, kh: int, kw: int, planes: int = 1) -> int:
        """One PE group computes every (output, tap) pair, spike or not (the dense array schedule), plane
        by plane of MT spikes."""
        return self.pe_cycles(cout * oh * ow * cin * kh * kw * planes)

    def pe_cycles(self, work: float) -> int:
        """Cycles of `work` (output, tap) pairs or spike-driven adds on one PE group, a PE each per cycle (a
        float: the cost model's expected work)."""
        lanes = self.pes // self.pe_groups
        return -(-work // lanes) if isinstance(work, int) else math.ceil(work / lanes)

    def transfer_cycles(self, nbytes: int) -> int:
        """Cycles a DMA transfer holds the DRAM interface; the data lands `dram_latency_cycles` later."""
        return -(-nbytes // self.dram_bytes_per_cycle)

    def neuron_cycles(self, n: int, levels: int = 1, mode: str = "parallel") -> int:
        """Each lane compares a parallel neuron's K thresholds at once, a cascade's one stage a cycle."""
        return -(-n // self.neuron_lanes) * (levels if mode == "cascade" else 1)

    def vector_cycles(self, n: int) -> int:
        return -(-n // self.vector_lanes)

    # ---- energy: the simulator's energy model and the compiler's cost model both price with these
    def access_pj(self, mem: str, direction: str, nbytes: int) -> float:
        """One instruction's access of `nbytes` of a memory ("dram" or a buffer), "read" or "write":
        whole access widths times the energy per access."""
        if mem == "dram":
            return -(-nbytes // self.dram_access_bytes) * self.dram_pj_per_access
        buf = self.buffers[mem]
        return -(-nbytes // buf.access_bytes) * getattr(buf, f"{direction}_pj")

    def leakage_pj(self, cycles: float) -> float:
        """Every buffer's leakage over `cycles`."""
        watts = sum(b.leakage_mw for b in self.buffers.values()) * 1e-3
        return watts * cycles / (self.frequency_mhz * 1e6) * 1e12

    def to_json(self) -> str:
        """Canonical text: the same config always gives the same bytes (it goes into prog.bin)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "prog.bin hardware config") -> "HwConfig":
        """The config `to_json` wrote (into a prog.bin or its assembly), checked against the same schema
        as a TOML config: the JSON names HwConfig's fields, which are mapped back to the TOML keys."""
        raw = load_json(text, where, "hardware config")
        if not isinstance(raw, dict):
            raise HwConfigError(f"{where}: must be an object, got {raw!r:.60}")
        by_field = {key.field: (section, key) for section in SCHEMA for key in section.keys if key.field}
        document: dict = {section.name: {} for section in SCHEMA if section.name}
        for name, value in raw.items():
            if name in by_field:
                section, key = by_field[name]
                (document[section.name] if section.name else document)[key.name] = value
            elif name in ("energy_pj", "buffers"):
                document[name] = value
            else:
                raise HwConfigError(f"{where}: unknown field {name!r}")
        return hw_from_dict(document, where)


#: Arithmetic actions whose energy every config gives (pJ per action), by bit width; the simulator
#: counts each of them. Memory accesses are priced per buffer and for DRAM.
ENERGY_ACTIONS = {
    "add8": "8-bit add: one input spike adds one 8-bit weight into an accumulator (sconv)",
    "add16": "16-bit add: one input spike adds one 16-bit weight (sconv of a contracted TT kernel)",
    "add32": "32-bit add: multiply-accumulate sums, membrane charge, soft reset, vector adds, a TTFS synapse (tconv)",
    "mul8": "8x8-bit multiply (dconv of 8-bit inputs and weights)",
    "mul16": "16x16-bit multiply, or one of as few operand bits (dconv of 16-bit inputs or weights, of 32-bit inputs "
             "and 8-bit weights; membrane decay by a non-power-of-two factor)",
    "mul32": "32x32-bit multiply, or one of more operand bits than 16x16 (dconv of 32-bit inputs and 16-bit weights)",
    "shift32": "32-bit shift (decay by a power of two, rescaling a neuron's input, a TTFS synapse's 2^-(e+t))",
    "cmp32": "32-bit compare (threshold test, max pooling, TTFS firing: leading one and one compare)",
    "or1": "1-bit OR (max pooling of spikes)",
}


#: Counter-name patterns: one counter per spike plane k < MAX_LEVELS, per memory and per direction.
PLANE_ADD, PLANE_SHIFT = "plane{k}_add", "plane{k}_shift"
MEMORY_BYTES = "{mem}_{direction}_bytes"

#: What the simulator counts besides the ENERGY_ACTIONS (summed over the batch; the runtime reports them
#: per inference), name or pattern -> meaning. Each layer's counts add its share of the timeline, "cycles".
COUNTERS = {
    "instructions": "instructions executed",
    "spike_add": "spike-driven adds: each input spike times the non-zero weights it reaches (sconv, all planes)",
    PLANE_ADD: "the spike-driven adds of spike plane k (sconv; MT-SNN)",
    PLANE_SHIFT: "the accumulators a cascade doubles before adding spike plane k (sconv; MT-SNN)",
    "mac": "multiply-accumulates: every in-bounds tap of every output (dconv; with skip only non-zero inputs')",
    "shift_add": "TTFS synapses: each input spike times the non-zero log weights it reaches (tconv)",
    "neuron_update": "neuron updates, one per neuron and time step (nrn)",
    "fire": "TTFS firing decisions, one per neuron (tfire)",
    "spike": "output spikes (nrn: over all planes; tfire: spike times below the window)",
    "active": "active neuron-steps, inside the surrogate's band (nrn with a band; training)",
    "neuron_backward": "backward neuron steps, one per neuron and time step (nbwd)",
    "grad_nonzero": "non-zero membrane gradients written (nbwd)",
    "grad_saturated": "gradients that saturated their width (nbwd, dconv with sat_bits)",
    "weight_grad": "weight-gradient accumulations: input element times gradient pairs computed (wgrad; spikes gate "
                   "them, and with skip zero gradients do too)",
    "weight_update": "weights updated (sgd)",
    "weight_saturated": "weight updates that saturated the weight format (sgd)",
    MEMORY_BYTES: "bytes an instruction read or wrote (direction) in memory mem (a buffer or dram)",
    "cycles": "a layer's share of the simulated time (per-layer counts only)",
}

#: Every counter name the simulator and the energy model may emit: the actions and the expanded patterns.
COUNTER_NAMES = frozenset(ENERGY_ACTIONS) | {
    name.format(k=k, mem=mem, direction=direction)
    for name in COUNTERS for k in range(MAX_LEVELS) for mem in MEMORIES for direction in ("read", "write")}


@lru_cache(maxsize=None)
def memory_bytes(mem: str, direction: str) -> str:
    """The counter of bytes read ("read") or written ("write") in a memory."""
    return MEMORY_BYTES.format(mem=mem, direction=direction)


def spike_add_action(wfmt: str) -> str:
    """The add one input spike does per weight it reaches (sconv): as wide as the weights."""
    return "add16" if wfmt == "i16" else "add8"


def multiply_action(src_fmt: str, wfmt: str) -> str:
    """The multiply of a dconv tap: the smallest square multiplier with at least its operands' bit product (an
    array multiplier's energy follows the product of its operand widths: 32 x 8 bits costs what 16 x 16 does)."""
    product = int(src_fmt[1:]) * int(wfmt[1:])
    return "mul8" if product <= 8 * 8 else "mul16" if product <= 16 * 16 else "mul32"


#: A TTFS synapse (`tconv`, per input spike and non-zero weight it reaches): shift, then add.
TTFS_SYNAPSE_ACTIONS = {"shift32": 1, "add32": 1}
#: A TTFS firing (`tfire`, per neuron): find the accumulator's leading one (priced as a compare), compare
#: the accumulator with the rounding constant for that position.
TTFS_FIRE_ACTIONS = {"cmp32": 2}


def neuron_update_actions(reset: str, in_shift: int, decay_mul, decay_shift: int, levels: int = 1,
                          mode: str = "parallel") -> dict[str, float]:
    """Arithmetic actions of one neuron update (`nrn`, per neuron and step): a compare per threshold,
    the charge (and a soft reset's subtraction), a cascade's subtractions between its stages, shifts and
    the decay's multiply. `decay_mul` is one multiplier or one per neuron (an array): then the decay's
    actions are averaged over the array, so that a count of updates times them is the exact total when
    every multiplier serves equally many updates (a channel's neurons, or an instruction's)."""
    stages = levels - 1 if mode == "cascade" else 0
    muls = [int(m) for m in np.ravel(decay_mul)]
    actions = {"cmp32": levels, "add32": 1 + (reset == "subtract") + stages,
               # a non-trivial decay ends in a shift
               "shift32": (in_shift != 0) + _mean([m != 1 << decay_shift for m in muls])}
    multiplies = _mean([bool(m & (m - 1)) for m in muls])
    if multiplies:
        actions["mul16"] = multiplies
    return actions


def _mean(flags: list[bool]) -> float:
    """The share of `flags` set, an int when it is whole (one multiplier's counts stay integers)."""
    hits = sum(flags)
    return hits // len(flags) if hits % len(flags) == 0 else hits / len(flags)


def _number(x: float) -> str:
    """A bound as the docs and messages print it: whole numbers in full (1073741824, not 1.07374e+09)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Key:
    """One key of the hardware config, the single description that validation (`parse_hw`) and the
    generated reference (docs/hardware-config.md, `ttc.isa.hwdoc`) both read.

    `field` is the HwConfig (or Buffer) attribute the key fills; None for the [energy_pj] keys, which fill
    the `energy_pj` dict. The allowed values are `low` <= value (< when `low_open`) <= `high`; a key with
    a `default` may be left out."""

    name: str
    kind: type  # int, float or str
    unit: str
    meaning: str
    field: str | None = None
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    default: object = None
    choices: tuple[str, ...] = ()  # a string key's allowed values (none: any text)

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def range_text(self) -> str:
        """The allowed values, as the reference prints them."""
        if self.kind is str:
            return f"one of {', '.join(self.choices)}" if self.choices else "any text"
        if self.low is not None and self.high is not None:
            if self.low_open:
                return f"> {_number(self.low)} and at most {_number(self.high)}"
            return f"{_number(self.low)} to {_number(self.high)}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return "any"

    def check(self, value, where: str):
        """The value, converted to the key's type (an integer is a fine float); a HwConfigError naming the
        key if it has the wrong type or lies out of range."""
        if self.kind is str:
            if not isinstance(value, str):
                raise HwConfigError(f"{where}: {self.name} must be a string, got {value!r}")
            if self.choices and value not in self.choices:
                raise HwConfigError(f"{where}: {self.name} must be {self.range_text}, got {value!r}")
            return value
        # bool is an int in Python but `true` is no number in a hardware config
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            kind = "a number" if self.kind is float else "an integer"
            raise HwConfigError(f"{where}: {self.name} must be {kind}, got {value!r}")
        if not math.isfinite(value):  # TOML has nan and inf; no size, rate or energy is either
            raise HwConfigError(f"{where}: {self.name} must be a finite number, got {value}")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            # the two most common messages keep the words users and tests already know
            if self.kind is int and self.low == 1 and not self.low_open:
                raise HwConfigError(f"{where}: {self.name} must be a positive integer, got {value!r}")
            if self.low == 0 and not self.low_open:
                raise HwConfigError(f"{where}: {self.name} must not be negative, got {value}")
            raise HwConfigError(f"{where}: {self.name} must be {self.range_text}, got {value}")
        if self.high is not None and value > self.high:
            raise HwConfigError(f"{where}: {self.name} must be at most {_number(self.high)}, got {value}")
        return float(value) if self.kind is float else value


@dataclass(frozen=True)
class Section:
    """A TOML table of the config ("" for the top level) and its keys."""

    name: str
    meaning: str
    keys: tuple[Key, ...]


def _count(name: str, unit: str, meaning: str, field: str, high: int | None = None) -> Key:
    return Key(name, int, unit, meaning, field, low=1, high=high)


def _non_negative(name: str, unit: str, meaning: str, field: str | None = None) -> Key:
    return Key(name, float, unit, meaning, field, low=0)


#: The PE array's schedules of a spike-driven conv (`[array] skip`): what its cycles count. The energy of
#: the adds is per spike in every mode; the time, and so the leakage, follows the mode.
SKIP_MODES = {
    "none": "nothing: every (output, tap) pair takes its PE cycle, spike or not (SATA's dense array; "
            "the cycles do not depend on the data)",
    "tile": "spike rows with no spike: the pairs that read a row of one input channel (and spike plane) "
            "holding no spike (padding rows included) take no cycle",
    "event": "everything but the spikes: a conv takes one PE cycle per spike-driven add (an input spike "
             "times a non-zero weight it reaches; a TTFS synapse's shift-add), the address-event schedule "
             "of Loihi- or SpiNNaker-like cores",
}

#: What the run reports as the source of the energy figures when a config does not say.
ENERGY_SOURCE_UNSTATED = "not stated in the hardware config"

#: Every key outside [buffers.*], section by section.
SCHEMA = (
    Section("", "the top level: what the config is and where its figures come from", (
        Key("name", str, "", "short name, printed in reports and recorded in prog.bin", "name"),
        Key("description", str, "", "one line describing the machine", "description"),
        Key("energy_source", str, "", "where the energy figures come from (process node, tool or paper, "
            "which figures are borrowed); `ttc run --report` prints it", "energy_source",
            default=ENERGY_SOURCE_UNSTATED),
    )),
    Section("array", "the PE array that runs sconv, dconv and tconv", (
        _count("rows", "PEs", "rows of the PE array", "pe_rows"),
        _count("cols", "PEs", "columns of the PE array", "pe_cols"),
        _count("groups", "groups", "equal groups the array splits into, each with its own instruction queue "
               f"(pe0..pe{PE_GROUPS - 1}); must divide rows x cols", "pe_groups", high=PE_GROUPS),
        Key("frequency_mhz", float, "MHz", "clock of the whole machine (turns cycles into time and leakage "
            "power into energy)", "frequency_mhz", low=0, low_open=True),
        Key("skip", str, "", "what the array skips of the spike-driven convs (sconv, tconv): "
            + "; ".join(f"`{mode}`: {meaning}" for mode, meaning in SKIP_MODES.items()), "pe_skip",
            default="none", choices=tuple(SKIP_MODES)),
    )),
    Section("neuron_unit", "the unit that runs neuron updates (nrn, tfire)", (
        _count("lanes", "neurons per cycle", "neurons updated per cycle (a cascade MT neuron takes one cycle "
               "per stage)", "neuron_lanes"),
    )),
    Section("vector_unit", "the unit that runs vector operations (vfill, vbias, vacc, pool)", (
        _count("lanes", "elements per cycle", "elements processed per cycle", "vector_lanes"),
    )),
    Section("dram", "the off-chip memory and its interface, shared by the load and store queues", (
        _count("bytes_per_cycle", "bytes/cycle", "bandwidth: a transfer holds the interface for bytes / "
               "bytes_per_cycle cycles", "dram_bytes_per_cycle"),
        _count("latency_cycles", "cycles", "from the end of a transfer to its data being usable",
               "dram_latency_cycles"),
        _count("access_bytes", "bytes", "width of one priced access: a transfer costs whole accesses",
               "dram_access_bytes"),
        _non_negative("pj_per_access", "pJ", "energy of one access of access_bytes", "dram_pj_per_access"),
    )),
    Section("energy_pj", "energy of one arithmetic action, by kind and bit width (the simulator counts "
            "each action)", tuple(_non_negative(k, "pJ", meaning) for k, meaning in ENERGY_ACTIONS.items())),
)

#: The smallest buffer any tile fits in.
MIN_BUFFER_BYTES = 64

#: The keys of each [buffers.NAME] table: an on-chip SRAM (the Buffer dataclass).
BUFFER_KEYS = (
    # at most 1 TiB: a buffer the simulator could hold (and whose byte count is a finite integer)
    Key("kib", float, "KiB", f"capacity (at least {MIN_BUFFER_BYTES} bytes)", "kib", low=0, low_open=True, high=1 << 30),
    _count("access_bytes", "bytes", "width of one priced access: an instruction's bytes cost whole "
           "accesses", "access_bytes"),
    _non_negative("read_pj", "pJ", "energy of one read access", "read_pj"),
    _non_negative("write_pj", "pJ", "energy of one write access", "write_pj"),
    _non_negative("leakage_mw", "mW", "leakage power, charged over the whole simulated time", "leakage_mw"),
)

#: The on-chip buffers a config must define, one [buffers.NAME] table each (the ISA's on-chip memories).
BUFFERS = {
    "wgt": "a tile's weights and bias",
    "ifmap": "one time step of a layer's input tile",
    "ofmap": "one output step of a tile (spikes, or 32-bit sums for a reduction over time)",
    "psum": "a tile's 32-bit partial sums",
    "vmem": "a tile's 32-bit membrane potentials (then their decays, when the neuron has one per channel)",
}
if tuple(BUFFERS) != ON_CHIP:
    raise ImportError(f"hwconfig.BUFFERS {tuple(BUFFERS)} must be the ISA's on-chip memories {ON_CHIP}")


def _check_table(table, keys: tuple[Key, ...], where: str) -> dict:
    """The table's values by key, checked and converted, defaults filled in; unknown or missing keys,
    wrong types and values out of range are HwConfigErrors naming `where` and the key."""
    if not isinstance(table, dict):
        raise HwConfigError(f"{where} must be a table, got {table!r}")
    names = [k.name for k in keys]
    for name in table:
        if name not in names:
            raise HwConfigError(f"{where}: unknown key {name!r} (known: {', '.join(names)})")
    values = {}
    for key in keys:
        if key.name in table:
            values[key.name] = key.check(table[key.name], where)
        elif key.required:
            raise HwConfigError(f"{where}: missing key {key.name!r}")
        else:
            values[key.name] = key.default
    return values


def _validated(hw: HwConfig, where: str) -> HwConfig:
    """Rules across keys (each key alone is checked against the schema)."""
    if hw.pe_groups > PE_GROUPS or hw.pes % hw.pe_groups:
        raise HwConfigError(f"{where}: [array] groups = {hw.pe_groups} must divide the {hw.pes} PEs and be at most {PE_GROUPS}")
    if set(hw.buffers) != set(ON_CHIP):
        raise HwConfigError(f"{where}: [buffers] must define exactly {', '.join(ON_CHIP)}; got {', '.join(hw.buffers)}")
    for name, buf in hw.buffers.items():
        if buf.bytes < MIN_BUFFER_BYTES:
            raise HwConfigError(f"{where}: buffer {name} of {buf.bytes} bytes is too small for any tile")
    return hw


def hw_from_dict(raw: dict, where: str) -> HwConfig:
    """A HwConfig from a parsed TOML document, checked key by key against SCHEMA and BUFFER_KEYS."""
    known = [s.name for s in SCHEMA if s.name] + ["buffers"]
    for name, value in raw.items():
        # a top-level key that is a table names a section; a scalar is a top-level key, checked below
        if isinstance(value, dict) and name not in known:
            raise HwConfigError(f"{where}: unknown section [{name}] (known: {', '.join(known)})")
    fields, energy = {}, {}
    for section in SCHEMA:
        if section.name:
            if section.name not in raw:
                raise HwConfigError(f"{where}: missing section [{section.name}]")
            table, here = raw[section.name], f"{where} [{section.name}]"
        else:
            table, here = {k: v for k, v in raw.items() if k not in known}, where
        values = _check_table(table, section.keys, here)
        for key in section.keys:
            if key.field is None:
                energy[key.name] = values[key.name]
            else:
                fields[key.field] = values[key.name]
    buffers = raw.get("buffers")
    if buffers is None:
        raise HwConfigError(f"{where}: missing [buffers]")
    if not isinstance(buffers, dict):
        raise HwConfigError(f"{where}: buffers must be [buffers.NAME] tables, got {buffers!r}")
    for name in buffers:
        if name not in BUFFERS:
            raise HwConfigError(f"{where}: unknown buffer [buffers.{name}] (known: {', '.join(BUFFERS)})")
    for name in BUFFERS:
        if name not in buffers:
            raise HwConfigError(f"{where}: missing buffer [buffers.{name}]")
    hw = HwConfig(**fields, energy_pj=energy,
                  buffers={name: _buffer(buffers[name], f"{where} [buffers.{name}]") for name in sorted(buffers)})
    return _validated(hw, where)


def _buffer(table, where: str) -> Buffer:
    values = _check_table(table, BUFFER_KEYS, where)
    return Buffer(**{key.field: values[key.name] for key in BUFFER_KEYS})


def parse_hw(text: str, where: str) -> HwConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HwConfigError(f"{where}: not valid TOML: {e}") from None
    return hw_from_dict(raw, where)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_hw(preset_or_path: str) -> HwConfig:
    path = PRESET_DIR / f"{preset_or_path}.toml"
    if not path.is_file():
        path = Path(preset_or_path)
        if not path.is_file():
            raise HwConfigError(f"no hardware preset or file {preset_or_path!r} (presets: {', '.join(presets())})")
    return parse_hw(read_text(path), str(path.name))
