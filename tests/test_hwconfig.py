"""The hardware config schema (isa/hwconfig.py) is the one description of every key: the loader validates
with it, docs/hardware-config.md is generated from it, and the presets use only what it documents."""
import json
import re
import tomllib
from pathlib import Path

import pytest

from ttc.isa import hwdoc
from ttc.isa.hwdoc import toml_value
from ttc.isa.hwconfig import (BUFFER_KEYS, BUFFERS, ENERGY_SOURCE_UNSTATED, PRESET_DIR, SCHEMA, HwConfig,
                              HwConfigError, hw_from_dict, load_hw, presets)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "hardware-config.md"

#: (TOML table the key lives in, "" for the top level, the key): every key the schema declares.
SCHEMA_KEYS = [(s.name, k) for s in SCHEMA for k in s.keys] + [(f"buffers.{b}", k) for b in BUFFERS for k in BUFFER_KEYS]


def _sata() -> dict:
    return tomllib.loads((PRESET_DIR / "sata.toml").read_text())


def _table(raw: dict, section: str) -> dict:
    for part in filter(None, section.split(".")):
        raw = raw[part]
    return raw


def test_docs_hardware_config_md_is_generated_from_the_schema():
    assert REFERENCE.read_text() == hwdoc.render(), "run `make docs`"


def test_the_reference_example_loads_as_its_preset(tmp_path):
    """The complete example in the reference is a config `load_hw` accepts: the one it was written from."""
    blocks = re.findall(r"```toml\n(.*?)```", REFERENCE.read_text(), re.S)
    assert len(blocks) == 1
    path = tmp_path / "example.toml"
    path.write_text(blocks[0])
    assert load_hw(str(path)) == load_hw(hwdoc.EXAMPLE_PRESET)
    # every key of the schema is written out, none left to a default
    assert all(re.search(rf"^{k.name} = ", blocks[0], re.M) for _, k in SCHEMA_KEYS)


def _documented() -> dict[str, set[str]]:
    """The keys the reference's tables list, by section ("" top level, "array", ..., "buffers.NAME")."""
    documented, section = {}, None
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("## "):
            heading = re.fullmatch(r"## (?:Top level|`\[(.+)\]`)", line)
            section = None if heading is None else (heading.group(1) or "")
        elif section is not None and (row := re.match(r"\| `(\w+)` \| (str|int|float) \|", line)):
            documented.setdefault(section, set()).add(row.group(1))
    return documented


def test_every_preset_key_is_documented_and_every_documented_key_is_in_the_schema():
    documented = _documented()
    schema = {}
    for section, key in SCHEMA_KEYS:
        schema.setdefault("buffers.NAME" if section.startswith("buffers.") else section, set()).add(key.name)
    assert documented == schema
    for preset in presets():
        raw = tomllib.loads((PRESET_DIR / f"{preset}.toml").read_text())
        used = {"": {k for k, v in raw.items() if not isinstance(v, dict)}}
        used |= {s: set(t) for s, t in raw.items() if isinstance(t, dict) and s != "buffers"}
        used |= {"buffers.NAME": {k for t in raw["buffers"].values() for k in t}}
        for section, keys in used.items():
            assert keys <= documented[section], f"{preset}: [{section}] {keys - documented[section]} undocumented"
        assert set(raw["buffers"]) == set(BUFFERS)
        # a preset says where its energy figures come from (the default only serves users' own configs)
        assert "energy_source" in raw and load_hw(preset).energy_source == raw["energy_source"]


def _changed(key, value):
    """Another valid value of the key (the sata preset's value is `value`)."""
    if key.choices:
        return next(c for c in key.choices if c != value)
    if key.kind is str:
        return value + " (changed)"
    if key.high is not None and not key.low_open:  # (an open low bound is no valid value)
        return key.low if value != key.low else key.low + 1
    return value + 1 if key.kind is int else value * 2 + 1


def _wrong_type(key):
    return 3 if key.kind is str else "3"


