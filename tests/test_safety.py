"""Inputs are untrusted (issue 19): a model file's pickle payload never runs without --trust-model, not
even nested inside the state of a module ttc allows, on `compile` and on `run --check`; and the same
model and options give a byte-identical prog.bin in any process, hash seed and working directory."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from ttc.demo import TT_MODEL
from ttc.frontends import modules as M


class _Payload:
    """Unpickling this runs `Path(marker).touch()`: a harmless stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def _ttc(*args, cwd, hash_seed="0"):
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, "-m", "ttc.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_a_pickle_payload_never_runs_without_trust_even_inside_an_allowed_module(tmp_path):
    marker = tmp_path / "payload-ran"
    net = nn.Sequential(M.Conv2d(1, 2, 3, padding=1), M.LIF(), M.Flatten(), M.Linear(128, 10), M.TimeMean())
    net[1].smuggled = _Payload(str(marker))  # in the state of a module ttc allows
    torch.save(net, tmp_path / "model.pt")
    assert not marker.exists()
    compiled = _ttc("compile", "model.pt", "-o", "prog.bin", "--input-shape", "4,N,1,8,8", cwd=tmp_path)
    assert compiled.returncode == 1 and "--trust-model" in compiled.stderr
    assert not marker.exists() and not (tmp_path / "prog.bin").exists()

    clean = nn.Sequential(M.Conv2d(1, 2, 3, padding=1), M.LIF(), M.Flatten(), M.Linear(128, 10), M.TimeMean())
    torch.save(clean, tmp_path / "clean.pt")
    assert _ttc("compile", "clean.pt", "-o", "prog.bin", "--input-shape", "4,N,1,8,8", cwd=tmp_path).returncode == 0
    checked = _ttc("run", "--sim", "prog.bin", "--check", "model.pt", cwd=tmp_path)  # the check loads the model too
    assert checked.returncode == 1 and "--trust-model" in checked.stderr and not marker.exists()


def test_compiling_is_deterministic_across_processes_hash_seeds_and_directories(tmp_path):
    """The tensor-train digits model runs every pass (factorised layers, contraction plans, tiles)."""
    blobs = []
    for k, seed in enumerate(("1", "4242")):
        work = tmp_path / f"run{k}"
        work.mkdir()
        (work / "model.pt").write_bytes(Path(TT_MODEL).read_bytes())
        model = "model.pt" if k == 0 else work / "model.pt"  # relative in one, absolute in the other
        result = _ttc("compile", model, "-o", "prog.bin", "--input-shape", "4,N,1,8,8", cwd=work, hash_seed=seed)
        assert result.returncode == 0, result.stderr
        blobs.append((work / "prog.bin").read_bytes())
    assert blobs[0] == blobs[1]
