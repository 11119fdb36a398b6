"""The embedded default: scikit-learn's 8x8 digits (shipped inside its wheel), the small convolutional
LIF SNN the demo compiles, the other digits examples' builders, and the training loop that
examples/digits/train.py and bench/mt_digits.py run."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ttc.frontends import modules as M
from ttc.frontends import ttfs

STEPS = 4
HELD_OUT = 360  # a fixed, stratified fifth of the 1797 digits


def load_digits_split(steps: int = STEPS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); x is [steps, N, 1, 8, 8] float32 in [0, 1], the static
    image repeated at every step (direct coding), laid out exactly as the model's forward takes it."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(images, digits.target, test_size=HELD_OUT, random_state=0,
                                              stratify=digits.target)
    seq = lambda x: np.ascontiguousarray(np.broadcast_to(x, (steps, *x.shape)))
    return seq(x_tr), y_tr.astype(np.int64), seq(x_te), y_te.astype(np.int64)


def _lif() -> M.LIF:
    return M.LIF(decay=0.5, threshold=0.5)


def build_digits_snn() -> nn.Sequential:
    """[T, N, 1, 8, 8] -> [N, 10]: two conv-BN-LIF-maxpool blocks and a linear rate readout."""
    return nn.Sequential(
        M.Conv2d(1, 8, 3, padding=1, bias=False), M.BatchNorm2d(8), _lif(), M.MaxPool2d(2),
        M.Conv2d(8, 16, 3, padding=1, bias=False), M.BatchNorm2d(16), _lif(), M.MaxPool2d(2),
        M.Flatten(), M.Linear(64, 10), M.TimeMean())


def build_tt_digits_snn(variant: str = "stt", rank: int = 4) -> nn.Sequential:
    """[T, N, 1, 8, 8] -> [N, 10], a small TT-SNN: a dense 3x3 stem (it reads the multi-bit image, which
    TT-SNN keeps dense), then two tensor-train 3x3 convs of `rank` in `variant`, each with BN, LIF and
    a 2x2 max pool, and a linear rate readout."""
    return nn.Sequential(
        M.Conv2d(1, 16, 3, padding=1, bias=False), M.BatchNorm2d(16), _lif(),
        M.TTConv2d(16, 16, rank, variant), M.BatchNorm2d(16), _lif(), M.MaxPool2d(2),
        M.TTConv2d(16, 32, rank, variant), M.BatchNorm2d(32), _lif(), M.MaxPool2d(2),
        M.Flatten(), M.Linear(128, 10), M.TimeMean())


def train_tt_digits_snn(rank: int = 4, variant: str = "stt", epochs: int = 20, seed: int = 0) -> nn.Sequential:
    """`build_tt_digits_snn(variant, rank)` trained on the digits' training split by examples/digits/train.py's
    recipe for `epochs` epochs (about 10 s at 20): the model builder a sweep over TT ranks trains a model
    per rank with. Deterministic: seeded, and on one thread whatever torch's setting (which is restored)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        return train(build_tt_digits_snn(variant, rank), epochs, verbose=False)
    finally:
        torch.set_num_threads(threads)


def build_mt_digits_snn(levels: int = 4, mode: str = "parallel") -> nn.Sequential:
    """[T, N, 1, 8, 8] -> [N, 10], the MT-SNN example (docs/mt.md): two conv-BN blocks of multi-threshold
    PLIF neurons (`levels` thresholds in `mode`; threshold 1, learnt decay), the second conv strided by 2
    (MT spikes feed layers, not pools), and a linear rate readout. levels = 1 is the single-threshold SNN
    of the same shape."""
    mt = lambda: M.MTNeuron(levels, mode, threshold=1.0, decay=0.5, learn_decay=True)
    return nn.Sequential(
        M.Conv2d(1, 16, 3, padding=1, bias=False), M.BatchNorm2d(16), mt(),
        M.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), M.BatchNorm2d(32), mt(),
        M.Flatten(), M.Linear(512, 10), M.TimeMean())


