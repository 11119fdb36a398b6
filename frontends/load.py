"""Loading a `torch.save`d model without running code from the file, and saving one so that it loads.

`torch.load(weights_only=True)` refuses every class not on an allowlist; ttc allows the classes it can
compile (torch.nn layers, ttc's modules, SpikingJelly's and snnTorch's layers and neurons, if they
are installed). Any other class needs the user's consent (`trust=True`, `--trust-model`), because
unpickling it runs code that the file chooses. A trusted class is imported from the module that defined
it: the current directory and the model file's directory are on the import path while the file is read,
so `ttc compile model.pt --trust-model` run beside `models.py` finds `models.Net` without PYTHONPATH.

What is not a module (a state_dict, a training checkpoint, a TorchScript archive, a class defined in
the training script itself) is a one-line error saying what to save instead. A model saved from a
GPU loads on the CPU (`map_location="cpu"`).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ttc.isa.errors import UserError

from . import modules as ttc_modules
from . import ttfs


class ModelLoadError(UserError, ValueError):
    pass


_SAFE_NAMESPACES = (
    "torch.nn.modules.container", "torch.nn.modules.conv", "torch.nn.modules.linear",
    "torch.nn.modules.batchnorm", "torch.nn.modules.pooling", "torch.nn.modules.flatten",
    "torch.nn.modules.dropout", "torch.nn.modules.activation",
    "spikingjelly.activation_based.layer", "spikingjelly.activation_based.neuron",
    "spikingjelly.activation_based.surrogate", "spikingjelly.activation_based.base",
    "snntorch._neurons.leaky", "snntorch.surrogate",
)

# Functions a model file may call while it loads: snnTorch's surrogate-gradient factories
# (`snntorch.surrogate.atan(alpha)` and its kin), which `save_model` stores in place of the closures
# they return. They build a closure from numbers and run nothing else.
_SAFE_FACTORY_NAMESPACES = ("snntorch.surrogate",)

_ADVICE = ("save the module object with torch.save(model) (or ttc.api.save_model(model, path)), or pass the "
           "module to ttc.api.compile_model(model, input_shape) in Python")


def safe_classes(libraries: set[str] | None = None) -> list:
    """The classes (and snnTorch's surrogate factories) a model file may name without --trust-model.
    `libraries`: the top-level packages the file names (None: all); only those are imported, because
    importing SpikingJelly or snnTorch takes longer than loading a small model."""
    found = list(ttc_modules.SAFE_CLASSES) + list(ttfs.SAFE_CLASSES) + [snntorch_state_function]
    for name in _SAFE_NAMESPACES:
        library = name.split(".")[0]
        if libraries is not None and library not in libraries:
            continue
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found += [v for v in vars(mod).values() if inspect.isclass(v) and v.__module__.startswith(library)]
        if name in _SAFE_FACTORY_NAMESPACES:
            found += [v for v in vars(mod).values() if inspect.isfunction(v) and v.__module__ == name]
    return found


def _libraries_named(path: Path) -> set[str] | None:
    """The top-level packages of the classes and functions the file's pickle names (None: unknown)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a torch.save zip file: torch.load below says what is wrong with it
        return None
    return {name.split(".")[0] for name in names}


def _is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive: a zip whose record holds constants.pkl (how torch.load tells, too)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.split("/", 1)[-1] == "constants.pkl" for name in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return False  # a damaged zip (names not UTF-8, an unknown zip version): torch.load says what is wrong


@contextlib.contextmanager
def _importable_from(path: Path):
    """The current directory and the model file's directory first on sys.path, for the unpickling
    only: the `ttc` script's own sys.path holds neither, so a class in the user's models.py would
    not import. Restored afterwards (the modules imported stay in sys.modules, as they must)."""
    saved = list(sys.path)
    for directory in reversed([os.getcwd(), str(path.resolve().parent)]):
        if directory not in sys.path[:2]:
            sys.path.insert(0, directory)
    try:
        yield
    finally:
        sys.path[:] = saved


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# the training script's module: '__main__', or 'pkg.__main__' for `python -m pkg`
_IN_MAIN = re.compile(r"Can't get attribute '(\w+)' on <module '(?:[\w.]+\.)?__main__'")


def _in_main(path: Path, name: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: class {name} was defined in the script that saved the model (__main__), so no module can "
        f"import it: move the class into a module (e.g. models.py), import it from there, save again and "
        "run ttc with --trust-model beside that module")


def load_model(path: str | Path, trust: bool = False, nir_dt: float | None = None) -> torch.nn.Module:
    """The model in `path`: a `torch.save`d module, or a NIR graph (a `.nir` file, its neurons stepped
    with `nir_dt` seconds, ttc.frontends.nir.DEFAULT_DT unless given). Reading NIR runs no code from the file."""
    path = Path(path)
    if path.suffix.lower() == ".nir":
        from .nir import DEFAULT_DT, read_nir

        return read_nir(path, DEFAULT_DT if nir_dt is None else nir_dt).eval()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: is empty, not a torch.save'd model")
    if _is_torchscript(path):  # torch.load would refuse it (weights_only) or hand back a compiled graph
        raise ModelLoadError(f"{path}: is a TorchScript archive (torch.jit.save), which ttc cannot trace: {_ADVICE}")
    try:
        if trust:
            with _importable_from(path):
                model = torch.load(path, weights_only=False, map_location="cpu")
        else:
            with torch.serialization.safe_globals(safe_classes(_libraries_named(path))):
                model = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        match = _UNSUPPORTED.search(str(e))
        if match and match.group(1).startswith("__main__."):
            raise _in_main(path, match.group(1).split(".", 1)[1]) from None
        if match and match.group(1).rsplit(".", 1)[-1] == "getattr":  # torch.save of an snnTorch neuron
            raise ModelLoadError(
                f"{path}: stores a bound method (an snnTorch neuron's state_function), which only --trust-model "
                "may load: save the model with ttc.api.save_model(model, path) instead of torch.save") from None
        if match:
            raise ModelLoadError(
                f"{path}: refers to class {match.group(1)}, which ttc does not know; loading it would run "
                "code from the file: pass --trust-model only if you trust its source") from None
        raise ModelLoadError(f"{path}: not a loadable model ({_unpickler_reason(e)})") from None
    except ModuleNotFoundError as e:  # only with trust: the module defining the model's class
        raise ModelLoadError(
            f"{path}: the model's class is defined in module {e.name!r}, which does not import from here: run "
            f"ttc in the directory that holds it (the model file's directory works too) or add that directory "
            "to PYTHONPATH") from None
    except AttributeError as e:
        match = _IN_MAIN.search(str(e))
        if match:
            raise _in_main(path, match.group(1)) from None
        raise ModelLoadError(f"{path}: cannot load model: {_first_line(e)}") from None
    except (RuntimeError, EOFError, ValueError, ImportError, NotImplementedError) as e:
        raise ModelLoadError(f"{path}: cannot load model: {_first_line(e)}") from None
    except (TypeError, struct.error, OverflowError, AssertionError, OSError) as e:
        # the restricted unpickler, or torch's zip reader, on damaged opcodes or records
        raise ModelLoadError(f"{path}: not a loadable model (damaged: the unpickler failed with "
                             f"{type(e).__name__} {_first_line(e)})") from None
    except (KeyError, IndexError) as e:  # pickle's own opcodes failing on bytes that are no pickle (a text file)
        raise ModelLoadError(f"{path}: not a loadable model (damaged, or not a torch.save file: the unpickler "
                             f"failed with {type(e).__name__} {e})") from None
    module = _as_module(path, model)
    _check_state(path, module)
    return module.eval()


#: What a module's own tables hold (torch.nn.Module keeps its submodules, parameters and buffers in them).
_TABLES = {"_modules": torch.nn.Module, "_parameters": torch.nn.Parameter, "_buffers": torch.Tensor}


def _check_state(path: Path, module: torch.nn.Module, where: str = "") -> None:
    """The unpickler rebuilds a module from whatever state the file holds: a damaged one (a table that is
    no dict, a submodule that is a number, a training flag that is a list) is refused here, naming the
    module, before torch's own methods trip over it."""
    state = vars(module)
    name = f"module {where!r} ({type(module).__name__})" if where else f"the model ({type(module).__name__})"
    for table, kind in _TABLES.items():
        entries = state.get(table)
        if not isinstance(entries, dict):
            raise ModelLoadError(f"{path}: holds a damaged {name}: its {table} is {type(entries).__name__}, not a dict")
        for key, value in entries.items():
            if not isinstance(key, str) or not (value is None or isinstance(value, kind)):
                raise ModelLoadError(f"{path}: holds a damaged {name}: {table}[{key!r:.40}] is a "
                                     f"{type(value).__name__}, not a {kind.__name__}")
    if not isinstance(state.get("training"), bool):
        raise ModelLoadError(f"{path}: holds a damaged {name}: its training flag is {state.get('training')!r:.40}")
    # torch's modules declare the settings every instance holds (BatchNorm2d: eps, momentum, ...)
    lost = [c for c in getattr(type(module), "__constants__", ()) if c not in state and not hasattr(type(module), c)]
    if lost:
        raise ModelLoadError(f"{path}: holds a damaged {name}: it lacks {', '.join(lost)}")
    for key, child in state["_modules"].items():
        if child is not None:
            _check_state(path, child, f"{where}.{key}" if where else key)


def _first_line(e: Exception) -> str:
    """The first line of `e`'s message, or its type when it has none (an empty file's EOFError)."""
    lines = str(e).splitlines()
    return lines[0][:200] if lines else type(e).__name__


def _unpickler_reason(e: Exception) -> str:
    """The reason in an UnpicklingError: for torch's weights-only unpickler, the line after
    "WeightsUnpickler error:" (its first lines are advice on weights_only that does not apply here)."""
    lines = [line.strip() for line in str(e).splitlines()]
    for k, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip() or next((l for l in lines[k + 1:] if l), "")
            if reason:
                return reason[:200]
    return _first_line(e)


def _is_state_dict(value) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _as_module(path: Path, obj) -> torch.nn.Module:
    """`obj` if it is a module ttc can trace; otherwise what the file holds and what to save instead."""
    if isinstance(obj, torch.jit.ScriptModule):
        raise ModelLoadError(f"{path}: holds a TorchScript module, which ttc cannot trace: {_ADVICE}")
    if isinstance(obj, torch.nn.Module):
        return obj
    if _is_state_dict(obj):
        raise ModelLoadError(f"{path}: holds a state_dict ({len(obj)} tensors: the weights without the model): "
                             f"build the model in Python, call its load_state_dict, then {_ADVICE}")
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:6]) + (", ..." if len(obj) > 6 else "")
        modules = [k for k, v in obj.items() if isinstance(v, torch.nn.Module)]
        if modules:
            raise ModelLoadError(f"{path}: holds a dict (keys {keys}) with the model under {modules[0]!r}: save "
                                 f"the module itself, torch.save(checkpoint[{modules[0]!r}])")
        weights = [k for k, v in obj.items() if _is_state_dict(v)]
        if weights:
            raise ModelLoadError(f"{path}: holds a training checkpoint (keys {keys}) whose {weights[0]!r} is a "
                                 f"state_dict (the weights without the model): build the model in Python, call "
                                 f"model.load_state_dict(checkpoint[{weights[0]!r}]), then {_ADVICE}")
        raise ModelLoadError(f"{path}: holds a dict (keys {keys}), not a torch.nn.Module: {_ADVICE}")
    raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a torch.nn.Module: {_ADVICE}")


