"""The embedded default model: the committed digits SNN on the 360 held-out digits."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ttc import api
from ttc.digits import HELD_OUT, STEPS, load_digits_split
from ttc.demo import MODEL, TT_MODEL

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def held_out():
    _, _, x, y = load_digits_split()
    return x, y


def test_split_is_stratified_direct_coded_and_fixed(held_out):
    x_tr, y_tr, x, y = load_digits_split()
    assert x.shape == (STEPS, HELD_OUT, 1, 8, 8) and x_tr.shape[1] + HELD_OUT == 1797
    assert (x == x[:1]).all() and 0 <= x.min() and x.max() == 1.0
    assert np.bincount(y).min() >= 35  # every class present in proportion
    assert np.array_equal(y, held_out[1])


def test_demo_accuracy_simulator_equals_reference_and_is_within_a_point_of_float(held_out):
    x, y = held_out
    model = api.load_model(MODEL)  # loads with weights_only=True: the committed file is safe to load
    compiled = api.compile_file(MODEL, f"{STEPS},N,1,8,8")
    sim = api.simulate(compiled.program, x).outputs[0]
    ref = api.reference(compiled, x)[0]
    flt = api.run_float(model, x)[0]
    assert sim.tobytes() == ref.tobytes()
    acc_sim, acc_flt = (sim.argmax(1) == y).mean(), (flt.argmax(1) == y).mean()
    assert acc_flt >= 0.9, "the committed model is not trained"
    assert abs(acc_sim - acc_flt) <= 0.01


def test_tt_snn_example_compiles_bit_exact_and_keeps_its_accuracy(held_out):
    x, y = held_out
    compiled = api.compile_file(TT_MODEL, f"{STEPS},N,1,8,8")
    assert {n["variant"] for n in compiled.graph.notes["schedule"].values()} == {"stt"}
    sim = api.simulate(compiled.program, x).outputs[0]
    assert sim.tobytes() == api.reference(compiled, x)[0].tobytes()
    acc_sim = (sim.argmax(1) == y).mean()
    acc_flt = (api.run_float(api.load_model(TT_MODEL), x)[0].argmax(1) == y).mean()
    assert acc_flt >= 0.95, "the committed TT-SNN is not trained"
    # four 8-bit cores per layer quantize four times where a dense kernel does once: 1.7 points measured
    assert acc_flt - acc_sim <= 0.02


@pytest.mark.slow
def test_training_script_writes_a_model_that_compiles(tmp_path):
    out = tmp_path / "d.pt"
    for variant in ([], ["--tt", "htt"], ["--cat"], ["--mt", "cascade", "--levels", "2", "--steps", "1"]):
        subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--epochs", "1", "-o", str(out), *variant],
                       check=True, capture_output=True)
        assert not list(tmp_path.glob("*.tmp"))
        model = api.load_model(out)
        assert isinstance(model, torch.nn.Sequential)
        shape = "N,1,8,8" if variant == ["--cat"] else f"{1 if '--mt' in variant else STEPS},N,1,8,8"  # the CAT ANN is static
        api.compile_model(model, shape)
