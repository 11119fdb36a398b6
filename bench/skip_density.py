"""Cycles and energy against spike density for each of the array's skip modes (`[array] skip`), simulated
and predicted by the cost model, on the 5-conv VGG SNN under `sata` (`make bench`).

The VGG's spike density is set by shifting its batchnorm biases (every layer's input current) by `--shifts`:
each shift gives one density, measured by the simulator (output spikes over neuron updates, all layers). For
each density and mode: the simulated cycles and energy per inference (mean over the batch), leakage's share of
it, and the cost model's cycles (every layer priced at the spike density and spike-row share the quantized
reference measures at its input) with its error against the simulator.

    python bench/skip_density.py [--shifts -0.3 0 0.3] [--batch 2] [--json FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttc import api  # noqa: E402
from ttc.compiler.cost import graph_costs, input_densities, input_rows  # noqa: E402
from ttc.compiler.reference import evaluate  # noqa: E402
from ttc.isa.files import atomic_write  # noqa: E402
from ttc.isa.hwconfig import SKIP_MODES, load_hw  # noqa: E402
from ttc.models import vgg_snn  # noqa: E402


def shifted_vgg(shift: float) -> torch.nn.Module:
    """The VGG with every batchnorm bias moved by `shift`: more input current, more spikes."""
    net = vgg_snn()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data += shift
    return net


def measure(shift: float, mode: str, x: np.ndarray) -> dict:
    compiled = api.compile_model(shifted_vgg(shift), "4,N,3,32,32", dataclasses.replace(load_hw("sata"), pe_skip=mode))
    result = api.simulate(compiled.program, x)
    if not all(np.array_equal(s, r) for s, r in zip(result.outputs, api.reference(compiled, x))):
        raise SystemExit(f"shift {shift}, skip {mode}: the simulator does not match the quantized reference")
    values = evaluate(compiled.graph, [x])
    costs = graph_costs(compiled.graph, compiled.program.hw, input_densities(compiled.graph, values),
                        input_rows(compiled.graph, values))
    model = sum(costs[layer["name"]].cycles for layer in result.layers)
    counters = result.counters
    return dict(shift=shift, skip=mode, spike_density=counters["spike"] / counters["neuron_update"],
                cycles=result.cycles, cycles_min=float(result.cycles_per_sample.min()),
                cycles_max=float(result.cycles_per_sample.max()), energy_uj=result.total_energy_pj / 1e6,
                leakage_share=result.energy_pj.get("leakage", 0) / result.total_energy_pj,
                model_cycles=model, model_error=model / result.cycles - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shifts", type=float, nargs="+", default=[-0.3, 0.0, 0.3])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    x = np.random.default_rng(0).random((4, a.batch, 3, 32, 32), dtype=np.float32)
    rows = []
    print("| bias shift | spike density | skip | cycles | per sample min-max | energy uJ | leakage | model cycles | model error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shift in a.shifts:
        for mode in SKIP_MODES:
            r = measure(shift, mode, x)
            rows.append(r)
            print(f"| {shift:+.2f} | {100 * r['spike_density']:.1f} % | {mode} | {r['cycles']:,.0f} | "
                  f"{r['cycles_min']:,.0f}-{r['cycles_max']:,.0f} | {r['energy_uj']:.1f} | {100 * r['leakage_share']:.0f} % | "
                  f"{r['model_cycles']:,.0f} | {100 * r['model_error']:+.2f} % |", flush=True)
    if a.json:
        atomic_write(Path(a.json), lambda tmp: tmp.write_text(json.dumps(rows, indent=1)))


if __name__ == "__main__":
    main()
