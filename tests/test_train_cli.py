"""`ttc compile --train`, `ttc train` and `ttc inspect` of a training step, end to end on a tiny model; every
bad option or data file is one `ttc: error:` line naming it, exit status 1, and nothing written."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ttc.cli import EXIT_ERROR, main, parse_lr
from ttc.frontends import modules as M

T, CLASSES = 4, 4


def tiny(bias=False):
    torch.manual_seed(0)
    return nn.Sequential(M.Linear(12, 8, bias=bias), M.LIF(decay=0.5, threshold=0.5), M.Linear(8, CLASSES, bias=bias),
                         M.TimeMean())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny model, spike data (a class per input group, so that it learns something) and its training step."""
    d = tmp_path_factory.mktemp("train")
    torch.save(tiny(), d / "tiny.pt")
    rng = np.random.default_rng(0)
    for name, n in (("x", 64), ("hx", 16)):
        y = rng.integers(0, CLASSES, n)
        rate = np.where(np.arange(12)[None, :] // 3 == y[:, None], 0.7, 0.1)
        np.save(d / f"{name}.npy", (rng.random((T, n, 12)) < rate).astype(np.float32))
        np.save(d / f"{name[:-1]}y.npy", y)
    assert main(["-q", "compile", str(d / "tiny.pt"), "--input-shape", f"{T},N,12", "--input-encoding", "spikes",
                 "--train", "--lr", "2^-5", "--band", "0.5", "--batch", "8", "-o", str(d / "step.bin")]) == 0
    return d


def listing(d):
    return sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir())


