"""Compiler passes: one small, named pass a file, each a dataclass whose fields are its options.

`PIPELINE` is the order `ttc compile` runs them in; the graph is verified after every pass.

The fields users set are declared with `user_option(...)` and nowhere else: `user_options` reads them, and
`ttc.api.OPTIONS` (the keywords of `compile_model`, recorded in prog.bin) and the `ttc compile` flags
derive from it. A pass that reads the hardware config has a field `hw`, which `pipeline_arguments`
fills from the one `--hw` of the compile; a pass that must know another pass's user option (tt-schedule
prices plans fused as `fuse` will fuse them) has a plain field of that option's field name, which
`pipeline_arguments` fills with the same value.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar

from ttc.isa import progress
from ttc.isa.errors import InternalError, UserError

from ..ir import Graph


class OptionError(UserError, ValueError):
    """A pass or option ttc does not know, or an option value it cannot read."""


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


def pass_class(name: str) -> type[Pass]:
    cls = REGISTRY.get(name)
    if cls is None:
        raise OptionError(f"unknown pass {name!r} (passes: {', '.join(REGISTRY)})")
    return cls


@dataclass(frozen=True)
class UserOption:
    """A pass field that users set. `name` is its keyword in `ttc.api.compile_model`, its key in the
    options prog.bin records and, with dashes, its `ttc compile` flag; the flag parses its value as
    the type of `default`."""

    name: str
    pass_name: str
    field_name: str
    default: object
    help: str
    choices: tuple | None = None
    metavar: str | None = None


def user_option(default, name: str, help: str, choices: tuple | None = None, metavar: str | None = None):
    """Declare a pass field as a user option (see `UserOption`): `rank: str = user_option("", "tt_rank", "...")`."""
    return field(default=default, metadata={"option": dict(name=name, help=help, choices=choices, metavar=metavar)})


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
        raise OptionError(f"{what} {option!r}: expected a value or path=value,path=value") from None


from . import (allocate, fold_batchnorm, fold_global_pool, fold_neuron_input, fold_spike_amplitude,  # noqa: E402,F401
               fuse, input_encoding, quantize, tile, train_tape, tt_cores, tt_factorize, tt_schedule)  # (importing them registers the passes)

PIPELINE = ("input-encoding", "fold-batchnorm", "tt-factorize", "fold-global-pool", "fold-neuron-input", "fold-spike-amplitude", "quantize",
            "tt-schedule", "fuse", "tile", "allocate")
#: A training step's (docs/training.md): the forward tapes its neurons' active bits.
#: Its tensor-train layers are trained as their cores (tt-cores), each a conv the quantizer sees.
TRAIN_PIPELINE = (PIPELINE[:PIPELINE.index("quantize")] + ("tt-cores", "quantize", "train-tape")
                  + PIPELINE[PIPELINE.index("quantize") + 1:])


def make_pass(name: str, **options) -> Pass:
    cls = pass_class(name)
    known = set(cls.option_names())
    unknown = set(options) - known
    if unknown:
        raise OptionError(f"pass {name}: unknown options {', '.join(sorted(unknown))} (options: {', '.join(sorted(known))})")
    return cls(**options)


def user_options(passes: tuple[str, ...] = PIPELINE) -> list[UserOption]:
    """The user options the `passes` declare, in pipeline order."""
    found = [UserOption(pass_name=name, field_name=f.name, default=f.default, **f.metadata["option"])
             for name in passes for f in fields(pass_class(name)) if "option" in f.metadata]
    names = [o.name for o in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # one name would set two fields, and prog.bin could not say which
        raise InternalError(f"user options declared by more than one pass: {', '.join(twice)}")
    return found


def pipeline_arguments(options: dict, hw, passes: tuple[str, ...] = PIPELINE) -> dict[str, dict]:
    """Each pass's keyword arguments: the user options it declares, taken from `options` (by user
    name; a missing one keeps its default), `hw` where the pass has a field of that name, and another pass's
    user option where it has a plain field of that option's field name."""
    arguments = {name: {"hw": hw} if "hw" in pass_class(name).option_names() else {} for name in passes}
    for o in user_options(passes):
        if o.name in options:
            arguments[o.pass_name][o.field_name] = options[o.name]
        for name in passes:
            if name != o.pass_name and o.field_name in pass_class(name).option_names():
                arguments[name][o.field_name] = options.get(o.name, o.default)
    return arguments


def run_pipeline(graph: Graph, options: dict[str, dict], passes: tuple[str, ...] = PIPELINE,
                 after: Callable[[str, Graph], None] | None = None) -> Graph:
    """Run `passes` (default: all of PIPELINE) with their options (`options[pass name]`), verifying
    after each, then calling `after(pass name, graph)` if given: the place to take counts or snapshots
    between passes."""
    with progress.bar(len(passes), "compile", "pass") as shown:
        for name in passes:
            shown.set_postfix_str(name)
            graph = make_pass(name, **options.get(name, {})).run(graph).verify()
            shown.update()
            if after is not None:
                after(name, graph)
    return graph
