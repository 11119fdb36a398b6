"""The integer neuron step (ttc.isa.neuron) against its documented equations, written out here per
neuron on Python integers, and the two callers that must compute it: the simulator's `nrn` handler
and the quantized reference's `neuron_q`."""
import itertools

import numpy as np
import pytest
import torch

from ttc.compiler.ir import NeuronQ
from ttc.compiler.reference import neuron_steps
from ttc.isa.encoding import Instr, Ref
from ttc.isa.hwconfig import load_hw
from ttc.isa.mt import level_code
from ttc.isa.neuron import PARAMS, step
from ttc.isa.program import Program
from ttc.simulator.machine import Machine

STEPS, NEURONS, V_INIT = 4, 300, -3
KINDS = [(1, "parallel")] + [(k, mode) for k in (2, 3, 4) for mode in ("parallel", "cascade")]
CASES = [dict(theta=theta, v_reset=-5, decay_mul=mul, decay_shift=shift, in_shift=in_shift, cmp=cmp, reset=reset,
              order=order, levels=levels, mode=mode)
         for (cmp, reset, order, (levels, mode)), (theta, mul, shift, in_shift)
         in zip(itertools.product(("gt", "ge"), ("hard", "subtract", "none"), ("reset_decay", "decay_reset"), KINDS),
                itertools.cycle([(40, 3, 2, 0), (12, 1, 0, -2), (64, 5, 3, 1), (24, 1, 1, -1)]))]


def _name(case: dict) -> str:
    return "-".join(str(case[k]) for k in ("cmp", "reset", "order", "levels", "mode"))


def oracle_step(u: int, x: int, p: dict) -> tuple[list[int], int]:
    """The equations of ttc.isa.neuron's docstring for one neuron, on Python integers."""
    def above(v, th):
        return int(v > th if p["cmp"] == "gt" else v >= th)

    def fire(v):
        if p["mode"] == "parallel":
            planes = [above(v, k * p["theta"]) for k in range(1, p["levels"] + 1)]
            return planes, p["theta"] * sum(planes)
        rest, planes = v, []
        for k in range(p["levels"]):
            th = p["theta"] if k == 0 else (p["theta"] + (1 << (k - 1))) >> k  # theta / 2^k, rounding half up
            planes.append(above(rest, th))
            rest -= th * planes[-1]
        return planes, v - rest

    def decay(v):
        return (v * p["decay_mul"] + (1 << p["decay_shift"] >> 1)) >> p["decay_shift"]

    def reset(v):
        return {"hard": p["v_reset"] if any(planes) else v, "subtract": v - y, "none": v}[p["reset"]]

    planes, y = fire(u)
    u = decay(reset(u)) if p["order"] == "reset_decay" else reset(decay(u))
    s = p["in_shift"]
    h = u + (x << s if s >= 0 else (x + (1 << (-s - 1))) >> -s)
    return fire(h)[0], h


def _inputs(case: dict) -> np.ndarray:
    """Inputs [STEPS, NEURONS] that drive the membrane across every threshold, both signs."""
    reach = 3 * case["levels"] * case["theta"] << max(0, -case["in_shift"])
    return np.random.default_rng(case["theta"]).integers(-reach, reach + 1, size=(STEPS, NEURONS))


