"""The COPY engine: ``length`` bytes from ``src_addr`` to ``dst_addr`` (the class token
into row 0 of the embedding), one read and one write request, the bytes passed
through beat for beat."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring

from moevit.hw.config import HwConfig
from moevit.hw.program.isa import CopyDescriptor
from moevit.hw.top.ports import engine_members

__all__ = ["CopyEngine"]


class CopyEngine(wiring.Component):
    """Runs :class:`~moevit.hw.program.isa.CopyDescriptor` (members: :mod:`moevit.hw.top.ports`)."""

    READS = 1

    def __init__(self, hw: HwConfig):
        self._hw = hw
        super().__init__(engine_members(CopyDescriptor.layout(), hw.bus_width, self.READS))

    def elaborate(self, platform):
        m = Module()
        rd, wr = self.rd[0], self.wr
        desc = Signal.like(self.desc.payload)
        read_sent, write_sent = Signal(), Signal()

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.desc.ready.eq(1)
                with m.If(self.desc.valid):
                    m.d.sync += [desc.eq(self.desc.payload), read_sent.eq(0), write_sent.eq(0)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1),
                             rd.req.valid.eq(~read_sent), wr.req.valid.eq(~write_sent),
                             rd.req.payload.addr.eq(desc.src_addr),
                             rd.req.payload.length.eq(desc.length),
                             wr.req.payload.addr.eq(desc.dst_addr),
                             wr.req.payload.length.eq(desc.length)]
                with m.If(rd.req.ready):
                    m.d.sync += read_sent.eq(1)
                with m.If(wr.req.ready):
                    m.d.sync += write_sent.eq(1)
                # The bytes pass through; the write mover takes them in request order.
                m.d.comb += [wr.data.payload.eq(rd.data.payload.data),
                             wr.data.valid.eq(rd.data.valid), rd.data.ready.eq(wr.data.ready)]
                with m.If(rd.data.valid & rd.data.ready & rd.data.payload.last):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
