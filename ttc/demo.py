"""The demo: compile the embedded digits SNN (or, with --model, another digits model: the TT-SNN example
examples/digits/tt_digits_snn.pt, the TTFS example examples/digits/cat_digits_ann.pt, a CAT-trained
ANN that runs once per digit, or the MT-SNN example examples/digits/mt_digits_snn.pt with --steps 1),
run the 360 held-out digits on the simulator and compare the float model, the quantized reference
and the simulator. `make demo` runs this.

With --train it trains instead (docs/training.md): a fully connected LIF SNN compiled to a training-step
program, trained on the simulator for --epochs on the 1437 training digits, beside the same recipe
trained in float PyTorch, with the cost of a step by phase and the active fraction of each layer.

A model the demo cannot use (a missing or damaged file, a model for other inputs, one that does not
return 10 class scores per digit) is one `ttc: error: ...` line and exit status 1, as in `ttc`
(ttc.cli.run_reporting); `-v` adds the traceback."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ttc import api
from ttc.cli import run_reporting
from ttc.digits import STEPS, load_digits_split
from ttc.frontends import ttfs
from ttc.frontends.trace import UnsupportedModel
from ttc.isa.errors import UserError
from ttc.runtime.run import expected_shape

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "digits"
MODEL = EXAMPLES / "digits_snn.pt"
TT_MODEL = EXAMPLES / "tt_digits_snn.pt"
CAT_MODEL = EXAMPLES / "cat_digits_ann.pt"
MT_MODEL = EXAMPLES / "mt_digits_snn.pt"
OUT = Path("out")
CLASSES = 10


class DemoError(UserError):
    """A model the demo cannot run on the digits."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MODEL, help=f"a digits model (default {MODEL.name})")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"time steps of an SNN (default {STEPS})")
    ap.add_argument("--train", action="store_true", help="train an SNN on the simulator instead (docs/training.md)")
    ap.add_argument("--epochs", type=int, default=TRAIN_EPOCHS, help=f"--train: epochs (default {TRAIN_EPOCHS})")
    ap.add_argument("--active-band", type=float, metavar="B", help="--train: skip the backward outside |h - theta| < "
                    "B theta (SSGD's active set), and compare the work with the dense backward")
    ap.add_argument("--loss", choices=("mse", "ce"), default="mse", help="--train: the loss (default mse, on the "
                    "machine; ce: the softmax cross-entropy, its gradient from the host)")
    ap.add_argument("-v", "--verbose", action="store_true", help="on an error, print the traceback")
    args = ap.parse_args(argv)
    if args.train:
        command = lambda: train_demo(args.steps, args.epochs, args.active_band, args.loss)
    else:
        command = lambda: demo(args.model, args.steps)
    return run_reporting(command, args.verbose, ["python", "-m", "ttc.demo", *argv])


TRAIN_EPOCHS, TRAIN_BATCH, TRAIN_LR_SHIFT, TRAIN_BAND, TRAIN_HIDDEN, TRAIN_CALIBRATION = 10, 32, 7, 0.5, 64, 64


