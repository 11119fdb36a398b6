"""Seeds: real artefacts made at start-up, so that mutations start from what ttc itself writes.

The three embedded demo models (dense digits SNN, TTFS, MT-SNN) are compiled; their prog.bin bytes,
disassembly and printed IR (the quantized graph and the scheduled one, i.e. after most passes) seed the
program, assembly and IR targets; the hardware presets seed the TOML target; the model files themselves
(torch.save zips) seed the model target; all of them and the demo programs' default inputs (.npy) seed
the cli target. A small training step (docs/training.md) seeds the program and assembly targets too.
"""
from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

from ttc import api, demo
from ttc.compiler.ir_text import print_graph
from ttc.isa.asm import disassemble
from ttc.cli import default_input
from ttc.isa.hwconfig import PRESET_DIR

#: Each demo model and the input shape it compiles for (TTFS is static: no time axis).
DEMO_MODELS = ((demo.MODEL, "4,N,1,8,8"), (demo.CAT_MODEL, "N,1,8,8"), (demo.MT_MODEL, "1,N,1,8,8"))


def training_step():
    """The training-step program of a small fully connected digits SNN (forward, backward, update)."""
    from ttc.compiler.train import TrainOptions
    from ttc.digits import build_fc_snn

    return api.compile_training(build_fc_snn(16), "4,N,1,8,8", train=TrainOptions(batch=8), input_bits=8,
                                input_frac=4).program


@lru_cache(maxsize=1)
def seeds() -> dict[str, list[bytes]]:
    """Seed inputs by target name."""
    out: dict[str, list[bytes]] = {"program": [], "asm": [], "ir": [], "hw": [], "model": []}
    inputs = []
    for path, shape in DEMO_MODELS:
        compiled = api.compile_file(path, shape)
        buffer = io.BytesIO()
        np.save(buffer, default_input(compiled.program.meta["inputs"][0]))
        inputs.append(buffer.getvalue())
        out["program"].append(compiled.program.to_bytes())
        out["asm"].append(disassemble(compiled.program).encode())
        out["ir"].append(print_graph(compiled.quantized).encode())
        out["ir"].append(print_graph(compiled.graph).encode())
        out["model"].append(path.read_bytes())
    step = training_step()  # the training instructions (nbwd, wgrad, the transposed dconv, sgd) as programs run them
    out["program"].append(step.to_bytes())
    out["asm"].append(disassemble(step).encode())
    out["hw"] = [p.read_bytes() for p in sorted(PRESET_DIR.glob("*.toml"))]
    out["cli"] = [*out["program"], *out["asm"], *out["hw"], *out["model"], *inputs]
    return out
