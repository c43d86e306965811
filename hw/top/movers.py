"""The memory movers: AXI4 master engines between external memory and streams.

A unit's operands live in external memory at the addresses its descriptor
names; the movers turn ``(address, length)`` requests into AXI4 bursts and
the bursts into streams, and back:

:class:`ReadMover`
    takes requests on ``req``, reads them with AR bursts and streams the
    bytes out on ``data``, one beat of the bus width at a time, ``last`` on a
    request's final beat (:class:`Repack` re-packs them to the lanes a unit
    takes);
:class:`WriteMover`
    takes requests on ``req`` and their bytes on ``data``, writes them with
    AW/W bursts (byte strobes for a ragged tail) and waits for every B.

Both split a request with :class:`BurstSplitter`: INCR bursts of the full
bus width, at most 256 beats, never crossing a 4 KiB boundary (AXI4's rule).
At most ``max_outstanding`` bursts are in flight (AR issued and R not all
back; AW issued and B not back). Addresses are 64 bits.

Requests (the ``req`` payload, :func:`request_layout`): ``addr`` the byte
address of the first byte, aligned to the bus width (the compiler aligns every
buffer so); ``length`` in bytes, at least 1; the last byte below ``2**64``.
Beat ``k`` of a request holds its bytes ``k*B .. k*B+B-1`` (``B`` bytes of the
bus) in byte lanes ``0 .. B-1``. The read mover zeroes the lanes of a ragged
last beat past the request's end; the write mover writes only the request's
bytes (``wstrb``).

Errors (:class:`MoverError`, the ``error`` output): a request that breaks the
rules above is taken and skipped (no AXI transaction, no data beat consumed
or produced). An SLVERR or DECERR response fails its request: the read mover
still takes every beat of the bursts it issued (AXI requires it) but forwards
none of the request's beats from the failed one on, so the request ends
without a ``last``; the write mover has written the other bursts. Either way
``error`` holds the code until the next request is taken, and ``failures``
counts failed requests (each once); the mover stays usable.

A request is taken as its predecessor's last burst is issued, while that
one's data may still be in flight: requests follow each other without a gap
on the bus. ``busy`` is a true idle indication: low only when no request is
being split, no burst is in flight, no beat is owed and no failure is still
being counted. :func:`read_cycles` and
:func:`write_cycles` are the exact cost models (a memory answering with fixed
latencies, streams without gaps), checked against simulation in
``tests/test_sim_movers.py``.

The AXI ports are records (:class:`AXI4ReadSignature`,
:class:`AXI4WriteSignature`, the AXI names in lower case); a top that is a
Vitis RTL kernel flattens them into ``m_axi_<name>_araddr``... with
:func:`axi_members` and :func:`connect_flat`, as :class:`MemoryPort` does (a
read and a write mover on one ``m_axi`` port).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

__all__ = ["MoverError", "AxiResp", "ADDR_WIDTH", "PAGE_BYTES", "MAX_BURST", "DATA_WIDTHS",
           "AXI4ReadSignature", "AXI4WriteSignature", "request_layout", "beat_layout",
           "burst_layout", "BurstSplitter", "ReadMover", "WriteMover", "bursts",
           "read_cycles", "write_cycles", "axi_members", "connect_flat", "MemoryPort", "Repack"]

ADDR_WIDTH = 64
PAGE_BYTES = 4096     # no INCR burst crosses this boundary (AXI4)
MAX_BURST = 256       # beats of an INCR burst (AXI4)
DATA_WIDTHS = (32, 64, 128, 256, 512, 1024)


class AxiResp(enum.Enum, shape=2):
    """AXI4 RRESP / BRESP."""

    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


class MoverError(enum.Enum, shape=3):
    """Why the mover's most recent failed request failed (its ``error`` output)."""

    NONE = 0
    MISALIGNED = 1   # the address is not a multiple of the bus width in bytes
    LENGTH = 2       # a length of 0, or a last byte at or past 2**64
    SLVERR = 3       # the memory answered SLVERR
    DECERR = 4       # the memory answered DECERR


