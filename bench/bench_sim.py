"""Simulator speed against PyTorch, measured side by side in one run (`make bench`).

For each model and batch: PyTorch eager forward time, the simulator's time for the same batch (which
also checks its outputs equal the quantized reference bit for bit first), the quantized reference's
time, and compile time. Times are medians over --repeats runs after one warm-up; the ratios divide by
the PyTorch time of the same run on the same machine.

    python bench/bench_sim.py [--models digits cifar4] [--repeats 5] [--json out/bench.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ttc import api
from ttc.demo import MODEL as DIGITS_MODEL
from ttc.digits import STEPS, load_digits_split
from ttc.isa.files import atomic_write
from ttc.models import vgg_snn


def digits(batch: int):
    x = load_digits_split()[2]
    reps = -(-batch // x.shape[1])
    return api.load_model(DIGITS_MODEL), np.concatenate([x] * reps, axis=1)[:, :batch], f"{STEPS},N,1,8,8"


def cifar(batch: int):
    x = np.random.default_rng(0).random((4, batch, 3, 32, 32), dtype=np.float32)
    return vgg_snn(widths=(32, 64, 128, 128), pool_after=(1, 2, 3)), x, "4,N,3,32,32"


MODELS = {"digits": (digits, 256), "cifar4": (cifar, 32)}


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, batch: int, repeats: int) -> dict:
    model, x, shape = MODELS[name][0](batch)
    t0 = time.perf_counter()
    compiled = api.compile_model(model, shape)
    compile_s = time.perf_counter() - t0
    result = api.simulate(compiled.program, x)
    if result.outputs[0].tobytes() != api.reference(compiled, x)[0].tobytes():
        raise SystemExit(f"{name}: the simulator differs from the quantized reference; not benchmarking wrong output")
    torch_s = median_time(lambda: api.run_float(model, x), repeats)
    sim_s = median_time(lambda: api.simulate(compiled.program, x), repeats)
    ref_s = median_time(lambda: api.reference(compiled, x), repeats)
    return dict(model=name, batch=batch, torch_s=torch_s, simulator_s=sim_s, reference_s=ref_s, compile_s=compile_s,
                simulator_over_torch=sim_s / torch_s, reference_over_torch=ref_s / torch_s,
                instructions=len(compiled.program.code), cycles_per_inference=result.cycles,
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
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    env = dict(cpu=cpu_name(), torch=torch.__version__, torch_threads=torch.get_num_threads(), numpy=np.__version__)
    print(f"{env['cpu']}; torch {env['torch']} with {env['torch_threads']} threads; numpy {env['numpy']}; "
          f"median of {args.repeats} runs")
    print(f"{'model':<8} {'batch':>5} {'torch s':>9} {'sim s':>9} {'sim/torch':>10} {'ref s':>9} {'ref/torch':>10} "
          f"{'compile s':>10} {'instrs':>7} {'cycles':>10} {'spikes':>9}")
    rows = []
    for name in args.models:
        r = bench(name, args.batch or MODELS[name][1], args.repeats)
        rows.append(r)
        print(f"{r['model']:<8} {r['batch']:>5} {r['torch_s']:>9.4f} {r['simulator_s']:>9.4f} "
              f"{r['simulator_over_torch']:>10.1f} {r['reference_s']:>9.4f} {r['reference_over_torch']:>10.1f} "
              f"{r['compile_s']:>10.2f} {r['instructions']:>7} {r['cycles_per_inference']:>10} "
              f"{r['spikes_per_inference']:>9.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(dict(environment=env, results=rows), indent=1)))


if __name__ == "__main__":
    main()
