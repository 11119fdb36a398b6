"""Loading models: what is not a module (a state_dict, a training checkpoint, a TorchScript archive, a
class of the training script) is one line saying what to save instead, through the API and the CLI;
a trusted class in the user's own module imports from the directory ttc runs in; a GPU-saved model
loads on the CPU; snnTorch models load after ttc.api.save_model and compile straight after training;
and the CLI's compile does not pull in torch._dynamo or the plotting and third-party libraries."""
import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import snntorch as snn
import torch
from torch import nn

from conftest import grid_inputs
from test_end_to_end import bits_equal
from test_thirdparty import SnnTorchFC
from ttc import api, cli
from ttc.frontends import modules as M
from ttc.frontends.load import ModelLoadError, load_model


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(M.Linear(4, 3), M.LIF(decay=0.5, threshold=0.5)).eval()


class MainNet(nn.Module):
    """Stands for a class defined in the training script: pickled as __main__.MainNet."""

    def forward(self, x):
        return x


def save_state_dict(path):
    torch.save(small_net().state_dict(), path)


def save_checkpoint(path):
    torch.save({"model": small_net().state_dict(), "epoch": 3}, path)


def save_lightning_style_checkpoint(path):
    torch.save({"state_dict": small_net().state_dict(), "optimizer": {}}, path)


def save_module_inside_dict(path):
    torch.save({"model": small_net(), "epoch": 3}, path)


def save_torchscript(path):
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still have such files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(nn.Linear(4, 3)), path)


def save_class_of_main(path, monkeypatch):
    MainNet.__module__ = "__main__"  # what a class defined in `python train.py` is
    monkeypatch.setattr(sys.modules["__main__"], "MainNet", MainNet, raising=False)
    try:
        torch.save(MainNet(), path)
    finally:
        MainNet.__module__ = __name__


CASES = {  # how the file is written, and the words its one-line error must hold
    "state_dict": (save_state_dict, ["holds a state_dict", "load_state_dict", "torch.save(model)",
                                     "ttc.api.compile_model"]),
    "checkpoint": (save_checkpoint, ["training checkpoint", "'model', 'epoch'",
                                     "load_state_dict(checkpoint['model'])", "torch.save(model)"]),
    "state_dict-key": (save_lightning_style_checkpoint, ["training checkpoint",
                                                         "load_state_dict(checkpoint['state_dict'])"]),
    "module-in-dict": (save_module_inside_dict, ["with the model under 'model'", "torch.save(checkpoint['model'])"]),
    "torchscript": (save_torchscript, ["TorchScript archive", "torch.save(model)", "ttc.api.compile_model"]),
    "class-in-main": (save_class_of_main, ["class MainNet", "script that saved the model", "into a module"]),
}


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_what_is_not_a_module_is_one_line_of_advice_from_the_api_and_the_cli(case, trust, tmp_path, monkeypatch, capsys):
    save, words = CASES[case]
    path = tmp_path / f"{case}.pt"
    if save is save_class_of_main:
        save(path, monkeypatch)
        monkeypatch.delattr(sys.modules["__main__"], "MainNet")  # ttc's process is not the training script
    else:
        save(path)
    with pytest.raises(ModelLoadError) as err:
        load_model(path, trust=trust)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    for w in words:
        assert w in message, message
    argv = ["compile", str(path), "-o", str(tmp_path / "p.bin"), "--input-shape", "2,N,4"]
    assert cli.main(argv + (["--trust-model"] if trust else [])) == cli.EXIT_ERROR
    assert capsys.readouterr().err == f"ttc: error: {message}\n"
    assert not (tmp_path / "p.bin").exists()


def test_a_model_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    model = small_net()
    with monkeypatch.context() as m:  # what torch.save writes for CUDA tensors, on a machine without one
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(model, tmp_path / "gpu.pt")
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really names the GPU
        torch.load(tmp_path / "gpu.pt", weights_only=False)
    loaded = load_model(tmp_path / "gpu.pt")
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert torch.equal(loaded[0].weight, model[0].weight)


def write_user_module(directory, name):
    (directory / f"{name}.py").write_text(textwrap.dedent("""
        import torch
        from ttc.frontends import modules as M

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = M.Linear(4, 3)
                self.lif = M.LIF(decay=0.5, threshold=0.5)

            def forward(self, x):
                return self.lif(self.fc(x))
    """))


def save_user_model(directory, name):
    """A model of class `name`.Net, saved as a user's training script beside `name`.py would."""
    sys.path.insert(0, str(directory))
    try:
        torch.save(__import__(name).Net(), directory / "model.pt")
    finally:
        sys.path.remove(str(directory))
        del sys.modules[name]  # so that ttc has to find the module itself


def test_cli_imports_a_trusted_class_from_the_directory_it_runs_in_and_not_dynamo_or_unused_libraries(tmp_path):
    """One `ttc compile` in a fresh process (each takes seconds) checks two things: the user's class in
    ./usermodels_cwd.py imports with no PYTHONPATH, and the compile imports neither torch._dynamo (fx's
    stack-trace symbolisation pulls it in: about 1.5 s; ttc records source lines itself) nor plotting,
    scikit-learn, tensorly or the third-party SNN libraries a torch.nn model does not name."""
    write_user_module(tmp_path, "usermodels_cwd")
    save_user_model(tmp_path, "usermodels_cwd")
    (tmp_path / "out").mkdir()
    script = ("import json, sys\nfrom ttc.cli import main\n"
              "code = main(['compile', 'model.pt', '-o', 'out/p.bin', '--input-shape', '2,N,4', '--trust-model'])\n"
              "print(json.dumps([code, sorted(sys.modules)]))")
    # -P: no directory prepended to sys.path, as when the `ttc` script runs: only ttc's loader adds cwd
    r = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    code, modules = json.loads(r.stdout.strip().splitlines()[-1])
    assert code == 0 and (tmp_path / "out" / "p.bin").stat().st_size > 0, r.stderr
    assert "usermodels_cwd" in modules
    heavy = ("torch._dynamo", "torch._inductor", "matplotlib", "sklearn", "tensorly", "scipy", "sympy",
             "spikingjelly", "snntorch")
    assert [m for m in modules if m.startswith(heavy)] == []


