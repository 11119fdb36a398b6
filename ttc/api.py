"""ttc's public Python API: compile a model, run a program on the simulator, check it."""
from __future__ import annotations

import copy
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ttc.compiler.codegen import generate
from ttc.compiler.counting import count
from ttc.compiler.ir import Conv2d, Graph, Linear
from ttc.compiler.passes import PIPELINE, TRAIN_PIPELINE, OptionError, pipeline_arguments, run_pipeline, user_options
from ttc.compiler.train import TrainOptions
from ttc.compiler.train_plan import generate_training
from ttc.compiler.reference import run_reference
from ttc.frontends.load import load_model, save_model  # noqa: F401 (the public API: ttc.api.save_model)
from ttc.frontends.nir import DEFAULT_DT, check_input_shape, to_nir
from ttc.frontends.trace import parse_input_shape, trace
from ttc.isa.errors import UserError
from ttc.isa.hwconfig import HwConfig, load_hw
from ttc.isa.program import Program
from ttc.runtime.run import RunResult, run


class ApiError(UserError, TypeError):
    """An argument of the wrong kind given to the API (a TypeError, as Python's own calls raise)."""


class InputSaturationWarning(UserWarning):
    """Input values outside the range of the program's input format, saturated to its ends."""


@dataclass
class Compiled:
    graph: Graph  # the scheduled, allocated IR the program was generated from
    program: Program
    quantized: Graph  # the quantized IR before scheduling: what the quantized reference evaluates

    @property
    def counts(self) -> dict:
        """Parameters, MACs, spike-driven adds and multiplies per layer and in total
        (`ttc.compiler.counting`): {"model": .., "factorised": .. or None when tt-factorize changed nothing}."""
        return self.graph.notes["counts"]


#: The compile options (the passes' user options, `ttc.compiler.passes.user_options`) and their
#: defaults; prog.bin records each one's value so that `ttc run --check` recompiles the same reference.
OPTIONS = {o.name: o.default for o in user_options()}


def compile_model(model: torch.nn.Module, input_shape, hw: str | HwConfig = "sata", name: str = "model",
                  source: dict | None = None, **options) -> Compiled:
    """Trace, optimise, quantize, schedule, allocate and generate code for `model` (left unchanged).
    `options`: those of OPTIONS (quantization, tensor-train factorisation, schedule objective or forced plans)."""
    o, hw, graph, quantized = _lower(model, input_shape, hw, name, options)
    recorded = {"input_shape": ",".join(map(str, parse_input_shape(input_shape))), **o}
    return Compiled(graph, generate(graph, hw, recorded, source or {}), quantized)


