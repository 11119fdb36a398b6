"""Progress of long work (compile passes, the tile search, simulated instructions): a tqdm bar on the
terminal's stderr once the work has run for a couple of seconds, nothing when stderr is not a terminal
or when quieted (`ttc -q`, `quiet(True)`). Short work never shows a bar (tqdm's `delay`)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

_quiet = False
DELAY_S = 2.0  # work shorter than this shows nothing


def quiet(on: bool = True) -> None:
    global _quiet
    _quiet = on


class _Silent:
    """What `bar` yields when nothing is shown: the same calls, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


@contextmanager
def bar(total: int, desc: str, unit: str = "it") -> Iterator:
    """A progress bar over `total` units of work (`update(n)` as they are done)."""
    if _quiet or not sys.stderr.isatty():
        yield _Silent()
        return
    from tqdm import tqdm  # imported only when a bar may be shown

    with tqdm(total=total, desc=desc, unit=unit, delay=DELAY_S, leave=False, file=sys.stderr, dynamic_ncols=True) as b:
        yield b
