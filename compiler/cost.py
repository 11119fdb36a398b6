"""The cost model: a layer's cycles and energy, priced from the walk of its plan (`ttc.compiler.plan`),
the same steps codegen emits, with the hardware config's formulas and the ISA table's per-opcode
cycles (as tinygrad prices the code it lowered), without running anything. The tile pass chooses
tiles by it, tt-schedule chooses contraction plans by it, and tests hold it to the simulator.

Cycles. The walk's instructions run as on the machine's timeline (`ttc.simulator.timeline`): each
starts when its queue has issued the one before and what it depends on has completed; loads and
stores book the DRAM interface by time and complete `dram_latency_cycles` after their transfer. What
an instruction depends on is found once per distinct step (by its key): within the step, the earlier
instructions whose footprints overlap its own, one of them writing (as `ttc.compiler.sync` places
tokens); across steps, the buffer slots it touches (a slot written by a step must have been read by
the steps before, and read only once written). A layer takes until its last instruction completes.

Energy. Every instruction's memory accesses are its footprint's bytes, priced per memory and direction
as the simulator prices them (`HwConfig.access_pj`); arithmetic is the plan's action counts (the
spike-driven ones at the input's spike density, a parameter); leakage is the buffers' leakage power
over the predicted cycles.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ttc.isa.encoding import Instr
from ttc.isa.hwconfig import HwConfig
from ttc.isa.mt import code_planes
from ttc.isa.table import BY_NAME
from ttc.isa.timing import Reservations

from .ir import Conv2d, Graph, Linear
from .plan import LayerPlan, layer_plan

DEFAULT_DENSITY = 0.1  # input spikes per neuron and step, when nothing better is known
DMA = ("load", "store")


@dataclass
class LayerCost:
    cycles: float
    energy_pj: dict[str, float]
    dram_bytes: int

    @property
    def total_pj(self) -> float:
        return sum(self.energy_pj.values())


@dataclass(frozen=True)
class Work:
    """One instruction of a step template: its queue and cycles, the earlier instructions of the step
    it waits for, and the buffer slots it reads and writes."""

    queue: str
    cycles: int
    dma: bool
    after: tuple[int, ...]
    reads: tuple[tuple[str, int], ...]
    writes: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class StepTemplate:
    """What every step of one key does: its work in program order, memory energy and DRAM bytes."""

    work: tuple[Work, ...]
    energy_pj: dict[str, float]
    dram_bytes: int


def _slot(plan: LayerPlan, mem: str, addr: int) -> tuple[str, int]:
    size = plan.slot_size(mem) if mem in plan.slot_bytes else plan.hw.buffers[mem].bytes
    return mem, addr // size


def step_template(plan: LayerPlan, instrs: list[Instr]) -> StepTemplate:
    """Within a step only on-chip bytes are shared (a layer reads its inputs' DRAM and writes its
    outputs', which never overlap), and on chip every operand is one run of bytes: the footprint's
    extent is enough."""
    hw = plan.hw
    seen: list[tuple[int, str, int, int, str]] = []  # (instruction, memory, lo, hi, mode) of on-chip operands so far
    work, energy, dram_bytes = [], Counter(), 0
    for instr in instrs:
        opcode, args = BY_NAME[instr.op], instr.args
        moved: Counter = Counter()
        reads, writes, after = set(), set(), set()
        for name, mode, nbytes, *strided in opcode.footprint(args):
            rows, stride = strided or (1, 0)
            ref = args[name]
            moved[(ref.mem, "read")] += ("r" in mode) * nbytes * rows
            moved[(ref.mem, "write")] += ("w" in mode) * nbytes * rows
            if ref.mem == "dram" or not nbytes:
                continue
            lo, hi = ref.addr, ref.addr + (rows - 1) * stride + nbytes
            after.update(j for j, mem, a, b, m in seen if mem == ref.mem and a < hi and lo < b and ("w" in mode or "w" in m))
            seen.append((len(work), ref.mem, lo, hi, mode))
            slot = _slot(plan, ref.mem, lo)
            if "w" in mode:
                writes.add(slot)
            if "r" in mode:
                reads.add(slot)
        for (mem, direction), nbytes in moved.items():
            if nbytes:
                energy[mem] += hw.access_pj(mem, direction, nbytes)
                dram_bytes += nbytes if mem == "dram" else 0
        work.append(Work(opcode.queue(args), opcode.cycles(hw, args), instr.op in DMA, tuple(sorted(after)),
                         tuple(sorted(reads)), tuple(sorted(writes))))
    return StepTemplate(tuple(work), dict(energy), dram_bytes)


def walk_cycles_and_energy(plan: LayerPlan) -> tuple[float, Counter, int]:
    """The layer's cycles, memory energy by memory and DRAM bytes (module docstring)."""
    templates: dict[tuple, StepTemplate] = {}
    taken: Counter = Counter()  # key -> steps of that key
    lat = plan.hw.dram_latency_cycles
    reserve = Reservations().reserve
    issue: Counter = Counter()  # queue -> when it may issue its next instruction
    written: Counter = Counter()  # slot -> when its last write completes
    read: Counter = Counter()  # slot -> when its last read so far completes
    last = 0
    for step in plan.walk():
        template = templates.get(step.key)
        if template is None:
            template = templates[step.key] = step_template(plan, step.instrs)
        taken[step.key] += 1
        ends = []
        for w in template.work:
            ready = issue[w.queue]
            for j in w.after:
                if ends[j] > ready:
                    ready = ends[j]
            for slot in w.reads:
                if written[slot] > ready:
                    ready = written[slot]
            for slot in w.writes:
                ready = max(ready, written[slot], read[slot])
            if w.dma:
                issued = reserve(ready, w.cycles) + w.cycles
                issue[w.queue], end = issued, issued + lat
            else:
                end = issue[w.queue] = ready + w.cycles
            ends.append(end)
        for w, end in zip(template.work, ends):  # slots change hands between steps, not within one
            for slot in w.reads:
                if end > read[slot]:
                    read[slot] = end
            for slot in w.writes:
                if end > written[slot]:
                    written[slot] = end
            if end > last:
                last = end
    energy: Counter = Counter()
    for key, n in taken.items():
        for mem, pj in templates[key].energy_pj.items():
            energy[mem] += n * pj
    return last, energy, sum(n * templates[key].dram_bytes for key, n in taken.items())


_PRICED: dict[tuple, tuple] = {}  # (id of the config, plan shape) -> (config, cycles, memory energy, DRAM bytes)
_PRICED_MAX = 20_000


def layer_cost(plan: LayerPlan, density: float = DEFAULT_DENSITY) -> LayerCost:
    """The plan's predicted cost. Plans of the same shape on the same machine walk the same on-chip
    work, so their cycles and memory energy are priced once (layers repeat in ResNets, and the tile
    search and tt-schedule price the same shapes again)."""
    key = (id(plan.hw), plan.shape_key())
    hit = _PRICED.get(key)
    if hit is None or hit[0] is not plan.hw:
        if len(_PRICED) >= _PRICED_MAX:
            _PRICED.clear()
        hit = _PRICED[key] = (plan.hw, *walk_cycles_and_energy(plan))
    _, cycles, memory, dram_bytes = hit
    energy = Counter(memory)
    for unit, actions in plan.arithmetic(density).items():
        for action, n in actions.items():
            energy[unit] += n * plan.hw.energy_pj[action]
    energy["leakage"] = plan.hw.leakage_pj(cycles)
    return LayerCost(cycles, dict(energy), dram_bytes)


def input_densities(graph: Graph, values: dict) -> dict[str, float]:
    """Spikes per input neuron (and plane, MT) and step of every conv and linear with a spike (or spike
    time) input, from a run of the quantized reference (`ttc.compiler.reference.evaluate`), keyed by the conv's name."""
    out = {}
    for op in graph.ops:
        dtype = graph.op(op.inputs[0]).type.dtype if op.inputs else None
        if isinstance(op, (Conv2d, Linear)) and dtype.kind in ("spike", "ttfs", "mt"):
            planes = code_planes(values[op.inputs[0]].long(), dtype.planes, dtype.mode) if dtype.kind == "mt" \
                else [values[op.inputs[0]] != 0]
            out[op.name] = float(torch.stack(planes).double().mean())
    return out


def graph_costs(graph: Graph, hw: HwConfig, densities: dict[str, float] | None = None) -> dict[str, LayerCost]:
    """Every layer's predicted cost, keyed as the program's layer table names layers (a conv fused
    with a neuron or reduction by the consumer's name)."""
    out = {}
    for op in graph.ops:
        plan = layer_plan(graph, op, hw)
        if plan is not None:
            out[plan.head.name] = layer_cost(plan, (densities or {}).get(op.name, DEFAULT_DENSITY))
    return out
