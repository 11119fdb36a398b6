"""The five fuzz targets: each reads one input as ttc reads that kind of file from a user.

A target returns normally or raises; the engine decides what a raise means (a ttc error is a pass).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import cli, mutators


class BackendsDiffer(AssertionError):
    """The JIT and NumPy simulators disagree on a program (a failure the engine records)."""


def _program(blob: bytes) -> None:
    """prog.bin: load and validate; a program that loads is simulated on a batch of one (zeros) by both
    simulator backends, which must agree: the same outputs and counters, or the same error."""
    from ttc.isa.errors import UserError
    from ttc.isa.program import Program
    from ttc.runtime.run import run
    prog = Program.from_bytes(blob, "fuzz.bin")
    inputs = [np.zeros([1 if d == "N" else d for d in _shape(io)], dtype=np.float32) for io in prog.meta["inputs"]]
    results = []
    for backend in ("numpy", "jit"):
        try:
            r = run(prog, inputs, backend)
            results.append(([o.tobytes() for o in r.outputs], r.counters, r.cycles))
        except UserError as e:
            results.append((type(e).__name__, str(e)))
    if results[0] != results[1]:
        raise BackendsDiffer(f"numpy: {str(results[0])[:300]}; jit: {str(results[1])[:300]}")
    if isinstance(results[0][0], str):
        raise UserError(results[0][1])


def _shape(io: dict) -> list:
    from ttc.runtime.run import expected_shape
    return expected_shape(io)


def _asm(blob: bytes) -> None:
    from ttc.isa.asm import assemble
    from ttc.isa.files import decode_text
    assemble(decode_text(blob, "fuzz.s"), "fuzz.s")


def _ir(blob: bytes) -> None:
    from ttc.compiler.ir_text import parse_graph
    from ttc.isa.files import decode_text
    parse_graph(decode_text(blob, "fuzz.ir"), "fuzz.ir")


def _hw(blob: bytes) -> None:
    from ttc.isa.files import decode_text
    from ttc.isa.hwconfig import parse_hw
    parse_hw(decode_text(blob, "fuzz.toml"), "fuzz.toml")


class ModelFile:
    """The model target reads a file (torch.load takes a path), written before the target runs so that
    the engine's no-writes check sees only what loading does. weights_only loading only: never trust."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ttc-fuzz-model-"))
        self.path = self.dir / "fuzz.pt"

    def prepare(self, blob: bytes) -> None:
        self.path.write_bytes(blob)

    def __call__(self, blob: bytes) -> None:
        from ttc.frontends.load import load_model
        load_model(self.path, trust=False)


@dataclass
class Target:
    name: str
    run: Callable[[bytes], None]
    mutate: Callable  # (rng, blob, pool) -> bytes
    prepare: Callable[[bytes], None] | None = None  # writes what the target reads, outside the no-writes check
    watch_writes: bool = True  # reading must write nothing (the cli target judges what commands write itself)


def _program_mutation(rng, blob, pool):
    # mostly structure-aware (past the checksums); sometimes raw damage, which the checksums must catch
    if rng.random() < 0.85:
        return mutators.mutate_program(rng, rng.choice(pool) if rng.random() < 0.5 else blob, pool)
    return mutators.mutate_bytes(rng, blob, pool)


def _any_mutation(rng, blob, pool):
    """For the cli target, whose seeds are files of every kind: the mutations of the file's own kind."""
    kind = cli.kind(blob)
    if kind == "program":
        return _program_mutation(rng, blob, [b for b in pool if cli.kind(b) == "program"])
    if kind == "model":
        return mutators.mutate_model(rng, blob, pool)
    if kind == "npy":
        return mutators.mutate_bytes(rng, blob, pool)
    return mutators.mutate_text(rng, blob, pool)


def targets() -> dict[str, Target]:
    from ttc import demo
    from .seeds import seeds
    model = ModelFile()
    command_line = cli.CliTarget(seeds()["program"][0], demo.MODEL)
    return {t.name: t for t in (
        Target("program", _program, _program_mutation),
        Target("asm", _asm, mutators.mutate_text),
        Target("ir", _ir, mutators.mutate_text),
        Target("hw", _hw, mutators.mutate_text),
        Target("model", model, mutators.mutate_model, model.prepare),
        Target("cli", command_line, _any_mutation, command_line.prepare, watch_writes=False),
    )}
