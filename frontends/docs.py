"""Generate docs/frontends.md from the module maps and the traced functions:
`python -m ttc.frontends.docs > docs/frontends.md`. A test checks that the committed file equals this
output, so the table is what the frontend does."""
from __future__ import annotations

import inspect

from . import module_maps as maps
from . import trace


def _summary(fn) -> str:
    """The first paragraph of a handler's docstring, on one line."""
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("|", "\\|")


def _name(cls) -> str:
    return f"`nn.{cls.__qualname__}`" if cls.__module__.startswith("torch") else f"`{cls.__qualname__}`"


def _module_rows() -> list[tuple[str, str, str]]:
    rows = []
    for classes, handler in maps._BY_CLASS:
        classes = classes if isinstance(classes, tuple) else (classes,)
        library = "torch.nn" if classes[0].__module__.startswith("torch") else "ttc"
        rows.append((library, ", ".join(map(_name, classes)), _summary(handler)))
    for module, names, handler in maps._BY_LIBRARY_CLASS:
        library = "SpikingJelly" if module.startswith("spikingjelly") else "snnTorch"
        shown = [f"`{n}`" for n in names if n not in ("BaseNode", "SpikingNeuron")]
        rows.append((library, ", ".join(shown) or f"other `{names[0]}` subclasses",
                     _summary(handler) if handler else "refused: named in the error"))
    by_handler: dict = {}
    for name, handler in maps._TT_SNN.items():
        by_handler.setdefault(handler, []).append(f"`{name}`")
    rows += [("TT-SNN (official code)", ", ".join(names), _summary(h)) for h, names in by_handler.items()]
    return rows


def _call_rows() -> list[tuple[str, str]]:
    rows = {}
    for table, kind in ((trace._FUNCTIONS, "function"), (trace._METHODS, "method")):
        for key, handler in table.items():
            name = key if isinstance(key, str) else f"{getattr(key, '__module__', '') or ''}.{key.__name__}".lstrip(".")
            name = name.replace("_operator.", "operator.").replace("torch._C._VariableFunctions.", "torch.") \
                .replace("torch.nn.functional.", "F.").replace("builtins.", "")
            label = f"`.{name}()`" if kind == "method" else f"`{name}`"
            rows.setdefault(_summary(handler), []).append(label)
    return [(", ".join(labels), summary) for summary, labels in rows.items()]


def render() -> str:
    out = [
        "# Frontends: the PyTorch ttc reads",
        "",
        "Generated from `frontends/module_maps.py` and `frontends/trace.py` by `python -m ttc.frontends.docs`;",
        "do not edit by hand.",
        "",
        "ttc traces a model with torch.fx (`ttc.frontends.trace`): every module below is a leaf, lowered to",
        "IR ops by its handler; a library class that composes known layers (SpikingJelly's zoo blocks) is",
        "traced into, as a user's own block is. The model's input shape is known while tracing, so Python",
        "loops over `range(x.shape[0])` or `range(T)` unroll and sizes taken from the input are constants.",
        "Anything else is refused with the module's path and class, or the function and the user's source",
        "line (`file:line`, never a torch internal).",
        "",
        "Two styles of SNN code lower to the same IR: multi-step layers on whole `[T, N, ...]` sequences (ttc's",
        "modules, SpikingJelly with `step_mode='m'`), and time loops over `x[t]` that call single-step layers",
        "and stack the results (snnTorch, SpikingJelly single-step). A static input becomes a sequence by",
        "direct coding: `x.unsqueeze(0).repeat(T, 1, ...)`, a filled `torch.zeros(T, N, ...)` buffer, or being",
        "fed to a layer at every step of a loop. Neurons map to the IR's `neuron` (docs/ir.md):",
        "`h = decay * R(u) + input_gain * x + charge`; a gain or charge folds into the conv or linear layer",
        "feeding the neuron, or, without one, a positive gain into its threshold. NIR graphs (`.nir`) are read",
        "into a module of ttc's layers and traced the same way: [nir.md](nir.md).",
        "",
        "## Modules",
        "",
        "| library | class | lowers to |",
        "|---|---|---|",
        *(f"| {lib} | {cls} | {what} |" for lib, cls, what in _module_rows()),
        "",
        "## Functions and methods inside `forward`",
        "",
        "| call | understood as |",
        "|---|---|",
        *(f"| {calls} | {what} |" for calls, what in _call_rows()),
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
