"""Cycle and energy models. Both read the hardware config only; the cycle model listens to the
simulator's dispatch, the energy model prices the counters (docs/hardware.md).

First-order cycle model: units run one instruction at a time, in program order (no overlap yet):
  dma         latency + ceil(bytes / DRAM bytes per cycle) if DRAM is involved, else
              ceil(bytes / buffer access width)
  sconv/dconv ceil(cout * OH * OW * cin * kh * kw / PEs)   (the dense array schedule; spikes save energy)
  nrn         ceil(n / neuron lanes)
  vector ops  ceil(elements / vector lanes)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import ceil

from ttc.isa.encoding import Instr
from ttc.isa.hwconfig import HwConfig
from ttc.isa.table import BY_NAME

from .machine import Event


def _conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def instr_cycles(hw: HwConfig, i: Instr) -> int:
    op = i.op
    if op == "dma":
        nbytes = i["rows"] * i["row_bytes"]
        if "dram" in (i["src"].mem, i["dst"].mem):
            return hw.dram_latency_cycles + ceil(nbytes / hw.dram_bytes_per_cycle)
        width = min(hw.buffers[i["src"].mem].access_bytes, hw.buffers[i["dst"].mem].access_bytes)
        return ceil(nbytes / width)
    if op in ("sconv", "dconv"):
        oh, ow = _conv_out(i["ih"], i["kh"], i["sh"], i["ph"]), _conv_out(i["iw"], i["kw"], i["sw"], i["pw"])
        return ceil(i["cout"] * oh * ow * i["cin"] * i["kh"] * i["kw"] / hw.pes)
    if op == "nrn":
        return ceil(i["n"] / hw.neuron_lanes)
    if op in ("vfill", "vacc"):
        return ceil(i["n"] / hw.vector_lanes)
    if op == "vbias":
        return ceil(i["channels"] * i["plane"] / hw.vector_lanes)
    if op == "pool":
        oh, ow = _conv_out(i["ih"], i["k"], i["stride"], 0), _conv_out(i["iw"], i["k"], i["stride"], 0)
        return ceil(i["channels"] * oh * ow * i["k"] ** 2 / hw.vector_lanes)
    return 1


@dataclass
class CycleModel:
    hw: HwConfig
    cycles: int = 0
    by_unit: Counter = field(default_factory=Counter)

    def on_instr(self, instr: Instr, event: Event) -> None:
        c = instr_cycles(self.hw, instr)
        self.cycles += c
        self.by_unit[BY_NAME[instr.op].unit] += c


def energy_pj(hw: HwConfig, per_inference: dict, cycles: int) -> dict[str, float]:
    """Energy of one inference by component (pJ): compute actions, each buffer, DRAM, leakage."""
    out = {"compute": sum(per_inference.get(a, 0) * e for a, e in hw.energy_pj.items())}
    for name, buf in hw.buffers.items():
        reads = per_inference.get(f"{name}_read_bytes", 0) / buf.access_bytes
        writes = per_inference.get(f"{name}_write_bytes", 0) / buf.access_bytes
        out[name] = reads * buf.read_pj + writes * buf.write_pj
    dram_bytes = per_inference.get("dram_read_bytes", 0) + per_inference.get("dram_write_bytes", 0)
    out["dram"] = dram_bytes / hw.dram_access_bytes * hw.dram_pj_per_access
    seconds = cycles / (hw.frequency_mhz * 1e6)
    out["leakage"] = sum(b.leakage_mw for b in hw.buffers.values()) * 1e-3 * seconds * 1e12
    return out
