"""Run a program on the simulator: encode and place the inputs, run a batch in lock-step, read and
decode the outputs, and price what the machine did."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ttc.isa import progress
from ttc.isa.errors import UserError
from ttc.isa.io import InputError, decode_output, encode_input, input_saturation, saturation_warning, spike_input
from ttc.isa.table import TIME
from ttc.isa.ttfs import time_values
from ttc.isa.program import Program
from ttc.simulator.machine import Machine
from ttc.simulator.energy import EnergyModel
from ttc.simulator.timeline import ScheduleError, program_timeline, sample_timelines


@dataclass
class RunResult:
    outputs: list[np.ndarray]
    batch: int
    cycles: int
    cycles_by_unit: dict
    counters: dict  # per inference
    energy_pj: dict  # per inference, by component
    layers: list[dict]  # per layer of the program's layer table: its counts and energy by component
    spans: list  # per instruction (but halt): its queue and [start, end) cycles (ttc.simulator.timeline.Span)
    # per fixed-point input, by name: how many elements its format saturated (ttc.isa.io.input_saturation)
    input_saturation: dict = field(default_factory=dict)
    # each sample's energy (pJ): the mean, plus what its data-dependent actions (spike-driven adds, TTFS
    # shift-adds) and, where the array skips, its leakage over its own cycles cost beyond the batch's mean
    energy_pj_per_sample: np.ndarray | None = None
    # each sample's cycles: all the same on the dense array; where the array skips (`[array] skip`), each
    # sample's own timeline (`cycles` and `cycles_by_unit` are then the means over the samples, `spans` the first's)
    cycles_per_sample: np.ndarray | None = None

    @property
    def total_energy_pj(self) -> float:
        return sum(self.energy_pj.values())

    def stats(self) -> dict:
        cycles = self.cycles_per_sample if self.cycles_per_sample is not None else np.full(self.batch, self.cycles)
        per_sample = dict(cycles=_spread(cycles))
        if self.energy_pj_per_sample is not None:
            per_sample["energy_pj"] = _spread(self.energy_pj_per_sample)
        return dict(batch=self.batch, cycles_per_inference=self.cycles, cycles_by_unit=self.cycles_by_unit,
                    energy_pj_per_inference=self.total_energy_pj, energy_pj_by_component=self.energy_pj,
                    actions_per_inference=self.counters, layers=self.layers, input_saturation=self.input_saturation,
                    per_sample=per_sample)

    def warnings(self) -> list[str]:
        """One line per input that lost values to saturation: what the CLI and ttc.api.simulate warn of."""
        lines = (saturation_warning(name, s) for name, s in self.input_saturation.items())
        return [line for line in lines if line]


def _spread(values: np.ndarray) -> dict:
    return dict(mean=float(values.mean()), min=float(values.min()), max=float(values.max()))


def expected_shape(io: dict) -> list:
    return ([io["time"], "N"] if io["time"] is not None else ["N"]) + io["shape"]


def _batch_of(io: dict, x: np.ndarray) -> int:
    want = expected_shape(io)
    got = list(x.shape)
    batch_axis = want.index("N")
    if len(got) != len(want) or any(w != g for w, g in zip(want, got) if w != "N"):
        raise InputError(f"input {io['path'] or io['name']!r} has shape {tuple(got)}, the program expects "
                         f"({', '.join(map(str, want))})")
    if got[batch_axis] == 0:
        raise InputError("the input batch is empty")
    return got[batch_axis]


def _time_major(x: np.ndarray, io: dict) -> np.ndarray:
    """[T, B, ...] or [B, ...] -> [B, T, numel]"""
    if io["time"] is None:
        return x.reshape(x.shape[0], 1, -1)
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], x.shape[0], -1)


def _write_input(machine: Machine, io: dict, x: np.ndarray) -> dict | None:
    """Place input `x` (as the user gave it) in DRAM: integers at their width, or events bit-packed
    per step (element i in bit i % 8 of byte i // 8), as every spike tensor is stored. Returns what the
    fixed-point format saturated (None for events, which are refused unless all 0/1)."""
    saturation = None
    if io["fmt"] == "spike":
        raw = np.packbits(_time_major(spike_input(x, io["path"] or io["name"]), io), axis=2, bitorder="little")
    else:
        x = x.astype(np.float32)
        saturation = input_saturation(x, io["bits"], io["frac"])
        q = _time_major(encode_input(x, io["bits"], io["frac"]), io)
        raw = q.astype(f"<i{io['bits'] // 8}").view(np.uint8)  # [B, T, step_bytes]
    steps = raw.shape[1]
    region = np.zeros((raw.shape[0], steps, io["step_stride"] or io["step_bytes"]), dtype=np.uint8)
    region[:, :, :io["step_bytes"]] = raw
    machine.mem["dram"][:, io["addr"]:io["addr"] + region[0].size] = region.reshape(raw.shape[0], -1)
    return saturation


def _read_output(machine: Machine, io: dict) -> np.ndarray:
    steps = io["time"] or 1
    stride = io["step_stride"] or io["step_bytes"]
    raw = machine.mem["dram"][:, io["addr"]:io["addr"] + steps * stride].reshape(machine.batch, steps, stride)
    raw = np.ascontiguousarray(raw[:, :, :io["step_bytes"]])
    numel = int(np.prod(io["shape"]))
    if io["fmt"] == "spike":
        values = np.unpackbits(raw, axis=2, count=numel, bitorder="little").astype(np.float32)
    elif io["fmt"] == TIME:  # spike times, window = frac + 1
        values = decode_output(time_values(raw, io["frac"] + 1), io["frac"], io["divide_by"])
    else:
        values = decode_output(raw.view(f"<i{int(io['fmt'][1:]) // 8}"), io["frac"], io["divide_by"])
    values = values.reshape(machine.batch, steps, *io["shape"])
    return np.ascontiguousarray(np.moveaxis(values, 0, 1)) if io["time"] is not None else values[:, 0]


#: The simulator's backends: NumPy handlers (the reference), or native kernels where they apply
#: (ttc.simulator.jit; the default)
BACKENDS = ("numpy", "jit")


def machine_class(backend: str | None = None):
    """The machine of `backend` (None: jit, where llvmlite loads; else numpy)."""
    if backend is None:
        try:
            from ttc.simulator.jit import JitMachine
        except ImportError:  # (llvmlite is a dependency: a broken install still simulates)
            return Machine
        return JitMachine
    if backend == "jit":
        from ttc.simulator.jit import JitMachine
        return JitMachine
    if backend == "numpy":
        return Machine
    raise InputError(f"unknown simulator backend {backend!r} (one of {', '.join(BACKENDS)})")


def run(prog: Program, inputs: list[np.ndarray], backend: str | None = None, batch: int | None = None) -> RunResult:
    """Run the program on `inputs` (each laid out as the model's forward takes it, any number of samples),
    `batch` samples at a time (None: all at once), with a progress bar over the batches when they take long:
    an input of any size (a memory-mapped .npy) is read a batch at a time. The result is per inference over
    all samples, and each sample's cycles and energy (`stats()["per_sample"]`: mean, min, max)."""
    ios = prog.meta["inputs"]
    if len(inputs) != len(ios):
        raise InputError(f"the program takes {len(ios)} inputs, got {len(inputs)}")
    inputs = [x if isinstance(x, np.ndarray) else np.asarray(x) for x in inputs]
    sizes = {_batch_of(io, x) for io, x in zip(ios, inputs)}
    if len(sizes) != 1:
        raise InputError(f"inputs disagree on the batch size: {sorted(sizes)}")
    total = sizes.pop()
    if batch is not None and batch < 1:
        raise InputError(f"batch {batch}: at least 1 sample")
    step = min(batch or total, total)
    if step == total:
        return _run_batch(prog, inputs, backend, total)
    axes = [1 if io["time"] is not None else 0 for io in ios]
    results = []
    with progress.bar(total, f"simulate ({total} samples, batch {step})", "sample") as shown:
        for lo in range(0, total, step):
            hi = min(lo + step, total)
            chunk = [np.asarray(x[(slice(None),) * a + (slice(lo, hi),)]) for x, a in zip(inputs, axes)]
            results.append(_run_batch(prog, chunk, backend, hi - lo))
            shown.update(hi - lo)
    return _merge(prog, results)


def _merge(prog: Program, results: list[RunResult]) -> RunResult:
    """Batches' results as one: per inference, weighted by their samples; outputs and samples in order."""
    total = sum(r.batch for r in results)

    def mean(dicts: list[dict]) -> dict:
        out: dict = {}
        for r, d in zip(results, dicts):
            for k, v in d.items():
                out[k] = out.get(k, 0.0) + v * r.batch / total
        return out

    layers = [dict(first, counts=mean([r.layers[k]["counts"] for r in results]),
                   energy_pj=mean([r.layers[k]["energy_pj"] for r in results])) for k, first in enumerate(results[0].layers)]
    saturation = {}
    for r in results:
        for name, s in r.input_saturation.items():
            m = saturation.setdefault(name, dict(s, elements=0, saturated=0, largest_magnitude=0.0))
            m["elements"] += s["elements"]
            m["saturated"] += s["saturated"]
            m["largest_magnitude"] = max(m["largest_magnitude"], s["largest_magnitude"])
    axes = [1 if io["time"] is not None else 0 for io in prog.meta["outputs"]]
    first = results[0]
    cycles = np.concatenate([r.cycles_per_sample for r in results])
    return RunResult(outputs=[np.concatenate([r.outputs[k] for r in results], axis=a) for k, a in enumerate(axes)],
                     batch=total, cycles=_whole(cycles.mean()),
                     cycles_by_unit={u: _whole(c) for u, c in mean([r.cycles_by_unit for r in results]).items()},
                     counters=mean([r.counters for r in results]), energy_pj=mean([r.energy_pj for r in results]),
                     layers=layers, spans=first.spans, input_saturation=saturation,
                     energy_pj_per_sample=np.concatenate([r.energy_pj_per_sample for r in results]),
                     cycles_per_sample=cycles)


def _whole(cycles: float) -> int | float:
    """A mean of cycles: an integer where it is whole (every sample took the same, on the dense array)."""
    return int(cycles) if float(cycles).is_integer() else float(cycles)


def _run_batch(prog: Program, inputs: list[np.ndarray], backend: str | None, batch: int) -> RunResult:
    ios = prog.meta["inputs"]
    machine = machine_class(backend)(prog, batch)
    saturation = {}
    for io, x in zip(ios, inputs):
        x = np.asarray(x)
        if not np.isfinite(x).all():
            raise InputError(f"input {io['path'] or io['name']!r} holds NaN or infinite values")
        s = _write_input(machine, io, x)
        if s is not None:
            saturation[io["path"] or io["name"]] = s
    timeline = program_timeline(prog)
    energy = EnergyModel(prog.hw, prog.meta["layers"], batch)
    machine.listeners.append(energy)
    try:
        machine.run()
    except UserError:  # an instruction's error comes first, unless the schedule fails before it
        if isinstance(timeline, ScheduleError) and timeline.index < machine.pc:
            raise timeline from None
        raise
    if isinstance(timeline, ScheduleError):
        raise timeline
    timelines = sample_timelines(prog, machine.pe_work) if machine.pe_work else [timeline]  # (one for all: dense)
    leakage = energy.finish([t.spans for t in timelines])
    own_leakage = leakage - leakage.mean() if machine.pe_work else 0  # (what each sample's own time leaks)
    cycles = np.array([t.cycles for t in timelines]) if machine.pe_work else np.full(batch, timeline.cycles)
    busy = {unit: sum(t.busy[unit] for t in timelines) / len(timelines) for unit in timeline.busy}
    layers = [dict(name=layer["name"], path=layer["path"], source=layer.get("source", layer["path"]), op=layer["op"],
                   counts=dict(energy.counts[k]),
                   energy_pj=dict(energy.energy[k])) for k, layer in enumerate(prog.meta["layers"])]
    per_inference = {k: v / batch for k, v in sorted(machine.counters.items())}
    energy_pj = energy.by_component()
    outputs = [_read_output(machine, io) for io in prog.meta["outputs"]]
    machine.release()  # (for the program's next run: its outputs are copies)
    return RunResult(
        outputs=outputs, batch=batch,
        cycles=_whole(cycles.mean()), cycles_by_unit={u: _whole(b) for u, b in busy.items()},
        counters=per_inference, energy_pj=energy_pj, layers=layers, spans=timelines[0].spans,
        input_saturation=saturation, cycles_per_sample=cycles,
        energy_pj_per_sample=sum(energy_pj.values()) + machine.sample_pj - machine.sample_pj.mean() + own_leakage)
