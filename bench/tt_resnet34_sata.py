"""TT-SNN's TT-ResNet-34 STT as SATA_Sim ran it, simulated whole by ttc under `sata`, beside SATA_Sim's
stored figures, component by component (issue 23, item 4).

    python bench/tt_resnet34_sata.py [--density 0.1] [--hw sata] [--input-encoding spikes|fixed]
                                     [--schedule PLAN] [--json out/tt_resnet34_sata.json]

The workload (RuokaiYin/SATA_Sim commit d447058, inference-energy-cal/workloads/tt-snn/
workload_stt_res34.yaml): 2x48x48 event frames, T = 6, 101 classes, spikes at about 10 % (its
`sparsity: 0.9`), the 32 per-TT-conv ranks of `ttc.models.SATA_SIM_RES34_STT_RANKS`. ttc builds it as
`tt_resnet(depth=34, variant="stt")` (untrained: seeded weights, batch norm set so every layer spikes),
feeds one sample of random events at `--density`, compiles it for `--hw` (events as spikes unless
`--input-encoding fixed`; `--schedule` forces tt-schedule's plans, else ttc chooses), simulates it and
checks the outputs bit for bit against the quantized reference (exits non-zero if they differ). One
run: about 50 s of compile and 20 s of simulation.

Printed, as markdown tables: totals (energy, cycles, DRAM traffic) for ttc and SATA_Sim; energy by
component side by side; ttc's DRAM bytes by the kind of layer that moves them; the compulsory DRAM
minimum; and a lower bound on the DRAM traffic of any schedule on this machine.

What each side assumes:

- ttc: every instruction the compiler emits, simulated; the energy of each buffer access, DRAM access
  (469 pJ per 16 bytes, rounded up per instruction), arithmetic action (Horowitz 45 nm) and the
  leakage of every buffer (wgt, ifmap, ofmap, psum, vmem) over the simulated time (docs/hardware.md).
  The model is the full MS-ResNet: residual adds and the membrane shortcut carried at their stored
  width (32-bit), stride-2 blocks as a TT conv then a max pool, 1x1 shortcut convs, the readout.
- SATA_Sim: the workload lists only convs (each TT conv as four convs: 1x1, 3x1, 1x3, 1x1) and the
  FC; no adds, pools or shortcut convs. Its figures, embedded below (the bench runs offline), come
  from inference-energy-cal/results/TT-SNN/res-34/stt/ at commit d447058:
  - cycles (cycle-stat.yaml): energy-cal.py `read_cycles` (lines 28-31, dataflow `sata`) sums over
    the 130 layers (SRAM OFMAP Start Cycle + SRAM OFMAP Cycles) * T + SRAM Filter Cycles, T = 6:
    20,096,167;
  - DRAM (memory-energy.yaml): energy-cal.py `comp_mem_energy` (lines 157-165) charges
    `read energy` (mem-stat.yaml: 0.468762 nJ; CACTI for the DRAM of `width: 128`, which mem-utils.py
    line 66 passes as CACTI's block size in bytes; ttc's `sata` reads it as 128 bits) x precision/8 x count,
    where the counts are cycle-stat.yaml's DRAM IFMAP Reads, Filter Reads and OFMAP Writes summed
    over the layers, not multiplied by T (lines 36-38; only SRAM OFMAP Writes are, line 35); the
    writes too are priced at the read energy (line 163). The stored figures equal 0.468762 nJ x count
    exactly for all three, i.e. precision 8 (one DRAM access per element), although
    archs/sata-config.yaml now says act-prec 1 and output-prec 1 (which would give an eighth);
  - SRAM (memory-energy.yaml): each GLB's accesses x its CACTI energy, plus its leakage power over
    the cycles above;
  - compute (computation-energy.yaml): `comp_computation_energy` (lines 103-121): per PE component
    (spike-mac, spad, lif), its gated power x the work (MACs x (1 - sparsity) x T, or LIF updates x
    T) plus its ungated and leakage power x the cycles x 128 PEs: nearly all of it is the ungated
    part, which follows cycles, not spikes. `extract_workload` (lines 69-72) counts every conv's
    outputs with a padding of 1, so a 1x1 conv on 48x48 counts 50x50 outputs (its work part only).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttc import api  # noqa: E402
from ttc.compiler.layout import step_bytes  # noqa: E402
from ttc.isa.files import atomic_write  # noqa: E402
from ttc.models import SATA_SIM_RES34_STT_RANKS, tt_resnet  # noqa: E402

STEPS, SIZE, CLASSES = 6, 48, 101

# SATA_Sim's stored results, RuokaiYin/SATA_Sim commit d447058, inference-energy-cal/results/TT-SNN/res-34/stt/
# (energies in nJ, as stored).
SATA_SIM = "RuokaiYin/SATA_Sim d447058, inference-energy-cal/results/TT-SNN/res-34/stt"
# memory-energy.yaml
SATA_SIM_DRAM_NJ = {"weights": 1171756.871208, "input activations read": 6733912.383744,
                    "outputs written": 1688286.18777}
SATA_SIM_GLB_DYNAMIC_NJ = {"wgt": 71569.702446, "ifmap": 360257.88204, "ofmap": 55175.921268}
SATA_SIM_GLB_LEAKAGE_NJ = 314435.68177385 + 314435.68177385 + 1251418.4633405001  # ifmap, ofmap, weight GLBs
# computation-energy.yaml: each component's total (operation + ungated + leakage) and its ungated part
SATA_SIM_COMPUTE_NJ = {"spike-mac": 136907.126643855, "spad": 1426023.1888935452, "lif": 363498.41484666}
SATA_SIM_COMPUTE_UNGATED_NJ = {"spike-mac": 123728.0809856, "spad": 1365446.1245152, "lif": 361731.006}
# cycle-stat.yaml, summed over its 130 layers: sum of (SRAM OFMAP Start Cycle + SRAM OFMAP Cycles) * 6 +
# SRAM Filter Cycles, and the DRAM counts (elements, one time step) energy-cal.py prices
SATA_SIM_CYCLES = 20096167
SATA_SIM_DRAM_COUNTS = {"weights": 2499684, "input activations read": 14365312, "outputs written": 3601585}
SATA_SIM_DRAM_NJ_PER_ACCESS = 0.468762  # mem-stat.yaml, DRAM-system `read energy`
SATA_SIM_DRAM_TOTAL_NJ = sum(SATA_SIM_DRAM_NJ.values())
SATA_SIM_SRAM_TOTAL_NJ = sum(SATA_SIM_GLB_DYNAMIC_NJ.values()) + SATA_SIM_GLB_LEAKAGE_NJ
SATA_SIM_COMPUTE_TOTAL_NJ = sum(SATA_SIM_COMPUTE_NJ.values())
SATA_SIM_TOTAL_NJ = SATA_SIM_DRAM_TOTAL_NJ + SATA_SIM_SRAM_TOTAL_NJ + SATA_SIM_COMPUTE_TOTAL_NJ

TT_CORE_SUFFIXES = ("g1", "g2", "g3", "middle")  # a TT conv's layers before its last core (tt-schedule's names)


def mj(pj: float) -> float:
    return pj / 1e9


def run(a: argparse.Namespace):
    net = tt_resnet(depth=34, ranks=SATA_SIM_RES34_STT_RANKS, variant="stt", in_channels=2, size=SIZE,
                    classes=CLASSES, steps=None)
    x = (np.random.default_rng(0).random((STEPS, 1, 2, SIZE, SIZE)) < a.density).astype(np.float32)
    t0 = time.perf_counter()
    compiled = api.compile_model(net, f"{STEPS},N,2,{SIZE},{SIZE}", a.hw, input_encoding=a.input_encoding,
                                 schedule=a.schedule)
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {len(compiled.program.code):,} instructions, "
          f"{len(compiled.program.data):,} bytes of data", flush=True)
    t0 = time.perf_counter()
    result = api.simulate(compiled.program, x)
    print(f"simulated in {time.perf_counter() - t0:.1f} s", flush=True)
    if result.outputs[0].tobytes() != api.reference(compiled, x)[0].tobytes():
        raise SystemExit("FAIL: the simulator's outputs differ from the quantized reference")
    print("bit-exact against the quantized reference\n", flush=True)
    return compiled, result


def table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    print(flush=True)


def dram_split(result) -> dict:
    """ttc's DRAM bytes per inference: weights (loaded into the weight buffer), other reads, writes."""
    c = {k: round(v) for k, v in result.counters.items()}
    return {"weights": c["wgt_write_bytes"], "input activations read": c["dram_read_bytes"] - c["wgt_write_bytes"],
            "outputs written": c["dram_write_bytes"]}