@pytest.mark.parametrize("section,key", SCHEMA_KEYS, ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_documented_key_is_validated_and_used(section, key):
    """Each key of the schema is required (or defaults), type-checked, range-checked, and reaches the
    HwConfig: every error names the table and the key."""
    where = f"t [{section}]" if section else "t"
    base = hw_from_dict(_sata(), "t")

    raw = _sata()
    table = _table(raw, section)
    value = table.pop(key.name, None)
    if key.required:
        with pytest.raises(HwConfigError, match=re.escape(f"{where}: missing key '{key.name}'")):
            hw_from_dict(raw, "t")
    else:
        assert getattr(hw_from_dict(raw, "t"), key.field) == key.default

    value = _table(_sata(), section).get(key.name, key.default)  # (sata leaves the optional keys out)
    for bad in [_wrong_type(key)] + ([True] if key.kind is not str else []) + (["not a choice"] if key.choices else []):
        raw = _sata()
        _table(raw, section)[key.name] = bad
        with pytest.raises(HwConfigError, match=re.escape(f"{where}: {key.name} must ")):
            hw_from_dict(raw, "t")

    out_of_range = [v for v in (key.low - (0 if key.low_open else 1) if key.low is not None else None,
                                key.high + 1 if key.high is not None else None,
                                float("nan") if key.kind is float else None) if v is not None]
    assert out_of_range or key.kind is str
    for bad in out_of_range:
        raw = _sata()
        _table(raw, section)[key.name] = bad
        with pytest.raises(HwConfigError, match=re.escape(f"{where}: {key.name} must ")):
            hw_from_dict(raw, "t")

    raw = _sata()
    _table(raw, section)[key.name] = _changed(key, value)
    assert hw_from_dict(raw, "t") != base, f"[{section}] {key.name} does not reach the HwConfig"


@pytest.mark.parametrize("edit,words", [
    (lambda raw: raw["dram"].update(bogus=1), ["[dram]", "unknown key 'bogus'", "known: bytes_per_cycle"]),
    (lambda raw: raw["array"].pop("rows"), ["[array]", "missing key 'rows'"]),
    (lambda raw: raw["buffers"]["wgt"].update(access_bytes=32.0), ["[buffers.wgt]", "access_bytes must be an integer, got 32.0"]),
    (lambda raw: raw["array"].update(groups=8), ["[array]", "groups must be at most 4, got 8"]),
    (lambda raw: raw["array"].update(frequency_mhz=0), ["[array]", "frequency_mhz must be > 0, got 0"]),
    (lambda raw: raw["energy_pj"].update(mul8=-0.2), ["[energy_pj]", "mul8 must not be negative, got -0.2"]),
    (lambda raw: raw.pop("energy_pj"), ["missing section [energy_pj]"]),
    (lambda raw: raw.update(energy={"add8": 1.0}), ["unknown section [energy]"]),
    (lambda raw: raw["buffers"].pop("psum"), ["missing buffer [buffers.psum]"]),
    (lambda raw: raw["buffers"].update(sram=raw["buffers"]["wgt"]), ["unknown buffer [buffers.sram]"]),
    (lambda raw: raw.update(name=7), ["name must be a string, got 7"]),
    (lambda raw: raw.update(buffers=3), ["buffers must be [buffers.NAME] tables, got 3"]),
], ids=["unknown-key", "missing-key", "wrong-type", "above-range", "zero-clock", "negative", "missing-section",
        "unknown-section", "missing-buffer", "unknown-buffer", "string", "buffers-not-tables"])
def test_bad_config_files_give_one_line_naming_the_file_and_the_key(tmp_path, edit, words):
    """(The command line prints this message as `ttc: error: ...`: tests/test_cli.py.)"""
    raw = _sata()
    edit(raw)
    lines = [f"{k} = {toml_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for name, table in raw.items():
        if isinstance(table, dict) and name != "buffers":
            lines += [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for name, table in (raw["buffers"].items() if isinstance(raw["buffers"], dict) else ()):
        lines += [f"[buffers.{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path = tmp_path / "mine.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HwConfigError) as e:
        load_hw(str(path))
    message = str(e.value)
    assert message.startswith("mine.toml") and "\n" not in message
    for w in words:
        assert w in message, message


def test_a_config_without_energy_source_loads_and_says_so():
    raw = _sata()
    del raw["energy_source"]
    assert hw_from_dict(raw, "t").energy_source == ENERGY_SOURCE_UNSTATED


def test_a_prog_bin_config_from_before_energy_source_still_loads():
    """prog.bin records the config as JSON; files written before the key existed lack it."""
    recorded = json.loads(load_hw("sata").to_json())
    del recorded["energy_source"]
    assert HwConfig.from_json(json.dumps(recorded)).energy_source == ENERGY_SOURCE_UNSTATED
