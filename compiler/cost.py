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
The cost is in distinct work, not in steps: stretches seen before are not walked again, a template is
built once per work and moved to other slots, and the timeline skips the steps that follow a state it
was in before (`PricedWalk`). Where the config's array skips (`[array] skip`), a spike-driven conv takes
the cycles of the share of its dense PE work its input's spikes leave (`LayerPlan.pe_share`, from the
spike density and, if measured, the share of spike rows holding a spike: `input_rows`).

Energy. Every instruction's memory accesses are its footprint's bytes, priced per memory and direction
as the simulator prices them (`HwConfig.access_pj`); arithmetic is the plan's action counts (the
spike-driven ones at the input's spike density, a parameter); leakage is the buffers' leakage power
over the predicted cycles.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, replace

import torch

from ttc.isa.encoding import Instr
from ttc.isa.hwconfig import HwConfig
from ttc.isa.mt import code_planes
from ttc.isa.table import BY_NAME, DMA, accesses
from ttc.isa.timing import Reservations

from .ir import Conv2d, Graph, Linear
from .plan import LayerPlan, Step, layer_plan

DEFAULT_DENSITY = 0.1  # input spikes per neuron and step, when nothing better is known
OBJECTIVES = ("latency", "energy", "edp")


def score(cycles: float, energy_pj: float, objective: str) -> float:
    """What a choice between plans minimises: cycles (latency), energy, or their product (edp)."""
    return {"latency": cycles, "energy": energy_pj, "edp": cycles * energy_pj}[objective]


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

    def moved(self, turns: dict[str, tuple[int, int]]) -> "StepTemplate":
        """The template of the same work started with each memory's slots `turns[mem] = (by, of)` turns
        further (of `of` slots): the slots it touches rotate; nothing else changes, for the slots of a
        buffer are alike and do not overlap."""
        def move(slots):
            return tuple(sorted((mem, (i + turns[mem][0]) % turns[mem][1]) if mem in turns else (mem, i) for mem, i in slots))
        return replace(self, work=tuple(replace(w, reads=move(w.reads), writes=move(w.writes)) for w in self.work))


def _slot(plan: LayerPlan, mem: str, addr: int) -> tuple[str, int]:
    size = plan.slot_size(mem) if mem in plan.slot_bytes else plan.hw.buffers[mem].bytes
    return mem, addr // size


def step_template(plan: LayerPlan, instrs: list[Instr], share: float = 1.0) -> StepTemplate:
    """Within a step only on-chip bytes are shared (a layer reads its inputs' DRAM and writes its
    outputs', which never overlap), and on chip every operand is one run of bytes: the footprint's
    extent is enough. A spike-driven conv takes the cycles of `share` of its dense PE work (`LayerPlan.pe_share`)
    where the array skips."""
    hw = plan.hw
    # per memory and byte range touched so far: [its last writer, {queue: its last reader since}]
    ranges: dict[str, dict[tuple[int, int], list]] = {}
    work, energy, dram_bytes = [], Counter(), 0
    for instr in instrs:
        opcode, args = BY_NAME[instr.op], instr.args
        queue, j = opcode.queue(args), len(work)
        moved: Counter = Counter()
        reads, writes, after = set(), set(), set()
        for name, mode, nbytes, rows, stride, offset in accesses(opcode, args):
            ref = args[name]
            moved[(ref.mem, "read")] += ("r" in mode) * nbytes * rows
            moved[(ref.mem, "write")] += ("w" in mode) * nbytes * rows
            if ref.mem == "dram" or not nbytes:
                continue
            lo = ref.addr + offset
            hi = lo + (rows - 1) * stride + nbytes
            touched = ranges.setdefault(ref.mem, {})
            for (a, b), (writer, readers) in touched.items():
                if a < hi and lo < b:
                    if writer is not None:
                        after.add(writer)
                    if "w" in mode:
                        after.update(readers.values())
            if "w" in mode:  # later accesses depend on this writer, which came after the readers before it
                touched[(lo, hi)] = [j, {}]
            else:
                touched.setdefault((lo, hi), [None, {}])[1][queue] = j
            slot = _slot(plan, ref.mem, lo)
            if "w" in mode:
                writes.add(slot)
            if "r" in mode:
                reads.add(slot)
        for (mem, direction), nbytes in moved.items():
            if nbytes:
                energy[mem] += hw.access_pj(mem, direction, nbytes)
                dram_bytes += nbytes if mem == "dram" else 0
        after.discard(j)
        work.append(Work(queue, _cycles(hw, opcode, args, share), instr.op in DMA, tuple(sorted(after)),
                         tuple(sorted(reads)), tuple(sorted(writes))))
    return StepTemplate(tuple(work), dict(energy), dram_bytes)


