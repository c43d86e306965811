"""The LINEAR engine: one linear job on the linear kernel, its operands moved from memory
and its result back.

A job (:func:`~moevit.hw.top.ports.linear_job_layout`) is a
:class:`~moevit.hw.program.descriptor.LinearDescriptor` (``op``) and two row modes for
the MoE unit's expert-by-expert reordering. The engine hands ``op`` to one
:class:`~moevit.hw.units.linear.LinearKernel` and feeds its streams, each from its own
read channel:

``x`` (channel 0)
    :class:`XTiler`: one request per token row (``in_features`` bytes at ``x_addr +
    row(j) * in_features``, ``row(j)`` = ``x_index.row`` of ``j`` under ``x_gather``,
    else ``j``; with ``hw.x_by_words`` and x in the on-chip window one request per row
    and bus word, word-major) into a double-buffered tile buffer of ``rows`` token rows,
    read out as the kernel's transposed beats (lane ``r`` of beat ``(tt, i)`` is
    ``x[tt*rows + r, i]``; with ``hw.wide_x`` a beat holds ``chain_depth`` features of
    each row, out of the same word) while the next tile fills.
``w``, ``chan`` (channels 1, 2)
    :class:`Fetch`: the bytes at ``w_addr`` and ``chan_addr`` read ahead into a FIFO
    and re-packed to the kernel's lanes: they stream as the kernel takes them.
``res`` (channel 3, when ``op.residual``)
    :class:`ResidualReader`: the dense skip tensor (``tokens x out_features`` at
    ``res_addr``) in the kernel's order, one request per out tile and token
    (``cols`` bytes at ``res_addr + t*out_features + ot*cols``), read ahead into a
    FIFO.
``y`` (the write channel)
    :class:`YWriter`: out-tile-major beats to row-major rows, one request per
    out tile and token (at ``y_addr + row(t)*out_features + ot*cols``, ``row(t)`` =
    ``y_index.row`` of ``t`` under ``y_scatter``, else ``t``; a ragged last out tile
    writes its valid bytes only). When y fits one out tile and is dense
    (``out_features <= cols``, no ``y_scatter``: a MoE gate's logits) its rows are
    contiguous: one request, the beats' bytes packed back to back.

Bus-word rule (``B`` = ``hw.bus_width / 8`` bytes; the movers take aligned
addresses only). The compiler aligns every region; the engine relies on:

* ``cols`` a multiple of ``B`` (checked when the engine is made: a
  :class:`~moevit.errors.ConfigError` for a bus wider than that);
* ``x_addr``, ``w_addr``, ``chan_addr``, ``y_addr`` and ``in_features`` multiples
  of ``B`` (every row of x starts on a bus word);
* with ``residual``: ``res_addr`` and ``out_features`` multiples of ``B``;
* unless y is one contiguous run (above): ``out_features`` a multiple of ``B``.

A job that breaks them is refused with :attr:`Fault.ALIGN
<moevit.hw.program.descriptor.Fault>` before any request (:func:`check_job` is the
same rule for the compiler and the MoE engine's jobs); one the kernel refuses
ends with the kernel's fault. Either way ``done`` follows at once and ``error``
holds the code until the next job.

No read channel ever waits on the kernel: ``x`` rows are requested only when the
tile buffer has room for them, the other channels only when their FIFO has room
for the whole request (:class:`Prefetch`). So the channels can share one AXI4
master whose R beats return in request order (the top's interconnect) without
one channel's beats holding another's: the kernel may wait for ``x`` while its
weight banks are full.

``done`` is the cycle the last byte of y is handed to the write channel.
Memory read errors (SLVERR/DECERR) are not handled: the movers drop the
failed request's beats and the job never ends (the top's time-out catches it).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moevit.errors import ConfigError
from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import DescriptorError, Fault, LinearDescriptor
from moevit.hw.top.movers import ADDR_WIDTH, PAGE_BYTES, Repack, beat_layout, request_layout
from moevit.hw.top.ports import (IndexPort, ReadPort, WritePort, engine_members,
                                 linear_job_layout)
from moevit.hw.units.linear import LinearKernel, chan_layout, lanes_layout, output_layout

__all__ = ["LinearEngine", "XTiler", "Prefetch", "Fetch", "ResidualReader", "YWriter",
           "check_job", "pack_job", "alignment_rules", "ahead_layout", "weight_ranges"]

CHAN_BYTES = 8   # one chan beat: a little-endian u64 (moevit.hw.program.layout.pack_chan)


def alignment_rules(hw: HwConfig, op, x_gather, y_scatter):
    """The engine's bus-word rule as ``(what, value, broken)`` triples; ``op`` and the
    flags are Python ints (a :class:`LinearDescriptor`) or Amaranth values (the job's
    fields), so the hardware check and :func:`check_job` are one rule."""
    nbytes = hw.bus_width // 8
    residual = op.residual != 0
    rows_of_y = (op.out_features > hw.cols) | (y_scatter != 0)
    return [
        ("x_addr", op.x_addr, op.x_addr % nbytes != 0),
        ("w_addr", op.w_addr, op.w_addr % nbytes != 0),
        ("chan_addr", op.chan_addr, op.chan_addr % nbytes != 0),
        ("y_addr", op.y_addr, op.y_addr % nbytes != 0),
        ("in_features (a row of x)", op.in_features, op.in_features % nbytes != 0),
        ("res_addr", op.res_addr, residual & (op.res_addr % nbytes != 0)),
        ("out_features (a row of the skip tensor)", op.out_features,
         residual & (op.out_features % nbytes != 0)),
        ("out_features (a row of y)", op.out_features,
         rows_of_y & (op.out_features % nbytes != 0)),
    ]


def ahead_layout():
    """The weight and constant bytes of a linear job (``w`` and ``chan``): what the
    engine's ``ahead`` stream names for the job after the current one."""
    return data.StructLayout({"w_addr": unsigned(32), "w_length": unsigned(32),
                              "chan_addr": unsigned(32), "chan_length": unsigned(32)})