def totals(result, hw) -> list[dict]:
    moved = sum(dram_split(result).values())
    sata_counts = sum(SATA_SIM_DRAM_COUNTS.values())
    return [dict(figure="energy per inference (mJ)", ttc=round(mj(result.total_energy_pj), 3),
                 sata_sim=round(SATA_SIM_TOTAL_NJ / 1e6, 3)),
            dict(figure="cycles", ttc=result.cycles, sata_sim=SATA_SIM_CYCLES),
            dict(figure=f"time (ms; ttc at {hw.frequency_mhz:g} MHz, SATA_Sim at its 400 MHz)",
                 ttc=round(result.cycles / hw.frequency_mhz / 1e3, 2), sata_sim=round(SATA_SIM_CYCLES / 400 / 1e3, 2)),
            dict(figure="DRAM bytes moved (SATA_Sim: elements, one per byte at the precision 8 its energies imply)",
                 ttc=moved, sata_sim=sata_counts),
            dict(figure=f"DRAM accesses charged (ttc: {hw.dram_access_bytes} B each; SATA_Sim: one per element)",
                 ttc=round(result.energy_pj["dram"] / hw.dram_pj_per_access), sata_sim=sata_counts),
            dict(figure="DRAM energy per access (nJ)", ttc=hw.dram_pj_per_access / 1e3, sata_sim=SATA_SIM_DRAM_NJ_PER_ACCESS)]


