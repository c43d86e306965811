"""``busy`` is a true idle indication, in Amaranth's simulator.

Regression (found by the randomized suites' watch on ``busy``): the attention
kernel and LayerNorm dropped ``busy`` once their last output was on ``o``,
before back-pressure let it leave (and the attention kernel then took the next
descriptor). Here the sink takes every beat but the last, then holds the last
one back for ``HOLD`` cycles: ``busy`` must stay high until it has left, and
fall after.
"""

import numpy as np
import pytest

from moevit.hw.units.attention import Attention
from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import AttentionDescriptor, LayerNormDescriptor
from moevit.hw.units.layernorm import LayerNorm
from moevit.hw.units.softmax import Softmax
from moevit.model.integer import intops
from moevit.sim.amaranth_tb import stream_source
from moevit.sim.units import attention_op, layernorm_op, softmax_op

HOLD = 12



def hold_last_beat(dut, sources, sink, beats):
    """Feed ``sources`` ({port: payloads}), take ``beats - 1`` beats from ``sink``, hold
    the last for HOLD cycles; returns ``busy`` over the hold and just after the release."""
    from amaranth.sim import Simulator

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = {}

    for stream, payloads in sources:
        sim.add_testbench(stream_source(stream, payloads), background=True)

    async def drain(ctx):
        taken = 0
        ctx.set(sink.ready, 1)
        while taken < beats - 1:
            _, _, valid = await ctx.tick().sample(sink.valid)  # valid at the edge: taken
            taken += valid
        ctx.set(sink.ready, 0)
        await ctx.tick().until(sink.valid)
        seen["hold"] = []
        for _ in range(HOLD):
            seen["hold"].append(ctx.get(dut.busy))
            await ctx.tick()
        ctx.set(sink.ready, 1)
        await ctx.tick()
        ctx.set(sink.ready, 0)
        await ctx.tick().repeat(3)
        seen["after"] = ctx.get(dut.busy)

    sim.add_testbench(drain)
    sim.run()
    return seen


def test_attention_busy_until_the_last_beat_leaves():
    hw = HwConfig(name="busy", score_lanes=4, kv_depth=6, max_head_dim=4)
    desc = AttentionDescriptor(hw, tokens=5, heads=1, head_dim=4, sm_mult=3000, sm_shift=20,
                               out_mult=20000, out_shift=22)
    rng = np.random.default_rng(0)
    op = attention_op(desc, *(rng.integers(-128, 128, (1, 5, 4)) for _ in range(3)))
    dut = Attention(hw)
    sources = [(dut.desc, op["desc"])] + [(getattr(dut, n)[0], op[f"{n}__0"]) for n in "kvq"]
    seen = hold_last_beat(dut, sources, dut.o[0], len(op["o__0.expected"]))
    assert seen == {"hold": [1] * HOLD, "after": 0}


def test_layernorm_busy_until_the_last_value_leaves():
    hw = HwConfig(name="busy", max_in=8)
    desc = LayerNormDescriptor(hw, tokens=2, dim=8, eps=5, shift=16)
    rng = np.random.default_rng(1)
    op = layernorm_op(desc, rng.integers(-128, 128, (2, 8)), rng.integers(-2**15, 2**15, 8),
                      rng.integers(-2**20, 2**20, 8))
    dut = LayerNorm(max_dim=8)
    sources = [(dut.desc, op["desc"]), (dut.param, op["param"]), (dut.i, op["i"])]
    seen = hold_last_beat(dut, sources, dut.o, len(op["o.expected"]))
    assert seen == {"hold": [1] * HOLD, "after": 0}


@pytest.mark.parametrize("length", [1, 6])
def test_softmax_busy_until_the_last_probability_leaves(length):
    dut = Softmax(max_row=8)
    op = softmax_op(np.arange(length) * 1000, *intops.softmax_constants(1e-3))
    seen = hold_last_beat(dut, [(dut.i, op["i"])], dut.o, length)
    assert seen == {"hold": [1] * HOLD, "after": 0}


def test_softmax_busy_with_half_a_row_in():
    """Scores of a row taken, its ``last`` not yet: the unit holds them, so it is busy."""
    from amaranth.sim import Simulator

    dut = Softmax(max_row=8)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = []

    async def run(ctx):
        for score in (5, -3, 7):
            ctx.set(dut.i.payload.score, score)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        for _ in range(4):
            seen.append(ctx.get(dut.busy))
            await ctx.tick()

    sim.add_testbench(run)
    sim.run()
    assert seen == [1] * 4
