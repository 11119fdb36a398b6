"""tt-factorize (dense 3x3 convs -> STT cores by TT-SVD) and the static counts (params, MACs,
spike-driven adds, multiplies) before and after it."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from test_cli import assert_clean_failure, ttc
from ttc import api
from ttc.compiler.ir import Conv2d, IRError, TTConv2d
from ttc.compiler.passes import run_pipeline
from ttc.compiler.passes.tt_factorize import tt_svd
from ttc.frontends import modules as M
from ttc.frontends.trace import trace
from ttc.models import spiking_statistics

SHAPE = "4,N,2,8,8"


def dense_ms_resnet(seed: int = 0) -> nn.Sequential:
    """Two dense MS-ResNet blocks whose 3x3 kernels are nearly rank 3 (as trained kernels are nearly
    low rank), so that an error budget has a rank to find."""
    torch.manual_seed(seed)
    net = nn.Sequential(M.Conv2d(2, 8, 3, padding=1, bias=False), M.BatchNorm2d(8),
                        M.MSBlock(8, 8, 1), M.MSBlock(8, 16, 2), M.LIF(), M.AvgPool2d(4), M.Flatten(),
                        M.Linear(16, 10), M.TimeMean())
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 2:
                w = torch.from_numpy(_low_rank(m.weight.shape, 3, rng))
                m.weight.copy_(w * m.weight.norm() / w.norm())
    return spiking_statistics(net, seed + 1)


def _low_rank(shape, rank: int, rng) -> np.ndarray:
    cout, cin = shape[:2]
    cores = [rng.normal(size=s) for s in ((cin, rank), (rank, 3, rank), (rank, 3, rank), (rank, cout))]
    w = np.einsum("ia,aub,bvc,co->oiuv", *cores)
    return (w + 0.02 * np.abs(w).max() * rng.normal(size=w.shape)).astype(np.float32)


def events(batch: int = 3) -> np.ndarray:
    return (np.random.default_rng(1).random((4, batch, 2, 8, 8)) < 0.3).astype(np.float32)


def contract(cores) -> np.ndarray:
    g1, g2, g3, g4 = (c.astype(np.float64) for c in cores)
    return np.einsum("oc,cbv,bau,ai->oiuv", g4[:, :, 0, 0], g3[:, :, 0, :], g2[:, :, :, 0], g1[:, :, 0, 0])


def test_tt_svd_is_exact_at_full_rank_and_reports_the_capped_ranks():
    w = np.random.default_rng(0).normal(size=(8, 4, 3, 3)).astype(np.float32)
    cores, error = tt_svd(w, 100)
    assert [c.shape[0] for c in cores[:3]] == [4, 12, 8]  # min(Cin, 9 Cout), min(3 R1, 3 Cout), min(3 R2, Cout)
    assert error < 1e-6 and np.allclose(contract(cores), w, atol=1e-5)
    low, low_error = tt_svd(w, 2)
    assert [c.shape[0] for c in low[:3]] == [2, 2, 2] and low_error > 0.3
    assert np.isclose(np.linalg.norm(contract(low) - w) / np.linalg.norm(w), low_error, rtol=1e-5)


def test_error_budget_takes_the_smallest_rank_that_meets_it():
    compiled = api.compile_model(dense_ms_resnet(), SHAPE, tt_error=0.1, tt_core_bits=4)
    notes = compiled.graph.notes["factorize"]
    middle = [n for n in notes.values() if n.get("factorised")]
    assert len(middle) == 3  # the two 8 -> 8 convs and the 16 -> 16 one; the stride-2 conv stays dense
    weights = {o.path: o.weight for o in compiled_dense_float_convs()}
    for path, note in notes.items():
        if path not in weights or not note.get("factorised"):
            continue
        rank = max(note["ranks"])
        assert note["error"] <= 0.1 and note["params_tt"] < note["params_dense"]
        assert tt_svd(weights[path], rank - 1)[1] > 0.1, path
    assert "stride (2, 2)" in notes["3.residual.1"]["why"] and "multi-bit input" in notes["0"]["why"]


def compiled_dense_float_convs():
    """The BN-folded dense convs of dense_ms_resnet, as tt-factorize sees them."""
    graph = run_pipeline(trace(dense_ms_resnet(), SHAPE), {}, ("fold-batchnorm",))
    return [o for o in graph.ops if isinstance(o, Conv2d)]


def test_factorised_model_is_bit_exact_and_counted_before_and_after():
    compiled = api.compile_model(dense_ms_resnet(), SHAPE, tt_rank="2.residual.1=3,2.residual.4=2", tt_core_bits=4)
    x = events()
    assert api.simulate(compiled.program, x).outputs[0].tobytes() == api.reference(compiled, x)[0].tobytes()
    tts = {o.path: o for o in compiled.quantized.ops if isinstance(o, TTConv2d)}
    assert {p: o.ranks for p, o in tts.items()} == {"2.residual.1": (3, 3, 3), "2.residual.4": (2, 2, 2)}

    model, factorised = (compiled.counts[k] for k in ("model", "factorised"))
    before = {c["path"]: c for c in model["layers"]}
    after = {c["path"]: c for c in factorised["layers"]}
    assert before["0"] == {"path": "0", "op": "conv2d", "params": 8 * 2 * 9 + 8, "macs": 8 * 2 * 9 * 64,
                           "adds": 0, "muls": 8 * 2 * 9 * 64}  # BN folded into a bias; the stem reads the multi-bit input
    dense = before["2.residual.1"]
    assert dense["params"] == 8 * 8 * 9 + 8 and dense["adds"] == dense["macs"] == 8 * 8 * 9 * 64
    tt = after["2.residual.1"]
    g1, g2g3, g4 = 3 * 8, 2 * 3 * 3 * 3, 8 * 3  # per output position
    assert tt["params"] == g1 + g2g3 + g4 + 8
    assert tt["adds"] == g1 * 64 and tt["muls"] == (g2g3 + g4) * 64  # only G1 reads spikes
    assert after["3.residual.1"] == before["3.residual.1"]  # stride 2: kept dense
    assert set(compiled.graph.notes["factorize"]) == set(tts)  # layers not named are not looked at
    for field in ("params", "macs"):
        assert factorised["total"][field] == sum(c[field] for c in factorised["layers"]) < model["total"][field]


def test_htt_counts_the_mean_over_its_steps():
    torch.manual_seed(0)
    net = nn.Sequential(M.Conv2d(2, 2, 1), M.LIF(), M.TTConv2d(2, 4, 3, "htt"), M.LIF(), M.Flatten(),
                        M.Linear(4 * 64, 2), M.TimeMean())
    layers = {c["path"]: c for c in api.compile_model(net, SHAPE, tt_core_bits=4).counts["model"]["layers"]}
    g1, g2, g3, g4 = 3 * 2, 3 * 3 * 3, 3 * 3 * 3, 4 * 3
    assert layers["2"]["adds"] == g1 * 64 and layers["2"]["muls"] == (2 * (g2 + g3 + g4) + 2 * g4) * 64 / 4
    assert layers["5"]["adds"] == layers["5"]["macs"] == 4 * 64 * 2 and layers["5"]["muls"] == 0


@pytest.mark.parametrize("options, words", [
    ({"tt_rank": "nowhere=2"}, ("'nowhere'", "not a convolution")),
    ({"tt_rank": "3.residual.1=2"}, ("3.residual.1", "cannot be factorised", "stride")),
    ({"tt_rank": "0"}, ("at least 1",)),
    ({"tt_rank": "2.residual.1=two"}, ("--tt-rank",)),
    ({"tt_error": 1.5}, ("--tt-error",)),
])
def test_bad_factorisation_options_are_named(options, words):
    with pytest.raises((IRError, ValueError)) as e:
        api.compile_model(dense_ms_resnet(), SHAPE, **options)
    for w in words:
        assert w in str(e.value)


def test_cli_explains_factorisation_and_inspect_reports_counts(tmp_path):
    torch.save(dense_ms_resnet(), tmp_path / "model.pt")
    r = ttc("compile", tmp_path / "model.pt", "-o", tmp_path / "prog.bin", "--input-shape", SHAPE,
            "--tt-rank", "2", "--tt-core-bits", "4", "--explain")
    assert r.returncode == 0, r.stderr
    assert "2.residual.1: ranks 2,2,2, relative error" in r.stdout and "kept dense" in r.stdout
    info = json.loads(ttc("inspect", tmp_path / "prog.bin", "--json").stdout)
    assert info["counts"]["factorised"]["total"]["params"] < info["counts"]["model"]["total"]["params"]
    assert "after tt-factorize" in ttc("inspect", tmp_path / "prog.bin").stdout
    bad = ttc("compile", tmp_path / "model.pt", "-o", tmp_path / "bad.bin", "--input-shape", SHAPE, "--tt-error", "2")
    assert_clean_failure(bad, "--tt-error")
    assert not (tmp_path / "bad.bin").exists()
