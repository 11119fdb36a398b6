"""TTFS coding and conversion-aware training: the value grid, its integer rule, the CAT activation,
the 5-bit logarithmic weights (ttc.frontends.ttfs, docs/ttfs.md), the machine's TTFS arithmetic
(ttc.isa.ttfs), and CAT ANNs and converted TTFS networks compiled and simulated bit for bit."""
import math

import numpy as np
import pytest
import torch

from ttc.frontends.ttfs import (ZERO_EXPONENT, CATActivation, LogConv2d, LogLinear, convert, log_quantize,
                                log_weight_codes, log_weight_values, spike_time, spike_value, weight_scale)
from ttc.isa import asm
from ttc.isa.program import Program
from ttc.isa.ttfs import fire_times, leading_one, synapse_weights, time_values

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


# ------------------------------------------------------------------ the machine's integer arithmetic

def test_the_machines_firing_rule_equals_the_float_grid():
    """isa.ttfs.fire_times (leading one and one compare, integers only) gives spike_time's times on
    accumulators of every magnitude, at several fracs, including both sides of every rounding edge."""
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.integers(-(1 << 20), 1 << 31, size=20000), np.arange(-3, 3000),
                        [math.isqrt(1 << (2 * p + 1)) + d for p in range(31) for d in (-1, 0, 1)]])
    for frac in (0, 7, 15, 22):
        want = spike_time(torch.from_numpy(a.astype(np.float64) / 2.0 ** frac), WINDOW).numpy()
        assert np.array_equal(fire_times(a, frac, WINDOW), want)
    assert leading_one(np.array([1, 2, 3, (1 << 62) + 5])).tolist() == [0, 1, 1, 62]


def test_a_spike_adds_a_shifted_sign_and_terms_below_the_last_bit_drop():
    codes = np.array([0, 1 << 4 | 2, 5, ZERO_EXPONENT, 1 << 4 | 14], dtype=np.uint8)
    assert synapse_weights(codes, 5).tolist() == [32, -8, 1, 0, 0]
    assert synapse_weights(codes, 14).tolist() == [1 << 14, -(1 << 12), 1 << 9, 0, -1]
    assert time_values(np.array([0, 3, 7, 8]), WINDOW).tolist() == [128, 16, 1, 0]
    with pytest.raises(ValueError, match="0..31"):
        synapse_weights(np.array([32]), 3)


# ---------------------------------------------------------------------- compiled TTFS networks

@pytest.fixture(scope="module")
def cat_digits():
    from ttc import api
    from ttc.demo import EXAMPLES
    from ttc.digits import load_digits_split

    _, _, x, y = load_digits_split()
    model = api.load_model(EXAMPLES / "cat_digits_ann.pt")  # the TTFS classes load without --trust-model
    compiled = api.compile_model(model, "N,1,8,8")
    return model, compiled, x[0], y, api.simulate(compiled.program, x[0])


def test_cat_digits_compile_bit_exact_and_agree_with_the_ann(cat_digits):
    """Issue 6: the simulator equals the TTFS reference on every held-out digit, and the compiled program
    agrees with the CAT-trained ANN on at least 99 % of them."""
    from ttc import api

    model, compiled, x, y, result = cat_digits
    sim = result.outputs[0]
    assert sim.tobytes() == api.reference(compiled, x)[0].tobytes()
    ann = api.run_float(model, x)[0]
    assert (sim.argmax(1) == ann.argmax(1)).mean() >= 0.99
    assert (ann.argmax(1) == y).mean() >= 0.95 and (sim.argmax(1) == y).mean() >= 0.95
    ops = [layer["op"] for layer in compiled.program.meta["layers"]]
    assert ops == ["fire", "conv2d+fire", "conv2d+fire", "maxpool", "conv2d+fire", "maxpool", "linear+time_reduce"]
    assert all(n["dropped_bits"] == 0 for n in compiled.graph.notes["ttfs"].values())  # exact accumulators
    prog = compiled.program
    assert asm.assemble(asm.disassemble(prog)).to_bytes() == prog.to_bytes() == Program.from_bytes(prog.to_bytes()).to_bytes()
    assert {i.op for i in prog.code} >= {"tconv", "tfire", "pool"}


def test_counters_one_spike_per_neuron_and_shift_adds_as_pytorch_counts_them(cat_digits):
    """Per layer: spikes <= neurons (each fires at most once) and equal to the ANN's non-zero
    activations; shift-adds equal the (input spike, non-zero weight) pairs a PyTorch hook counts."""
    model, compiled, x, _, result = cat_digits
    nonzero, pairs = [], []

    def count(module, inputs, output):
        if isinstance(module, CATActivation):
            nonzero.append(int((output != 0).sum()))
        if isinstance(module, (LogConv2d, LogLinear)):
            spikes = (inputs[0] != 0).to(torch.float64)
            mask = (log_quantize(module.weight) != 0).to(torch.float64)
            reach = (torch.nn.functional.conv2d(spikes, mask, padding=module.padding) if isinstance(module, LogConv2d)
                     else torch.nn.functional.linear(spikes, mask))
            pairs.append(int(reach.sum()))

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    layers = [layer for layer in result.layers if "fire" in layer["op"]]
    batch = len(x)
    assert [round(layer["counts"]["spike"] * batch) for layer in layers] == nonzero
    assert all(layer["counts"]["spike"] <= layer["counts"]["fire"] for layer in layers)
    adds = [round(layer["counts"].get("shift_add", 0) * batch) for layer in result.layers if "conv" in layer["op"]
            or "linear" in layer["op"]]
    assert adds == pairs
    assert result.counters["shift32"] == result.counters["shift_add"] > 0


