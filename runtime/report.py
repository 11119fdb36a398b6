"""Reports of a simulated run: the per-layer table (terminal and JSON), the per-unit timeline as a
Chrome / Perfetto trace, and PNG pictures of energy by layer and component and of the timeline.

Utilisation is against the config's roofline: a layer's ideal cycles are the larger of its dense PE
work over all PEs and its DRAM bytes over the DRAM bandwidth; utilisation = ideal / simulated cycles.
On an array that skips (`[array] skip`) the dense work is the model's, not what the array did, so these are
dense-equivalent figures and may pass 100 %.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ttc.isa.hwconfig import COUNTER_NAMES, memory_bytes
from ttc.isa.files import atomic_write, make_dirs
from ttc.isa.program import Program
from ttc.isa.table import BY_NAME, DMA, MAX_LEVELS, MEMORIES, ON_CHIP, QUEUES

from .provenance import provenance as make_provenance
from .run import RunResult

#: The layer table's count columns and the counters they show.
#: report column -> simulator counter (docs/counting.md): spike-driven adds, multiplies, TTFS shift-adds,
#: MT adds per spike plane, neuron updates and spikes
COUNT_COLUMNS = {"spike_adds": "spike_add", "macs": "mac", "shift_adds": "shift_add",
                 **{f"plane{k}_adds": f"plane{k}_add" for k in range(MAX_LEVELS)},
                 "neuron_updates": "neuron_update", "spikes": "spike"}

if not set(COUNT_COLUMNS.values()) <= COUNTER_NAMES:
    raise ImportError(f"the report reads counters {sorted(set(COUNT_COLUMNS.values()) - COUNTER_NAMES)} that "
                      "ttc.isa.hwconfig does not declare")


def _pe_work(prog: Program, first: int, last: int) -> int:
    """The PE work (ISA table) of the layer's instructions: what the PE array must do."""
    return sum(BY_NAME[i.op].pe_work(i.args) for i in prog.code[first:last] if BY_NAME[i.op].pe_work)


def _bytes(counts: dict, memories) -> float:
    return sum(counts.get(memory_bytes(m, d), 0) for m in memories for d in ("read", "write"))


def layer_table(prog: Program, result: RunResult) -> list[dict]:
    hw, firsts = prog.hw, [layer["first_instr"] for layer in prog.meta["layers"]]
    rows = []
    for k, layer in enumerate(result.layers):
        c = layer["counts"]
        cycles = c.get("cycles", 0)
        dram = _bytes(c, ("dram",))
        work = _pe_work(prog, firsts[k], firsts[k + 1] if k + 1 < len(firsts) else len(prog.code))
        ideal = max(work / hw.pes, dram / hw.dram_bytes_per_cycle)
        rows.append(dict(
            # named by the model's module path of its weighted (or only) op, as `ttc inspect` and the counts name it
            layer=layer["source"], ir_name=layer["name"], op=layer["op"],
            **{column: c.get(name, 0) for column, name in COUNT_COLUMNS.items()}, dram_bytes=dram,
            on_chip_bytes=_bytes(c, ON_CHIP),
            cycles=cycles, ideal_cycles=ideal, pe_utilisation=work / hw.pes / cycles if cycles else 0.0,
            roofline_utilisation=ideal / cycles if cycles else 0.0,
            energy_pj=sum(layer["energy_pj"].values()), energy_pj_by_component=layer["energy_pj"]))
    return rows


def report(prog: Program, result: RunResult, provenance: dict | None = None) -> dict:
    """The run per inference, under the keys `ttc run --json` uses for the same quantities, then the layers."""
    stats = {k: v for k, v in result.stats().items() if k != "layers"}
    return dict(provenance=provenance or make_provenance(prog), **stats, microseconds_per_inference=result.cycles / prog.hw.frequency_mhz,
                layers=layer_table(prog, result), counts=prog.meta.get("counts", {}))


