"""Integer LayerNorm unit: ``intops.layernorm`` on a stream of int8 rows.

Per row of ``D`` int8 values (``moevit.model.integer.intops.layernorm``)::

    s1 = sum(x); s2 = sum(x*x)
    sigma = max(isqrt((D*s2 - s1*s1 + eps) << 12), 1)   # bit-serial square root
    R = 2**36 // sigma                                  # the one division per row
    n_i = (c_i*R + 2**17) >> 18,  c_i = D*x_i - s1
        = (x_i*(D*R) - s1*R + 2**17) >> 18              # D*R, s1*R once per row
    y_i = clip8((n_i*gamma_i + beta_i + 2**(shift-1)) >> shift)

Three stages work on different rows at once: *ingest* stores a row and sums
``s1`` and ``s2``; *stats* runs the square root then the division; *emit*
reads the row back and writes ``y``. Row banks let rows enter while earlier
ones wait for their statistics or are emitted.

Lanes: each beat of ``i``, ``param`` and ``o`` carries ``lanes`` values of a row
(``D`` a multiple of ``lanes``). The sums take a beat at once (an adder tree
over the lanes) and the normalisation runs per lane. The statistics stay one
per row, but a row now lasts ``D / lanes`` cycles, shorter than the ~64
cycles of the bit-serial square root and division: with more than one lane
they run unrolled (:class:`~moevit.hw.units.seqmath.PipelinedISqrt`,
:class:`~moevit.hw.units.seqmath.PipelinedDivider`: a row a cycle, results
in order after :data:`PIPELINED_STATS` cycles) and :data:`LANE_BANKS` row
banks cover that latency. One lane is the unit as it was: two banks, the
sequential square root and divider, one row's statistics at a time.

Operation: a descriptor (:class:`~moevit.hw.program.descriptor.LayerNormDescriptor`)
on ``desc``; then ``dim / lanes`` beats of ``lanes`` ``(gamma, beta)`` on ``param``;
then ``tokens`` rows of ``dim / lanes`` beats on ``i``; ``o`` carries the rows of ``y``.
"""

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.units import intexpr
from moevit.hw.units.seqmath import Divider, ISqrt, PipelinedDivider, PipelinedISqrt
from moevit.model.integer import intops

__all__ = ["LayerNorm", "param_layout", "layernorm_cycles", "RESTART_CYCLES", "LANE_BANKS",
           "PIPELINED_STATS", "MAX_LANES", "default_banks"]

_V_WIDTH = 48  # (D*s2 - s1*s1 + eps) << 12 < 2**47 (intops)
#: Row banks with one lane, and with more: enough to cover the pipelined statistics'
#: latency with rows of 3 beats (edge-moe's 192 channels on 64 lanes: a row enters every
#: 3 cycles and leaves 4, ~70 cycles after it entered; with 8 banks such rows took 8.8
#: cycles each, layernorm_cycles(2064, 192, 64) = 18,093, with 32 they take the emit's 4).
_BANKS = 2
LANE_BANKS = 32
#: The widest beat: a 1024-bit bus word of int8.
MAX_LANES = 128


def param_layout():
    """One channel's constants: ``gamma`` (s16) and ``beta`` (s41)."""
    return data.StructLayout({"gamma": signed(16), "beta": signed(41)})


def _tree_sum(values):
    """The sum of ``values`` as a balanced tree of adders (depth log2 of their count)."""
    values = list(values)
    while len(values) > 1:
        values = [a + b for a, b in zip(values[::2], values[1::2])] + values[len(values) & ~1:]
    return values[0]


