"""Design-space sweeps (`ttc sweep SPEC.toml -o DIR`): one model and data set compiled and simulated at
every point of the cartesian product of a spec's axes (hardware-config keys, compile options, time steps,
the model builder's parameters).

A spec (TOML):

    [model]
    path = "digits_snn.pt"                       # a torch.save'd model (relative to the spec), or
    # builder = "ttc.digits:train_tt_digits_snn" # a function returning one, called with `params`
    # params = { variant = "stt" }                # (and the point's params.* axes)
    input_shape = "T,N,1,8,8"                    # T: the point's time steps

    [data]
    digits = "test"                              # the built-in digits split ("train" or "test"), or
    # input = "x.npy"                            # an input laid out as forward takes it ...
    # labels = "y.npy"                           # ... and optional class labels (accuracy)
    limit = 64                                   # the first `limit` samples only
    steps = 4                                    # T when no axis sets it (digits only)

    [hw]
    base = "sata"                                # the preset (or TOML file) the axes change

    [options]                                    # compile options fixed for every point
    objective = "energy"

    [axes]
    "hw.array.rows" = [4, 8, 16]                 # any hardware-config key, by its dotted path
    "hw.buffers.wgt.kib" = { from = 16, to = 128, times = 2 }   # a range: 16, 32, 64, 128 (or a step)
    "options.tt_rank" = ["2", "4"]               # any compile option (ttc.api.OPTIONS)
    # "params.rank" = [2, 4, 8]                  # a builder parameter: a model built per value
    T = [2, 4]                                   # time steps (digits data only)

Each point is identified by a hash of everything that determines its result (ttc's version, model, data,
base config, fixed options and its axis values), so results in DIR stay valid when the spec grows an axis value, and a
changed model or data set never reuses them. DIR/points/<id>.json holds the point's report.json dict
(docs/schema/run.schema.json) plus a `sweep` block (settings, status, error, accuracy, program data
bytes); DIR/results.csv one row per point; DIR/pareto.csv and pareto.png the Pareto front of chosen
objectives. Points whose file exists are not run again (resumption); a point that fails with a UserError
(keys the config refuses together, a plan the model cannot take) is recorded with its error and the sweep
goes on. The sweep's process loads the model (or builds one per combination of builder-parameter values) and
the data once, and ships them to the points, which run in a local process pool or as Ray tasks (`--ray`).
docs/sweep.md describes it all.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import importlib
import inspect
import io
import itertools
import json
import os
import threading
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import jsonschema
import numpy as np

from ttc.digits import STEPS
from ttc.isa import progress
from ttc.isa.errors import UserError
from ttc.isa.files import atomic_write, make_dirs, read_text
from ttc.isa.hwconfig import BUFFER_KEYS, BUFFERS, PRESET_DIR, SCHEMA, HwConfigError, hw_from_dict

TIME_AXIS = "T"
HW, OPTION, PARAM = "hw.", "options.", "params."  # the prefixes of the other axes' names
POINTS = "points"
RESULTS = "results.csv"
#: The CSV's figures after the axes: per inference, from the report; the accuracy on the labels and the bytes
#: of the program's data segment, from the sweep block.
FIGURES = ("accuracy", "cycles_per_inference", "microseconds_per_inference", "energy_pj_per_inference",
           "program_data_bytes")
SWEEP_FIGURES = ("accuracy", "program_data_bytes")
#: What a Pareto front may be taken over: objective -> (figure, True when larger is better).
OBJECTIVES = {"energy": ("energy_pj_per_inference", False), "cycles": ("cycles_per_inference", False),
              "latency": ("microseconds_per_inference", False), "accuracy": ("accuracy", True),
              "data_bytes": ("program_data_bytes", False)}
DEFAULT_OBJECTIVES = ("energy", "cycles", "accuracy")
PARETO_CSV, PARETO_PNG = "pareto.csv", "pareto.png"


class SweepError(UserError):
    """A sweep that cannot run: a bad spec (the message names the file and the key), a results directory
    without results, --ray without Ray."""


#: The spec's structure; the values of hardware keys and compile options are checked against their own
#: schemas (ttc.isa.hwconfig, ttc.api.OPTIONS) after this.
SPEC_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "data", "axes"],
    "properties": {
        "model": {
            "type": "object",
            "additionalProperties": False,
            "required": ["input_shape"],
            "oneOf": [{"required": ["path"]}, {"required": ["builder"]}],
            "properties": {
                "path": {"type": "string", "minLength": 1},
                "trust": {"type": "boolean"},
                "builder": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"},
                "params": {"type": "object"},
                "input_shape": {"type": "string", "minLength": 1},
            },
        },
        "data": {
            "type": "object",
            "additionalProperties": False,
            "oneOf": [{"required": ["digits"]}, {"required": ["input"]}],
            "properties": {
                "digits": {"enum": ["train", "test"]},
                "input": {"type": "string", "minLength": 1},
                "labels": {"type": "string", "minLength": 1},
                "limit": {"type": "integer", "minimum": 1},
                "steps": {"type": "integer", "minimum": 1},
            },
        },
        "hw": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"base": {"type": "string", "minLength": 1}},
        },
        "options": {"type": "object"},
        "axes": {
            "type": "object",
            # a list of values, or a range (`_range`): each keyword applies to its type alone
            "additionalProperties": {
                "type": ["array", "object"], "minItems": 1, "additionalProperties": False, "required": ["from", "to"],
                "properties": {"from": {"type": "number"}, "to": {"type": "number"},
                               "step": {"type": "number", "exclusiveMinimum": 0},
                               "times": {"type": "number", "exclusiveMinimum": 1}}},
        },
    },
}


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep: its axis values (spec order) and its id."""

    settings: dict
    id: str


