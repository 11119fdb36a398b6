"""Simulator speed against PyTorch, measured side by side in one run (`make bench`), both backends.

For each model and batch: PyTorch eager's forward time, the simulator's for the same batch with its
NumPy backend and with its JIT backend (cycles and energy on: every run prices what the machine did), the
quantized reference interpreter's, and compile time. The JIT's first run also prepares the program (its
kernel calls, its timeline and hazard check: once per program), so it is reported apart. Every backend's
outputs are checked bit for bit against the quantized reference first. Times are medians over --repeats
runs after one warm-up, one thread each; the ratios divide by the PyTorch time of the same run.

    python bench/sim_speed.py [--models digits cifar4 vgg tt19] [--repeats 5] [--numpy-tt19] [--json FILE]

The TT-ResNet-19 (STT, rank 16, [6, 1, 2, 48, 48] events at 20 %) runs on the JIT only unless --numpy-tt19
(its NumPy run takes minutes).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttc import api  # noqa: E402
from ttc.demo import MODEL as DIGITS_MODEL  # noqa: E402
from ttc.digits import STEPS, load_digits_split  # noqa: E402
from ttc.isa.files import atomic_write  # noqa: E402
from ttc.models import RESNETS, tt_resnet, vgg_snn  # noqa: E402
from ttc.runtime.run import run  # noqa: E402
from ttc.simulator import native  # noqa: E402


def digits(batch: int):
    x = load_digits_split()[2]
    reps = -(-batch // x.shape[1])
    return api.load_model(DIGITS_MODEL), np.concatenate([x] * reps, axis=1)[:, :batch], f"{STEPS},N,1,8,8", {}


def cifar(batch: int):
    x = np.random.default_rng(0).random((4, batch, 3, 32, 32), dtype=np.float32)
    return vgg_snn(widths=(32, 64, 128, 128), pool_after=(1, 2, 3)), x, "4,N,3,32,32", {}


def vgg(batch: int):
    x = np.random.default_rng(0).random((4, batch, 3, 32, 32), dtype=np.float32)
    return vgg_snn(), x, "4,N,3,32,32", {}


def tt19(batch: int):
    ranks = [16] * 2 * sum(RESNETS[19][0])
    net = tt_resnet(ranks=ranks, variant="stt", depth=19, in_channels=2, size=48, steps=None)
    x = (np.random.default_rng(0).random((6, batch, 2, 48, 48)) < 0.2).astype(np.float32)
    return net, x, "6,N,2,48,48", dict(input_encoding="spikes")


#: name: (builder, batch, what)
MODELS = {"digits": (digits, 256, "the demo's trained digits SNN, held-out digits repeated"),
          "cifar4": (cifar, 32, "4-conv VGG-style LIF SNN (32-64-128-128), T = 4, random weights that spike"),
          "vgg": (vgg, 8, "5-conv VGG LIF SNN (64-128-256-256-512), T = 4"),
          "tt19": (tt19, 1, "TT-ResNet-19 STT rank 16 on 48x48 events, T = 6")}


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, batch: int, repeats: int, numpy_backend: bool) -> dict:
    model, x, shape, options = MODELS[name][0](batch)
    t0 = time.perf_counter()
    compiled = api.compile_model(model, shape, **options)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run(compiled.program, [x], "jit")  # the first run: the program's preparation too
    first_jit_s = time.perf_counter() - t0
    expected = [o.tobytes() for o in api.reference(compiled, x)]
    backends = ["jit", "numpy"] if numpy_backend else ["jit"]
    for backend in backends:
        outputs = run(compiled.program, [x], backend).outputs
        if [o.tobytes() for o in outputs] != expected:
            raise SystemExit(f"{name}: the {backend} simulator differs from the quantized reference; not benchmarking")
    with torch.no_grad():
        torch_s = median_time(lambda: api.run_float(model, x), repeats)
    times = {b: median_time(lambda b=b: run(compiled.program, [x], b), repeats if b == "jit" else min(repeats, 1))
             for b in backends}
    return dict(model=name, batch=batch, instructions=len(compiled.program.code), compile_s=compile_s,
                torch_s=torch_s, jit_s=times["jit"], jit_over_torch=times["jit"] / torch_s, first_jit_s=first_jit_s,
                numpy_s=times.get("numpy"), numpy_over_torch=times["numpy"] / torch_s if "numpy" in times else None,
                cycles_per_inference=result.cycles, energy_uj_per_inference=result.total_energy_pj / 1e6,
                spikes_per_inference=result.counters.get("spike", 0))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--batch", type=int, help="override every model's batch size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--numpy-tt19", action="store_true", help="also time the TT-ResNet-19 on the NumPy backend")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    native.compiled()  # the kernels, once per process (not charged to the first model)
    env = dict(cpu=cpu_name(), torch=torch.__version__, torch_threads=torch.get_num_threads(), numpy=np.__version__)
    print(f"{env['cpu']}; torch {env['torch']} with {env['torch_threads']} thread; numpy {env['numpy']}; "
          f"median of {args.repeats} runs (NumPy: 1)")
    print("| model | batch | instructions | torch s | NumPy s | NumPy/torch | JIT s | JIT/torch | JIT first run s | "
          "cycles | uJ | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for name in args.models:
        r = bench(name, args.batch or MODELS[name][1], args.repeats, name != "tt19" or args.numpy_tt19)
        rows.append(r)
        numpy_cols = (f"{r['numpy_s']:.3f} | {r['numpy_over_torch']:.1f}" if r["numpy_s"] is not None else "- | -")
        print(f"| {r['model']} | {r['batch']} | {r['instructions']:,} | {r['torch_s']:.4f} | {numpy_cols} | "
              f"{r['jit_s']:.3f} | {r['jit_over_torch']:.1f} | {r['first_jit_s']:.2f} | {r['cycles_per_inference']:,} | "
              f"{r['energy_uj_per_inference']:.1f} | {r['compile_s']:.2f} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(dict(environment=env, results=rows), indent=1)))


if __name__ == "__main__":
    main()