def components(result) -> list[dict]:
    e = result.energy_pj
    split = dram_split(result)
    moved = sum(split.values())
    # ttc charges DRAM per instruction's accesses: split its energy between the kinds by their bytes
    rows = [dict(component=f"DRAM: {kind}", ttc=mj(e["dram"]) * split[kind] / moved,
                 sata_sim=SATA_SIM_DRAM_NJ[kind] / 1e6) for kind in split]
    rows.append(dict(component="**DRAM total**", ttc=mj(e["dram"]), sata_sim=SATA_SIM_DRAM_TOTAL_NJ / 1e6))
    buffers = ("wgt", "ifmap", "ofmap", "psum", "vmem")
    rows += [dict(component=f"SRAM {b} (dynamic)", ttc=mj(e.get(b, 0)),
                  sata_sim=SATA_SIM_GLB_DYNAMIC_NJ[b] / 1e6 if b in SATA_SIM_GLB_DYNAMIC_NJ else None) for b in buffers]
    rows.append(dict(component="SRAM leakage (ttc: all five buffers; SATA_Sim: its three GLBs)",
                     ttc=mj(e.get("leakage", 0)), sata_sim=SATA_SIM_GLB_LEAKAGE_NJ / 1e6))
    rows.append(dict(component="**SRAM total**", ttc=mj(sum(e.get(b, 0) for b in buffers) + e.get("leakage", 0)),
                     sata_sim=SATA_SIM_SRAM_TOTAL_NJ / 1e6))
    # ttc's PE array does SATA_Sim's spike-mac work; its neuron unit the lif; SATA_Sim's spad (the PEs'
    # register files) has no ttc counterpart (ttc prices partial sums and potentials as psum/vmem SRAM).
    pairs = (("pe", "spike-mac"), ("neuron", "lif"), ("vector", None), (None, "spad"))
    for unit, sata in pairs:
        label = " / ".join(filter(None, (f"ttc {unit}" if unit else None, f"SATA_Sim {sata}" if sata else None)))
        ungated = f" ({SATA_SIM_COMPUTE_UNGATED_NJ[sata] / 1e6:.3f} ungated)" if sata else ""
        rows.append(dict(component=f"compute: {label}", ttc=mj(e.get(unit, 0)) if unit else None,
                         sata_sim=SATA_SIM_COMPUTE_NJ[sata] / 1e6 if sata else None, note=ungated))
    rows.append(dict(component="**compute total**", ttc=mj(sum(e.get(u, 0) for u in ("pe", "neuron", "vector"))),
                     sata_sim=SATA_SIM_COMPUTE_TOTAL_NJ / 1e6))
    rows.append(dict(component="**total**", ttc=mj(result.total_energy_pj), sata_sim=SATA_SIM_TOTAL_NJ / 1e6))
    return rows