@dataclass
class Spec:
    """A validated sweep spec; paths are absolute (the spec's own directory resolves relative ones)."""

    where: str
    model: dict
    data: dict
    hw_base: str
    hw_raw: dict  # the base config as parsed TOML, which hardware axes change key by key
    options: dict
    axes: dict[str, list]  # axis name -> its values, in the spec's order

    def identity(self) -> dict:
        """What every point's result depends on besides its axis values: the ttc that runs it, the model and
        data (files by their digests, not their paths), the base config and the fixed options."""
        from ttc.isa.program import ttc_version

        files = {role: hashlib.sha256(Path(path).read_bytes()).hexdigest()
                 for role, path in (("model", self.model.get("path")), ("input", self.data.get("input")),
                                    ("labels", self.data.get("labels"))) if path}
        return dict(ttc=ttc_version(), model={k: v for k, v in self.model.items() if k != "path"},
                    data={k: v for k, v in self.data.items() if k not in ("input", "labels")},
                    files=files, hw=self.hw_raw, options=self.options)

    def steps(self, settings: dict) -> int | None:
        """A point's time steps: its T, else the digits' steps; None for an .npy input (its own)."""
        if "input" in self.data:
            return None
        return settings.get(TIME_AXIS, self.data.get("steps", STEPS))

    def points(self) -> list[Point]:
        identity = self.identity()
        names = list(self.axes)
        out = []
        for values in itertools.product(*self.axes.values()):
            settings = dict(zip(names, values))
            text = json.dumps(dict(identity, axes=settings), sort_keys=True)
            out.append(Point(settings, hashlib.sha256(text.encode()).hexdigest()[:16]))
        return out


def _hw_key(path: str, where: str):
    """The hardware-config Key an axis `hw.SECTION.KEY`, `hw.buffers.NAME.KEY` or `hw.KEY` names."""
    parts = path.split(".")[1:]
    sections = {s.name: s for s in SCHEMA}
    if len(parts) == 3 and parts[0] == "buffers" and parts[1] in BUFFERS:
        keys = BUFFER_KEYS
    elif len(parts) == 2 and parts[0] in sections and parts[0]:
        keys = sections[parts[0]].keys
    elif len(parts) == 1:
        keys = sections[""].keys
    else:
        known = [f"hw.{s.name}.KEY" for s in SCHEMA if s.name] + [f"hw.buffers.{b}.KEY" for b in BUFFERS]
        raise SweepError(f"{where}: names no hardware-config section (known: {', '.join(known)}; "
                             "keys: docs/hardware-config.md)")
    for key in keys:
        if key.name == parts[-1]:
            return key
    raise SweepError(f"{where}: unknown hardware-config key {parts[-1]!r} "
                         f"(known: {', '.join(k.name for k in keys)})")


