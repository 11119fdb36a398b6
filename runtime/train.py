"""Train on the simulator (docs/training.md): run a training-step program batch after batch, keeping the
machine's DRAM (the weights) between steps, and price every phase.

A step writes the batch's inputs and targets, runs the forward and backward of every sample (lock-step in
the simulator: the program is the same for all), then the weight update once (`Machine.run_shared`). The
modelled machine runs the samples one after another, so a step takes B times a sample's cycles and
energy, plus the update's."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ttc.isa import progress
from ttc.isa.errors import UserError
from ttc.isa.program import Program
from ttc.simulator.energy import EnergyModel
from ttc.runtime.run import machine_class
from ttc.simulator.timeline import Timeline, sample_timelines

from ttc.compiler.train import ce_gradient

from .run import _batch_of, _read_output, _write_input, run

PHASES = ("forward", "backward", "update")


class TrainInputError(UserError, ValueError):
    """Training data the step program cannot take."""


@dataclass
class StepStats:
    """One step, summed over its batch: the loss 1/2 sum (output - one-hot)^2, correct predictions, and per
    phase the cycles, energy (pJ, by component) and counters of the modelled machine, and the counters of
    each layer of the program's layer table (by its name)."""

    loss: float
    correct: int
    cycles: dict = field(default_factory=dict)
    energy_pj: dict = field(default_factory=lambda: defaultdict(Counter))
    counters: dict = field(default_factory=lambda: defaultdict(Counter))
    layers: dict = field(default_factory=lambda: defaultdict(Counter))


def _phase_of(layers: list[dict]) -> list[str]:
    return [layer.get("phase", "forward") for layer in layers]


