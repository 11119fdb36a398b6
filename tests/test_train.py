"""Training steps (docs/training.md): the simulator against the integer training reference, bit for bit over
20 steps; the reference against float64 autograd where nothing rounds; the sparse backward's work against
counts made from the reference's gradients; the models a step refuses; learning on digits."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ttc import api
from ttc.compiler.ir import IRError
from ttc.compiler.train import TrainError, TrainOptions
from ttc.compiler.reference import evaluate
from ttc.compiler.train_float import float_gradients
from ttc.compiler.train_reference import TrainingReference
from ttc.digits import build_fc_snn, load_digits_split
from ttc.frontends import modules as M
from ttc.isa.program import Program, ProgramError, pack_sections
from ttc.isa.encoding import encode_all
from ttc.isa.table import rescale
from ttc.runtime.train import Trainer, fit

T, B = 4, 4


def _net(sizes, neuron, seed=1, frac=3, bias=False):
    """Linear layers of `sizes` with `neuron()` after each but the readout, dyadic weights (and biases) k / 2^frac."""
    g = torch.Generator().manual_seed(seed)
    layers = [M.Flatten()]
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(M.Linear(a, b, bias=bias))
        if k < len(sizes) - 2:
            layers.append(neuron())
    net = nn.Sequential(*layers, M.TimeMean())
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randint(-4, 5, p.shape, generator=g).float() / 2 ** frac)
    return net


def _batches(n, shape, classes, seed, spikes=True):
    """`n` batches of B inputs [T, B, *shape] (spikes, or 4-bit values), or with `shape` "static" images
    [B, 1, 8, 8] that the model repeats over time itself, and their labels."""
    g = torch.Generator().manual_seed(seed)
    static = shape == "static"
    size = (B, 1, 8, 8) if static else (T, B, *((shape,) if isinstance(shape, int) else shape))
    for _ in range(n):
        x = torch.randint(0, 2, size, generator=g).float() if spikes else torch.randint(0, 16, size, generator=g).float() / 16
        yield x.numpy(), torch.randint(0, classes, (B,), generator=g).numpy()


def _dyadic(net: nn.Module, seed: int, weights: int = 4, bn_means: bool = False) -> nn.Module:
    """`net` with dyadic parameters drawn in module order from `seed`: every conv's and linear layer's weights
    k / `weights` (|k| <= 4), their biases and the batch norms' biases k / 8 (|k| <= 2; with `bn_means` the
    batch norms' running means too, first)."""
    g = torch.Generator().manual_seed(seed)
    small = lambda shape: torch.randint(-2, 3, shape, generator=g).float() / 8  # noqa: E731
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randint(-4, 5, m.weight.shape, generator=g).float() / weights)
                if m.bias is not None:
                    m.bias.copy_(small(m.bias.shape))
            if isinstance(m, nn.BatchNorm2d):
                if bn_means:
                    m.running_mean.copy_(small((m.num_features,)))
                m.bias.copy_(small((m.num_features,)))
    return net


def _conv_net(neuron, chain: bool = False, seed: int = 1):
    """[T, N, 1, 6, 6] -> 4 classes: 3x3 convs with neurons (with `chain`, a 1x1 conv without one first, as a
    tensor-train's G1 reads the spikes), a linear readout; dyadic weights."""
    layers = [M.Conv2d(1, 4, 1, bias=False), M.Conv2d(4, 4, 3, padding=1, bias=False)] if chain else \
        [M.Conv2d(1, 4, 3, padding=1, bias=False)]
    return _dyadic(nn.Sequential(*layers, neuron(), M.Conv2d(4, 4, 3, padding=1, bias=False), neuron(), M.Flatten(),
                                 M.Linear(144, 4, bias=False), M.TimeMean()), seed, weights=8)


def _conv_bn_net(seed: int = 5):
    """[T, N, 1, 6, 6] -> 4 classes: conv-BN-LIF (batch norm folded: the conv gets a bias), a linear readout with
    a bias; dyadic weights and batch norm."""
    net = nn.Sequential(M.Conv2d(1, 4, 3, padding=1, bias=False), M.BatchNorm2d(4), LIF_HARD(), M.Flatten(),
                        M.Linear(144, 4), M.TimeMean())
    return _dyadic(net, seed, bn_means=True).eval()