class _Timeline:
    """The machine's timeline over a walk's instructions (module docstring). Its state is when each of
    `queues` may issue its next instruction, when each slot's last write and last read complete, and the
    DRAM interface's bookings. Nothing can start before the earliest of the queues' issue times (the
    floor): `state()` is the state less the floor, earlier times raised to it and bookings that end by
    it dropped. Scheduling is the same at any time, so from two equal states the same steps run the same,
    the later by the difference of the floors."""

    def __init__(self, lat: int, queues: set[str]):
        self.lat, self.queues = lat, queues
        self.issue: dict[str, int] = {}  # queue -> when it may issue its next instruction
        self.written: dict = {}  # slot -> when its last write completes
        self.read: dict = {}  # slot -> when its last read so far completes
        self.dram = Reservations()

    def run(self, template: StepTemplate) -> int:
        """Schedule one step; return when its last instruction completes."""
        issue, written, read = self.issue, self.written, self.read
        ends = []
        for w in template.work:
            ready = issue.get(w.queue, 0)
            for j in w.after:
                ready = max(ready, ends[j])
            for slot in w.reads:
                ready = max(ready, written.get(slot, 0))
            for slot in w.writes:
                ready = max(ready, written.get(slot, 0), read.get(slot, 0))
            if w.dma:
                start = self.dram.reserve(ready, w.cycles)
                issue[w.queue] = start + w.cycles
                end = start + w.cycles + self.lat
            else:
                end = ready + w.cycles
                issue[w.queue] = end
            ends.append(end)
        for w, end in zip(template.work, ends):  # slots change hands between steps, not within one
            for slot in w.reads:
                if end > read.get(slot, 0):
                    read[slot] = end
            for slot in w.writes:
                if end > written.get(slot, 0):
                    written[slot] = end
        return max(ends, default=0)

    def state(self) -> tuple[int, tuple]:
        """(the floor, the state less it)."""
        floor = min(self.issue.get(q, 0) for q in self.queues)
        dram = self.dram
        k = bisect_right(dram.ends, floor)
        del dram.starts[:k], dram.ends[:k]
        return floor, (tuple(sorted((q, t - floor) for q, t in self.issue.items())),
                       *(tuple(sorted((slot, max(t - floor, 0)) for slot, t in times.items())) for times in (self.written, self.read)),
                       tuple(t - floor for t in dram.starts), tuple(t - floor for t in dram.ends))

    def restore(self, floor: int, state: tuple) -> None:
        issue, written, read, starts, ends = state
        self.issue = {q: t + floor for q, t in issue}
        self.written, self.read = ({slot: t + floor for slot, t in times} for times in (written, read))
        self.dram.starts, self.dram.ends = [t + floor for t in starts], [t + floor for t in ends]


def step_busy(plan: LayerPlan, instrs: list[Instr], share: float = 1.0) -> Counter:
    """Cycles of work a step's instructions give each resource (the queues; "dram" for transfers)."""
    busy: Counter = Counter()
    for instr in instrs:
        opcode = BY_NAME[instr.op]
        busy["dram" if instr.op in DMA else opcode.queue(instr.args)] += _cycles(plan.hw, opcode, instr.args, share)
    return busy


def _cycles(hw: HwConfig, opcode, args: dict, share: float) -> int:
    """An instruction's cycles; a spike-driven conv's, where the array skips, those of `share` of its dense work."""
    if opcode.spike_driven and hw.pe_skip != "none":
        return hw.pe_cycles(opcode.pe_work(args) * args.get("planes", 1) * share)
    return opcode.cycles(hw, args)


