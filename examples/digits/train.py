"""Train the demo's digits SNN (ttc.digits.build_digits_snn) with surrogate gradients and save it
with torch.save. Deterministic on the CPU; takes well under a minute.

    python examples/digits/train.py [-o examples/digits/digits_snn.pt] [--epochs 40] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ttc.digits import build_digits_snn, load_digits_split


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(epochs: int, seed: int, batch: int = 64, lr: float = 3e-3) -> nn.Module:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in load_digits_split())
    model = build_digits_snn()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(y_tr.numel()).split(batch):
            loss = nn.functional.cross_entropy(model(x_tr[:, idx]) * 4, y_tr[idx])
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
    args = ap.parse_args()
    torch.set_num_threads(1)
    save_atomically(train(args.epochs, args.seed), args.output)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
