"""The ATTENTION engine: an :class:`~moevit.hw.program.descriptor.AttentionDescriptor` on one
:class:`~moevit.hw.units.attention.Attention` kernel.

In memory, q, k and v of head ``h`` and token ``t`` are the ``head_dim`` bytes at
``{q,k,v}_addr + t * row_pitch + h * head_dim`` (the compiler points them into one
QKV tensor, ``row_pitch = 3 * dim``), ``t`` below ``rows`` for q and ``tokens`` for k
and v; the context is row-major ``rows x heads * head_dim`` at ``out_addr``.

The kernel's ``P = hw.heads_parallel`` head lanes are fed *together*: in round
``r`` lane ``p`` computes head ``r * P + p``, so the lanes' heads are adjacent
columns and one request per token and round moves all of them: the ``P *
head_dim`` bytes at ``base + t * row_pitch + r * P * head_dim``
(:class:`SliceRequests`). Read channel 0 carries q, 1 k, 2 v, each request in
order; its bytes are re-packed into beats of ``score_lanes`` bytes and dealt to
the lanes, ``head_dim / score_lanes`` beats each (:class:`Deal`), as the kernel
takes them (K and V of a round alongside, then Q row by row). The lanes'
context beats are gathered back in the same order (:class:`Gather`) and packed
into bus beats for one write request per token and round. The lanes share each
channel's one beat a cycle: with ``P > 1`` a round's K and V take ``P`` times
the cycles one lane alone would.

Alignment rule: ``heads_parallel * head_dim`` and ``row_pitch`` are multiples of
the bus bytes, and so are ``q_addr``, ``k_addr``, ``v_addr`` and ``out_addr``
(the compiler aligns every region; ``tiny``'s 16-wide heads on a 128-bit bus
are). Every request is then whole bus words. A descriptor that breaks the
rule, or whose ``row_pitch`` is shorter than a row of ``heads * head_dim``, is
refused with :attr:`~moevit.hw.program.descriptor.Fault.SHAPE` (no request is
issued), as the kernel refuses a descriptor it cannot run.
"""

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import AttentionDescriptor, Fault
from moevit.hw.top import movers
from moevit.hw.top.layernorm_engine import off_bus
from moevit.hw.top.movers import Repack, request_layout
from moevit.hw.top.ports import engine_members
from moevit.hw.units import attention

__all__ = ["AttentionEngine", "SliceRequests", "Deal", "Gather"]

_ADDR_WIDTH = 32  # descriptor addresses


class SliceRequests(wiring.Component):
    """The requests of one tensor's row slices, round by round: for each round ``r``
    and token ``t``, ``(base + r * step + t * pitch, length)``.

    Members
    -------
    base, step, pitch, length, rounds, tokens : In
        Held from ``start`` until ``busy`` falls.
    start : In(1)
        Pulse: the first request is offered the next cycle.
    req : Out(stream.Signature(request_layout()))
    busy : Out(1)
        Requests are left to issue.
    """

    def __init__(self):
        super().__init__({
            "base": In(_ADDR_WIDTH), "step": In(_ADDR_WIDTH), "pitch": In(_ADDR_WIDTH),
            "length": In(32), "rounds": In(8), "tokens": In(16), "start": In(1),
            "req": Out(stream.Signature(request_layout())), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        # As wide as a request's address: a walk past 2**32 is not wrapped onto address 0.
        addr = Signal(movers.ADDR_WIDTH)
        round_addr = Signal(movers.ADDR_WIDTH)  # token 0 of this round
        t, r = Signal.like(self.tokens), Signal.like(self.rounds)
        m.d.comb += [self.req.valid.eq(self.busy), self.req.payload.addr.eq(addr),
                     self.req.payload.length.eq(self.length)]
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), addr.eq(self.base), round_addr.eq(self.base),
                         t.eq(0), r.eq(0)]
        with m.Elif(self.req.valid & self.req.ready):
            with m.If(t + 1 == self.tokens):
                m.d.sync += [t.eq(0), r.eq(r + 1), round_addr.eq(round_addr + self.step),
                             addr.eq(round_addr + self.step)]
                with m.If(r + 1 == self.rounds):
                    m.d.sync += self.busy.eq(0)
            with m.Else():
                m.d.sync += [t.eq(t + 1), addr.eq(addr + self.pitch)]
        return m


