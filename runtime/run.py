"""Run a program on the simulator: encode and place the inputs, run a batch in lock-step, read and
decode the outputs, and price what the machine did."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ttc.isa.errors import UserError
from ttc.isa.io import InputError, decode_output, encode_input, input_saturation, saturation_warning, spike_input
from ttc.isa.table import TIME
from ttc.isa.ttfs import time_values
from ttc.isa.program import Program
from ttc.simulator.machine import Machine
from ttc.simulator.energy import EnergyModel
from ttc.simulator.timeline import ScheduleError, program_timeline


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

    @property
    def total_energy_pj(self) -> float:
        return sum(self.energy_pj.values())

    def stats(self) -> dict:
        return dict(batch=self.batch, cycles_per_inference=self.cycles, cycles_by_unit=self.cycles_by_unit,
                    energy_pj_per_inference=self.total_energy_pj, energy_pj_by_component=self.energy_pj,
                    actions_per_inference=self.counters, layers=self.layers, input_saturation=self.input_saturation)

    def warnings(self) -> list[str]:
        """One line per input that lost values to saturation: what the CLI and ttc.api.simulate warn of."""
        lines = (saturation_warning(name, s) for name, s in self.input_saturation.items())
        return [line for line in lines if line]


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
    """The machine of `backend` (None: jit)."""
    if backend in (None, "jit"):
        from ttc.simulator.jit import JitMachine
        return JitMachine
    if backend == "numpy":
        return Machine
    raise InputError(f"unknown simulator backend {backend!r} (one of {', '.join(BACKENDS)})")


def run(prog: Program, inputs: list[np.ndarray], backend: str | None = None) -> RunResult:
    ios = prog.meta["inputs"]
    if len(inputs) != len(ios):
        raise InputError(f"the program takes {len(ios)} inputs, got {len(inputs)}")
    batches = {_batch_of(io, np.asarray(x)) for io, x in zip(ios, inputs)}
    if len(batches) != 1:
        raise InputError(f"inputs disagree on the batch size: {sorted(batches)}")
    batch = batches.pop()
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
    energy.finish(timeline.spans)
    layers = [dict(name=layer["name"], path=layer["path"], source=layer.get("source", layer["path"]), op=layer["op"],
                   counts=dict(energy.counts[k]),
                   energy_pj=dict(energy.energy[k])) for k, layer in enumerate(prog.meta["layers"])]
    per_inference = {k: v / batch for k, v in sorted(machine.counters.items())}
    return RunResult(
        outputs=[_read_output(machine, io) for io in prog.meta["outputs"]], batch=batch,
        cycles=timeline.cycles, cycles_by_unit=dict(timeline.busy), counters=per_inference,
        energy_pj=energy.by_component(), layers=layers, spans=timeline.spans, input_saturation=saturation)
