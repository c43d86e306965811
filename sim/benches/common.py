"""What the cocotb benches share.

:func:`load_case` reads the case (``MOEVIT_CASE``: JSON whose ``data`` names
an ``.npz``), :func:`start` runs the clock and the reset, :func:`stall` and
:func:`gaps` give the pause patterns, :func:`check` compares outputs with the
golden model in full and :func:`save` writes what the bench measured.
"""

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["CLOCK_NS", "load_case", "start", "gaps", "stall", "check", "save", "cycles_since"]

CLOCK_NS = 10


def load_case():
    """``(case, arrays)``: the JSON case and its ``.npz`` arrays."""
    case = json.loads(os.environ["MOEVIT_CASE"])
    return case, dict(np.load(case["data"]))


async def start(dut):
    """Start the clock and hold the reset for two cycles."""
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles

    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0


def gaps(case, salt):
    """The seeded gap pattern of one input stream."""
    from moevit.sim.streams import pauses

    return pauses(case["gaps"], seed=case["seed"] * 101 + salt)


def stall(case, salt):
    """The back-pressure pattern of one output stream (None: always ready)."""
    from moevit.sim.streams import pauses

    if case["stall"] == "none":
        return None
    return pauses(case["stall"], seed=case["seed"] * 101 + 50 + salt)


def cycles_since(start_ns):
    """Clock cycles from ``start_ns`` to now."""
    from cocotb.utils import get_sim_time

    return int(round((get_sim_time("ns") - start_ns) / CLOCK_NS))


def check(got, expected, what):
    """Every output equal to the golden model's, or an error naming the first differences."""
    got = np.asarray(got)
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: {got.size} outputs, expected {expected.size}")
    bad = np.flatnonzero(got.ravel() != expected.ravel())
    if bad.size:
        first = ", ".join(f"[{i}] {got.ravel()[i]} != {expected.ravel()[i]}" for i in bad[:5])
        raise AssertionError(f"{what}: {bad.size} of {got.size} outputs differ: {first}")


def save(out, cycles, **extra):
    """Write ``out.npy`` and ``summary.json`` into ``$MOEVIT_SIM_OUT``."""
    folder = Path(os.environ["MOEVIT_SIM_OUT"])
    np.save(folder / "out.npy", np.asarray(out))
    (folder / "summary.json").write_text(json.dumps({"cycles": int(cycles), **extra}))
