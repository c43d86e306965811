"""cocotb bench of the GELU unit (``moevit.hw.units.gelu.Gelu``): every beat against
``requantize(intops.gelu(x, b, c), mult, shift)``."""

try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.utils import get_sim_time

    from moevit.sim.benches.common import check, cycles_since, gaps, load_case, save, stall, start
    from moevit.sim.streams import StreamSink, StreamSource

    @cocotb.test()
    async def gelu_matches_golden(dut):
        case, arrays = load_case()
        await start(dut)
        for name in ("b", "c", "mult", "shift"):
            getattr(dut, name).value = case[name]
        source = StreamSource(dut, "i", dut.clk, pause=gaps(case, 0))
        sink = StreamSink(dut, "o", dut.clk, pause=stall(case, 0))
        t0 = get_sim_time("ns")
        source.send([int(b) for b in arrays["x"]])
        beats = await sink.receive(len(arrays["x"]))
        cycles = cycles_since(t0)
        save([str(b) for b in beats], cycles)
        check(beats, [int(b) for b in arrays["expected"]], "GELU beats")
