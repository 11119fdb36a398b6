"""The fuzzing loop: mutate a seed, run a target on it, and classify what happens.

An input passes if the target returns or raises one of ttc's own errors (a TtcError: a UserError says
what is wrong with the input). Anything else escaped ttc's checks and is a failure, keyed by its
signature: the exception type and the innermost frame (file:function) it was raised in, so that one
bug found by many inputs counts once. An input running longer than the time limit is a failure too
(signature Timeout at the frame it was interrupted in), and so is one during which ttc opens a file for
writing, creates, renames or removes one: reading a file must never write one.
"""
from __future__ import annotations

import os
import random
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ttc.isa.errors import TtcError

from .targets import Target

#: Limits the campaign runs under: memory a program or config may ask for, so that a crafted input is
#: refused instead of slowing the machine down (ttc's own default is the free memory).
FUZZ_MEMORY_LIMIT = str(256 << 20)


class FuzzTimeout(BaseException):
    """Raised by the alarm in the target that runs too long; a BaseException so that no `except
    Exception` in ttc swallows it."""


@dataclass
class Failure:
    target: str
    signature: tuple[str, str]  # (exception type, innermost frame file:function)
    message: str
    traceback: str
    reproducer: bytes
    count: int = 1


@dataclass
class Stats:
    inputs: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # time spent in each target
    failures: dict[tuple, Failure] = field(default_factory=dict)  # (target, type, frame) -> first found
    slowest: tuple[float, str, bytes] = (0.0, "", b"")


def signature(e: BaseException) -> tuple[str, str]:
    if hasattr(e, "signature"):  # a verdict of the cli target, keyed by what went wrong in the command
        return e.signature
    frames = traceback.extract_tb(e.__traceback__)
    if isinstance(e, FuzzTimeout):  # where the alarm interrupted ttc, not the alarm handler itself
        frames = frames[:-1]
    if not frames:
        return type(e).__name__, "?"
    inner = frames[-1]
    path = Path(inner.filename)
    # two path components name the file within ttc (isa/program.py) or a library (json/decoder.py)
    return type(e).__name__, f"{path.parent.name}/{path.name}:{inner.name}"


class _WriteWatch:
    """Records file writes (an audit hook, which cannot be removed: it is installed once and only
    records while `active`)."""

    installed = False
    active = False
    seen: list[str] = []

    @classmethod
    def install(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls._hook)
            cls.installed = True

    @classmethod
    def _hook(cls, event: str, args) -> None:
        if not cls.active:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                cls.seen.append(f"open({path!r}, {mode!r})")
        elif event in ("os.rename", "os.remove", "os.mkdir", "shutil.rmtree", "os.truncate"):
            cls.seen.append(f"{event}{args!r}")


def _alarm(signum, frame):
    raise FuzzTimeout()


def run_one(target: Target, blob: bytes, time_limit: float) -> tuple[float, BaseException | None, str | None]:
    """Run `target` on `blob`: (seconds, the exception that is a failure or None, what was written)."""
    if target.prepare:
        target.prepare(blob)
    _WriteWatch.seen = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    t0 = time.perf_counter()
    _WriteWatch.active = target.watch_writes
    failure: BaseException | None = None
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles; the verdict is what is raised
            warnings.simplefilter("ignore")
            target.run(blob)
    except TtcError:
        pass
    except (Exception, FuzzTimeout, RecursionError) as e:  # noqa: B014 - the escapes the campaign looks for
        failure = e
    finally:
        _WriteWatch.active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - t0
    written = "; ".join(_WriteWatch.seen) or None
    return seconds, failure, written


def make_input(rng: random.Random, target: Target, pool: list[bytes]) -> bytes:
    """One to three mutations of a random seed."""
    blob = rng.choice(pool)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if target.name == "program" and not blob.startswith(b"TTCPROG"):
            break  # the structure-aware mutations need a container they can unpack
        try:
            blob = target.mutate(rng, blob, pool)
        except Exception:  # a mutator that cannot apply (an input it cannot parse) leaves the input as is
            break
    return blob


def _input_rng(seed: int, name: str, i: int) -> random.Random:
    """Input i of a target is made from its own generator, so that any input can be replayed alone and
    any split of the inputs over workers makes the same inputs."""
    return random.Random(f"{seed}:{name}:{i}")


