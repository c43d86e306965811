"""The top's memory interconnect: many movers on one AXI4 master, and the program's
addresses relocated to the host's buffers.

:class:`ReadArbiter`
    N AXI4 read masters (the read movers' ``axi`` records) onto one. AR is
    granted round-robin; the winner's index is queued per burst and the R
    beats go to the port at the queue's head, which is popped on ``rlast``.
    One ID: the memory answers bursts in AR order, so no beat is misrouted.
:class:`WriteArbiter`
    The same for writes: AW round-robin; the W beats follow in AW order (W is
    locked to the queued owner of the oldest burst until its ``wlast``); B is
    routed in order.
:class:`Relocator`
    Between a requester's ``req`` stream and a mover's ``req``: a program byte
    address (an offset into the memory image of
    :mod:`moevit.hw.program.layout`) becomes the host's: weights ``[0,
    scratch_at)``, scratch ``[scratch_at, input_at)``, input ``[input_at,
    output_at)`` and output ``[output_at, end)`` each have a 64-bit base, and
    input and output add ``image * pitch`` (run N of a multi-image start reads
    image N and writes its output N).

An arbiter's granted master keeps the grant until its AR (AW) is taken, as
AXI forbids a valid address to change; a port is granted only while the queue
has room, so at most ``max_outstanding`` bursts are in flight on the shared
master. The arbiters add no cycle: address and data pass through.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from moevit.hw.top.movers import (ADDR_WIDTH, DATA_WIDTHS, AXI4ReadSignature,
                                  AXI4WriteSignature, request_layout)

__all__ = ["ReadArbiter", "WriteArbiter", "REGION_KINDS", "relocation_layout", "Relocator"]

#: The region kinds a Relocator maps, in address order (:data:`moevit.hw.program.layout.KINDS`).
REGION_KINDS = ("weights", "scratch", "input", "output")


def _check(data_width, ports, max_outstanding):
    if data_width not in DATA_WIDTHS:
        raise TypeError(f"Data width must be one of {DATA_WIDTHS}, not {data_width!r}")
    for what, value in (("Ports", ports), ("Outstanding bursts", max_outstanding)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{what} must be a positive integer, not {value!r}")


class _Arbiter(wiring.Component):
    """What both arbiters share: parameters, ports, the round-robin address grant."""

    def __init__(self, signature, data_width, ports, max_outstanding):
        try:
            _check(data_width, ports, max_outstanding)
        except TypeError:
            self._MustUse__silence = True
            raise
        self._data_width = data_width
        self._ports = ports
        self._max_outstanding = max_outstanding
        super().__init__({"ports": In(signature(data_width)).array(ports),
                          "axi": Out(signature(data_width))})

    @property
    def data_width(self):
        return self._data_width

    @property
    def max_outstanding(self):
        return self._max_outstanding

    def _grant(self, m, prefix, room, queues):
        """Pass the address channel ``prefix`` (``ar``/``aw``) of one port to ``axi``:
        round-robin from the port after the last winner, held until taken; push the
        winner's index into ``queues`` when ``room``."""
        n = self._ports
        owner, held, last = Signal(range(n)), Signal(range(n)), Signal(range(n))
        locked = Signal()                          # an address is offered and not yet taken
        pick = Signal(range(n))
        with m.Switch(last):
            for prev in range(n):
                with m.Case(prev):
                    for step in reversed(range(1, n + 1)):  # the nearest valid one wins
                        with m.If(getattr(self.ports[(prev + step) % n], f"{prefix}valid")):
                            m.d.comb += pick.eq((prev + step) % n)
        m.d.comb += owner.eq(Mux(locked, held, pick))

        axi = self.axi
        valid, ready = getattr(axi, f"{prefix}valid"), getattr(axi, f"{prefix}ready")
        names = [name for name in axi.signature.members
                 if name.startswith(prefix) and name not in (f"{prefix}valid", f"{prefix}ready",
                                                             f"{prefix}id")]
        with m.Switch(owner):
            for k, port in enumerate(self.ports):
                with m.Case(k):
                    m.d.comb += [getattr(axi, name).eq(getattr(port, name)) for name in names]
                    m.d.comb += [valid.eq(getattr(port, f"{prefix}valid") & room),
                                 getattr(port, f"{prefix}ready").eq(ready & room)]
        m.d.comb += getattr(axi, f"{prefix}id").eq(0)
        taken = Signal()
        m.d.comb += taken.eq(valid & ready)
        for queue in queues:
            m.d.comb += [queue.w_data.eq(owner), queue.w_en.eq(taken)]
        with m.If(taken):
            m.d.sync += [locked.eq(0), last.eq(owner)]
        with m.Elif(valid):
            m.d.sync += [locked.eq(1), held.eq(owner)]

    def _queue(self, m, name):
        queue = SyncFIFO(width=max(1, (self._ports - 1).bit_length()),
                         depth=self._max_outstanding)
        m.submodules[name] = queue
        return queue


