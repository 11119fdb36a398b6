"""Loading a `torch.save`d model without running code from the file.

`torch.load(weights_only=True)` refuses every class not on an allowlist; ttc allows the classes it can
compile (torch.nn layers, ttc's modules, SpikingJelly's and snnTorch's layers and neurons, if they
are installed). Any other class needs the user's consent (`trust=True`, `--trust-model`), because
unpickling it runs code that the file chooses.
"""
from __future__ import annotations

import importlib
import inspect
import pickle
import re
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


def safe_classes() -> list:
    """The classes a model file may name without --trust-model."""
    found = list(ttc_modules.SAFE_CLASSES) + list(ttfs.SAFE_CLASSES)
    for name in _SAFE_NAMESPACES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found += [v for v in vars(mod).values() if inspect.isclass(v) and v.__module__.startswith(name.split(".")[0])]
    return found


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_model(path: str | Path, trust: bool = False, nir_dt: float | None = None) -> torch.nn.Module:
    """The model in `path`: a `torch.save`d module, or a NIR graph (a `.nir` file, its neurons stepped
    with `nir_dt` seconds, ttc.frontends.nir.DEFAULT_DT unless given). Reading NIR runs no code from the file."""
    path = Path(path)
    if path.suffix.lower() == ".nir":
        from .nir import DEFAULT_DT, read_nir

        return read_nir(path, DEFAULT_DT if nir_dt is None else nir_dt).eval()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        if trust:
            model = torch.load(path, weights_only=False, map_location="cpu")
        else:
            with torch.serialization.safe_globals(safe_classes()):
                model = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        match = _UNSUPPORTED.search(str(e))
        if match:
            raise ModelLoadError(
                f"{path}: refers to class {match.group(1)}, which ttc does not know; loading it would run "
                "code from the file: pass --trust-model only if you trust its source") from None
        raise ModelLoadError(f"{path}: not a loadable model ({str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, ValueError, AttributeError, ModuleNotFoundError) as e:
        raise ModelLoadError(f"{path}: cannot load model: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{path}: holds a {type(model).__name__}, not a torch.nn.Module (save the whole model, not its state_dict)")
    return model.eval()