class LayerNorm(wiring.Component):
    """Row-wise integer LayerNorm, exactly ``intops.layernorm``.

    Parameters
    ----------
    max_dim : int
        Widest row (depth of the row and parameter buffers), at most 1024.
    lanes : int
        Values per beat (``HwConfig.norm_lanes``): a power of two up to
        :data:`MAX_LANES` that divides ``max_dim``.
    banks : int
        Rows stored at once, a power of two from 2 (default: 2 with one lane,
        :data:`LANE_BANKS` with more; the formal checks take fewer).

    Members
    -------
    desc : In(stream.Signature(LayerNormDescriptor.layout()))
    param : In(stream.Signature(data.ArrayLayout(param_layout(), lanes)))
    i : In(stream.Signature(data.ArrayLayout(signed(8), lanes)))
    o : Out(stream.Signature(data.ArrayLayout(signed(8), lanes)))
    busy : Out(1)
        Working, or an output still waits on ``o``.
    error : Out(3)
        The :class:`~moevit.hw.program.descriptor.Fault` of the last descriptor taken;
        a faulty one (a width not a multiple of ``lanes`` among them) is skipped (no
        beat taken or produced).

    Raises
    ------
    TypeError
        If ``max_dim`` is not an integer in 1..1024, ``lanes`` not a power of two
        up to :data:`MAX_LANES`, or ``banks`` not a power of two from 2.
    ValueError
        If ``lanes`` does not divide ``max_dim``.
    """

    def __init__(self, *, max_dim, lanes=1, banks=None):
        self._MustUse__silence = True  # a unit rejected here is not an unused one
        if not isinstance(max_dim, int) or isinstance(max_dim, bool) \
                or not 1 <= max_dim <= 2**10:
            raise TypeError(f"LayerNorm width must be an integer in 1..1024, not {max_dim!r}")
        if not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= MAX_LANES \
                or lanes & (lanes - 1):
            raise TypeError(f"LayerNorm lanes must be a power of two in 1..{MAX_LANES}, "
                            f"not {lanes!r}")
        if max_dim % lanes:
            raise ValueError(f"LayerNorm lanes {lanes} do not divide the width {max_dim}")
        banks = default_banks(lanes) if banks is None else banks
        # The bank counters wrap at a power of two.
        if not isinstance(banks, int) or isinstance(banks, bool) or banks < 2 \
                or banks & (banks - 1):
            raise TypeError(f"LayerNorm banks must be a power of two from 2, not {banks!r}")
        from moevit.hw.program.descriptor import FAULT_WIDTH, LayerNormDescriptor

        self._max_dim = max_dim
        self._lanes = lanes
        self._banks = banks
        del self._MustUse__silence
        super().__init__({
            "desc": In(stream.Signature(LayerNormDescriptor.layout())),
            "param": In(stream.Signature(data.ArrayLayout(param_layout(), lanes))),
            "i": In(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "busy": Out(1),
            "error": Out(FAULT_WIDTH),
        })

    @classmethod
    def from_config(cls, hw):
        """As wide as the linear kernel's input buffer (``hw.max_in``), ``hw.norm_lanes``
        lanes."""
        return cls(max_dim=min(hw.max_in, 2**10), lanes=hw.norm_lanes)

    @property
    def max_dim(self):
        return self._max_dim

    @property
    def lanes(self):
        return self._lanes

    @property
    def banks(self):
        """Row banks: rows stored at once."""
        return self._banks

    def elaborate(self, platform):
        from moevit.hw.program.descriptor import (FAULT_WIDTH, Fault, LayerNormDescriptor, fault_code,
                                          shift_out_of_range)

        m = Module()
        n, lanes, banks = self._max_dim, self._lanes, self.banks
        words = n // lanes             # beats of the widest row
        lane_bits = lanes.bit_length() - 1
        row_bits = banks.bit_length()  # counts of rows, modulo more than the banks
        idx = range(words + 1)
        s1_shape = signed((128 * n).bit_length() + 1)
        s2_shape = unsigned(((1 << 14) * n).bit_length())
        v_width = _V_WIDTH

        m.submodules.rows = rows = memory.Memory(
            shape=data.ArrayLayout(signed(8), lanes), depth=banks * words, init=[])
        m.submodules.params = params = memory.Memory(
            shape=data.ArrayLayout(param_layout(), lanes), depth=words, init=[])
        r_wr, r_rd = rows.write_port(), rows.read_port()
        p_wr, p_rd = params.write_port(), params.read_port()
        pipelined = lanes > 1
        if pipelined:
            m.submodules.isqrt = isqrt = PipelinedISqrt(width=v_width)
            m.submodules.divider = divider = PipelinedDivider(
                dividend_width=intops.LN_RECIP_BITS + 1, divisor_width=v_width // 2)
        else:
            m.submodules.isqrt = isqrt = ISqrt(width=v_width)
            m.submodules.divider = divider = Divider(
                dividend_width=intops.LN_RECIP_BITS + 1, divisor_width=v_width // 2)
        norm_shift = intops.LN_RECIP_BITS - intops.LN_VAR_SHIFT // 2 - intops.LN_NORM_FRAC

        dim = Signal(range(n + 1))
        row_beats = Signal(idx)
        tokens = Signal(16)
        eps = Signal(40)
        shift = Signal(6)
        desc = self.desc.payload

        in_rows = Signal(16)  # rows fully ingested
        out_rows = Signal(16)  # rows fully emitted
        p_cnt = Signal(idx)
        running = Signal()
        # The descriptor is checked, not trusted: a faulty one is taken and skipped.
        fault = Signal(FAULT_WIDTH)
        ragged = desc.dim[:lane_bits] != 0 if lane_bits else Const(0)
        m.d.comb += fault.eq(fault_code([
            (Fault.OPCODE, desc.opcode != LayerNormDescriptor.OPCODE),
            (Fault.SHAPE, (desc.tokens == 0) | (desc.dim == 0) | (desc.dim > n) | ragged),
            (Fault.CONSTANT, shift_out_of_range(desc.shift) | (desc.eps >= 2**34)),
        ]))
        # Comb outputs from the state, not assigned inside it: Icarus never
        # evaluates an always @* block whose inputs keep their initial values.
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.desc.valid):
                    m.d.sync += self.error.eq(fault)
                with m.If(self.desc.valid & (fault == Fault.NONE)):
                    m.d.sync += [dim.eq(desc.dim), row_beats.eq(desc.dim >> lane_bits),
                                 tokens.eq(desc.tokens), eps.eq(desc.eps),
                                 shift.eq(desc.shift), p_cnt.eq(0)]
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                with m.If(p_cnt == row_beats):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(out_rows == tokens):
                    m.next = "IDLE"
        m.d.comb += [
            self.desc.ready.eq(fsm.ongoing("IDLE")),
            # Busy until the last output has left, not only until it is on `o`.
            self.busy.eq(~fsm.ongoing("IDLE") | self.o.valid),
            self.param.ready.eq(fsm.ongoing("PARAMS") & (p_cnt != row_beats)),
            running.eq(fsm.ongoing("RUN")),
        ]
        m.d.comb += [p_wr.addr.eq(p_cnt), p_wr.data.eq(self.param.payload),
                     p_wr.en.eq(self.param.valid & self.param.ready)]
        with m.If(p_wr.en):
            m.d.sync += p_cnt.eq(p_cnt + 1)

        def ahead(a, b):
            return (a - b)[:row_bits]

        done_in = Signal(row_bits)
        done_stat = Signal(row_bits)
        done_out = Signal(row_bits)
        row_s1 = Array(Signal(s1_shape, name=f"s1_{k}") for k in range(banks))
        row_s2 = Array(Signal(s2_shape, name=f"s2_{k}") for k in range(banks))
        # Per row, D*R and s1*R, so that each lane's c_i*R is x_i*(D*R) - s1*R (2 DSP48E2),
        # not D*x_i then a 19 x 37-bit product (1 + 4).
        recip_width = intops.LN_RECIP_BITS + 1
        row_dr = Array(Signal(len(dim) + recip_width, name=f"dr{k}") for k in range(banks))
        row_s1r = Array(Signal(signed(s1_shape.width + recip_width), name=f"s1r{k}")
                        for k in range(banks))

        # Ingest: x into bank done_in % banks with s1 and s2 (a beat's lanes summed at once).
        in_bank = Signal(range(banks))
        in_idx = Signal(idx)
        s1 = Signal(s1_shape)
        s2 = Signal(s2_shape)
        m.d.comb += self.i.ready.eq(running & (in_rows != tokens)
                                    & (ahead(done_in, done_out) < banks))
        x = self.i.payload
        m.d.comb += [r_wr.addr.eq(in_bank * words + in_idx), r_wr.data.eq(x),
                     r_wr.en.eq(self.i.valid & self.i.ready)]
        row_in = Signal()  # this beat ends a row
        m.d.comb += row_in.eq(r_wr.en & (in_idx + 1 == row_beats))
        new_s1, new_s2 = Signal.like(s1), Signal.like(s2)
        m.d.comb += [
            new_s1.eq(Mux(in_idx == 0, 0, s1) + _tree_sum(x[k] for k in range(lanes))),
            new_s2.eq(Mux(in_idx == 0, 0, s2)
                      + _tree_sum((x[k] * x[k]).as_unsigned() for k in range(lanes))),
        ]
        with m.If(r_wr.en):
            m.d.sync += [s1.eq(new_s1), s2.eq(new_s2), in_idx.eq(in_idx + 1)]
            with m.If(row_in):
                m.d.sync += [row_s1[in_bank].eq(new_s1), row_s2[in_bank].eq(new_s2),
                             in_idx.eq(0), in_bank.eq(in_bank + 1),
                             done_in.eq(done_in + 1), in_rows.eq(in_rows + 1)]

        # Stats: isqrt of (D*s2 - s1*s1 + eps) << 12, then 2**36 // max(root, 1).
        st_bank = Signal(range(banks))
        variance = Signal(v_width)
        m.d.comb += [
            divider.i.payload.dividend.eq(1 << intops.LN_RECIP_BITS),
            divider.i.payload.divisor.eq(Mux(isqrt.o.payload == 0, 1, isqrt.o.payload)),
            divider.i.valid.eq(isqrt.o.valid),
        ]
        if pipelined:
            # A row's sums enter the pipeline the cycle after its last beat.
            st_s1, st_s2, st_valid = Signal(s1_shape), Signal(s2_shape), Signal()
            m.d.sync += [st_valid.eq(row_in), st_s1.eq(new_s1), st_s2.eq(new_s2)]
            m.d.comb += [
                variance.eq((dim * st_s2 - st_s1 * st_s1 + eps) << intops.LN_VAR_SHIFT),
                isqrt.i.payload.eq(variance), isqrt.i.valid.eq(st_valid),
            ]
        else:
            m.d.comb += variance.eq((dim * row_s2[st_bank] - row_s1[st_bank] * row_s1[st_bank]
                                     + eps) << intops.LN_VAR_SHIFT)
            sq_sent = Signal()
            m.d.comb += [
                isqrt.i.payload.eq(variance),
                isqrt.i.valid.eq(~sq_sent & (ahead(done_in, done_stat) != 0)),
                isqrt.o.ready.eq(divider.i.ready),
                divider.o.ready.eq(1),
            ]
            with m.If(isqrt.i.valid & isqrt.i.ready):
                m.d.sync += sq_sent.eq(1)
            with m.If(divider.o.valid):
                m.d.sync += sq_sent.eq(0)
        with m.If(divider.o.valid):
            recip = divider.o.payload.quotient
            m.d.sync += [row_dr[st_bank].eq(dim * recip),
                         row_s1r[st_bank].eq(row_s1[st_bank] * recip),
                         st_bank.eq(st_bank + 1), done_stat.eq(done_stat + 1)]

        # Emit: y_i from x_i, the row's D*R and s1*R, and channel i's gamma, beta.
        o_bank = Signal(range(banks))
        o_idx = Signal(idx)
        o_run = Signal()
        o_started = Signal(row_bits)
        o_dr, o_s1r = Signal.like(row_dr[0]), Signal.like(row_s1r[0])
        a_valid, a_last = Signal(), Signal()
        a_dr, a_s1r = Signal.like(row_dr[0]), Signal.like(row_s1r[0])
        advance = Signal()
        issue = Signal()
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            issue.eq(o_run & advance),
            r_rd.addr.eq(o_bank * words + o_idx), r_rd.en.eq(advance),
            p_rd.addr.eq(o_idx), p_rd.en.eq(advance),
        ]
        with m.If(~o_run & (ahead(done_stat, o_started) != 0)):
            m.d.sync += [o_run.eq(1), o_idx.eq(0), o_dr.eq(row_dr[o_bank]),
                         o_s1r.eq(row_s1r[o_bank]), o_started.eq(o_started + 1)]
        for k in range(lanes):
            # c_i*R, s36 (intops.layernorm), however wide its terms. x_i*(D*R) as two
            # products of D*R's pieces of 26 bits, a DSP48E2 each (Yosys maps the 8 x
            # 47-bit product to three).
            scaled = Signal(signed(36), name=f"scaled{k}")
            x_k = r_rd.data[k]
            # |n_i| <= 2**17 (intops.layernorm): 19 bits, so n_i * gamma_i is one DSP48E2.
            normed = Signal(signed(19), name=f"normed{k}")
            p = p_rd.data[k]
            m.d.comb += [
                scaled.eq(x_k * a_dr[:26] + (x_k * a_dr[26:] << 26) - a_s1r),
                normed.eq(intexpr.round_shift(scaled, Const(norm_shift, 6))),
            ]
            with m.If(advance):
                m.d.sync += self.o.payload[k].eq(intexpr.clip8(intexpr.round_shift(
                    normed * p.gamma + p.beta, shift)))
        with m.If(advance):
            m.d.sync += [a_valid.eq(issue), a_last.eq(issue & (o_idx + 1 == row_beats)),
                         a_dr.eq(o_dr), a_s1r.eq(o_s1r), self.o.valid.eq(a_valid)]
            with m.If(issue):
                m.d.sync += o_idx.eq(o_idx + 1)
                with m.If(o_idx + 1 == row_beats):
                    m.d.sync += [o_run.eq(0), o_bank.eq(o_bank + 1)]
            with m.If(a_valid & a_last):
                m.d.sync += [done_out.eq(done_out + 1), out_rows.eq(out_rows + 1)]
        with m.If(~running):
            m.d.sync += [in_rows.eq(0), out_rows.eq(0)]
        return m


# Timing -------------------------------------------------------------------------
# The exact cost model of the unit, read from the RTL above and equal to the
# simulated cycles (tests/test_sim_random_units.py).
#: Stats of one row: the square root (a cycle to start, one per root bit, one
#: to hand over), then the division (the same), then one to record R.
STATS_CYCLES = (_V_WIDTH + 1) // 2 + intops.LN_RECIP_BITS + 1 + 3
#: The same unrolled (lanes > 1): the sums registered, a stage per root bit and per
#: quotient bit, R recorded; a new row may enter every cycle.
PIPELINED_STATS = 1 + (_V_WIDTH + 1) // 2 + intops.LN_RECIP_BITS + 1 + 1
#: Emit: a row started at cycle s puts its first value on ``o`` at s + 3.
EMIT_LATENCY = 3
#: The last output of a descriptor -> the next descriptor accepted.
RESTART_CYCLES = 1
_NEVER = -(1 << 62)


def default_banks(lanes) -> int:
    """The unit's row banks with ``lanes`` lanes."""
    return _BANKS if lanes == 1 else LANE_BANKS


def layernorm_cycles(tokens, dim, lanes=1, banks=None):
    """Cycles from the descriptor's acceptance to the last output beat.

    Fed with no gaps, drained with no back-pressure: the descriptor, ``dim / lanes``
    parameter beats, then each row through ingest (``dim / lanes`` cycles; ``banks``
    row banks, by default two with one lane, :data:`LANE_BANKS` with more), stats (one row at a time,
    :data:`STATS_CYCLES` each; with lanes pipelined, :data:`PIPELINED_STATS` after
    the row's last beat) and emit (``dim / lanes`` cycles and one between rows).
    """
    beats = dim // lanes
    banks = default_banks(lanes) if banks is None else banks
    last_in = beats + 1  # parameters at 1..beats, rows from beats + 2
    stats_free = emit_free = _NEVER
    out = []
    for r in range(tokens):
        first = max(last_in + 1, out[r - banks] if r >= banks else _NEVER)
        last_in = first + beats - 1
        if lanes == 1:
            stats = max(last_in + 1, stats_free)
            stats_free = stats + STATS_CYCLES
        else:
            stats_free = last_in + PIPELINED_STATS
        emit = max(stats_free, emit_free)
        emit_free = emit + beats + 1
        out.append(emit + beats + EMIT_LATENCY - 1)
    return out[-1]
