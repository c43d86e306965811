"""The descriptor is not trusted: faulty descriptors in Amaranth's simulator.

Between good descriptors, the attention kernel and the LayerNorm unit are
handed descriptors with a wrong opcode, a shape out of range, a derived field
that disagrees, a constant out of range. Each is taken and skipped: the
``error`` port holds its :class:`~moevit.hw.program.descriptor.Fault` until the next
descriptor, no beat is taken or produced for it, and the good operations
around it still equal the golden model in full.
"""

import numpy as np

from moevit.hw.units.attention import Attention
from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import AttentionDescriptor, Fault, LayerNormDescriptor
from moevit.hw.units.layernorm import LayerNorm
from moevit.model.integer import intops
from moevit.sim.amaranth_tb import payload_bits, stream_source
from moevit.model.integer.golden import AttentionConsts, attention_head
from moevit.sim.units import beats, layernorm_op


def simulate(dut, descs, sources, sinks):
    """Hand ``descs`` (images) to ``dut``, feed ``sources`` ({stream: payloads}) with no
    gaps, drain ``sinks`` ({stream: beats expected}); returns the error after each
    descriptor and every payload each sink got until QUIET cycles after the last."""
    from amaranth.sim import Simulator

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    errors, got = [], {name: [] for name in sinks}

    def sink(name):
        stream = dut_stream(dut, name)

        async def run(ctx):
            ctx.set(stream.ready, 1)
            async for _, _, valid, payload in ctx.tick().sample(stream.valid,
                                                                payload_bits(stream.payload)):
                if valid:
                    got[name].append(int(payload) & ((1 << len(payload_bits(stream.payload))) - 1))
        return run

    for name, payloads in sources.items():
        sim.add_testbench(stream_source(dut_stream(dut, name), payloads), background=True)
    for name in sinks:
        sim.add_process(sink(name))

    async def control(ctx):
        for desc in descs:
            ctx.set(dut.desc.payload.as_value(), desc)
            ctx.set(dut.desc.valid, 1)
            await ctx.tick().until(dut.desc.ready)
            ctx.set(dut.desc.valid, 0)
            errors.append(ctx.get(dut.error))
        while any(len(got[name]) < count for name, count in sinks.items()):
            await ctx.tick()
        await ctx.tick().repeat(QUIET)
        errors.append(ctx.get(dut.error))

    sim.add_testbench(control)
    sim.run()
    return errors, got


QUIET = 100



def dut_stream(dut, name):
    base, _, lane = name.partition("__")
    stream = getattr(dut, base)
    return stream[int(lane)] if lane else stream


def test_attention_skips_faulty_descriptors():
    lanes, parallel = 4, 2
    hw = HwConfig(name="faults", score_lanes=lanes, kv_depth=8, max_head_dim=8,
                  heads_parallel=parallel)
    rng = np.random.default_rng(0)
    consts = AttentionConsts(*intops.softmax_constants(1e-3), 20000, 22)
    good = [AttentionDescriptor(hw, tokens=t, heads=2, head_dim=d, sm_mult=consts[0],
                                sm_shift=consts[1], out_mult=consts[2], out_shift=consts[3])
            for t, d in ((5, 8), (8, 4))]
    tensors = [[rng.integers(-128, 128, (2, g.tokens, g.head_dim)) for _ in "qkv"] for g in good]
    a, b = good
    faulty = [
        (a.to_int_with(opcode=LayerNormDescriptor.OPCODE), Fault.OPCODE),
        (a.to_int_with(tokens=0), Fault.SHAPE),
        (a.to_int_with(tokens=hw.kv_depth + 1), Fault.SHAPE),
        (a.to_int_with(rows=0), Fault.SHAPE),
        (a.to_int_with(rows=a.tokens + 1), Fault.SHAPE),  # more query rows than keys
        (a.to_int_with(chunks=3), Fault.SHAPE),  # more chunks than the buffers hold
        (a.to_int_with(chunks=1), Fault.DERIVED),  # 1 chunk of 4 lanes is not head dim 8
        (a.to_int_with(rounds=2), Fault.DERIVED),  # 2 rounds of 2 lanes are not 2 heads
        (a.to_int_with(heads=0, rounds=0), Fault.SHAPE),
        (a.to_int_with(out_shift=0), Fault.CONSTANT),
        (a.to_int_with(sm_shift=48), Fault.CONSTANT),
        (a.to_int_with(sm_mult=0), Fault.CONSTANT),
    ]
    descs = [a.to_int(), *(d for d, _ in faulty[:7]), b.to_int(), *(d for d, _ in faulty[7:])]
    sources, expected = {}, {}
    for p in range(parallel):
        for n, name in enumerate("qkv"):
            sources[f"{name}__{p}"] = [x for (g, t) in zip(good, tensors)
                                       for x in beats(t[n][p], lanes)]
        expected[f"o__{p}"] = [x for (g, (q, k, v)) in zip(good, tensors)
                               for x in beats(attention_head(q[p], k[p], v[p], consts).out,
                                              lanes)]
    errors, got = simulate(Attention(hw), descs, sources,
                           {name: len(beats) for name, beats in expected.items()})
    want = [Fault.NONE, *(f for _, f in faulty[:7]), Fault.NONE, *(f for _, f in faulty[7:]),
            faulty[-1][1]]
    assert errors == want
    assert got == expected  # nothing taken or produced for the faulty ones


def test_layernorm_skips_faulty_descriptors():
    hw = HwConfig(name="faults", max_in=16)
    rng = np.random.default_rng(1)
    good = [LayerNormDescriptor(hw, tokens=t, dim=d, eps=100, shift=18) for t, d in ((3, 16), (2, 5))]
    ops = [layernorm_op(g, rng.integers(-128, 128, (g.tokens, g.dim)),
                        rng.integers(-2**15, 2**15, g.dim), rng.integers(-2**20, 2**20, g.dim))
           for g in good]
    a, b = good
    faulty = [
        (a.to_int_with(opcode=AttentionDescriptor.OPCODE), Fault.OPCODE),
        (a.to_int_with(tokens=0), Fault.SHAPE),
        (a.to_int_with(dim=0), Fault.SHAPE),
        (a.to_int_with(dim=17), Fault.SHAPE),
        (a.to_int_with(shift=0), Fault.CONSTANT),
        (a.to_int_with(eps=2**34), Fault.CONSTANT),
    ]
    descs = [a.to_int(), *(d for d, _ in faulty[:3]), b.to_int(), *(d for d, _ in faulty[3:])]
    sources = {name: [x for op in ops for x in op[name]] for name in ("param", "i")}
    expected = [x for op in ops for x in op["o.expected"]]
    errors, got = simulate(LayerNorm(max_dim=hw.max_in), descs, sources, {"o": len(expected)})
    assert errors == [Fault.NONE, *(f for _, f in faulty[:3]), Fault.NONE,
                      *(f for _, f in faulty[3:]), faulty[-1][1]]
    assert got["o"] == expected