def train_demo(steps: int, epochs: int, active_band: float | None, loss: str = "mse") -> int:
    """Train `build_fc_snn` on the simulator and in float with the same recipe; print both accuracies and
    what a step costs."""
    import copy

    from ttc.compiler.train import TrainOptions
    from ttc.digits import build_fc_snn, train_recipe
    from ttc.runtime.train import Trainer, fit

    x_tr, y_tr, x_te, y_te = load_digits_split(steps)
    model = build_fc_snn(TRAIN_HIDDEN)
    band = TRAIN_BAND if active_band is None else active_band
    lr_shift = TRAIN_LR_SHIFT
    options = TrainOptions(lr_shift=lr_shift, band=band, sparse=active_band is not None, batch=TRAIN_BATCH, loss=loss)
    t0 = time.perf_counter()
    calibration = x_tr[:, :TRAIN_CALIBRATION], y_tr[:TRAIN_CALIBRATION]  # the gradients' formats are set for these
    compiled = api.compile_training(model, f"{steps},N,1,8,8", train=options, calibration=calibration, input_bits=8,
                                    input_frac=4)
    trainer = Trainer(compiled.program, TRAIN_BATCH)
    print(f"ttc demo --train: FC 64-{TRAIN_HIDDEN}-10 LIF SNN (T={steps}) on the {len(y_tr)} training digits, batch "
          f"{TRAIN_BATCH}, SGD 2^-{lr_shift}, {'MSE on chip' if loss == 'mse' else 'cross-entropy (host)'}, "
          f"rectangular surrogate |h - theta| < {band:g} theta"
          f"{', sparse backward (active set)' if active_band is not None else ''}; hardware {compiled.program.hw.name}")
    print(f"  training-step program: {len(compiled.program.code)} instructions "
          f"({compiled.program.meta['train']['update_at']} per sample, the rest the update)")

    def report(e) -> None:
        print(f"  epoch {e.epoch:2d}: loss {e.loss:.4f}, train {100 * e.train_accuracy:5.2f} %, held-out "
              f"{100 * e.held_out_accuracy:5.2f} % ({time.perf_counter() - t0:.1f} s)", flush=True)

    history = fit(trainer, x_tr, y_tr, epochs, held_out=(x_te, y_te), on_epoch=report)
    sim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    float_model = train_recipe(copy.deepcopy(model), x_tr, y_tr, epochs, lr_shift, band, TRAIN_BATCH, loss=loss)
    float_acc = float((api.run_float(float_model, x_te)[0].argmax(1) == y_te).mean())
    sim_acc = history[-1].held_out_accuracy
    print(f"  held-out accuracy: simulator {100 * sim_acc:.2f} % after {epochs} epochs in {sim_s:.1f} s; the same "
          f"recipe in float PyTorch {100 * float_acc:.2f} % ({time.perf_counter() - t0:.1f} s); difference "
          f"{100 * (sim_acc - float_acc):+.2f} points")
    last = history[-1]
    hw = compiled.program.hw
    print(f"  per step of {TRAIN_BATCH} samples (mean over the last epoch):")
    for phase in ("forward", "backward", "update"):
        energy = sum(last.energy_pj.get(phase, {}).values())
        print(f"    {phase:<9} {last.cycles.get(phase, 0):>12,.0f} cycles ({last.cycles.get(phase, 0) / hw.frequency_mhz:.1f} us), "
              f"{energy / 1e6:.3f} uJ")
    for r in compiled.program.meta["train"]["layers"]:
        if r["neuron"]:
            layer = next(l["name"] for l in compiled.program.meta["layers"] if l.get("phase") == "forward"
                         and l["path"] == compiled.graph.op(r["neuron"]).path)
            active = last.layers[layer].get("active", 0) / (r["cout"] * steps * TRAIN_BATCH)
            print(f"  layer {r['path']}: active fraction {100 * active:.2f} % of (sample, step, neuron) entries")
    backward = last.counters["backward"]
    print(f"  backward work per step: {backward.get('mac', 0):,.0f} input-gradient MACs, "
          f"{backward.get('weight_grad', 0):,.0f} weight-gradient accumulations")
    if active_band is not None:
        dense = TrainOptions(lr_shift=lr_shift, band=band, sparse=False, batch=TRAIN_BATCH, loss=loss)
        both = [Trainer(api.compile_training(model, f"{steps},N,1,8,8", train=o, calibration=calibration, input_bits=8,
                                             input_frac=4).program, TRAIN_BATCH) for o in (options, dense)]
        work = [t.step(x_tr[:, :TRAIN_BATCH], y_tr[:TRAIN_BATCH]).counters["backward"] for t in both]
        same = all(np.array_equal(a, b) for a, b in zip(both[0].weights().values(), both[1].weights().values()))
        print(f"  the first step, sparse against dense backward: input-gradient MACs {work[0].get('mac', 0):,.0f} vs "
              f"{work[1].get('mac', 0):,.0f}, weight-gradient accumulations {work[0].get('weight_grad', 0):,.0f} vs "
              f"{work[1].get('weight_grad', 0):,.0f}; updated weights {'identical' if same else 'DIFFERENT'}")
    return 0


