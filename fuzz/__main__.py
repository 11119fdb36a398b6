"""`python -m ttc.fuzz`: the long fuzzing campaign, with a progress line and a summary; one reproducer
per failure signature goes to --out (out/fuzz/). Exit status 1 if anything failed."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .engine import campaign, save_reproducers
from .seeds import seeds
from .targets import targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ttc.fuzz", description=__doc__)
    ap.add_argument("--inputs", type=int, default=1000, help="inputs per target (default 1000)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="worker processes (default: one per core); the inputs and the result do not depend on it")
    ap.add_argument("--seed", type=int, default=0, help="random seed: the same seed replays the same inputs")
    ap.add_argument("--targets", default="program,asm,ir,hw,model,cli", help="comma-separated subset of the targets")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds an input may take (default 10)")
    ap.add_argument("--out", type=Path, default=Path("out/fuzz"), help="where reproducers go (default out/fuzz)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    print("ttc fuzz: compiling the demo models for seeds ...", file=sys.stderr, flush=True)
    pool = seeds()  # workers make their own
    chosen = {name: t for name, t in targets().items() if name in a.targets.split(",")}
    if not chosen:
        ap.error(f"no such targets {a.targets!r} (targets: {', '.join(targets())})")
    start = time.perf_counter()

    tty = sys.stderr.isatty()
    shown = [0]

    def progress(done: int, stats) -> None:
        # a line rewritten in place on a terminal; one line per 2 % in a log
        if not tty and done != a.inputs and done - shown[0] < a.inputs / 50:
            return
        shown[0] = done
        rate = done * len(chosen) / max(time.perf_counter() - start, 1e-9)
        line = (f"\rttc fuzz: {done}/{a.inputs} per target ({100 * done / a.inputs:5.1f} %), {rate:6.0f} inputs/s, "
                f"{len(stats.failures)} failure signatures, slowest {stats.slowest[0]:.2f} s")
        print(line if tty else line[1:], end="" if tty else "\n", file=sys.stderr, flush=True)

    stats = campaign(chosen, pool, a.inputs, a.seed, a.time_limit, progress, a.out, a.jobs)
    print(file=sys.stderr)
    print(f"ttc fuzz: seed {a.seed}, {time.perf_counter() - t0:.0f} s")
    for name, n in stats.inputs.items():
        found = sum(1 for k in stats.failures if k[0] == name)
        rate = n / max(stats.seconds.get(name, 0.0), 1e-9)
        print(f"  {name:<8} {n:>9} inputs  {rate:7.0f} inputs/s per worker  {found} failure signatures")
    seconds, where, blob = stats.slowest
    a.out.mkdir(parents=True, exist_ok=True)
    slowest = a.out / f"slowest-{where}.input"  # to profile: the input that took longest, passing or not
    slowest.write_bytes(blob)
    print(f"  slowest input: {seconds:.3f} s ({where}; saved as {slowest})")
    if stats.failures:
        save_reproducers(stats, a.out)
        print(f"  {len(stats.failures)} distinct failures (reproducers in {a.out}/):")
        for (name, kind, frame), f in sorted(stats.failures.items()):
            print(f"    {name:<8} {kind} at {frame} ({f.count}x): {f.message[:120]}")
        return 1
    print("  no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