def _take_turns(m, step, c, chunks, turn, count):
    """On ``step``, the next of ``chunks`` beats; after the last, the next of ``count`` turns."""
    with m.If(step):
        m.d.sync += c.eq(Mux(c + 1 == chunks, 0, c + 1))
        if count > 1:
            with m.If(c + 1 == chunks):
                m.d.sync += turn.eq(Mux(turn == count - 1, 0, turn + 1))


class Deal(wiring.Component):
    """Deals beats to ``count`` outputs in turn, ``chunks`` beats to each.

    Parameters
    ----------
    lanes : int
        Bytes of a beat.
    count : int
        Outputs.
    max_chunks : int
        The most beats one output takes in a turn.

    Members
    -------
    chunks : In
        Beats an output takes in a turn; held while beats flow.
    i : In(stream.Signature(movers.beat_layout(8 * lanes)))
        ``last`` and ``bytes`` are not looked at.
    o : Out(stream.Signature(attention.beat_layout(lanes))).array(count)
    """

    def __init__(self, *, lanes, count, max_chunks):
        self._count = count
        super().__init__({
            "chunks": In(range(max_chunks + 1)),
            "i": In(stream.Signature(movers.beat_layout(8 * lanes))),
            "o": Out(stream.Signature(attention.beat_layout(lanes))).array(count),
        })

    def elaborate(self, platform):
        m = Module()
        c = Signal.like(self.chunks)
        turn = Signal(range(self._count))
        for k, o in enumerate(self.o):
            m.d.comb += [o.payload.eq(self.i.payload.data), o.valid.eq(self.i.valid & (turn == k))]
        m.d.comb += self.i.ready.eq(Array(o.ready for o in self.o)[turn])
        _take_turns(m, self.i.valid & self.i.ready, c, self.chunks, turn, self._count)
        return m


