"""The sequential divider and bit-serial square root, and their pipelined forms, against
Python's integers."""

import math
import random

import pytest
from amaranth.sim import Simulator

from moevit.hw.units.seqmath import Divider, ISqrt, PipelinedDivider, PipelinedISqrt


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


def _run_pipelined(dut, cases, put, take, rng):
    """Operands on random cycles, some back to back: every result ``latency`` cycles after
    its operand, and nothing in between."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sent, results = [], []

    async def bench(ctx):
        cycle, pending = 0, list(cases)
        while pending or len(results) < len(cases):
            go = bool(pending) and rng.random() < 0.6
            if go:
                put(ctx, pending.pop(0))
                sent.append(cycle)
            ctx.set(dut.i.valid, go)
            if ctx.get(dut.o.valid):
                results.append((cycle, take(ctx)))
            await ctx.tick()
            cycle += 1

    sim.add_testbench(bench)
    sim.run()
    assert [c for c, _ in results] == [c + dut.latency for c in sent]
    return [r for _, r in results]


def test_pipelined_divider():
    dut = PipelinedDivider(dividend_width=37, divisor_width=24)
    rng = random.Random(3)
    cases = [(rng.randrange(1 << 37), rng.randrange(1, 1 << 24)) for _ in range(60)]
    cases += [(1 << 36, 1), (1 << 36, (1 << 24) - 1), ((1 << 37) - 1, 1), (0, 7), (7, 7)]

    def put(ctx, case):
        ctx.set(dut.i.payload.dividend, case[0])
        ctx.set(dut.i.payload.divisor, case[1])

    got = _run_pipelined(dut, cases, put, lambda ctx: (ctx.get(dut.o.payload.quotient),
                                                       ctx.get(dut.o.payload.remainder)), rng)
    assert got == [divmod(a, b) for a, b in cases]
    assert dut.latency == 37


def test_pipelined_isqrt():
    dut = PipelinedISqrt(width=48)
    rng = random.Random(4)
    cases = [rng.randrange(1 << 48) for _ in range(60)] + [0, 1, 2, 3, 4, (1 << 48) - 1,
                                                           (1 << 47) - 1]
    got = _run_pipelined(dut, cases, lambda ctx, v: ctx.set(dut.i.payload, v),
                         lambda ctx: ctx.get(dut.o.payload), rng)
    assert got == [math.isqrt(v) for v in cases]
    assert dut.latency == 24


def test_bad_widths():
    with pytest.raises(TypeError, match=r"^Dividend width must be a positive integer, not 0$"):
        Divider(dividend_width=0, divisor_width=4)
    with pytest.raises(TypeError, match=r"^Operand width must be a positive integer, not 'x'$"):
        ISqrt(width="x")
    with pytest.raises(TypeError, match=r"^Dividend width must be a positive integer, not -1$"):
        PipelinedDivider(dividend_width=-1, divisor_width=4)
    with pytest.raises(TypeError, match=r"^Operand width must be a positive integer, not 0$"):
        PipelinedISqrt(width=0)