def _lower(model: torch.nn.Module, input_shape, hw: str | HwConfig, name: str, options: dict, passes=PIPELINE,
           extra: dict | None = None) -> tuple[dict, HwConfig, Graph, Graph]:
    """(all options, the hardware config, the graph after `passes`, the quantized graph): trace `model` and
    run the passes with the user's options and, per pass, `extra` arguments."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise OptionError(f"unknown compile options {', '.join(sorted(unknown))} (options: {', '.join(OPTIONS)})")
    o = {**OPTIONS, **options}
    hw = hw if isinstance(hw, HwConfig) else load_hw(hw)
    shape = parse_input_shape(input_shape)
    graph = trace(copy_model(model), shape, name)
    counts = {}  # "model": the model's own layers (batch norm folded); "factorised": after tt-factorize
    quantized = None

    def between_passes(pass_name: str, graph: Graph) -> None:
        nonlocal quantized
        if pass_name == "tt-factorize":
            changed = any(n["factorised"] for n in graph.notes.get("factorize", {}).values())
            counts["factorised"] = count(graph) if changed else None
            graph.notes["counts"] = counts
        elif "factorised" not in counts:  # a pass before tt-factorize
            counts["model"] = count(graph)
        if pass_name in ("quantize", "train-tape"):  # what the quantized reference evaluates (with the tapes)
            quantized = copy.deepcopy(graph)
        if "quantize" in passes and pass_name == passes[passes.index("quantize") - 1]:  # the last float weights
            graph.notes["float_weights"] = {op.name: (op.weight.copy(), None if op.bias is None else op.bias.copy())
                                            for op in graph.ops if isinstance(op, (Conv2d, Linear))}

    arguments = pipeline_arguments(o, hw, passes)
    for pass_name, args in (extra or {}).items():
        arguments[pass_name].update(args)
    graph = run_pipeline(graph, arguments, passes, after=between_passes)
    return o, hw, graph, quantized


def compile_training(model: torch.nn.Module, input_shape, hw: str | HwConfig = "sata", name: str = "model",
                     source: dict | None = None, train: TrainOptions = TrainOptions(),
                     calibration: tuple[np.ndarray, np.ndarray] | None = None, **options) -> Compiled:
    """The training-step program of `model` (docs/training.md) and, in its metadata, what `ttc train` needs:
    the formats of every gradient (set for their sizes on `calibration`, inputs and labels; random inputs if
    None), the update segment, and the inference program of the same weights."""
    options = {**options, "fusion": "neuron"}  # its backward walks each residual add as a layer of its own
    quantize = {"quantize": {"training": train.weight_bits, "calibration_density": train.spike_density,
                             "calibration": None if calibration is None else np.asarray(calibration[0])}}
    inference_passes = tuple(p for p in TRAIN_PIPELINE if p != "train-tape")  # the same layers and weights, no tapes
    o, hw, graph, _ = _lower(model, input_shape, hw, name, options, inference_passes, extra=quantize)
    recorded = {"input_shape": ",".join(map(str, parse_input_shape(input_shape))), **o}
    inference = generate(graph, hw, recorded, source or {})
    o, hw, graph, quantized = _lower(model, input_shape, hw, name, options, TRAIN_PIPELINE,
                                     {**quantize, "train-tape": {"band": train.band}})
    step = generate_training(graph, hw, train, recorded, source or {}, inference, calibration)
    step.meta["inference"] = inference.to_bytes().hex()
    parameters = dict(model.named_parameters())
    for r in step.meta["train"]["layers"]:
        weight, bias = graph.notes["float_weights"][r["name"]]
        r["source_scale"] = _source_scale(weight, parameters.get(f"{r['path']}.weight"))
        r["bias_scale"] = _source_scale(bias, parameters.get(f"{r['path']}.bias")) if r["bias"] else None
    return Compiled(graph, step, quantized)


def _source_scale(folded: np.ndarray | None, source: torch.Tensor | None) -> list[float] | None:
    """Per output channel, the factor the compiler's folds (a neuron's input gain, its threshold) put on the
    source module's weights: what a trained weight is divided by to go back into the model. None when the
    layer's weights are not a per-channel multiple of one parameter of the model (its state dict skips it)."""
    if source is None or folded is None or tuple(source.shape) != folded.shape:
        return None
    w = source.detach().double().numpy().reshape(folded.shape[0], -1)
    f = folded.astype(np.float64).reshape(folded.shape[0], -1)
    scales = []
    for a, b in zip(f, w):
        live = b != 0
        scale = float(a[live][0] / b[live][0]) if live.any() else 1.0
        if not np.allclose(a, b * scale, rtol=1e-6, atol=0):
            return None
        scales.append(scale)
    return scales


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `model` that tracing may change (eval mode, hooks) without touching the user's.

    A model straight out of training holds tensors that autograd made (snnTorch neurons keep their
    last `mem` with a grad_fn), and `copy.deepcopy` refuses those ("Only Tensors created explicitly by
    the user (graph leaves) support the deepcopy protocol"). Each such tensor is copied as a detached
    clone instead, through deepcopy's memo, so that everything else is copied as usual and what shares
    a tensor still shares its copy."""
    memo: dict = {}
    seen: set = set()

    def detach_non_leaves(value) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            if value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                detach_non_leaves(item)
        elif isinstance(value, dict):
            for item in value.values():
                detach_non_leaves(item)

    for module in model.modules():  # parameters, buffers and plain attributes all live in __dict__
        detach_non_leaves(vars(module))
    return copy.deepcopy(model, memo)


def decay_notes(graph: Graph) -> list[str]:
    """One line per neuron whose decay (a trained PLIF's, say) the hardware runs rounded."""
    return [f"neuron {layer}: decay {n['decay']:.6f} is not m/2^k in 16 bits, runs as {n['quantized']:.6f} "
            f"(error {n['error']:.1e})" for layer, n in graph.notes.get("decay", {}).items()]


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_nir(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".nir"


def compile_file(path: str | Path, input_shape, hw: str | HwConfig = "sata", trust: bool = False,
                 nir_dt: float | None = None, train: TrainOptions | None = None, **options) -> Compiled:
    """Compile the model in `path`: a torch.save'd module or a NIR graph (`.nir`, its neurons stepped with
    `nir_dt`, recorded in prog.bin so that `ttc run --check` reads the graph the same way). With `train`,
    its training-step program (`compile_training`) instead of its inference program."""
    if is_nir(path):
        nir_dt = DEFAULT_DT if nir_dt is None else nir_dt
    model = load_model(path, trust, nir_dt)
    source = {"file": Path(path).name, "sha256": file_digest(path)}
    if is_nir(path):
        check_input_shape(model, parse_input_shape(input_shape))
        source["nir_dt"] = nir_dt
    name = Path(path).stem.replace("-", "_") or "model"
    if train is not None:
        return compile_training(model, input_shape, hw, name=name, source=source, train=train, **options)
    return compile_model(model, input_shape, hw, name=name, source=source, **options)


def export_nir(model: torch.nn.Module, input_shape, dt: float = DEFAULT_DT):
    """`model` as a NIR graph (a nir.NIRGraph; `nir.write` saves it): traced for inputs of `input_shape`
    with batch norm folded into its convs, each layer written as its NIR node, neurons for the Euler step
    `dt` (ttc.frontends.nir.to_nir says what is written and what is refused)."""
    graph = trace(copy.deepcopy(model), parse_input_shape(input_shape), "model")
    graph = run_pipeline(graph, {}, passes=("fold-batchnorm",))
    return to_nir(graph, dt)


def recompile_for_check(prog: Program, model: torch.nn.Module) -> Compiled:
    """Compile `model` with the options recorded in `prog`, for the quantized reference (a training step's
    with its training options, for the integer training reference)."""
    o = prog.meta["options"]
    options = {k: o.get(k, v) for k, v in OPTIONS.items()}
    if "train" in prog.meta:
        return compile_training(model, o["input_shape"], prog.hw, train=TrainOptions(**prog.meta["train"]["options"]),
                                **options)
    return compile_model(model, o["input_shape"], prog.hw, **options)


def run_float(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """The float model's outputs (reference 1), in eval mode, with stateful neurons reset first.
    Each module's training flag is put back afterwards (a model in the middle of training stays in
    training mode, and a frozen submodule stays in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for m in model.modules():
            if type(m).__module__.startswith("spikingjelly") and hasattr(m, "reset"):
                m.reset()
        with torch.no_grad():
            y = model(torch.from_numpy(np.array(x, dtype=np.float32)))  # a copy: x may be a read-only view
    finally:
        for m, training in modes:
            m.training = training
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    return [t.detach().numpy() for t in ys]


def simulate(program: Program | Compiled, x: np.ndarray, backend: str | None = None,
             batch: int | None = None) -> RunResult:
    """Run `program` (a Program, or the Compiled that compile_model returns) on the simulator for input
    `x`, laid out as the model's forward takes it (any number of samples: `batch` at a time, None: all at
    once), with `backend` ('jit', the default, or 'numpy': the same bits and counters). Inputs outside the
    range of the input format are saturated, as the hardware does: the result's `input_saturation` counts
    them per input, and an InputSaturationWarning says so."""
    if isinstance(program, Compiled):
        program = program.program
    if not isinstance(program, Program):
        raise ApiError(f"simulate() takes a ttc.isa.program.Program or the ttc.api.Compiled that compile_model "
                       f"returns, not {type(program).__name__} (load a prog.bin with Program.load(path))")
    result = run(program, [x], backend, batch)
    for line in result.warnings():
        warnings.warn(line, InputSaturationWarning, stacklevel=2)
    return result


def reference(compiled: Compiled, x: np.ndarray) -> list[np.ndarray]:
    """The quantized reference (reference 2): the quantized graph before scheduling, so that the
    simulator is held to what every schedule must compute."""
    return run_reference(compiled.quantized, [x])