def _pooled_net(seed: int = 6):
    """[T, N, 1, 8, 8] -> 4 classes: the digits SNN's shape: conv-BN-LIF-maxpool twice, a linear readout."""
    net = nn.Sequential(M.Conv2d(1, 4, 3, padding=1, bias=False), M.BatchNorm2d(4), LIF_HARD(), M.MaxPool2d(2),
                        M.Conv2d(4, 4, 3, padding=1, bias=False), M.BatchNorm2d(4), LIF_HARD(), M.MaxPool2d(2),
                        M.Flatten(), M.Linear(16, 4), M.TimeMean())
    return _dyadic(net, seed).eval()


def _strided_net(seed: int = 9):
    """[T, N, 1, 8, 8] -> 4 classes: a conv-IF, a stride-2 conv (8x8 -> 4x4) and a stride-2 1x1 conv, each
    with an IF neuron, a linear readout."""
    neuron = lambda: M.IF(threshold=0.5, reset="subtract")  # noqa: E731
    return _dyadic(nn.Sequential(M.Conv2d(1, 4, 3, padding=1, bias=False), neuron(),
                                 M.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), neuron(),
                                 M.Conv2d(4, 4, 1, stride=2, bias=False), neuron(), M.Flatten(),
                                 M.Linear(16, 4, bias=False), M.TimeMean()), seed)


def _ms_resnet(variant: str | None = None, seed: int = 0):
    """N,1,8,8 repeated over T steps -> 4 classes: an MS-ResNet (membrane shortcuts: residual adds of
    multi-bit streams, each block's neurons on the stream): a stem conv-BN, a block of 4 channels (dense, or
    TT of ranks 2 in `variant`), a dense stride-2 block to 8 channels with a strided 1x1 shortcut, a LIF, a
    global average pool and a linear readout; dyadic weights and biases."""
    ranks = (2, 2) if variant else None
    net = nn.Sequential(M.DirectEncoder(T), M.Conv2d(1, 4, 3, padding=1, bias=False), M.BatchNorm2d(4),
                        M.MSBlock(4, 4, ranks=ranks, variant=variant or "stt", decay=0.5, threshold=0.5),
                        M.MSBlock(4, 8, stride=2, decay=0.5, threshold=0.5), M.LIF(decay=0.5, threshold=0.5),
                        M.AvgPool2d(4), M.Flatten(), M.Linear(8, 4), M.TimeMean())
    return _dyadic(net, seed).eval()


def _tt_net(variant: str = "stt", seed: int = 3):
    """[T, N, 1, 6, 6] -> 4 classes: a 3x3 conv-LIF, a TT-SNN block (4 -> 8 channels, rank 2, `variant`: trained
    as its four cores) with a LIF, a linear readout; dyadic weights."""
    return _dyadic(nn.Sequential(M.Conv2d(1, 4, 3, padding=1, bias=False), M.LIF(decay=0.5, threshold=0.5),
                                 M.TTConv2d(4, 8, 2, variant), M.LIF(decay=0.5, threshold=0.5), M.Flatten(),
                                 M.Linear(8 * 36, 4, bias=False), M.TimeMean()), seed)


LIF_HARD = lambda: M.LIF(decay=0.5, threshold=0.5)  # noqa: E731


def _input_shape(shape) -> str:
    if shape == "static":
        return "N,1,8,8"
    return f"{T},N," + ",".join(map(str, (shape,) if isinstance(shape, int) else shape))
