"""Training on the simulator against training in PyTorch, side by side in one run (docs/training.md).

The digits FC SNN (`ttc.digits.build_fc_snn`, 64-64-10 LIF, T = 4) is trained for `--epochs` on the 1437
training digits twice from the same initial weights, batches and order: on the simulator through its
compiled training step (`ttc.runtime.train.fit`), and by the same recipe in float PyTorch eager
(`ttc.digits.train_recipe`), both on one thread. Prints the wall time of each, their ratio (how many
times slower the simulator is; lower is better), the held-out accuracies, and the modelled machine's
cycles and energy per step by phase.

    python bench/train_digits.py [--epochs 10] [--loss mse|ce] [--active-band B] [--json FILE]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttc import api  # noqa: E402
from ttc.compiler.train import TrainOptions  # noqa: E402
from ttc.digits import build_fc_snn, load_digits_split, train_recipe  # noqa: E402
from ttc.isa.files import atomic_write  # noqa: E402
from ttc.runtime.train import Trainer, accuracy, fit  # noqa: E402

BATCH, LR_SHIFT, BAND, HIDDEN, CALIBRATION = 32, 7, 0.5, 64, 64


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--loss", choices=("mse", "ce"), default="mse")
    ap.add_argument("--active-band", type=float, metavar="B", help="SSGD's sparse backward with this band")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    model = build_fc_snn(HIDDEN)
    band = BAND if a.active_band is None else a.active_band
    options = TrainOptions(lr_shift=LR_SHIFT, band=band, sparse=a.active_band is not None, batch=BATCH, loss=a.loss)
    t0 = time.perf_counter()
    calibration = x_tr[:, :CALIBRATION], y_tr[:CALIBRATION]  # the gradients' formats are set for these
    compiled = api.compile_training(model, "4,N,1,8,8", train=options, calibration=calibration, input_bits=8,
                                    input_frac=4)
    compile_s = time.perf_counter() - t0
    trainer = Trainer(compiled.program, BATCH)
    t0 = time.perf_counter()
    history = fit(trainer, x_tr, y_tr, a.epochs)  # training only, as on the PyTorch side
    sim_s = time.perf_counter() - t0
    sim_acc = accuracy(trainer.inference_program(), x_te, y_te)
    t0 = time.perf_counter()
    trained = train_recipe(copy.deepcopy(model), x_tr, y_tr, a.epochs, LR_SHIFT, band, BATCH, loss=a.loss)
    torch_s = time.perf_counter() - t0
    torch_acc = float((api.run_float(trained, x_te)[0].argmax(1) == y_te).mean())
    last = history[-1]
    figures = dict(epochs=a.epochs, loss=a.loss, band=band, sparse=options.sparse, compile_s=compile_s, sim_s=sim_s,
                   torch_s=torch_s, ratio=sim_s / torch_s, sim_accuracy=sim_acc,
                   torch_accuracy=torch_acc, steps_per_epoch=last.steps,
                   per_step={p: dict(cycles=last.cycles[p], energy_uj=sum(last.energy_pj[p].values()) / 1e6)
                             for p in ("forward", "backward", "update")})
    print(f"digits FC 64-{HIDDEN}-10 LIF, T=4, batch {BATCH}, {a.epochs} epochs of {last.steps} steps, loss {a.loss}, "
          f"band {band:g}{' (sparse)' if options.sparse else ''}; one thread each")
    print(f"  simulator {sim_s:.2f} s (compile {compile_s:.2f} s), PyTorch eager {torch_s:.2f} s: "
          f"sim/torch {sim_s / torch_s:.1f}")
    print(f"  held-out accuracy: simulator {100 * sim_acc:.2f} %, PyTorch {100 * torch_acc:.2f} %")
    for phase, f in figures["per_step"].items():
        print(f"  per step, {phase:<8}: {f['cycles']:>10,.0f} cycles, {f['energy_uj']:.3f} uJ")
    if a.json:
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
