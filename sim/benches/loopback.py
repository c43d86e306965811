"""A one-stage stream register, to check the stream drivers themselves.

:class:`Loopback` passes beats from ``i`` to ``o`` through one register; the
cocotb test sends a seeded random sequence with gaps and back-pressure and
checks that every beat arrives once, in order.
"""

import json
import os
import random

__all__ = ["Loopback"]


def Loopback(width: int = 16):
    """A ``wiring.Component`` with ``i``/``o`` streams of ``width``-bit payloads."""
    from amaranth.hdl import Module
    from amaranth.lib import stream, wiring
    from amaranth.lib.wiring import In, Out

    class _Loopback(wiring.Component):
        i: In(stream.Signature(width))
        o: Out(stream.Signature(width))

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
            with m.If(self.i.ready):
                m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
            return m

    return _Loopback()


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from moevit.sim.benches.common import start
    from moevit.sim.streams import StreamSink, StreamSource, pauses

    @cocotb.test()
    async def loopback_keeps_order(dut):
        case = json.loads(os.environ["MOEVIT_CASE"])
        await start(dut)
        rng = random.Random(case["seed"])
        data = [rng.randrange(1 << 16) for _ in range(case["beats"])]
        source = StreamSource(dut, "i", dut.clk, pause=pauses(case["gaps"], seed=case["seed"]))
        sink = StreamSink(dut, "o", dut.clk,
                          pause=None if case["stall"] == "none"
                          else pauses(case["stall"], seed=case["seed"] + 1))
        source.send(data)
        got = await sink.receive(len(data))
        await source.wait()
        assert got == data
