"""The sequential divider and bit-serial square root against Python's integers."""

import math
import random

import pytest
from amaranth.sim import Simulator

from moevit.hw.units.seqmath import Divider, ISqrt


def _run(dut, cases, put, take):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    results = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for case in cases:
            put(ctx, case)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            await ctx.tick().until(dut.o.valid)
            results.append(take(ctx))

    sim.add_testbench(bench)
    sim.run()
    return results


def test_divider():
    dut = Divider(dividend_width=41, divisor_width=31)
    rng = random.Random(1)
    cases = [(rng.randrange(1 << 41), rng.randrange(1, 1 << 31)) for _ in range(100)]
    cases += [(1 << 40, 1 << 15), (1 << 40, (1 << 31) - 1), ((1 << 41) - 1, 1), (0, 7), (7, 7)]

    def put(ctx, case):
        ctx.set(dut.i.payload.dividend, case[0])
        ctx.set(dut.i.payload.divisor, case[1])

    got = _run(dut, cases, put, lambda ctx: (ctx.get(dut.o.payload.quotient),
                                             ctx.get(dut.o.payload.remainder)))
    assert got == [divmod(a, b) for a, b in cases]


def test_isqrt():
    dut = ISqrt(width=48)
    rng = random.Random(2)
    cases = [rng.randrange(1 << 48) for _ in range(100)] + [0, 1, 2, 3, 4, (1 << 48) - 1,
                                                            (1 << 47) - 1]
    got = _run(dut, cases, lambda ctx, v: ctx.set(dut.i.payload, v),
               lambda ctx: ctx.get(dut.o.payload))
    assert got == [math.isqrt(v) for v in cases]


def test_bad_widths():
    with pytest.raises(TypeError, match=r"^Dividend width must be a positive integer, not 0$"):
        Divider(dividend_width=0, divisor_width=4)
    with pytest.raises(TypeError, match=r"^Operand width must be a positive integer, not 'x'$"):
        ISqrt(width="x")