def weight_ranges(hw: HwConfig, *, w_addr, chan_addr, in_features, out_tiles) -> dict:
    """The fields of :func:`ahead_layout` of a job (Python ints or Amaranth values)."""
    return {"w_addr": w_addr, "w_length": out_tiles * in_features * hw.cols,
            "chan_addr": chan_addr, "chan_length": out_tiles * hw.cols * CHAN_BYTES}


def check_job(desc: LinearDescriptor, *, x_gather=False, y_scatter=False) -> None:
    """Raise :class:`DescriptorError` when the engine would refuse the job with
    ``Fault.ALIGN`` (the module's bus-word rule), naming the first field that breaks it."""
    hw = desc.hw
    for what, value, broken in alignment_rules(hw, desc, int(x_gather), int(y_scatter)):
        if broken:
            raise DescriptorError(
                f"Linear job {what} {value} is not a multiple of the {hw.bus_width // 8} "
                f"bytes of the {hw.bus_width}-bit bus")


def _check_hw(component, hw):
    if not isinstance(hw, HwConfig):
        component._MustUse__silence = True
        raise TypeError(f"Hardware config must be a HwConfig, not {hw!r}")


class XTiler(wiring.Component):
    """Token rows of x from memory to the kernel's ``x`` beats (see the module).

    The tile buffer holds two tiles of ``rows`` rows of ``max_in`` bytes, one bus
    word per address and row lane. A row is requested only when its half of the
    buffer is free, so the read channel is never held for room. With
    ``hw.x_by_words`` and x in the on-chip window (``window_at`` <= ``x_addr`` <
    ``window_end``) each request is one bus word, a tile's word 0 of every row
    first, and a feature's beat goes out once its word of every row is in. Lanes of the
    rows past ``tokens`` in a ragged last tile hold stale bytes (the kernel
    ignores them).

    Members: ``job``, ``start`` (one cycle: begin the job in ``job``), ``rd``,
    ``index`` (``at`` the row asked, for ``x_gather``), ``x``, ``window_at``,
    ``window_end`` (the on-chip window's addresses; none: both 0), ``busy``.
    """

    DEPTH = 4   # beats between the buffer's read port and the kernel

    def __init__(self, hw: HwConfig):
        _check_hw(self, hw)
        self._hw = hw
        super().__init__({
            "job": In(linear_job_layout()), "start": In(1),
            "rd": Out(ReadPort(hw.bus_width)),
            "index": Out(IndexPort(hw.max_tokens)),
            "x": Out(stream.Signature(lanes_layout(hw.rows * hw.x_features))),
            "window_at": In(32), "window_end": In(32),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        hw = self._hw
        R, B = hw.rows, hw.bus_width // 8
        words = -(-hw.max_in // B)               # bus words of the longest row
        m = Module()
        op = self.job.op
        rd = self.rd

        buf = m.submodules.buf = Memory(shape=unsigned(8 * B * R), depth=2 * words, init=[])
        wp = buf.write_port(granularity=8 * B)
        rp = buf.read_port(transparent_for=())

        out_tiles_done = Signal(16)              # tiles read out of the buffer
        requesting, groups_in, by_word = self._requests(m, op, rd, wp, out_tiles_done, words)
        group = Signal.like(groups_in)           # groups read

        # Beats out: features i .. i + XF - 1 of every lane (XF: hw.x_features, which
        # divides the word's bytes), once their group is in ------------------------
        XF = hw.x_features
        out_on = Signal()
        out_half = Signal()
        out_i = Signal(16)                       # the beat's first feature
        out_word = Signal(range(words))
        out_byte = Signal(range(B))
        fifo = m.submodules.fifo = SyncFIFO(width=8 * R * XF, depth=self.DEPTH)
        inflight = Signal()                      # a read issued last cycle
        select = Signal(range(B // XF))          # the beat's XF bytes in a row's word
        issue = Signal()
        tile_end = Signal()                      # the tile's last beat
        m.d.comb += [
            issue.eq(out_on & (groups_in > group) & (fifo.level + inflight < self.DEPTH)),
            rp.addr.eq(Mux(out_half, words, 0) + out_word),
            tile_end.eq(out_i == op.in_features - 1 if XF == 1
                        else out_i + XF >= op.in_features),
        ]
        m.d.sync += [inflight.eq(issue), select.eq(out_byte >> (XF.bit_length() - 1))]
        with m.If(issue):
            m.d.sync += out_i.eq(out_i + XF)
            with m.If(out_byte == B - XF):
                m.d.sync += [out_byte.eq(0), out_word.eq(out_word + 1)]
                with m.If(by_word | tile_end):   # a group read
                    m.d.sync += group.eq(group + 1)
            with m.Else():
                m.d.sync += out_byte.eq(out_byte + XF)
            with m.If(tile_end):
                # The tile's last read: its half is free for the tile after next.
                m.d.sync += [out_i.eq(0), out_byte.eq(0), out_word.eq(0),
                             out_half.eq(~out_half), out_tiles_done.eq(out_tiles_done + 1)]
                with m.If(out_tiles_done == op.token_tiles - 1):
                    m.d.sync += out_on.eq(0)
        m.d.comb += [
            fifo.w_en.eq(inflight),
            fifo.w_data.eq(Cat(*[rp.data.word_select(r * (B // XF) + select, 8 * XF)
                                 for r in range(R)])),
            self.x.valid.eq(fifo.r_rdy),
            self.x.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.x.ready),
        ]

        with m.If(self.start):
            m.d.sync += [out_on.eq(1), out_half.eq(0), out_i.eq(0), out_word.eq(0),
                         out_byte.eq(0), out_tiles_done.eq(0), group.eq(0)]
        m.d.comb += self.busy.eq(requesting | out_on | inflight | fifo.r_rdy)
        return m

    def _requests(self, m, op, rd, wp, out_tiles_done, words):
        """The requests of x and their beats into the buffer: a whole row each, row j into
        lane j % R of half (j // R) % 2; with ``hw.x_by_words`` and x in the on-chip window
        one bus word each, a tile's word 0 of each of its rows, then word 1, ... (from DRAM
        a word a request would cost a burst a word). Returns ``(requesting, groups in, by
        word)``: a group (the tile whole, or a word of each of its rows) is in with every
        row of its tile."""
        hw = self._hw
        R, B = hw.rows, hw.bus_width // 8
        shift = (B - 1).bit_length()
        row_words = Signal(range(words + 1))      # words of a row: in_features / B
        by_word = Signal()                        # x in the window: a word a request
        m.d.comb += row_words.eq(op.in_features >> shift)
        if hw.x_by_words:
            m.d.comb += by_word.eq((op.x_addr >= self.window_at) & (op.x_addr < self.window_end))
        groups = Mux(by_word, row_words, 1)       # requests a row of a tile

        def tile_rows(first):                     # rows of the tile from row `first`
            left, rows = Signal(16), Signal(range(R + 1))
            m.d.comb += [left.eq(op.tokens - first), rows.eq(Mux(left < R, left, R))]
            return rows

        # Requests: (tile, group, lane), lane fastest.
        req_on = Signal()
        req_first = Signal(16)                    # the tile's first row
        req_tile = Signal(16)
        req_group = Signal(range(words))
        req_lane = Signal(range(R))
        req_rows = tile_rows(req_first)
        m.d.comb += self.index.at.eq(req_first + req_lane)
        row = Mux(self.job.x_gather, self.index.row, req_first + req_lane)
        m.d.comb += [
            rd.req.valid.eq(req_on & (req_tile <= out_tiles_done + 1)),
            rd.req.payload.addr.eq(op.x_addr + row * op.in_features + (req_group << shift)),
            rd.req.payload.length.eq(Mux(by_word, B, op.in_features)),
        ]
        with m.If(rd.req.valid & rd.req.ready):
            m.d.sync += req_lane.eq(req_lane + 1)
            with m.If(req_lane == req_rows - 1):
                m.d.sync += [req_lane.eq(0), req_group.eq(req_group + 1)]
                with m.If(req_group == groups - 1):
                    m.d.sync += [req_group.eq(0), req_tile.eq(req_tile + 1),
                                 req_first.eq(req_first + R)]
                    with m.If(req_first + R >= op.tokens):
                        m.d.sync += req_on.eq(0)

        # Beats in, in the same order: a row's words, or a word of each row in turn.
        in_first = Signal(16)
        in_word = Signal(range(words))
        in_lane = Signal(range(R))
        in_half = Signal()
        groups_in = Signal(range(-(-hw.max_tokens // R) * words + 2))
        in_rows = tile_rows(in_first)
        m.d.comb += [
            rd.data.ready.eq(1),
            wp.addr.eq(Mux(in_half, words, 0) + in_word),
            wp.data.eq(Cat(*[rd.data.payload.data] * R)),
            wp.en.eq(Mux(rd.data.valid, 1 << in_lane, 0)),
        ]
        with m.If(rd.data.valid):
            with m.If(~rd.data.payload.last):
                m.d.sync += in_word.eq(in_word + 1)
            with m.Elif(in_lane != in_rows - 1):
                m.d.sync += [in_lane.eq(in_lane + 1), in_word.eq(Mux(by_word, in_word, 0))]
            with m.Else():
                m.d.sync += [in_lane.eq(0), groups_in.eq(groups_in + 1)]
                with m.If(in_word == row_words - 1):
                    m.d.sync += [in_word.eq(0), in_half.eq(~in_half),
                                 in_first.eq(in_first + R)]
                with m.Else():
                    m.d.sync += in_word.eq(in_word + 1)
        with m.If(self.start):
            m.d.sync += [req_on.eq(1), req_first.eq(0), req_tile.eq(0), req_group.eq(0),
                         req_lane.eq(0), in_first.eq(0), in_word.eq(0), in_lane.eq(0),
                         in_half.eq(0), groups_in.eq(0)]
        return req_on, groups_in, by_word


class Prefetch(wiring.Component):
    """Read requests passed on only when their beats will fit in a FIFO of ``depth`` bus
    beats, and the beats kept there until taken.

    The top's movers share one AXI4 master whose R beats come back in request
    order: a consumer that held its beats would hold every other channel's too
    (the kernel waiting for ``x`` behind ``w`` beats it cannot take yet). Beats
    that are always taken as they come never hold the others.

    Parameters
    ----------
    bus_width : int
    depth : int
        FIFO beats; no request may be longer (it would never be issued).
    out_bytes : int or None
        None: the FIFO holds the bus beats. Else a multiple of the bus bytes: the beats are
        packed into words of ``out_bytes`` (the byte stream whole, whatever the requests)
        before the FIFO, which gives a word a cycle: a consumer may take the bytes faster
        than the bus brings them and catch up after a pause.

    Members: ``req`` (requests, as the read channel's), ``rd``, ``o`` (the bus beats, or
    the words of ``out_bytes`` with ``bytes`` always whole), ``busy``.
    """

    def __init__(self, bus_width, depth, out_bytes=None):
        nbytes = bus_width // 8
        self._pack = 1 if out_bytes is None else out_bytes // nbytes
        if out_bytes is not None and (out_bytes % nbytes or depth < self._pack):
            self._MustUse__silence = True
            raise ValueError(f"Words of {out_bytes} bytes must be whole bus words of "
                             f"{nbytes} bytes, at most the {depth} beats")
        self._bus, self._depth = bus_width, depth
        super().__init__({
            "req": In(stream.Signature(request_layout())),
            "rd": Out(ReadPort(bus_width)),
            "o": Out(stream.Signature(beat_layout(bus_width * self._pack))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        rd, k = self.rd, self._pack
        depth = self._depth // k * k            # bus beats the FIFO's words hold
        lane_bits = (self._bus // 8 - 1).bit_length()
        layout = beat_layout(self._bus * k)
        fifo = m.submodules.fifo = SyncFIFOBuffered(width=layout.size, depth=depth // k)
        reserved = Signal(range(depth + 1))     # beats requested, not yet taken from the FIFO
        beats = Signal(self.req.payload.length.shape().width + 1)
        fits = Signal()
        m.d.comb += [beats.eq((self.req.payload.length + (1 << lane_bits) - 1) >> lane_bits),
                     fits.eq(reserved + beats <= depth)]
        m.d.comb += [rd.req.valid.eq(self.req.valid & fits),
                     rd.req.payload.eq(self.req.payload),
                     self.req.ready.eq(rd.req.ready & fits)]
        issued, popped = Signal(), Signal()
        m.d.comb += [issued.eq(rd.req.valid & rd.req.ready),
                     popped.eq(self.o.valid & self.o.ready)]
        m.d.sync += reserved.eq(reserved + Mux(issued, beats, 0) - Mux(popped, k, 0))
        if k == 1:
            m.d.comb += [fifo.w_data.eq(rd.data.payload.as_value()), fifo.w_en.eq(rd.data.valid),
                         rd.data.ready.eq(fifo.w_rdy)]      # always, by the reservation
        else:
            # (the requests' ends not passed on: one byte stream, no word cut short)
            pack = m.submodules.pack = Repack(self._bus // 8, self._bus // 8 * k)
            word = Signal(layout)
            m.d.comb += [pack.i.valid.eq(rd.data.valid), rd.data.ready.eq(pack.i.ready),
                         pack.i.payload.data.eq(rd.data.payload.data),
                         pack.i.payload.bytes.eq(rd.data.payload.bytes),
                         word.data.eq(pack.o.payload.data), word.bytes.eq(pack.o.payload.bytes),
                         fifo.w_data.eq(word.as_value()), fifo.w_en.eq(pack.o.valid),
                         pack.o.ready.eq(fifo.w_rdy)]       # always, by the reservation
        m.d.comb += [self.o.valid.eq(fifo.r_rdy), self.o.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.o.ready)]
        m.d.comb += self.busy.eq(reserved != 0)
        return m


class Fetch(wiring.Component):
    """``length`` bytes at ``addr`` (a whole number of ``out_bytes``) as beats of
    ``out_bytes`` (a :class:`~moevit.hw.top.movers.Repack` of the bus beats): the
    kernel's ``w`` and ``chan`` streams. Read in requests of ``chunk`` bytes (a multiple
    of ``out_bytes`` and of the bus bytes), cut at each 4 KiB page, through a
    :class:`Prefetch` of ``depth`` beats.

    Members: ``start`` (one cycle: begin reading ``addr``, ``length``), ``addr``,
    ``length``, ``rd``, ``o`` (the beats, without ``last``), ``requesting`` (some of the
    range is not yet requested), ``busy``.
    """

    def __init__(self, bus_width, out_bytes, *, chunk, depth, packed=False):
        nbytes = bus_width // 8
        if (chunk % out_bytes and not packed) or chunk % nbytes or chunk > depth * nbytes:
            self._MustUse__silence = True
            raise ValueError(f"Chunk of {chunk} bytes must be a multiple of {out_bytes} and "
                             f"{nbytes} bytes, at most {depth * nbytes}")
        self._bus, self._out, self._chunk, self._depth = bus_width, out_bytes, chunk, depth
        self._packed = packed
        super().__init__({
            "start": In(1), "addr": In(32), "length": In(32),
            "rd": Out(ReadPort(bus_width)),
            "o": Out(stream.Signature(beat_layout(8 * out_bytes))),
            "requesting": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        chunk = self._chunk
        prefetch = m.submodules.prefetch = Prefetch(self._bus, self._depth,
                                                    self._out if self._packed else None)
        on = Signal()
        # The address as wide as a request's: a range that runs past 2**32 is asked for
        # there (and refused by the relocation), not wrapped onto address 0.
        addr, left = Signal(ADDR_WIDTH), Signal(32)
        req = prefetch.req
        # No request crosses a 4 KiB page, so each is one burst: a chunk across a page
        # would be two, one of them a few beats, and on weights striped over ports
        # (moevit.hw.top.interconnect.ReadStriper, bursts in turn, R in order) such
        # uneven bursts leave ports idle (about 10 % of an expert's weight stream at 16
        # bytes a cycle a port, zcu102-edge-moe).
        to_page = Signal(range(PAGE_BYTES + 1))
        size = Signal(range(max(chunk, PAGE_BYTES) + 1))
        m.d.comb += [to_page.eq(PAGE_BYTES - addr[:PAGE_BYTES.bit_length() - 1]),
                     size.eq(Mux(to_page < chunk, to_page, chunk))]
        m.d.comb += [req.valid.eq(on), req.payload.addr.eq(addr),
                     req.payload.length.eq(Mux(left < size, left, size))]
        with m.If(req.valid & req.ready):
            m.d.sync += [addr.eq(addr + size), left.eq(left - size)]
            with m.If(left <= size):
                m.d.sync += on.eq(0)
        with m.If(self.start):
            m.d.sync += [on.eq(1), addr.eq(self.addr), left.eq(self.length)]
        wiring.connect(m, prefetch.rd, wiring.flipped(self.rd))
        if self._packed:                 # the prefetch's words are the output beats
            wiring.connect(m, prefetch.o, wiring.flipped(self.o))
            m.d.comb += [self.requesting.eq(on), self.busy.eq(on | prefetch.busy)]
            return m
        repack = m.submodules.repack = Repack(self._bus // 8, self._out)
        # Whole output beats: no request's end need flush the repack (a flush costs a
        # cycle a chunk, and the kernel loads a weight bank without a gap).
        m.d.comb += [repack.i.valid.eq(prefetch.o.valid), prefetch.o.ready.eq(repack.i.ready),
                     repack.i.payload.data.eq(prefetch.o.payload.data),
                     repack.i.payload.bytes.eq(prefetch.o.payload.bytes)]
        wiring.connect(m, repack.o, wiring.flipped(self.o))
        m.d.comb += [self.requesting.eq(on), self.busy.eq(on | prefetch.busy | repack.busy)]
        return m


class _Chunks:
    """The (out tile, token) walk of the kernel's output order, one step per call of
    :meth:`step`: ``token``, ``col`` (``ot * cols``), ``width`` (the chunk's valid
    bytes: ``cols``, fewer in a ragged last out tile), ``final``."""

    def __init__(self, m, op, cols, name):
        self.m, self.op, self.cols = m, op, cols
        self.token = Signal(16, name=f"{name}_token")
        self.col = Signal(16, name=f"{name}_col")
        self.width = Signal(range(cols + 1), name=f"{name}_width")
        self.final = Signal(name=f"{name}_final")
        left = Signal(16, name=f"{name}_left")
        m.d.comb += [left.eq(op.out_features - self.col),
                     self.width.eq(Mux(left < cols, left, cols)),
                     self.final.eq((self.token == op.tokens - 1) & (left <= cols))]

    def step(self):
        with self.m.If(self.token == self.op.tokens - 1):
            self.m.d.sync += [self.token.eq(0), self.col.eq(self.col + self.cols)]
        with self.m.Else():
            self.m.d.sync += self.token.eq(self.token + 1)

    def reset(self):
        return [self.token.eq(0), self.col.eq(0)]


class ResidualReader(wiring.Component):
    """The skip tensor (dense, ``tokens x out_features`` at ``res_addr``) in the kernel's
    ``res`` order: one request of a chunk (``cols`` bytes, fewer in a ragged last out
    tile) per out tile and token, re-packed to ``cols`` lanes. Does nothing for a job
    without ``residual``.

    Members: ``job``, ``start``, ``rd``, ``res``, ``busy``.
    """

    def __init__(self, hw: HwConfig, *, depth):
        _check_hw(self, hw)
        self._hw, self._depth = hw, depth
        super().__init__({
            "job": In(linear_job_layout()), "start": In(1),
            "rd": Out(ReadPort(hw.bus_width)),
            "res": Out(stream.Signature(lanes_layout(hw.cols))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        hw = self._hw
        m = Module()
        op = self.job.op
        prefetch = m.submodules.prefetch = Prefetch(hw.bus_width, self._depth)
        repack = m.submodules.repack = Repack(hw.bus_width // 8, hw.cols)
        on = Signal()
        chunk = _Chunks(m, op, hw.cols, "res")
        row_addr = Signal(ADDR_WIDTH)            # res_addr + token * out_features, unwrapped
        req = prefetch.req
        m.d.comb += [req.valid.eq(on),
                     req.payload.addr.eq(row_addr + chunk.col),
                     req.payload.length.eq(chunk.width)]
        with m.If(req.valid & req.ready):
            chunk.step()
            m.d.sync += row_addr.eq(Mux(chunk.token == op.tokens - 1, op.res_addr,
                                        row_addr + op.out_features))
            with m.If(chunk.final):
                m.d.sync += on.eq(0)
        with m.If(self.start):
            m.d.sync += [on.eq(op.residual), row_addr.eq(op.res_addr), *chunk.reset()]
        wiring.connect(m, prefetch.rd, wiring.flipped(self.rd))
        wiring.connect(m, prefetch.o, repack.i)
        m.d.comb += [self.res.valid.eq(repack.o.valid),
                     self.res.payload.eq(repack.o.payload.data),
                     repack.o.ready.eq(self.res.ready),
                     self.busy.eq(on | prefetch.busy | repack.busy)]
        return m


class YWriter(wiring.Component):
    """The kernel's ``y`` beats to memory (see the module): write requests run ahead of
    the data, which a :class:`~moevit.hw.top.movers.Repack` packs into bus beats
    (each beat's valid bytes, back to back in a contiguous job).

    Members: ``job``, ``start``, ``y``, ``wr``, ``index`` (``at`` the token whose
    row is asked, for ``y_scatter``), ``finish`` (the job's last byte is taken by
    the write channel this cycle), ``busy``.
    """

    def __init__(self, hw: HwConfig):
        _check_hw(self, hw)
        self._hw = hw
        super().__init__({
            "job": In(linear_job_layout()), "start": In(1),
            "y": In(stream.Signature(output_layout(hw.cols))),
            "wr": Out(WritePort(hw.bus_width)),
            "index": Out(IndexPort(hw.max_tokens)),
            "finish": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        hw = self._hw
        C = hw.cols
        m = Module()
        op = self.job.op
        wr = self.wr
        contiguous = Signal()
        m.d.comb += contiguous.eq((op.out_features <= C) & ~self.job.y_scatter)

        # Requests: one per chunk, or one for the whole contiguous y ---------------
        on = Signal()
        req = _Chunks(m, op, C, "req")
        m.d.comb += self.index.at.eq(req.token)
        row = Mux(self.job.y_scatter, self.index.row, req.token)
        m.d.comb += wr.req.valid.eq(on)
        with m.If(contiguous):
            m.d.comb += [wr.req.payload.addr.eq(op.y_addr),
                         wr.req.payload.length.eq(op.tokens * op.out_features)]
        with m.Else():
            m.d.comb += [wr.req.payload.addr.eq(op.y_addr + row * op.out_features + req.col),
                         wr.req.payload.length.eq(req.width)]
        with m.If(wr.req.valid & wr.req.ready):
            req.step()
            with m.If(contiguous | req.final):
                m.d.sync += on.eq(0)

        # Data: each beat's valid bytes; a request's end at each chunk's ------------
        repack = m.submodules.repack = Repack(C, hw.bus_width // 8)
        beat = _Chunks(m, op, C, "beat")
        final_in = Signal()                      # the job's last beat is in the repack
        m.d.comb += [
            repack.i.valid.eq(self.y.valid),
            repack.i.payload.data.eq(self.y.payload.data.as_value()),
            repack.i.payload.bytes.eq(Mux(contiguous, op.out_features, beat.width)),
            repack.i.payload.last.eq(~contiguous | self.y.payload.last),
            self.y.ready.eq(repack.i.ready),
            wr.data.valid.eq(repack.o.valid),
            wr.data.payload.eq(repack.o.payload.data),
            repack.o.ready.eq(wr.data.ready),
        ]
        with m.If(self.y.valid & self.y.ready):
            beat.step()
            with m.If(self.y.payload.last):
                m.d.sync += final_in.eq(1)
        m.d.comb += self.finish.eq(final_in & wr.data.valid & wr.data.ready
                                   & repack.o.payload.last)
        with m.If(self.finish):
            m.d.sync += final_in.eq(0)
        with m.If(self.start):
            m.d.sync += [on.eq(1), final_in.eq(0), *req.reset(), *beat.reset()]
        m.d.comb += self.busy.eq(on | final_in | repack.busy)
        return m


class LinearEngine(wiring.Component):
    """Runs linear jobs on one :class:`~moevit.hw.units.linear.LinearKernel` (see the
    module).

    Members: those of :func:`~moevit.hw.top.ports.engine_members` with the desc layout
    :func:`~moevit.hw.top.ports.linear_job_layout` and :attr:`READS` read channels
    (``x``, ``w``, ``chan``, ``res``), and ``x_index``, ``y_index``
    (``Out(IndexPort(hw.max_tokens))``: the rows of ``x_gather`` and ``y_scatter``),
    ``ahead`` (the next job's weights), ``window_at`` and ``window_end`` (the on-chip
    window: with ``hw.x_by_words`` an x inside it is read a word of each row at a time).

    Parameters
    ----------
    hw : HwConfig

    Raises
    ------
    TypeError
        ``hw`` is not a :class:`HwConfig`.
    ConfigError
        The array's columns are not a multiple of the bus bytes.
    """

    READS = 4
    X, W, CHAN, RES = range(READS)
    #: Bus beats of the read-ahead FIFOs of ``w``, ``chan`` and the skip tensor (``w`` and
    #: ``chan`` read in requests of a quarter of these depths, the skip tensor a chunk at a
    #: time).
    W_DEPTH, CHAN_DEPTH, RES_DEPTH = 128, 32, 32
    #: ``w``'s FIFO with ``hw.expert_prefetch``: the next job's weights fill it while this
    #: job's last out tile works after its last weights (the drain, about 315 cycles of an
    #: edge-moe expert layer on a 32 x 64 array), so the memory does not idle then. 512
    #: beats of a wide bus take the block RAMs that 128 do (512 deep is a RAMB36's depth).
    W_DEPTH_AHEAD = 512

    @classmethod
    def w_depth(cls, hw: HwConfig) -> int:
        """Beats of the ``w`` FIFO of the engine on ``hw``."""
        return cls.W_DEPTH_AHEAD if hw.expert_prefetch else cls.W_DEPTH

    @classmethod
    def w_chunk(cls, hw: HwConfig) -> int:
        """Bytes of each ``w`` request: a whole number of the array's weight beats, about
        a quarter of :attr:`W_DEPTH` bus beats (whatever the FIFO's depth)."""
        return hw.cols * max(1, cls.W_DEPTH // 4 * (hw.bus_width // 8) // hw.cols)

    def __init__(self, hw: HwConfig):
        _check_hw(self, hw)
        nbytes = hw.bus_width // 8
        if hw.cols % nbytes:
            self._MustUse__silence = True
            raise ConfigError(
                f"Linear engine needs the {hw.cols} array columns to be a multiple of the "
                f"{nbytes} bytes of the {hw.bus_width}-bit bus (an output chunk is whole bus "
                f"words)")
        self._hw = hw
        members = engine_members(linear_job_layout(), hw.bus_width, self.READS)
        members.update(x_index=Out(IndexPort(hw.max_tokens)),
                       y_index=Out(IndexPort(hw.max_tokens)),
                       ahead=In(stream.Signature(ahead_layout())),
                       window_at=In(32), window_end=In(32))
        super().__init__(members)

    @property
    def hw(self) -> HwConfig:
        return self._hw

    def elaborate(self, platform):
        hw = self._hw
        m = Module()
        kernel = m.submodules.kernel = LinearKernel(hw)
        x = m.submodules.x = XTiler(hw)
        nbytes = hw.bus_width // 8
        # With wide_w a kernel beat is w_features bus-packed features: packed before the
        # FIFO, which then gives the kernel a beat a cycle, faster than the bus brings them.
        w = m.submodules.w = Fetch(hw.bus_width, hw.cols * hw.w_features,
                                   depth=self.w_depth(hw), chunk=self.w_chunk(hw),
                                   packed=hw.w_features > 1)
        chan = m.submodules.chan = Fetch(hw.bus_width, CHAN_BYTES, depth=self.CHAN_DEPTH,
                                         chunk=self.CHAN_DEPTH // 4 * nbytes)
        res = m.submodules.res = ResidualReader(hw, depth=max(self.RES_DEPTH, hw.cols // nbytes))
        y = m.submodules.y = YWriter(hw)

        job = Signal(linear_job_layout())
        op = job.op
        start = Signal()
        for unit in (x, res, y):
            m.d.comb += [unit.job.eq(job), unit.start.eq(start)]
        m.d.comb += [x.window_at.eq(self.window_at), x.window_end.eq(self.window_end)]

        # The weights and constants: this job's, or (``ahead``) the next job's, read into
        # the fetches' FIFOs behind this job's once this job's are all requested. A job
        # whose bytes were read ahead does not read them again.
        def ranges_of(op):
            r = Signal(ahead_layout())
            m.d.comb += [getattr(r, k).eq(v) for k, v in weight_ranges(
                hw, w_addr=op.w_addr, chan_addr=op.chan_addr, in_features=op.in_features,
                out_tiles=op.out_tiles).items()]
            return r.as_value()

        mine = ranges_of(op)
        held = Signal()                          # the next job's bytes are on their way
        held_ranges = Signal(ahead_layout())
        take = Signal()
        m.d.comb += take.eq(self.ahead.valid & self.ahead.ready)
        src = Signal(ahead_layout())
        m.d.comb += src.eq(Mux(take, self.ahead.payload.as_value(), mine))
        fetch = Signal()
        m.d.comb += fetch.eq(take | (start & ~(held & (held_ranges.as_value() == mine))))
        m.d.comb += [w.start.eq(fetch), w.addr.eq(src.w_addr), w.length.eq(src.w_length),
                     chan.start.eq(fetch), chan.addr.eq(src.chan_addr),
                     chan.length.eq(src.chan_length)]
        with m.If(take):
            m.d.sync += [held.eq(1), held_ranges.eq(self.ahead.payload)]
        with m.If(start):
            m.d.sync += held.eq(0)

        for k, unit in enumerate((x, w, chan, res)):
            wiring.connect(m, unit.rd, wiring.flipped(self.rd[k]))
        wiring.connect(m, y.wr, wiring.flipped(self.wr))
        wiring.connect(m, x.index, wiring.flipped(self.x_index))
        wiring.connect(m, y.index, wiring.flipped(self.y_index))

        wiring.connect(m, x.x, kernel.x)
        wiring.connect(m, res.res, kernel.res)
        wiring.connect(m, kernel.y, y.y)
        m.d.comb += [kernel.w.valid.eq(w.o.valid), w.o.ready.eq(kernel.w.ready),
                     kernel.w.payload.eq(w.o.payload.data),
                     kernel.chan.valid.eq(chan.o.valid), chan.o.ready.eq(kernel.chan.ready),
                     kernel.chan.payload.eq(chan.o.payload.data[:chan_layout().size])]

        # The job: refused for the bus-word rule, else handed to the kernel, which
        # may refuse it too (its error a cycle after it takes it); else run.
        p = self.desc.payload
        align = Signal()
        m.d.comb += align.eq(Cat(*[broken for _, _, broken in
                                   alignment_rules(hw, p.op, p.x_gather, p.y_scatter)]).any())
        # Bytes read ahead for another job than this one: refused (never in the top's
        # schedule, where the read-ahead job always comes next or the run stops).
        stale = Signal()
        m.d.comb += stale.eq(held & (held_ranges.as_value() != ranges_of(p.op)))
        m.d.comb += kernel.desc.payload.eq(op)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.desc.ready.eq(1)
                with m.If(self.desc.valid):
                    m.d.sync += [job.eq(p), self.error.eq(Mux(align, Fault.ALIGN, Mux(
                        stale, Fault.DERIVED, Fault.NONE)))]
                    with m.If(align | stale):
                        m.next = "REFUSED"
                    with m.Else():
                        m.next = "KERNEL"
            with m.State("KERNEL"):
                m.d.comb += kernel.desc.valid.eq(1)
                with m.If(kernel.desc.ready):
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(kernel.error != Fault.NONE):
                    m.d.sync += self.error.eq(kernel.error)
                    m.next = "REFUSED"
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(y.finish):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
            with m.State("REFUSED"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.desc.ready)
        if hw.expert_prefetch:
            # Taken once this job's bytes are all requested (or between jobs).
            m.d.comb += self.ahead.ready.eq(
                ~held & ~w.requesting & ~chan.requesting
                & (fsm.ongoing("RUN") | (fsm.ongoing("IDLE") & ~self.desc.valid)))
        return m


def pack_job(desc: LinearDescriptor, *, x_gather=False, y_scatter=False) -> int:
    """The ``desc`` payload integer of a job (:func:`~moevit.hw.top.ports.linear_job_layout`)."""
    width = LinearDescriptor.layout().size
    return desc.to_int() | int(bool(x_gather)) << width | int(bool(y_scatter)) << (width + 1)
