"""The `ttc` command line. No command leaves a half-written output file, and a command that fails
leaves none at all (`ttc.isa.files.atomic_write`, `all_or_nothing`).

Failures (ttc.isa.errors): bad input (a `UserError`, or a file that cannot be read or written) is one
readable line on stderr and exit status 1; anything else is a bug in ttc, which `ttc` says, with how to
report it, and exit status 70. `-v` adds the traceback to either. A reader that stops early
(`ttc inspect prog.bin | head -1`) ends the command quietly with status 141, as a shell tool killed by
SIGPIPE would (`run_reporting`, which `python -m ttc.demo` uses too).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from ttc.isa.errors import UserError
from ttc.isa.limits import check_memory
from ttc.isa import progress
from ttc.isa.files import all_or_nothing, atomic_write, read_text
from ttc.isa.program import ttc_version
from ttc.runtime.provenance import describe_input, input_provenance, provenance

EXIT_ERROR = 1
EXIT_MISMATCH = 3
EXIT_INTERNAL = 70  # EX_SOFTWARE of sysexits.h: an internal software error
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a command killed by SIGPIPE (`yes | head -1`)


class CliError(UserError):
    pass


def naming(path: str, e: UserError, *others: str | None) -> CliError:
    """`e`, which is about the file `path`, as one line naming it: the messages of the layers below name
    what is wrong (an instruction, a module, a field) and some cannot know the file. A message that
    already names `path` or another file of the command line (`others`) is kept as it is."""
    message = _first_line(e)
    if any(Path(p).name in message for p in (path, *others) if p and Path(p).is_file()):
        return CliError(message)
    return CliError(f"{path}: {message}")


def _is_npz(path: str) -> bool:
    return path.lower().endswith(".npz")


def check_output_path(path: str, outputs: list[dict]) -> None:
    """Refuse an --output that cannot hold what the program returns before anything runs (a batch may
    take minutes to simulate): several tensors need an .npz archive."""
    if len(outputs) > 1 and not _is_npz(path):
        raise CliError(f"--output {path}: the model returns {len(outputs)} tensors "
                       f"({', '.join(output_names(outputs))}) and a .npy file holds one: give a path ending in .npz")


def output_names(outputs: list[dict]) -> list[str]:
    """The names of the program's outputs in an .npz: each output's name in prog.bin (its IR value, the
    path of the module that computes it, as `ttc inspect` lists it), in the order forward returns them.
    A value returned twice would repeat a name, so then every output is named by its position, out0, out1..."""
    names = [io["name"] for io in outputs]
    return names if len(set(names)) == len(names) else [f"out{i}" for i in range(len(outputs))]


def _save_outputs(path: str, arrays: list[np.ndarray], outputs: list[dict]) -> None:
    """One tensor as .npy; several, or any number into a path ending in .npz, as an .npz archive
    whose arrays are named after the outputs (`output_names`)."""
    if _is_npz(path):
        named = dict(zip(output_names(outputs), arrays))

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **named)
    else:
        check_output_path(path, outputs)

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, arrays[0])
    atomic_write(path, write)


def _load_input(path: str) -> np.ndarray:
    """An .npy file, mapped before it is read: a header promising more than the file holds, or an array
    larger than the memory limit, is refused before anything is allocated. NumPy's reader is the boundary of an untrusted format:
    whatever it raises on a damaged file (ValueError, EOFError, a tokenizer error from the header)
    means the file is not an .npy array."""
    if not Path(path).is_file():
        raise CliError(f"{path}: no such file")
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise CliError(f"{path}: not a .npy array ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(mapped, np.ndarray) or mapped.dtype.kind not in "fiub":
        raise CliError(f"{path}: holds {getattr(mapped, 'dtype', type(mapped))} data, not numbers")
    check_memory(mapped.nbytes, f"an array of shape {mapped.shape}", path)
    return np.array(mapped)


def default_input(io: dict) -> np.ndarray:
    """A deterministic batch of one: values on the input's grid in [0, 1] (0/1 events for a spike input)."""
    shape = [1 if d == "N" else d for d in ([io["time"], "N"] if io["time"] is not None else ["N"]) + io["shape"]]
    rng = np.random.default_rng(0)
    if io["fmt"] == "spike":
        return rng.integers(0, 2, size=shape).astype(np.float32)
    return (rng.integers(0, (1 << io["frac"]) + 1, size=shape) / (1 << io["frac"])).astype(np.float32)


# ------------------------------------------------------------------------------------ commands

