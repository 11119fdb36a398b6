"""Issue 18, item 7: small things a user trips over. Saturated inputs are reported, not hidden; an
--output that cannot hold the outputs is refused before the run; .npz arrays carry the outputs' names;
`ttc ... | head` ends quietly; ttc.api.simulate takes a Compiled; run_float leaves the model's modes
alone; the demo refuses a model it cannot use in one line."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import grid_inputs, small_conv_snn
from ttc import api, cli, demo
from ttc.frontends import modules as M
from ttc.frontends.load import ModelLoadError, load_model
from ttc.isa.errors import UserError
from ttc.runtime.report import report


class TwoHeads(nn.Module):
    """One spiking body, two readouts: forward returns (digit scores, parity scores)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(M.Conv2d(1, 4, 3, padding=1), M.LIF(decay=0.5, threshold=0.5), M.MaxPool2d(2),
                                  M.Flatten())
        self.digit = nn.Sequential(M.Linear(64, 10), M.TimeMean())
        self.parity = nn.Sequential(M.Linear(64, 2), M.TimeMean())

    def forward(self, x):
        h = self.body(x)
        return self.digit(h), self.parity(h)


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    torch.manual_seed(0)
    compiled = api.compile_model(TwoHeads().eval(), "4,N,1,8,8")
    path = tmp_path_factory.mktemp("papercuts") / "two.bin"
    compiled.program.save(path)
    return compiled, path


@pytest.fixture(scope="module")
def one_head():
    return api.compile_model(small_conv_snn(), "4,N,1,8,8")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------ 1. saturated inputs are reported

def out_of_range_input() -> tuple[np.ndarray, int]:
    """Inputs on the grid, with three elements the default fix16.8 cannot hold ([-128, 127.996]):
    1000 and -300 are far out, and 127.999 rounds to 2^15, one past the largest code."""
    x = grid_inputs((4, 2, 1, 8, 8))
    x[0, 0, 0, 0, :3] = [1000.0, -300.0, 127.999]
    return x, 3


def test_saturated_inputs_are_counted_in_the_result_and_warned_of(one_head):
    x, saturated = out_of_range_input()
    with pytest.warns(api.InputSaturationWarning, match=r"3 of 512 elements .* \(largest magnitude 1000\)"):
        result = api.simulate(one_head, x)
    s = result.input_saturation["input"]  # named as forward names its argument (nn.Sequential: input)
    assert (s["saturated"], s["elements"], s["largest_magnitude"]) == (saturated, x.size, 1000.0)
    assert s["format"] == "fix16.8" and s["range"] == [-128.0, 127.99609375]
    assert result.stats()["input_saturation"] == result.input_saturation
    assert report(one_head.program, result)["input_saturation"] == result.input_saturation  # report.json

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an input in range: counted as 0, and no warning
        clean = api.simulate(one_head, grid_inputs((4, 2, 1, 8, 8)))
    assert clean.input_saturation["input"]["saturated"] == 0 and clean.warnings() == []


def test_run_prints_a_warning_and_records_saturation_in_its_json(one_head, tmp_path, capsys):
    x, saturated = out_of_range_input()
    np.save(tmp_path / "x.npy", x)
    one_head.program.save(tmp_path / "prog.bin")
    status, out, err = run_cli(capsys, "run", "--sim", tmp_path / "prog.bin", "--input", tmp_path / "x.npy", "--json")
    assert status == 0
    assert err.startswith("ttc: warning: input 'input': 3 of 512 elements") and len(err.splitlines()) == 1
    assert json.loads(out)["input_saturation"]["input"]["saturated"] == saturated


# ------------------------------------------------- 2. --output y.npy for several outputs, before the run

def test_npy_output_for_several_outputs_is_refused_before_simulating(two_heads, tmp_path, capsys, monkeypatch):
    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated before refusing the output path")

    monkeypatch.setattr("ttc.runtime.run.run", no_simulation)
    status, _, err = run_cli(capsys, "run", "--sim", two_heads[1], "--output", tmp_path / "y.npy")
    assert status == cli.EXIT_ERROR
    assert err.startswith("ttc: error: ") and len(err.splitlines()) == 1
    assert "returns 2 tensors (digit.1, parity.1)" in err and ".npz" in err
    assert not (tmp_path / "y.npy").exists()


# ---------------------------------------------------------------- 3. .npz arrays named after outputs

