"""A TT-ResNet on a hardware config: the dense MS-ResNet and its STT, PTT and HTT versions (and the
dense one factorised by tt-factorize), with parameters, FLOPs (MACs per step and sample), simulated
cycles and energy per inference, and the contraction plans the compiler chose. Every run is checked
bit for bit against the quantized reference first.

    python bench/tt_resnet.py [--depth 19] [--size 48] [--rank 16] [--hw sata] [--json out/tt_resnet.json]

Inputs are event frames [T, 1, 2, size, size] (DVS-like, 2 polarities, 20 % of pixels on, fixed
seed); T = 6 for dense, STT and PTT, T = 4 for HTT (its half-and-half schedule is defined for 4).
The weights are untrained (seeded init, batch-norm statistics calibrated so that every layer spikes):
cycles and energy depend on spike density, the counts do not.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ttc import api
from ttc.isa.files import atomic_write
from ttc.models import RESNETS, tt_resnet


def events(steps: int, size: int, density: float = 0.2) -> np.ndarray:
    return (np.random.default_rng(0).random((steps, 1, 2, size, size)) < density).astype(np.float32)


def measure(name: str, net, steps: int, size: int, hw: str, **options) -> dict:
    x = events(steps, size)
    t0 = time.perf_counter()
    compiled = api.compile_model(net, f"{steps},N,2,{size},{size}", hw, **options)
    compile_s = time.perf_counter() - t0
    result = api.simulate(compiled.program, x)
    if result.outputs[0].tobytes() != api.reference(compiled, x)[0].tobytes():
        raise SystemExit(f"{name}: the simulator does not match the quantized reference")
    counts = compiled.counts["factorised"] or compiled.counts["model"]
    plans = Counter(n["chosen"] for n in compiled.graph.notes.get("schedule", {}).values())
    return dict(model=name, steps=steps, params=counts["total"]["params"], macs=counts["total"]["macs"],
                spike_adds=counts["total"]["adds"], multiplies=counts["total"]["muls"], cycles=result.cycles,
                energy_uj=result.total_energy_pj / 1e6, plans=dict(sorted(plans.items())),
                compile_s=round(compile_s, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=19, choices=sorted(RESNETS))
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--rank", type=int, default=16, help="TT rank of every tensor-train conv (default 16)")
    ap.add_argument("--hw", default="sata")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    a = ap.parse_args()
    ranks = [a.rank] * 2 * sum(RESNETS[a.depth][0])
    build = dict(depth=a.depth, in_channels=2, size=a.size, steps=None)
    models = [("dense", tt_resnet(ranks=None, **build), 6, {}),
              (f"dense, tt-factorize rank {a.rank}", tt_resnet(ranks=None, **build), 6, {"tt_rank": str(a.rank)})]
    models += [(v.upper(), tt_resnet(ranks=ranks, variant=v, **build), 4 if v == "htt" else 6, {})
               for v in ("stt", "ptt", "htt")]
    print(f"ResNet-{a.depth} (MS-ResNet blocks) on [T, 1, 2, {a.size}, {a.size}] events, hardware {a.hw}, "
          f"TT rank {a.rank}, bit-exact against the quantized reference")
    print("| model | T | params | MMACs/step | spike adds (M) | multiplies (M) | cycles | energy uJ | plans chosen |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for name, net, steps, options in models:
        r = measure(name, net, steps, a.size, a.hw, **options)
        rows.append(r)
        plans = ", ".join(f"{k} x{v}" for k, v in r["plans"].items()) or "-"
        print(f"| {r['model']} | {r['steps']} | {r['params']:,} | {r['macs'] / 1e6:.1f} | {r['spike_adds'] / 1e6:.1f} | "
              f"{r['multiplies'] / 1e6:.1f} | {r['cycles']:,} | {r['energy_uj']:.1f} | {plans} |", flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(rows, indent=2)))


if __name__ == "__main__":
    main()