def layer_category(layer: dict, tt_sources: set) -> str:
    if layer["name"].rsplit(".", 1)[-1] in TT_CORE_SUFFIXES:
        return "TT core intermediates (g1, g2, g3, middle)"
    if layer["source"] in tt_sources:
        return "TT layer ends (the last core, with what its layer runs: its neuron, a max pool, or the residual add and the next neuron)"
    return {"add": "residual adds", "neuron": "standalone neuron layers", "maxpool": "pools", "avgpool": "pools",
            "rescale": "rescales"}.get(layer["op"], "other convs (the stem, the shortcuts with what they run) and the readout")


def dram_by_category(result) -> list[dict]:
    tt_sources = {layer["source"] for layer in result.layers if layer["name"].rsplit(".", 1)[-1] in TT_CORE_SUFFIXES}
    rows = defaultdict(lambda: dict(layers=0, read=0, written=0, cycles=0))
    weights = dict(layers=0, read=0, written=0, cycles=0)
    for layer in result.layers:
        c = layer["counts"]
        row = rows[layer_category(layer, tt_sources)]
        row["layers"] += 1
        row["read"] += c.get("dram_read_bytes", 0) - c.get("wgt_write_bytes", 0)
        row["written"] += c.get("dram_write_bytes", 0)
        row["cycles"] += c.get("cycles", 0)
        weights["read"] += c.get("wgt_write_bytes", 0)
    rows = [dict(category=k, **v) for k, v in sorted(rows.items(), key=lambda kv: -(kv[1]["read"] + kv[1]["written"]))]
    rows.append(dict(category="weights (loaded into the weight buffer; their layers' cycles above)", **weights))
    return rows


def value_bytes(t) -> int:
    """A value's bytes over all its time steps as stored (spikes bit-packed, multi-bit at their width)."""
    return step_bytes(t) * (t.time or 1)


def compulsory(compiled, result) -> dict:
    graph = compiled.graph
    inputs = sum(value_bytes(op.type) for op in graph.ops if op.opname == "input")
    outputs = sum(value_bytes(graph.op(name).type) for name in graph.outputs)
    weights = len(compiled.program.data)
    moved = sum(dram_split(result).values())
    return dict(weights=weights, inputs=inputs, outputs=outputs, minimum=weights + inputs + outputs, ttc=moved)


