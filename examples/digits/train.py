"""Train a digits model and save it with torch.save: the demo's SNN (ttc.digits.build_digits_snn,
the default), the TT-SNN example (--tt VARIANT: ttc.digits.build_tt_digits_snn), both with surrogate
gradients, or the TTFS example (--cat: ttc.digits.build_cat_digits_ann, an ANN with conversion-aware
training). Deterministic on the CPU; takes about a minute.

    python examples/digits/train.py [-o examples/digits/digits_snn.pt] [--epochs 40] [--seed 0]
    python examples/digits/train.py --tt stt -o examples/digits/tt_digits_snn.pt
    python examples/digits/train.py --cat -o examples/digits/cat_digits_ann.pt
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ttc.digits import build_cat_digits_ann, build_digits_snn, build_tt_digits_snn, load_digits_split


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(model: nn.Module, epochs: int, static: bool = False, batch: int = 64, lr: float = 3e-3) -> nn.Module:
    """`static`: the model takes the image [N, 1, 8, 8] once (an ANN), not repeated over time steps."""
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in load_digits_split())
    if static:
        x_tr, x_te = x_tr[0], x_te[0]
    batch_dim = 0 if static else 1
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(y_tr.numel()).split(batch):
            loss = nn.functional.cross_entropy(model(x_tr.index_select(batch_dim, idx)) * 4, y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: train {accuracy(model, x_tr, y_tr):.4f}, held-out {accuracy(model, x_te, y_te):.4f}")
    return model.eval()


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
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = build_tt_digits_snn(args.tt) if args.tt else build_cat_digits_ann() if args.cat else build_digits_snn()
    save_atomically(train(model, args.epochs, static=args.cat), args.output)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