class Trainer:
    """The machine of a training-step program for batches of `batch` samples."""

    def __init__(self, prog: Program, batch: int, backend: str | None = None):
        if "train" not in prog.meta:
            raise TrainInputError("the program is not a training step (compile it with `ttc compile --train`)")
        self.prog, self.train, self.batch = prog, prog.meta["train"], batch
        if batch > self.train["options"]["batch"]:
            raise TrainInputError(f"batch {batch} is larger than the {self.train['options']['batch']} the step was "
                                  "compiled for (its gradient formats hold sums over that many samples)")
        self.machine = machine_class(backend)(prog, batch)
        self.phases = _phase_of(prog.meta["layers"])
        # per phase: a sample's cycles, from the first step's timelines (data-independent), or where the array
        # skips (`[array] skip`) the last step's mean over its samples; by segment (its first instruction)
        self.cycles: Counter = Counter()
        self.segments: dict[int, Counter] = {}
        self.timed: set[int] = set()  # the segments whose hazard check has run

    def step(self, x: np.ndarray, labels: np.ndarray) -> StepStats:
        io, t = self.prog.meta["inputs"][0], self.train
        if _batch_of(io, x) != self.batch or labels.shape != (self.batch,):
            raise TrainInputError(f"a step takes {self.batch} samples and as many labels, got {x.shape} and {labels.shape}")
        if labels.min() < 0 or labels.max() >= t["classes"]:
            raise TrainInputError(f"labels must be 0 to {t['classes'] - 1}")
        m = self.machine
        _write_input(m, io, x)
        scale = t["steps"] << t["out_frac"]  # the target's one: T 2^F (the output is a sum over the T steps)
        target = np.zeros((self.batch, t["classes"]), dtype="<i4")
        target[np.arange(self.batch), labels] = scale
        m.mem["dram"][:, t["target"]:t["target"] + target[0].nbytes] = target.view(np.uint8)
        stats = StepStats(0.0, 0)
        self._run(stats, 0, self.batch)
        out = _read_output(m, self.prog.meta["outputs"][0])
        stats.correct = int((out.argmax(1) == labels).sum())
        if t.get("backward_at") is not None:  # the cross-entropy: the host writes its gradient, the backward runs
            sums = self._sums()
            e, stats.loss = ce_gradient(sums, labels, t["steps"], t["out_frac"])
            m.mem["dram"][:, t["loss_grad"]:t["loss_grad"] + 4 * t["classes"]] = e.astype("<i4").view(np.uint8)
            self._run(stats, t["backward_at"], self.batch)
        else:
            stats.loss = float(0.5 * ((out - np.eye(t["classes"])[labels]) ** 2).sum())
        self._run(stats, t["update_at"], 1)
        return stats

    def _sums(self) -> np.ndarray:
        """The readout's sums over time as the machine holds them (int64 [B, classes])."""
        io = self.prog.meta["outputs"][0]
        raw = self.machine.mem["dram"][:, io["addr"]:io["addr"] + io["step_bytes"]]
        return np.ascontiguousarray(raw).view("<i4").astype(np.int64)

    def _run(self, stats: StepStats, start: int, samples: int) -> None:
        """Run the segment from instruction `start` (once for the batch: `samples` 1, the update) with an energy
        model (and, the first time, a hazard-checked timeline: on the dense array the cycles do not depend on the
        data; where it skips, every run's samples are timed), charging its layers to
        their phases, `samples` times (a sample's work happens once per sample on the machine)."""
        m = self.machine
        energy = EnergyModel(self.prog.hw, self.prog.meta["layers"], m.batch if samples > 1 else 1)
        timeline = Timeline(self.prog.hw) if start not in self.timed else None
        before = Counter(m.counters)
        m.listeners = [energy] + ([timeline] if timeline else [])
        m.pe_work = {}
        m.run(start) if samples > 1 else m.run_shared(start)
        m.listeners = []
        if m.pe_work:  # the array skips: every step's samples have timelines of their own
            spans = [t.spans for t in sample_timelines(self.prog, m.pe_work, start)]
        else:
            spans = [timeline.spans] if timeline is not None else []
        if spans:  # the layers' shares of the segment's time
            energy.finish([{span.index: span for span in s} for s in spans])
            self._cycles_by_phase(energy, start)
            self.timed.add(start)
        for layer, parts in energy.energy.items():
            phase = self.phases[layer]
            for component, pj in parts.items():
                if component != "leakage":
                    stats.energy_pj[phase][component] += pj * samples
        for layer, counts in energy.counts.items():
            counts = {k: v * samples for k, v in counts.items() if k != "cycles"}
            stats.counters[self.phases[layer]].update(counts)
            stats.layers[self.prog.meta["layers"][layer]["name"]].update(counts)
        for phase in {self.phases[layer] for layer in energy.counts}:  # the phases this segment ran
            cycles = self.cycles[phase] * samples
            stats.cycles[phase] = cycles
            stats.energy_pj[phase]["leakage"] += self.prog.hw.leakage_pj(cycles)
        m.counters = before

    def _cycles_by_phase(self, energy: EnergyModel, start: int) -> None:
        segment = self.segments[start] = Counter()
        for layer, counts in energy.counts.items():
            if "cycles" in counts:
                segment[self.phases[layer]] += counts["cycles"]
        self.cycles = sum(self.segments.values(), Counter())

    # ---- the trained weights
    def weights(self) -> dict[str, np.ndarray]:
        """Every trained layer's integer weights [cout, cin], by its op name."""
        dram = self.machine.mem["dram"][0]
        out = {}
        for r in self.train["layers"]:
            shape = (r["cout"], r["cin"]) + ((r["kh"], r["kw"]) if r["op"] == "conv2d" else ())
            nbytes = int(np.prod(shape)) * (2 if r["wfmt"] == "i16" else 1)
            out[r["name"]] = dram[r["wdram"]:r["wdram"] + nbytes].view(f"<i{int(r['wfmt'][1:]) // 8}").reshape(shape).copy()
        return out

    @cached_property
    def _inference(self) -> Program:
        return Program.from_bytes(bytes.fromhex(self.prog.meta["inference"]), "the step program's inference program")

    def biases(self) -> dict[str, np.ndarray]:
        """Every trained layer's integer bias (i32 [cout]), by its op name, for the layers that have one."""
        dram = self.machine.mem["dram"][0]
        return {r["name"]: dram[r["wdram"] + self._weight_bytes(r):][:4 * r["cout"]].view("<i4").copy()
                for r in self.train["layers"] if r["bias"]}

    @staticmethod
    def _weight_bytes(r: dict) -> int:
        return r["cout"] * r["cin"] * r["kh"] * r["kw"] * (2 if r["wfmt"] == "i16" else 1)

    def inference_program(self) -> Program:
        """The inference program of the same model (the step program carries it) with today's weights."""
        base = self._inference
        data = bytearray(base.data)
        dram = self.machine.mem["dram"][0]
        for r in self.train["layers"]:  # the weights, then the bias (i32 per output channel: zeros without one)
            nbytes = self._weight_bytes(r) + 4 * r["cout"]
            data[r["wdram"]:r["wdram"] + nbytes] = dram[r["wdram"]:r["wdram"] + nbytes].tobytes()
        return Program(code=base.code, data=bytes(data), meta=base.meta, hw=base.hw)

    def state_dict(self) -> dict:
        """The trained weights as a PyTorch state dict of the source model (float, `path.weight`), the factors
        the compiler folded into them divided out (a SpikingJelly LIF's 1/tau); a layer that is no parameter of
        the model is left out."""
        import torch
        out = {}
        biases = self.biases()
        for r, w in zip(self.train["layers"], self.weights().values()):
            for name, values, frac, scale in (("weight", w, r["weight_frac"], r.get("source_scale")),
                                              ("bias", biases.get(r["name"]), r["bias_frac"], r.get("bias_scale"))):
                if values is not None and scale is not None:
                    divide = np.asarray(scale, dtype=np.float64).reshape(-1, *(1,) * (values.ndim - 1))
                    out[f"{r['path']}.{name}"] = torch.from_numpy(values.astype(np.float64) * 2.0 ** -frac / divide).float()
        return out