def _check_option(name: str, value, where: str) -> None:
    from ttc.compiler.passes import user_options

    by_name = {o.name: o for o in user_options()}
    if name not in by_name:
        raise SweepError(f"{where}: unknown compile option {name!r} (options: {', '.join(by_name)})")
    o = by_name[name]
    kind = type(o.default)
    # TOML's integers are fine floats, and fine ranks (tt_rank = 4 as well as "4" or "conv1=2"); a bool is neither
    ok = isinstance(value, kind) or (kind in (float, str) and isinstance(value, int))
    if isinstance(value, bool) or not ok:
        raise SweepError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    if o.choices and value not in o.choices:
        raise SweepError(f"{where}: {name} must be one of {', '.join(map(str, o.choices))}, got {value!r}")


def parse_spec(text: str, where: str, base_dir: Path) -> Spec:
    """The spec in `text` (TOML), validated: structure, every axis name and value, files that exist."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{where}: not valid TOML: {e}") from None
    errors = sorted(jsonschema.Draft202012Validator(SPEC_SCHEMA).iter_errors(raw), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        key = ".".join(map(str, e.absolute_path)) or "the top level"
        raise SweepError(f"{where}: {key}: {_schema_message(e)}")
    model, data = dict(raw["model"]), dict(raw["data"])
    for table, key in ((model, "path"), (data, "input"), (data, "labels")):
        if key in table:
            path = (base_dir / table[key]).resolve()
            if not path.is_file():
                raise SweepError(f"{where}: {'model' if table is model else 'data'}.{key}: no file {str(path)!r}")
            table[key] = str(path)
    if "labels" in data and "digits" in data:
        raise SweepError(f"{where}: data.labels: the digits split brings its own labels")
    if "steps" in data and "input" in data:
        raise SweepError(f"{where}: data.steps: an .npy input has its own time steps")
    hw_base = raw.get("hw", {}).get("base", "sata")
    hw_path = PRESET_DIR / f"{hw_base}.toml"
    if not hw_path.is_file():
        hw_path = base_dir / hw_base
    if not hw_path.is_file():
        raise SweepError(f"{where}: hw.base: no hardware preset or file {hw_base!r}")
    try:
        hw_raw = tomllib.loads(read_text(hw_path))
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{where}: hw.base: {hw_path.name}: not valid TOML: {e}") from None
    try:
        hw_from_dict(hw_raw, hw_path.name)
    except HwConfigError as e:  # it names the file
        raise SweepError(f"{where}: hw.base: {e}") from None
    options = raw.get("options", {})
    for name, value in options.items():
        _check_option(name, value, f"{where}: options")
    axes = {name: _range(values, f"{where}: axes.{name!r}") if isinstance(values, dict) else values
            for name, values in raw["axes"].items()}
    for name, values in axes.items():
        here = f"{where}: axes.{name!r}"
        if name == TIME_AXIS:
            if "input" in data:
                raise SweepError(f"{here}: an .npy input has its own time steps; sweep T over the digits data")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise SweepError(f"{here}: time steps must be positive integers, got {v!r}")
        elif name.startswith(HW):
            key = _hw_key(name, here)
            for v in values:
                try:
                    key.check(v, here)
                except HwConfigError as e:
                    raise SweepError(str(e)) from None
        elif name.startswith(OPTION):
            opt = name.removeprefix(OPTION)
            if opt in options:
                raise SweepError(f"{here}: {opt} is also fixed in [options]")
            for v in values:
                _check_option(opt, v, here)
        elif name.startswith(PARAM):
            param = name.removeprefix(PARAM)
            if "builder" not in model:
                raise SweepError(f"{here}: a builder-parameter axis needs model.builder, not a saved model")
            if param in model.get("params", {}):
                raise SweepError(f"{here}: {param} is also fixed in model.params")
            for v in values:
                if not isinstance(v, (str, int, float, bool)):
                    raise SweepError(f"{here}: a builder parameter's value is a string, number or boolean, got {v!r}")
        else:
            raise SweepError(f"{here}: an axis is T, hw.SECTION.KEY (a hardware-config key), options.NAME "
                                 "(a compile option) or params.NAME (a parameter of model.builder)")
        if len({json.dumps(v) for v in values}) != len(values):
            raise SweepError(f"{here}: a value is repeated")
    if TIME_AXIS in axes and TIME_AXIS not in model["input_shape"].split(","):
        raise SweepError(f"{where}: model.input_shape: write the time axis as T (\"T,N,1,8,8\") for the T axis "
                             "to set it")
    if TIME_AXIS in model["input_shape"].split(",") and "input" in data:
        raise SweepError(f"{where}: model.input_shape: T stands for the digits' time steps; give the .npy "
                             "input's shape")
    if "builder" in model:
        _check_params(_builder(model["builder"], where), [*model.get("params", {}),
                      *(a.removeprefix(PARAM) for a in axes if a.startswith(PARAM))], f"{where}: model.builder")
    return Spec(where, model, data, hw_base, hw_raw, options, axes)


def _range(r: dict, where: str) -> list:
    """An axis given as a range: `from`, `from + step`, ... or `from`, `from * times`, ... (step 1 when neither
    is given) up to `to` inclusive; integers when `from` and the step or factor are."""
    lo, hi, step, times = r["from"], r["to"], r.get("step"), r.get("times")
    if step is not None and times is not None:
        raise SweepError(f"{where}: a range has a step or a factor (times), not both")
    if hi < lo:
        raise SweepError(f"{where}: the range ends ({hi}) before it starts ({lo})")
    if times is not None and lo <= 0:
        raise SweepError(f"{where}: a range of factors starts above 0, got from = {lo}")
    step = 1 if step is None and times is None else step
    whole = isinstance(lo, int) and isinstance(step if times is None else times, int)
    values, k = [], 0
    while True:
        v = lo * times ** k if times is not None else lo + k * step
        if v > hi * (1 + 1e-12):  # (a float step may land a rounding error past `to`)
            return values
        values.append(int(v) if whole else v)
        k += 1


def _builder(name: str, where: str):
    """The function `module:function` names."""
    module, function = name.split(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise SweepError(f"{where}: model.builder: cannot import {name!r}: {e}") from None


def _check_params(builder, names: list[str], where: str) -> None:
    """Every parameter the spec gives the builder is one it takes."""
    signature = inspect.signature(builder)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    for name in names:
        if name not in signature.parameters:
            raise SweepError(f"{where}: {builder.__module__}:{builder.__name__} takes no parameter {name!r} "
                             f"(it takes: {', '.join(signature.parameters) or 'none'})")


def _schema_message(e: jsonschema.ValidationError) -> str:
    """jsonschema's message, in the spec's words for the cases it says least clearly."""
    if e.validator == "oneOf" and e.absolute_path and e.absolute_path[-1] == "model":
        return "give exactly one of path (a saved model) or builder (module:function)"
    if e.validator == "oneOf" and e.absolute_path and e.absolute_path[-1] == "data":
        return "give exactly one of digits (train or test) or input (an .npy file)"
    if e.validator == "additionalProperties":
        return e.message.replace("Additional properties are not allowed", "unknown key")
    return e.message


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    return parse_spec(read_text(path), path.name, path.resolve().parent)


# ---- one point ------------------------------------------------------------------------------------------

class _Workload:
    """The models and data the points to run need, loaded once in the sweep's process and shipped to the pool's
    workers or the Ray cluster's object store (so that no node needs the spec's files, and every point of a
    builder's model sees the same weights)."""

    def __init__(self, spec: Spec, points: list[Point]) -> None:
        from ttc import api
        from ttc.runtime.provenance import input_provenance

        self.spec = spec
        if "path" in spec.model:
            self.models = {_model_key({}): api.load_model(spec.model["path"], spec.model.get("trust", False))}
        else:
            self.models = self._build({_model_key(p.settings): p.settings for p in points})
        #: (x, labels or None) by time steps: every T the points use (digits), or the .npy input (None)
        self.data = {steps: self._load(steps) for steps in dict.fromkeys(spec.steps(p.settings) for p in points)}
        # an .npy input is cited by its file; the digits split by the spec, which the point's id covers
        self.input_source = input_provenance(self.data[None][0], spec.data["input"]) if "input" in spec.data else None

    def _build(self, settings_by_model: dict[str, dict]) -> dict:
        """The builder's model for each key of `settings_by_model` (`_model_key`), called with the fixed
        params and the params.* axes' values of that key's settings."""
        import torch

        builder = _builder(self.spec.model["builder"], self.spec.where)
        models = {}
        with progress.bar(len(settings_by_model), "models", unit="model") as bar:
            for key, settings in settings_by_model.items():
                torch.manual_seed(0)  # an untrained model's weights: the same in every sweep
                models[key] = builder(**self.spec.model.get("params", {}),
                                      **{k.removeprefix(PARAM): v for k, v in settings.items() if k.startswith(PARAM)})
                bar.update()
        return models

    def model(self, settings: dict):
        """The model of a point with these axis values."""
        return self.models[_model_key(settings)]

    def _load(self, steps: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        d = self.spec.data
        if "digits" in d:
            from ttc.digits import load_digits_split

            x_tr, y_tr, x_te, y_te = load_digits_split(steps)
            x, y = (x_tr, y_tr) if d["digits"] == "train" else (x_te, y_te)
            x, y = x[:, :d.get("limit")], y[:d.get("limit")]
        else:
            x = np.load(d["input"], allow_pickle=False)
            y = np.load(d["labels"], allow_pickle=False) if "labels" in d else None
            if "limit" in d:
                axis = self.spec.model["input_shape"].split(",").index("N")  # the batch axis
                x = np.take(x, range(min(d["limit"], x.shape[axis])), axis=axis)
                y = None if y is None else y[:d["limit"]]
        return np.ascontiguousarray(x), y


def _model_key(settings: dict) -> str:
    """Which model a point uses: its builder-parameter axes' values."""
    return json.dumps({k: v for k, v in settings.items() if k.startswith(PARAM)}, sort_keys=True)


def _point_hw(spec: Spec, settings: dict, where: str):
    raw = copy.deepcopy(spec.hw_raw)
    for name, value in settings.items():
        if name.startswith(HW):
            *tables, key = name.split(".")[1:]
            table = raw
            for t in tables:
                table = table.setdefault(t, {})
            table[key] = value
    raw["name"] = f"{raw.get('name', spec.hw_base)}-sweep"
    return hw_from_dict(raw, where)


def run_point(work: _Workload, point: Point) -> dict:
    """The point's result file: the report.json dict of its run plus the `sweep` block; a UserError
    (an invalid combination of keys, a plan the model cannot take) makes a failed point."""
    from ttc import api
    from ttc.runtime.provenance import provenance
    from ttc.runtime.report import report

    spec = work.spec
    record = dict(id=point.id, settings=point.settings, status="ok", error=None, accuracy=None, program_data_bytes=None)
    try:
        steps = spec.steps(point.settings)
        shape = ",".join(str(steps) if d == TIME_AXIS else d for d in spec.model["input_shape"].split(","))
        options = {**spec.options, **{k.removeprefix(OPTION): v for k, v in point.settings.items()
                                      if k.startswith(OPTION)}}
        hw = _point_hw(spec, point.settings, f"point {point.id}")
        compiled = api.compile_model(work.model(point.settings), shape, hw, **options)
        x, y = work.data[steps]
        result = api.simulate(compiled.program, x)
    except UserError as e:
        record.update(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return dict(sweep=record)
    record["program_data_bytes"] = len(compiled.program.data)  # weights, TT cores, biases, thresholds
    scores = result.outputs[0]
    if y is not None and scores.ndim == 2 and scores.shape[0] == len(y):
        record["accuracy"] = float((scores.argmax(1) == y).mean())
    return dict(report(compiled.program, result, provenance(compiled.program, x_source=work.input_source)), sweep=record)


# ---- the sweep ------------------------------------------------------------------------------------------

_worker: _Workload | None = None


def _start_worker(work: _Workload) -> None:
    """A pool worker's set-up: one thread for torch (the pool already uses the cores), the sweep's workload, and a
    watch on the sweep's process."""
    global _worker
    import torch

    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _worker = work


def _exit_with_parent(parent: int) -> None:
    """End this worker once the sweep's process is gone: a sweep killed outright (SIGTERM, SIGKILL) cannot shut
    its pool down, and its workers would otherwise wait for work forever."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _run_in_worker(point: Point) -> dict:
    return run_point(_worker, point)


def _write_now(path: Path, result: dict) -> None:
    """Write a point's file at once, even inside a command's all-or-nothing block: an interrupted sweep must
    keep the points it finished (resumption)."""
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text), at_once=True)


@dataclass
class SweepSummary:
    points: int
    ran: int
    failed: int
    skipped: int
    seconds: float


def run_sweep(spec: Spec, out: str | Path, workers: int | None = None, ray_address: str | None = None) -> SweepSummary:
    """Run every point of `spec` whose result file is missing in `out`/points (`workers` processes; 1: in
    this process; with `ray_address`, as Ray tasks on that cluster: `local` starts one here with `workers`
    CPUs), then write `out`/results.csv from all the points' files."""
    t0 = time.perf_counter()
    out = Path(out)
    points_dir = out / POINTS
    points_dir.mkdir(parents=True, exist_ok=True)  # not make_dirs: kept when the sweep is interrupted
    points = spec.points()
    todo = [p for p in points if not (points_dir / f"{p.id}.json").is_file()]
    workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
    failed = 0
    work = _Workload(spec, todo) if todo else None
    with progress.bar(len(todo), "sweep", unit="point") as bar:
        def done(point: Point, result: dict) -> None:
            nonlocal failed
            failed += result["sweep"]["status"] == "failed"
            _write_now(points_dir / f"{point.id}.json", result)
            bar.update()

        if ray_address is not None and todo:
            _run_on_ray(work, todo, ray_address, workers, done)
        elif workers == 1:
            for p in todo:
                done(p, run_point(work, p))
        elif todo:
            # spawn, not fork: a forked child of a process that has run torch's thread pools can hang
            pool = ProcessPoolExecutor(workers, get_context("spawn"), _start_worker, (work,))
            try:
                futures = {pool.submit(_run_in_worker, p): p for p in todo}
                for f in as_completed(futures):
                    done(futures[f], f.result())
            finally:  # interrupted (or a bug in ttc): the points not yet started are dropped, not run to the end
                pool.shutdown(cancel_futures=True)
    write_results(spec, points, out)
    return SweepSummary(len(points), len(todo), failed, len(points) - len(todo), time.perf_counter() - t0)


#: How often Ray runs a point again whose worker or node died under it (a UserError is a failed point, not a
#: crash; an exception from ttc itself is a bug, which running again would only repeat).
RAY_RETRIES = 3


def _ray_point(work: _Workload, point: Point) -> dict:
    import torch

    torch.set_num_threads(1)  # Ray runs one task per CPU
    return run_point(work, point)


def _run_on_ray(workload: _Workload, todo: list[Point], address: str, workers: int, done) -> None:
    """The points as Ray tasks: the model and data put in the object store once, each result handed to `done`
    as it arrives (so an interrupted sweep keeps what finished)."""
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray: pip install 'ttc[sweep]'") from None
    local = address == "local"
    try:
        ray.init(address=address, num_cpus=workers if local else None, include_dashboard=False, log_to_driver=False)
    except ConnectionError as e:
        raise SweepError(f"--ray {address}: {e}") from None
    try:
        work = ray.put(workload)
        task = ray.remote(max_retries=RAY_RETRIES)(_ray_point)
        pending = {task.remote(work, p): p for p in todo}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1)
            for ref in finished:
                done(pending.pop(ref), ray.get(ref))
    finally:
        ray.shutdown()  # a cluster started here stops; one given by address is left running, disconnected


def write_results(spec: Spec, points: list[Point], out: Path) -> None:
    """DIR/results.csv: a row per point of the spec, in the axes' order, from the points' files."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "status", *spec.axes, *FIGURES, "error"])
    for p in points:
        result = json.loads((out / POINTS / f"{p.id}.json").read_text())
        s = result["sweep"]
        figures = [figure(result, k) for k in FIGURES]
        w.writerow([p.id, s["status"], *p.settings.values(), *("" if v is None else v for v in figures),
                    s["error"] or ""])
    make_dirs(out)
    atomic_write(out / RESULTS, lambda tmp: tmp.write_text(buf.getvalue()))


def figure(result: dict, name: str):
    """A figure of a point's file (None for a failed point, or an accuracy without labels)."""
    return result["sweep"][name] if name in SWEEP_FIGURES else result.get(name)


# ---- the Pareto front -----------------------------------------------------------------------------------

def read_points(out: str | Path) -> list[dict]:
    """Every point file in `out`/points, by id."""
    files = sorted((Path(out) / POINTS).glob("*.json"))
    if not files:
        raise SweepError(f"{out}: no sweep results (no {POINTS}/*.json)")
    return [json.loads(f.read_text()) for f in files]


def parse_objectives(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or len(names) < 2 or len(set(names)) != len(names):
        raise SweepError(f"--objectives {text!r}: give two or more different objectives of "
                             f"{', '.join(OBJECTIVES)}")
    return names


def pareto_front(results: list[dict], objectives: tuple[str, ...]) -> list[dict]:
    """The successful points no other one dominates (at least as good in every objective and better in one),
    ordered by the first objective; points without a figure (no labels: no accuracy) cannot be ranked."""
    def key(r: dict) -> tuple[float, ...]:  # to minimise
        return tuple(-figure(r, OBJECTIVES[o][0]) if OBJECTIVES[o][1] else figure(r, OBJECTIVES[o][0])
                     for o in objectives)

    ranked = [r for r in results if r["sweep"]["status"] == "ok"
              and all(figure(r, OBJECTIVES[o][0]) is not None for o in objectives)]
    keys = [key(r) for r in ranked]
    front = [r for r, k in zip(ranked, keys)
             if not any(all(a <= b for a, b in zip(other, k)) and other != k for other in keys)]
    return sorted(front, key=lambda r: (key(r), r["sweep"]["id"]))


def write_pareto(out: str | Path, objectives: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[dict]]:
    """DIR/pareto.csv (the front's points: id, settings, objectives) and DIR/pareto.png (every successful
    point over the first two objectives, the front marked), from the point files; returns the objectives
    (None: DEFAULT_OBJECTIVES, without accuracy when no point has one) and the front."""
    out = Path(out)
    results = read_points(out)
    unlabelled = all(r["sweep"]["accuracy"] is None for r in results)
    if objectives is None:
        objectives = tuple(o for o in DEFAULT_OBJECTIVES if not (unlabelled and o == "accuracy"))
    elif unlabelled and "accuracy" in objectives:
        raise SweepError(f"{out}: no point has an accuracy (the sweep's data has no labels); choose other objectives")
    front = pareto_front(results, objectives)
    axes = list(dict.fromkeys(k for r in results for k in r["sweep"]["settings"]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", *axes, *(OBJECTIVES[o][0] for o in objectives)])
    for r in front:
        w.writerow([r["sweep"]["id"], *(r["sweep"]["settings"].get(a, "") for a in axes),
                    *(figure(r, OBJECTIVES[o][0]) for o in objectives)])
    atomic_write(out / PARETO_CSV, lambda tmp: tmp.write_text(buf.getvalue()))
    _plot_pareto(results, front, objectives, out / PARETO_PNG)
    return objectives, front


def _plot_pareto(results: list[dict], front: list[dict], objectives: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = (OBJECTIVES[o][0] for o in objectives[:2])
    ok = [r for r in results if r["sweep"]["status"] == "ok" and None not in (figure(r, x_name), figure(r, y_name))]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([figure(r, x_name) for r in ok], [figure(r, y_name) for r in ok], s=18, color="0.6", label="points")
    ax.scatter([figure(r, x_name) for r in front], [figure(r, y_name) for r in front], s=36, color="tab:red",
               label=f"Pareto front over {', '.join(objectives)}")
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def format_front(front: list[dict], objectives: tuple[str, ...]) -> str:
    """The front as a terminal table: id, settings, objectives."""
    lines = [f"Pareto front over {', '.join(objectives)}: {len(front)} points"]
    for r in front:
        settings = ", ".join(f"{k}={v}" for k, v in r["sweep"]["settings"].items())
        values = ", ".join(f"{o} {figure(r, OBJECTIVES[o][0]):.6g}" for o in objectives)
        lines.append(f"  {r['sweep']['id']}  {settings or '(no axes)'}: {values}")
    return "\n".join(lines)