def demo(path: Path, steps: int) -> int:
    _, _, x, y = load_digits_split(steps)
    model = api.load_model(path)
    ttfs_model = isinstance(next(iter(model.children()), None), (ttfs.CATActivation, ttfs.TTFSEncoder))
    if ttfs_model:  # static: one pass per digit, the spike times inside each layer's window
        x = x[0]
    shape = "N,1,8,8" if ttfs_model else f"{steps},N,1,8,8"
    t0 = time.perf_counter()
    try:
        compiled = api.compile_file(path, shape)
    except UnsupportedModel as e:  # most often a model built for other inputs: say what the demo feeds it
        raise DemoError(f"{path}: cannot compile it for the demo's 8x8 digits, input [{shape}]: {e}") from None
    compile_s = time.perf_counter() - t0
    scores = compiled.program.meta["outputs"][0]
    if expected_shape(scores) != ["N", CLASSES]:  # accuracy takes the argmax over 10 scores per digit
        raise DemoError(f"{path}: the demo needs a digits classifier whose forward returns [N, {CLASSES}] class "
                        f"scores; this one returns [{', '.join(map(str, expected_shape(scores)))}]")
    OUT.mkdir(exist_ok=True)
    out = OUT / f"{path.stem}.bin"
    compiled.program.save(out)
    t0 = time.perf_counter()
    result = api.simulate(compiled.program, x)
    sim_s = time.perf_counter() - t0
    sim = result.outputs[0]
    ref = api.reference(compiled, x)[0]
    flt = api.run_float(model, x)[0]
    acc = {name: float((out.argmax(1) == y).mean()) for name, out in (("float", flt), ("reference", ref), ("simulator", sim))}
    bit_exact = sim.tobytes() == ref.tobytes()
    total = compiled.counts["model"]["total"]
    coding = "TTFS, one pass" if ttfs_model else f"T={steps}"
    print(f"ttc demo: {path.name} on the {len(y)} held-out scikit-learn digits ({coding}), hardware {compiled.program.hw.name}")
    print(f"  {total['params']} parameters, {total['macs']:.0f} MACs per step ({total['adds']:.0f} on spikes, "
          f"{total['muls']:.0f} on multi-bit values)")
    print(f"  compiled in {compile_s:.2f} s to {out}: {len(compiled.program.code)} instructions; simulated in {sim_s:.2f} s")
    for layer, note in compiled.graph.notes.get("schedule", {}).items():
        print(f"  tensor-train layer {layer}: {note['variant']}, ranks {note['ranks']}, plan {note['chosen']}")
    for line in api.decay_notes(compiled.graph):
        print(f"  {line}")
    for name, a in acc.items():
        print(f"  accuracy  {name:<10} {100 * a:6.2f} %")
    print(f"  simulator vs quantized reference: {'bit-exact' if bit_exact else 'MISMATCH'} on all {len(y)} inputs")
    print(f"  simulator vs float model: top-1 agreement {100 * (sim.argmax(1) == flt.argmax(1)).mean():.2f} %, "
          f"max |output difference| {np.abs(sim - flt).max():.4f}")
    print(f"  per inference: {result.cycles} cycles ({result.cycles / (compiled.program.hw.frequency_mhz * 1e6) * 1e6:.1f} us at "
          f"{compiled.program.hw.frequency_mhz:g} MHz), {result.total_energy_pj / 1e6:.3f} uJ, "
          f"{result.counters.get('spike_add', 0):.0f} spike-driven adds, {result.counters.get('shift_add', 0):.0f} TTFS "
          f"shift-adds, {result.counters.get('mac', 0):.0f} MACs, "
          f"{result.counters.get('spike', 0):.0f} spikes")
    planes = {k: v for k, v in result.counters.items() if k.startswith("plane")}
    if "plane1_add" in planes:  # MT spikes: more than one plane
        print("  MT spike planes, per inference: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(planes.items())))
    print("  energy by component (nJ): " + ", ".join(f"{k} {v / 1e3:.2f}" for k, v in result.energy_pj.items()))
    return 0 if bit_exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