def test_converted_network_computes_the_ann_and_compiles_to_the_same_program(cat_digits, tmp_path):
    from ttc import api

    model, compiled, x, _, _ = cat_digits
    net = convert(model)
    assert [type(m).__name__ for m in net] == ["TTFSEncoder", "TTFSConv2d", "TTFSConv2d", "TTFSMaxPool2d", "TTFSConv2d",
                                               "TTFSMaxPool2d", "Flatten", "TTFSLinear"]
    ann, converted = api.run_float(model, x)[0], api.run_float(net, x)[0]
    assert (ann.argmax(1) == converted.argmax(1)).all() and np.allclose(ann, converted, atol=1e-4)
    torch.save(net, tmp_path / "ttfs.pt")
    again = api.compile_file(tmp_path / "ttfs.pt", "N,1,8,8")
    assert again.program.code == compiled.program.code and again.program.data == compiled.program.data


def test_average_pooling_converts_and_compiles_bit_exact():
    from ttc import api

    torch.manual_seed(3)
    ann = torch.nn.Sequential(CATActivation(6), LogConv2d(2, 4, 3, padding=1), CATActivation(6), torch.nn.AvgPool2d(2),
                              CATActivation(5), torch.nn.Flatten(), LogLinear(16, 3))
    x = torch.rand(64, 2, 4, 4)
    net = convert(ann)
    assert type(net[2]).__name__ == "TTFSAvgPool2d"
    assert (net(x).argmax(1) == ann(x).argmax(1)).all()
    compiled = api.compile_model(net, "N,2,4,4")
    sim = api.simulate(compiled.program, x.numpy()).outputs[0]
    assert sim.tobytes() == api.reference(compiled, x.numpy())[0].tobytes()
    assert "conv2d+fire" in [layer["op"] for layer in compiled.program.meta["layers"]][2:]


def test_bad_ttfs_models_are_named():
    from ttc import api
    from ttc.compiler.ir import IRError

    with pytest.raises(TypeError, match=r"'1' \(LogConv2d\) is followed by ReLU, not a CAT activation"):
        convert(torch.nn.Sequential(CATActivation(4), LogConv2d(1, 2, 1), torch.nn.ReLU(), LogLinear(2, 2)))
    with pytest.raises(TypeError, match="'0'.*before the input's CAT"):
        convert(torch.nn.Sequential(LogLinear(2, 2)))
    plain = torch.nn.Sequential(CATActivation(4), torch.nn.Conv2d(1, 2, 1), CATActivation(4), torch.nn.Flatten(),
                                LogLinear(8, 2))
    with pytest.raises(IRError, match="'1'.*not powers of two.*LogConv2d"):
        api.compile_model(plain, "N,1,2,2")


def test_an_accumulator_beyond_32_bits_drops_its_lowest_terms_the_same_way_in_reference_and_simulator():
    """4096 inputs, window 16, weights from 2^0 down to 2^-14: the exact sum needs 2^(12+14+15) in the
    worst case; quantize lowers the accumulator's frac until it fits and notes the bits dropped."""
    from ttc import api

    torch.manual_seed(0)
    net = torch.nn.Sequential(CATActivation(16), torch.nn.Flatten(), LogLinear(4096, 8, bias=False))
    with torch.no_grad():
        net[2].weight.copy_(torch.exp2(-torch.randint(0, 15, (8, 4096)).float()) * torch.sign(torch.randn(8, 4096)))
    compiled = api.compile_model(net, "N,1,64,64")
    (note,) = compiled.graph.notes["ttfs"].values()
    assert note["dropped_bits"] > 0
    assert compiled.graph.inputs[0].type.dtype.frac == 14  # an input only fired: every bit below 1 is fraction
    x = (np.random.default_rng(0).integers(0, 1 << 14, (3, 1, 64, 64)) / 2.0 ** 14).astype(np.float32)  # encoded exactly
    sim = api.simulate(compiled.program, x)
    assert sim.outputs[0].tobytes() == api.reference(compiled, x)[0].tobytes()
    exact = api.run_float(net, x)[0]
    assert 0 < np.abs(sim.outputs[0] - exact).max() <= 4096 * 2.0 ** -note["accumulator_frac"]  # < one LSB per input
