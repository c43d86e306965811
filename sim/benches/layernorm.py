"""cocotb bench of the LayerNorm unit (``moevit.hw.units.layernorm.LayerNorm``):
descriptor, gamma/beta, then the rows; every output against ``intops.layernorm``."""

try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.utils import get_sim_time

    from moevit.sim.benches.common import check, cycles_since, gaps, load_case, save, stall, start
    from moevit.sim.streams import StreamSink, StreamSource

    @cocotb.test()
    async def layernorm_matches_golden(dut):
        case, arrays = load_case()
        await start(dut)
        desc = sum(int(w) << (32 * i) for i, w in enumerate(arrays["desc"]))
        control = StreamSource(dut, "desc", dut.clk)
        params = StreamSource(dut, "param", dut.clk, pause=gaps(case, 1))
        source = StreamSource(dut, "i", dut.clk, pause=gaps(case, 0))
        sink = StreamSink(dut, "o", dut.clk, pause=stall(case, 0))
        t0 = get_sim_time("ns")
        control.send([desc])
        params.send([int(p) for p in arrays["params"]])
        source.send([int(x) & 0xFF for x in arrays["x"]])
        beats = await sink.receive(len(arrays["x"]))
        cycles = cycles_since(t0)
        values = [b - 256 if b >= 128 else b for b in beats]
        save(values, cycles)
        check(values, arrays["expected"], "LayerNorm outputs")