def format_table(rep: dict) -> str:
    head = (f"{'layer':<22} {'op':<16} {'spike adds':>11} {'shift-adds':>10} {'multiplies':>10} {'spikes':>8} {'DRAM B':>9} {'on-chip B':>10} "
            f"{'cycles':>9} {'PE util':>7} {'roofline':>8} {'energy nJ':>10}")
    lines = [head, "-" * len(head)]
    for r in rep["layers"]:
        lines.append(f"{r['layer'][:22]:<22} {r['op'][:16]:<16} {r['spike_adds']:>11.0f} {r['shift_adds']:>10.0f} {r['macs']:>10.0f} "
                     f"{r['spikes']:>8.0f} {r['dram_bytes']:>9.0f} {r['on_chip_bytes']:>10.0f} {r['cycles']:>9.0f} "
                     f"{100 * r['pe_utilisation']:>6.1f}% {100 * r['roofline_utilisation']:>7.1f}% "
                     f"{r['energy_pj'] / 1e3:>10.2f}")
    lines.append(f"total: {rep['cycles_per_inference']:.0f} cycles ({rep['microseconds_per_inference']:.1f} us on "
                 f"{rep['provenance']['hardware']['name']}), {rep['energy_pj_per_inference'] / 1e3:.2f} nJ per "
                 "inference; energy by component (nJ): "
                 + ", ".join(f"{k} {v / 1e3:.2f}" for k, v in sorted(rep["energy_pj_by_component"].items(),
                                                                      key=lambda kv: -kv[1])))
    # the figures differ by process node and tool (horowitz45 borrows 28 nm leakage): say whose they are
    hw = rep["provenance"]["hardware"]
    lines.append(f"energy figures ({hw['name']}): {hw['energy_source']}")
    if rep.get("counts"):
        lines.append(format_counts(rep["counts"]))
    return "\n".join(lines)


def format_counts(counts: dict) -> str:
    """The compiler's static per-layer counts ({"model": .., "factorised": .. or None}) as a table."""
    lines = []
    for title, table in (("model", counts.get("model")), ("after tt-factorize", counts.get("factorised"))):
        if not table:
            continue
        head = f"{title + ':':<28} {'params':>10} {'dense MACs':>12} {'spike adds':>12} {'multiplies':>12}"
        lines += [head, "-" * len(head)]
        for c in table["layers"] + [{"path": "total", "op": "", **table["total"]}]:
            lines.append(f"  {c['path'][:26]:<26} {c['params']:>10} {c['macs']:>12.0f} {c['adds']:>12.0f} "
                         f"{c['muls']:>12.0f}")
    if lines:
        lines.append("  static, per time step and sample, every tap (padding included), at full activity: the dense MACs "
                     "split by their activation, spikes (adds) or multi-bit (multiplies); docs/counting.md")
    return "\n".join(lines)


def perfetto_trace(prog: Program, result: RunResult) -> dict:
    """Chrome trace-event JSON (chrome://tracing, ui.perfetto.dev), times in microseconds at the
    config's clock. Tracks that never nest or overlap hold complete slices: each compute queue (one
    slice per instruction) and the DRAM interface (each transfer's own cycles: the interface is booked
    by one transfer at a time). What may overlap is drawn as async slices, which Perfetto stacks:
    each DMA instruction from its start to its completion, latency included (a queue issues the next
    transfer while one is in flight), and each layer from its first instruction's start to its last's
    end (layers overlap where one's loads run under another's compute). Tracks with no work are left out."""
    us = 1.0 / prog.hw.frequency_mhz
    layers = prog.meta["layers"]
    firsts = [layer["first_instr"] for layer in layers]
    names = [layer["name"] for layer in layers]

    def layer_of(index: int) -> int:
        return max([k for k, f in enumerate(firsts) if f <= index] or [0])

    used = [q for q in QUEUES if any(s.queue == q for s in result.spans)]
    tracks = {name: tid for tid, name in enumerate(used + ["dram"])}
    events = [dict(name="thread_name", ph="M", pid=0, tid=tid, args=dict(name=name)) for name, tid in tracks.items()]
    spans_of_layer: dict[int, list] = {}
    for s in result.spans:
        k = layer_of(s.index)
        spans_of_layer.setdefault(k, []).append(s)
        args = dict(instruction=s.index, layer=names[k] if names else "")
        if s.queue in DMA:
            transfer = s.end - s.start - prog.hw.dram_latency_cycles
            events.append(dict(name=s.op, ph="X", pid=0, tid=tracks["dram"], ts=s.start * us, dur=transfer * us, args=args))
            for ph, t in (("b", s.start), ("e", s.end)):
                events.append(dict(name=s.op, cat=s.queue, ph=ph, id=s.index, pid=0, tid=tracks[s.queue], ts=t * us, args=args))
        else:
            events.append(dict(name=s.op, ph="X", pid=0, tid=tracks[s.queue], ts=s.start * us,
                               dur=(s.end - s.start) * us, args=args))
    for k, spans in sorted(spans_of_layer.items()):
        start, end = min(s.start for s in spans), max(s.end for s in spans)
        for ph, t in (("b", start), ("e", end)):
            events.append(dict(name=names[k] if names else "program", cat="layer", ph=ph, id=f"layer{k}", pid=0,
                               tid=len(tracks), ts=t * us, args=dict(op=layers[k]["op"] if layers else "")))
    events.append(dict(name="thread_name", ph="M", pid=0, tid=len(tracks), args=dict(name="layers")))
    return dict(traceEvents=events, displayTimeUnit="ns")


