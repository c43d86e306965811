"""The top's memory interconnect: many movers on one AXI4 master, and the program's
addresses relocated to the host's buffers.

:class:`ReadArbiter`
    N AXI4 read masters (the read movers' ``axi`` records) onto one. AR is
    granted round-robin; the winner's index is queued per burst and the R
    beats go to the port at the queue's head, which is popped on ``rlast``.
    One ID: the memory answers bursts in AR order, so no beat is misrouted.
    Each port buffers a longest burst's beats and is granted a burst only when
    its buffer has room for all of it, so R never waits on a port.
:class:`WriteArbiter`
    The same for writes: AW round-robin; the W beats follow in AW order (W is
    locked to the queued owner of the oldest burst until its ``wlast``); B is
    routed in order.
:class:`Relocator`
    Between a requester's ``req`` stream and a mover's ``req``: a program byte
    address (an offset into the memory image of
    :mod:`moevit.hw.program.layout`) becomes the host's: weights ``[0,
    scratch_at)``, scratch ``[scratch_at, input_at)``, input ``[input_at,
    output_at)`` and output ``[output_at, output_end)`` each have a 64-bit base,
    and input and output add ``image`` times the region's size (run N of a
    multi-image start reads image N and writes its output N).

An arbiter's granted master keeps the grant until its AR (AW) is taken, as
AXI forbids a valid address to change; a port is granted only while the queue
has room, so at most ``max_outstanding`` bursts are in flight on the shared
master. Addresses pass through without a cycle; so do W and B, and R when the
read arbiter is unbuffered.

Why the read arbiter buffers: with in-order routing, a port whose consumer
does not take its beats (the linear engine's residual, say, taken only when a
tile drains, which waits for x on another port) holds the R channel, and the
beats it waits for never come: a deadlock. Buffered, a beat is always taken
into its port's FIFO, whose room was reserved at the grant. Unbuffered
(``buffer_beats=0``: no memory, no cycle) the users keep the rule themselves:
a master takes its R beats without waiting for another port's bursts. Writes
keep it by construction when, as in the top, one write mover writes.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from moevit.hw.program.program import BOUNDARY_FIELDS
from moevit.hw.top.movers import (ADDR_WIDTH, DATA_WIDTHS, MAX_BURST, PAGE_BYTES,
                                  AXI4ReadSignature, AXI4WriteSignature, request_layout)

__all__ = ["longest_burst", "ReadStriper", "ReadArbiter", "WriteArbiter", "REGION_KINDS",
           "READ_ONLY_KINDS", "BOUND_FIELDS", "bounds_layout", "bases_layout", "Relocator"]

#: The region kinds a Relocator maps, in address order (:data:`moevit.hw.program.layout.KINDS`).
REGION_KINDS = ("weights", "scratch", "input", "output")
#: The kinds the top reads and never writes: the host's weights and its images.
READ_ONLY_KINDS = ("weights", "input")
#: Where the kinds after the weights start, and where the output ends (the program header's;
#: its last bound, the on-chip window's end, is the on-chip router's: :mod:`.onchip`).
BOUND_FIELDS = BOUNDARY_FIELDS[:4]


def longest_burst(data_width):
    """Beats of the longest burst a mover issues: 256, or a 4 KiB page of the bus."""
    return min(MAX_BURST, PAGE_BYTES // (data_width // 8))


def _check(data_width, ports, max_outstanding):
    if data_width not in DATA_WIDTHS:
        raise TypeError(f"Data width must be one of {DATA_WIDTHS}, not {data_width!r}")
    for what, value in (("Ports", ports), ("Outstanding bursts", max_outstanding)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{what} must be a positive integer, not {value!r}")


def _check_buffer(data_width, buffer_beats):
    """The default buffer (the longest burst), or ``buffer_beats`` checked: 0 or at
    least the longest burst."""
    if buffer_beats is None:
        return longest_burst(data_width) if data_width in DATA_WIDTHS else None
    if not isinstance(buffer_beats, int) or isinstance(buffer_beats, bool) or buffer_beats < 0:
        raise TypeError(f"Buffer beats must be a non-negative integer, not {buffer_beats!r}")
    if 0 < buffer_beats < longest_burst(data_width):
        raise ValueError(f"A buffer of {buffer_beats} beats cannot hold the longest "
                         f"burst of {longest_burst(data_width)} beats")
    return buffer_beats


class ReadStriper(wiring.Component):
    """One AXI4 read master onto ``ports``, burst by burst, R in issue order.

    The master's bursts go to the ports in turn, each unchanged (one ID; a port's
    memory answers its bursts in order, so the queue of ports says whose beats come
    next). A burst's address stays on the port whose turn it is until that port takes
    it: a valid address never moves, and the turn moves on only with a taken burst.
    An error response (SLVERR, DECERR) reaches the master with its beat.

    With ``buffer_beats`` (the default: the longest burst, :func:`longest_burst`) each
    port has a FIFO of that many R beats, and a port is given a burst only when its
    FIFO has room for all of it beside the beats already owed to it: every port's R
    is always taken, so the ports stream their bursts at once while the master takes
    the oldest; that is what multiplies the bandwidth. With ``buffer_beats=0`` beats
    pass straight through (no memory, no added cycle), and a port waits while an
    older burst's port sends: the order is kept, the bandwidth is one port's at a
    time unless the memory buffers on its side.

    Parameters
    ----------
    data_width : int
    ports : int
    max_outstanding : int
        Bursts in flight at most (given to a port, not all beats taken by ``axi``).
    buffer_beats : int, optional
        R beats buffered per port: 0, or at least :func:`longest_burst`.

    Attributes
    ----------
    axi : In(AXI4ReadSignature(data_width))
        The master (a read mover's ``axi`` connects to it).
    ports : Out(AXI4ReadSignature(data_width)).array(ports)

    Raises
    ------
    TypeError
        For a data width not in :data:`DATA_WIDTHS`, a count that is not a
        positive integer, a buffer that is not a non-negative integer.
    ValueError
        For a buffer that cannot hold the longest burst.
    """

    def __init__(self, data_width=128, ports=2, max_outstanding=4, *, buffer_beats=None):
        try:
            _check(data_width, ports, max_outstanding)
            buffer_beats = _check_buffer(data_width, buffer_beats)
        except (TypeError, ValueError):
            self._MustUse__silence = True
            raise
        self._data_width = data_width
        self._ports = ports
        self._max_outstanding = max_outstanding
        self._buffer_beats = buffer_beats
        super().__init__({"axi": In(AXI4ReadSignature(data_width)),
                          "ports": Out(AXI4ReadSignature(data_width)).array(ports)})

    @property
    def data_width(self):
        return self._data_width

    @property
    def max_outstanding(self):
        return self._max_outstanding

    @property
    def buffer_beats(self):
        return self._buffer_beats

    def elaborate(self, platform):
        m = Module()
        axi, n, depth = self.axi, self._ports, self._buffer_beats
        order = m.submodules.order = SyncFIFO(width=max(1, (n - 1).bit_length()),
                                              depth=self._max_outstanding)
        turn, head = Signal(range(n)), order.r_data
        # A port's free beats, less the bursts it was given (buffered), bound its turns.
        free = [Signal(range(depth + 1), init=depth, name=f"free{k}") for k in range(n)] \
            if depth else None
        room = [order.w_rdy & (free[k] > axi.arlen if depth else 1) for k in range(n)]

        # AR: to the port whose turn it is.
        taken = Signal()
        for k, port in enumerate(self.ports):
            m.d.comb += [port.arid.eq(axi.arid), port.araddr.eq(axi.araddr),
                         port.arlen.eq(axi.arlen), port.arsize.eq(axi.arsize),
                         port.arburst.eq(axi.arburst),
                         port.arvalid.eq(axi.arvalid & (turn == k) & room[k])]
            with m.If(turn == k):
                m.d.comb += axi.arready.eq(port.arready & room[k])
        m.d.comb += [taken.eq(axi.arvalid & axi.arready),
                     order.w_data.eq(turn), order.w_en.eq(taken)]
        with m.If(taken):
            m.d.sync += turn.eq(Mux(turn == n - 1, 0, turn + 1))
        m.d.comb += axi.rid.eq(0)

        if not depth:
            # R: from the port whose burst is the oldest in flight.
            for k, port in enumerate(self.ports):
                mine = order.r_rdy & (head == k)
                with m.If(mine):
                    m.d.comb += [axi.rdata.eq(port.rdata), axi.rresp.eq(port.rresp),
                                 axi.rlast.eq(port.rlast), axi.rvalid.eq(port.rvalid)]
                m.d.comb += port.rready.eq(axi.rready & mine)
            m.d.comb += order.r_en.eq(axi.rvalid & axi.rready & axi.rlast)
            return m

        # Buffered: every port's beats into its FIFO; the master reads the head port's.
        for k, port in enumerate(self.ports):
            beats = m.submodules[f"beats{k}"] = SyncFIFO(width=self._data_width + 3,
                                                       depth=depth)
            mine = order.r_rdy & (head == k)
            m.d.comb += [beats.w_data.eq(Cat(port.rdata, port.rresp, port.rlast)),
                         beats.w_en.eq(port.rvalid), port.rready.eq(beats.w_rdy),
                         beats.r_en.eq(axi.rready & mine)]
            with m.If(mine):
                m.d.comb += [Cat(axi.rdata, axi.rresp, axi.rlast).eq(beats.r_data),
                             axi.rvalid.eq(beats.r_rdy)]
            given = Mux(taken & (turn == k), axi.arlen + 1, 0)
            m.d.sync += free[k].eq(free[k] + (beats.r_rdy & beats.r_en) - given)
        m.d.comb += order.r_en.eq(axi.rvalid & axi.rready & axi.rlast)
        return m


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

    def _grant(self, m, prefix, room, queues, eligible=None):
        """Pass the address channel ``prefix`` (``ar``/``aw``) of one port to ``axi``:
        round-robin from the port after the last winner among the ``eligible`` ones
        (default: those with a valid address), held until taken; push the winner's
        index into ``queues`` when ``room``. Returns ``(taken, owner)``."""
        n = self._ports
        if eligible is None:
            eligible = [getattr(port, f"{prefix}valid") for port in self.ports]
        owner, held, last = Signal(range(n)), Signal(range(n)), Signal(range(n))
        locked = Signal()                          # an address is offered and not yet taken
        pick = Signal(range(n))
        with m.Switch(last):
            for prev in range(n):
                with m.Case(prev):
                    for step in reversed(range(1, n + 1)):  # the nearest one wins
                        with m.If(eligible[(prev + step) % n]):
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
                    m.d.comb += [valid.eq(eligible[k] & room),
                                 getattr(port, f"{prefix}ready").eq(ready & room & eligible[k])]
        m.d.comb += getattr(axi, f"{prefix}id").eq(0)
        taken = Signal()
        m.d.comb += taken.eq(valid & ready)
        for queue in queues:
            m.d.comb += [queue.w_data.eq(owner), queue.w_en.eq(taken)]
        with m.If(taken):
            m.d.sync += [locked.eq(0), last.eq(owner)]
        with m.Elif(valid):
            m.d.sync += [locked.eq(1), held.eq(owner)]
        return taken, owner

    def _queue(self, m, name):
        queue = SyncFIFO(width=max(1, (self._ports - 1).bit_length()),
                         depth=self._max_outstanding)
        m.submodules[name] = queue
        return queue


class ReadArbiter(_Arbiter):
    """``ports`` AXI4 read masters onto one, in order (see the module's description).

    With ``buffer_beats`` (the default: the longest burst, :func:`longest_burst`), each
    port has a FIFO of that many R beats, and a port's AR is granted only when its
    FIFO has room for the whole burst beside the beats already owed to it: R is then
    always taken, and no port's consumer can hold up another's beats, whatever one
    waits for. With ``buffer_beats=0`` the beats pass straight through (no memory,
    no added cycle), and the users must keep the rule of the module's description.

    Parameters
    ----------
    data_width : int
    ports : int
    max_outstanding : int
        Bursts in flight on ``axi`` at most.
    buffer_beats : int, optional
        R beats buffered per port: 0, or at least :func:`longest_burst`.

    Attributes
    ----------
    ports : In(AXI4ReadSignature(data_width)).array(ports)
        The masters (a read mover's ``axi`` connects to each).
    axi : Out(AXI4ReadSignature(data_width))

    Raises
    ------
    TypeError
        For a data width not in :data:`DATA_WIDTHS`, a count that is not a
        positive integer, a buffer that is not a non-negative integer.
    ValueError
        For a buffer that cannot hold the longest burst.
    """

    def __init__(self, data_width=128, ports=2, max_outstanding=4, *, buffer_beats=None):
        if data_width in DATA_WIDTHS:
            try:
                buffer_beats = _check_buffer(data_width, buffer_beats)
            except (TypeError, ValueError):
                self._MustUse__silence = True
                raise
        self._buffer_beats = buffer_beats
        super().__init__(AXI4ReadSignature, data_width, ports, max_outstanding)

    @property
    def buffer_beats(self):
        return self._buffer_beats

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        order = self._queue(m, "order")
        head = order.r_data
        depth = self._buffer_beats
        if not depth:
            self._grant(m, "ar", order.w_rdy, [order])
            # R: to the port whose burst is the oldest in flight.
            for k, port in enumerate(self.ports):
                mine = order.r_rdy & (head == k)
                m.d.comb += [port.rid.eq(axi.rid), port.rdata.eq(axi.rdata),
                             port.rresp.eq(axi.rresp), port.rlast.eq(axi.rlast),
                             port.rvalid.eq(axi.rvalid & mine)]
                with m.If(mine):
                    m.d.comb += axi.rready.eq(port.rready)
            m.d.comb += order.r_en.eq(axi.rvalid & axi.rready & axi.rlast)
            return m

        # Buffered: a port's free beats, less its bursts in flight, bound its grants.
        free = [Signal(range(depth + 1), init=depth, name=f"free{k}")
                for k in range(len(self.ports))]
        eligible = [port.arvalid & (free[k] > port.arlen) for k, port in enumerate(self.ports)]
        taken, owner = self._grant(m, "ar", order.w_rdy, [order], eligible)
        m.d.comb += [axi.rready.eq(order.r_rdy),
                     order.r_en.eq(axi.rvalid & axi.rready & axi.rlast)]
        for k, port in enumerate(self.ports):
            beats = m.submodules[f"beats{k}"] = SyncFIFO(width=self._data_width + 3,
                                                       depth=depth)
            m.d.comb += [beats.w_data.eq(Cat(axi.rdata, axi.rresp, axi.rlast)),
                         beats.w_en.eq(axi.rvalid & axi.rready & (head == k)),
                         port.rid.eq(0),
                         Cat(port.rdata, port.rresp, port.rlast).eq(beats.r_data),
                         port.rvalid.eq(beats.r_rdy), beats.r_en.eq(port.rready)]
            granted = Mux(taken & (owner == k), port.arlen + 1, 0)
            m.d.sync += free[k].eq(free[k] + (beats.r_rdy & port.rready) - granted)
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

    def __init__(self, data_width=128, ports=2, max_outstanding=4):
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


def bounds_layout():
    """Where each kind of region starts, in program addresses (the program header's
    bounds: ``scratch_at <= input_at <= output_at <= output_end``); the weights start
    at 0, and the program follows the output."""
    return data.StructLayout({name: unsigned(32) for name in BOUND_FIELDS})


def bases_layout():
    """The host's buffer of each region kind (64-bit byte addresses; the top's
    argument registers)."""
    return data.StructLayout({kind: unsigned(ADDR_WIDTH) for kind in REGION_KINDS})


class Relocator(wiring.Component):
    """A request stream with program addresses -> the same with host addresses.

    A request ``[addr, addr + length)`` inside one region kind, starting at
    ``start``, goes out at ``bases.<kind> + addr - start``; input and output add
    ``image`` times their pitch, the size of the region (``output_at - input_at``,
    ``output_end - output_at``): image N's input and output lie N regions into
    the host's buffers. A request that starts at or past ``output_end``, or runs
    past the end of its kind, is taken and dropped, with ``error`` high for that
    one cycle (the top keeps the flag); so is, on the write channel (``writes``),
    one that starts in a kind the top only reads (:data:`READ_ONLY_KINDS`: the
    weights and the input). One register stage: a request goes out
    the cycle after it is taken, one a cycle. ``bounds``, ``bases`` and ``image``
    hold still while requests flow (a change takes effect two cycles later).

    Parameters
    ----------
    length_width : int
        Bits of a request's length (the movers').
    writes : bool
        The relocator of the write channel: requests into the read-only kinds refused.

    Attributes
    ----------
    i : In(stream.Signature(request_layout(length_width)))
    o : Out(stream.Signature(request_layout(length_width)))
    bounds : In(bounds_layout())
    bases : In(bases_layout())
    image : In(16)
        The image of a multi-image run.
    error : Out(1)
    """

    def __init__(self, *, length_width=32, writes=False):
        self._length_width = length_width
        self._writes = writes
        super().__init__({
            "i": In(stream.Signature(request_layout(length_width))),
            "o": Out(stream.Signature(request_layout(length_width))),
            "bounds": In(bounds_layout()),
            "bases": In(bases_layout()),
            "image": In(16),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        b = self.bounds
        starts = [0, b.scratch_at, b.input_at, b.output_at]
        ends = [b.scratch_at, b.input_at, b.output_at, b.output_end]
        pitches = [0, 0, b.output_at - b.input_at, b.output_end - b.output_at]
        # Per kind the one number added (mod 2**64), registered off the request path.
        shift = [Signal(ADDR_WIDTH, name=f"shift_{kind}") for kind in REGION_KINDS]
        for k, kind in enumerate(REGION_KINDS):
            m.d.sync += shift[k].eq(self.bases[kind] - starts[k] + self.image * pitches[k])

        p = self.i.payload
        stop = Signal(ADDR_WIDTH + 1)                  # one past the request's last byte
        m.d.comb += stop.eq(p.addr + p.length)
        moved, bad = Signal(ADDR_WIDTH), Signal()
        m.d.comb += bad.eq(1)
        for k, kind in reversed(list(enumerate(REGION_KINDS))):  # the lowest that holds addr
            refused = self._writes and kind in READ_ONLY_KINDS
            with m.If(p.addr < ends[k]):
                m.d.comb += [moved.eq(p.addr + shift[k]), bad.eq(refused | (stop > ends[k]))]

        taken = Signal()
        m.d.comb += [self.i.ready.eq(~self.o.valid | self.o.ready),
                     taken.eq(self.i.valid & self.i.ready)]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(taken):
            m.d.sync += [self.o.valid.eq(~bad), self.o.payload.addr.eq(moved),
                         self.o.payload.length.eq(p.length)]
        m.d.sync += self.error.eq(taken & bad)
        return m
