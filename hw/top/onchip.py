"""On-chip activation memory: the program's window served from a RAM instead of DRAM.

A program compiled for a HwConfig with ``onchip_bytes`` places activations in
the window ``[output_end, onchip_end)`` of its memory image
(:mod:`moevit.hw.program.compiler`). The top serves that window from one RAM
of ``onchip_bytes`` (a BRAM's ports: one read, one write, bus-word wide) and
leaves every other address to the relocation and the movers as before:

::

    engine rd[k] ─► ReadRouter ─mem─► Relocator ─► ReadMover ─► ReadArbiter ─► m_axi
                       └─ram─► OnChipMemory.rd[k] ─┐ one read port,
    engine wr ───► WriteRouter ─mem─► Relocator ─► WriteMover ─► m_axi
                       └─ram─► OnChipMemory.wr[k] ─┘ one write port

:class:`ReadRouter`
    One per read channel. A request inside the window goes to the RAM with
    its address made an offset into the window; any other to the relocator
    and the mover. Each request's side is queued (``order``) and the beats
    come back from the side at the queue's head, so a channel's beats stay in
    request order while both sides work ahead; the head is popped on its
    ``last`` beat.
:class:`WriteRouter`
    The same for the write channel; the queue also holds each request's beat
    count, so the data beats go to the side of the oldest request until it
    has all of them.
:class:`OnChipMemory`
    The RAM. Its read port is shared by the read channels one beat at a
    time: each cycle one channel with a request running and room in its
    small beat FIFO is granted, round-robin, and its beat enters the FIFO a
    cycle later (the RAM's read latency). Room is reserved at the grant, so
    a channel whose consumer stalls only stops being granted: it never holds
    the port (the deadlock :class:`~moevit.hw.top.interconnect.ReadArbiter`'s
    description explains). Beats have the read mover's format
    (:func:`~moevit.hw.top.movers.beat_layout`): ``last`` on a request's final
    beat, ``bytes`` and zeroed lanes past the end on a ragged tail. Its write
    port takes one beat a cycle, with byte enables for a ragged last beat,
    from one of its write channels (one per issue lane, each running one
    request at a time): each cycle a channel whose next beat is here,
    round-robin. Joined a beat at a time, not a request at a time, because
    an engine may ask to write before its data is computed (the attention's
    context rows come one every ~32 cycles on zcu102-edge-moe): holding the
    port for a whole request made the other lane's linear kernel wait to
    write (an fc1 of 64 rows 11,226 cycles instead of ~5,000).

A request that starts in the window and runs past its end, has no bytes,
or is not aligned to the bus word is taken and dropped with ``error`` high
for a cycle (the top stops the run with ``address``, as for an address the
relocation refuses). ``busy`` of each block is low only when nothing it
took is still owed; the top's completion waits for it, as for the movers.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moevit.hw.top.movers import DATA_WIDTHS, beat_layout
from moevit.hw.top.ports import ReadPort, WritePort

__all__ = ["ReadRouter", "WriteRouter", "OnChipMemory"]

#: Requests a router keeps in flight (taken, their beats not all through), by default; the
#: top gives its routers ``hw.max_outstanding``, the movers' own: fewer would bind under a
#: memory latency (4 made PATCHIFY on zcu102-edge-moe's window 1.8x slower at 50 cycles).
ORDER_DEPTH = 4
#: Beats each read channel of the RAM buffers.
BEAT_DEPTH = 4


def _check_width(data_width):
    if data_width not in DATA_WIDTHS:
        raise TypeError(f"Data width must be one of {DATA_WIDTHS}, not {data_width!r}")


class _Router(wiring.Component):
    """What both routers share: the window, the split of the request stream."""

    def __init__(self, port, data_width, in_flight):
        try:
            _check_width(data_width)
            if not isinstance(in_flight, int) or isinstance(in_flight, bool) or in_flight < 1:
                raise TypeError(f"Requests in flight must be a positive integer, not "
                                f"{in_flight!r}")
        except TypeError:
            self._MustUse__silence = True
            raise
        self._data_width, self._in_flight = data_width, in_flight
        super().__init__({"i": In(port(data_width)), "mem": Out(port(data_width)),
                          "ram": Out(port(data_width)), "window_at": In(32),
                          "window_end": In(32), "error": Out(1), "busy": Out(1)})

    @property
    def data_width(self):
        return self._data_width

    def _split(self, m, order, entry):
        """Pass ``i.req`` to ``ram.req`` (inside the window, as an offset) or ``mem.req``,
        pushing ``Cat(side, entry)`` into ``order`` as it is taken; drop a bad one."""
        p = self.i.req.payload
        nbytes = self._data_width // 8
        stop = Signal(p.addr.shape().width + 1)
        m.d.comb += stop.eq(p.addr + p.length)
        inside, bad = Signal(), Signal()
        m.d.comb += [
            inside.eq((p.addr >= self.window_at) & (p.addr < self.window_end)),
            bad.eq(inside & ((stop > self.window_end) | (p.length == 0)
                             | (p.addr[:max(1, (nbytes - 1).bit_length())] != 0
                                if nbytes > 1 else 0))),
        ]
        m.d.comb += [
            self.ram.req.payload.addr.eq(p.addr - self.window_at),
            self.ram.req.payload.length.eq(p.length),
            self.mem.req.payload.eq(p),
            self.ram.req.valid.eq(self.i.req.valid & inside & ~bad & order.w_rdy),
            self.mem.req.valid.eq(self.i.req.valid & ~inside & order.w_rdy),
            self.i.req.ready.eq(bad | (order.w_rdy & Mux(inside, self.ram.req.ready,
                                                          self.mem.req.ready))),
            order.w_data.eq(Cat(inside, entry)),
            order.w_en.eq((self.ram.req.valid & self.ram.req.ready)
                          | (self.mem.req.valid & self.mem.req.ready)),
        ]
        m.d.sync += self.error.eq(self.i.req.valid & bad)
        m.d.comb += self.busy.eq(order.r_rdy)


class ReadRouter(_Router):
    """A read channel split between the movers and the on-chip RAM (see the module's
    description).

    Parameters
    ----------
    data_width : int
    in_flight : int
        Requests kept in flight (taken, their beats not all through).

    Attributes
    ----------
    i : In(ReadPort(data_width))
        The engine's channel.
    mem : Out(ReadPort(data_width))
        To the relocator (requests) and the read mover (beats).
    ram : Out(ReadPort(data_width))
        To a read channel of :class:`OnChipMemory`: addresses are window offsets.
    window_at, window_end : In(32)
        The window, in program addresses (the header's ``output_end``, ``onchip_end``).
    error : Out(1)
        A request dropped (see the module's description), the cycle after it is taken.
    busy : Out(1)
        A request taken has beats still to come.
    """

    def __init__(self, data_width=128, *, in_flight=ORDER_DEPTH):
        super().__init__(ReadPort, data_width, in_flight)

    def elaborate(self, platform):
        m = Module()
        order = m.submodules.order = SyncFIFO(width=1, depth=self._in_flight)
        self._split(m, order, Const(0, 0))
        head_ram = Signal()
        m.d.comb += head_ram.eq(order.r_data[0])
        src = [self.mem.data, self.ram.data]
        out = self.i.data
        m.d.comb += [
            out.payload.eq(Mux(head_ram, self.ram.data.payload, self.mem.data.payload)),
            out.valid.eq(order.r_rdy & Mux(head_ram, src[1].valid, src[0].valid)),
            src[1].ready.eq(order.r_rdy & head_ram & out.ready),
            src[0].ready.eq(order.r_rdy & ~head_ram & out.ready),
            order.r_en.eq(out.valid & out.ready & out.payload.last),
        ]
        return m


class WriteRouter(_Router):
    """The write channel split between the write mover and the on-chip RAM (see the
    module's description).

    Parameters
    ----------
    data_width : int
    length_width : int
        Bits of a request's length.
    in_flight : int
        As :class:`ReadRouter`'s.

    Attributes
    ----------
    i : In(WritePort(data_width))
    mem, ram : Out(WritePort(data_width))
    window_at, window_end, error, busy
        As :class:`ReadRouter`'s; ``busy``: a request taken has beats still to pass.
    """

    def __init__(self, data_width=128, *, length_width=32, in_flight=ORDER_DEPTH):
        self._length_width = length_width
        super().__init__(WritePort, data_width, in_flight)

    def elaborate(self, platform):
        m = Module()
        nbytes = self._data_width // 8
        shift = (nbytes - 1).bit_length()
        beats_width = self._length_width - shift + 1
        order = m.submodules.order = SyncFIFO(width=1 + beats_width, depth=self._in_flight)
        length = self.i.req.payload.length
        beats = Signal(beats_width)
        m.d.comb += beats.eq((length + nbytes - 1) >> shift)
        self._split(m, order, beats)
        head_ram, head_beats = order.r_data[0], order.r_data[1:]
        count = Signal(beats_width)
        sink = [self.mem.data, self.ram.data]
        src = self.i.data
        for side, port in enumerate(sink):
            mine = order.r_rdy & (head_ram == side)
            m.d.comb += [port.payload.eq(src.payload), port.valid.eq(src.valid & mine)]
            with m.If(mine):
                m.d.comb += src.ready.eq(port.ready)
        taken, final = Signal(), Signal()
        m.d.comb += [taken.eq(src.valid & src.ready), final.eq(count + 1 == head_beats),
                     order.r_en.eq(taken & final)]
        with m.If(taken):
            m.d.sync += count.eq(Mux(final, 0, count + 1))
        return m


class OnChipMemory(wiring.Component):
    """The on-chip RAM and its ports (see the module's description).

    Parameters
    ----------
    data_width : int
        Bits of a word (the bus width).
    depth : int
        Words of the RAM.
    channels : int
        Read channels sharing its read port.
    writers : int
        Write channels sharing its write port.
    eager : bool
        A read channel takes its next request in the cycle its request's last beat is
        read (else the cycle after: a channel of one-beat requests idles every other
        cycle). The top's with ``hw.x_by_words``, whose x rows come a word at a time.

    Attributes
    ----------
    rd : In(ReadPort(data_width)).array(channels)
        Requests (byte offsets into the RAM, aligned, inside it: the routers
        check) and their beats.
    wr : In(WritePort(data_width)).array(writers)
    busy : Out(1)
        A request taken is not finished (a beat to read, buffered, or to write).
    """

    def __init__(self, data_width=128, *, depth, channels, writers=1, eager=False):
        try:
            _check_width(data_width)
            for what, value in (("Depth", depth), ("Channels", channels),
                                ("Writers", writers)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise TypeError(f"{what} must be a positive integer, not {value!r}")
        except TypeError:
            self._MustUse__silence = True
            raise
        self._data_width, self._depth = data_width, depth
        self._channels, self._writers, self._eager = channels, writers, bool(eager)
        super().__init__({"rd": In(ReadPort(data_width)).array(channels),
                          "wr": In(WritePort(data_width)).array(writers), "busy": Out(1)})

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        width, n = self._data_width, self._channels
        nbytes = width // 8
        shift = (nbytes - 1).bit_length()
        lanes = max(1, shift)
        ram = m.submodules.ram = Memory(shape=unsigned(width), depth=self._depth, init=[])
        read, write = ram.read_port(), ram.write_port(granularity=8)
        beat = beat_layout(width)

        def tail_mask(tail):
            return Cat(*[(tail == 0) | (k < tail) for k in range(nbytes)])

        # Per read channel: the request running and a FIFO of beats; room in it is reserved
        # by a grant.
        runs = self._runs(self.rd, "", shift, lanes)
        active = [run[0] for run in runs]
        fifos = []
        eligible = []
        issued = Signal()                          # a beat is read this cycle, in next
        issued_to = Signal(range(max(2, n)))
        issued_last, issued_tail = Signal(), Signal(lanes)
        for k, port in enumerate(self.rd):
            fifo = m.submodules[f"beats{k}"] = SyncFIFO(width=beat.size,
                                                       depth=BEAT_DEPTH)
            fifos.append(fifo)
            owed = issued & (issued_to == k)
            ok = Signal(name=f"eligible{k}")
            m.d.comb += ok.eq(active[k] & (fifo.level + owed < BEAT_DEPTH))
            eligible.append(ok)
            m.d.comb += [port.data.payload.eq(fifo.r_data), port.data.valid.eq(fifo.r_rdy),
                         fifo.r_en.eq(port.data.ready)]

        grant, granted = _round_robin(m, eligible)
        m.d.comb += [read.en.eq(granted)]
        with m.Switch(grant):
            for k, (_, word, left, tail) in enumerate(runs):
                with m.Case(k):
                    m.d.comb += read.addr.eq(word)
                    with m.If(granted):
                        self._advance(m, runs[k])
                        m.d.sync += [issued_last.eq(left == 0), issued_tail.eq(tail)]
        m.d.sync += [issued.eq(granted), issued_to.eq(grant)]
        # Taken after the grant's advance, so that an eager take in the cycle of the last
        # beat's read sets the run.
        for k, (port, run) in enumerate(zip(self.rd, runs)):
            ending = granted & (grant == k) & (run[2] == 0) if self._eager else 0
            self._take(m, port, run, shift, lanes, ending)

        # The beat read last cycle, into its channel's FIFO, shaped as the mover's.
        out = Signal(beat)
        mask = tail_mask(issued_tail)
        m.d.comb += [
            out.data.eq(Cat(*[Mux(~issued_last | mask[b], read.data[8 * b:8 * b + 8], 0)
                              for b in range(nbytes)])),
            out.last.eq(issued_last),
            out.bytes.eq(Mux(issued_last & (issued_tail != 0), issued_tail, nbytes)),
        ]
        for k, fifo in enumerate(fifos):
            m.d.comb += [fifo.w_data.eq(out), fifo.w_en.eq(issued & (issued_to == k))]

        # Writes: each port one request at a time; the RAM's write port a beat a cycle to
        # one port whose beat is here, in turn, so a port whose beats trail its request
        # never holds it; byte enables on a ragged tail.
        w_runs = self._runs(self.wr, "w_", shift, lanes)
        for port, run in zip(self.wr, w_runs):
            self._take(m, port, run, shift, lanes)
        w_grant, w_granted = _round_robin(m, [run[0] & port.data.valid
                                              for run, port in zip(w_runs, self.wr)])
        with m.Switch(w_grant):
            for k, (port, (w_active, word, left, tail)) in enumerate(zip(self.wr, w_runs)):
                with m.Case(k):
                    m.d.comb += [port.data.ready.eq(w_active), write.addr.eq(word),
                                 write.data.eq(port.data.payload),
                                 write.en.eq(Mux(w_granted, Mux(left == 0, tail_mask(tail),
                                                                (1 << nbytes) - 1), 0))]
                    with m.If(w_granted):
                        self._advance(m, w_runs[k])

        m.d.comb += self.busy.eq(Cat(*active, *(f.r_rdy for f in fifos), issued,
                                     *(run[0] for run in w_runs)).any())
        return m

    def _runs(self, ports, prefix, shift, lanes):
        """Per port of ``ports`` (read or write): the request it runs, ``(active, next word,
        beats after it, the last beat's bytes or 0 for whole)``."""
        return [(Signal(name=f"{prefix}active{k}"),
                 Signal(range(self._depth), name=f"{prefix}word{k}"),
                 Signal(32 - shift, name=f"{prefix}left{k}"),
                 Signal(lanes, name=f"{prefix}tail{k}")) for k in range(len(ports))]

    @staticmethod
    def _take(m, port, run, shift, lanes, ending=0):
        """``port``'s next request into ``run`` when it runs none, or its last beat is read
        this cycle (``ending``)."""
        active, word, left, tail = run
        p = port.req.payload
        m.d.comb += port.req.ready.eq(~active | ending)
        with m.If(port.req.valid & port.req.ready):
            m.d.sync += [active.eq(1), word.eq(p.addr >> shift),
                         left.eq((p.length - 1) >> shift),
                         tail.eq(p.length[:lanes] if shift else 0)]

    @staticmethod
    def _advance(m, run):
        """A beat of ``run``'s request read or written: the next word; after its last, idle."""
        active, word, left, _ = run
        m.d.sync += [word.eq(word + 1), left.eq(left - 1)]
        with m.If(left == 0):
            m.d.sync += active.eq(0)


def _round_robin(m, eligible):
    """One of the ``eligible`` (1-bit values) a cycle, from the one after the last granted
    on. Returns ``(grant, granted)``."""
    n = len(eligible)
    grant, granted, last = Signal(range(max(2, n))), Signal(), Signal(range(max(2, n)))
    with m.Switch(last):
        for prev in range(n):
            with m.Case(prev):
                for step in reversed(range(1, n + 1)):
                    with m.If(eligible[(prev + step) % n]):
                        m.d.comb += [grant.eq((prev + step) % n), granted.eq(1)]
    with m.If(granted):
        m.d.sync += last.eq(grant)
    return grant, granted
