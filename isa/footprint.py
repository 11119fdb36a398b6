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
    """A total map from byte addresses to values, stored as runs: `starts[k]` is where run k begins
    (the first run begins at 0). Updates and queries cost O(log n + runs touched)."""

    def __init__(self, initial):
        self.starts, self.values = [0], [initial]

    def _split(self, addr: int) -> int:
        """Make a run begin at `addr`; return its index."""
        k = bisect_right(self.starts, addr) - 1
        if self.starts[k] != addr:
            self.starts.insert(k + 1, addr)
            self.values.insert(k + 1, self.values[k])
            k += 1
        return k

    def runs(self, lo: int, hi: int) -> list:
        """The values over [lo, hi)."""
        k = bisect_right(self.starts, lo) - 1
        out = []
        while k < len(self.starts) and self.starts[k] < hi:
            out.append(self.values[k])
            k += 1
        return out

    def update(self, lo: int, hi: int, fn) -> None:
        """values[a] = fn(values[a]) for a in [lo, hi)."""
        a, b = self._split(lo), self._split(hi)
        for k in range(a, b):
            self.values[k] = fn(self.values[k])
        # merge the runs just written when they became equal
        k = max(a, 1)
        while k <= min(b, len(self.starts) - 1):
            if self.values[k] == self.values[k - 1]:
                del self.starts[k], self.values[k]
                b -= 1
            else:
                k += 1