def cmd_compile(a) -> int:
    from ttc.api import compile_file, decay_notes
    from ttc.compiler.passes import OptionError, user_options

    train = train_options(a)
    calibration = {}
    if a.calibrate:  # the data the gradients' formats are set for (checked against the model by the compiler)
        x, y = (_load_input(path) for path in a.calibrate)
        if y.dtype.kind not in "iu":
            raise CliError(f"{a.calibrate[1]}: holds {y.dtype} labels; labels must be integers (class indices)")
        calibration["calibration"] = (np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64))
    try:
        compiled = compile_file(a.model, a.input_shape, a.hw, trust=a.trust_model, nir_dt=a.nir_dt, train=train,
                                **calibration, **{o.name: getattr(a, o.name) for o in user_options()})
    except OptionError:  # names the option
        raise
    except UserError as e:  # the model cannot be compiled (for this machine)
        raise naming(a.model, e, a.hw) from e
    if a.emit_ir:
        from ttc.compiler.ir_text import print_graph

        text = print_graph(compiled.graph)
        atomic_write(a.emit_ir, lambda tmp: tmp.write_text(text))
    compiled.program.save(a.output)
    p = compiled.program
    if a.explain:
        print(explain(p.meta))
    if train is not None:
        t = p.meta["train"]
        starts = phase_starts(p.meta["layers"])
        print(f"wrote {a.output}: a training step of {len(p.code)} instructions (forward from {starts['forward']}, "
              f"backward from {starts['backward']}, update from {starts['update']}), {len(t['layers'])} trained layers, "
              f"batch up to {train.batch}, lr 2^-{train.lr_shift}, hardware {p.hw.name}")
        print("  predicted (cost model): " + "; ".join(
            f"{phase} {cost['cycles']:,.0f} cycles {sum(cost['energy_pj'].values()) / 1e6:.3f} uJ"
            + (" per sample" if phase != "update" else " per batch") for phase, cost in t["predicted"].items()))
    else:
        print(f"wrote {a.output}: {len(p.code)} instructions, {len(p.data)} bytes of weights, "
              f"{len(p.meta['layers'])} layers, hardware {p.hw.name}")
    for line in decay_notes(compiled.graph):
        print(f"  {line}")
    return 0


#: The training options of `ttc compile --train` (their argparse dests); None when not given.
TRAIN_FLAGS = {"loss": "--loss", "lr": "--lr", "surrogate": "--surrogate", "band": "--band",
               "active_band": "--active-band", "batch": "--batch", "train_weight_bits": "--train-weight-bits",
               "grad_form": "--grad-form", "calibrate": "--calibrate"}
#: Compile flags a training step has no use for: it trains tensor-train layers as their cores (no plans to choose).
NOT_WITH_TRAIN = {"tt_rank": "--tt-rank", "tt_error": "--tt-error", "tt_core_bits": "--tt-core-bits",
                  "objective": "--objective", "schedule": "--schedule"}


def parse_lr(text: str) -> int:
    """The shift k of a learning rate 2^-k written 2^-k, 2**-k or as its value (0.0078125)."""
    import re

    match = re.fullmatch(r"\s*2\s*(?:\^|\*\*)\s*\(?\s*-\s*(\d+)\s*\)?\s*", text)
    shift = None
    if match:
        shift = int(match.group(1))
    else:
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if 0 < value <= 1:
            mantissa, exponent = np.frexp(value)
            shift = 1 - int(exponent) if mantissa == 0.5 else None
    if shift is None or not 0 <= shift <= 30:
        raise CliError(f"--lr {text}: the learning rate must be a power of two 2^-k, 0 <= k <= 30 "
                       "(written 2^-7, 2**-7 or 0.0078125)")
    return shift


def train_options(a):
    """The TrainOptions of `ttc compile --train` (None without --train, where training flags are refused)."""
    from ttc.compiler.passes import user_options
    from ttc.compiler.train import TrainOptions

    given = [flag for dest, flag in TRAIN_FLAGS.items() if getattr(a, dest) is not None]
    if not a.train:
        if given:
            raise CliError(f"{', '.join(given)}: training options need --train (they shape a training step)")
        return None
    defaults = {o.name: o.default for o in user_options()}
    unusable = [flag for dest, flag in NOT_WITH_TRAIN.items() if getattr(a, dest) != defaults[dest]]
    if a.explain:
        unusable.append("--explain")
    if unusable:
        raise CliError(f"{', '.join(unusable)} cannot be used with --train: they choose tensor-train layers and plans, "
                       "and a training step has none (it trains a tensor-train layer as its four cores, each a conv)")
    if a.band is not None and a.active_band is not None:
        raise CliError("--band and --active-band: give one (--active-band B is --band B with the backward skipping "
                       "the zero gradients outside the band)")
    fields = {}
    if a.loss is not None:
        fields["loss"] = a.loss
    if a.surrogate is not None:
        fields["surrogate"] = a.surrogate
    if a.lr is not None:
        fields["lr_shift"] = parse_lr(a.lr)
    if a.band is not None:
        fields["band"] = a.band
    if a.active_band is not None:
        fields.update(band=a.active_band, sparse=True)
    if a.batch is not None:
        fields["batch"] = a.batch
    if a.train_weight_bits is not None:
        fields["weight_bits"] = a.train_weight_bits
    if a.grad_form is not None:
        fields["form"] = a.grad_form
    return TrainOptions(**fields)


def phase_starts(layers: list[dict]) -> dict[str, int]:
    """The first instruction of each phase of a training step, in program order."""
    starts: dict[str, int] = {}
    for layer in layers:
        phase = layer.get("phase", "forward")
        starts[phase] = min(starts.get(phase, layer["first_instr"]), layer["first_instr"])
    return starts


