"""Tiling geometry (docs/memory.md): ranges, blocks of stored tensors and the row tiles of a conv or
pool, which the layer plans (`ttc.compiler.plan`) cut layers into.

Spike tensors are bit-packed, [C, H, W] per step, so a block of rows of every channel starts on a
byte only if H*W and the first row times W are multiples of 8: tiles of spike tensors are cut on such
rows, and a block loads from the byte-aligned row at or above the first row it needs (the conv then
skips the extra rows: a negative top padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from ttc.isa.errors import InternalError
from ttc.isa.table import BY_NAME, TIME, elems_bytes

from .ir import DType, IRError


def ceil_to(n: int, to: int) -> int:
    return -(-n // to) * to


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) in consecutive ranges of `size` (the last may be shorter)."""
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) in `parts` nearly equal, non-empty ranges (fewer if n < parts)."""
    cuts = [n * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def row_unit(fmt: str, w: int) -> int:
    """Rows of a [.., W] tensor that end on a byte: row r starts on a byte when r is a multiple."""
    return 8 // math.gcd(w, 8) if fmt == "spike" else 1


def channel_unit(fmt: str, plane: int) -> int:
    return 8 // math.gcd(plane, 8) if fmt == "spike" else 1


@dataclass(frozen=True)
class Block:
    """Channels [c0, c1) and rows [r0, r1) (all columns) of one step of a stored [C, H, W] tensor,
    packed densely on chip."""

    fmt: str
    shape: tuple[int, int, int]
    c0: int
    c1: int
    r0: int
    r1: int

    @cached_property
    def run(self) -> tuple[int, int, int, int]:
        """The load/store operands that move it: (DRAM offset within the step, rows, row bytes, DRAM
        stride); one contiguous run when it holds whole channels."""
        c, h, w = self.shape
        if self.r0 == 0 and self.r1 == h:
            return self._bytes_exact(self.c0 * h * w), 1, elems_bytes(self.fmt, (self.c1 - self.c0) * h * w), 0
        return (self._bytes_exact(self.c0 * h * w + self.r0 * w), self.c1 - self.c0,
                self._bytes_exact((self.r1 - self.r0) * w), self._bytes_exact(h * w))

    @property
    def nbytes(self) -> int:
        _, rows, row_bytes, _ = self.run
        return rows * row_bytes

    def _bytes_exact(self, n: int) -> int:
        if self.fmt == "spike" and n % 8:
            raise InternalError(f"block {self} does not start or end on a byte (tiling bug)")
        return elems_bytes(self.fmt, n)


@dataclass(frozen=True)
class RowTile:
    """Output rows [y0, y1) read input rows [r0, r1); `pt` is the conv's top padding relative to r0."""

    y0: int
    y1: int
    r0: int
    r1: int
    pt: int


def row_tiles(oh: int, rows: int, ih: int, k: int, s: int, pad: int, unit: int) -> list[RowTile]:
    if rows >= oh:
        return [RowTile(0, oh, 0, ih, pad)]
    tiles = []
    for y0, y1 in spans(oh, rows):
        lo, hi = y0 * s - pad, (y1 - 1) * s - pad + k
        r0 = max(0, lo) // unit * unit
        tiles.append(RowTile(y0, y1, r0, min(ih, ceil_to(hi, unit)), r0 - lo))
    return tiles


def candidates(n: int) -> list[int]:
    """Tile sizes to try for n items: every tile count's largest size, also in multiples of 2, 4, 8
    (byte-aligned tiles of spike tensors)."""
    return sorted({size for unit in (1, 2, 4, 8) for size in sizes(n, unit)}, reverse=True)


def sizes(n: int, unit: int) -> list[int]:
    """Tile sizes worth trying for n items in multiples of `unit` (or n): the largest size for each
    tile count, largest first."""
    out = sorted({min(n, ceil_to(-(-n // k), unit)) for k in range(1, n + 1)}, reverse=True)
    return out


CONV_FIELD_MAX = {f.name: (1 << f.bits) - 1 for f in BY_NAME["sconv"].fields if f.kind == "u"}


def fmt(dtype: DType) -> str:
    """The ISA element format a value is stored in."""
    if dtype.kind in ("spike", "mt"):  # MT: `planes` bit-planes, one after another
        return "spike"
    if dtype.kind == "fix":
        return f"i{dtype.bits}"
    if dtype.kind == "ttfs":
        return TIME
    raise IRError(f"a {dtype} value cannot be stored on the machine (quantize first)")
