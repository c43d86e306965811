"""What the cocotb benches share.

:func:`start` runs the clock and the reset; :func:`check` compares outputs
with the golden model in full.
"""

import numpy as np

__all__ = ["CLOCK_NS", "start", "check"]

CLOCK_NS = 10


async def start(dut):
    """Start the clock and hold the reset for two cycles."""
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles

    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0


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
