"""What every part of ttc relies on: the error hierarchy, the atomic writer, pass options declared once
(the API's options and the CLI's flags derive from them), and the pipeline's callback between passes."""
import argparse
import dataclasses
import io
import os
import sys

import numpy as np
import pytest

from ttc import api, cli
from ttc.compiler import passes
from ttc.compiler.ir import IRError
from ttc.compiler.passes import PIPELINE, OptionError, Pass, pipeline_arguments, run_pipeline, user_option, user_options
from ttc.compiler.passes.tt_schedule import PlanUnavailable
from ttc.frontends.load import ModelLoadError
from ttc.frontends.modules import ModelDefinitionError
from ttc.frontends.trace import UnsupportedModel, trace
from ttc.frontends.ttfs import NotConvertible
from ttc.isa.asm import AsmError
from ttc.isa.encoding import EncodingError
from ttc.isa.errors import InternalError, TtcError, UserError
from ttc.isa.files import atomic_write
from ttc.isa.hwconfig import HwConfigError, load_hw
from ttc.isa.program import ProgramError
from ttc.runtime.run import InputError
from ttc.simulator.machine import SimError
from ttc.simulator.timeline import ScheduleError

from conftest import small_conv_snn


def test_every_error_class_is_a_user_or_an_internal_error():
    user = (IRError, OptionError, HwConfigError, ProgramError, AsmError, EncodingError, InputError, ModelLoadError,
            UnsupportedModel, ModelDefinitionError, NotConvertible, cli.CliError, SimError, ScheduleError)
    assert all(issubclass(e, UserError) for e in user)
    assert issubclass(PlanUnavailable, InternalError)
    assert issubclass(UserError, TtcError) and issubclass(InternalError, TtcError)
    assert not issubclass(UserError, InternalError) and not issubclass(InternalError, UserError)
    # callers that caught the built-in exceptions before the hierarchy existed still do
    assert all(issubclass(e, ValueError) for e in user if e not in (NotConvertible, cli.CliError, SimError, ScheduleError))
    assert issubclass(NotConvertible, TypeError)
    assert issubclass(SimError, RuntimeError) and issubclass(ScheduleError, RuntimeError)


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and os.stat(target).st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("exists", [True, False])
def test_atomic_write_that_fails_leaves_no_file_and_the_old_one_intact(tmp_path, exists):
    target = tmp_path / "out.txt"
    if exists:
        target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert os.listdir(tmp_path) == (["out.txt"] if exists else [])
    if exists:
        assert target.read_text() == "old"


def test_atomic_write_into_a_missing_directory_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        atomic_write(tmp_path / "missing" / "out.txt", lambda tmp: tmp.write_text("x"))
    assert e.value.filename == str(tmp_path / "missing" / "out.txt")


def test_options_recorded_in_prog_bin_keep_their_names_and_defaults():
    assert api.OPTIONS == {"input_encoding": "fixed", "input_bits": 16, "input_frac": 8, "tt_rank": "", "tt_error": 0.0, "tt_core_bits": 8,
                           "objective": "latency", "schedule": "", "fusion": "all"}
    assert api.OPTIONS == {o.name: o.default for o in user_options()}


@pytest.fixture
def widget_pass(monkeypatch):
    """A pass with one user option, registered for the test only."""

    @dataclasses.dataclass
    class Widgets(Pass):
        name = "widgets"
        hw: str = "sata"
        count: int = user_option(3, "widget_count", "how many widgets", choices=(3, 5))
        internal: int = 7

        def run(self, graph):
            return graph

    monkeypatch.setitem(passes.REGISTRY, "widgets", Widgets)
    return PIPELINE + ("widgets",)


def test_a_field_declared_as_user_option_becomes_an_option_and_a_flag(widget_pass):
    declared = user_options(widget_pass)
    assert [o.name for o in declared] == [o.name for o in user_options()] + ["widget_count"]
    assert (declared[-1].pass_name, declared[-1].field_name, declared[-1].default) == ("widgets", "count", 3)
    parser = argparse.ArgumentParser()
    cli.add_option_flags(parser, declared)
    assert parser.parse_args([]).widget_count == 3
    assert parser.parse_args(["--widget-count", "5"]).widget_count == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["--widget-count", "4"])
    hw = load_hw("sata")
    arguments = pipeline_arguments({"widget_count": 5, "tt_rank": "2"}, hw, widget_pass)
    assert arguments["widgets"] == {"hw": hw, "count": 5}
    assert arguments["tt-factorize"] == {"rank": "2"} and arguments["tile"] == {"hw": hw} and arguments["allocate"] == {}


def test_an_option_name_declared_twice_is_a_bug(widget_pass, monkeypatch):
    @dataclasses.dataclass
    class Clash(Pass):
        name = "clash"
        rank: str = user_option("", "tt_rank", "the same name as tt-factorize's rank")

    monkeypatch.setitem(passes.REGISTRY, "clash", Clash)
    with pytest.raises(InternalError, match="tt_rank"):
        user_options(PIPELINE + ("clash",))


def test_unknown_compile_option_or_pass_is_a_user_error():
    with pytest.raises(OptionError, match="unknown compile options bogus"):
        api.compile_model(small_conv_snn(), "4,N,1,8,8", bogus=1)
    with pytest.raises(OptionError, match="unknown pass 'nope'"):
        run_pipeline(None, {}, ("nope",))
    with pytest.raises(OptionError, match="--tt-rank"):
        api.compile_model(small_conv_snn(), "4,N,1,8,8", tt_rank="a=1,b")


def test_run_pipeline_calls_back_after_every_pass_in_order():
    seen = []
    graph = run_pipeline(trace(small_conv_snn(), (4, "N", 1, 8, 8)), pipeline_arguments({}, load_hw("sata")),
                         after=lambda name, g: seen.append((name, g)))
    assert [name for name, _ in seen] == list(PIPELINE)
    assert seen[-1][1] is graph


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_long_work_shows_progress_on_a_terminal_and_quiet_silences_it(monkeypatch):
    """Compile passes, the tile search and simulated instructions report progress on a terminal's stderr
    (after progress.DELAY_S; zero here), nothing when quieted (`ttc -q`) or when stderr is not a terminal."""
    from ttc import api
    from ttc.demo import MODEL
    from ttc.isa import progress

    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    model = api.load_model(MODEL)
    for quiet, tty in ((False, True), (True, True), (False, False)):
        err = _Terminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        progress.quiet(quiet)
        try:
            compiled = api.compile_model(model, "4,N,1,8,8")
            api.simulate(compiled.program, np.zeros((4, 2, 1, 8, 8), dtype=np.float32))
        finally:
            progress.quiet(False)
        shown = err.getvalue()
        if quiet or not tty:
            assert shown == ""
        else:
            assert all(what in shown for what in ("compile", "tile search", "simulate (batch 2)")), shown