# ------------------------------------------------------------------------------------ saving

def _snntorch_surrogate(fn):
    """(factory, args) that rebuild `fn` if it is a closure returned by one of snnTorch's surrogate
    factories (`snntorch.surrogate.atan(alpha=2.0)`, the default spike_grad of every snnTorch neuron),
    else None. Such a closure is a local object, which pickle cannot store by name."""
    if not inspect.isfunction(fn) or fn.__module__ != "snntorch.surrogate" or not fn.__qualname__.endswith(".<locals>.inner"):
        return None
    factory = getattr(sys.modules["snntorch.surrogate"], fn.__qualname__.split(".")[0], None)
    if not inspect.isfunction(factory):
        return None
    captured = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ())))
    params = list(inspect.signature(factory).parameters)
    if set(params) != set(captured):  # the closure does not show the factory's arguments: cannot rebuild it
        return None
    return factory, tuple(captured[p] for p in params)


# The methods an snnTorch neuron keeps as its `state_function` (Leaky: the membrane update of its reset
# mechanism); torch.save stores a bound method as getattr(neuron, name), and getattr cannot be allowed.
_SNNTORCH_STATE_FUNCTIONS = ("_base_sub", "_base_zero", "_base_int")


def snntorch_state_function(neuron, name: str):
    """`neuron.<name>`, for one of snnTorch's state functions only: what a file saved by save_model
    calls to restore a neuron's `state_function`, and all it may reach."""
    if not type(neuron).__module__.startswith("snntorch.") or name not in _SNNTORCH_STATE_FUNCTIONS:
        raise pickle.UnpicklingError(f"{type(neuron).__qualname__}.{name} is not an snnTorch state function")
    return getattr(neuron, name)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        rebuilt = _snntorch_surrogate(obj)
        if rebuilt is not None:
            return rebuilt
        if inspect.ismethod(obj) and type(obj.__self__).__module__.startswith("snntorch.") \
                and obj.__func__.__name__ in _SNNTORCH_STATE_FUNCTIONS:
            return snntorch_state_function, (obj.__self__, obj.__func__.__name__)
        return NotImplemented


class _PickleModule:
    """The pickle module handed to torch.save: pickle itself, with a Pickler that stores snnTorch's
    surrogate closures as calls of their factories."""
    Pickler = _Pickler

    def __getattr__(self, name):
        return getattr(pickle, name)


def save_model(model: torch.nn.Module, path: str | Path) -> None:
    """`torch.save(model, path)`, except that snnTorch's surrogate-gradient closures (the default
    `spike_grad`, which plain torch.save cannot pickle: "Can't pickle local object 'atan.<locals>.inner'")
    are stored as calls of their factories, e.g. `snntorch.surrogate.atan(2.0)`, so the loaded model
    trains on with the same surrogate; a neuron's `state_function` (a bound method, which torch.save
    stores through getattr) is stored as a call of `snntorch_state_function`. The file loads with torch.load and with ttc without --trust-model
    (if every class in it is one ttc knows)."""
    torch.save(model, path, pickle_module=_PickleModule())
