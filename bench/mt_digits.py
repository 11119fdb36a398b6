"""MT-SNN on the digits (issue 7): the same network (`ttc.digits.build_mt_digits_snn`: two conv-BN blocks
of PLIF neurons, a linear rate readout) trained with multi-threshold neurons at T=1 (parallel and
cascade, K = 2 and 4) and single-threshold (K = 1) at T=1 and T=4, each compiled for a hardware config
and run on the 360 held-out digits; the simulator is checked against the quantized reference bit for
bit before anything is reported. Per model: accuracy (float model, simulator), cycles and energy per
inference, spike-driven adds per plane.

    python bench/mt_digits.py [--hw sata] [--epochs 40] [--seed 0] [--json out/mt_digits.json]

Training is deterministic on the CPU (one thread, fixed seed); all six take about two minutes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ttc import api
from ttc.digits import build_mt_digits_snn, load_digits_split, train
from ttc.isa.files import atomic_write

#: (thresholds K, mode, time steps T)
CONFIGS = ((1, "parallel", 1), (1, "parallel", 4), (2, "parallel", 1), (4, "parallel", 1), (2, "cascade", 1),
           (4, "cascade", 1))


def measure(levels: int, mode: str, steps: int, hw: str, epochs: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = train(build_mt_digits_snn(levels, mode), epochs, steps=steps)
    _, _, x, y = load_digits_split(steps)
    compiled = api.compile_model(model, f"{steps},N,1,8,8", hw)
    result = api.simulate(compiled.program, x)
    sim = result.outputs[0]
    if sim.tobytes() != api.reference(compiled, x)[0].tobytes():
        raise SystemExit(f"K={levels} {mode} T={steps}: the simulator differs from the quantized reference")
    flt = api.run_float(model, x)[0]
    c = result.counters
    return dict(levels=levels, mode=mode if levels > 1 else "single", steps=steps,
                float_accuracy=float((flt.argmax(1) == y).mean()), accuracy=float((sim.argmax(1) == y).mean()),
                cycles=result.cycles, energy_uj=result.total_energy_pj / 1e6, spike_adds=c.get("spike_add", 0),
                plane_adds=[c.get(f"plane{k}_add", 0) for k in range(levels)], spikes=c.get("spike", 0),
                decay_notes=compiled.graph.notes.get("decay", {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hw", default="sata")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(*config, a.hw, a.epochs, a.seed) for config in CONFIGS]
    print(f"digits, 360 held-out, hardware {a.hw}; simulator bit-exact with the quantized reference on every row")
    print("| neurons | T | float acc | sim acc | cycles | energy uJ | spike adds | adds per plane | plane spikes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = f"MT {r['mode']} K={r['levels']}" if r["levels"] > 1 else "single threshold"
        planes = " / ".join(f"{v:.0f}" for v in r["plane_adds"])
        print(f"| {name} | {r['steps']} | {100 * r['float_accuracy']:.2f} % | {100 * r['accuracy']:.2f} % | {r['cycles']} | "
              f"{r['energy_uj']:.3f} | {r['spike_adds']:.0f} | {planes} | {r['spikes']:.0f} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(rows, indent=2, default=float)))


if __name__ == "__main__":
    main()
