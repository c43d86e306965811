"""cocotb bench of the softmax unit (``moevit.hw.units.softmax.Softmax``).

Sends score rows (``last`` on each row's final score, seeded gaps), receives
the probabilities (seeded back-pressure) and compares them, and the ``last``
flags, with ``intops.softmax``.
"""

try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    import numpy as np
    from cocotb.utils import get_sim_time

    from moevit.sim.benches.common import check, cycles_since, gaps, load_case, save, stall, start
    from moevit.sim.streams import StreamSink, StreamSource

    @cocotb.test()
    async def softmax_matches_golden(dut):
        case, arrays = load_case()
        await start(dut)
        dut.multiplier.value = case["multiplier"]
        dut.shift.value = case["shift"]
        scores, lengths = arrays["scores"], arrays["lengths"]
        ends = set(np.cumsum(lengths) - 1)
        payloads = [(int(s) & 0xFFFFFFFF) | (int(k in ends) << 32) for k, s in enumerate(scores)]
        source = StreamSource(dut, "i", dut.clk, pause=gaps(case, 0))
        sink = StreamSink(dut, "o", dut.clk, pause=stall(case, 0))
        t0 = get_sim_time("ns")
        source.send(payloads)
        beats = await sink.receive(len(payloads))
        cycles = cycles_since(t0)
        probs = [b & 0xFFFF for b in beats]
        lasts = [k for k, b in enumerate(beats) if b >> 16 & 1]
        save(probs, cycles)
        check(probs, arrays["expected"], "softmax probabilities")
        check(lasts, sorted(ends), "softmax row ends")