def explain(meta: dict) -> str:
    """What tt-factorize did to each conv it looked at, then one block per TT layer: each plan's
    predicted cycles and energy, or why it is unavailable; then each conv that could run the max pool,
    residual add or conv after it: the predicted cost fused and apart, and the choice."""
    lines = []
    for path, note in meta.get("factorize", {}).items():
        if "ranks" in note:
            lines.append(f"{path}: ranks {','.join(map(str, note['ranks']))}, relative error {note['error']:.4f}, "
                         f"{note['params_dense']} -> {note['params_tt']} weights"
                         + ("" if note["factorised"] else f": kept dense ({note['why']})"))
        else:
            lines.append(f"{path}: kept dense ({note['why']})")
    for path, note in meta.get("schedule", {}).items():
        how = "forced" if note["forced"] else f"best {note['objective']}"
        lines.append(f"{path}: {note['variant']} ranks {','.join(map(str, note['ranks']))} -> {note['chosen']} ({how})")
        for plan, o in note["plans"].items():
            lines.append(f"  {plan:<7} " + (f"{o['cycles']:>10.0f} cycles {o['energy_pj'] / 1e3:>10.2f} nJ "
                                            f"{o['weight_bytes']:>8} weight bytes" if o["available"]
                                            else f"unavailable: {o['why']}"))
    for conv, note in meta.get("fusion", {}).items():
        lines.append(f"{conv} + {note['kind']} %{note['consumer']}: {note['chosen']} (best {note['objective']})")
        for way in ("fused", "apart"):
            o = note[way]
            lines.append(f"  {way:<7} " + (f"unavailable: {o['unavailable']}" if "unavailable" in o else
                                           f"{o['cycles']:>10.0f} cycles {o['energy_pj'] / 1e3:>10.2f} nJ "
                                           f"{o['dram_bytes']:>10} DRAM bytes"))
    return "\n".join(lines) if lines else "no tensor-train layers, and no pool, add or conv that a layer could run"


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _agreement(sim: np.ndarray, flt: np.ndarray) -> dict:
    flt = flt.astype(np.float32)
    out = {"bit_exact": _bits_equal(sim, flt), "max_abs_error": float(np.abs(sim - flt).max()) if sim.size else 0.0}
    if set(np.unique(flt)) <= {0.0, 1.0}:
        out["spike_agreement"] = float((sim == flt).mean())
    if sim.ndim == 2:
        out["top1_agreement"] = float((sim.argmax(1) == flt.argmax(1)).mean())
    return out


def check(prog, model_path: str, trust: bool, x: np.ndarray, sim_outputs: list[np.ndarray]) -> dict:
    from ttc.api import file_digest, recompile_for_check, reference, run_float
    from ttc.frontends.load import load_model

    model = load_model(model_path, trust, prog.meta["source"].get("nir_dt"))  # a NIR graph read as when compiled
    recorded = prog.meta["source"].get("sha256")
    if recorded and recorded != file_digest(model_path):
        raise CliError(f"{model_path} is not the model this program was compiled from (its SHA-256 differs)")
    compiled = recompile_for_check(prog, model)
    ref = reference(compiled, x)
    flt = run_float(model, x)
    report = {"reference_bit_exact": all(_bits_equal(s, r) for s, r in zip(sim_outputs, ref)),
              "mismatched_elements": int(sum((s != r).sum() for s, r in zip(sim_outputs, ref))),
              "float": [_agreement(s, f) for s, f in zip(sim_outputs, flt)]}
    return report


def cmd_run(a) -> int:
    from ttc.isa.io import InputError
    from ttc.isa.program import Program
    from ttc.runtime.run import run

    if not a.sim:
        raise CliError("only the simulator backend exists: pass --sim")
    if a.batch is not None and a.batch < 1:
        raise CliError(f"--batch {a.batch}: simulate at least 1 sample at a time")
    prog = Program.load(a.program)
    if a.hw:
        from ttc.isa.hwconfig import load_hw

        prog = dataclasses.replace(prog, hw=load_hw(a.hw))
    if a.output:
        check_output_path(a.output, prog.meta["outputs"])
    ios = prog.meta["inputs"]
    x = _load_input(a.input) if a.input else default_input(ios[0])
    source = input_provenance(x, a.input)
    try:
        result = run(prog, [x], a.backend, a.batch)
    except InputError as e:
        raise naming(a.input or a.program, e) from e  # the default input is the program's
    except UserError as e:  # what the program does on this machine (or on the --hw one: both are named)
        raise naming(f"{a.program} on {a.hw}" if a.hw else a.program, e) from e
    for line in result.warnings():  # on stderr, so that --json output stays one document
        print(f"ttc: warning: {line}", file=sys.stderr)
    from ttc.runtime.report import format_table, report as run_report, write_report

    # the same keys and layer rows as report.json (without its static counts)
    report = {k: v for k, v in run_report(prog, result, provenance(prog, a.program, source)).items() if k != "counts"}
    if a.check:  # before anything is written: a model that cannot be checked is a failed command
        try:
            report["check"] = check(prog, a.check, a.trust_model, x, result.outputs)
        except UserError as e:
            raise naming(a.check, e) from e
    if a.report:
        table = format_table(write_report(prog, result, a.report, report["provenance"]))
    if a.output:
        _save_outputs(a.output, result.outputs, prog.meta["outputs"])
    if a.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_run(report)
    if a.report and not a.json:
        print(table)
        print(f"report: {Path(a.report) / 'report.json'}, {Path(a.report) / 'layers.csv'}, "
              f"{Path(a.report) / 'trace.json'} (Perfetto), "
              f"{Path(a.report) / 'energy.png'}, {Path(a.report) / 'timeline.png'}")
    if a.check and not report["check"]["reference_bit_exact"]:
        print(f"ttc: error: the simulator differs from the quantized reference in "
              f"{report['check']['mismatched_elements']} elements", file=sys.stderr)
        return EXIT_MISMATCH
    return 0


