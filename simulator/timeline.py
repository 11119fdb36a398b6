"""The cycle model: every queue's timeline under dependency tokens and a shared DRAM interface, and
the hazard check that makes overlap safe to trust.

An instruction starts when its queue has finished the one before and every token it waits for has
been given; a `load` or `store` also needs the DRAM interface: it takes the earliest time from then on
that the interface is free for its transfer cycles (the load and store queues arbitrate by time, not
by program order), and completes `dram_latency_cycles` after its transfer ends; its queue may start
the next transfer meanwhile (requests are pipelined, completions stay in order). Other instructions
take the cycles the instruction table declares for their work (`Opcode.cycles`, from the hardware
config's rates), which do not depend on the data; but where the config's array skips (`[array] skip`),
a spike-driven conv takes the cycles of the PE work its sample's spikes left (`Opcode.spike_driven`,
counted by the simulator), so every sample has its own timeline (`sample_timelines`).

The functional simulator executes in program order. That is only what the machine computes if every
two instructions whose footprints conflict (one writes bytes the other touches) are ordered by the
queues and tokens, whatever each instruction's duration: the hazard check verifies exactly that, byte
range by byte range, once per program. It tracks what has happened before each instruction starts: the
instructions before it on its queue (on a PE, neuron or vector queue, the one before it has completed;
on a DMA queue it has only issued), and, through every token it takes, what had happened by the
completion of the instruction that gave it. A conflicting earlier instruction outside that is a race,
an error naming both instructions, even where this timeline's durations happen to keep them apart.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from ttc.isa.encoding import Instr
from ttc.isa.errors import UserError
from ttc.isa.footprint import RangeMap, regions
from ttc.isa.hwconfig import HwConfig
from ttc.isa.table import BY_NAME, DMA, QUEUES
from ttc.isa.timing import Reservations


class ScheduleError(UserError, RuntimeError):
    """The program deadlocks, races or leaves tokens behind."""


QUEUE_INDEX = {q: k for k, q in enumerate(QUEUES)}
NOTHING = (-1,) * len(QUEUES)  # per queue, the last of its instructions known to have completed: none


@dataclass
class Span:
    index: int
    op: str
    queue: str
    start: int
    end: int


@dataclass(frozen=True)
class Timed:
    """An instruction as the timeline sees it: its queue, tokens and (dense) cycles."""

    op: str
    queue: str
    waits: tuple[str, ...]
    signals: tuple[str, ...]
    cycles: int
    dma: bool

    @classmethod
    def of(cls, hw: HwConfig, instr: Instr) -> "Timed":
        opcode = BY_NAME[instr.op]
        return cls(instr.op, opcode.queue(instr.args), tuple(instr["wait"]), tuple(instr["signal"]),
                   opcode.cycles(hw, instr.args), instr.op in DMA)


@dataclass
class Timeline:
    """The queues' timeline, instruction by instruction (a listener on the simulator's dispatch, or fed
    `schedule` directly), and with `check` the hazard check (module docstring)."""

    hw: HwConfig
    check: bool = True
    spans: list[Span] = field(default_factory=list)
    busy: Counter = field(default_factory=Counter)  # cycles each queue (and "dram") was working
    cycles: int = 0

    def __post_init__(self):
        self._free = dict.fromkeys(QUEUES, 0)
        self._dram = Reservations()
        # per pair of queues, the tokens given and not yet taken: (when, what had happened by then)
        self._tokens = {(a, b): deque() for a in QUEUES for b in QUEUES}
        self._issued = Counter()  # per queue: its instructions so far
        self._known = dict.fromkeys(QUEUES, NOTHING)  # per queue: what had happened when its last instruction started
        # per memory and byte: (its last writer, the last reader of each queue since), each (queue's index in
        # QUEUES, position on it, instruction index, opcode)
        self._board: dict[str, RangeMap] = {}

    def on_instr(self, index: int, instr: Instr, event) -> None:
        if instr.op == "halt":
            self.finish(index)
        else:
            self.schedule(index, Timed.of(self.hw, instr), instr=instr)

    def schedule(self, index: int, t: Timed, work: int | None = None, instr: Instr | None = None) -> None:
        """Instruction `index` (`instr` itself for the hazard check), taking the cycles of PE `work` if given."""
        queue = t.queue
        ready, known = self._free[queue], self._known[queue]
        position = self._issued[queue]
        self._issued[queue] += 1
        if self.check and position and not t.dma:  # the one before it on its queue has completed
            known = _with(known, queue, position - 1)
        for src in t.waits:
            channel = self._tokens[(src, queue)]
            if not channel:
                raise ScheduleError(f"instruction {index} ({t.op}) on queue {queue} waits for a token from "
                                    f"{src} that no earlier instruction gives: the machine would deadlock")
            given, happened = channel.popleft()
            ready = max(ready, given)
            if self.check:
                known = tuple(map(max, known, happened))
        self._known[queue] = known
        cycles = t.cycles if work is None else self.hw.pe_cycles(work)
        if t.dma:
            start = self._dram.reserve(ready, cycles)
            self.busy["dram"] += cycles
            end = start + cycles + self.hw.dram_latency_cycles
        else:
            start, end = ready, ready + cycles
        self.busy[queue] += cycles
        self._free[queue] = start + cycles  # a DMA queue issues its next transfer while this one is in flight
        done = _with(known, queue, position) if self.check else None
        for dst in t.signals:
            self._tokens[(queue, dst)].append((end, done))
        self.spans.append(Span(index, t.op, queue, start, end))
        if self.check:
            self._check_hazards(index, instr, queue, position, known)

    def _check_hazards(self, index: int, instr: Instr, queue: str, position: int, known: tuple) -> None:
        """Every earlier instruction whose footprint conflicts with this one's has completed by its start."""
        touched = regions(instr)
        for r in touched:
            board = self._board.get(r.mem)
            for writer, readers in board.runs(r.lo, r.hi) if board else ():
                for other in (writer, *readers) if "w" in r.mode else (writer,):
                    if other is not None and known[other[0]] < other[1] and other[2] != index:
                        raise ScheduleError(
                            f"race on {r}: instruction {index} ({instr.op}, {queue}) may start before instruction "
                            f"{other[2]} ({other[3]}, {QUEUES[other[0]]}) completes, whatever their durations: a "
                            "dependency token is missing")
        slot = QUEUE_INDEX[queue]
        me = (slot, position, index, instr.op)
        for r in touched:
            board = self._board.setdefault(r.mem, RangeMap((None, ())))
            if "w" in r.mode:
                board.update(r.lo, r.hi, lambda v: (me, ()))
            else:  # the latest reader of each queue: the earlier ones completed before it does
                board.update(r.lo, r.hi, lambda v: (v[0], tuple(o for o in v[1] if o[0] != slot) + (me,)))

    def finish(self, index: int) -> None:
        left = [f"{a}->{b}" for (a, b), ch in self._tokens.items() if ch]
        if left:
            raise ScheduleError(f"halt (instruction {index}): tokens given but never taken on {', '.join(left)}")
        self.cycles = max((span.end for span in self.spans), default=0)


