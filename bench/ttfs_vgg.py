"""Energy and cycles per inference of a VGG-16-shaped TTFS network (issue 6): a CAT ANN with random
5-bit logarithmic weights (`ttc.models.cat_vgg`, every layer scaled to fire) on 3x32x32 inputs,
compiled for a hardware config and simulated, after checking the simulator against the quantized
reference bit for bit. Per layer and in total: spikes (at most one per neuron), shift-adds, cycles,
energy.

    python bench/ttfs_vgg.py [--hw sata] [--batch 4] [--window 8] [--json out/ttfs_vgg.json]

Inputs are uniform random images (fixed seed): cycles and energy depend on the spike counts they
cause; the counts of weights and synapses do not.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ttc import api
from ttc.isa.files import atomic_write
from ttc.models import cat_vgg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hw", default="sata")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    a = ap.parse_args()
    net = cat_vgg(window=a.window)
    x = np.random.default_rng(1).random((a.batch, 3, 32, 32)).astype(np.float32)
    t0 = time.perf_counter()
    compiled = api.compile_model(net, "N,3,32,32", a.hw)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = api.simulate(compiled.program, x)
    sim_s = time.perf_counter() - t0
    if result.outputs[0].tobytes() != api.reference(compiled, x)[0].tobytes():
        raise SystemExit("the simulator does not match the quantized reference")
    total = compiled.counts["model"]["total"]
    print(f"VGG-16-shaped TTFS network (window {a.window}) on {a.batch} random 3x32x32 images, hardware {a.hw}, "
          f"bit-exact against the quantized reference; compile {compile_s:.0f} s, simulation {sim_s:.0f} s")
    print(f"{total['params']:,} parameters, {total['macs'] / 1e6:.1f} M synapses per inference\n")
    print("| layer | op | accumulator frac (bits dropped) | spikes | neurons | shift-adds | cycles | energy uJ |")
    print("|---|---|---|---|---|---|---|---|")
    accumulators = compiled.graph.notes.get("ttfs", {})
    rows = []
    for layer in result.layers:
        c = layer["counts"]
        acc = accumulators.get(layer["source"])
        row = dict(layer=layer["source"], op=layer["op"], accumulator=acc, spikes=c.get("spike", 0), neurons=c.get("fire", 0),
                   shift_adds=c.get("shift_add", 0), cycles=c.get("cycles", 0),
                   energy_uj=sum(layer["energy_pj"].values()) / 1e6)
        rows.append(row)
        frac = f"{acc['accumulator_frac']} ({acc['dropped_bits']})" if acc else "-"
        print(f"| {row['layer']} | {row['op']} | {frac} | {row['spikes']:,.0f} | {row['neurons']:,.0f} | {row['shift_adds']:,.0f} | "
              f"{row['cycles']:,.0f} | {row['energy_uj']:.2f} |")
    summary = dict(cycles=result.cycles, energy_uj=result.total_energy_pj / 1e6,
                   energy_by_component_uj={k: v / 1e6 for k, v in sorted(result.energy_pj.items())},
                   spikes=result.counters.get("spike", 0), shift_adds=result.counters.get("shift_add", 0),
                   params=total["params"], compile_s=round(compile_s, 1), hw=a.hw, window=a.window)
    print(f"\nper inference: {summary['cycles']:,} cycles, {summary['energy_uj']:.1f} uJ "
          f"({', '.join(f'{k} {v:.1f}' for k, v in summary['energy_by_component_uj'].items())}), "
          f"{summary['spikes']:,.0f} spikes, {summary['shift_adds']:,.0f} shift-adds")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(dict(summary=summary, layers=rows), indent=2)))


if __name__ == "__main__":
    main()