def test_npz_arrays_are_named_after_the_outputs_in_forward_order(two_heads, tmp_path, capsys):
    compiled, path = two_heads
    x = grid_inputs((4, 3, 1, 8, 8))
    np.save(tmp_path / "x.npy", x)
    status, _, err = run_cli(capsys, "run", "--sim", path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz")
    assert status == 0, err
    with np.load(tmp_path / "y.npz") as y:
        assert y.files == ["digit.1", "parity.1"]  # as `ttc inspect` names them, not arr_0, arr_1
        expected = api.simulate(compiled, x).outputs
        assert all(np.array_equal(y[name], e) for name, e in zip(y.files, expected))


def test_one_output_into_npz_is_an_archive_too_and_repeated_names_fall_back_to_positions(one_head, tmp_path, capsys):
    one_head.program.save(tmp_path / "prog.bin")
    status, _, err = run_cli(capsys, "run", "--sim", tmp_path / "prog.bin", "--output", tmp_path / "y.npz")
    assert status == 0, err
    with np.load(tmp_path / "y.npz") as y:
        assert y.files == [one_head.program.meta["outputs"][0]["name"]]
    # forward returning the same tensor twice names both outputs alike: positions keep them apart
    assert cli.output_names([{"name": "6"}, {"name": "6"}]) == ["out0", "out1"]


# -------------------------------------------------------------------------- 4. a broken pipe is quiet

def test_a_reader_that_stops_early_ends_the_command_quietly(two_heads):
    # The read end is closed before ttc writes a byte, so its first write or flush meets a closed pipe
    # whatever the pipe's buffer size (`ttc inspect prog.bin | head -0`, deterministically).
    proc = subprocess.Popen([sys.executable, "-m", "ttc.cli", "inspect", str(two_heads[1])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == cli.EXIT_BROKEN_PIPE == 141
    assert err == ""


# ---------------------------------------------------------------------- 5. simulate takes a Compiled

def test_simulate_takes_a_compiled_or_a_program_and_names_them_otherwise(one_head):
    x = grid_inputs((4, 2, 1, 8, 8))
    from_compiled = api.simulate(one_head, x).outputs[0]
    assert np.array_equal(from_compiled, api.simulate(one_head.program, x).outputs[0])
    with pytest.raises(TypeError, match="Program or the ttc.api.Compiled") as info:
        api.simulate("prog.bin", x)
    assert isinstance(info.value, UserError)


# ------------------------------------------------------------------ 6. run_float restores the modes

def test_run_float_puts_each_modules_training_flag_back():
    net = small_conv_snn().train()
    net[1].eval()  # a frozen batch norm inside a model in training
    before = [m.training for m in net.modules()]
    api.run_float(net, grid_inputs((4, 1, 1, 8, 8)))
    assert [m.training for m in net.modules()] == before
    assert net.training and not net[1].training


# -------------------------------------------------- 7. the demo refuses a model it cannot use, in one line

def _models(d):
    torch.save(nn.Sequential(M.Conv2d(3, 4, 3, padding=1), M.LIF(decay=0.5, threshold=0.5), M.Flatten(),
                             M.Linear(256, 10), M.TimeMean()), d / "rgb.pt")
    torch.save(nn.Sequential(M.Flatten(), M.Linear(64, 10), M.LIF(decay=0.5, threshold=0.5)), d / "per_step.pt")
    (d / "notes.pt").write_text("hello")
    (d / "empty.pt").write_bytes(b"")


@pytest.mark.parametrize("name, words", [
    ("missing.pt", "no such file"),
    ("notes.pt", "not a loadable model"),  # a text file: pickle failed with a KeyError, once an internal error
    ("empty.pt", "is empty"),
    ("rgb.pt", "cannot compile it for the demo's 8x8 digits"),  # a model for 3-channel images
    ("per_step.pt", "returns [4, N, 10]"),  # spikes per step, not one score per class
])
def test_demo_refuses_a_model_it_cannot_use_in_one_line(tmp_path, capsys, name, words):
    _models(tmp_path)
    status = demo.main(["--model", str(tmp_path / name)])
    out, err = capsys.readouterr()
    assert status == cli.EXIT_ERROR
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("ttc: error: ") and words in err, err


@pytest.mark.parametrize("trust", [False, True])
def test_a_text_file_is_not_a_model_with_or_without_trust(tmp_path, trust):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a loadable model"):
        load_model(tmp_path / "notes.pt", trust)
