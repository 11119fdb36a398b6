"""The demo: compile the embedded digits SNN, run the 360 held-out digits on the simulator and
compare the float model, the quantized reference and the simulator. `make demo` runs this."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ttc import api
from ttc.digits import load_digits_split

MODEL = Path(__file__).resolve().parent.parent / "examples" / "digits" / "digits_snn.pt"
OUT = Path("out")


def main() -> int:
    _, _, x, y = load_digits_split()
    t0 = time.perf_counter()
    compiled = api.compile_file(MODEL, "4,N,1,8,8")
    compile_s = time.perf_counter() - t0
    OUT.mkdir(exist_ok=True)
    compiled.program.save(OUT / "digits.bin")
    model = api.load_model(MODEL)
    t0 = time.perf_counter()
    result = api.simulate(compiled.program, x)
    sim_s = time.perf_counter() - t0
    sim = result.outputs[0]
    ref = api.reference(compiled, x)[0]
    flt = api.run_float(model, x)[0]
    acc = {name: float((out.argmax(1) == y).mean()) for name, out in (("float", flt), ("reference", ref), ("simulator", sim))}
    bit_exact = sim.tobytes() == ref.tobytes()
    print(f"ttc demo: {MODEL.name} on the {len(y)} held-out scikit-learn digits (T=4), hardware {compiled.program.hw.name}")
    print(f"  compiled in {compile_s:.2f} s to {OUT / 'digits.bin'}: {len(compiled.program.code)} instructions; simulated in {sim_s:.2f} s")
    for name, a in acc.items():
        print(f"  accuracy  {name:<10} {100 * a:6.2f} %")
    print(f"  simulator vs quantized reference: {'bit-exact' if bit_exact else 'MISMATCH'} on all {len(y)} inputs")
    print(f"  simulator vs float model: top-1 agreement {100 * (sim.argmax(1) == flt.argmax(1)).mean():.2f} %, "
          f"max |output difference| {np.abs(sim - flt).max():.4f}")
    print(f"  per inference: {result.cycles} cycles ({result.cycles / (compiled.program.hw.frequency_mhz * 1e6) * 1e6:.1f} us at "
          f"{compiled.program.hw.frequency_mhz:g} MHz), {result.total_energy_pj / 1e6:.3f} uJ, "
          f"{result.counters.get('spike_add', 0):.0f} spike-driven adds, {result.counters.get('mac', 0):.0f} MACs, "
          f"{result.counters.get('spike', 0):.0f} spikes")
    print("  energy by component (nJ): " + ", ".join(f"{k} {v / 1e3:.2f}" for k, v in result.energy_pj.items()))
    return 0 if bit_exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