@dataclass
class EpochStats:
    """One epoch: the mean loss per sample, training accuracy (on the batches as they were trained), held-out
    accuracy (when a held-out set is given), and per step (the mean over the epoch's steps) the cycles,
    energy (pJ by component) and counters of each phase, and the counters of each layer."""

    epoch: int
    steps: int
    loss: float
    train_accuracy: float
    held_out_accuracy: float | None
    cycles: dict
    energy_pj: dict
    counters: dict
    layers: dict

    def summary(self) -> dict:
        return dict(epoch=self.epoch, steps=self.steps, loss=self.loss, train_accuracy=self.train_accuracy,
                    held_out_accuracy=self.held_out_accuracy, cycles_per_step=self.cycles,
                    energy_pj_per_step={p: dict(e) for p, e in self.energy_pj.items()},
                    counters_per_step={p: dict(c) for p, c in self.counters.items()},
                    layer_counters_per_step={n: dict(c) for n, c in self.layers.items()})


def fit(trainer: Trainer, x: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0,
        held_out: tuple[np.ndarray, np.ndarray] | None = None, on_epoch=None, on_step=None) -> list[EpochStats]:
    """Train for `epochs` on (x, labels), x laid out as the model's input: each epoch the samples in a
    seeded random order, in whole batches (the last partial batch is left out, as a fixed-size step takes
    exactly its batch). `on_epoch(stats)` is called after each epoch, `on_step(x, labels)` after each step
    with its batch (`ttc train --check` steps the reference there)."""
    io = trainer.prog.meta["inputs"][0]
    axis = 1 if io["time"] is not None else 0
    count = _batch_of(io, x)
    if labels.shape != (count,):
        raise TrainInputError(f"{count} samples but labels of shape {labels.shape}")
    steps = count // trainer.batch
    if steps == 0:
        raise TrainInputError(f"{count} samples do not make one batch of {trainer.batch}")
    rng = np.random.default_rng(seed)
    history = []
    with progress.bar(epochs * steps, "train", "step") as shown:
        for epoch in range(epochs):
            order = rng.permutation(count)
            loss, correct = 0.0, 0
            cycles, energy, counters, layers = Counter(), defaultdict(Counter), defaultdict(Counter), defaultdict(Counter)
            for k in range(steps):
                idx = order[k * trainer.batch:(k + 1) * trainer.batch]
                batch_x, batch_y = np.take(x, idx, axis=axis), labels[idx]
                s = trainer.step(batch_x, batch_y)
                if on_step is not None:
                    on_step(batch_x, batch_y)
                loss, correct = loss + s.loss, correct + s.correct
                cycles.update(s.cycles)
                for phase in s.energy_pj:
                    energy[phase].update(s.energy_pj[phase])
                    counters[phase].update(s.counters[phase])
                for name, c in s.layers.items():
                    layers[name].update(c)
                shown.update()
                shown.set_postfix_str(f"epoch {epoch + 1}, loss {loss / ((k + 1) * trainer.batch):.4f}")
            mean = lambda c: {key: v / steps for key, v in c.items()}
            stats = EpochStats(epoch + 1, steps, loss / (steps * trainer.batch), correct / (steps * trainer.batch),
                               accuracy(trainer.inference_program(), *held_out) if held_out is not None else None,
                               mean(cycles), {p: mean(e) for p, e in energy.items()},
                               {p: mean(c) for p, c in counters.items()}, {n: mean(c) for n, c in layers.items()})
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
    return history


def accuracy(prog: Program, x: np.ndarray, labels: np.ndarray) -> float:
    """Held-out accuracy of an inference program (the argmax of its one output)."""
    return float((run(prog, [x]).outputs[0].argmax(1) == labels).mean())


class Mismatch(Exception):
    """The simulator's weights differ from the integer training reference's (`ttc train --check`)."""


def checker(trainer: Trainer, reference) -> tuple:
    """(on_step for `fit`, the steps checked so far): after each step the reference (a
    `ttc.compiler.train_reference.TrainingReference` of the same program) takes the same batch, and every
    weight and bias must equal the simulator's, else Mismatch names the step, the layer and the elements."""
    checked = [0]

    def on_step(x: np.ndarray, labels: np.ndarray) -> None:
        reference.step(x, labels)
        checked[0] += 1
        for kind, sim, ref in (("weights", trainer.weights(), reference.weights),
                               ("bias", trainer.biases(), reference.biases)):
            for name, values in sim.items():
                differ = int((values != ref[name].numpy()).sum())
                if differ:
                    raise Mismatch(f"step {checked[0]}: layer {name}'s {kind} differ from the integer training "
                                   f"reference's in {differ} of {values.size} elements")
    return on_step, checked