def _check_widths(data_width, max_outstanding, length_width):
    if data_width not in DATA_WIDTHS:
        raise TypeError(f"Data width must be one of {DATA_WIDTHS}, not {data_width!r}")
    if not isinstance(max_outstanding, int) or isinstance(max_outstanding, bool) \
            or max_outstanding < 1:
        raise TypeError(f"Outstanding bursts must be a positive integer, not {max_outstanding!r}")
    if not isinstance(length_width, int) or isinstance(length_width, bool) \
            or not 1 <= length_width <= ADDR_WIDTH:
        raise TypeError(f"Length width must be an integer in [1, {ADDR_WIDTH}], "
                        f"not {length_width!r}")


# Interfaces --------------------------------------------------------------------
class AXI4ReadSignature(wiring.Signature):
    """The AR and R channels of an AXI4 master (the master's view: ``Out`` drives).

    Parameters
    ----------
    data_width : int
        Bits of ``rdata``.
    """

    def __init__(self, data_width):
        self._data_width = data_width
        super().__init__({
            "arid": Out(1), "araddr": Out(ADDR_WIDTH), "arlen": Out(8), "arsize": Out(3),
            "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
            "rid": In(1), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return type(other) is type(self) and other.data_width == self.data_width

    def __repr__(self):
        return f"AXI4ReadSignature({self._data_width})"


class AXI4WriteSignature(wiring.Signature):
    """The AW, W and B channels of an AXI4 master (the master's view)."""

    def __init__(self, data_width):
        self._data_width = data_width
        super().__init__({
            "awid": Out(1), "awaddr": Out(ADDR_WIDTH), "awlen": Out(8), "awsize": Out(3),
            "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(1), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        })

    @property
    def data_width(self):
        return self._data_width

    def __eq__(self, other):
        return type(other) is type(self) and other.data_width == self.data_width

    def __repr__(self):
        return f"AXI4WriteSignature({self._data_width})"


def request_layout(length_width=32):
    """A mover's request: the byte address of the first byte and the length in bytes."""
    return data.StructLayout({"addr": unsigned(ADDR_WIDTH), "length": unsigned(length_width)})


def beat_layout(data_width):
    """A beat of the read mover's output: ``data`` (lane ``k`` in bits ``8k..``), the
    request's ``last`` beat, and ``bytes``: how many lanes hold the request's bytes
    (all of them but on a ragged last beat)."""
    nbytes = data_width // 8
    return data.StructLayout({"data": unsigned(data_width), "last": unsigned(1),
                              "bytes": range(1, nbytes + 1)})


def burst_layout(data_width):
    """One burst of a request: address, ``len`` (beats - 1, as AXI's ``AxLEN``), the
    request's ``last`` burst, and ``tail``: the bytes of the request's last beat
    (0: all of them)."""
    lane_bits = (data_width // 8 - 1).bit_length()
    return data.StructLayout({"addr": unsigned(ADDR_WIDTH), "len": unsigned(8),
                              "last": unsigned(1), "tail": unsigned(max(1, lane_bits))})


def _fifo_layout(data_width):
    """What a mover keeps per burst in flight: ``len``, ``last``, ``tail``."""
    lanes = burst_layout(data_width)
    return data.StructLayout({"len": lanes["len"].shape, "last": lanes["last"].shape,
                              "tail": lanes["tail"].shape})


# The burst splitter ------------------------------------------------------------
class BurstSplitter(wiring.Component):
    """Splits ``(address, length)`` requests into AXI4 INCR bursts.

    A burst is as long as it may be: up to the request's end, 256 beats and the
    next 4 KiB boundary. A request is taken in the cycle its predecessor's last
    burst is taken (or when idle); its first burst is offered in the next cycle,
    and one burst a cycle follows while ``burst`` is ready.

    Parameters
    ----------
    data_width : int
        Bits of the bus (one of :data:`DATA_WIDTHS`).
    length_width : int
        Bits of a request's length.

    Attributes
    ----------
    req : In(stream.Signature(request_layout(length_width)))
    burst : Out(stream.Signature(burst_layout(data_width)))
    reject : Out(MoverError)
        For one cycle after a request that breaks the rules is taken (and
        skipped): why; ``NONE`` otherwise.
    taken : Out(1)
        A request was taken (rejected or not) in this cycle.
    busy : Out(1)
        A request is being split.
    """

    def __init__(self, data_width=128, *, length_width=32):
        try:
            _check_widths(data_width, 1, length_width)
        except TypeError:
            self._MustUse__silence = True
            raise
        self._data_width = data_width
        self._length_width = length_width
        super().__init__({
            "req": In(stream.Signature(request_layout(length_width))),
            "burst": Out(stream.Signature(burst_layout(data_width))),
            "reject": Out(MoverError),
            "taken": Out(1),
            "busy": Out(1),
        })

    @property
    def data_width(self):
        return self._data_width

    def elaborate(self, platform):
        m = Module()
        nbytes = self._data_width // 8
        s = (nbytes - 1).bit_length()           # log2 of the bytes of a beat
        beats_width = self._length_width - s + 1

        addr = Signal(ADDR_WIDTH)
        left = Signal(beats_width)               # beats of the request not yet in a burst
        tail = Signal.like(self.burst.payload.tail)
        active = Signal()

        # Beats up to the 4 KiB boundary (the address is aligned to the beat).
        to_page = Signal(range(PAGE_BYTES // nbytes + 1))
        m.d.comb += to_page.eq(PAGE_BYTES // nbytes - addr[s:12])
        cap = Signal(range(MAX_BURST + 1))
        m.d.comb += cap.eq(Mux(to_page < MAX_BURST, to_page, MAX_BURST))
        beats = Signal(range(MAX_BURST + 1))
        m.d.comb += beats.eq(Mux(left < cap, left, cap))
        final = Signal()
        m.d.comb += final.eq(left == beats)

        m.d.comb += [
            self.burst.valid.eq(active),
            self.burst.payload.addr.eq(addr),
            self.burst.payload.len.eq(beats - 1),
            self.burst.payload.last.eq(final),
            self.burst.payload.tail.eq(tail),
        ]
        done = Signal()
        m.d.comb += done.eq(self.burst.valid & self.burst.ready & final)
        with m.If(self.burst.valid & self.burst.ready):
            m.d.sync += [addr.eq(addr + (beats << s)), left.eq(left - beats)]
            with m.If(final):
                m.d.sync += active.eq(0)

        # A request is taken when no request is split, or its last burst leaves now.
        p = self.req.payload
        m.d.comb += [self.req.ready.eq(~active | done),
                     self.taken.eq(self.req.valid & self.req.ready),
                     self.busy.eq(active)]
        code = Signal(MoverError)
        end = Signal(ADDR_WIDTH + 1)
        m.d.comb += end.eq(p.addr + p.length - 1)
        if s:
            with m.If(p.addr[:s] != 0):
                m.d.comb += code.eq(MoverError.MISALIGNED)
        with m.If((p.length == 0) | end[ADDR_WIDTH]):
            m.d.comb += code.eq(MoverError.LENGTH)
        m.d.sync += self.reject.eq(MoverError.NONE)
        with m.If(self.taken):
            m.d.sync += self.reject.eq(code)
            with m.If(code == MoverError.NONE):
                m.d.sync += [addr.eq(p.addr), left.eq((p.length + nbytes - 1) >> s),
                             tail.eq(p.length[:s] if s else 0), active.eq(1)]
        return m


def _tail_mask(tail, nbytes):
    """Per byte lane: inside a last beat of ``tail`` bytes (0: every lane)."""
    return Cat(*[(tail == 0) | (k < tail) for k in range(nbytes)])


def _resp_error(resp):
    return Mux(resp == AxiResp.DECERR, MoverError.DECERR, MoverError.SLVERR)


class _Mover(wiring.Component):
    """What both movers share: parameters, the splitter, ``error`` and ``failures``."""

    def __init__(self, data_width, max_outstanding, length_width, members):
        try:
            _check_widths(data_width, max_outstanding, length_width)
        except TypeError:
            self._MustUse__silence = True  # never elaborated: no unused-elaboratable warning
            raise
        self._data_width = data_width
        self._max_outstanding = max_outstanding
        self._length_width = length_width
        super().__init__({
            "req": In(stream.Signature(request_layout(length_width))),
            **members,
            "error": Out(MoverError),
            "failures": Out(16),
            "busy": Out(1),
        })

    @property
    def data_width(self):
        return self._data_width

    @property
    def max_outstanding(self):
        return self._max_outstanding

    @property
    def length_width(self):
        return self._length_width

    def _splitter(self, m):
        split = m.submodules.split = BurstSplitter(self._data_width,
                                                  length_width=self._length_width)
        wiring.connect(m, wiring.flipped(self.req), split.req)
        return split

    def _report(self, m, split, fail, code):
        """``error`` and ``failures`` from the splitter's rejections and ``fail``
        (a request failed now, with ``code``). Returns the signal that a rejection
        is being counted (part of ``busy``: the count lands as ``busy`` falls)."""
        rejected = Signal()
        m.d.comb += rejected.eq(split.reject != MoverError.NONE)
        m.d.sync += self.failures.eq(self.failures + rejected + fail)
        with m.If(split.taken):
            m.d.sync += self.error.eq(MoverError.NONE)
        with m.If(rejected):
            m.d.sync += self.error.eq(split.reject)
        with m.If(fail):
            m.d.sync += self.error.eq(code)
        return rejected


class ReadMover(_Mover):
    """AXI4 master read engine: requests in, their bytes out as beats of the bus.

    See the module's description for the rules of requests and errors.

    Parameters
    ----------
    data_width : int
        Bits of the bus: 128 for a Zynq HP port, 256 or 512 for HBM.
    max_outstanding : int
        Bursts in flight at most (AR issued, not all R beats back).
    length_width : int
        Bits of a request's length.

    Attributes
    ----------
    req : In(stream.Signature(request_layout(length_width)))
    data : Out(stream.Signature(beat_layout(data_width)))
    axi : Out(AXI4ReadSignature(data_width))
    error : Out(MoverError)
    failures : Out(16)
        Failed requests since reset (wrapping).
    busy : Out(1)

    Raises
    ------
    TypeError
        For a data width not in :data:`DATA_WIDTHS`, an outstanding limit that
        is not a positive integer, a length width outside ``1..64``.
    """

    def __init__(self, data_width=128, *, max_outstanding=4, length_width=32):
        super().__init__(data_width, max_outstanding, length_width, {
            "data": Out(stream.Signature(beat_layout(data_width))),
            "axi": Out(AXI4ReadSignature(data_width)),
        })

    def elaborate(self, platform):
        m = Module()
        nbytes = self._data_width // 8
        axi = self.axi
        split = self._splitter(m)

        # Bursts in flight: pushed with AR, popped with the last R beat.
        layout = _fifo_layout(self._data_width)
        flight = m.submodules.flight = SyncFIFO(width=layout.size, depth=self._max_outstanding)
        burst = split.burst.payload
        m.d.comb += [
            axi.arid.eq(0),
            axi.araddr.eq(burst.addr),
            axi.arlen.eq(burst.len),
            axi.arsize.eq((nbytes - 1).bit_length()),
            axi.arburst.eq(1),                         # INCR
            axi.arvalid.eq(split.burst.valid & flight.w_rdy),
            split.burst.ready.eq(axi.arready & flight.w_rdy),
            flight.w_data.eq(Cat(burst.len, burst.last, burst.tail)),
            flight.w_en.eq(axi.arvalid & axi.arready),
        ]

        # R: forwarded as they come, or taken and dropped once the request failed.
        info = data.View(layout, flight.r_data)
        bad = Signal()                                # SLVERR or DECERR (rresp only when valid)
        m.d.comb += bad.eq(axi.rvalid & axi.rresp[1])
        dropping = Signal()                           # the request in R failed
        forward = Signal()
        m.d.comb += forward.eq(~dropping & ~bad)
        request_end = Signal()
        m.d.comb += request_end.eq(axi.rlast & info.last)
        mask = _tail_mask(info.tail, nbytes)
        m.d.comb += [
            self.data.valid.eq(axi.rvalid & forward),
            self.data.payload.last.eq(request_end),
            self.data.payload.bytes.eq(Mux(request_end & (info.tail != 0), info.tail, nbytes)),
            self.data.payload.data.eq(Cat(*[
                Mux(~request_end | mask[k], axi.rdata[8 * k:8 * k + 8], 0)
                for k in range(nbytes)])),
            axi.rready.eq(self.data.ready | dropping | bad),
        ]
        taken = Signal()
        m.d.comb += taken.eq(axi.rvalid & axi.rready)
        m.d.comb += flight.r_en.eq(taken & axi.rlast)
        fail = Signal()
        m.d.comb += fail.eq(taken & bad & ~dropping)
        with m.If(taken & bad):
            m.d.sync += dropping.eq(1)
        with m.If(taken & request_end):
            m.d.sync += dropping.eq(0)
        rejecting = self._report(m, split, fail, _resp_error(axi.rresp))

        m.d.comb += self.busy.eq(split.busy | rejecting | flight.r_rdy | dropping)
        return m


class WriteMover(_Mover):
    """AXI4 master write engine: requests and their bytes in, AW/W bursts out.

    ``data`` carries each request's bytes as beats of the bus width, in
    request order (``ceil(length / B)`` beats a request; the lanes of a ragged
    last beat past the end are not written). W beats of a burst follow its AW.
    See the module's description for the rules of requests and errors.

    Parameters
    ----------
    data_width, max_outstanding, length_width
        As :class:`ReadMover`; here a burst is in flight from AW to B.

    Attributes
    ----------
    req : In(stream.Signature(request_layout(length_width)))
    data : In(stream.Signature(data_width))
    axi : Out(AXI4WriteSignature(data_width))
    error, failures, busy
        As :class:`ReadMover`; ``busy`` falls after the last B.
    """

    def __init__(self, data_width=128, *, max_outstanding=4, length_width=32):
        super().__init__(data_width, max_outstanding, length_width, {
            "data": In(stream.Signature(data_width)),
            "axi": Out(AXI4WriteSignature(data_width)),
        })

    def elaborate(self, platform):
        m = Module()
        nbytes = self._data_width // 8
        axi = self.axi
        split = self._splitter(m)

        # A burst is pushed into both FIFOs with its AW: `beats` until its W
        # beats are sent, `flight` until its B is back.
        layout = _fifo_layout(self._data_width)
        beats = m.submodules.beats = SyncFIFO(width=layout.size, depth=self._max_outstanding)
        flight = m.submodules.flight = SyncFIFO(width=1, depth=self._max_outstanding)
        burst = split.burst.payload
        room = Signal()
        m.d.comb += room.eq(beats.w_rdy & flight.w_rdy)
        m.d.comb += [
            axi.awid.eq(0),
            axi.awaddr.eq(burst.addr),
            axi.awlen.eq(burst.len),
            axi.awsize.eq((nbytes - 1).bit_length()),
            axi.awburst.eq(1),                         # INCR
            axi.awvalid.eq(split.burst.valid & room),
            split.burst.ready.eq(axi.awready & room),
            beats.w_data.eq(Cat(burst.len, burst.last, burst.tail)),
            beats.w_en.eq(axi.awvalid & axi.awready),
            flight.w_data.eq(burst.last),
            flight.w_en.eq(axi.awvalid & axi.awready),
        ]

        # W: the data stream, counted into the burst at the head of `beats`.
        info = data.View(layout, beats.r_data)
        count = Signal(8)
        wlast = Signal()
        m.d.comb += wlast.eq(count == info.len)
        all_lanes = Const((1 << nbytes) - 1, nbytes)
        m.d.comb += [
            axi.wvalid.eq(beats.r_rdy & self.data.valid),
            self.data.ready.eq(beats.r_rdy & axi.wready),
            axi.wdata.eq(self.data.payload),
            axi.wlast.eq(wlast),
            axi.wstrb.eq(Mux(wlast & info.last, _tail_mask(info.tail, nbytes), all_lanes)),
        ]
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += count.eq(Mux(wlast, 0, count + 1))
        m.d.comb += beats.r_en.eq(axi.wvalid & axi.wready & wlast)

        # B: one per burst; a request fails once, on its first bad response.
        failed = Signal()                              # the request in B already failed
        bad = Signal()
        m.d.comb += [axi.bready.eq(1), bad.eq(axi.bresp[1]),
                     flight.r_en.eq(axi.bvalid)]
        fail = Signal()
        m.d.comb += fail.eq(axi.bvalid & bad & ~failed)
        with m.If(axi.bvalid):
            m.d.sync += failed.eq(Mux(flight.r_data[0], 0, failed | bad))
        rejecting = self._report(m, split, fail, _resp_error(axi.bresp))

        m.d.comb += self.busy.eq(split.busy | rejecting | beats.r_rdy | flight.r_rdy)
        return m


class Repack(wiring.Component):
    """Re-packs a byte stream from beats of ``in_bytes`` to beats of ``out_bytes``
    (the read mover's bus beats to the ``cols`` int8 lanes of the linear kernel's
    weights, say), either way and in any ratio.

    Bytes keep their order: an input beat holds ``bytes`` of them in its low
    lanes; each output beat is ``out_bytes`` of them, the one with a request's
    final byte has ``last`` (its lanes past that byte are 0). Throughput is one
    output beat a cycle when ``in_bytes >= out_bytes``, one input beat a cycle
    otherwise.

    Parameters
    ----------
    in_bytes, out_bytes : int
        Lanes of a beat in and out.

    Attributes
    ----------
    i : In(stream.Signature(beat_layout(8 * in_bytes)))
    o : Out(stream.Signature(beat_layout(8 * out_bytes)))
    busy : Out(1)
        Bytes are held.
    """

    def __init__(self, in_bytes, out_bytes):
        for what, value in (("Input", in_bytes), ("Output", out_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self._MustUse__silence = True
                raise TypeError(f"{what} bytes must be a positive integer, not {value!r}")
        self._in, self._out = in_bytes, out_bytes
        super().__init__({
            "i": In(stream.Signature(beat_layout(8 * in_bytes))),
            "o": Out(stream.Signature(beat_layout(8 * out_bytes))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n_in, n_out = self._in, self._out
        size = n_in + n_out - 1                    # the most bytes held
        held = Signal(size * 8)
        level = Signal(range(size + 1))
        ending = Signal()                          # the request's last byte is held

        # Out: a full beat, or what is left of the request (zero-padded).
        full = Signal()
        m.d.comb += full.eq(level >= n_out)
        final = Signal()
        m.d.comb += final.eq(ending & (level <= n_out))
        m.d.comb += [
            self.o.valid.eq(full | (ending & (level != 0))),
            self.o.payload.data.eq(held[:8 * n_out]),
            self.o.payload.last.eq(final),
            self.o.payload.bytes.eq(Mux(final, level, n_out)),
        ]
        taken = Signal()
        m.d.comb += taken.eq(self.o.valid & self.o.ready)
        kept = Signal(size * 8)
        kept_level = Signal(range(size + 1))
        m.d.comb += [kept.eq(Mux(taken, held >> (8 * n_out), held)),
                     kept_level.eq(Mux(taken, Mux(final, 0, level - n_out), level))]

        # In: when the bytes held after this cycle's output leave room for a beat.
        m.d.comb += self.i.ready.eq(~ending & (kept_level < n_out))
        got = Signal()
        m.d.comb += got.eq(self.i.valid & self.i.ready)
        fresh = Signal(n_in * 8)
        mask = Cat(*[Mux(k < self.i.payload.bytes, 0xFF, 0x00) for k in range(n_in)])
        m.d.comb += fresh.eq(self.i.payload.data[:8 * n_in] & mask)
        with m.If(got):
            m.d.sync += [held.eq(kept | (fresh << (kept_level * 8))[:size * 8]),
                         level.eq(kept_level + self.i.payload.bytes),
                         ending.eq(self.i.payload.last)]
        with m.Else():
            m.d.sync += [held.eq(kept), level.eq(kept_level)]
            with m.If(taken & final):
                m.d.sync += ending.eq(0)
        m.d.comb += self.busy.eq(level != 0)
        return m


# Cost model --------------------------------------------------------------------
def bursts(addr, length, data_width):
    """The bursts of one request as ``(address, beats)``: :class:`BurstSplitter`'s rule."""
    nbytes = data_width // 8
    left = -(-length // nbytes)
    out = []
    while left:
        beats = min(left, MAX_BURST, (PAGE_BYTES - addr % PAGE_BYTES) // nbytes)
        out.append((addr, beats))
        addr += beats * nbytes
        left -= beats
    return out


def _issue_times(requests, data_width):
    """Per burst: (beats, the cycle its AR/AW is offered at the earliest, request index).
    Cycle 0 is the first request's acceptance; the requests follow back to back."""
    out, cycle = [], 0
    for r, (addr, length) in enumerate(requests):
        for _, beats in bursts(addr, length, data_width):
            cycle += 1
            out.append((beats, cycle, r))
    return out


def read_cycles(requests, data_width, max_outstanding, *, latency):
    """Cycles of :class:`ReadMover` from the first request's acceptance to the last
    beat out, for good ``requests`` ``[(addr, length), ...]`` offered back to back,
    ``data`` always ready, and a memory that takes an AR every cycle and sends
    the first beat of a burst ``latency`` cycles after its AR (or right after the
    previous burst's last beat, if later), one beat a cycle.

    The mover's rules: a request's first burst is offered the cycle after the
    request is taken, and a request is taken in the cycle its predecessor's last
    burst is; one AR a cycle; burst ``j`` waits for a free slot, which burst
    ``j - max_outstanding`` frees the cycle after its last beat.
    """
    ar, last = [], []
    for j, (beats, offered, _) in enumerate(_issue_times(requests, data_width)):
        t = offered if not ar else max(offered, ar[-1] + 1)
        if j >= max_outstanding:
            t = max(t, last[j - max_outstanding] + 1)
        ar.append(t)
        first = t + latency if not last else max(t + latency, last[-1] + 1)
        last.append(first + beats - 1)
    return last[-1] if last else 0


def write_cycles(requests, data_width, max_outstanding, *, latency):
    """Cycles of :class:`WriteMover` from the first request's acceptance to the cycle
    ``busy`` falls (the one after the last B), for good ``requests`` offered back to back,
    ``data`` never starved, and a memory that takes AW and W every cycle and
    answers a burst's B ``latency`` cycles after its last W beat (one B a cycle).

    The mover's rules: AWs as :func:`read_cycles`' ARs; a burst's first W beat the
    cycle after its AW (or after the previous burst's last W beat); burst ``j``
    waits for a free slot, which burst ``j - max_outstanding`` frees the cycle
    after its B.
    """
    aw, w_last, b = [], [], []
    for j, (beats, offered, _) in enumerate(_issue_times(requests, data_width)):
        t = offered if not aw else max(offered, aw[-1] + 1)
        if j >= max_outstanding:
            t = max(t, b[j - max_outstanding] + 1)
        aw.append(t)
        first = t + 1 if not w_last else max(t + 1, w_last[-1] + 1)
        w_last.append(first + beats - 1)
        b.append(w_last[-1] + latency if not b else max(w_last[-1] + latency, b[-1] + 1))
    return b[-1] + 1 if b else 0


# Flattening for a Vitis RTL kernel ----------------------------------------------
def axi_members(name, signature):
    """The members ``m_axi_<name>_<signal>`` of an AXI4 port (of a top's signature),
    as a Vitis RTL kernel names them, from the record's ``signature``
    (:class:`AXI4ReadSignature`, :class:`AXI4WriteSignature`)."""
    return {f"m_axi_{name}_{signal}": member for signal, member in signature.members.items()}


def connect_flat(m, top, name, record):
    """Join the flat members of ``top`` (made with :func:`axi_members`) and the
    AXI record ``record`` of a mover (its master side)."""
    for signal, member in record.signature.members.items():
        flat = getattr(top, f"m_axi_{name}_{signal}")
        inner = getattr(record, signal)
        if member.flow == Out:
            m.d.comb += flat.eq(inner)
        else:
            m.d.comb += inner.eq(flat)


class MemoryPort(wiring.Component):
    """A read and a write mover on one AXI4 master port, flattened as a Vitis RTL
    kernel names it: ``m_axi_<name>_araddr``, ... (the port's five channels).

    Parameters
    ----------
    name : str
        The port's name (``gmem``).
    data_width, max_outstanding, length_width
        Of both movers (:class:`ReadMover`).

    Attributes
    ----------
    rd_req, rd_data, rd_error, rd_failures, rd_busy
        The read mover's ``req``, ``data``, ``error``, ``failures``, ``busy``.
    wr_req, wr_data, wr_error, wr_failures, wr_busy
        The write mover's.
    m_axi_<name>_* : the AXI4 port
    """

    def __init__(self, name="gmem", data_width=128, *, max_outstanding=4, length_width=32):
        if not isinstance(name, str) or not name.isidentifier():
            self._MustUse__silence = True
            raise TypeError(f"Port name must be an identifier, not {name!r}")
        self._name = name
        self._movers = {
            "rd": ReadMover(data_width, max_outstanding=max_outstanding,
                            length_width=length_width),
            "wr": WriteMover(data_width, max_outstanding=max_outstanding,
                             length_width=length_width),
        }
        members = {}
        for prefix, mover in self._movers.items():
            for member, port in mover.signature.members.items():
                if member != "axi":
                    members[f"{prefix}_{member}"] = port
            members.update(axi_members(name, mover.signature.members["axi"].signature))
        super().__init__(members)

    @classmethod
    def from_config(cls, hw):
        """The ``gmem`` port of a hardware instance: its ``bus_width`` and ``max_outstanding``."""
        return cls("gmem", hw.bus_width, max_outstanding=hw.max_outstanding)

    def elaborate(self, platform):
        m = Module()
        for prefix, mover in self._movers.items():
            m.submodules[prefix] = mover
            for member, port in mover.signature.members.items():
                if member == "axi":
                    connect_flat(m, self, self._name, mover.axi)
                elif member in ("req", "data"):
                    outer = getattr(self, f"{prefix}_{member}")
                    if port.flow == In:
                        wiring.connect(m, wiring.flipped(outer), getattr(mover, member))
                    else:
                        wiring.connect(m, getattr(mover, member), wiring.flipped(outer))
                else:
                    m.d.comb += getattr(self, f"{prefix}_{member}").eq(getattr(mover, member))
        return m
