"""ttc's own modules end to end: the simulator equals the quantized reference bit for bit, and on
models whose numbers are exactly representable it equals the float PyTorch model bit for bit too."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import grid_inputs, small_conv_snn
from ttc import api
from ttc.frontends import modules as M


def dyadic_(module: nn.Module, seed: int, denominator: int = 16, span: int = 6) -> nn.Module:
    """Set every weight and bias to k/denominator with |k| <= span (some zero): exact in 8 bits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randint(-span, span + 1, p.shape, generator=g).float() / denominator)
    return module.eval()


def bits_equal(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def exact_models():
    yield "lif-hard", dyadic_(nn.Sequential(
        M.Conv2d(1, 4, 3, padding=1), M.LIF(decay=0.5, threshold=0.5), M.MaxPool2d(2), M.Flatten(),
        M.Linear(64, 10), M.TimeMean()), 1), (4, 128, 1, 8, 8)
    yield "lif-soft-ge-avgpool", dyadic_(nn.Sequential(
        M.Conv2d(1, 4, 3, padding=1), M.LIF(decay=0.25, threshold=0.5, reset="subtract", cmp="ge"),
        M.AvgPool2d(2), M.Conv2d(4, 4, 3, stride=2, padding=1), M.IF(threshold=1.0), M.Flatten(),
        M.Linear(16, 5), M.TimeMean()), 2), (4, 128, 1, 8, 8)
    yield "direct-coding-spike-output", dyadic_(nn.Sequential(
        M.DirectEncoder(3), M.Linear(12, 8), M.LIF(decay=0.75, threshold=0.25, v_reset=-0.125),
        M.Linear(8, 4), M.IF(threshold=0.5, reset="subtract")), 3), (128, 12)


@pytest.mark.parametrize("name,model,shape", list(exact_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_exact_model_equals_float_bit_for_bit(name, model, shape):
    spec = ",".join("N" if i == (0 if len(shape) == 2 else 1) else str(d) for i, d in enumerate(shape))
    compiled = api.compile_model(model, spec)
    x = grid_inputs(shape, seed=7)
    sim = api.simulate(compiled.program, x).outputs
    ref = api.reference(compiled, x)
    flt = api.run_float(model, x)
    for s, r, f in zip(sim, ref, flt):
        assert bits_equal(s, r)
        assert bits_equal(s, f.astype(np.float32))
    assert sim[0].std() > 0, "a model whose output is constant tests nothing"


def test_trained_style_model_is_bit_exact_against_reference_on_100_inputs():
    model = small_conv_snn(seed=3)
    compiled = api.compile_model(model, "4,N,1,8,8")
    x = grid_inputs((4, 100, 1, 8, 8), seed=3)
    result = api.simulate(compiled.program, x)
    assert bits_equal(result.outputs[0], api.reference(compiled, x)[0])
    flt = api.run_float(model, x)[0]
    assert (result.outputs[0].argmax(1) == flt.argmax(1)).mean() >= 0.9


def test_batch_runs_in_lock_step_like_single_samples():
    model = small_conv_snn(seed=4)
    program = api.compile_model(model, "4,N,1,8,8").program
    x = grid_inputs((4, 6, 1, 8, 8), seed=4)
    whole = api.simulate(program, x)
    singles = [api.simulate(program, x[:, i:i + 1]) for i in range(6)]
    assert bits_equal(whole.outputs[0], np.concatenate([s.outputs[0] for s in singles]))
    assert whole.counters["spike_add"] == pytest.approx(np.mean([s.counters["spike_add"] for s in singles]))


def test_spike_driven_adds_equal_pytorch_hook_count():
    """Input spikes times fan-out over non-zero weights, counted with forward hooks on the float model
    (whose spikes equal the machine's on this exactly representable model)."""
    model = dyadic_(nn.Sequential(
        M.Conv2d(1, 4, 3, padding=1), M.LIF(decay=0.5, threshold=0.25), M.Conv2d(4, 6, 3, stride=2, padding=1),
        M.LIF(decay=0.5, threshold=0.25), M.Flatten(), M.Linear(96, 10), M.TimeMean()), 5, span=3)
    x = grid_inputs((4, 16, 1, 8, 8), seed=5)
    expected = []

    def hook(layer, inputs, output):
        spikes = inputs[0].flatten(0, 1)
        if not set(spikes.unique().tolist()) <= {0.0, 1.0}:
            return  # a multi-bit input: multiply-accumulates, not spike-driven adds
        mask = (layer.weight != 0).float()
        if isinstance(layer, nn.Conv2d):
            reach = torch.nn.functional.conv_transpose2d(
                torch.ones_like(output.flatten(0, 1)), mask, stride=layer.stride, padding=layer.padding,
                output_padding=[s - 1 if (i + 2 * p - k) % s else 0 for s, i, p, k in zip(
                    layer.stride, spikes.shape[2:], layer.padding, layer.kernel_size)])
            expected.append(float((spikes * reach).sum()))
        else:
            expected.append(float((spikes * mask.sum(0)).sum()))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    api.run_float(model, x)
    result = api.simulate(api.compile_model(model, "4,N,1,8,8").program, x)
    assert len(expected) == 2
    assert result.counters["spike_add"] * 16 == sum(expected)
    assert result.counters["mac"] > 0


@pytest.mark.parametrize("size, divisor", [(12, 256), (6, 64)])
def test_global_average_over_an_area_not_a_power_of_two(size, divisor):
    """Global pools of spikes over areas fixed point cannot divide by (12x12: sums up to 144, 16 bits;
    6x6: 8 bits): the pool divides by the next power of two and the readout makes up the difference;
    the float model agrees on top-1 and the simulator equals the reference."""
    torch.manual_seed(0)
    net = nn.Sequential(M.Conv2d(2, 8, 3, padding=1), M.LIF(decay=0.5, threshold=0.5), M.AvgPool2d(size),
                        M.Flatten(), M.Linear(8, 4), M.TimeMean()).eval()
    compiled = api.compile_model(net, f"4,N,2,{size},{size}")
    pool = next(o for o in compiled.graph.ops if o.opname == "avgpool")
    assert pool.divisor == divisor and pool.type.dtype.bits == (16 if size == 12 else 8)
    x = grid_inputs((4, 16, 2, size, size))
    sim = api.simulate(compiled.program, x).outputs[0]
    assert bits_equal(sim, api.reference(compiled, x)[0])
    assert (sim.argmax(1) == api.run_float(net, x)[0].argmax(1)).mean() >= 0.9


def test_a_neuron_on_the_network_input_is_widened_to_its_accumulator():
    """The input is 16 bits, a neuron adds 32-bit accumulators: quantize widens it with a rescale."""
    net = dyadic_(nn.Sequential(M.LIF(decay=0.5, threshold=0.5), M.Conv2d(2, 4, 3, padding=1),
                                M.LIF(decay=0.5, threshold=0.5), M.Flatten(), M.Linear(4 * 64, 3), M.TimeMean()), 3)
    compiled = api.compile_model(net, "4,N,2,8,8")
    assert [o.opname for o in compiled.graph.ops[:3]] == ["input", "rescale", "neuron_q"]
    x = grid_inputs((4, 8, 2, 8, 8))
    sim = api.simulate(compiled.program, x).outputs[0]
    assert bits_equal(sim, api.reference(compiled, x)[0])
    assert bits_equal(sim, api.run_float(net, x)[0])  # dyadic weights, inputs k/16: exact end to end
