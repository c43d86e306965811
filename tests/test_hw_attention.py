"""The attention kernel in Amaranth's simulator: back-to-back descriptors.

Three descriptors of different sequence lengths, head counts and head
widths (one and two chunks per score) run one after the other on one
instance with two head lanes, seeded gaps and back-pressure; every context
beat equals ``golden.attention_head``'s. (The cocotb suite of random
sequences is tests/test_sim_random_units.py.)
"""

import random

import numpy as np

from moevit.hw.units.attention import Attention
from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import AttentionDescriptor
from moevit.model.integer import intops
from moevit.model.integer.golden import AttentionConsts, attention_head


def _beats(matrix, lanes):
    chunks = matrix.shape[1] // lanes
    return [[int(v) for v in matrix[t, c * lanes:(c + 1) * lanes]]
            for t in range(matrix.shape[0]) for c in range(chunks)]


def test_back_to_back_descriptors():
    from amaranth.sim import Simulator

    lanes, parallel = 4, 2
    hw = HwConfig(name="attn-pysim", score_lanes=lanes, kv_depth=16, max_head_dim=8,
                  heads_parallel=parallel)
    dut = Attention(hw)
    rng = np.random.default_rng(0)
    jobs = []
    for tokens, heads, head_dim, scale in ((11, 4, 8, 5e-4), (7, 2, 4, 1e-2), (16, 2, 8, 1e-3)):
        q, k, v = (rng.integers(-128, 128, (heads, tokens, head_dim)) for _ in range(3))
        consts = AttentionConsts(*intops.softmax_constants(scale), 20000, 22)
        desc = AttentionDescriptor(hw, tokens=tokens, heads=heads, head_dim=head_dim,
                                   sm_mult=consts[0], sm_shift=consts[1], out_mult=consts[2],
                                   out_shift=consts[3])
        jobs.append((q, k, v, consts, desc))
    expected = {p: [] for p in range(parallel)}
    for q, k, v, consts, desc in jobs:
        for p in range(parallel):
            for h in range(p, desc.heads, parallel):
                expected[p] += _beats(attention_head(q[h], k[h], v[h], consts).out, lanes)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    pause = random.Random(2)
    got = {p: [] for p in range(parallel)}

    def source(stream, beats):
        async def run(ctx):
            for beat in beats:
                while pause.random() < 0.2:
                    await ctx.tick()
                for lane, value in enumerate(beat):
                    ctx.set(stream.payload[lane], value)
                ctx.set(stream.valid, 1)
                await ctx.tick().until(stream.ready)
                ctx.set(stream.valid, 0)
        return run

    def monitor(p):
        async def run(ctx):
            async for _, _, valid, ready, payload in ctx.tick().sample(
                    dut.o[p].valid, dut.o[p].ready, dut.o[p].payload):
                if valid and ready:
                    got[p].append([int(v) for v in payload])
        return run

    def sink(p):
        async def run(ctx):
            while True:
                ctx.set(dut.o[p].ready, pause.random() < 0.8)
                await ctx.tick()
        return run

    for p in range(parallel):
        for name in "kvq":
            beats = [b for q, k, v, consts, desc in jobs for h in range(p, desc.heads, parallel)
                     for b in _beats({"q": q, "k": k, "v": v}[name][h], lanes)]
            sim.add_testbench(source(getattr(dut, name)[p], beats), background=True)
        sim.add_process(monitor(p))
        sim.add_testbench(sink(p), background=True)

    async def control(ctx):
        for *_, desc in jobs:
            ctx.set(dut.desc.payload.as_value(), desc.to_int())
            ctx.set(dut.desc.valid, 1)
            await ctx.tick().until(dut.desc.ready)
            ctx.set(dut.desc.valid, 0)
        for _ in range(30000):
            if all(len(got[p]) >= len(expected[p]) for p in range(parallel)):
                break
            await ctx.tick()

    sim.add_testbench(control)
    sim.run()
    for p in range(parallel):
        assert got[p] == expected[p]


def test_row_lanes_are_a_power_of_two_and_cut_the_cycles():
    """HeadLane takes a power of two of row lanes (a lane's share of the rows is a shift);
    the cycle model (exact against simulation: tests/test_sim_random_units.py) gives four
    row lanes at most a third of one lane's cycles on tiny's heads."""
    import pytest

    from moevit.hw.units.attention import HeadLane, head_cycles

    for bad in (0, 3, 6):
        with pytest.raises(ValueError, match=rf"^Row lanes must be a power of two, not {bad}$"):
            HeadLane(row_lanes=bad, lanes=4, max_tokens=16, max_head_dim=8)
    one, four = head_cycles(65, 2), head_cycles(65, 2, 4)
    assert one == head_cycles(65, 2, 1) and 3 * four < one
    # Fewer rows than lanes: the idle lanes only load K and V.
    assert head_cycles(2, 2, 8) == head_cycles(2, 2, 2)