def _print_run(r: dict) -> None:
    p = r["provenance"]
    print(f"{p['program'].get('path', 'program')} (sha256 {p['program']['sha256'][:12]}, compiled by ttc "
          f"{p['program']['compiled_by']}) on {p['hardware']['name']} ({p['hardware']['digest'][:12]}), ttc {p['ttc_version']}")
    print(describe_input(p["input"]))
    print(f"batch {r['batch']}: {r['cycles_per_inference']:.0f} cycles and "
          f"{r['energy_pj_per_inference'] / 1e3:.2f} nJ per inference")  # nJ throughout, as the report's table
    print("  energy by component (nJ): " + ", ".join(f"{k} {v / 1e3:.2f}" for k, v in r["energy_pj_by_component"].items()))
    print("  cycles by unit: " + ", ".join(f"{k} {v}" for k, v in r["cycles_by_unit"].items()))
    e, c = r["per_sample"]["energy_pj"], r["per_sample"]["cycles"]
    cycles = (f"{c['mean']:.0f} (the same for every sample: a dense array)" if c["min"] == c["max"] else
              f"{c['mean']:.0f} mean, {c['min']:.0f} to {c['max']:.0f} (the array skips: each sample's spikes set its time)")
    print(f"  per sample: energy {e['mean'] / 1e3:.2f} nJ mean, {e['min'] / 1e3:.2f} to {e['max'] / 1e3:.2f}; cycles {cycles}")
    print("  actions per inference: " + ", ".join(f"{k} {v:g}" for k, v in r["actions_per_inference"].items()))
    if "check" in r:
        c = r["check"]
        print(f"  quantized reference: {'bit-exact' if c['reference_bit_exact'] else 'MISMATCH'}")
        for i, f in enumerate(c["float"]):
            print(f"  float model, output {i}: " + ", ".join(f"{k} {v}" for k, v in f.items()))


def _check_writable(path: str | None, flag: str) -> None:
    """Refuse an output whose directory is missing before training starts (training may take minutes)."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise CliError(f"{flag} {path}: no such directory")


def _training_data(prog, x_path: str, y_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Samples laid out as the model's input (read as `ttc run --input` reads them) and their integer labels
    [N], checked against the step program before anything runs; what is wrong names its file."""
    from ttc.isa.io import InputError, input_saturation, spike_input
    from ttc.runtime.run import _batch_of

    io, classes = prog.meta["inputs"][0], prog.meta["train"]["classes"]
    x = _load_input(x_path)
    try:
        count = _batch_of(io, x)
        if io["fmt"] == "spike":
            spike_input(x, io["path"] or io["name"])
    except InputError as e:
        raise naming(x_path, e) from e
    if io["fmt"] != "spike":
        saturated = input_saturation(x, io["bits"], io["frac"])
        if saturated["saturated"]:
            print(f"ttc: warning: {x_path}: {saturated['saturated']} of {saturated['elements']} values lie outside "
                  f"{saturated['format']} ({saturated['range'][0]:g} to {saturated['range'][1]:g}) and are saturated",
                  file=sys.stderr)
    y = _load_input(y_path)
    if y.dtype.kind not in "iu":
        raise CliError(f"{y_path}: holds {y.dtype} labels; labels must be integers (class indices 0 to {classes - 1})")
    if y.shape != (count,):
        raise CliError(f"{y_path}: labels of shape {tuple(y.shape)}, but {x_path} holds {count} samples: "
                       f"labels must be of shape ({count},)")
    if y.min() < 0 or y.max() >= classes:
        bad = y[(y < 0) | (y >= classes)][0]
        raise CliError(f"{y_path}: label {bad} is out of range: the model has {classes} classes (labels 0 to {classes - 1})")
    return x, y.astype(np.int64)


