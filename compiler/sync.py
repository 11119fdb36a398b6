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

Cost: linear in the instructions and the byte ranges they touch (a strided copy touches one range
per row). The scoreboard of a memory is cut into pages of `PAGE` bytes, each a short sorted list of
runs, so that splitting a run moves at most one page's runs, however many the memory holds (a flat
list of runs, `isa.footprint.RangeMap`, moves all the runs after the one it splits: quadratic over a
program's DRAM traffic). An instruction whose ranges do not overlap each other (nearly all) reads and
updates each range in one walk. At a barrier the boards are emptied: nothing before it can give a
token after it (every queue waits for the fence first); and between two barriers, an access that no
conflicting access overlaps is not looked at (`_shared`: most of a layer's DRAM rows). The tokens are
exactly those of the byte-by-byte definition (tests/test_sync.py checks it).
"""
from __future__ import annotations

import gc
from bisect import bisect_right

from ttc.isa.encoding import Instr
from ttc.isa.errors import InternalError
from ttc.isa.table import BY_NAME, QUEUES, accesses

PAGE_BITS = 12
PAGE = 1 << PAGE_BITS
_EMPTY = (None, ())  # no writer, no readers: every byte before anything touches it


def _with_reader(readers: tuple, queue: str, index: int) -> tuple:
    """`readers` (sorted (queue, index) pairs, one per queue) with `queue`'s reader set to `index`."""
    return tuple(sorted({**dict(readers), queue: index}.items()))


class _Board:
    """A total map from the byte addresses of one memory to (writer, readers), as runs per page:
    `pages[p]` = (starts, values) with starts[0] = p * PAGE; a page never touched is all `_EMPTY`.
    Adjacent equal runs inside a page are merged where an update touched them."""

    __slots__ = ("pages",)

    def __init__(self, pages: dict | None = None):
        self.pages: dict[int, tuple[list, list]] = {} if pages is None else pages

    def values(self, lo: int, hi: int):
        """The values over [lo, hi) (a value may repeat; pages never touched are left out)."""
        pages = self.pages
        for p in range(lo >> PAGE_BITS, ((hi - 1) >> PAGE_BITS) + 1):
            page = pages.get(p)
            if page is None:
                continue
            starts, values = page
            k = bisect_right(starts, lo) - 1 if lo > starts[0] else 0
            n = len(starts)
            while k < n and starts[k] < hi:
                yield values[k]
                k += 1

    def update(self, lo: int, hi: int, write, read_fn) -> None:
        """Over [lo, hi): every value becomes `write` if it is not None, else read_fn(value)."""
        pages = self.pages
        for p in range(lo >> PAGE_BITS, ((hi - 1) >> PAGE_BITS) + 1):
            page = pages.get(p)
            base = p << PAGE_BITS
            if page is None:
                page = pages[p] = ([base], [_EMPTY])
            starts, values = page
            a, b = _cut(starts, values, base, lo, hi)
            if write is not None:
                del starts[a + 1:b], values[a + 1:b]
                values[a] = write
                b = a + 1
            else:
                for k in range(a, b):
                    values[k] = read_fn(values[k])
            _merge(starts, values, a, b)


def _cut(starts: list, values: list, base: int, lo: int, hi: int) -> tuple[int, int]:
    """Split the runs of the page at `base` so that runs a..b-1 cover exactly [max(lo, base),
    min(hi, base + PAGE)); return (a, b)."""
    a = 0
    if lo > base:
        a = bisect_right(starts, lo) - 1
        if starts[a] != lo:
            a += 1
            starts.insert(a, lo)
            values.insert(a, values[a - 1])
    if hi >= base + PAGE:
        return a, len(starts)
    b = bisect_right(starts, hi, a) - 1
    if starts[b] != hi:
        b += 1
        starts.insert(b, hi)
        values.insert(b, values[b - 1])
    return a, b


def _merge(starts: list, values: list, a: int, b: int) -> None:
    """Merge the runs a..b-1 just changed with each other and their neighbours where they became equal."""
    k = a if a > 0 else 1
    end = b if b < len(starts) else len(starts) - 1
    while k <= end:
        if values[k] == values[k - 1]:
            del starts[k], values[k]
            end -= 1
        else:
            k += 1


def _accesses(instr: Instr) -> list[tuple[str, int, int, bool, int, int]]:
    """Per memory operand: (memory, address, bytes per run, writes, runs, stride), as `regions` cuts
    them into byte ranges (one per run), empty ones left out."""
    out = []
    args = instr.args
    for name, mode, nbytes, rows, stride, offset in accesses(BY_NAME[instr.op], args):
        if nbytes:
            ref = args[name]
            out.append((ref.mem, ref.addr + offset, nbytes, "w" in mode, rows, stride))
    return out


def _disjoint(accesses: list) -> bool:
    """Whether no two byte ranges of an instruction overlap (then each range can be read and updated
    in one walk: what an update changes, no later range of the same instruction reads)."""
    spans = []
    for mem, addr, nbytes, _, rows, stride in accesses:
        if rows > 1 and stride < nbytes:
            return False
        spans.append((mem, addr, addr + (rows - 1) * stride + nbytes))
    spans.sort()
    return all(a[0] != b[0] or a[2] <= b[1] for a, b in zip(spans, spans[1:]))


def place_tokens(code: list[Instr], barriers=()) -> list[Instr]:
    """`code` with the wait and signal masks that make it correct on the machine (see above)."""
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived tuples and no cycles: the collector would only rescan the heap
    try:
        return _place_tokens(code, barriers)
    finally:
        if collecting:
            gc.enable()


def _shared(code: list[Instr], barriers: set, accesses: list) -> list:
    """Per instruction, the accesses that placing tokens must look at. Between two barriers (the
    boards are emptied at each), a read that no write may overlap, and a write that no other access
    may overlap, get no token from what is on the boards and leave nothing there that a later access
    looks at: they are skipped. Byte by byte: a byte no write touches only ever holds readers, which
    only writes look at; a byte a write touches is visited by every access that touches it. Two
    accesses may overlap if their bounding spans do, unless both are strided alike (same stride) and
    their rows sit at different offsets within it, as the row tiles of a tensor do. (Most DRAM rows
    of a layer's loads and stores are skipped.)"""
    shared = [[] for _ in code]
    segment: dict[str, list] = {}

    def key(a):  # (stride, offset of the rows within it, row bytes), or None: contiguous, or rows overlap
        _, addr, nbytes, _, rows, stride = a
        return (stride, addr % stride, nbytes) if rows > 1 and stride >= nbytes else None

    def apart(k1, k2) -> bool:  # no byte in common, whatever the spans
        if k1 is None or k2 is None or k1[0] != k2[0]:
            return False
        s, r1, n1 = k1
        _, r2, n2 = k2
        return (r2 - r1) % s >= n1 and (r1 - r2) % s >= n2

    def close():
        for spans in segment.values():
            spans.sort(key=lambda t: t[0])
            groups = ({}, {})  # reads, writes: key -> [largest end so far, [unmarked (end, j, access)]]
            for lo, hi, j, a in spans:
                k, writes, marked = key(a), a[3], False
                for kind in (groups[True], groups[False]) if writes else (groups[True],):
                    for gk, group in kind.items():
                        if group[0] <= lo or apart(k, gk):
                            continue
                        marked = True  # an access of this group overlaps this one's span
                        for end, i, b in group[1]:
                            if end > lo:
                                shared[i].append(b)
                        group[1].clear()  # marked, or ended before lo and so before any later span
                group = groups[writes].setdefault(k, [-1, []])
                group[0] = max(group[0], hi)
                if marked:
                    shared[j].append(a)
                else:
                    group[1].append((hi, j, a))
        segment.clear()

    for j, instr in enumerate(code):
        if instr.op == "halt":
            continue
        if j in barriers:
            close()
        for a in accesses[j]:
            mem, addr, nbytes, _, rows, stride = a
            segment.setdefault(mem, []).append((addr, addr + (rows - 1) * stride + nbytes, j, a))
    close()
    return shared


def _place_tokens(code: list[Instr], barriers) -> list[Instr]:
    barriers = set(barriers)
    accesses_of = [() if i.op == "halt" else _accesses(i) for i in code]
    shared = _shared(code, barriers, accesses_of)
    boards: dict[str, dict] = {}  # memory -> its scoreboard's pages (see _Board)
    last_on: dict[str, int] = {}  # queue -> its latest instruction so far
    fence: dict[str, int] = {}  # queue -> its last instruction before the latest barrier
    unfenced: set[str] = set()  # queues that have not yet waited for the fence
    synced: dict[tuple[str, str], int] = {}
    waits = [set() for _ in code]
    signals = [set() for _ in code]
    for j, instr in enumerate(code):
        if instr.op == "halt":
            continue
        args = instr.args
        if args.get("wait") or args.get("signal"):
            raise InternalError(f"instruction {j} ({instr.op}) already carries tokens")
        queue = BY_NAME[instr.op].queue(args)
        accesses = accesses_of[j]
        deps: dict[str, int] = {}
        if j in barriers:
            fence, unfenced = dict(last_on), set(QUEUES)
            # Nothing before a barrier gives a token after it: an instruction i < j of queue q is at most
            # fence[q], which every queue waits for (deps below) before anything else it does from here on,
            # so `synced` covers i. Forget it all: the boards only hold the current layer.
            boards.clear()
        if queue in unfenced:
            unfenced.discard(queue)
            deps.update({q: i for q, i in fence.items() if q != queue})
        if _disjoint(accesses):
            _visit_all(boards, shared[j], queue, j, deps)
        else:  # read everything first, then update, as the definition says
            board_of = {}
            for mem, addr, nbytes, writes, rows, stride in accesses:
                board = board_of.get(mem) or board_of.setdefault(mem, _Board(boards.setdefault(mem, {})))
                for r in range(rows):
                    lo = addr + r * stride
                    for writer, readers in board.values(lo, lo + nbytes):
                        for q, i in ((writer,) if writer else ()) + (readers if writes else ()):
                            if q != queue and i > deps.get(q, -1):
                                deps[q] = i
            written, read = ((queue, j), ()), {}

            def add_reader(v, read=read, queue=queue, j=j):
                new = read.get(v)
                if new is None:
                    new = read[v] = (v[0], _with_reader(v[1], queue, j))
                return new

            for mem, addr, nbytes, writes, rows, stride in accesses:
                for r in range(rows):
                    lo = addr + r * stride
                    board_of[mem].update(lo, lo + nbytes, written if writes else None, add_reader)
        for q, i in deps.items():
            if i > synced.get((q, queue), -1):
                signals[i].add(queue)
                waits[j].add(q)
                synced[(q, queue)] = i
        last_on[queue] = j
    return [i if i.op == "halt" else _with_tokens(i, w, s) for i, w, s in zip(code, waits, signals)]


def _visit_all(boards: dict, accesses: list, queue: str, j: int, deps: dict) -> None:
    """For the byte ranges of one instruction, none overlapping another: add the producers of what is
    there to `deps` (the writer, and if the range is written the readers since; per other queue the
    newest), then record the instruction as the writer, or as its queue's reader. One walk per range
    and page (the innermost loop of the compiler's back half: kept flat)."""
    written = ((queue, j), ())
    read = {}  # id(value) -> (value, value with this instruction as its queue's reader): runs share values
    get = deps.get
    for mem, addr, nbytes, writes, rows, stride in accesses:
        pages = boards.get(mem)
        if pages is None:
            pages = boards[mem] = {}
        for r in range(rows):
            lo = addr + r * stride
            hi = lo + nbytes
            p, last = lo >> PAGE_BITS, (hi - 1) >> PAGE_BITS
            while True:
                base = p << PAGE_BITS
                page = pages.get(p)
                if page is None:
                    page = pages[p] = ([base], [_EMPTY])
                starts, values = page
                a, b = _cut(starts, values, base, lo, hi)
                if writes:
                    previous = None
                    for k in range(a, b):
                        v = values[k]
                        if v is previous:
                            continue
                        previous = v
                        writer = v[0]
                        if writer is not None and writer[0] != queue and writer[1] > get(writer[0], -1):
                            deps[writer[0]] = writer[1]
                        for q, i in v[1]:
                            if q != queue and i > get(q, -1):
                                deps[q] = i
                    del starts[a + 1:b], values[a + 1:b]
                    values[a] = written
                    b = a + 1
                else:
                    for k in range(a, b):
                        v = values[k]
                        hit = read.get(id(v))
                        if hit is None:
                            writer = v[0]
                            if writer is not None and writer[0] != queue and writer[1] > get(writer[0], -1):
                                deps[writer[0]] = writer[1]
                            hit = read[id(v)] = (v, (writer, _with_reader(v[1], queue, j)))
                        values[k] = hit[1]
                _merge(starts, values, a, b)
                if p == last:
                    break
                p += 1


def _with_tokens(instr: Instr, wait: set, signal: set) -> Instr:
    """`instr` with its wait and signal masks, as Instr(op, {**args, "wait": .., "signal": ..}) builds
    it (masks in QUEUES order, fields in table order), without checking again the operands that were
    checked when `instr` was made (a third of the time of placing tokens)."""
    return Instr.unchecked(instr.op, {**instr.args, "wait": tuple(q for q in QUEUES if q in wait),
                                      "signal": tuple(q for q in QUEUES if q in signal)})
