"""Dependency tokens: make a program that is correct in program order correct on the machine, where
every queue runs on its own (ttc.isa.table explains tokens).

A scoreboard over every memory remembers, for each byte, the last instruction that wrote it and the
last one on each queue that read it since. An instruction depends on the last writer of what it
touches, and, if it writes, on the readers since. For a dependency on another queue, the instruction
waits for a token from that queue and the producer signals it; a queue runs in order, so only the
newest producer per queue matters, and none at all if an earlier instruction of the same queue
already waited for it or for something later on that queue.

A barrier (the first instruction of a layer) separates layers: the first instruction of every queue
from the barrier on also waits for the last instruction of every other queue before it, so a layer
starts when the one before has finished, as on a layer-by-layer accelerator, and each layer's cycles
are its own.
"""
from __future__ import annotations

from collections import defaultdict

from ttc.isa.encoding import Instr
from ttc.isa.footprint import RangeMap, regions
from ttc.isa.table import BY_NAME, QUEUES


def _with_reader(readers: tuple, queue: str, index: int) -> tuple:
    return tuple(sorted({**dict(readers), queue: index}.items()))


def place_tokens(code: list[Instr], barriers=()) -> list[Instr]:
    barriers = set(barriers)
    boards: dict[str, RangeMap] = defaultdict(lambda: RangeMap((None, ())))
    last_on: dict[str, int] = {}  # queue -> its latest instruction so far
    fence: dict[str, int] = {}  # queue -> its last instruction before the latest barrier
    unfenced: set[str] = set()  # queues that have not yet waited for the fence
    synced: dict[tuple[str, str], int] = {}
    waits = [set() for _ in code]
    signals = [set() for _ in code]
    for j, instr in enumerate(code):
        if instr.op == "halt":
            continue
        if any(instr.args.get(m) for m in ("wait", "signal")):
            raise ValueError(f"instruction {j} ({instr.op}) already carries tokens")
        queue = BY_NAME[instr.op].queue(instr.args)
        touched = regions(instr)
        deps: dict[str, int] = {}
        if j in barriers:
            fence, unfenced = dict(last_on), set(QUEUES)
        if queue in unfenced:
            unfenced.discard(queue)
            deps.update({q: i for q, i in fence.items() if q != queue})
        for r in touched:
            for writer, readers in boards[r.mem].runs(r.lo, r.hi):
                producers = ([writer] if writer else []) + (list(readers) if "w" in r.mode else [])
                for q, i in producers:
                    if q != queue:
                        deps[q] = max(deps.get(q, -1), i)
        for q, i in deps.items():
            if i > synced.get((q, queue), -1):
                signals[i].add(queue)
                waits[j].add(q)
                synced[(q, queue)] = i
        last_on[queue] = j
        for r in touched:
            if "w" in r.mode:
                boards[r.mem].update(r.lo, r.hi, lambda v: ((queue, j), ()))
            else:
                boards[r.mem].update(r.lo, r.hi, lambda v: (v[0], _with_reader(v[1], queue, j)))
    return [i if i.op == "halt" else Instr(i.op, {**i.args, "wait": tuple(w), "signal": tuple(s)})
            for i, w, s in zip(code, waits, signals)]