def _oracle_run(case: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planes [STEPS, K, NEURONS] and states [STEPS, NEURONS] from V_INIT (decay_mul: one, or one per neuron)."""
    planes, states = np.zeros((STEPS, case["levels"], NEURONS), np.int64), np.zeros(x.shape, np.int64)
    muls = np.broadcast_to(case["decay_mul"], (NEURONS,))
    for n in range(NEURONS):
        u, p = V_INIT, dict(case, decay_mul=int(muls[n]))
        for t in range(STEPS):
            s, u = oracle_step(u, int(x[t, n]), p)
            planes[t, :, n], states[t, n] = s, u
    return planes, states


@pytest.mark.parametrize("case", CASES, ids=_name)
def test_step_computes_the_documented_equations_on_numpy_and_torch(case):
    x = _inputs(case)
    want_planes, want_states = _oracle_run(case, x)
    assert want_planes.any() and not want_planes.all()  # the inputs reach the thresholds, and not always
    for wrap in (np.asarray, torch.from_numpy):
        u = wrap(np.full(NEURONS, V_INIT, np.int64))
        for t in range(STEPS):
            planes, u = step(u, wrap(x[t]), **case)
            assert type(u) is type(wrap(x[t])) and u.dtype in (np.int64, torch.int64)
            assert np.array_equal(np.asarray(u), want_states[t])
            assert np.array_equal(np.stack([np.asarray(s, np.int64) for s in planes]), want_planes[t])


def _run_nrn(case: dict, x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """STEPS `nrn` instructions on the simulator, batch copies of x: planes [STEPS, K, NEURONS] and the
    final state, from sample 0 (and every sample equal to it), and the machine's counters."""
    plane_bytes = (NEURONS + 7) // 8
    per_neuron = np.ndim(case["decay_mul"]) == 1
    params = dict({p: case[p] for p in PARAMS}, decay_mul=0 if per_neuron else case["decay_mul"])
    code = [Instr("nrn", dict(src=Ref("psum", 4 * NEURONS * t), state=Ref("vmem", 0),
                              dst=Ref("ofmap", case["levels"] * plane_bytes * t), n=NEURONS, wait=(), signal=(),
                              per_neuron=int(per_neuron), **params)) for t in range(STEPS)] + [Instr("halt", {})]
    machine = Machine(Program(code, b"", {"dram_bytes": 0}, load_hw("sata")), batch)
    machine.mem["psum"][:, :x.size * 4] = x.astype("<i4").view(np.uint8).reshape(-1)
    machine.mem["vmem"][:, :NEURONS * 4] = np.full(NEURONS, V_INIT, "<i4").view(np.uint8)
    if per_neuron:  # the decays follow the states
        machine.mem["vmem"][:, NEURONS * 4:NEURONS * 8] = np.asarray(case["decay_mul"], "<i4").view(np.uint8)
    machine.run()
    out = machine.mem["ofmap"][:, :STEPS * case["levels"] * plane_bytes].reshape(batch, STEPS, case["levels"], plane_bytes)
    state = machine.mem["vmem"][:, :NEURONS * 4].copy().view("<i4")
    assert (out == out[0]).all() and (state == state[0]).all()
    return np.unpackbits(out[0], axis=-1, count=NEURONS, bitorder="little"), state[0], machine.counters


@pytest.mark.parametrize("case", CASES, ids=_name)
def test_the_simulator_and_the_reference_step_neurons_as_the_isa_does(case):
    x = _inputs(case)
    want_planes, want_states = _oracle_run(case, x)
    planes, state, _ = _run_nrn(case, x, batch=3)
    assert np.array_equal(planes, want_planes) and np.array_equal(state, want_states[-1])
    op = NeuronQ(name="n", inputs=("x",), v_init=V_INIT, **case)
    codes, states = neuron_steps(op, torch.from_numpy(x).to(torch.float64))
    assert torch.equal(states, torch.from_numpy(want_states))
    assert torch.equal(codes, level_code(list(torch.from_numpy(want_planes).unbind(1)), case["mode"]))


def test_decays_per_neuron_step_the_simulator_and_the_reference_as_the_isa_does():
    """decay_mul one per neuron (nrn per_neuron: read after the states; the IR's per-channel multipliers,
    here one channel per neuron): each neuron decays by its own, in the step, the simulator and the
    reference alike, and the counters count each neuron's decay actions exactly."""
    muls = np.array([0, 1, 2, 3, 4, 5, 7, 8] * (NEURONS // 8) + [6] * (NEURONS % 8), dtype=np.int32)
    case = dict(CASES[0], decay_mul=muls, decay_shift=3, reset="subtract")
    x = _inputs(case)
    want_planes, want_states = _oracle_run(case, x)
    for wrap in (np.asarray, torch.from_numpy):
        u = wrap(np.full(NEURONS, V_INIT, np.int64))
        for t in range(STEPS):
            planes, u = step(u, wrap(x[t]), **dict(case, decay_mul=wrap(muls.astype(np.int64))))
            assert np.array_equal(np.asarray(u), want_states[t])
    planes, state, counters = _run_nrn(case, x, batch=3)
    assert np.array_equal(planes, want_planes) and np.array_equal(state, want_states[-1])
    updates = 3 * STEPS  # per neuron: the batch of 3, every step
    shifted = int((muls != 8).sum())  # every multiplier but 2^3 ends in a shift
    multiplied = int(sum(bool(m & (m - 1)) for m in muls))  # those not a power of two multiply
    assert counters["mul16"] == updates * multiplied and counters["shift32"] == updates * shifted
    assert all(isinstance(v, int) for v in counters.values())
    op = NeuronQ(name="n", inputs=("x",), v_init=V_INIT, **case)
    codes, states = neuron_steps(op, torch.from_numpy(x).to(torch.float64)[:, None])  # [T, B = 1, C = NEURONS]
    assert torch.equal(states[:, 0], torch.from_numpy(want_states))
    assert torch.equal(codes[:, 0], level_code(list(torch.from_numpy(want_planes).unbind(1)), case["mode"]))
