"""A small TT-ResNet's training step, dense, STT, PTT and HTT, beside its inference (docs/training.md).

An MS-ResNet for 8x8 digits (`--width` channels, two residual blocks of stride 1 and one of stride 2, a
LIF, a global average pool and a linear readout, T = 4 direct coding) with its 3x3 convs dense or tensor-
train of `--rank` in STT, PTT or HTT (a TT block that downsamples max-pools multi-bit values, which the
training step does not differentiate, so the stride-2 block stays dense). For each version: the inference
program's cycles and energy per sample, and the training step's per phase (the forward and backward per
sample, the update per batch) on the simulator for one batch of `--batch` digits, each simulated step
checked bit for bit against the integer training reference, and how far the step's weight gradients are
from float64 autograd of the same network (the largest relative error, ||dW - dW_float|| / ||dW_float||,
over the layers), and how many layers get no gradient at all on the batch (the training forward's formats
hold any weights the update can reach, so a deep chain of multi-bit cores is rescaled by many bits, and a
core's input can round to zero). The gradients' formats are calibrated on 64 other training digits. The paper's
TT-ResNets (ResNet-19, -34 at 32x32 and more) do not fit the buffers untiled: training does not tile yet.

    python bench/tt_training.py [--width 8] [--rank 4] [--batch 16] [--hw sata] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttc import api  # noqa: E402
from ttc.compiler.train import TrainOptions  # noqa: E402
from ttc.compiler.train_float import float_gradients  # noqa: E402
from ttc.compiler.train_reference import TrainingReference  # noqa: E402
from ttc.digits import load_digits_split  # noqa: E402
from ttc.frontends import modules as M  # noqa: E402
from ttc.isa.files import atomic_write  # noqa: E402
from ttc.models import spiking_statistics  # noqa: E402
from ttc.runtime.train import Trainer  # noqa: E402

STEPS = 4


def tt_resnet_digits(width: int, rank: int | None, variant: str, seed: int = 0) -> nn.Sequential:
    """The bench's MS-ResNet: dense (`rank` None) or TT blocks of `rank` in `variant`."""
    torch.manual_seed(seed)
    ranks = None if rank is None else (rank, rank)
    net = nn.Sequential(
        M.DirectEncoder(STEPS), M.Conv2d(1, width, 3, padding=1, bias=False), M.BatchNorm2d(width),
        M.MSBlock(width, width, ranks=ranks, variant=variant, decay=0.5, threshold=0.5),
        M.MSBlock(width, width, ranks=ranks, variant=variant, decay=0.5, threshold=0.5),
        M.MSBlock(width, 2 * width, stride=2, decay=0.5, threshold=0.5),
        M.LIF(decay=0.5, threshold=0.5), M.AvgPool2d(4), M.Flatten(), M.Linear(2 * width, 10), M.TimeMean())
    return spiking_statistics(net, seed + 1)


def measure(name: str, model: nn.Module, x: np.ndarray, labels: np.ndarray, batch: int, hw: str,
            calibration: tuple[np.ndarray, np.ndarray]) -> dict:
    inference = api.compile_model(model, "N,1,8,8", hw, input_bits=8, input_frac=4)
    run = api.simulate(inference, x)
    compiled = api.compile_training(model, "N,1,8,8", hw, train=TrainOptions(batch=batch, lr_shift=8),
                                    calibration=calibration, input_bits=8, input_frac=4)
    train = compiled.program.meta["train"]
    trainer = Trainer(compiled.program, batch)
    reference = TrainingReference(compiled.quantized, train)
    floats = float_gradients(compiled.quantized, train, x, labels, reference.weights, reference.biases)
    stats = trainer.step(x, labels)
    ints = reference.step(x, labels)["dw"]
    error = max(float((ints[r["name"]].double() * 2.0 ** -r["dw_frac"] - floats[r["name"]]).norm()
                      / floats[r["name"]].norm()) for r in train["layers"] if floats[r["name"]].norm() > 0)
    dead = sum(not ints[r["name"]].any() for r in train["layers"])
    exact = all(np.array_equal(w, reference.weights[n].numpy()) for n, w in trainer.weights().items())
    weights = sum(int(np.prod(w.shape)) for w in trainer.weights().values())
    phases = {p: dict(cycles=stats.cycles[p], energy_uj=sum(stats.energy_pj[p].values()) / 1e6)
              for p in ("forward", "backward", "update")}
    return dict(model=name, weights=weights, inference_cycles=run.cycles,
                inference_energy_uj=run.total_energy_pj / 1e6, step=phases, batch=batch, bit_exact=exact,
                gradient_error=error, layers=len(train["layers"]), without_gradient=dead)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hw", default="sata")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    x_tr, y_tr, _, _ = load_digits_split()
    x, labels = x_tr[0, :a.batch], y_tr[:a.batch]
    calibration = x_tr[0, a.batch:a.batch + 64], y_tr[a.batch:a.batch + 64]
    rows = [measure(name, tt_resnet_digits(a.width, rank, variant), x, labels, a.batch, a.hw, calibration)
            for name, rank, variant in (("dense", None, "stt"), ("STT", a.rank, "stt"), ("PTT", a.rank, "ptt"),
                                        ("HTT", a.rank, "htt"))]
    print(f"MS-ResNet for 8x8 digits, width {a.width}, TT rank {a.rank}, T={STEPS}, hardware {a.hw}; a training step "
          f"of {a.batch} samples (forward and backward per sample, the update once)")
    print("| model | trained weights | inference cycles | inference uJ | step: forward cycles | forward uJ | "
          "backward cycles | backward uJ | update cycles | update uJ | bit-exact | dW relative error vs float64 | "
          "layers without gradient |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["step"]
        print(f"| {r['model']} | {r['weights']:,} | {r['inference_cycles']:,} | {r['inference_energy_uj']:.2f} | "
              f"{s['forward']['cycles']:,} | {s['forward']['energy_uj']:.2f} | {s['backward']['cycles']:,} | "
              f"{s['backward']['energy_uj']:.2f} | {s['update']['cycles']:,} | {s['update']['energy_uj']:.2f} | "
              f"{'yes' if r['bit_exact'] else 'NO'} | {r['gradient_error']:.1e} | "
              f"{r['without_gradient']} of {r['layers']} |")
    if a.json:
        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(rows, indent=2) + "\n"))
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