class PricedWalk:
    """A plan's walk, taken as far as needed, and its step templates (built once per work): a lower
    bound on its cycles, then its full price. The steps of a stretch seen before (same signature, slots
    at the same turns) are not walked again: its keys are known, its slots advanced."""

    def __init__(self, plan: LayerPlan, density: float = DEFAULT_DENSITY, rows: float | None = None):
        self.plan = plan
        self.share = plan.pe_share(density, rows)  # of the spike-driven convs' dense PE work, where the array skips
        self.stretching = plan.stretches()
        self.keys: list = []
        self.first: dict[tuple, Step] = {}  # work -> the first step that does it
        self.stretch_seen: dict[tuple, tuple] = {}  # (signature, turns) -> (its keys, how far it takes each slot, its busy)
        self.work_busy: dict[tuple, Counter] = {}
        self.slots: list[tuple[str, int]] = []  # the memory and the count of slots of each place's turn
        self.busy: Counter = Counter()  # the steps so far: cycles of work per resource
        self.templates: dict[tuple, StepTemplate] = {}

    def template(self, k: int) -> StepTemplate:
        """Built from the instructions of the first step of its work; another place's is that one moved."""
        key = self.keys[k]
        template = self.templates.get(key)
        if template is None:
            work, place = key
            first = self.first[work]
            template = self.templates.get(first.key)
            if template is None:
                template = self.templates[first.key] = step_template(self.plan, first.instrs, self.share)
            if place != first.place:
                template = template.moved({mem: (b - a, of) for (mem, of), a, b in zip(self.slots, first.place, place) if b != a})
            self.templates[key] = template
        return template

    def _walk(self, stretch) -> tuple:
        turns = stretch.turns()
        seen = self.stretch_seen.get((stretch.signature, turns))
        if seen is not None:
            for slots, taken in zip(stretch.slots, seen[1]):
                slots.used += taken
            return seen
        before = [slots.used for slots in stretch.slots]
        self.slots = [(slots.refs[0].mem, len(slots.refs)) for slots in stretch.slots]
        keys, busy = [], Counter()
        for step in stretch.steps():
            keys.append(step.key)
            work = self.work_busy.get(step.work)
            if work is None:
                self.first[step.work] = step
                work = self.work_busy[step.work] = step_busy(self.plan, step.instrs, self.share)
            busy.update(work)
        seen = self.stretch_seen[(stretch.signature, turns)] = (
            keys, [slots.used - b for slots, b in zip(stretch.slots, before)], busy)
        return seen

    def bound(self, enough: float = float("inf")) -> float:
        """Cycles the layer takes at least: its busiest resource's work (every resource works serially),
        or, as soon as the steps walked so far exceed `enough`, their busiest resource's work."""
        busy, most = self.busy, max(self.busy.values(), default=0)
        for stretch in self.stretching:
            keys, _, work = self._walk(stretch)
            self.keys += keys
            for resource, cycles in work.items():
                busy[resource] += cycles
                if busy[resource] > most:
                    most = busy[resource]
            if most > enough:
                return most
        return most

    @property
    def counts(self) -> Counter:
        return Counter(self.keys)

    def price(self, skip: bool = True) -> tuple[float, Counter, int]:
        """The layer's cycles, memory energy by memory and DRAM bytes (module docstring). Once the
        timeline is in a state it was in before (`_Timeline.state`), the steps that followed then are
        not scheduled again for as long as the same steps follow now (`skip`): their times are known.
        (The latest such step whose next period of steps, up to this one, is the next period now.)"""
        self.bound()  # the whole walk
        keys, n = self.keys, len(self.keys)
        queues = {BY_NAME[i.op].queue(i.args) for step in self.first.values() for i in step.instrs}
        timeline = _Timeline(self.plan.hw.dram_latency_cycles, queues)
        floors, states, tops = [], [], []  # per step: the floor and state after it, when it completes
        after: dict[tuple, list[int]] = {}  # state -> the steps after which the timeline was in it
        k = 0
        while k < n:
            tops.append(timeline.run(self.template(k)))
            floor, state = timeline.state()
            floors.append(floor)
            states.append(state)
            earlier = after.setdefault(state, [])
            earlier.append(k)
            k += 1
            # the latest earlier step in this state followed by a whole period of the steps that follow now
            before = next((j for j in reversed(earlier[:-1]) if keys[k:2 * k - 1 - j] == keys[j + 1:k]), None) if skip else None
            if before is None:
                continue
            period, shift = k - 1 - before, floor - floors[before]
            while k < n and keys[k] == keys[k - period]:  # as the steps after `before` ran
                floors.append(floors[k - period] + shift)
                states.append(states[k - period])
                tops.append(tops[k - period] + shift)
                after[states[k]].append(k)
                k += 1
            timeline.restore(floors[k - 1], states[k - 1])
        energy: Counter = Counter()
        counts = self.counts
        for key, count in counts.items():
            for mem, pj in self.templates[key].energy_pj.items():
                energy[mem] += count * pj
        return max(tops, default=0), energy, sum(count * self.templates[key].dram_bytes for key, count in counts.items())


