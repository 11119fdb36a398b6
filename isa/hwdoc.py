"""Generate docs/hardware-config.md, the hardware config reference, from the schema in isa/hwconfig.py and
the presets: `python -m ttc.isa.hwdoc > docs/hardware-config.md`. A test checks that the committed file
equals this output, so the reference cannot drift from what `load_hw` accepts."""
from __future__ import annotations

import json

from .hwconfig import (BUFFER_KEYS, BUFFERS, MIN_BUFFER_BYTES, SCHEMA, HwConfig, HwConfigError, Key, hw_from_dict,
                       load_hw, presets)
from .table import PE_GROUPS

#: The preset the complete example is written from.
EXAMPLE_PRESET = "sata"


def toml_value(value) -> str:
    """A scalar as TOML writes it."""
    # a JSON string is a valid TOML basic string (same quotes, a subset of TOML's escapes)
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _value(hw: HwConfig, key: Key, owner=None):
    return getattr(owner if owner is not None else hw, key.field) if key.field else hw.energy_pj[key.name]


def _line(key: Key, value) -> str:
    return f"{key.name} = {toml_value(value)}" + (f"  # {key.unit}" if key.unit else "")


def example_toml(hw: HwConfig) -> str:
    """The config `hw` as a complete TOML file, every key of the schema written out with its unit."""
    out = []
    for section in SCHEMA:
        if section.name:
            out += ["", f"[{section.name}]"]
        out += [_line(key, _value(hw, key)) for key in section.keys]
    for name, meaning in BUFFERS.items():
        out += ["", f"[buffers.{name}]  # {meaning}"]
        out += [_line(key, _value(hw, key, hw.buffers[name])) for key in BUFFER_KEYS]
    return "\n".join(out).lstrip("\n") + "\n"


def _key_table(keys) -> list[str]:
    out = ["| key | type | unit | allowed | default | meaning |", "|---|---|---|---|---|---|"]
    for k in keys:
        default = "required" if k.required else f"`{toml_value(k.default)}`"
        out.append(f"| `{k.name}` | {k.kind.__name__} | {k.unit or '-'} | {k.range_text} | {default} | {k.meaning} |")
    return out


def _sample_error() -> str:
    """The error a config with one bad value gives, produced by the validator itself."""
    raw = json.loads(json.dumps(_raw(load_hw(EXAMPLE_PRESET))))
    raw["dram"]["latency_cycles"] = 0
    try:
        hw_from_dict(raw, "my.toml")
    except HwConfigError as e:
        return f"ttc: error: {e}"
    raise AssertionError("a zero DRAM latency passed validation")


def _raw(hw: HwConfig) -> dict:
    """`hw` as the dict its TOML file parses to."""
    raw = {}
    for section in SCHEMA:
        table = raw.setdefault(section.name, {}) if section.name else raw
        table.update({k.name: _value(hw, k) for k in section.keys})
    raw["buffers"] = {name: {k.name: _value(hw, k, buf) for k in BUFFER_KEYS} for name, buf in hw.buffers.items()}
    return raw


def render() -> str:
    out = [
        "# Hardware config reference",
        "",
        "Generated from the schema in `isa/hwconfig.py` (`SCHEMA`, `BUFFER_KEYS`, `BUFFERS`, `ENERGY_ACTIONS`) and "
        "the presets in `isa/presets/` by `python -m ttc.isa.hwdoc` (`make docs`); do not edit by hand. How the "
        "compiler and the simulator use these numbers: [hardware.md](hardware.md).",
        "",
        "A hardware config is one TOML file. `ttc compile --hw FILE|PRESET` compiles for it (prog.bin records the "
        "whole config) and `ttc run --sim prog.bin --hw FILE|PRESET` prices a run with another. Presets: "
        + ", ".join(f"`{p}`" for p in presets()) + ".",
        "",
        "Rules, checked when the config is loaded:",
        "",
        "- every key below must be given unless it has a default; an unknown key or section is an error;",
        "- `int` is a TOML integer; `float` is a number (an integer such as `400` is fine); `str` is a string; "
        "`nan` and `inf` are refused;",
        f"- `[array] groups` divides `rows` x `cols` and is at most {PE_GROUPS};",
        f"- there is exactly one `[buffers.NAME]` table for each of {', '.join(f'`{b}`' for b in BUFFERS)}, "
        f"each of at least {MIN_BUFFER_BYTES} bytes.",
        "",
        "A config that breaks a rule is refused with one line naming the file, the table, the key and what is "
        "wrong, e.g.",
        "",
        "```",
        _sample_error(),
        "```",
    ]
    for section in SCHEMA:
        title = f"`[{section.name}]`" if section.name else "Top level"
        out += ["", f"## {title}", "", section.meaning[0].upper() + section.meaning[1:] + ".", ""]
        out += _key_table(section.keys)
    out += ["", "## `[buffers.NAME]`", "",
            "The on-chip SRAMs, one table each; every instruction's bytes are priced in whole accesses, and "
            "every buffer leaks over the whole run.", "",
            "| NAME | holds |", "|---|---|"]
    out += [f"| `{name}` | {meaning} |" for name, meaning in BUFFERS.items()]
    out += [""] + _key_table(BUFFER_KEYS)
    out += ["", "## Presets and where their energy figures come from", "",
            "Each preset's `energy_source`, as `ttc run --report` prints it beside the energy (and writes it to "
            "report.json as `energy_source`). The preset files say figure by figure where each number comes "
            "from.", "",
            "| preset | description | energy figures |", "|---|---|---|"]
    for name in presets():
        hw = load_hw(name)
        out.append(f"| `{name}` | {hw.description} | {hw.energy_source} |")
    out += ["", f"## Example: the complete `{EXAMPLE_PRESET}` preset", "",
            f"Every key written out (units in comments); `load_hw` reads it back as the `{EXAMPLE_PRESET}` preset.",
            "", "```toml", example_toml(load_hw(EXAMPLE_PRESET)).rstrip("\n"), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