def cmd_train(a) -> int:
    from ttc.isa.program import Program
    from ttc.runtime.train import Mismatch, Trainer, fit

    if not a.sim:
        raise CliError("only the simulator backend exists: pass --sim")
    if a.epochs < 1:
        raise CliError(f"--epochs {a.epochs}: train for at least one epoch")
    _check_writable(a.output, "-o")
    _check_writable(a.weights, "--weights")
    prog = Program.load(a.program)
    if "train" not in prog.meta:
        raise CliError(f"{a.program}: not a training step (an inference program); compile one with "
                       "`ttc compile MODEL --train ...`")
    compiled = prog.meta["train"]["options"]["batch"]
    batch = compiled if a.batch is None else a.batch
    if not 1 <= batch <= compiled:
        raise CliError(f"--batch {batch}: {a.program} was compiled for batches of 1 to {compiled} (its gradient "
                       "formats hold sums over that many samples; compile with a larger --batch)")
    x, y = _training_data(prog, a.data, a.labels)
    if len(y) < batch:
        raise CliError(f"{a.data}: {len(y)} samples do not make one batch of {batch}")
    held_out = _training_data(prog, *a.held_out) if a.held_out else None
    try:
        trainer = Trainer(prog, batch)
    except UserError as e:
        raise naming(a.program, e) from e
    shown = []

    def on_epoch(stats) -> None:
        shown.append(stats)
        if not a.json:
            print(epoch_line(stats, a.epochs), flush=True)

    on_step, checked = train_check(prog, a, trainer) if a.check else (None, None)
    try:
        history = fit(trainer, x, y, a.epochs, seed=a.seed, held_out=held_out, on_epoch=on_epoch, on_step=on_step)
    except UserError as e:
        raise naming(a.program, e, a.data, *(a.held_out or ())) from e
    except Mismatch as e:  # nothing is written: the trained weights are not what the program means
        print(f"ttc: check: {a.program}: {e}", file=sys.stderr)
        return EXIT_MISMATCH
    if a.output:
        trainer.inference_program().save(a.output)
    if a.weights:
        import torch

        state = trainer.state_dict()
        atomic_write(a.weights, lambda tmp: torch.save(state, tmp))
    if a.json:
        print(json.dumps([s.summary() for s in history], indent=2, sort_keys=True))
    else:
        if checked:
            print(f"checked: the weights equal the integer training reference's after each of the {checked[0]} steps")
        for path, what in ((a.output, "the inference program with the trained weights"),
                           (a.weights, "the trained weights as a state dict of the source model")):
            if path:
                print(f"wrote {path}: {what}")
    return 0


def train_check(prog, a, trainer) -> tuple:
    """`ttc train --check MODEL`: the model recompiled with the step's options gives the integer training
    reference, which takes every step beside the simulator (ttc.runtime.train.checker)."""
    from ttc.api import file_digest, recompile_for_check
    from ttc.compiler.train_reference import TrainingReference
    from ttc.frontends.load import load_model
    from ttc.runtime.train import checker

    try:
        model = load_model(a.check, a.trust_model, prog.meta["source"].get("nir_dt"))
        recorded = prog.meta["source"].get("sha256")
        if recorded and recorded != file_digest(a.check):
            raise CliError(f"{a.check} is not the model this program was compiled from (its SHA-256 differs)")
        compiled = recompile_for_check(prog, model)
    except UserError as e:
        raise naming(a.check, e) from e
    return checker(trainer, TrainingReference(compiled.quantized, prog.meta["train"]))


def epoch_line(stats, epochs: int) -> str:
    """One epoch as a line: its loss and accuracies, and per step each phase's cycles and energy."""
    held = f", held-out accuracy {stats.held_out_accuracy:.1%}" if stats.held_out_accuracy is not None else ""
    phases = "; ".join(f"{phase} {stats.cycles.get(phase, 0):.0f} cycles {sum(stats.energy_pj[phase].values()) / 1e6:.3f} uJ"
                       for phase in ("forward", "backward", "update") if phase in stats.energy_pj)
    return (f"epoch {stats.epoch}/{epochs}: loss {stats.loss:.4f}, train accuracy {stats.train_accuracy:.1%}{held}; "
            f"per step ({stats.steps} steps): {phases}")


def cmd_export(a) -> int:
    from ttc.api import export_nir
    from ttc.frontends.load import load_model

    from ttc.frontends.nir import write_nir

    if not a.nir:
        raise CliError("choose the format to write: --nir (the only one so far)")
    try:
        graph = export_nir(load_model(a.model, a.trust_model, a.nir_dt), a.input_shape, a.nir_dt)
    except UserError as e:
        raise naming(a.model, e) from e
    atomic_write(a.output, lambda tmp: write_nir(graph, tmp))
    kinds = Counter(type(n).__name__ for n in graph.nodes.values())
    print(f"wrote {a.output}: NIR graph of {len(graph.nodes)} nodes ({', '.join(f'{k} {v}' for k, v in kinds.items())}), "
          f"neurons for dt = {a.nir_dt:g} s")
    return 0


def cmd_sweep(a) -> int:
    from ttc.sweep import format_front, load_spec, parse_objectives, run_sweep, write_pareto

    if (a.spec is None) == (a.report is None) or (a.report is None) == (a.output is None):
        raise CliError("give a spec and -o DIR to run a sweep, or --report DIR to redraw its Pareto front")
    if a.workers is not None and a.workers < 1:
        raise CliError(f"--workers must be at least 1, got {a.workers}")
    objectives = None if a.objectives is None else parse_objectives(a.objectives)
    out = a.report
    if a.spec is not None:
        if not Path(a.spec).is_file():
            raise CliError(f"{a.spec}: no such file")
        s = run_sweep(load_spec(a.spec), a.output, a.workers, a.ray)
        print(f"sweep {a.spec}: {s.points} points, {s.ran} run ({s.failed} failed), {s.skipped} kept from earlier "
              f"runs, in {s.seconds:.1f} s; results in {Path(a.output) / 'results.csv'}")
        out = a.output
    objectives, front = write_pareto(out, objectives)
    print(format_front(front, objectives))
    return 0


def cmd_asm(a) -> int:
    from ttc.isa.asm import assemble

    if not Path(a.source).is_file():
        raise CliError(f"{a.source}: no such file")
    assemble(read_text(a.source), a.source).save(a.output)
    print(f"wrote {a.output}")
    return 0