_PRICED: dict[tuple, tuple] = {}  # (id of the config, plan shape, PE share) -> (config, cycles, memory energy, DRAM bytes)
_PRICED_MAX = 20_000


def layer_cost(plan: LayerPlan, density: float = DEFAULT_DENSITY, walk: PricedWalk | None = None,
               rows: float | None = None) -> LayerCost:
    """The plan's predicted cost at input spike `density` (and, where the array skips spike rows, the share
    `rows` of them holding a spike, if measured: `input_rows`); `walk`: its walk, if already built. Plans of
    the same shape on the same machine walk the same on-chip work, so their cycles and memory energy are
    priced once (layers repeat in ResNets, and the tile search and tt-schedule price the same shapes again)."""
    share = plan.pe_share(density, rows)
    key = (id(plan.hw), plan.shape_key(), share)
    hit = _PRICED.get(key)
    if hit is None or hit[0] is not plan.hw:
        if len(_PRICED) >= _PRICED_MAX:
            _PRICED.clear()
        if walk is None or walk.share != share:
            walk = PricedWalk(plan, density, rows)
        hit = _PRICED[key] = (plan.hw, *walk.price())
    _, cycles, memory, dram_bytes = hit
    energy = Counter(memory)
    for unit, actions in plan.arithmetic(density).items():
        for action, n in actions.items():
            energy[unit] += n * plan.hw.energy_pj[action]
    energy["leakage"] = plan.hw.leakage_pj(cycles)
    return LayerCost(cycles, dict(energy), dram_bytes)


def _spike_planes(graph: Graph, op, values: dict) -> list | None:
    """A conv's or linear's input spikes (spike times, MT planes) as boolean planes, from a run of the quantized
    reference (`ttc.compiler.reference.evaluate`); None for any other op or input."""
    dtype = graph.op(op.inputs[0]).type.dtype if op.inputs else None
    if not (isinstance(op, (Conv2d, Linear)) and dtype.kind in ("spike", "ttfs", "mt")):
        return None
    x = values[op.inputs[0]]
    return code_planes(x.long(), dtype.planes, dtype.mode) if dtype.kind == "mt" else [x != 0]


def input_densities(graph: Graph, values: dict) -> dict[str, float]:
    """Spikes per input neuron (and plane, MT) and step of every conv and linear with a spike (or spike
    time) input, keyed by the conv's name."""
    return {op.name: float(torch.stack(planes).double().mean()) for op in graph.ops
            if (planes := _spike_planes(graph, op, values)) is not None}


def input_rows(graph: Graph, values: dict) -> dict[str, float]:
    """The share of spike rows (one input channel's row of a conv, of one plane and step; one input of a linear)
    holding a spike, of every conv and linear with a spike (or spike time) input, keyed by the conv's name: what
    the array's work follows where it skips spike rows."""
    return {op.name: float(torch.stack([p.any(dim=-1) if isinstance(op, Conv2d) else p for p in planes]).double().mean())
            for op in graph.ops if (planes := _spike_planes(graph, op, values)) is not None}


def graph_costs(graph: Graph, hw: HwConfig, densities: dict[str, float] | None = None,
                rows: dict[str, float] | None = None) -> dict[str, LayerCost]:
    """Every layer's predicted cost, keyed as the program's layer table names layers (a conv fused
    with a neuron or reduction by the consumer's name), at the measured `densities` and `rows` (`input_densities`,
    `input_rows`) where given."""
    out = {}
    for op in graph.ops:
        plan = layer_plan(graph, op, hw)
        if plan is not None:
            out[plan.head.name] = layer_cost(plan, (densities or {}).get(op.name, DEFAULT_DENSITY),
                                             rows=(rows or {}).get(op.name))
    return out
