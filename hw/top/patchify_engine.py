"""The PATCHIFY engine: an int8 image ``(channels, rows, columns)`` cut into its patches.

The output ``(patches, channels*patch*patch)`` is row-major over the patch
grid, features in (channel, row, column) order (``interpreter.PATCHIFY``).
The patches of one grid row are contiguous in the output, but each patch
gathers ``channels*patch`` runs of ``patch`` bytes from as many image rows.

The engine works on *blocks*: up to ``patches`` (a parameter) patches of one
grid row. For a block the loader reads the ``channels*patch`` image rows it
covers, one request per row (``block columns`` bytes), into one half of an
on-chip :class:`BandBuffer` where they lie densely (row ``m = channel*patch +
r`` of the block at ``m * block_columns``); the emitter then reads the
block's patches out of that half in output order, one run of ``min(patch,
bus bytes)`` bytes a cycle, re-packed into bus beats
(:class:`~moevit.hw.top.movers.Repack`) on a single write request that
covers the whole output, while the loader fills the other half with the next
block. A block holds at most ``patches * max_in`` bytes, since a patch has
at most ``max_in`` features (the descriptor's own rule): every image whose
patch fits the hardware fits the buffer.

Addresses: ``y_addr`` must be a multiple of the bus bytes (the write mover's
rule; the compiler aligns every region), else the descriptor is refused.
``x_addr`` and ``columns`` may be anything: a row's request starts at its
first byte rounded down to the bus, and the bytes before it are dropped.

The descriptor is checked (:class:`~moevit.hw.program.descriptor.Fault`):
``OPCODE`` for another opcode; ``SHAPE`` for a zero size, a patch of more
features than ``max_in``, an image that is not a whole number of patches
(the remainders take 16 cycles of a restoring division), a misaligned
``y_addr`` or an output of ``2**32`` bytes or more.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import Fault, fault_code
from moevit.hw.program.isa import PatchifyDescriptor
from moevit.hw.top.movers import ADDR_WIDTH, Repack
from moevit.hw.top.ports import engine_members

__all__ = ["BandBuffer", "PatchifyEngine"]


class BandBuffer(wiring.Component):
    """A byte-addressed buffer that writes and reads any ``nbytes`` consecutive
    bytes in one cycle, at any byte address.

    Two banks of bus-wide words, the even words and the odd words: the bytes
    ``a .. a+nbytes-1`` lie in words ``a // nbytes`` and the next, one in each bank.

    Parameters
    ----------
    nbytes : int
        Bytes of a word (the bus).
    size : int
        Bytes held (addresses ``0 .. size-1``).

    Attributes
    ----------
    w_en, w_at, w_data, w_count : In
        Write the ``w_count`` low bytes of ``w_data`` at bytes ``w_at ..``.
    r_en, r_at : In
        Read the ``nbytes`` bytes from ``r_at``.
    r_data : Out
        The bytes of the last read (the cycle after ``r_en``; held while it is low).
    """

    def __init__(self, nbytes, size):
        self._nbytes = nbytes
        self._words = -(-size // nbytes) + 1          # a read's second word is inside too
        at = range(self._words * nbytes)
        super().__init__({
            "w_en": In(1), "w_at": In(at), "w_data": In(8 * nbytes),
            "w_count": In(range(nbytes + 1)),
            "r_en": In(1), "r_at": In(at), "r_data": Out(8 * nbytes),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._nbytes
        s = (n - 1).bit_length()
        depth = -(-self._words // 2)
        banks = []
        for name in ("even", "odd"):
            bank = m.submodules[name] = Memory(shape=8 * n, depth=depth, init=[])
            banks.append((bank.write_port(granularity=8), bank.read_port()))
        (even_w, even_r), (odd_w, odd_r) = banks

        # Word q of byte a takes the low half of the shifted bytes, word q + 1 the high one.
        q, o = self.w_at[s:], self.w_at[:s]
        wide = Signal(16 * n)
        lanes = Signal(2 * n)
        m.d.comb += [wide.eq(self.w_data << (o * 8)),
                     lanes.eq((Const(1, 2 * n + 1) << self.w_count) - 1 << o)]
        odd_q = q[0]
        for port, mine in ((even_w, ~odd_q), (odd_w, odd_q)):
            m.d.comb += [port.data.eq(Mux(mine, wide[:8 * n], wide[8 * n:])),
                         port.en.eq(Mux(self.w_en, Mux(mine, lanes[:n], lanes[n:]), 0))]
        m.d.comb += [even_w.addr.eq((q + 1) >> 1), odd_w.addr.eq(q >> 1)]

        rq, ro = self.r_at[s:], self.r_at[:s]
        m.d.comb += [even_r.addr.eq((rq + 1) >> 1), odd_r.addr.eq(rq >> 1),
                     even_r.en.eq(self.r_en), odd_r.en.eq(self.r_en)]
        read_odd, read_o = Signal(), Signal(max(1, s))
        with m.If(self.r_en):
            m.d.sync += [read_odd.eq(rq[0]), read_o.eq(ro)]
        low = Mux(read_odd, odd_r.data, even_r.data)
        high = Mux(read_odd, even_r.data, odd_r.data)
        m.d.comb += self.r_data.eq((Cat(low, high) >> (read_o * 8))[:8 * n])
        return m


class PatchifyEngine(wiring.Component):
    """Runs :class:`~moevit.hw.program.isa.PatchifyDescriptor` (members:
    :mod:`moevit.hw.top.ports`; the method: the module's description).

    Parameters
    ----------
    hw : HwConfig
    patches : int
        Patches of a block (the buffer holds two blocks of ``patches * hw.max_in``
        bytes); a row request is ``patches * patch`` bytes at most.
    """

    READS = 1

    PATCHES = 8   # patches of a block, by default

    def __init__(self, hw: HwConfig, *, patches=PATCHES):
        if not isinstance(patches, int) or isinstance(patches, bool) or patches < 1:
            self._MustUse__silence = True
            raise TypeError(f"Patches of a block must be a positive integer, not {patches!r}")
        self._hw = hw
        self._patches = patches
        super().__init__(engine_members(PatchifyDescriptor.layout(), hw.bus_width, self.READS))

    @property
    def buffer_bytes(self):
        return self._patches * self._hw.max_in

    def elaborate(self, platform):
        m = Module()
        hw, rd, wr = self._hw, self.rd[0], self.wr
        n = hw.bus_width // 8
        s = (n - 1).bit_length()
        d = Signal.like(self.desc.payload)
        p = d.patch

        half = -(-self.buffer_bytes // n) * n          # bytes of a half, whole words
        band = m.submodules.band = BandBuffer(n, 2 * half)
        repack = m.submodules.repack = Repack(n, n)
        offsets = m.submodules.offsets = SyncFIFO(width=s, depth=hw.max_outstanding + 1)

        # Sizes of the instruction, set before the first block.
        plane = Signal(32)             # rows * columns
        band_step = Signal(24)         # patch * columns: from one grid row to the next
        block_rows = Signal(16)        # channels * patch: image rows a block reads
        block_max = Signal(16)         # patches * patch: the widest block, in columns
        total = Signal(41)             # channels * rows * columns: the output's bytes

        # Where the walk is: the grid row (its first image row), the block (its first
        # column and width), the grid row's first byte in the image.
        grid_y = Signal(16)
        block_x = Signal(16)
        width = Signal(16)
        grid_at = Signal(ADDR_WIDTH)
        last_block = Signal()
        m.d.comb += last_block.eq((grid_y + p == d.rows) & (block_x + width == d.columns))

        # Read side: one request per image row of the block (channel c, row r).
        issued, loaded = Signal(16), Signal(16)
        row_r = Signal(8)
        row_at, plane_at = Signal(ADDR_WIDTH), Signal(ADDR_WIDTH)
        first = Signal()               # the next beat is a request's first
        fill = Signal.like(band.w_at)

        # The halves: the loader fills half `fill_half` while the emitter drains
        # `emit_half`; a full half holds a block of `widths[h]` columns (`lasts[h]`: the
        # instruction's last block).
        fill_half, emit_half = Signal(), Signal()
        full, lasts = Signal(2), Signal(2)
        widths = [Signal(16, name=f"width{h}") for h in range(2)]

        # Emit side: run m of patch k (column kx of the block) starts at kx + m * width.
        kx, run, run_at, part = Signal(16), Signal(16), Signal.like(band.r_at), Signal(8)
        emit_width, emit_last, emitting = Signal(16), Signal(), Signal()
        m.d.comb += [emit_width.eq(Mux(emit_half, widths[1], widths[0])),
                     emit_last.eq(lasts.bit_select(emit_half, 1)),
                     emitting.eq(full.bit_select(emit_half, 1))]
        part_bytes = Signal(range(n + 1))
        m.d.comb += part_bytes.eq(Mux(p - part < n, p - part, n))
        part_end, run_end, patch_end = Signal(), Signal(), Signal()
        m.d.comb += [part_end.eq(part + n >= p), run_end.eq(run + 1 == block_rows),
                     patch_end.eq(kx + p == emit_width)]

        # The pipeline from the buffer's read to Repack: one beat held.
        held, held_bytes, held_last = Signal(), Signal.like(part_bytes), Signal()
        advance = Signal()
        m.d.comb += [advance.eq(~held | repack.i.ready),
                     band.r_en.eq(advance), band.r_at.eq(Mux(emit_half, half, 0) + run_at + part),
                     repack.i.valid.eq(held), repack.i.payload.data.eq(band.r_data),
                     repack.i.payload.bytes.eq(held_bytes), repack.i.payload.last.eq(held_last)]
        with m.If(advance):
            m.d.sync += [held.eq(emitting), held_bytes.eq(part_bytes),
                         held_last.eq(emit_last & patch_end & run_end & part_end)]
        # The emitter: one part a cycle while its half is full; the half is freed as its
        # block's last part is read.
        emptied = Signal()
        m.d.comb += emptied.eq(emitting & advance & part_end & run_end & patch_end)
        with m.If(emitting & advance):
            with m.If(~part_end):
                m.d.sync += part.eq(part + n)
            with m.Else():
                m.d.sync += part.eq(0)
                with m.If(~run_end):
                    m.d.sync += [run.eq(run + 1), run_at.eq(run_at + emit_width)]
                with m.Else():
                    m.d.sync += [run.eq(0), kx.eq(kx + p), run_at.eq(kx + p)]
                    with m.If(patch_end):
                        m.d.sync += [kx.eq(0), run_at.eq(0), emit_half.eq(~emit_half)]
        loaded_now = Signal()          # the loader's block is all in its half

        m.d.comb += [wr.data.valid.eq(repack.o.valid), wr.data.payload.eq(repack.o.payload.data),
                     repack.o.ready.eq(wr.data.ready)]
        finished = Signal()
        m.d.comb += finished.eq(wr.data.valid & wr.data.ready & repack.o.payload.last)

        # The shape checks: remainders of rows and columns by patch, bit by bit.
        step = Signal(5)
        rows_left, cols_left = Signal(16), Signal(16)       # bits still to divide, high first
        rem_rows, rem_cols = Signal(9), Signal(9)
        fault = Signal.like(self.error)
        m.d.comb += fault.eq(fault_code([
            (Fault.OPCODE, d.opcode != PatchifyDescriptor.OPCODE),
            (Fault.SHAPE, (d.channels == 0) | (d.rows == 0) | (d.columns == 0) | (p == 0)
             | (d.channels * p * p > hw.max_in) | (rem_rows != 0) | (rem_cols != 0)
             | (d.y_addr[:s] != 0) | (total >> 32 != 0)),
        ]))
        wr_sent = Signal()
        walking = Signal()             # past the checks, until done

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.desc.ready.eq(1)
                with m.If(self.desc.valid):
                    m.d.sync += [d.eq(self.desc.payload), self.error.eq(Fault.NONE),
                                 step.eq(0), rem_rows.eq(0), rem_cols.eq(0),
                                 rows_left.eq(self.desc.payload.rows),
                                 cols_left.eq(self.desc.payload.columns)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [plane.eq(d.rows * d.columns), band_step.eq(p * d.columns),
                             block_rows.eq(d.channels * p), block_max.eq(p * self._patches),
                             total.eq(d.channels * d.rows * d.columns)]
                with m.If(step != 16):
                    # Restoring division: the remainder stays below patch (< 2**8).
                    nxt_rows = Cat(rows_left[15], rem_rows)
                    nxt_cols = Cat(cols_left[15], rem_cols)
                    m.d.sync += [rem_rows.eq(Mux(nxt_rows >= p, nxt_rows - p, nxt_rows)),
                                 rem_cols.eq(Mux(nxt_cols >= p, nxt_cols - p, nxt_cols)),
                                 rows_left.eq(rows_left << 1), cols_left.eq(cols_left << 1),
                                 step.eq(step + 1)]
                with m.Else():
                    m.d.sync += [grid_y.eq(0), block_x.eq(0), grid_at.eq(d.x_addr),
                                 wr_sent.eq(0)]
                    with m.If(fault != Fault.NONE):
                        m.d.sync += self.error.eq(fault)
                        m.next = "FAULT"
                    with m.Else():
                        m.next = "BLOCK"
            with m.State("FAULT"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
            with m.State("BLOCK"):
                m.d.comb += [self.busy.eq(1), walking.eq(1)]
                left = d.columns - block_x
                m.d.sync += [width.eq(Mux(left < block_max, left, block_max)),
                             issued.eq(0), loaded.eq(0), row_r.eq(0), first.eq(1),
                             fill.eq(Mux(fill_half, half, 0)),
                             row_at.eq(grid_at + block_x), plane_at.eq(grid_at + block_x)]
                with m.If(~full.bit_select(fill_half, 1)):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.busy.eq(1), walking.eq(1)]
                # Requests: the row's first byte rounded down to the bus, its offset queued.
                m.d.comb += [rd.req.valid.eq((issued != block_rows) & offsets.w_rdy),
                             rd.req.payload.addr.eq(Cat(Const(0, s), row_at[s:])),
                             rd.req.payload.length.eq(row_at[:s] + width),
                             offsets.w_data.eq(row_at[:s]),
                             offsets.w_en.eq(rd.req.valid & rd.req.ready)]
                with m.If(rd.req.valid & rd.req.ready):
                    m.d.sync += issued.eq(issued + 1)
                    with m.If(row_r + 1 == p):
                        m.d.sync += [row_r.eq(0), plane_at.eq(plane_at + plane),
                                     row_at.eq(plane_at + plane)]
                    with m.Else():
                        m.d.sync += [row_r.eq(row_r + 1), row_at.eq(row_at + d.columns)]
                # Beats: their bytes from the offset on (first beat) packed at the fill level.
                beat = rd.data.payload
                lo = Mux(first, offsets.r_data, 0)
                count = beat.bytes - lo
                m.d.comb += [rd.data.ready.eq(1),
                             band.w_en.eq(rd.data.valid), band.w_at.eq(fill),
                             band.w_data.eq(beat.data >> (lo * 8)), band.w_count.eq(count),
                             offsets.r_en.eq(rd.data.valid & beat.last)]
                with m.If(rd.data.valid):
                    m.d.sync += [fill.eq(fill + count), first.eq(beat.last),
                                 loaded.eq(loaded + beat.last)]
                with m.If(loaded == block_rows):
                    # Hand the half to the emitter and walk on while it drains.
                    m.d.comb += loaded_now.eq(1)
                    m.d.sync += fill_half.eq(~fill_half)
                    for h in range(2):
                        with m.If(fill_half == h):
                            m.d.sync += [widths[h].eq(width), lasts[h].eq(last_block)]
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += [self.busy.eq(1), walking.eq(1)]
                with m.If(last_block):
                    m.next = "FLUSH"
                with m.Elif(block_x + width == d.columns):
                    m.d.sync += [block_x.eq(0), grid_y.eq(grid_y + p),
                                 grid_at.eq(grid_at + band_step)]
                    m.next = "BLOCK"
                with m.Else():
                    m.d.sync += block_x.eq(block_x + width)
                    m.next = "BLOCK"
            with m.State("FLUSH"):
                m.d.comb += [self.busy.eq(1), walking.eq(1)]
                with m.If(finished):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"

        for h in range(2):
            with m.If(loaded_now & (fill_half == h)):
                m.d.sync += full[h].eq(1)
            with m.If(emptied & (emit_half == h)):
                m.d.sync += full[h].eq(0)

        # The output is one write request, sent with the first block.
        m.d.comb += [wr.req.valid.eq(walking & ~wr_sent),
                     wr.req.payload.addr.eq(d.y_addr), wr.req.payload.length.eq(total)]
        with m.If(wr.req.valid & wr.req.ready):
            m.d.sync += wr_sent.eq(1)
        return m
