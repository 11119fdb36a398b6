"""Where a result comes from: which ttc, which program, which hardware config, which input. Every JSON
ttc writes about a run or a program carries this block, so that a figure can be cited from the file
alone (docs/outputs.md describes the keys).

    provenance:
      schema_version   of the JSON ttc writes (SCHEMA_VERSION: raised when a key changes meaning)
      ttc_version      the ttc that wrote it (the package metadata: one source, pyproject.toml)
      program          the prog.bin: its path (if it came from a file), sha256 of its bytes, the ttc
                       that compiled it
      hardware         the config the run was priced with: its name, digest and where its energy
                       figures come from (`energy_source`)
      input            the file and sha256 of its bytes, or the deterministic random batch used instead
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ttc.isa.program import Program, ttc_version

SCHEMA_VERSION = 1
RANDOM_SEED = 0  # the seed of the batch `ttc run` simulates when no input is given


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_provenance(x: np.ndarray, path: str | None) -> dict:
    """The input as given: a file (its bytes' digest), or the random batch `ttc run` made up."""
    if path is None:
        return dict(source="random", seed=RANDOM_SEED, shape=list(x.shape),
                    note="no --input: a deterministic random batch, not data")
    return dict(source="file", path=str(path), sha256=sha256(Path(path).read_bytes()), shape=list(x.shape))


def provenance(prog: Program, program_path: str | None = None, x_source: dict | None = None) -> dict:
    program = dict(sha256=sha256(Path(program_path).read_bytes() if program_path else prog.to_bytes()),
                   compiled_by=prog.meta["ttc_version"])
    if program_path:
        program["path"] = str(program_path)
    out = dict(schema_version=SCHEMA_VERSION, ttc_version=ttc_version(), program=program,
               hardware=dict(name=prog.hw.name, digest=prog.hw.digest, energy_source=prog.hw.energy_source))
    if x_source is not None:
        out["input"] = x_source
    return out


def describe_input(source: dict) -> str:
    """One terminal line saying where the input came from."""
    if source["source"] == "random":
        return (f"input: a deterministic random batch of shape {source['shape']} (seed {source['seed']}), not data: "
                "pass --input x.npy to run yours")
    return f"input: {source['path']} (sha256 {source['sha256'][:12]}, shape {source['shape']})"
