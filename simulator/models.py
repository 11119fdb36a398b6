"""The energy model: the hardware config's price of every action the simulator counted, plus leakage
over the simulated time (docs/hardware.md). The cycle model is `ttc.simulator.timeline`."""
from __future__ import annotations

from ttc.isa.hwconfig import HwConfig


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