def cmd_disasm(a) -> int:
    from ttc.isa.asm import disassemble
    from ttc.isa.program import Program

    text = disassemble(Program.load(a.program))
    if a.output:
        atomic_write(a.output, lambda tmp: tmp.write_text(text))
    else:
        sys.stdout.write(text)
    return 0


def inspect_program(prog, path: str | None = None) -> dict:
    from ttc.isa.program import FORMAT_VERSION
    from ttc.isa.table import ISA_VERSION

    info = dict(provenance=provenance(prog, path), format_version=FORMAT_VERSION, isa_version=ISA_VERSION,
                source=prog.meta["source"], options=prog.meta["options"], instructions=len(prog.code),
                instructions_by_opcode=dict(sorted(Counter(i.op for i in prog.code).items())),
                data_bytes=len(prog.data), dram_bytes=prog.meta["dram_bytes"], inputs=prog.meta["inputs"],
                outputs=prog.meta["outputs"], layers=prog.meta["layers"], counts=prog.meta.get("counts", {}))
    if "train" in prog.meta:  # a training step: its phases, options and the formats of every trained layer
        t = prog.meta["train"]
        info["layers"] = [{"source": layer["path"], **layer} for layer in prog.meta["layers"]]
        info["train"] = dict(phases=phase_starts(prog.meta["layers"]), options=t["options"], steps=t["steps"],
                             classes=t["classes"], calibration=t["calibration"],
                             layers=[{k: r[k] for k in TRAINED_LAYER_FIELDS} for r in t["layers"]])
    return info


#: What `ttc inspect` shows of each trained layer of a training step.
TRAINED_LAYER_FIELDS = ("name", "path", "op", "cin", "cout", "form", "grad_frac", "src_shift", "wgrad_shift", "pre_shift",
                        "post_shift", "dw_frac", "sgd_shift")


def cmd_inspect(a) -> int:
    from ttc.isa.program import Program

    info = inspect_program(Program.load(a.program), a.program)
    if a.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    p = info["provenance"]
    print(f"{a.program}: ttc program format {info['format_version']}, ISA {info['isa_version']}, compiled by ttc "
          f"{p['program']['compiled_by']} for hardware {p['hardware']['name']} ({p['hardware']['digest'][:12]}); "
          f"sha256 {p['program']['sha256'][:12]}")
    print(f"  source: {info['source'] or '(Python API)'}; options: {info['options']}")
    print(f"  code: {info['instructions']} instructions ({', '.join(f'{k} {v}' for k, v in info['instructions_by_opcode'].items())})")
    print(f"  data: {info['data_bytes']} bytes of weights; DRAM image {info['dram_bytes']} bytes")
    for io in info["inputs"]:
        encoding = ("as spikes (0/1 events, bit-packed)" if io["fmt"] == "spike"
                    else f"as {io['fmt']} with {io['frac']} fractional bits")
        print(f"  input  {io['name']}: [{', '.join(map(str, ([io['time'], 'N'] if io['time'] else ['N']) + io['shape']))}] "
              f"{encoding}")
    for io in info["outputs"]:
        print(f"  output {io['name']}: [{', '.join(map(str, ([io['time'], 'N'] if io['time'] else ['N']) + io['shape']))}] "
              f"{io['fmt']}, {io['frac']} fractional bits{', divided by ' + str(io['divide_by']) if io['divide_by'] != 1 else ''}")
    if "train" in info:
        _print_train(info["train"])
    print("  layers:")
    for layer in info["layers"]:
        tile = f", tile {layer['tile']}" if layer.get("tile") else ""
        phase = f"{layer['phase']:<9} " if "phase" in layer else ""
        print(f"    {phase}{layer.get('source', layer['path']):<20} {layer['op']:<20} {layer['type']}{tile}")
    if info["counts"]:
        from ttc.runtime.report import format_counts

        print(format_counts(info["counts"]))
    return 0


def _print_train(t: dict) -> None:
    o = t["options"]
    print(f"  training step: forward from instruction {t['phases']['forward']} and backward from "
          f"{t['phases']['backward']} per sample, update from {t['phases']['update']} once per batch; "
          f"{t['steps']} time steps, {t['classes']} classes")
    print(f"  training options: loss {o['loss']}, lr 2^-{o['lr_shift']}, surrogate {o['surrogate']}, band {o['band']:g} "
          f"({'sparse: the active set only' if o['sparse'] else 'dense'}), batch up to {o['batch']}, "
          f"{o['weight_bits']}-bit weights, gradient form {o['form']}; gradient formats calibrated on {t['calibration']}")
    print("  trained layers (fractional bits and shifts):")
    print("    " + " ".join(f"{k:>11}" if k not in ("name", "path") else f"{k:<12}" for k in TRAINED_LAYER_FIELDS))
    for r in t["layers"]:
        print("    " + " ".join(f"{r[k]:>11}" if k not in ("name", "path") else f"{r[k] or '-':<12}"
                                for k in TRAINED_LAYER_FIELDS))


def add_option_flags(parser: argparse.ArgumentParser, options) -> None:
    """A flag per user option of the passes (`ttc.compiler.passes.UserOption`): --tt-rank for tt_rank.
    A default that is empty or zero means "off" and goes unsaid in the help."""
    for o in options:
        parser.add_argument("--" + o.name.replace("_", "-"), dest=o.name, type=type(o.default), default=o.default,
                            choices=o.choices, metavar=o.metavar, help=o.help + (f" (default {o.default})" if o.default else ""))


