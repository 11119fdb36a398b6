"""TTFS coding and conversion-aware training: the value grid, its integer rule, the CAT activation and
the 5-bit logarithmic weights (ttc.frontends.ttfs, docs/ttfs.md)."""
import math

import numpy as np
import pytest
import torch

from ttc.frontends.ttfs import (ZERO_EXPONENT, CATActivation, LogConv2d, LogLinear, log_quantize, log_weight_codes,
                                log_weight_values, spike_time, spike_value, weight_scale)

WINDOW = 8


def test_grid_values_spike_at_their_own_time_and_the_rest_round_in_log2():
    grid = torch.exp2(-torch.arange(WINDOW, dtype=torch.float32))
    assert torch.equal(spike_time(grid, WINDOW), torch.arange(WINDOW))
    for k in range(WINDOW - 1):  # the boundary between 2^-k and 2^-(k+1) is 2^-(k+1/2)
        edge = 2.0 ** -(k + 0.5)
        assert spike_time(torch.tensor([edge * 1.0001, edge * 0.9999]), WINDOW).tolist() == [k, k + 1]
    no_spike = torch.tensor([0.0, -0.5, 2.0 ** -(WINDOW - 0.5) * 0.999])
    assert spike_time(no_spike, WINDOW).tolist() == [WINDOW] * 3
    assert spike_time(torch.tensor([1.0, 3.0]), WINDOW).tolist() == [0, 0]  # above 1: the first step
    assert spike_value(torch.tensor([0, 3, WINDOW]), WINDOW).tolist() == [1.0, 0.125, 0.0]


def test_spike_time_equals_the_integer_rule_a_simulator_uses():
    """For v = a / 2^f: v >= 2^-(k+1/2) iff a^2 2^(2k+1) >= 2^(2f), with no square root or logarithm."""
    frac = 12
    a = np.random.default_rng(0).integers(1, 1 << 14, size=4000)
    want = []
    for ai in a.tolist():
        k = next((k for k in range(WINDOW) if ai * ai << (2 * k + 1) >= 1 << (2 * frac)), WINDOW)
        want.append(k)
    got = spike_time(torch.from_numpy(a / 2.0 ** frac), WINDOW)
    assert got.tolist() == want


def test_cat_activation_lands_on_the_grid_and_passes_the_clipped_relu_gradient():
    act = CATActivation(WINDOW)
    x = torch.linspace(-0.5, 1.5, 401, requires_grad=True)
    y = act(x)
    t = spike_time(y, WINDOW)
    assert torch.equal(y, spike_value(t, WINDOW)) and torch.equal(act(y), y)  # on the grid, idempotent
    assert (y[x <= 0] == 0).all() and (y[x >= 1] == 1).all()
    y.sum().backward()
    assert torch.equal(x.grad, ((x > 0) & (x <= 1)).float())
    with pytest.raises(ValueError, match="window"):
        CATActivation(17)


def test_log_weights_are_five_bits_with_one_power_of_two_scale_per_layer():
    w = torch.randn(64, 32) * 0.3
    w[0, :4] = torch.tensor([0.0, 1e-9, -1e-9, -w.abs().max().item()])
    codes, s = log_weight_codes(w)
    assert codes.dtype == torch.uint8 and int(codes.max()) < 1 << 5
    assert 2.0 ** (s - 0.5) < w.abs().max() < 2.0 ** (s + 0.5) and s == weight_scale(w)  # the peak on e = 0
    q = log_weight_values(codes, s)
    nonzero = q != 0
    e = (codes & 0xF).long()
    assert torch.equal(q[nonzero].abs(), torch.exp2((s - e[nonzero]).double()).float())
    assert torch.equal(torch.sign(q[nonzero]), torch.sign(w[nonzero]))
    # within half a step of the log grid; zero exactly below the last step's lower edge
    assert (torch.log2(q[nonzero].abs().double()) - torch.log2(w[nonzero].abs().double())).abs().max() <= 0.5
    assert (w[~nonzero].abs() < 2.0 ** (s - (ZERO_EXPONENT - 0.5))).all()
    assert q[0, 0] == q[0, 1] == q[0, 2] == 0 and q[0, 3] == -(2.0 ** s)
    assert torch.equal(log_weight_codes(q)[0], codes)  # quantised weights are their own codes
    assert [weight_scale(torch.tensor(v)) for v in ([3.0, -0.1], [2.5], [0.0])] == [2, 1, 0]


def test_log_layers_use_quantised_weights_and_train_straight_through():
    torch.manual_seed(0)
    conv, fc = LogConv2d(2, 3, 3, padding=1), LogLinear(12, 4)
    x = torch.rand(5, 2, 4, 4)
    y = conv(x)
    assert torch.allclose(y, torch.nn.functional.conv2d(x, log_quantize(conv.weight).detach(), conv.bias, padding=1))
    fc(CATActivation(WINDOW)(y).flatten(1)[:, :12]).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert fc.weight.grad.abs().sum() > 0
    assert math.log2(float(log_quantize(fc.weight).detach().abs().max())) == weight_scale(fc.weight)


def test_the_committed_cat_digits_ann_is_trained_and_runs_on_the_grid():
    """examples/digits/cat_digits_ann.pt (python examples/digits/train.py --cat): every activation is a
    TTFS value, every weight a 5-bit log weight, and it classifies the held-out digits."""
    from ttc.demo import EXAMPLES
    from ttc.digits import load_digits_split

    model = torch.load(EXAMPLES / "cat_digits_ann.pt", weights_only=False).eval()
    _, _, x, y = load_digits_split()
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, out: seen.append((m.window, out)))
             for m in model.modules() if isinstance(m, CATActivation)]
    with torch.no_grad():
        logits = model(torch.from_numpy(x[0]))
    for h in hooks:
        h.remove()
    assert len(seen) == 4
    for window, out in seen:
        assert torch.equal(out, spike_value(spike_time(out, window), window))
    for m in model.modules():
        if isinstance(m, (LogConv2d, LogLinear)):
            codes, s = log_weight_codes(m.weight)
            assert len(torch.unique(codes & 0xF)) <= ZERO_EXPONENT + 1
            assert torch.equal(log_weight_values(codes, s), log_quantize(m.weight).detach())
    assert (logits.argmax(1).numpy() == y).mean() >= 0.95
