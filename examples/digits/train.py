"""Train a digits model and save it with torch.save: the demo's SNN (ttc.digits.build_digits_snn,
the default), the TT-SNN example (--tt VARIANT: ttc.digits.build_tt_digits_snn), both with surrogate
gradients, the TTFS example (--cat: ttc.digits.build_cat_digits_ann, an ANN with conversion-aware
training), or the MT-SNN example (--mt MODE --levels K: ttc.digits.build_mt_digits_snn, PLIF neurons
with K thresholds). --steps sets the time steps of the SNNs. Deterministic on the CPU; takes about a minute.

    python examples/digits/train.py [-o examples/digits/digits_snn.pt] [--epochs 40] [--seed 0]
    python examples/digits/train.py --tt stt -o examples/digits/tt_digits_snn.pt
    python examples/digits/train.py --cat -o examples/digits/cat_digits_ann.pt
    python examples/digits/train.py --mt parallel --levels 4 --steps 1 -o examples/digits/mt_digits_snn.pt
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ttc.digits import STEPS, build_cat_digits_ann, build_digits_snn, build_mt_digits_snn, build_tt_digits_snn, train


def save_atomically(model: nn.Module, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("digits_snn.pt"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--tt", choices=("stt", "ptt", "htt"), help="train the TT-SNN example in this variant")
    kind.add_argument("--cat", action="store_true", help="train the TTFS example: an ANN with conversion-aware training")
    kind.add_argument("--mt", choices=("parallel", "cascade"), help="train the MT-SNN example in this mode")
    ap.add_argument("--levels", type=int, default=4, help="thresholds of the MT-SNN's neurons (1..4)")
    ap.add_argument("--steps", type=int, default=STEPS, help="time steps of an SNN")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = (build_tt_digits_snn(args.tt) if args.tt else build_cat_digits_ann() if args.cat
             else build_mt_digits_snn(args.levels, args.mt) if args.mt else build_digits_snn())
    save_atomically(train(model, args.epochs, static=args.cat, steps=args.steps), args.output)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