def _with(known: tuple, queue: str, position: int) -> tuple:
    k = QUEUE_INDEX[queue]
    return known[:k] + (max(known[k], position),) + known[k + 1:]


def program_timeline(prog) -> Timeline | ScheduleError:
    """The timeline of a program's run from its first instruction to its first halt, hazard-checked, or the
    ScheduleError that check raises (its `index` the instruction): it depends on the program and the
    hardware config, not on the data, so it is made once per program (and kept on it) rather than on every
    run. (Where the array skips, it is the dense schedule's; each sample's own is `sample_timelines`.)"""
    cached = getattr(prog, "_timeline", None)
    if cached is None:
        cached = Timeline(prog.hw)
        for index, instr in enumerate(prog.code):
            try:
                cached.on_instr(index, instr, None)
            except ScheduleError as e:
                e.index, cached = index, e
                break
            if instr.op == "halt":
                break
        prog._timeline = cached
    return cached


def sample_timelines(prog, pe_work: dict, start: int = 0) -> list[Timeline]:
    """Each sample's timeline from instruction `start` to the next halt where the array skips: the spike-driven
    instructions take the cycles of the PE work (`pe_work[index][sample]`, counted by the simulator) their
    sample's spikes left (every entry holds as many samples). Unchecked: the program's hazard check (which must have passed) holds whatever the
    durations."""
    segments = prog.__dict__.setdefault("_timed", {})
    if start not in segments:
        end = next(k for k in range(start, len(prog.code)) if prog.code[k].op == "halt")
        segments[start] = [Timed.of(prog.hw, i) for i in prog.code[start:end]]
    timed = segments[start]
    out = []
    for sample in range(len(next(iter(pe_work.values())))):
        timeline = Timeline(prog.hw, check=False)
        for index, t in enumerate(timed, start):
            work = pe_work.get(index)
            timeline.schedule(index, t, None if work is None else int(work[sample]))
        timeline.finish(start + len(timed))
        out.append(timeline)
    return out
