"""The machine description: one TOML hardware config, validated on load.

The compiler (buffer fit, tiling) and the simulator (cycles, energy) both read this object; nothing
about the machine's sizes, speeds or energies is written anywhere else. Presets live in
`isa/presets/*.toml`; `load_hw("sata")` takes a preset by name, anything else is a path.
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
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

    @property
    def pes(self) -> int:
        return self.pe_rows * self.pe_cols

    # ---- time per unit of work: the simulator's cycle model and the compiler's cost model both use these
    def conv_cycles(self, cout: int, oh: int, ow: int, cin: int, kh: int, kw: int, planes: int = 1) -> int:
        """One PE group computes every (output, tap) pair, spike or not (the dense array schedule), plane
        by plane of MT spikes."""
        return -(-cout * oh * ow * cin * kh * kw * planes // (self.pes // self.pe_groups))

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
    def from_json(cls, text: str) -> "HwConfig":
        raw = json.loads(text)
        raw["buffers"] = {k: Buffer(**v) for k, v in raw["buffers"].items()}
        return _validated(cls(**raw), "prog.bin hardware config")


#: Arithmetic actions whose energy every config gives (pJ per action), by bit width; the simulator
#: counts each of them. Memory accesses are priced per buffer and for DRAM.
ENERGY_ACTIONS = {
    "add8": "8-bit add: one input spike adds one 8-bit weight into an accumulator (sconv)",
    "add16": "16-bit add: one input spike adds one 16-bit weight (sconv of a contracted TT kernel)",
    "add32": "32-bit add: multiply-accumulate sums, membrane charge, soft reset, vector adds, a TTFS synapse (tconv)",
    "mul8": "8x8-bit multiply (dconv of 8-bit inputs)",
    "mul16": "16-bit multiply (dconv of 16-bit inputs or weights; membrane decay by a non-power-of-two factor)",
    "mul32": "32-bit multiply (dconv of 32-bit inputs)",
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
    "mac": "multiply-accumulates: every in-bounds tap of every output (dconv)",
    "shift_add": "TTFS synapses: each input spike times the non-zero log weights it reaches (tconv)",
    "neuron_update": "neuron updates, one per neuron and time step (nrn)",
    "fire": "TTFS firing decisions, one per neuron (tfire)",
    "spike": "output spikes (nrn: over all planes; tfire: spike times below the window)",
    MEMORY_BYTES: "bytes an instruction read or wrote (direction) in memory mem (a buffer or dram)",
    "cycles": "a layer's share of the simulated time (per-layer counts only)",
}

#: Every counter name the simulator and the energy model may emit: the actions and the expanded patterns.
COUNTER_NAMES = frozenset(ENERGY_ACTIONS) | {
    name.format(k=k, mem=mem, direction=direction)
    for name in COUNTERS for k in range(MAX_LEVELS) for mem in MEMORIES for direction in ("read", "write")}


def memory_bytes(mem: str, direction: str) -> str:
    """The counter of bytes read ("read") or written ("write") in a memory."""
    return MEMORY_BYTES.format(mem=mem, direction=direction)


def spike_add_action(wfmt: str) -> str:
    """The add one input spike does per weight it reaches (sconv): as wide as the weights."""
    return "add16" if wfmt == "i16" else "add8"


def multiply_action(src_fmt: str, wfmt: str) -> str:
    """The multiply of a dconv tap: as wide as the wider of input and weight."""
    width = max(int(src_fmt[1:]), int(wfmt[1:]))
    return {8: "mul8", 16: "mul16", 32: "mul32"}[width]


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


_SCHEMA = {
    "name": str, "description": str,
    "array": {"rows": int, "cols": int, "groups": int, "frequency_mhz": float},
    "neuron_unit": {"lanes": int},
    "vector_unit": {"lanes": int},
    "dram": {"bytes_per_cycle": int, "latency_cycles": int, "access_bytes": int, "pj_per_access": float},
    "energy_pj": {k: float for k in ENERGY_ACTIONS},
}
_BUFFER_SCHEMA = {"kib": float, "access_bytes": int, "read_pj": float, "write_pj": float, "leakage_mw": float}


def _check(section: dict, schema: dict, where: str) -> None:
    for key in section:
        if key not in schema:
            raise HwConfigError(f"{where}: unknown key {key!r} (known: {', '.join(schema)})")
    for key, kind in schema.items():
        if key not in section:
            raise HwConfigError(f"{where}: missing key {key!r}")
        value = section[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise HwConfigError(f"{where}: [{key}] must be a table")
            _check(value, kind, f"{where} [{key}]")
        elif kind is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise HwConfigError(f"{where}: {key} must be a number, got {value!r}")
            if value < 0:
                raise HwConfigError(f"{where}: {key} must not be negative, got {value}")
        elif kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise HwConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
        elif not isinstance(value, kind):
            raise HwConfigError(f"{where}: {key} must be a {kind.__name__}")


def _validated(hw: HwConfig, where: str) -> HwConfig:
    if hw.pe_groups > PE_GROUPS or hw.pes % hw.pe_groups:
        raise HwConfigError(f"{where}: [array] groups = {hw.pe_groups} must divide the {hw.pes} PEs and be at most {PE_GROUPS}")
    if set(hw.buffers) != set(ON_CHIP):
        raise HwConfigError(f"{where}: [buffers] must define exactly {', '.join(ON_CHIP)}; got {', '.join(hw.buffers)}")
    for name, buf in hw.buffers.items():
        if buf.bytes < 64:
            raise HwConfigError(f"{where}: buffer {name} of {buf.bytes} bytes is too small for any tile")
    return hw


def parse_hw(text: str, where: str) -> HwConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HwConfigError(f"{where}: not valid TOML: {e}") from None
    buffers = raw.pop("buffers", None)
    if not isinstance(buffers, dict):
        raise HwConfigError(f"{where}: missing [buffers]")
    _check(raw, _SCHEMA, where)
    for name, buf in buffers.items():
        _check(buf, _BUFFER_SCHEMA, f"{where} [buffers.{name}]")
    hw = HwConfig(
        name=raw["name"], description=raw["description"],
        frequency_mhz=float(raw["array"]["frequency_mhz"]),
        pe_rows=raw["array"]["rows"], pe_cols=raw["array"]["cols"], pe_groups=raw["array"]["groups"],
        neuron_lanes=raw["neuron_unit"]["lanes"], vector_lanes=raw["vector_unit"]["lanes"],
        dram_bytes_per_cycle=raw["dram"]["bytes_per_cycle"],
        dram_latency_cycles=raw["dram"]["latency_cycles"],
        dram_access_bytes=raw["dram"]["access_bytes"],
        dram_pj_per_access=float(raw["dram"]["pj_per_access"]),
        buffers={k: Buffer(**{f: (float(v) if _BUFFER_SCHEMA[f] is float else v) for f, v in b.items()})
                 for k, b in sorted(buffers.items())},
        energy_pj={k: float(v) for k, v in raw["energy_pj"].items()},
    )
    return _validated(hw, where)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_hw(preset_or_path: str) -> HwConfig:
    path = PRESET_DIR / f"{preset_or_path}.toml"
    if not path.is_file():
        path = Path(preset_or_path)
        if not path.is_file():
            raise HwConfigError(f"no hardware preset or file {preset_or_path!r} (presets: {', '.join(presets())})")
    return parse_hw(path.read_text(), str(path.name))
