"""Where an instruction reads and writes, from the table's footprints, and a map from byte ranges to
values: the two things both the compiler's token placement (`ttc.compiler.sync`) and the simulator's
hazard check (`ttc.simulator.timeline`) need."""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from .encoding import Instr
from .table import BY_NAME, accesses


@dataclass(frozen=True)
class Region:
    mem: str
    lo: int
    hi: int  # exclusive
    mode: str  # "r", "w" or "rw"

    def __str__(self):
        return f"{self.mem}[{self.lo:#x}:{self.hi:#x}]"


def regions(instr: Instr) -> list[Region]:
    """The byte ranges `instr` may touch: per memory operand one range, or one per row of a strided
    copy, so that copies of interleaved rows (the row tiles of a tensor) are seen not to overlap
    (empty ranges left out)."""
    out = []
    for name, mode, nbytes, rows, stride, offset in accesses(BY_NAME[instr.op], instr.args):
        ref = instr.args[name]
        at = ref.addr + offset
        out += [Region(ref.mem, at + r * stride, at + r * stride + nbytes, mode) for r in range(rows) if nbytes]
    return out


class RangeMap:
    """A total map from byte addresses to values, stored as runs per page of 2^PAGE_BITS bytes: `pages[p]` =
    (starts, values) with starts[0] = p << PAGE_BITS, adjacent runs of a page never equal (a page never
    touched holds the initial value). Splitting a run moves at most one page's runs, however many the map
    holds (a flat list of runs moved all the runs after it: quadratic over a program's DRAM traffic, 20 s of
    a TT-ResNet-19's hazard check); updates and queries cost O(pages + runs touched)."""

    PAGE_BITS = 12

    def __init__(self, initial):
        self.initial = initial
        self.pages: dict[int, tuple[list, list]] = {}

    def _pages(self, lo: int, hi: int):
        """(page, its first address in [lo, hi), its end in [lo, hi)) for every page [lo, hi) meets."""
        bits = self.PAGE_BITS
        for p in range(lo >> bits, ((hi - 1) >> bits) + 1):
            yield p, max(lo, p << bits), min(hi, (p + 1) << bits)

    def runs(self, lo: int, hi: int) -> list:
        """The values over [lo, hi), each run once (no two in a row equal)."""
        out = []
        for p, a, b in self._pages(lo, hi):
            starts, values = self.pages.get(p) or ([p << self.PAGE_BITS], [self.initial])
            k = bisect_right(starts, a) - 1
            while k < len(starts) and starts[k] < b:
                if not out or out[-1] != values[k]:
                    out.append(values[k])
                k += 1
        return out

    def update(self, lo: int, hi: int, fn) -> None:
        """values[a] = fn(values[a]) for a in [lo, hi)."""
        for p, a, b in self._pages(lo, hi):
            page = self.pages.get(p)
            if page is None:
                page = self.pages[p] = ([p << self.PAGE_BITS], [self.initial])
            starts, values = page
            i, j = _split(starts, values, a), _split(starts, values, b) if b < (p + 1) << self.PAGE_BITS else len(starts)
            for k in range(i, j):
                values[k] = fn(values[k])
            # merge the runs just written when they became equal (each other, or their neighbours)
            k = max(i, 1)
            while k <= min(j, len(starts) - 1):
                if values[k] == values[k - 1]:
                    del starts[k], values[k]
                    j -= 1
                else:
                    k += 1


def _split(starts: list, values: list, addr: int) -> int:
    """Make a run of a page begin at `addr` (inside the page); return its index."""
    k = bisect_right(starts, addr) - 1
    if starts[k] != addr:
        starts.insert(k + 1, addr)
        values.insert(k + 1, values[k])
        k += 1
    return k
