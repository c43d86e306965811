"""The LAYERNORM engine: a :class:`~moevit.hw.program.descriptor.LayerNormDescriptor` on one
:class:`~moevit.hw.units.layernorm.LayerNorm` unit.

Three requests, issued at once: read channel 0 reads the ``8 * dim`` bytes of
gamma and beta at ``param_addr`` (one little-endian word per channel, as
:func:`~moevit.hw.program.layout.pack_ln_params` packs it: the word's low 57 bits
are the unit's ``param`` lanes, ``hw.norm_lanes`` channels a beat), read channel 1 the
``tokens x dim`` rows of x at ``x_addr``, fed to the unit ``hw.norm_lanes`` bytes a beat
(a row's width is a multiple of them, so a beat never straddles two rows); the
unit's beats are packed back into bus beats for the one write request of y at
``y_addr``. The unit takes every
parameter before the first row, so the x channel simply waits meanwhile.

Alignment: ``param_addr``, ``x_addr`` and ``y_addr`` must be multiples of the bus
bytes (the compiler aligns every region); rows are contiguous, so nothing else
needs to be. A descriptor whose address is not is refused with
:attr:`~moevit.hw.program.descriptor.Fault.SHAPE` (no request is issued), as the
unit refuses a descriptor it cannot run.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import Fault, LayerNormDescriptor
from moevit.hw.top.movers import Repack
from moevit.hw.top.ports import engine_members
from moevit.hw.units.layernorm import LayerNorm, param_layout

__all__ = ["LayerNormEngine", "PARAM_BYTES", "off_bus"]

#: Bytes of one channel's (gamma, beta) word in memory.
PARAM_BYTES = 8


def off_bus(nbytes, *addresses):
    """Whether any of ``addresses`` (Amaranth values) is not a multiple of ``nbytes``
    (a power of two): the movers take only bus-aligned requests."""
    low = (nbytes - 1).bit_length()
    return Cat(*(a[:low] != 0 for a in addresses)).any()


class LayerNormEngine(wiring.Component):
    """Runs :class:`~moevit.hw.program.descriptor.LayerNormDescriptor`
    (members: :mod:`moevit.hw.top.ports`); ``rd[0]`` parameters, ``rd[1]`` x.

    Parameters
    ----------
    hw : HwConfig
        The unit's width and lanes (:meth:`LayerNorm.from_config`) and the bus width.
    """

    READS = 2

    def __init__(self, hw: HwConfig):
        self._hw = hw
        super().__init__(engine_members(LayerNormDescriptor.layout(), hw.bus_width, self.READS))

    def elaborate(self, platform):
        m = Module()
        nbytes = self._hw.bus_width // 8
        lanes = self._hw.norm_lanes
        unit = m.submodules.unit = LayerNorm.from_config(self._hw)
        params = m.submodules.params = Repack(nbytes, PARAM_BYTES * lanes)
        rows = m.submodules.rows = Repack(nbytes, lanes)
        out = m.submodules.out = Repack(lanes, nbytes)

        desc = Signal.like(self.desc.payload)
        refused = Signal()  # the engine's own check failed (the unit never saw it)
        sent = Signal(3)    # requests issued: params, x, y
        col, row = Signal.like(desc.dim), Signal.like(desc.tokens)
        idle, running = Signal(), Signal()

        misaligned = off_bus(nbytes, self.desc.payload.x_addr, self.desc.payload.param_addr,
                             self.desc.payload.y_addr)
        # The descriptor goes to the unit as the engine takes it; the unit's verdict
        # is on its `error` the cycle after.
        m.d.comb += [
            unit.desc.payload.eq(self.desc.payload),
            unit.desc.valid.eq(idle & self.desc.valid & ~misaligned),
            self.desc.ready.eq(idle & (misaligned | unit.desc.ready)),
            self.busy.eq(~idle),
            self.error.eq(Mux(refused, Fault.SHAPE, unit.error)),
        ]
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.desc.valid & self.desc.ready):
                    m.d.sync += [desc.eq(self.desc.payload), refused.eq(misaligned)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(refused | (unit.error != Fault.NONE)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [sent.eq(0), col.eq(0), row.eq(0)]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.wr.data.valid & self.wr.data.ready & out.o.payload.last):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += [idle.eq(fsm.ongoing("IDLE")), running.eq(fsm.ongoing("RUN"))]

        # Requests: all three at once.
        size = desc.tokens * desc.dim
        requests = [(self.rd[0].req, desc.param_addr, PARAM_BYTES * desc.dim),
                    (self.rd[1].req, desc.x_addr, size), (self.wr.req, desc.y_addr, size)]
        for k, (req, addr, length) in enumerate(requests):
            m.d.comb += [req.valid.eq(running & ~sent[k]),
                         req.payload.addr.eq(addr), req.payload.length.eq(length)]
            with m.If(req.valid & req.ready):
                m.d.sync += sent[k].eq(1)

        # Reads: bus beats to the lanes' parameter words and to lanes of x.
        wiring.connect(m, wiring.flipped(self.rd[0].data), params.i)
        wiring.connect(m, wiring.flipped(self.rd[1].data), rows.i)
        word = 8 * PARAM_BYTES
        m.d.comb += [
            *(unit.param.payload[k].eq(params.o.payload.data[word * k:][:param_layout().size])
              for k in range(lanes)),
            unit.param.valid.eq(params.o.valid), params.o.ready.eq(unit.param.ready),
            unit.i.payload.eq(rows.o.payload.data[:8 * lanes]),
            unit.i.valid.eq(rows.o.valid), rows.o.ready.eq(unit.i.ready),
        ]

        # Write: the unit's beats into bus beats, `last` on y's final beat.
        final = Signal()
        row_beats = desc.dim >> (lanes.bit_length() - 1)
        m.d.comb += final.eq((col + 1 == row_beats) & (row + 1 == desc.tokens))
        m.d.comb += [
            out.i.payload.data.eq(unit.o.payload), out.i.payload.bytes.eq(lanes),
            out.i.payload.last.eq(final),
            out.i.valid.eq(unit.o.valid), unit.o.ready.eq(out.i.ready),
            self.wr.data.payload.eq(out.o.payload.data),
            self.wr.data.valid.eq(out.o.valid), out.o.ready.eq(self.wr.data.ready),
        ]
        with m.If(out.i.valid & out.i.ready):
            m.d.sync += col.eq(Mux(col + 1 == row_beats, 0, col + 1))
            with m.If(col + 1 == row_beats):
                m.d.sync += row.eq(row + 1)
        return m