def run_inputs(targets: dict[str, Target], seeds: dict[str, list[bytes]], indices: range, seed: int,
               time_limit: float) -> Stats:
    """Inputs `indices` of every target (round-robin over the targets)."""
    os.environ.setdefault("TTC_MEMORY_LIMIT", FUZZ_MEMORY_LIMIT)
    _WriteWatch.install()
    stats = Stats(inputs={name: 0 for name in targets})
    limit = sys.getrecursionlimit()
    for i in indices:
        for name, target in targets.items():
            blob = make_input(_input_rng(seed, name, i), target, seeds[name])
            seconds, error, written = run_one(target, blob, time_limit)
            sys.setrecursionlimit(limit)
            stats.inputs[name] += 1
            stats.seconds[name] = stats.seconds.get(name, 0.0) + seconds
            if seconds > stats.slowest[0]:
                stats.slowest = (seconds, name, blob)
            if error is not None:
                sig = signature(error)
                message = str(error).splitlines()[0][:300] if str(error) else ""
                tb = "".join(traceback.format_exception(error))
            elif written:
                sig, message, tb = ("FileWritten", "-"), written, ""
            else:
                continue
            key = (name, *sig)
            if key in stats.failures:
                stats.failures[key].count += 1
            else:
                stats.failures[key] = Failure(name, sig, message, tb, blob)
    return stats


def merge(into: Stats, part: Stats) -> list[tuple]:
    """Add `part` (later inputs) to `into`; the keys of the failures new to `into`."""
    new = []
    for name, n in part.inputs.items():
        into.inputs[name] = into.inputs.get(name, 0) + n
        into.seconds[name] = into.seconds.get(name, 0.0) + part.seconds.get(name, 0.0)
    for key, f in part.failures.items():
        if key in into.failures:
            into.failures[key].count += f.count
        else:
            into.failures[key] = f
            new.append(key)
    if part.slowest[0] > into.slowest[0]:
        into.slowest = part.slowest
    return new


#: Inputs per target a worker runs between reports (progress, new reproducers saved).
CHUNK = 50

_worker: dict = {}


def _worker_start(names: list[str]) -> None:
    import torch
    torch.set_num_threads(1)  # one core per worker: torch's own threads would make the workers contend
    from .seeds import seeds
    from .targets import targets
    _worker["targets"] = {name: t for name, t in targets().items() if name in names}
    _worker["seeds"] = seeds()


def _worker_chunk(job: tuple[range, int, float]) -> Stats:
    indices, seed, time_limit = job
    return run_inputs(_worker["targets"], _worker["seeds"], indices, seed, time_limit)


def campaign(targets: dict[str, Target], seeds: dict[str, list[bytes]], inputs: int, seed: int,
             time_limit: float = 10.0, progress=None, out: Path | None = None, jobs: int = 1) -> Stats:
    """`inputs` inputs per target from random seed `seed`, in chunks of CHUNK; with `jobs` > 1 the
    chunks run in that many worker processes (each builds the same targets and seeds), with the same
    inputs and the same result as one process. With `out`, each new failure's reproducer is saved as
    soon as its chunk ends (a long campaign may be stopped)."""
    stats = Stats(inputs={name: 0 for name in targets})
    chunks = [(range(i, min(i + CHUNK, inputs)), seed, time_limit) for i in range(0, inputs, CHUNK)]
    if jobs > 1:
        import multiprocessing
        # spawn, not fork: a forked copy of a process that has started torch's threads may hang
        pool = multiprocessing.get_context("spawn").Pool(jobs, _worker_start, (list(targets),))
        parts = pool.imap(_worker_chunk, chunks)
    else:
        pool = None
        parts = (run_inputs(targets, seeds, *job) for job in chunks)
    try:
        for (indices, _, _), part in zip(chunks, parts):
            new = merge(stats, part)
            if out is not None and new:
                save_reproducers(Stats(failures={key: stats.failures[key] for key in new}), out)
            if progress:
                progress(indices.stop, stats)
    finally:
        if pool is not None:
            pool.terminate()
    return stats


def save_reproducers(stats: Stats, out: Path) -> list[Path]:
    """One reproducer per failure signature, with its traceback beside it."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for (target, kind, frame), f in sorted(stats.failures.items()):
        stem = f"{target}-{kind}-{frame.replace('/', '.').replace(':', '-')}"
        path = out / f"{stem}.input"
        path.write_bytes(f.reproducer)
        (out / f"{stem}.txt").write_text(f"{target}: {kind} at {frame} ({f.count} inputs)\n{f.message}\n\n{f.traceback}")
        paths.append(path)
    return paths
