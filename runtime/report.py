"""Reports of a simulated run: the per-layer table (terminal and JSON), the per-unit timeline as a
Chrome / Perfetto trace, and PNG pictures of energy by layer and component and of the timeline.

Utilisation is against the config's roofline: a layer's ideal cycles are the larger of its dense PE
work over all PEs and its DRAM bytes over the DRAM bandwidth; utilisation = ideal / simulated cycles.
"""
from __future__ import annotations

import json
from pathlib import Path

from ttc.isa.hwconfig import COUNTER_NAMES, memory_bytes
from ttc.isa.files import atomic_write
from ttc.isa.program import Program
from ttc.isa.table import BY_NAME, ON_CHIP, QUEUES

from .run import RunResult

#: The layer table's count columns and the counters they show.
COUNT_COLUMNS = {"spike_adds": "spike_add", "macs": "mac", "neuron_updates": "neuron_update", "spikes": "spike"}

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
            layer=layer["name"], path=layer["path"], source=layer["source"], op=layer["op"],
            **{column: c.get(name, 0) for column, name in COUNT_COLUMNS.items()}, dram_bytes=dram,
            on_chip_bytes=_bytes(c, ON_CHIP),
            cycles=cycles, ideal_cycles=ideal, pe_utilisation=work / hw.pes / cycles if cycles else 0.0,
            roofline_utilisation=ideal / cycles if cycles else 0.0,
            energy_pj=sum(layer["energy_pj"].values()), energy_pj_by_component=layer["energy_pj"]))
    return rows


def report(prog: Program, result: RunResult) -> dict:
    return dict(hardware=prog.hw.name, energy_source=prog.hw.energy_source, batch=result.batch, cycles=result.cycles,
                microseconds=result.cycles / prog.hw.frequency_mhz, energy_pj=result.total_energy_pj,
                energy_pj_by_component=result.energy_pj, busy_cycles_by_unit=result.cycles_by_unit,
                layers=layer_table(prog, result), counts=prog.meta.get("counts", {}))


def format_table(rep: dict) -> str:
    head = (f"{'layer':<22} {'op':<16} {'spike adds':>11} {'MACs':>9} {'spikes':>8} {'DRAM B':>9} {'on-chip B':>10} "
            f"{'cycles':>9} {'PE util':>7} {'roofline':>8} {'energy nJ':>10}")
    lines = [head, "-" * len(head)]
    for r in rep["layers"]:
        lines.append(f"{r['layer'][:22]:<22} {r['op'][:16]:<16} {r['spike_adds']:>11.0f} {r['macs']:>9.0f} "
                     f"{r['spikes']:>8.0f} {r['dram_bytes']:>9.0f} {r['on_chip_bytes']:>10.0f} {r['cycles']:>9} "
                     f"{100 * r['pe_utilisation']:>6.1f}% {100 * r['roofline_utilisation']:>7.1f}% "
                     f"{r['energy_pj'] / 1e3:>10.2f}")
    lines.append(f"total: {rep['cycles']} cycles ({rep['microseconds']:.1f} us on {rep['hardware']}), "
                 f"{rep['energy_pj'] / 1e3:.2f} nJ per inference; energy by component (nJ): "
                 + ", ".join(f"{k} {v / 1e3:.2f}" for k, v in sorted(rep["energy_pj_by_component"].items(),
                                                                      key=lambda kv: -kv[1])))
    # the figures differ by process node and tool (horowitz45 borrows 28 nm leakage): say whose they are
    lines.append(f"energy figures ({rep['hardware']}): {rep['energy_source']}")
    if rep.get("counts"):
        lines.append(format_counts(rep["counts"]))
    return "\n".join(lines)


def format_counts(counts: dict) -> str:
    """The compiler's static per-layer counts ({"model": .., "factorised": .. or None}) as a table."""
    lines = []
    for title, table in (("model", counts.get("model")), ("after tt-factorize", counts.get("factorised"))):
        if not table:
            continue
        head = f"{title + ':':<28} {'params':>10} {'MACs/step':>12} {'spike adds':>12} {'multiplies':>12}"
        lines += [head, "-" * len(head)]
        for c in table["layers"] + [{"path": "total", "op": "", **table["total"]}]:
            lines.append(f"  {c['path'][:26]:<26} {c['params']:>10} {c['macs']:>12.0f} {c['adds']:>12.0f} "
                         f"{c['muls']:>12.0f}")
    return "\n".join(lines)


def perfetto_trace(prog: Program, result: RunResult) -> dict:
    """Chrome trace-event JSON (chrome://tracing, ui.perfetto.dev): one track per queue, one slice
    per instruction, times in microseconds at the config's clock."""
    us = 1.0 / prog.hw.frequency_mhz
    firsts = [layer["first_instr"] for layer in prog.meta["layers"]]
    names = [layer["name"] for layer in prog.meta["layers"]]
    events = [dict(name="thread_name", ph="M", pid=0, tid=k, args=dict(name=q)) for k, q in enumerate(QUEUES)]
    for s in result.spans:
        layer = max([k for k, f in enumerate(firsts) if f <= s.index] or [0])
        events.append(dict(name=s.op, cat=names[layer] if names else "", ph="X", pid=0, tid=QUEUES.index(s.queue),
                           ts=s.start * us, dur=(s.end - s.start) * us, args=dict(instruction=s.index, layer=names[layer] if names else "")))
    return dict(traceEvents=events, displayTimeUnit="ns")


def plot_energy(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = rep["layers"]
    components = sorted({c for r in layers for c in r["energy_pj_by_component"]},
                        key=lambda c: -rep["energy_pj_by_component"].get(c, 0))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(layers) + 2), 4))
    bottom = [0.0] * len(layers)
    for c in components:
        values = [r["energy_pj_by_component"].get(c, 0) / 1e3 for r in layers]
        ax.bar(range(len(layers)), values, bottom=bottom, label=c)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(layers)), [r["layer"] for r in layers], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("energy per inference (nJ)")
    ax.set_title(f"energy by layer and component ({rep['hardware']})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot_timeline(prog: Program, result: RunResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queues = [q for q in QUEUES if any(s.queue == q for s in result.spans)]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(queues) + 1.5))
    ops = sorted({s.op for s in result.spans})
    colours = {op: plt.cm.tab10(k % 10) for k, op in enumerate(ops)}
    for row, q in enumerate(queues):
        for op in ops:
            bars = [(s.start, s.end - s.start) for s in result.spans if s.queue == q and s.op == op]
            if bars:
                ax.broken_barh(bars, (row - 0.4, 0.8), color=colours[op])
    ax.set_yticks(range(len(queues)), queues)
    ax.set_xlabel("cycle")
    ax.set_title(f"per-unit timeline: {result.cycles} cycles ({prog.hw.name})")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[o]) for o in ops], labels=ops, fontsize=7,
              loc="upper right", ncol=len(ops))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def write_report(prog: Program, result: RunResult, directory: str | Path) -> dict:
    """report.json, trace.json (Perfetto), energy.png and timeline.png in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rep = report(prog, result)
    atomic_write(directory / "report.json", lambda tmp: tmp.write_text(json.dumps(rep, indent=1)))
    atomic_write(directory / "trace.json", lambda tmp: tmp.write_text(json.dumps(perfetto_trace(prog, result))))
    plot_energy(rep, directory / "energy.png")
    plot_timeline(prog, result, directory / "timeline.png")
    return rep
