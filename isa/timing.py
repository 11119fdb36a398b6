"""Timing rules of the machine shared by the simulator's cycle model (`ttc.simulator.timeline`) and the
compiler's cost model (`ttc.compiler.cost`): the DRAM interface, which loads and stores share and
book by time, not by program order."""
from __future__ import annotations

from bisect import bisect_right


class Reservations:
    """Busy intervals of a shared resource: `reserve` books the earliest free interval of a given
    length that starts no earlier than `ready`."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []  # disjoint, sorted, never touching (touching intervals are merged)

    def reserve(self, ready: int, length: int) -> int:
        k = bisect_right(self.ends, ready)  # the first interval that ends after `ready`
        start = ready
        while k < len(self.starts) and self.starts[k] < start + length:
            start = max(start, self.ends[k])
            k += 1
        if length:
            self._insert(start, start + length)
        return start

    def _insert(self, lo: int, hi: int) -> None:
        k = bisect_right(self.starts, lo)
        if k and self.ends[k - 1] == lo:  # merge with the interval before
            k -= 1
            lo = self.starts[k]
            del self.starts[k], self.ends[k]
        if k < len(self.starts) and self.starts[k] == hi:  # and with the one after
            hi = self.ends[k]
            del self.starts[k], self.ends[k]
        self.starts.insert(k, lo)
        self.ends.insert(k, hi)
