"""Compiler passes: one small, named pass a file, each a dataclass whose fields are its options.

`PIPELINE` is the order `ttc compile` runs them in; the graph is verified after every pass.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from ..ir import Graph


@dataclass
class Pass:
    name: ClassVar[str] = ""

    def run(self, graph: Graph) -> Graph:
        raise NotImplementedError(type(self).__name__)  # every pass overrides run

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    REGISTRY[cls.name] = cls
    return cls


def parse_per_layer(option: str | int, what: str, convert=str) -> dict[str, object]:
    """A per-layer option: "value" (key "*": every layer) or "path=value,path=value", each value
    through `convert`."""
    option = str(option)
    if not option:
        return {}
    items = [("*", option)] if "=" not in option else [i.partition("=")[::2] for i in option.split(",")]
    try:
        return {path.strip(): convert(value.strip()) for path, value in items}
    except ValueError:
        raise ValueError(f"{what} {option!r}: expected a value or path=value,path=value") from None


from . import (allocate, fold_batchnorm, fold_global_pool, fold_neuron_input, fold_spike_amplitude,  # noqa: E402,F401
               fuse, quantize, tile, tt_factorize, tt_schedule)  # (importing them registers the passes)

PIPELINE = ("fold-batchnorm", "tt-factorize", "fold-global-pool", "fold-neuron-input", "fold-spike-amplitude", "quantize",
            "tt-schedule", "fuse", "tile", "allocate")


def make_pass(name: str, **options) -> Pass:
    cls = REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown pass {name!r} (passes: {', '.join(REGISTRY)})")
    known = set(cls.option_names())
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"pass {name}: unknown options {', '.join(sorted(unknown))} (options: {', '.join(sorted(known))})")
    return cls(**options)


def run_pipeline(graph: Graph, options: dict[str, dict], passes: tuple[str, ...] = PIPELINE) -> Graph:
    """Run `passes` (default: all of PIPELINE) with their options (`options[pass name]`), verifying after each."""
    for name in passes:
        graph = make_pass(name, **options.get(name, {})).run(graph).verify()
    return graph
