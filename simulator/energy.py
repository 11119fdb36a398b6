"""The energy model: a listener on the simulator's dispatch that prices every instruction's actions
with the hardware config and charges them to the layer the instruction belongs to (docs/hardware.md).

    arithmetic   count of each action (add8, add32, mul8, mul16, shift32, cmp32, or1) x its pJ,
                 charged to the unit that did it (pe, neuron, vector)
    buffers      accesses (bytes an instruction moved, rounded up to whole access widths) x read or
                 write pJ, per buffer
    dram         accesses (DRAM access width) x pJ per access
    leakage      every buffer's leakage power x the layer's share of the simulated time
"""
from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict

import numpy as np

from ttc.isa.encoding import Instr
from ttc.isa.hwconfig import HwConfig, memory_bytes
from ttc.isa.table import BY_NAME

from .machine import Event


class EnergyModel:
    """Per layer (by the program's layer table): energy by component and action counts, per inference."""

    def __init__(self, hw: HwConfig, layers: list[dict], batch: int):
        self.hw, self.batch = hw, batch
        self.first = [layer["first_instr"] for layer in layers]
        self.energy = defaultdict(Counter)  # layer index -> component -> pJ
        self.counts = defaultdict(Counter)  # layer index -> counter (ttc.isa.hwconfig.COUNTER_NAMES) -> count
        self.last_instr = {}  # layer index -> its last instruction
        self._access = {}  # (memory, direction, bytes) -> pJ: the same few accesses again and again

    def layer_of(self, index: int) -> int:
        return max(0, bisect_right(self.first, index) - 1)

    def on_instr(self, index: int, instr: Instr, event: Event) -> None:
        if instr.op == "halt":
            return
        layer = self.layer_of(index)
        self.last_instr[layer] = index
        energy, counts = self.energy[layer], self.counts[layer]
        unit = BY_NAME[instr.op].unit
        for action, n in event.actions.items():
            counts[action] += n / self.batch
            if action in self.hw.energy_pj:
                energy[unit] += n / self.batch * self.hw.energy_pj[action]
        for direction, moved in (("read", event.reads), ("write", event.writes)):
            for mem, nbytes in moved.items():
                counts[memory_bytes(mem, direction)] += nbytes
                key = (mem, direction, nbytes)
                if key not in self._access:
                    self._access[key] = self.hw.access_pj(mem, direction, nbytes)
                energy[mem] += self._access[key]

    def finish(self, timelines: list) -> np.ndarray:
        """Charge leakage: each layer leaks from the end of the previous layer's last instruction to
        the end of its own (the layers partition the simulated time), on each of the samples' timelines (its
        spans, by instruction index; one for all on the dense array), the mean over them per inference.
        Returns each timeline's leakage (pJ)."""
        samples = np.zeros(len(timelines))
        shares = defaultdict(float)  # layer -> its cycles summed over the samples
        for k, spans in enumerate(timelines):
            done = 0
            for layer in sorted(self.last_instr):
                end = max(done, spans[self.last_instr[layer]].end)
                shares[layer] += end - done
                samples[k] += self.hw.leakage_pj(end - done)
                done = end
        for layer, cycles in shares.items():
            mean = cycles / len(timelines)
            self.counts[layer]["cycles"] = int(mean) if mean.is_integer() else mean
            self.energy[layer]["leakage"] = self.hw.leakage_pj(mean)
        return samples

    def by_component(self) -> dict[str, float]:
        total = Counter()
        for energy in self.energy.values():
            total.update(energy)
        return dict(total)