def build_cat_digits_ann(window: int = 8) -> nn.Sequential:
    """[N, 1, 8, 8] -> [N, 10], the TTFS example: a VGG-style ANN trained with conversion-aware training
    (docs/ttfs.md). The image goes onto the TTFS value grid first (the input spikes); then three 3x3
    convs with 5-bit logarithmic weights (1->16, 16->16, 16->32), each followed by the CAT activation,
    the last two by a 2x2 max pool, and a logarithmic linear readout (its accumulators are the logits)."""
    act = lambda: ttfs.CATActivation(window)
    return nn.Sequential(
        act(), ttfs.LogConv2d(1, 16, 3, padding=1), act(),
        ttfs.LogConv2d(16, 16, 3, padding=1), act(), nn.MaxPool2d(2),
        ttfs.LogConv2d(16, 32, 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Flatten(), ttfs.LogLinear(128, 10))


def build_fc_snn(hidden: int = 64, seed: int = 0) -> nn.Sequential:
    """[T, N, 1, 8, 8] -> [N, 10], the network the training demo trains on the simulator: a fully connected
    LIF layer of `hidden` neurons (hard reset, decay 1/2, threshold 1/2) and a linear rate readout, no
    biases (the training step trains weights)."""
    torch.manual_seed(seed)
    return nn.Sequential(M.Flatten(), M.Linear(64, hidden, bias=False), _lif(), M.Linear(hidden, 10, bias=False),
                         M.TimeMean())


def _recipe_forward(model: nn.Sequential, x: torch.Tensor, band: float) -> torch.Tensor:
    """The float forward of a chain of Flatten, Linear, LIF/IF and TimeMean, with the training step's
    surrogate (1 within band * threshold of the threshold) and its detached reset."""
    from ttc.compiler.train_float import float_neuron

    for m in model:
        x = float_neuron(x, m.decay, m.threshold, band * m.threshold, m.reset, m.v_reset, m.v_init,
                         cmp=m.cmp) if isinstance(m, M.LIF) else m(x)
    return x


def train_recipe(model: nn.Sequential, x: np.ndarray, y: np.ndarray, epochs: int, lr_shift: int, band: float,
                 batch: int, seed: int = 0, loss: str = "mse") -> nn.Sequential:
    """The training step's recipe in float PyTorch (what `python -m ttc.demo --train` compares the simulator
    with): the same batches in the same order (`ttc.runtime.train.fit`'s), plain SGD at 2^-lr_shift on the
    loss summed over the batch, 1/2 (output - one-hot)^2 (times (T / 2^ceil(log2 T))^2, as the machine's)
    or the softmax cross-entropy (`loss` "ce"), the rectangular surrogate and the detached reset."""
    steps = x.shape[0]
    scale = (steps / 2 ** int(np.ceil(np.log2(steps)))) ** 2
    opt = torch.optim.SGD(model.parameters(), lr=2.0 ** -lr_shift)
    rng = np.random.default_rng(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for k in range(len(y) // batch):
            idx = torch.from_numpy(order[k * batch:(k + 1) * batch])
            out = _recipe_forward(model, xs.index_select(1, idx), band)
            if loss == "ce":
                value = nn.functional.cross_entropy(out, ys[idx], reduction="sum")
            else:
                value = 0.5 * scale * ((out - nn.functional.one_hot(ys[idx], out.shape[1]).float()) ** 2).sum()
            opt.zero_grad()
            value.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(model: nn.Module, epochs: int, static: bool = False, batch: int = 64, lr: float = 3e-3,
          steps: int = STEPS, verbose: bool = True) -> nn.Module:
    """`static`: the model takes the image [N, 1, 8, 8] once (an ANN), not repeated over `steps` time steps;
    `verbose`: print the accuracies every 10 epochs."""
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in load_digits_split(steps))
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
        if verbose and (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: train {accuracy(model, x_tr, y_tr):.4f}, held-out {accuracy(model, x_te, y_te):.4f}")
    return model.eval()
