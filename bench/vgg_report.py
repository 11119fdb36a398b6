"""The VGG-style CIFAR SNN on a hardware config: per layer PE utilisation (ideal / simulated cycles),
DRAM traffic against the compulsory minimum (every weight, input and output moved once), the cost
model's prediction beside the simulator, energy by component, and the report pictures.

    python bench/vgg_report.py [--hw sata] [--steps 4] [--out out/vgg]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ttc import api
from ttc.compiler.cost import graph_costs, input_densities
from ttc.compiler.ir import AvgPool, Conv2d, Linear, MaxPool
from ttc.compiler.layout import step_bytes
from ttc.compiler.reference import evaluate
from ttc.models import vgg_snn
from ttc.runtime.report import format_table, write_report


def compulsory_bytes(graph, op) -> int:
    """DRAM bytes a layer must move at least: its weights and bias, each input step and output step once."""
    x = graph.op(op.inputs[0]).type
    last = graph.consumer(op) or op
    out = last.type
    moved = (x.time or 1) * step_bytes(x) + (out.time or 1) * step_bytes(out)
    if isinstance(op, (Conv2d, Linear)):
        moved += op.weight.size + (4 * op.weight.shape[0] if op.bias is not None else 0)
    return moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hw", default="sata")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="out/vgg")
    a = ap.parse_args()
    x = np.random.default_rng(0).random((a.steps, 1, 3, 32, 32), dtype=np.float32)
    t0 = time.perf_counter()
    compiled = api.compile_model(vgg_snn(), f"{a.steps},N,3,32,32", a.hw)
    t1 = time.perf_counter()
    result = api.simulate(compiled.program, x)
    t2 = time.perf_counter()
    exact = all(np.array_equal(s, r) for s, r in zip(result.outputs, api.reference(compiled, x)))
    graph, prog = compiled.graph, compiled.program
    costs = graph_costs(graph, prog.hw, input_densities(graph, evaluate(graph, [x])))
    rep = write_report(prog, result, a.out)
    print(f"VGG-style SNN 3-64-128-256-256-512, 3x32x32, T={a.steps}, hardware {prog.hw.name}: "
          f"{len(prog.code)} instructions, compiled in {t1 - t0:.1f} s, simulated in {t2 - t1:.1f} s, "
          f"simulator vs quantized reference {'bit-exact' if exact else 'MISMATCH'}")
    print(format_table(rep))
    heads = {(graph.consumer(op) or op).name: op for op in graph.ops if isinstance(op, (Conv2d, Linear, MaxPool, AvgPool))}
    print(f"\n{'layer':<8} {'op':<18} {'tile':<16} {'PE util':>8} {'DRAM B':>10} {'minimum B':>10} {'ratio':>6} "
          f"{'cycles':>9} {'model':>9} {'err':>6} {'energy nJ':>10} {'model':>9} {'err':>6}")
    for row, layer in zip(rep["layers"], prog.meta["layers"]):
        op = heads[row["ir_name"]]
        cost = costs[row["ir_name"]]
        minimum = compulsory_bytes(graph, op)
        print(f"{row['layer']:<8} {row['op']:<18} {str(layer.get('tile')):<16} {100 * row['pe_utilisation']:>7.1f}% "
              f"{row['dram_bytes']:>10.0f} {minimum:>10} {row['dram_bytes'] / minimum:>6.2f} {row['cycles']:>9} "
              f"{cost.cycles:>9.0f} {100 * (cost.cycles / row['cycles'] - 1):>+5.1f}% {row['energy_pj'] / 1e3:>10.1f} "
              f"{cost.total_pj / 1e3:>9.1f} {100 * (cost.total_pj / row['energy_pj'] - 1):>+5.1f}%")
    print(f"\npictures: {a.out}/energy.png, {a.out}/timeline.png; trace: {a.out}/trace.json")


if __name__ == "__main__":
    main()