#: Every energy component's colour, the same in every plot and run (matplotlib's tab20 by position).
COMPONENTS = (*MEMORIES, "pe", "neuron", "vector", "leakage")
MAX_BARS = 40  # more layers than this are drawn in groups of consecutive layers


def component_colour(component: str):
    import matplotlib.pyplot as plt

    return plt.cm.tab20(COMPONENTS.index(component) % 20) if component in COMPONENTS else (0.5, 0.5, 0.5, 1.0)


def _groups(names: list[str]) -> list[tuple[str, list[int]]]:
    """Bars of the energy plot: one per layer, or up to MAX_BARS runs of consecutive layers."""
    if len(names) <= MAX_BARS:
        return [(name, [k]) for k, name in enumerate(names)]
    size = -(-len(names) // MAX_BARS)
    return [(f"{names[k]} .. {names[min(k + size, len(names)) - 1]}", list(range(k, min(k + size, len(names)))))
            for k in range(0, len(names), size)]


def plot_energy(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = rep["layers"]
    groups = _groups([r["layer"] for r in layers])
    components = [c for c in COMPONENTS if any(c in r["energy_pj_by_component"] for r in layers)]
    components += sorted({c for r in layers for c in r["energy_pj_by_component"]} - set(components))
    fig, ax = plt.subplots(figsize=(min(16, max(6, 0.35 * len(groups) + 3)), 4.5))
    bottom = [0.0] * len(groups)
    for c in components:
        values = [sum(layers[k]["energy_pj_by_component"].get(c, 0) for k in members) / 1e3 for _, members in groups]
        ax.bar(range(len(groups)), values, bottom=bottom, label=c, color=component_colour(c))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("layer" if len(groups) == len(layers) else f"layers, in groups of {len(groups[0][1])}")
    ax.set_ylabel("energy per inference (nJ)")
    ax.set_title(f"energy by layer and component ({rep['provenance']['hardware']['name']})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot_timeline(prog: Program, result: RunResult, path: Path) -> None:
    """Each queue's busy spans and the DRAM interface's transfers, layer starts as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queues = [q for q in QUEUES if any(s.queue == q for s in result.spans)]
    rows = queues + ["dram"]
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(rows) + 2))
    ops = sorted({s.op for s in result.spans})
    colours = {op: plt.cm.tab10(k % 10) for k, op in enumerate(ops)}
    lat = prog.hw.dram_latency_cycles
    for row, q in enumerate(rows):
        for op in ops:
            if q == "dram":
                bars = [(s.start, s.end - s.start - lat) for s in result.spans if s.queue in DMA and s.op == op]
            else:
                bars = [(s.start, s.end - s.start) for s in result.spans if s.queue == q and s.op == op]
            if bars:
                ax.broken_barh(bars, (row - 0.4, 0.8), color=colours[op])
    firsts = [layer["first_instr"] for layer in prog.meta["layers"]]
    starts = {s.index: s.start for s in result.spans}
    for first in firsts:
        if first in starts:
            ax.axvline(starts[first], color="0.6", linewidth=0.5, linestyle=":")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("cycle (dotted: a layer's first instruction)")
    ax.set_title(f"per-unit timeline: {result.cycles} cycles ({prog.hw.name})")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[o]) for o in ops], labels=ops, fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(len(ops), 8))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def layer_csv(rep: dict) -> str:
    """The layer rows as CSV: one column per count, then `energy_pj.<component>` for each component."""
    components = sorted({c for row in rep["layers"] for c in row["energy_pj_by_component"]})
    columns = [k for k in rep["layers"][0] if k != "energy_pj_by_component"] if rep["layers"] else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns + [f"energy_pj.{c}" for c in components])
    for row in rep["layers"]:
        writer.writerow([row[k] for k in columns] + [row["energy_pj_by_component"].get(c, 0.0) for c in components])
    return out.getvalue()


def write_report(prog: Program, result: RunResult, directory: str | Path, provenance: dict | None = None) -> dict:
    """report.json, layers.csv, trace.json (Perfetto), energy.png and timeline.png in `directory`."""
    directory = Path(directory)
    make_dirs(directory)
    rep = report(prog, result, provenance)
    atomic_write(directory / "report.json", lambda tmp: tmp.write_text(json.dumps(rep, indent=1)))
    atomic_write(directory / "layers.csv", lambda tmp: tmp.write_text(layer_csv(rep)))
    atomic_write(directory / "trace.json", lambda tmp: tmp.write_text(json.dumps(perfetto_trace(prog, result))))
    plot_energy(rep, directory / "energy.png")
    plot_timeline(prog, result, directory / "timeline.png")
    return rep
