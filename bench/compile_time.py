"""Compile time beside one PyTorch forward: how long ttc takes to compile a model, against one eager
forward of batch 32 of the same float model (eval, no_grad), both on one torch thread, side by side
in one run, with the compile time split by phase.

    python bench/compile_time.py [--models stt34 dense19] [--repeats 1] [--rank 32] [--hw sata]
                                 [--profile DIR] [--json out/compile_time.json]

Models (event frames [T, N, 2, 48, 48], T = 6, `ttc.models.tt_resnet`, hardware `sata`):
- stt34: the official-layout TT-ResNet-34 STT (TT-SNN's CIFAR ResNet-34: 3-4-6-3 MS-ResNet blocks,
  64-64-128-256-512 channels), every TT conv of rank `--rank` (default 32, the ResNet-34 rank that
  `ttc.models.tt_resnet` documents; the repository holds no per-layer rank list);
- dense19: the dense ResNet-19 (3-3-2 blocks, 128-128-256-512 channels).

A tiny SNN is compiled once first (imports, first calls: no model pays for them). Phases: trace, each
pass of the pipeline, counting, code generation (without token placement) and token placement;
inside the passes, the cost model's pricing of plan walks (`cost.PricedWalk.price`, for every
tiling the tile pass and tt-schedule try; each plan shape once) and tt-schedule's pricing of plans
(`_price`), where they exist. A phase line is printed as
each phase ends. Each figure is the median of `--repeats` runs (compile, and torch after one warm-up
forward). `--profile DIR` also runs one compile per model under cProfile, writes DIR/<model>.pstats
and prints the top functions by own and by cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import json
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ttc import api
from ttc.compiler import codegen, cost
from ttc.compiler.passes import REGISTRY
from ttc.frontends import modules as M
from ttc.models import RESNETS, tt_resnet

STEPS, SIZE, BATCH = 6, 48, 32
MODELS = {"stt34": dict(depth=34, variant="stt", tt=True), "dense19": dict(depth=19, variant="stt", tt=False)}


def build(name: str, rank: int) -> torch.nn.Module:
    m = MODELS[name]
    ranks = [rank] * 2 * sum(RESNETS[m["depth"]][0]) if m["tt"] else None
    return tt_resnet(depth=m["depth"], ranks=ranks, variant=m["variant"], in_channels=2, size=SIZE, classes=10, steps=None)


class Phases:
    """Wall time of named calls, wrapped around the functions the compiler calls (kept unchanged)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.verbose = False
        self.label = ""
        self._undo = []

    def wrap(self, owner, attr: str, phase: str, top: bool = True, static: bool = False) -> None:
        if not hasattr(owner, attr):  # a rewritten compiler may not have it: measure what exists
            return
        original = inspect.getattr_static(owner, attr)
        fn = original.__func__ if isinstance(original, staticmethod) else original

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.seconds[phase] += dt
                self.calls[phase] += 1
                if top and self.verbose:
                    print(f"    {self.label}: {phase} {dt:.2f} s", flush=True)

        setattr(owner, attr, staticmethod(timed) if static or isinstance(original, staticmethod) else timed)
        self._undo.append((owner, attr, original))

    def install(self) -> None:
        self.wrap(api, "trace", "trace")
        for name, cls in REGISTRY.items():
            self.wrap(cls, "run", f"pass {name}")
        self.wrap(api, "count", "counting")
        self.wrap(api, "generate", "codegen")
        self.wrap(codegen, "place_tokens", "token placement")
        # inside the passes (not printed per call; there are thousands)
        self.wrap(cost.PricedWalk, "price", "cost model (walks priced)", top=False)
        schedule = sys.modules.get(REGISTRY["tt-schedule"].__module__) if "tt-schedule" in REGISTRY else None
        if schedule is not None:
            self.wrap(schedule, "_price", "tt-schedule pricing (_price)", top=False)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def torch_forward(net: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    net.eval()
    times = []
    with torch.no_grad():
        net(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compile_once(net, hw: str):
    t0 = time.perf_counter()
    compiled = api.compile_model(net, f"{STEPS},N,2,{SIZE},{SIZE}", hw)
    return time.perf_counter() - t0, compiled


def profile(name: str, net, hw: str, out: Path, top: int = 15) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prof = cProfile.Profile()
    prof.enable()
    compile_once(net, hw)
    prof.disable()
    prof.dump_stats(out / f"{name}.pstats")
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(top)
        text = s.getvalue()
        (out / f"{name}.{key}.txt").write_text(text)
        print(f"  cProfile of {name}, top {top} by {key} (in {out / f'{name}.{key}.txt'})")
        print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=1, help="compiles (and torch forwards) per model; the median is kept")
    ap.add_argument("--rank", type=int, default=32, help="TT rank of every TT conv of stt34 (default 32)")
    ap.add_argument("--hw", default="sata")
    ap.add_argument("--profile", type=Path, help="also profile one compile per model with cProfile, into this folder")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON (atomically)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    phases = Phases()
    phases.install()
    print(f"compile time beside one torch forward of batch {BATCH}: [{STEPS}, N, 2, {SIZE}, {SIZE}], hardware {a.hw}, "
          f"{os.cpu_count()} cpus, torch {torch.__version__} with {torch.get_num_threads()} thread, "
          f"median of {a.repeats}", flush=True)
    # warm-up: the first compile of a process pays for imports and first calls; no model should
    tiny = torch.nn.Sequential(M.Conv2d(2, 8, 3, padding=1), M.BatchNorm2d(8), M.LIF(), M.Flatten(), M.Linear(512, 4),
                               M.TimeMean()).eval()
    api.compile_model(tiny, "1,N,2,8,8", a.hw)
    x = torch.from_numpy((np.random.default_rng(0).random((STEPS, BATCH, 2, SIZE, SIZE)) < 0.2).astype(np.float32))
    rows = []
    for name in a.models:
        net = build(name, a.rank)
        print(f"{name}: torch forward ...", flush=True)
        torch_s = torch_forward(net, x, a.repeats)
        print(f"{name}: torch forward {torch_s:.3f} s", flush=True)
        compiles, runs = [], []
        for r in range(a.repeats):
            phases.reset()
            phases.verbose, phases.label = True, f"{name} compile {r + 1}/{a.repeats}"
            seconds, compiled = compile_once(net, a.hw)
            phases.verbose = False
            print(f"{name}: compile {r + 1}/{a.repeats} {seconds:.2f} s ({len(compiled.program.code)} instructions)", flush=True)
            compiles.append(seconds)
            runs.append(dict(phases.seconds))
        k = compiles.index(sorted(compiles)[(len(compiles) - 1) // 2])  # the median run's phases
        compile_s, by_phase = compiles[k], runs[k]
        top = {p: s for p, s in by_phase.items() if not p.startswith(("cost model", "tt-schedule pricing"))}
        inner = {p: s for p, s in by_phase.items() if p not in top}
        codegen_s = top.pop("codegen", 0.0)
        top["codegen (without token placement)"] = codegen_s - top.get("token placement", 0.0)
        top["other (copies, verification, imports)"] = compile_s - sum(top.values())
        row = dict(model=name, params=sum(p.numel() for p in net.parameters()), instructions=len(compiled.program.code),
                   compile_s=round(compile_s, 3), torch_s=round(torch_s, 4), ratio=round(compile_s / torch_s, 2),
                   phases={p: round(s, 3) for p, s in sorted(top.items(), key=lambda i: -i[1])},
                   inside_passes={p: round(s, 3) for p, s in inner.items()})
        rows.append(row)
        print(f"{name}: compile {compile_s:.2f} s, torch {torch_s:.3f} s, compile/torch {compile_s / torch_s:.1f} "
              f"(target <= 0.3)", flush=True)
        for p, s in row["phases"].items():
            print(f"    {p:40s} {s:8.2f} s  {100 * s / compile_s:5.1f} %")
        for p, s in row["inside_passes"].items():
            print(f"    (inside) {p:31s} {s:8.2f} s  {100 * s / compile_s:5.1f} %")
        sys.stdout.flush()
        if a.profile:
            profile(name, net, a.hw, a.profile)
    print("\n| model | params | instructions | compile s | torch s | compile/torch | top phases |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tops = ", ".join(f"{p} {s:.1f}" for p, s in list(r["phases"].items())[:3])
        print(f"| {r['model']} | {r['params']:,} | {r['instructions']:,} | {r['compile_s']:.2f} | {r['torch_s']:.3f} | "
              f"{r['ratio']:.1f} | {tops} |", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_name(f".{a.json.name}.tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