class ReadArbiter(_Arbiter):
    """``ports`` AXI4 read masters onto one, in order (see the module's description).

    Parameters
    ----------
    data_width : int
    ports : int
    max_outstanding : int
        Bursts in flight on ``axi`` at most.

    Attributes
    ----------
    ports : In(AXI4ReadSignature(data_width)).array(ports)
        The masters (a read mover's ``axi`` connects to each).
    axi : Out(AXI4ReadSignature(data_width))
    """

    def __init__(self, data_width=128, ports=2, *, max_outstanding=4):
        super().__init__(AXI4ReadSignature, data_width, ports, max_outstanding)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        order = self._queue(m, "order")
        self._grant(m, "ar", order.w_rdy, [order])
        # R: to the port whose burst is the oldest in flight.
        head = order.r_data
        for k, port in enumerate(self.ports):
            mine = order.r_rdy & (head == k)
            m.d.comb += [port.rid.eq(axi.rid), port.rdata.eq(axi.rdata),
                         port.rresp.eq(axi.rresp), port.rlast.eq(axi.rlast),
                         port.rvalid.eq(axi.rvalid & mine)]
            with m.If(mine):
                m.d.comb += axi.rready.eq(port.rready)
        m.d.comb += order.r_en.eq(axi.rvalid & axi.rready & axi.rlast)
        return m


class WriteArbiter(_Arbiter):
    """``ports`` AXI4 write masters onto one, W beats in AW order (see the module's
    description).

    Parameters
    ----------
    data_width, ports, max_outstanding
        As :class:`ReadArbiter`; a burst is in flight from its AW to its B.

    Attributes
    ----------
    ports : In(AXI4WriteSignature(data_width)).array(ports)
    axi : Out(AXI4WriteSignature(data_width))
    """

    def __init__(self, data_width=128, ports=2, *, max_outstanding=4):
        super().__init__(AXI4WriteSignature, data_width, ports, max_outstanding)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        # Each AW's owner waits in `beats` for its W beats and in `answers` for its B.
        beats, answers = self._queue(m, "beats"), self._queue(m, "answers")
        self._grant(m, "aw", beats.w_rdy & answers.w_rdy, [beats, answers])
        for k, port in enumerate(self.ports):
            with m.If(beats.r_rdy & (beats.r_data == k)):
                m.d.comb += [axi.wdata.eq(port.wdata), axi.wstrb.eq(port.wstrb),
                             axi.wlast.eq(port.wlast), axi.wvalid.eq(port.wvalid),
                             port.wready.eq(axi.wready)]
            mine = answers.r_rdy & (answers.r_data == k)
            m.d.comb += [port.bid.eq(axi.bid), port.bresp.eq(axi.bresp),
                         port.bvalid.eq(axi.bvalid & mine)]
            with m.If(mine):
                m.d.comb += axi.bready.eq(port.bready)
        m.d.comb += [beats.r_en.eq(axi.wvalid & axi.wready & axi.wlast),
                     answers.r_en.eq(axi.bvalid & axi.bready)]
        return m


def relocation_layout():
    """Where the program's regions go (the top's registers; held still during a run):
    the region boundaries in program addresses (``scratch_at <= input_at <= output_at
    <= end``), a 64-bit host base per kind, the image index and the input and output
    pitches (bytes from one image's buffer to the next)."""
    return data.StructLayout({
        "scratch_at": unsigned(32), "input_at": unsigned(32), "output_at": unsigned(32),
        "end": unsigned(32),
        "base": data.ArrayLayout(unsigned(ADDR_WIDTH), len(REGION_KINDS)),
        "image": unsigned(16), "input_pitch": unsigned(32), "output_pitch": unsigned(32),
    })


class Relocator(wiring.Component):
    """A request stream with program addresses -> the same with host addresses.

    A request ``[addr, addr + length)`` inside one region kind ``k`` (starting at
    ``start[k]``) goes out with ``base[k] + addr - start[k]``, plus ``image *
    pitch`` for input and output. A request that starts at or past ``end``, or runs
    past its kind's end, is taken and dropped: ``error`` rises and stays high until
    ``clear``. One register stage: a request goes out the cycle after it is taken,
    one a cycle.

    Parameters
    ----------
    length_width : int
        Bits of a request's length (the movers').

    Attributes
    ----------
    i : In(stream.Signature(request_layout(length_width)))
    o : Out(stream.Signature(request_layout(length_width)))
    regions : In(relocation_layout())
        A change takes effect two cycles later.
    error : Out(1)
    clear : In(1)
    """

    def __init__(self, *, length_width=32):
        self._length_width = length_width
        super().__init__({
            "i": In(stream.Signature(request_layout(length_width))),
            "o": Out(stream.Signature(request_layout(length_width))),
            "regions": In(relocation_layout()),
            "error": Out(1),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        r = self.regions
        starts = [0, r.scratch_at, r.input_at, r.output_at]
        ends = [r.scratch_at, r.input_at, r.output_at, r.end]
        pitches = [0, 0, r.input_pitch, r.output_pitch]
        # Per kind the one number added (mod 2**64), registered off the request path.
        shift = [Signal(ADDR_WIDTH, name=f"shift_{kind}") for kind in REGION_KINDS]
        for k in range(len(REGION_KINDS)):
            m.d.sync += shift[k].eq(r.base[k] - starts[k] + r.image * pitches[k])

        p = self.i.payload
        stop = Signal(ADDR_WIDTH + 33)                 # one past the request's last byte
        m.d.comb += stop.eq(p.addr + p.length)
        moved, bad = Signal(ADDR_WIDTH), Signal()
        m.d.comb += bad.eq(1)
        for k in reversed(range(len(REGION_KINDS))):   # the lowest kind that holds addr
            with m.If(p.addr < ends[k]):
                m.d.comb += [moved.eq(p.addr + shift[k]), bad.eq(stop > ends[k])]

        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [self.o.valid.eq(~bad), self.o.payload.addr.eq(moved),
                         self.o.payload.length.eq(p.length)]
        with m.If(self.clear):
            m.d.sync += self.error.eq(0)
        with m.If(self.i.valid & self.i.ready & bad):
            m.d.sync += self.error.eq(1)
        return m
