"""The demo: compile the embedded digits SNN (or, with --model, another digits model: the TT-SNN example
examples/digits/tt_digits_snn.pt, the TTFS example examples/digits/cat_digits_ann.pt, a CAT-trained
ANN that runs once per digit, or the MT-SNN example examples/digits/mt_digits_snn.pt with --steps 1),
run the 360 held-out digits on the simulator and compare the float model, the quantized reference
and the simulator. `make demo` runs this.

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
    ap.add_argument("-v", "--verbose", action="store_true", help="on an error, print the traceback")
    args = ap.parse_args(argv)
    return run_reporting(lambda: demo(args.model, args.steps), args.verbose, ["python", "-m", "ttc.demo", *argv])


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