def stream_bound(compiled, hw) -> dict:
    """A lower bound on the DRAM traffic of one pass over the network (each weight read once) on `hw`: the
    residual stream that crosses each block boundary (the add's output, read by the next block's neuron and
    add) held over all T steps at 8 bits, the narrowest width that could carry it, goes to DRAM and back
    wherever it exceeds every buffer that may hold activations (ifmap, ofmap, psum, vmem together); plus the
    weights once. More than one pass reads the weights more than once: twice the weights alone."""
    activations = sum(hw.buffers[b].bytes for b in ("ifmap", "ofmap", "psum", "vmem"))
    streams = [op.type for op in compiled.graph.ops if op.opname == "add"]
    spilled = [t.numel * (t.time or 1) for t in streams if t.numel * (t.time or 1) > activations]
    weights = len(compiled.program.data)
    return dict(activation_buffers=activations, boundaries=len(streams), spilled=len(spilled),
                one_pass=weights + 2 * sum(spilled), two_passes=2 * weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--density", type=float, default=0.1, help="input event density (default 0.1)")
    ap.add_argument("--hw", default="sata")
    ap.add_argument("--input-encoding", default="spikes", choices=("spikes", "fixed"))
    ap.add_argument("--schedule", default="", help="tt-schedule's forced plans (default: ttc's own choice)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    a = ap.parse_args()
    print(f"TT-ResNet-34 STT (SATA_Sim's ranks) on [{STEPS}, 1, 2, {SIZE}, {SIZE}] events at {a.density:.0%}, "
          f"{CLASSES} classes, hardware {a.hw}, input encoding {a.input_encoding}", flush=True)
    compiled, result = run(a)
    hw = compiled.program.hw
    out = {}

    print(f"## Totals per inference (SATA_Sim: {SATA_SIM})\n")
    out["totals"] = totals(result, hw)
    table(["", "ttc", "SATA_Sim", "ttc / SATA_Sim"],
          [[r["figure"], f"{r['ttc']:,}", f"{r['sata_sim']:,}", f"{r['ttc'] / r['sata_sim']:.2f}"]
           for r in out["totals"]])

    print("## Energy by component (mJ per inference)\n")
    out["components"] = components(result)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    table(["component", "ttc", "SATA_Sim"],
          [[r["component"], fmt(r["ttc"]), fmt(r["sata_sim"]) + r.get("note", "")] for r in out["components"]])

    print("## ttc's DRAM traffic by the layers that move it (per inference)\n")
    out["dram_by_category"] = rows = dram_by_category(result)
    moved = sum(r["read"] + r["written"] for r in rows)
    table(["layers", "count", "DRAM read MB", "DRAM written MB", "share of DRAM bytes", "cycles", "share of cycles"],
          [[r["category"], r["layers"] or "-", f"{r['read'] / 1e6:.2f}", f"{r['written'] / 1e6:.2f}",
            f"{(r['read'] + r['written']) / moved:.1%}", f"{r['cycles']:,}" if r["cycles"] else "-",
            f"{r['cycles'] / result.cycles:.1%}" if r["cycles"] else "-"] for r in rows])

    print("## The compulsory DRAM minimum (weights and input read once, output written once)\n")
    out["compulsory"] = c = compulsory(compiled, result)
    table(["weights (program data) B", "input B", "output B", "minimum B", "ttc moves B", "ttc / minimum"],
          [[f"{c['weights']:,}", f"{c['inputs']:,}", f"{c['outputs']:,}", f"{c['minimum']:,}", f"{c['ttc']:,}",
            f"{c['ttc'] / c['minimum']:.1f}"]])

    print("## Why twice the compulsory minimum is out of reach here\n")
    out["stream_bound"] = b = stream_bound(compiled, hw)
    print(f"One pass over the network (each weight read once) must still move the residual stream across the "
          f"block boundaries\nwhere it exceeds the {b['activation_buffers'] // 1024} KiB of buffers that may hold "
          f"activations (ifmap, ofmap, psum, vmem), even held at 8 bits:\n"
          f"{b['spilled']} of the {b['boundaries']} boundaries. That pass moves at least {b['one_pass']:,} B "
          f"({b['one_pass'] / c['minimum']:.1f}x the minimum) with every other value free; more than one pass "
          f"reads the weights twice,\n{b['two_passes']:,} B ({b['two_passes'] / c['minimum']:.1f}x) before any "
          "activation moves.\n", flush=True)

    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(out, indent=1)))


if __name__ == "__main__":
    main()
