"""cocotb bench of the attention kernel (``moevit.hw.units.attention.Attention``).

Sends the descriptor, then each head lane's K, V and Q beats (seeded gaps),
receives each lane's context beats (seeded back-pressure), compares every
beat with the golden model's ``attention_head`` and records the cycles from
the descriptor to the last context beat.
"""

try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.utils import get_sim_time

    from moevit.sim.benches.common import check, cycles_since, gaps, load_case, save, stall, start
    from moevit.sim.streams import StreamSink, StreamSource

    @cocotb.test()
    async def attention_matches_golden(dut):
        case, arrays = load_case()
        await start(dut)
        heads, lanes = case["heads"], case["heads_parallel"]
        desc = sum(int(w) << (32 * i) for i, w in enumerate(arrays["desc"]))
        sources, sinks = [], []
        for p in range(lanes):
            mine = range(p, heads, lanes)
            for n, name in enumerate("kvq"):
                source = StreamSource(dut, f"{name}__{p}", dut.clk, pause=gaps(case, 3 * p + n))
                source.send([int(b) for h in mine for b in arrays[name][h]])
                sources.append(source)
            sinks.append(StreamSink(dut, f"o__{p}", dut.clk, pause=stall(case, p)))
        control = StreamSource(dut, "desc", dut.clk)
        t0 = get_sim_time("ns")
        control.send([desc])
        per_head = arrays["q"].shape[1]  # beats of one head
        got = [None] * heads
        for p, sink in enumerate(sinks):
            beats = await sink.receive((heads // lanes) * per_head)
            for n, h in enumerate(range(p, heads, lanes)):
                got[h] = beats[n * per_head:(n + 1) * per_head]
        cycles = cycles_since(t0)
        expected = [[int(b) for b in row] for row in arrays["expected"]]
        save([[str(b) for b in row] for row in got], cycles,
             ideal_cycles=case["ideal_cycles"])
        check(got, expected, "attention context beats")