#: name: (model, input shape, spikes in, sparse backward)
CASES = {
    "fc-lif-hard": (lambda: _net((12, 8, 6, 4), LIF_HARD), 12, True, False),
    "fc-lif-hard-sparse": (lambda: _net((12, 8, 6, 4), LIF_HARD), 12, True, True),
    "fc-if-subtract": (lambda: _net((12, 8, 6, 4), lambda: M.IF(threshold=0.75, reset="subtract")), 12, True, False),
    "fc-lif-subtract-sparse-fixed-input": (
        lambda: _net((12, 8, 6, 4), lambda: M.LIF(decay=0.75, threshold=0.5, reset="subtract")), 12, False, True),
    "conv-lif-hard-sparse": (lambda: _conv_net(LIF_HARD), (1, 6, 6), True, True),
    "conv-chain-if-subtract-fixed-input": (lambda: _conv_net(lambda: M.IF(threshold=0.75, reset="subtract"), chain=True),
                                           (1, 6, 6), False, False),
    "tt-stt-block": (_tt_net, (1, 6, 6), True, False),
    "tt-htt-block-sparse": (lambda: _tt_net("htt"), (1, 6, 6), True, True),
    "fc-lif-hard-biases": (lambda: _net((12, 8, 6, 4), LIF_HARD, bias=True), 12, True, False),
    "conv-bn-lif-hard-sparse": (lambda: _conv_bn_net(), (1, 6, 6), True, True),
    "conv-bn-lif-maxpool-twice": (lambda: _pooled_net(), (1, 8, 8), True, False),
    "conv-stride-2-if-subtract-fixed-input": (lambda: _strided_net(), (1, 8, 8), False, True),
    "ms-resnet": (lambda: _ms_resnet(), "static", False, False),
    "ms-resnet-tt-stt": (lambda: _ms_resnet("stt"), "static", False, True),
    "ms-resnet-tt-ptt": (lambda: _ms_resnet("ptt"), "static", False, False),
    "ms-resnet-tt-htt": (lambda: _ms_resnet("htt"), "static", False, False),
    "fc-lif-hard-cross-entropy": (lambda: _net((12, 8, 6, 4), LIF_HARD), 12, True, False, "explicit", "ce"),
    "fc-lif-subtract-trace-form-sparse": (
        lambda: _net((12, 8, 6, 4), lambda: M.LIF(decay=0.5, threshold=0.5, reset="subtract")), 12, True, True, "trace"),
    "conv-lif-subtract-trace-form-fixed-input": (
        lambda: _conv_net(lambda: M.LIF(decay=0.75, threshold=0.25, reset="subtract")), (1, 6, 6), False, False, "trace"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_simulator_equals_the_training_reference_over_20_steps(case):
    build, shape, spikes, sparse, *more = CASES[case]
    form, loss = (more + ["explicit", "mse"][len(more):])[:2]
    net = build()
    options = dict(input_encoding="spikes") if spikes else dict(input_bits=8, input_frac=4)
    compiled = api.compile_training(net, _input_shape(shape), train=TrainOptions(
        batch=B, band=0.5, sparse=sparse, lr_shift=8, form=form, loss=loss), **options)
    train = compiled.program.meta["train"]
    assert {r["form"] for r in train["layers"] if r["neuron"]} == {form}
    trainer, reference = Trainer(compiled.program, B), TrainingReference(compiled.quantized, train)
    changed = dict.fromkeys(reference.weights, 0)
    for x, labels in _batches(20, shape, 4, seed=2, spikes=spikes):
        before = {n: w.clone() for n, w in reference.weights.items()}
        stats = trainer.step(x, labels)
        result = reference.step(x, labels)
        sim, biases = trainer.weights(), trainer.biases()
        for r in train["layers"]:
            assert np.array_equal(sim[r["name"]], reference.weights[r["name"]].numpy()), r["name"]
            changed[r["name"]] += not torch.equal(before[r["name"]], reference.weights[r["name"]])
        assert biases.keys() == reference.biases.keys()
        for name, b in biases.items():
            assert np.array_equal(b, reference.biases[name].numpy()), name
        out = result["out"].double() / (T << train["out_frac"])
        if loss == "mse":
            assert stats.loss == pytest.approx(float(0.5 * ((out - torch.eye(4)[labels].double()) ** 2).sum()))
        else:
            assert stats.loss == pytest.approx(float(F.cross_entropy(out, torch.from_numpy(labels), reduction="sum")))
    # the weights moved, so no comparison is of untouched weights: every layer's, a TT layer's every core's too
    assert min(changed.values()) > 0, changed
    assert sum(changed.values()) > 20


def test_the_weight_gradients_equal_float64_autograd_where_nothing_rounds():
    net = _net((12, 8, 4), lambda: M.LIF(decay=0.5, threshold=0.5))
    compiled = api.compile_training(net, f"{T},N,12", train=TrainOptions(batch=B, band=0.5, weight_bits=8),
                                    input_encoding="spikes")
    train = compiled.program.meta["train"]
    for r in train["layers"]:  # the premise: no format rounds (the decays keep their guard bits)
        assert r["wgrad_shift"] == 0 and r["pre_shift"] == 0 and r["src_shift"] >= 0
    reference = TrainingReference(compiled.quantized, train)
    for x, labels in _batches(3, 12, 4, seed=5):
        ints = reference.gradients(x, labels)["dw"]
        floats = float_gradients(compiled.quantized, train, x, labels, reference.weights)
        for r in train["layers"]:
            assert floats[r["name"]].abs().max() > 0
            assert torch.equal(ints[r["name"]].double() * 2.0 ** -r["dw_frac"], floats[r["name"]]), r["name"]
    # and the float network is the model itself: its forward gives the model's outputs
    x, _ = next(_batches(1, 12, 4, seed=6))
    assert np.array_equal(api.run_float(net, x)[0], api.simulate(Program.from_bytes(
        bytes.fromhex(compiled.program.meta["inference"])), x).outputs[0])


@pytest.mark.parametrize("down", ["maxpool", "stride"])
def test_gradients_through_a_downsampling_equal_float64_autograd_where_nothing_rounds(down):
    """A max pool's window gradient goes to its first maximum, as PyTorch's CPU max pool routes it; a strided
    conv's input gradient is the transposed conv of its gradient spread out by the stride."""
    lif = M.LIF(decay=0.5, threshold=0.5)
    body = [M.Conv2d(1, 2, 3, padding=1, bias=False), lif, M.MaxPool2d(2), M.Flatten(), M.Linear(8, 4, bias=False)] \
        if down == "maxpool" else [M.Conv2d(1, 2, 3, padding=1, bias=False), lif,
                                   M.Conv2d(2, 2, 3, stride=2, padding=1, bias=False), M.LIF(decay=0.5, threshold=0.5),
                                   M.Flatten(), M.Linear(8, 4, bias=False)]
    net = _dyadic(nn.Sequential(*body, M.TimeMean()), 7)
    compiled = api.compile_training(net, f"{T},N,1,4,4", input_encoding="spikes",
                                    train=TrainOptions(batch=B, band=0.5, weight_bits=8))
    train = compiled.program.meta["train"]
    assert (train["layers"][0]["pool"] if down == "maxpool" else train["layers"][1]["sh"] == 2)
    assert all(r["wgrad_shift"] == r["pre_shift"] == 0 for r in train["layers"])
    reference = TrainingReference(compiled.quantized, train)
    for x, labels in _batches(3, (1, 4, 4), 4, seed=8):
        ints = reference.gradients(x, labels)["dw"]
        floats = float_gradients(compiled.quantized, train, x, labels, reference.weights)
        for r in train["layers"]:
            assert floats[r["name"]].abs().max() > 0
            assert torch.equal(ints[r["name"]].double() * 2.0 ** -r["dw_frac"], floats[r["name"]]), r["name"]


@pytest.mark.parametrize("case", ["ms-resnet", "ms-resnet-tt-stt", "ms-resnet-tt-ptt", "ms-resnet-tt-htt",
                                  "tt-htt-block-sparse"])
def test_deep_networks_weight_gradients_follow_float64_autograd(case):
    """Where formats round, the integer gradients stay within 1e-3 of float64 autograd of the same network (the
    formats are calibrated, forward and backward, and the input gradients are rounded once, after their exact
    sums): every layer of a residual network and every core of a tensor-train layer gets its gradient, not the
    nothing that formats set for the worst case, or estimated layer by layer, leave the deep ones."""
    build, shape, spikes, sparse, *_ = CASES[case]
    options = dict(input_encoding="spikes") if spikes else dict(input_bits=8, input_frac=4)
    calibration = next(_batches(1, shape, 4, seed=9, spikes=spikes))
    compiled = api.compile_training(build(), _input_shape(shape), train=TrainOptions(batch=B, band=0.5, sparse=sparse),
                                    calibration=calibration, **options)
    train = compiled.program.meta["train"]
    assert train["calibration"] == f"{B} samples of data"
    reference = TrainingReference(compiled.quantized, train)
    x, labels = next(_batches(1, shape, 4, seed=5, spikes=spikes))
    ints = reference.gradients(x, labels)["dw"]
    floats = float_gradients(compiled.quantized, train, x, labels, reference.weights, reference.biases)
    assert any(r["post_shift"] < 0 for r in train["layers"])  # the premise: formats round
    for r in train["layers"]:
        assert floats[r["name"]].norm() > 0, r["name"]
        error = (ints[r["name"]].double() * 2.0 ** -r["dw_frac"] - floats[r["name"]]).norm() / floats[r["name"]].norm()
        assert error < 1e-3, (r["name"], float(error))


def test_saturating_forward_sums_are_bit_exact():
    """A training step's layers on multi-bit values are formatted for their calibrated sums and saturate beyond:
    calibrated on inputs 64 times smaller than the data, the TT cores' sums saturate, and the simulator still
    equals the reference (which saturates them too) step after step."""
    build, shape, spikes, sparse, *_ = CASES["ms-resnet-tt-stt"]
    x_cal, y_cal = next(_batches(1, shape, 4, seed=9, spikes=spikes))
    compiled = api.compile_training(build(), _input_shape(shape), train=TrainOptions(batch=B, band=0.5, lr_shift=8),
                                    calibration=(x_cal / 64, y_cal), input_bits=8, input_frac=4)
    train = compiled.program.meta["train"]
    saturating = [op for op in compiled.quantized.ops if getattr(op, "sat_bits", None)]
    assert saturating
    trainer, reference = Trainer(compiled.program, B), TrainingReference(compiled.quantized, train)
    reached = 0
    for x, labels in _batches(3, shape, 4, seed=2, spikes=spikes):
        trainer.step(x, labels)
        reference.step(x, labels)
        env = evaluate(reference.graph, [x])
        reached += sum(int((env[op.name].abs() == (1 << 31) - 1).sum()) for op in saturating)
        for name, w in trainer.weights().items():
            assert np.array_equal(w, reference.weights[name].numpy()), name
    assert reached > 0  # the premise: sums saturated


def test_the_trace_form_gives_the_explicit_forms_gradients_where_nothing_rounds():
    """SSGD's identity: sum_t trace[t] D[t] = sum_t x[t] g_h[t] for a subtract reset with the reset detached;
    with the decays' guard bits both equal float64 autograd."""
    net = _net((12, 8, 4), lambda: M.LIF(decay=0.5, threshold=0.5, reset="subtract"))
    grads = {}
    for form in ("explicit", "trace"):
        compiled = api.compile_training(net, f"{T},N,12", input_encoding="spikes",
                                        train=TrainOptions(batch=B, band=0.5, weight_bits=8, form=form))
        train = compiled.program.meta["train"]
        hidden = train["layers"][0]
        assert hidden["form"] == form and hidden["src_shift"] > 0 and hidden["trace_shift"] == (3 if form == "trace" else 0)
        reference = TrainingReference(compiled.quantized, train)
        x, labels = next(_batches(1, 12, 4, seed=5))
        dw = reference.gradients(x, labels)["dw"][hidden["name"]].double() * 2.0 ** -hidden["dw_frac"]
        floats = float_gradients(compiled.quantized, train, x, labels, reference.weights)[hidden["name"]]
        assert floats.abs().max() > 0 and torch.equal(dw, floats)
        grads[form] = dw
    assert torch.equal(grads["explicit"], grads["trace"])


def test_the_cost_model_chooses_the_gradient_form():
    """auto takes the cheaper form by `form_costs`: on spikes the explicit form's adds beat the trace form's
    multiplies and stored traces; a hard reset has only the explicit form, and forcing the trace form names it."""
    subtract = _net((12, 8, 4), lambda: M.LIF(decay=0.5, threshold=0.5, reset="subtract"))
    train = api.compile_training(subtract, f"{T},N,12", input_encoding="spikes",
                                 train=TrainOptions(batch=B, sparse=True)).program.meta["train"]
    hidden = train["layers"][0]
    assert hidden["costs"]["explicit"] < hidden["costs"]["trace"] and hidden["form"] == "explicit"
    hard = _net((12, 8, 4), LIF_HARD)
    assert api.compile_training(hard, f"{T},N,12", input_encoding="spikes").program.meta["train"]["layers"][0]["costs"] is None
    with pytest.raises(IRError, match=r"from '2'\): has a hard reset: the trace form"):
        api.compile_training(hard, f"{T},N,12", input_encoding="spikes", train=TrainOptions(form="trace"))


def test_the_sparse_backward_does_less_work_and_computes_the_same():
    net = _net((12, 8, 6, 4), lambda: M.LIF(decay=0.5, threshold=0.5))
    programs = [api.compile_training(net, f"{T},N,12", train=TrainOptions(batch=B, band=0.25, sparse=s),
                                     input_encoding="spikes") for s in (True, False)]
    sparse, dense = (Trainer(c.program, B) for c in programs)
    reference = TrainingReference(programs[0].quantized, programs[0].program.meta["train"])
    x, labels = next(_batches(1, 12, 4, seed=3))
    grads = reference.gradients(x, labels)["gh"]
    work = [t.step(x, labels).counters["backward"] for t in (sparse, dense)]
    for a, b in zip(sparse.weights().values(), dense.weights().values()):
        assert np.array_equal(a, b)
    # counted independently from the reference's gradients: a weight-gradient pair is a spike of the layer's
    # input times a non-zero membrane gradient (dense: times every gradient); an input-gradient MAC is a non-zero
    # membrane gradient times the layer's inputs (the readout's, the same at every step, once)
    layers = programs[0].program.meta["train"]["layers"]
    env = __import__("ttc.compiler.reference", fromlist=["evaluate"]).evaluate(programs[0].quantized, [x])
    pairs = {True: 0, False: 0}
    macs = {True: 0, False: 0}
    for r in layers:
        gh = grads[r["name"]].flatten(2)
        spikes = env[programs[0].quantized.op(r["name"]).inputs[0]].flatten(2)
        for skip in (True, False):
            g = (gh != 0).double() if skip else torch.ones_like(gh, dtype=torch.float64)
            pairs[skip] += int(torch.einsum("tbo,tbi->", g, spikes))
            if r["input_grad"]:  # the transposed conv reads R(g_h, pre_shift): its zeros are skipped
                scaled = (rescale(gh, r["pre_shift"]) != 0).double() if skip else g
                rows = scaled if r["neuron"] else scaled[:1]
                macs[skip] += int(rows.sum()) * r["cin"]
    assert work[0]["weight_grad"] == pairs[True] < work[1]["weight_grad"] == pairs[False]
    assert work[0]["mac"] == macs[True] < work[1]["mac"] == macs[False]


def test_models_a_training_step_cannot_take_are_refused_naming_the_layer():
    # a TT block that downsamples max-pools its multi-bit result
    strided_tt = nn.Sequential(M.Conv2d(1, 4, 3, padding=1, bias=False), M.MSBlock(4, 4, stride=2, ranks=(2, 2)),
                               M.LIF(), M.Flatten(), M.Linear(64, 10, bias=False), M.TimeMean())
    with pytest.raises(IRError, match=r"max pools something other than the spikes of a conv's neuron"):
        api.compile_training(strided_tt, "4,N,1,8,8", input_bits=8, input_frac=4)
    with pytest.raises(TrainError, match="loss 'hinge': 'mse'"):
        TrainOptions(loss="hinge")


def test_a_step_refuses_data_it_cannot_take():
    compiled = api.compile_training(_net((12, 8, 4), lambda: M.LIF()), f"{T},N,12",
                                    train=TrainOptions(batch=B), input_encoding="spikes")
    with pytest.raises(Exception, match="larger than the 4 the step was compiled for"):
        Trainer(compiled.program, 8)
    trainer = Trainer(compiled.program, B)
    x, labels = next(_batches(1, 12, 4, seed=1))
    with pytest.raises(Exception, match="labels must be 0 to 3"):
        trainer.step(x, labels + 4)


def test_an_isa_8_program_runs_unless_it_uses_what_isa_9_added():
    """Version 9 added opcodes and fields after every older field: an older program decodes unchanged,
    and one that sets a newer field is refused, naming it."""
    compiled = api.compile_model(build_fc_snn(8), "4,N,1,8,8")
    prog = compiled.program
    bodies = {"meta": prog.meta_json().encode(), "hw": prog.hw.to_json().encode(), "code": encode_all(prog.code),
              "data": prog.data}
    from ttc.isa.program import FORMAT_VERSION, MAGIC, SECTIONS
    old = Program.from_bytes(pack_sections(bodies, (MAGIC, FORMAT_VERSION, 8, len(SECTIONS), 0)))
    assert old.code == prog.code
    nrn = next(k for k, i in enumerate(prog.code) if i.op == "nrn")
    code = list(prog.code)
    code[nrn] = type(code[nrn])("nrn", {**code[nrn].args, "band": 3})
    bodies["code"] = encode_all(code)
    with pytest.raises(ProgramError, match=f"ISA version 8, but instruction {nrn} \\(nrn\\) sets band, which ISA version 9"):
        Program.from_bytes(pack_sections(bodies, (MAGIC, FORMAT_VERSION, 8, len(SECTIONS), 0)))


def test_training_on_the_simulator_learns_the_digits():
    """A short run (two epochs on 512 digits): well above chance, and the trained inference program and
    state dict carry the weights the trainer holds."""
    x_tr, y_tr, x_te, y_te = load_digits_split()
    model = build_fc_snn(32)
    compiled = api.compile_training(model, "4,N,1,8,8", train=TrainOptions(lr_shift=7, batch=32),
                                    input_bits=8, input_frac=4)
    trainer = Trainer(compiled.program, 32)
    history = fit(trainer, x_tr[:, :512], y_tr[:512], 2, held_out=(x_te, y_te))
    assert history[-1].held_out_accuracy > 0.6 and history[-1].loss < history[0].loss
    assert set(history[-1].cycles) == {"forward", "backward", "update"}
    assert all(history[-1].energy_pj[p] for p in ("forward", "backward", "update"))
    model.load_state_dict(trainer.state_dict(), strict=False)
    weights = trainer.weights()
    for r in compiled.program.meta["train"]["layers"]:
        w = dict(model.named_parameters())[f"{r['path']}.weight"].detach().double().numpy()
        assert np.array_equal(w * 2.0 ** r["weight_frac"], weights[r["name"]])


class _SnnTorchFC(nn.Module):
    """snnTorch's tutorial pattern, with a readout averaged over time (and no biases: weights are trained)."""

    def __init__(self):
        super().__init__()
        import snntorch as snn
        self.fc1, self.fc2 = nn.Linear(12, 8, bias=False), nn.Linear(8, 4, bias=False)
        self.lif1 = snn.Leaky(beta=0.5, threshold=0.5)

    def forward(self, x):
        mem, out = self.lif1.init_leaky(), []
        for t in range(x.shape[0]):
            spk, mem = self.lif1(self.fc1(x[t]), mem)
            out.append(self.fc2(spk))
        return torch.stack(out).mean(0)


class _SpikingJellyFC(nn.Module):
    """SpikingJelly's multi-step layers: LIF (tau 2, the input divided by tau) between linear layers."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import functional, layer, neuron
        self.body = nn.Sequential(layer.Linear(12, 8, bias=False), neuron.LIFNode(tau=2.0, v_threshold=0.5),
                                  layer.Linear(8, 4, bias=False))
        functional.set_step_mode(self, "m")

    def forward(self, x):
        return self.body(x).mean(0)


@pytest.mark.parametrize("build", [_SnnTorchFC, _SpikingJellyFC], ids=["snntorch", "spikingjelly"])
def test_third_party_models_train_bit_exact(build):
    torch.manual_seed(0)  # (the modules' own initialisation, which _dyadic replaces)
    net = _dyadic(build(), 0)
    compiled = api.compile_training(net, f"{T},N,12", train=TrainOptions(batch=B, band=0.5, lr_shift=3),
                                    input_encoding="spikes")
    train = compiled.program.meta["train"]
    trainer, reference = Trainer(compiled.program, B), TrainingReference(compiled.quantized, train)
    moved = 0
    for x, labels in _batches(20, 12, 4, seed=4):
        before = {n: w.clone() for n, w in reference.weights.items()}
        trainer.step(x, labels)
        reference.step(x, labels)
        for name, w in trainer.weights().items():
            assert np.array_equal(w, reference.weights[name].numpy()), name
            moved += not torch.equal(before[name], reference.weights[name])
    assert moved > 10
    # the state dict is the model's: the factors the compiler folded in (SpikingJelly's 1/tau) divided out
    state, weights = trainer.state_dict(), trainer.weights()
    assert set(state) == {name for name, _ in net.named_parameters()}
    net.load_state_dict(state, strict=False)  # (snnTorch's neurons keep their buffers)
    for r in train["layers"]:
        scale = torch.tensor(r["source_scale"], dtype=torch.float64).reshape(-1, 1)
        folded = dict(net.named_parameters())[f"{r['path']}.weight"].detach().double() * scale
        assert torch.equal(folded * 2.0 ** r["weight_frac"], torch.from_numpy(weights[r["name"]]).double())
    if build is _SpikingJellyFC:
        assert train["layers"][0]["source_scale"] == [0.5] * 8  # the LIF's input gain 1/tau, in its linear layer


@pytest.mark.parametrize("case", ["fc-lif-hard-sparse", "conv-bn-lif-hard-sparse", "tt-stt-block", "ms-resnet-tt-ptt",
                                  "fc-lif-subtract-trace-form-sparse"])
def test_the_cost_model_prices_the_training_phases(case):
    """The training plans are layer plans: the cost model walks the steps codegen emits. Its cycles of each
    phase are the simulator's; its energy differs only by the densities it assumes."""
    build, shape, spikes, sparse, *form = CASES[case]
    compiled = api.compile_training(build(), _input_shape(shape), train=TrainOptions(
        batch=B, sparse=sparse, form=form[0] if form else "explicit"), input_encoding="spikes" if spikes else "fixed")
    x, labels = next(_batches(1, shape, 4, seed=2, spikes=spikes))
    stats = Trainer(compiled.program, B).step(x, labels)
    predicted = compiled.program.meta["train"]["predicted"]
    for phase in ("forward", "backward", "update"):
        samples = 1 if phase == "update" else B
        assert predicted[phase]["cycles"] == pytest.approx(stats.cycles[phase] / samples, rel=0.01), phase
        simulated = sum(stats.energy_pj[phase].values()) / samples
        assert sum(predicted[phase]["energy_pj"].values()) == pytest.approx(simulated, rel=0.1), phase


def test_a_layer_whose_backward_does_not_fit_names_the_buffer():
    big = nn.Sequential(M.Flatten(), M.Linear(64, 256, bias=False), LIF_HARD(), M.Linear(256, 10, bias=False),
                        M.TimeMean())
    with pytest.raises(TrainError, match=r"layer 1: its training step needs \d+ bytes of the psum buffer, which holds "
                                         r"32768 bytes in hardware config 'sata' \(training does not tile layers yet\)"):
        api.compile_training(big, "4,N,1,8,8", input_bits=8, input_frac=4)