def build_parser() -> argparse.ArgumentParser:
    from ttc.compiler.passes import user_options

    verbose_help = "on an error, print the traceback"
    p = argparse.ArgumentParser(prog="ttc", description="Compile PyTorch SNNs to an SNN accelerator and simulate them.")
    p.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or informational messages")
    p.add_argument("--version", action="version", version=f"ttc {ttc_version()}")
    # -v also after the command; SUPPRESS keeps a command without it from resetting `ttc -v` to False
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    sub = p.add_subparsers(dest="command", required=True)
    trust_help = ("allow the model file to name classes ttc does not know; unpickling them runs code chosen by "
                  "the file, so use this only for files you trust")

    from ttc.frontends.nir import DEFAULT_DT

    # the model and how to read it, shared by compile and export
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("model", help="a torch.save'd model, or a NIR graph (.nir)")
    model.add_argument("--input-shape", required=True, help="the forward input's shape with the batch axis as N, e.g. 4,N,1,8,8")
    model.add_argument("--nir-dt", type=float, default=DEFAULT_DT, metavar="SECONDS",
                       help=f"the Euler step of NIR neurons: decay 1 - dt/tau (default {DEFAULT_DT:g}, as snnTorch and "
                       "SpikingJelly write NIR)")
    model.add_argument("--trust-model", action="store_true", help=trust_help)

    c = sub.add_parser("compile", parents=[verbose, model], help="compile a torch.save'd model or a NIR graph to prog.bin")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--hw", default="sata", help="hardware preset name or TOML file (default: sata)")
    add_option_flags(c, user_options())
    c.add_argument("--explain", action="store_true", help="print each TT layer's plans, and each fusion of a pool, "
                   "residual add or conv, their predicted cost and the choice")
    c.add_argument("--emit-ir", metavar="FILE", help="also write the final IR as text")
    t = c.add_argument_group("training (docs/training.md)")
    t.add_argument("--train", action="store_true", help="compile the model's training step (forward, backward and "
                   "weight update of a batch) instead of its inference program; train it with `ttc train`")
    t.add_argument("--loss", metavar="mse|ce", help="the loss: mse, the mean squared error against the one-hot label "
                   "(computed on the machine; the default), or ce, the softmax cross-entropy (its gradient computed by "
                   "the host between the forward and the backward)")
    t.add_argument("--lr", metavar="2^-K", help="the learning rate, a power of two: 2^-7, 2**-7 or 0.0078125 "
                   "(default 2^-4)")
    t.add_argument("--surrogate", metavar="rect", help="the surrogate gradient: rect, 1 within the band around "
                   "the threshold (the only one the tape holds)")
    t.add_argument("--band", type=float, metavar="B", help="the rectangular surrogate's half-width as a fraction "
                   "of the threshold, dense backward (default 1)")
    t.add_argument("--active-band", type=float, metavar="B", help="as --band B, and the backward skips the zero "
                   "gradients outside the band (SSGD's active set)")
    t.add_argument("--batch", type=int, metavar="N", help="the largest batch a step takes (default 64)")
    t.add_argument("--train-weight-bits", type=int, metavar="8|16", help="bits of the trained weights (default 16)")
    t.add_argument("--grad-form", choices=("auto", "explicit", "trace"), help="the hidden layers' weight gradients: explicit "
                   "BPTT, SSGD's trace form (subtract or no reset), or per layer the cheaper by the cost model (auto, "
                   "the default)")
    t.add_argument("--calibrate", nargs=2, metavar=("X.npy", "Y.npy"), help="samples and labels the gradients' "
                   "formats are set for (float64 gradients on them; default: 16 random inputs)")
    c.set_defaults(fn=cmd_compile)

    e = sub.add_parser("export", parents=[verbose, model], help="write a model in another format (NIR)")
    e.add_argument("--nir", action="store_true", help="write a NIR graph (nir.write; read it back with nir.read)")
    e.add_argument("-o", "--output", required=True)
    e.set_defaults(fn=cmd_export)

    r = sub.add_parser("run", parents=[verbose], help="run prog.bin on the simulator")
    r.add_argument("--sim", action="store_true", help="run on the instruction-level simulator")
    r.add_argument("--backend", choices=("jit", "numpy"), help="the simulator's backend: native kernels (jit, the "
                   "default) or NumPy handlers (the reference): the same outputs and counters")
    r.add_argument("program")
    r.add_argument("--input", help=".npy laid out as the model's forward input (any batch size)")
    r.add_argument("--batch", type=int, metavar="N", help="simulate N samples at a time (default: all at once): an "
                   "input of any size is read a batch at a time, with a progress bar")
    r.add_argument("--output", help="write what forward returns (.npy; .npz for several tensors, each named "
                   "as `ttc inspect` names the output)")
    r.add_argument("--check", metavar="MODEL", help="compare with the quantized reference (bit for bit) and the float model")
    r.add_argument("--trust-model", action="store_true", help=trust_help)
    r.add_argument("--json", action="store_true", help="machine-readable statistics")
    r.add_argument("--report", metavar="DIR", help="print the per-layer table and write report.json, trace.json "
                   "(Chrome/Perfetto), energy.png and timeline.png to DIR")
    r.add_argument("--hw", metavar="PRESET|FILE", help="price and time the run with this hardware config instead of "
                   "the one prog.bin was compiled for (its buffers must hold the program's tiles)")
    r.set_defaults(fn=cmd_run)

    tr = sub.add_parser("train", parents=[verbose], help="train a training step (ttc compile --train) on the simulator")
    tr.add_argument("program", help="the training-step program")
    tr.add_argument("--sim", action="store_true", help="train on the instruction-level simulator")
    tr.add_argument("--data", required=True, metavar="X.npy", help="the training samples, laid out as the model's "
                    "forward input (as `ttc run --input`)")
    tr.add_argument("--labels", required=True, metavar="Y.npy", help="their classes: integers 0 to C-1, shape [N]")
    tr.add_argument("--epochs", type=int, required=True, metavar="N")
    tr.add_argument("--batch", type=int, metavar="B", help="samples per step (default: the batch the step was "
                    "compiled for, the largest it takes)")
    tr.add_argument("--held-out", nargs=2, metavar=("X.npy", "Y.npy"), help="samples and labels to measure the "
                    "accuracy on after each epoch")
    tr.add_argument("--seed", type=int, default=0, help="the seed of the epochs' sample order (default 0)")
    tr.add_argument("-o", "--output", metavar="TRAINED.bin", help="write the inference program with the trained weights")
    tr.add_argument("--weights", metavar="TRAINED.pt", help="write the trained weights as a state dict of the source "
                    "model (torch.save)")
    tr.add_argument("--check", metavar="MODEL", help="step the integer training reference of MODEL (the model the "
                    "program was compiled from) beside the simulator and compare the weights after every step; exit "
                    "status 3, writing nothing, on any difference")
    tr.add_argument("--trust-model", action="store_true", help=trust_help)
    tr.add_argument("--json", action="store_true", help="print the epochs' statistics as JSON")
    tr.set_defaults(fn=cmd_train)

    sw = sub.add_parser("sweep", parents=[verbose], help="compile and simulate a model at every point of a design space")
    sw.add_argument("spec", nargs="?", help="the sweep spec (TOML: model, data, base hardware config, axes; "
                    "docs/sweep.md)")
    sw.add_argument("-o", "--output", metavar="DIR", help="where points/<id>.json, results.csv and the Pareto front "
                    "(pareto.csv, pareto.png) go; points already there are not run again")
    sw.add_argument("--workers", type=int, metavar="N", help="processes running points (default: one per core)")
    sw.add_argument("--ray", metavar="ADDRESS", help="run the points as Ray tasks on the cluster at ADDRESS (auto: "
                    "the one this machine belongs to; local: start one here with --workers CPUs); needs ttc[sweep]")
    sw.add_argument("--report", metavar="DIR", help="instead of running: redraw DIR's Pareto front from its point files")
    sw.add_argument("--objectives", metavar="A,B,..", help="the Pareto front's objectives, of energy, cycles, latency, "
                    "accuracy, data_bytes (default energy,cycles,accuracy; without accuracy when the data has no labels)")
    sw.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("asm", parents=[verbose], help="assemble text assembly into prog.bin")
    s.add_argument("source")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(fn=cmd_asm)

    d = sub.add_parser("disasm", parents=[verbose], help="disassemble prog.bin")
    d.add_argument("program")
    d.add_argument("-o", "--output")
    d.set_defaults(fn=cmd_disasm)

    i = sub.add_parser("inspect", parents=[verbose], help="describe prog.bin")
    i.add_argument("program")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)
    return p


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is still buffered for a reader that has gone
    (at exit too) cannot raise again: Python's documented way out of a broken pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture): nothing flushes to the pipe
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def run_reporting(command: Callable[[], int], verbose: bool, command_line: list[str]) -> int:
    """Run `command` and turn what it raises into ttc's exit statuses and messages (module docstring):
    a UserError or an unusable file is one `ttc: error:` line and 1, a broken pipe is silent and 141,
    anything else is an internal error, 70, reported with `command_line` to paste into a bug report."""
    try:
        with all_or_nothing():
            status = command()
        sys.stdout.flush()  # output still buffered meets a closed pipe here, inside the handlers below
        return status
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing went wrong, and nobody reads on
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("ttc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if verbose:
            traceback.print_exc()
        if isinstance(e, UserError):
            print(f"ttc: error: {_first_line(e)}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(e, OSError):  # a file that cannot be read or written
            print(f"ttc: error: {e.filename}: {e.strerror}" if e.filename and e.strerror else f"ttc: error: {e}",
                  file=sys.stderr)
            return EXIT_ERROR
        print(f"ttc: internal error: {type(e).__name__}: {_first_line(e)}\n"
              "ttc: this is a bug in ttc, not a problem with your input. Please report it to the ttc developers "
              "with the command line\n"
              f"  {shlex.join(command_line)}\n"
              "and the output of the same command with -v added (it prints the traceback).", file=sys.stderr)
        return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # -q: warnings and errors only, no progress bars; -v: debug messages and tracebacks
    logging.basicConfig(format="ttc: %(message)s", force=True,
                        level=logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    progress.quiet(args.quiet)
    return run_reporting(lambda: args.fn(args), args.verbose, ["ttc", *argv])


if __name__ == "__main__":
    sys.exit(main())
