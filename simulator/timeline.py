"""The cycle model: every queue's timeline under dependency tokens and a shared DRAM interface, and
the hazard check that makes overlap safe to trust.

An instruction starts when its queue has finished the one before and every token it waits for has
been given; a `load` or `store` also needs the DRAM interface: it takes the earliest time from then on
that the interface is free for its transfer cycles (the load and store queues arbitrate by time, not
by program order), and completes `dram_latency_cycles` after its transfer ends; its queue may start
the next transfer meanwhile (requests are pipelined, completions stay in order). Other instructions
take the cycles the instruction table declares for their work (`Opcode.cycles`, from the hardware
config's rates), which do not depend on the data, so the timeline is the same for every sample of a
batch.

The functional simulator executes in program order. That is only what the machine computes if every
two instructions whose footprints conflict (one writes bytes the other touches) run in program order
in time: the hazard check verifies exactly that, byte range by byte range, and a missing token is an
error naming both instructions.
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


@dataclass
class Span:
    index: int
    op: str
    queue: str
    start: int
    end: int


@dataclass
class Timeline:
    hw: HwConfig
    spans: list[Span] = field(default_factory=list)
    busy: Counter = field(default_factory=Counter)  # cycles each queue (and "dram") was working
    cycles: int = 0

    def __post_init__(self):
        self._free = dict.fromkeys(QUEUES, 0)
        self._dram = Reservations()
        self._tokens = {(a, b): deque() for a in QUEUES for b in QUEUES}
        # per memory and byte: (end of last write, its index, latest end of a read since, its index)
        self._board: dict[str, RangeMap] = {}

    def on_instr(self, index: int, instr: Instr, event) -> None:
        if instr.op == "halt":
            self.finish(index)
            return
        queue = BY_NAME[instr.op].queue(instr.args)
        ready = self._free[queue]
        for src in instr["wait"]:
            channel = self._tokens[(src, queue)]
            if not channel:
                raise ScheduleError(f"instruction {index} ({instr.op}) on queue {queue} waits for a token from "
                                    f"{src} that no earlier instruction gives: the machine would deadlock")
            ready = max(ready, channel.popleft())
        work = BY_NAME[instr.op].cycles(self.hw, instr.args)
        if instr.op in DMA:
            start = self._dram.reserve(ready, work)
            self.busy["dram"] += work
            end = start + work + self.hw.dram_latency_cycles
        else:
            start, end = ready, ready + work
        self.busy[queue] += work
        self._free[queue] = start + work  # a DMA queue issues its next transfer while this one is in flight
        for dst in instr["signal"]:
            self._tokens[(queue, dst)].append(end)
        self.spans.append(Span(index, instr.op, queue, start, end))
        self._check_hazards(index, instr, start, end)

    def _check_hazards(self, index: int, instr: Instr, start: int, end: int) -> None:
        for r in regions(instr):
            board = self._board.setdefault(r.mem, RangeMap((0, -1, 0, -1)))
            for w_end, writer, r_end, reader in board.runs(r.lo, r.hi):
                other = writer if w_end > start else reader if "w" in r.mode and r_end > start else None
                if other is not None:
                    o = self.spans[other]  # spans are in program order, halt is last
                    raise ScheduleError(
                        f"race on {r}: instruction {index} ({instr.op}, {self.spans[-1].queue}) starts at cycle {start} "
                        f"while instruction {other} ({o.op}, {o.queue}) runs until cycle {o.end}: a dependency token is missing")
            if "w" in r.mode:
                board.update(r.lo, r.hi, lambda v: (end, index, 0, -1))
            else:
                board.update(r.lo, r.hi, lambda v: v if v[2] >= end else (v[0], v[1], end, index))

    def finish(self, index: int) -> None:
        left = [f"{a}->{b}" for (a, b), ch in self._tokens.items() if ch]
        if left:
            raise ScheduleError(f"halt (instruction {index}): tokens given but never taken on {', '.join(left)}")
        self.cycles = max((span.end for span in self.spans), default=0)


def program_timeline(prog) -> Timeline | ScheduleError:
    """The timeline of a program's run from its first instruction to its first halt, hazard-checked, or the
    ScheduleError that check raises (its `index` the instruction): it depends on the program and the
    hardware config, not on the data, so it is made once per program (and kept on it) rather than on every
    run."""
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