def test_a_trusted_class_imports_from_the_model_files_directory_and_sys_path_is_restored(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    write_user_module(models, "usermodels_beside")
    save_user_model(models, "usermodels_beside")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path_before = list(sys.path)
    try:
        model = load_model(models / "model.pt", trust=True)
        assert type(model).__module__ == "usermodels_beside" and sys.path == path_before
        (elsewhere / "model.pt").write_bytes((models / "model.pt").read_bytes())
        del sys.modules["usermodels_beside"]
        with pytest.raises(ModelLoadError, match="module 'usermodels_beside', which does not import from here"):
            load_model(elsewhere / "model.pt", trust=True)  # neither cwd nor the file's directory holds it
        assert sys.path == path_before
    finally:
        sys.modules.pop("usermodels_beside", None)


def trained_snntorch_net() -> nn.Module:
    """An snnTorch network straight out of a training step: its neurons hold `mem` with a grad_fn."""
    torch.manual_seed(30)
    net = SnnTorchFC("subtract", beta=0.5, threshold=0.5)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    spikes, mems = net(torch.rand(4, 8, 1, 8, 8))
    (spikes.sum(0).var() + mems.mean()).backward()
    optimizer.step()
    assert net.lif1.mem.grad_fn is not None and net.training
    return net


def test_snntorch_net_compiles_straight_after_training_and_is_left_unchanged():
    net = trained_snntorch_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    mem = net.lif1.mem
    compiled = api.compile_model(net, "4,N,1,8,8")
    assert net.training and net.lif1.mem is mem and mem.grad_fn is not None
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    x = grid_inputs((4, 10, 1, 8, 8), seed=33)
    sim = api.simulate(compiled.program, x).outputs
    ref = api.reference(compiled, x)
    assert len(sim) == 2 and all(bits_equal(s, r) for s, r in zip(sim, ref))
    assert sim[0].sum() > 0 and sim[1].std() > 0


def test_snntorch_default_surrogate_saves_with_save_model_and_loads_without_trust(tmp_path):
    net = nn.Sequential(nn.Linear(64, 10), snn.Leaky(beta=0.5, init_hidden=True),
                        snn.Leaky(beta=0.5, init_hidden=True, spike_grad=snn.surrogate.fast_sigmoid(slope=10)))
    with pytest.raises(AttributeError, match="Can't pickle local object 'atan.<locals>.inner'"):
        torch.save(net, tmp_path / "plain.pt")  # why save_model exists
    api.save_model(net, tmp_path / "snn.pt")
    loaded = load_model(tmp_path / "snn.pt")  # every class is one ttc knows: no --trust-model
    assert loaded[1].spike_grad.__qualname__ == "atan.<locals>.inner"
    assert loaded[2].spike_grad.__closure__[0].cell_contents == 10  # the same surrogate, to train on
    assert loaded[1].state_function.__func__ is snn.Leaky._base_sub and loaded[1].state_function.__self__ is loaded[1]
    assert torch.equal(loaded[0].weight, net[0].weight)


def test_snntorch_time_loop_model_saved_with_save_model_compiles_from_the_cli(tmp_path, capsys):
    net = SnnTorchFC("subtract").eval()
    api.save_model(net, tmp_path / "snn.pt")
    argv = ["compile", str(tmp_path / "snn.pt"), "-o", str(tmp_path / "p.bin"), "--input-shape", "4,N,1,8,8"]
    assert cli.main(argv) == cli.EXIT_ERROR  # SnnTorchFC is the user's class (here the tests')
    assert "test_thirdparty.SnnTorchFC" in capsys.readouterr().err
    assert cli.main(argv + ["--trust-model"]) == 0, capsys.readouterr().err
    x = grid_inputs((4, 3, 1, 8, 8), seed=32)
    loaded = load_model(tmp_path / "snn.pt", trust=True)
    assert all(np.array_equal(a, b) for a, b in zip(api.run_float(loaded, x), api.run_float(net, x)))


def test_an_snntorch_model_saved_with_torch_save_says_to_use_save_model(tmp_path):
    net = nn.Sequential(nn.Linear(64, 10), snn.Leaky(beta=0.5, init_hidden=True, spike_grad=snn.surrogate.heaviside))
    torch.save(net, tmp_path / "plain.pt")  # a module-level spike_grad pickles; the neuron's state_function
    with pytest.raises(ModelLoadError, match=r"state_function.*ttc\.api\.save_model\(model, path\)"):
        load_model(tmp_path / "plain.pt")


def test_unsupported_code_names_the_users_source_line():
    class ReluAtTheEnd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = M.Linear(64, 10)

        def forward(self, x):
            y = self.fc(x.flatten(2))
            return torch.relu(y)  # the line the error must name

    with pytest.raises(Exception) as err:
        api.compile_model(ReluAtTheEnd(), "4,N,1,8,8")
    line = next(n for n, text in enumerate(open(__file__), 1) if "the line the error must name" in text)
    assert f'File "{__file__}", line {line}, in forward' in str(err.value), str(err.value)
