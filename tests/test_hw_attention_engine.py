"""The attention engine's stream pieces on Amaranth's simulator, against plain Python models,
under random valid/ready stalls: SliceRequests (the address walk), Deal and Gather (beats to
the head lanes and back)."""

import os
import random

import numpy as np
from amaranth.sim import Simulator

from moevit.hw.top.attention_engine import Deal, Gather, SliceRequests
from moevit.sim.amaranth_tb import payload_bits


def _rng():
    seed = int(os.environ.get("MOEVIT_SEED", random.randrange(1 << 16)))
    print(f"seed {seed} (replay with MOEVIT_SEED={seed})")
    return np.random.default_rng(seed)


def _run(dut, *testbenches):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in testbenches[:-1]:
        sim.add_testbench(bench, background=True)
    sim.add_testbench(testbenches[-1])
    sim.run()


def _source(rng, stream, payloads):
    """``payloads`` on ``stream``, with random gaps; each held until taken."""
    async def bench(ctx):
        for payload in payloads:
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(payload_bits(stream.payload), payload)
            ctx.set(stream.valid, 1)
            await ctx.tick().until(stream.ready)
            ctx.set(stream.valid, 0)
    return bench


def _sink(rng, stream, got, fields=None):
    """Takes beats from ``stream`` with random back-pressure into ``got``."""
    values = [getattr(stream.payload, f) for f in fields] if fields \
        else [payload_bits(stream.payload)]

    async def bench(ctx):
        while True:
            ready = rng.random() < 0.7
            ctx.set(stream.ready, ready)
            _, _, valid, *sampled = await ctx.tick().sample(stream.valid, *values)
            if ready and valid:
                got.append(tuple(sampled) if fields else sampled[0])
    return bench


def _walk(rng, jobs):
    """The requests :class:`SliceRequests` issues for ``jobs``, one after another, under
    random back-pressure; each job's expected walk in plain Python integers."""
    dut = SliceRequests()
    want = [(j["base"] + r * j["step"] + t * j["pitch"], j["length"])
            for j in jobs for r in range(j["rounds"]) for t in range(j["tokens"])]
    got = []

    async def control(ctx):
        for job in jobs:
            for name, value in job.items():
                ctx.set(getattr(dut, name), value)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            assert ctx.get(dut.busy)
            await ctx.tick().until(~dut.busy)
        for _ in range(3):
            await ctx.tick()

    _run(dut, _sink(rng, dut.req, got, ("addr", "length")), control)
    return got, want


def test_slice_requests_walk_rounds_then_tokens():
    rng = _rng()
    jobs = [dict(base=16 * int(rng.integers(0, 1000)), step=16 * int(rng.integers(1, 9)),
                 pitch=16 * int(rng.integers(1, 40)), length=int(rng.integers(1, 200)),
                 rounds=int(rng.integers(1, 4)), tokens=int(rng.integers(1, 7)))
            for _ in range(3)]
    got, want = _walk(rng, jobs)
    assert got == want


def test_slice_requests_walk_past_4_gib_unwrapped():
    """A tensor that starts below 2**32 and ends above it: the walk's addresses go on past
    2**32 (the relocation refuses them), never wrapped onto address 0."""
    rng = _rng()
    jobs = [dict(base=(1 << 32) - 16 * int(rng.integers(1, 8)), step=16 * int(rng.integers(1, 9)),
                 pitch=16 * int(rng.integers(1, 40)), length=int(rng.integers(1, 200)),
                 rounds=int(rng.integers(2, 4)), tokens=int(rng.integers(2, 7)))
            for _ in range(2)]
    got, want = _walk(rng, jobs)
    assert max(addr for addr, _ in want) >= 1 << 32
    assert got == want


def test_deal_then_gather_keep_every_beat_in_its_lane_and_order():
    rng = _rng()
    lanes, count, chunks = 2, 3, int(rng.integers(1, 5))
    turns = int(rng.integers(1, 6))  # one turn: one token's slice for every lane
    beats = [int(b) for b in rng.integers(0, 1 << 16, turns * count * chunks)]
    deal = Deal(lanes=lanes, count=count, max_chunks=4)
    dealt = [[] for _ in range(count)]

    async def dealing(ctx):
        ctx.set(deal.chunks, chunks)
        await _source(rng, deal.i, [b | 1 << 16 for b in beats])(ctx)  # `last` set, ignored
        for _ in range(4):
            await ctx.tick()

    _run(deal, *[_sink(rng, deal.o[p], dealt[p]) for p in range(count)], dealing)
    for p in range(count):
        assert dealt[p] == [b for j, b in enumerate(beats) if j // chunks % count == p]

    gather = Gather(lanes=lanes, count=count, max_chunks=4)
    gathered = []

    async def gathering(ctx):
        ctx.set(gather.chunks, chunks)
        while len(gathered) < len(beats):
            await ctx.tick()

    _run(gather, *[_source(rng, gather.i[p], dealt[p]) for p in range(count)],
         _sink(rng, gather.o, gathered, ("data", "last", "bytes")), gathering)
    per_turn = count * chunks
    assert gathered == [(b, int(j % per_turn == per_turn - 1), lanes)
                        for j, b in enumerate(beats)]
