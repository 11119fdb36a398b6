"""ttc's errors: one hierarchy, so that a caller (the CLI first of all) can tell bad input from a bug.

    TtcError
    ├── UserError       the input is wrong: a model, file, option, hardware config, program, assembly,
    │                   IR text, or a model ttc cannot compile. The message says what and where, in one
    │                   line; `ttc` prints it as `ttc: error: ...` and exits 1.
    └── InternalError   ttc is wrong: a broken invariant. `ttc` says it is a bug and how to report it.

Every error class of ttc derives from one of the two, and most also from the built-in exception that
callers caught before the hierarchy existed (ValueError, TypeError, RuntimeError), so that they still do:

    UserError       ttc.compiler.ir.IRError, ttc.compiler.passes.OptionError, ttc.isa.hwconfig.HwConfigError,
                    ttc.isa.program.ProgramError, ttc.isa.asm.AsmError, ttc.isa.encoding.EncodingError,
                    ttc.isa.io.InputError (also ttc.runtime.run.InputError), ttc.frontends.load.ModelLoadError,
                    ttc.frontends.trace.UnsupportedModel, ttc.frontends.modules.ModelDefinitionError,
                    ttc.frontends.ttfs.NotConvertible (a TypeError), ttc.cli.CliError, ttc.demo.DemoError,
                    ttc.api.ApiError (a TypeError: simulate() given neither a Program nor a Compiled),
                    ttc.simulator.machine.SimError, ttc.simulator.timeline.ScheduleError (RuntimeErrors)
    InternalError   ttc.compiler.passes.tt_schedule.PlanUnavailable, and the compiler's own checks of its
                    invariants (a tile that does not start on a byte, a value not placed in DRAM)

SimError (the program does what the machine cannot) and ScheduleError (it deadlocks or leaves tokens
behind) are user errors: the program is the simulator's input, and the simulator cannot tell a program
ttc just compiled from one read from a file, possibly assembled by hand, which is what `ttc run` runs.
On a program ttc compiled in the same process they point at a compiler bug instead.

PlanUnavailable is internal: tt-schedule raises it while trying a contraction plan and catches it to
record why the plan is unavailable; one that escapes is a bug.

Any other exception reaching the CLI (KeyError, IndexError, a bare ValueError from a library) is
reported as internal too; OSError (a file that cannot be read or written) is reported as a user error.
This module imports nothing, so that every part of ttc (the ISA first) can import it.
"""


class TtcError(Exception):
    """Any error ttc raises on purpose."""


class UserError(TtcError):
    """Bad input; the message is one line saying what is wrong and where."""


class InternalError(TtcError):
    """A bug in ttc: an invariant of its own that does not hold."""