def fails(capsys, d, argv, *words):
    """`ttc argv` fails with one line naming `words`, exit 1, and leaves `d` as it was."""
    before = listing(d)
    capsys.readouterr()
    assert main(["-q", *map(str, argv)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("ttc: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    assert listing(d) == before
    return err


def test_compile_train_then_train_then_run_and_load(work, tmp_path, capsys):
    capsys.readouterr()
    out, pt = tmp_path / "trained.bin", tmp_path / "trained.pt"
    assert main(["-q", "train", str(work / "step.bin"), "--sim", "--data", str(work / "x.npy"), "--labels",
                 str(work / "y.npy"), "--epochs", "2", "--held-out", str(work / "hx.npy"), str(work / "hy.npy"),
                 "-o", str(out), "--weights", str(pt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["epoch 1/2", "epoch 2/2"]
    for word in ("loss", "train accuracy", "held-out accuracy", "forward", "backward", "update", "cycles", "uJ"):
        assert word in lines[0]
    assert lines[2:] == [f"wrote {out}: the inference program with the trained weights",
                         f"wrote {pt}: the trained weights as a state dict of the source model"]
    assert main(["run", "--sim", str(out), "--input", str(work / "hx.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch"] == 16
    state = torch.load(pt)
    assert sorted(state) == ["0.weight", "2.weight"] and state["0.weight"].shape == (8, 12)
    model = tiny()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and torch.equal(model[0].weight.detach(), state["0.weight"])
    assert not torch.equal(tiny()[0].weight.detach(), state["0.weight"])  # it trained


def test_train_json_seed_and_batch(work, capsys):
    argv = ["-q", "train", str(work / "step.bin"), "--sim", "--data", str(work / "x.npy"), "--labels",
            str(work / "y.npy"), "--epochs", "1", "--batch", "4", "--json"]
    runs = []
    for seed in (0, 0, 1):
        capsys.readouterr()
        assert main(argv + ["--seed", str(seed)]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    (epoch,) = runs[0]
    assert epoch["steps"] == 16 and epoch["held_out_accuracy"] is None
    assert set(epoch["cycles_per_step"]) == set(epoch["energy_pj_per_step"]) == {"forward", "backward", "update"}
    assert runs[0] == runs[1] and runs[0][0]["loss"] != runs[2][0]["loss"]


def validate_inspect(info):
    import jsonschema
    from referencing import Registry, Resource

    docs = Path(__file__).parent.parent / "docs" / "schema"
    run = json.loads((docs / "run.schema.json").read_text())
    registry = Registry().with_resource("https://ttc.invalid/schema/run.schema.json", Resource.from_contents(run))
    jsonschema.Draft202012Validator(json.loads((docs / "inspect.schema.json").read_text()), registry=registry).validate(info)


def test_inspect_a_training_step(work, tmp_path, capsys):
    capsys.readouterr()
    assert main(["inspect", str(work / "step.bin"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    validate_inspect(info)
    t = info["train"]
    assert t["options"] == dict(loss="mse", lr_shift=5, surrogate="rect", band=0.5, sparse=False, batch=8,
                                weight_bits=16, form="auto", spike_density=0.1, active_density=0.1)
    assert t["phases"]["forward"] == 0 < t["phases"]["backward"] < t["phases"]["update"] < info["instructions"]
    assert [r["path"] for r in t["layers"]] == ["0", "2"]
    assert set(t["layers"][0]) == {"name", "path", "op", "cin", "cout", "form", "grad_frac", "src_shift", "wgrad_shift",
                                   "pre_shift", "post_shift", "dw_frac", "sgd_shift"}
    assert t["calibration"] == "16 random samples (seed 0)"
    assert {layer["phase"] for layer in info["layers"]} == {"forward", "backward", "update"}
    assert main(["inspect", str(work / "step.bin")]) == 0
    text = capsys.readouterr().out
    assert "training step: forward from instruction 0" in text and "lr 2^-5" in text and "sgd_shift" in text
    # an inference program says nothing of training
    assert main(["-q", "compile", str(work / "tiny.pt"), "--input-shape", f"{T},N,12", "--input-encoding", "spikes",
                 "-o", str(tmp_path / "inf.bin")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "inf.bin"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "train" not in info and all("phase" not in layer for layer in info["layers"])


def test_active_band_is_sparse_and_the_same_learning(work, tmp_path, capsys):
    step = tmp_path / "sparse.bin"
    assert main(["-q", "compile", str(work / "tiny.pt"), "--input-shape", f"{T},N,12", "--input-encoding", "spikes",
                 "--train", "--lr", "0.03125", "--active-band", "0.5", "--batch", "8", "--train-weight-bits", "16",
                 "--emit-ir", str(tmp_path / "step.ir"), "-o", str(step)]) == 0
    assert "= tape(" in (tmp_path / "step.ir").read_text()
    capsys.readouterr()
    assert main(["inspect", str(step), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["options"]["sparse"] is True
    losses = []
    for program in (work / "step.bin", step):
        assert main(["-q", "train", str(program), "--sim", "--data", str(work / "x.npy"), "--labels",
                     str(work / "y.npy"), "--epochs", "1", "--json"]) == 0
        losses.append(json.loads(capsys.readouterr().out)[0]["loss"])
    assert losses[0] == losses[1]  # the same gradients, less work


def test_calibrate_sets_the_gradient_formats_for_the_data_given(work, tmp_path, capsys):
    base = ["compile", work / "tiny.pt", "--input-shape", f"{T},N,12", "--input-encoding", "spikes", "--train",
            "--batch", "8", "-o", tmp_path / "cal.bin"]
    assert main(["-q", *map(str, base), "--calibrate", str(work / "x.npy"), str(work / "y.npy")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "cal.bin"), "--json"]) == 0
    calibrated = json.loads(capsys.readouterr().out)["train"]
    assert calibrated["calibration"] == "64 samples of data"
    np.save(tmp_path / "fy.npy", np.zeros(64, np.float32))
    fails(capsys, tmp_path, base + ["--calibrate", work / "x.npy", tmp_path / "fy.npy"], "fy.npy", "labels must be integers")
    fails(capsys, tmp_path, base + ["--calibrate", work / "x.npy", work / "hy.npy"], "calibration data of shape (4, 64, 12)",
          "16 labels")
    no_train = [arg for arg in base if arg != "--train"]
    fails(capsys, tmp_path, no_train + ["--calibrate", work / "x.npy", work / "y.npy"], "--calibrate", "--train")


@pytest.mark.parametrize("text, shift", [("2^-7", 7), ("2**-7", 7), ("0.0078125", 7), ("1", 0), ("2^-30", 30),
                                         ("2^-31", None), ("0.01", None), ("2^7", None), ("-0.5", None), ("x", None)])
def test_lr_is_a_power_of_two(text, shift):
    from ttc.cli import CliError

    if shift is None:
        with pytest.raises(CliError, match="power of two 2\\^-k, 0 <= k <= 30"):
            parse_lr(text)
    else:
        assert parse_lr(text) == shift


def test_compile_errors(work, tmp_path, capsys):
    mt = nn.Sequential(M.Linear(12, 8, bias=False), M.MTNeuron(2, "parallel", threshold=0.5, decay=0.5),
                       M.Linear(8, CLASSES, bias=False), M.TimeMean())
    torch.save(mt, tmp_path / "mt.pt")
    base = ["compile", tmp_path / "mt.pt", "--input-shape", f"{T},N,12", "--input-encoding", "spikes",
            "-o", tmp_path / "s.bin"]
    fails(capsys, tmp_path, base + ["--train"], "mt.pt", "several thresholds")  # names the model and the layer
    fails(capsys, tmp_path, base + ["--lr", "2^-5"], "--lr", "--train")
    fails(capsys, tmp_path, base + ["--active-band", "0.5"], "--active-band", "--train")
    fails(capsys, tmp_path, base + ["--train", "--lr", "0.1"], "--lr 0.1", "power of two")
    fails(capsys, tmp_path, base + ["--train", "--band", "0.5", "--active-band", "0.5"], "--band", "--active-band")
    fails(capsys, tmp_path, base + ["--train", "--tt-rank", "2"], "--tt-rank", "--train")
    fails(capsys, tmp_path, base + ["--train", "--explain"], "--explain", "--train")
    fails(capsys, tmp_path, base + ["--train", "--loss", "hinge"], "loss 'hinge'", "mse")
    fails(capsys, tmp_path, base + ["--train", "--train-weight-bits", "4"], "4 bits")
    torch.save(tiny(), tmp_path / "hard.pt")  # LIF with a hard reset: only the explicit form
    hard = ["compile", tmp_path / "hard.pt", "--input-shape", f"{T},N,12", "--input-encoding", "spikes", "-o",
            tmp_path / "s.bin", "--train"]
    fails(capsys, tmp_path, hard + ["--grad-form", "trace"], "hard.pt", "hard reset", "trace form")


def test_train_errors(work, tmp_path, capsys):
    d = tmp_path
    rng = np.random.default_rng(1)
    files = {"short.npy": (rng.random((T, 5, 12)) < 0.5).astype(np.float32), "shortY.npy": np.zeros(5, np.int64),
             "wide.npy": np.zeros((T, 64, 13), np.float32), "half.npy": np.full((T, 64, 12), 0.5, np.float32),
             "ylong.npy": np.zeros(65, np.int64), "y2d.npy": np.zeros((64, 1), np.int64),
             "yfloat.npy": np.zeros(64, np.float32), "yrange.npy": np.full(64, CLASSES, np.int64),
             "yneg.npy": np.full(64, -1, np.int64)}
    for name, array in files.items():
        np.save(d / name, array)
    step, x, y = work / "step.bin", work / "x.npy", work / "y.npy"
    out = ["-o", d / "t.bin", "--weights", d / "t.pt"]

    def train(data=x, labels=y, *more):
        return ["train", step, "--sim", "--data", data, "--labels", labels, "--epochs", "1", *more, *out]

    fails(capsys, d, ["train", step, "--data", x, "--labels", y, "--epochs", "1", *out], "--sim")
    fails(capsys, d, train(d / "wide.npy"), "wide.npy", "shape")
    fails(capsys, d, train(d / "half.npy"), "half.npy", "0 and 1")
    fails(capsys, d, train(x, d / "ylong.npy"), "ylong.npy", "(64,)")
    fails(capsys, d, train(x, d / "y2d.npy"), "y2d.npy", "(64,)")
    fails(capsys, d, train(x, d / "yfloat.npy"), "yfloat.npy", "integers")
    fails(capsys, d, train(x, d / "yrange.npy"), "yrange.npy", "out of range")
    fails(capsys, d, train(x, d / "yneg.npy"), "yneg.npy", "out of range")
    fails(capsys, d, train(d / "short.npy", d / "shortY.npy"), "short.npy", "one batch of 8")
    fails(capsys, d, train(x, y, "--batch", "16"), "step.bin", "--batch 16")
    fails(capsys, d, train(x, y, "--held-out", d / "wide.npy", y), "wide.npy", "shape")
    fails(capsys, d, train(x, y, "--held-out", x, d / "yrange.npy"), "yrange.npy")
    fails(capsys, d, train(d / "missing.npy"), "missing.npy", "no such file")
    assert main(["-q", "compile", str(work / "tiny.pt"), "--input-shape", f"{T},N,12", "--input-encoding", "spikes",
                 "-o", str(work / "inference.bin")]) == 0
    fails(capsys, d, ["train", work / "inference.bin", "--sim", "--data", x, "--labels", y, "--epochs", "1", *out],
          "inference.bin", "not a training step")
    fails(capsys, d, ["train", step, "--sim", "--data", x, "--labels", y, "--epochs", "1", "--weights", d / "t.pt",
                      "-o", d / "no-such-dir" / "t.bin"], "no-such-dir", "no such directory")


def test_train_check_steps_the_reference_and_a_difference_is_status_3(work, tmp_path, capsys, monkeypatch):
    argv = ["-q", "train", str(work / "step.bin"), "--sim", "--data", str(work / "x.npy"), "--labels",
            str(work / "y.npy"), "--epochs", "1", "--check", str(work / "tiny.pt")]
    capsys.readouterr()
    assert main(argv + ["-o", str(tmp_path / "a.bin")]) == 0
    out = capsys.readouterr().out
    assert "checked: the weights equal the integer training reference's after each of the 8 steps" in out
    from ttc.compiler.train_reference import TrainingReference

    step = TrainingReference.step

    def off_by_one(self, x, labels):  # a reference that disagrees from the third step on
        result = step(self, x, labels)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls >= 3:
            name = next(iter(self.weights))
            self.weights[name] = self.weights[name] + 1
        return result

    monkeypatch.setattr(TrainingReference, "step", off_by_one)
    before = listing(tmp_path)
    assert main(argv + ["-o", str(tmp_path / "b.bin")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("ttc: check: ") and "step 3: layer 0's weights differ from the integer training reference's" in err
    assert listing(tmp_path) == before  # nothing written
    torch.save(tiny(bias=True), tmp_path / "other.pt")
    fails(capsys, tmp_path, argv[:-1] + [tmp_path / "other.pt"], "other.pt", "not the model this program was compiled from")