class Gather(wiring.Component):
    """Gathers beats from ``count`` inputs in turn, ``chunks`` from each: the reverse of
    :class:`Deal`, with ``last`` on the final beat of each full turn (one request's).

    Members
    -------
    chunks : In
    i : In(stream.Signature(attention.beat_layout(lanes))).array(count)
    o : Out(stream.Signature(movers.beat_layout(8 * lanes)))
        Every beat has ``bytes = lanes``.
    """

    def __init__(self, *, lanes, count, max_chunks):
        self._lanes, self._count = lanes, count
        super().__init__({
            "chunks": In(range(max_chunks + 1)),
            "i": In(stream.Signature(attention.beat_layout(lanes))).array(count),
            "o": Out(stream.Signature(movers.beat_layout(8 * lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        c = Signal.like(self.chunks)
        turn = Signal(range(self._count))
        m.d.comb += [
            self.o.valid.eq(Array(i.valid for i in self.i)[turn]),
            self.o.payload.data.eq(Array(i.payload.as_value() for i in self.i)[turn]),
            self.o.payload.bytes.eq(self._lanes),
            self.o.payload.last.eq((c + 1 == self.chunks) & (turn == self._count - 1)),
        ]
        for k, i in enumerate(self.i):
            m.d.comb += i.ready.eq(self.o.ready & (turn == k))
        _take_turns(m, self.o.valid & self.o.ready, c, self.chunks, turn, self._count)
        return m


class AttentionEngine(wiring.Component):
    """Runs :class:`~moevit.hw.program.descriptor.AttentionDescriptor`
    (members: :mod:`moevit.hw.top.ports`); ``rd[0]`` q, ``rd[1]`` k, ``rd[2]`` v.

    Parameters
    ----------
    hw : HwConfig
        The kernel (:class:`~moevit.hw.units.attention.Attention`) and the bus width.
    """

    READS = 3

    def __init__(self, hw: HwConfig):
        self._hw = hw
        super().__init__(engine_members(AttentionDescriptor.layout(), hw.bus_width, self.READS))

    def elaborate(self, platform):
        m = Module()
        hw = self._hw
        nbytes, lanes, P = hw.bus_width // 8, hw.score_lanes, hw.heads_parallel
        fit = dict(lanes=lanes, count=P, max_chunks=hw.max_head_dim // lanes)
        unit = m.submodules.unit = attention.Attention.from_config(hw)

        desc = Signal.like(self.desc.payload)
        refused = Signal()   # the engine's own check failed (the kernel never saw it)
        written = Signal(24)  # write requests whose last beat is taken
        idle, start = Signal(), Signal()

        new = self.desc.payload
        unfit = off_bus(nbytes, new.q_addr, new.k_addr, new.v_addr, new.out_addr,
                        new.row_pitch, new.head_dim * P) \
            | (new.row_pitch < new.heads * new.head_dim)
        # The descriptor goes to the kernel as the engine takes it; the kernel's verdict
        # is on its `error` the cycle after.
        m.d.comb += [
            unit.desc.payload.eq(new),
            unit.desc.valid.eq(idle & self.desc.valid & ~unfit),
            self.desc.ready.eq(idle & (unfit | unit.desc.ready)),
            self.busy.eq(~idle),
            self.error.eq(Mux(refused, Fault.SHAPE, unit.error)),
        ]
        request_end = Signal()  # a write request's last beat is taken
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.desc.valid & self.desc.ready):
                    m.d.sync += [desc.eq(new), refused.eq(unfit)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(refused | (unit.error != Fault.NONE)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.d.sync += written.eq(0)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(request_end):
                    m.d.sync += written.eq(written + 1)
                    with m.If(written + 1 == desc.rounds * desc.rows):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
        m.d.comb += idle.eq(fsm.ongoing("IDLE"))

        # Requests: q, k, v and the context, each walked on its own.
        slice_bytes = desc.head_dim * P
        channels = [(self.rd[0].req, desc.q_addr, desc.row_pitch, desc.rows),
                    (self.rd[1].req, desc.k_addr, desc.row_pitch, desc.tokens),
                    (self.rd[2].req, desc.v_addr, desc.row_pitch, desc.tokens),
                    (self.wr.req, desc.out_addr, desc.heads * desc.head_dim, desc.rows)]
        for k, (req, base, pitch, count) in enumerate(channels):
            walk = m.submodules[f"walk{k}"] = SliceRequests()
            m.d.comb += [walk.base.eq(base), walk.step.eq(slice_bytes), walk.pitch.eq(pitch),
                         walk.length.eq(slice_bytes), walk.rounds.eq(desc.rounds),
                         walk.tokens.eq(count), walk.start.eq(start)]
            wiring.connect(m, walk.req, wiring.flipped(req))

        # Reads: bus beats to beats of the score lanes, dealt to the head lanes.
        for k, name in enumerate(("q", "k", "v")):
            repack = m.submodules[f"{name}_repack"] = Repack(nbytes, lanes)
            deal = m.submodules[f"{name}_deal"] = Deal(**fit)
            wiring.connect(m, wiring.flipped(self.rd[k].data), repack.i)
            wiring.connect(m, repack.o, deal.i)
            m.d.comb += deal.chunks.eq(desc.chunks)
            for p in range(P):
                wiring.connect(m, deal.o[p], getattr(unit, name)[p])

        # Write: the lanes' context beats gathered, packed into bus beats.
        gather = m.submodules.gather = Gather(**fit)
        pack = m.submodules.pack = Repack(lanes, nbytes)
        m.d.comb += gather.chunks.eq(desc.chunks)
        for p in range(P):
            wiring.connect(m, unit.o[p], gather.i[p])
        wiring.connect(m, gather.o, pack.i)
        m.d.comb += [self.wr.data.payload.eq(pack.o.payload.data),
                     self.wr.data.valid.eq(pack.o.valid), pack.o.ready.eq(self.wr.data.ready),
                     request_end.eq(pack.o.valid & pack.o.ready & pack.o.payload.last)]
        return m
