"""Integer LayerNorm unit: ``intops.layernorm`` on a stream of int8 rows.

Per row of ``D`` int8 values (``moevit.model.integer.intops.layernorm``)::

    s1 = sum(x); s2 = sum(x*x)
    sigma = max(isqrt((D*s2 - s1*s1 + eps) << 12), 1)   # bit-serial square root
    R = 2**36 // sigma                                  # the one division per row
    n_i = (c_i*R + 2**17) >> 18,  c_i = D*x_i - s1
    y_i = clip8((n_i*gamma_i + beta_i + 2**(shift-1)) >> shift)

Three stages work on different rows at once: *ingest* stores a row and sums
``s1`` and ``s2``; *stats* runs the square root then the division; *emit*
reads the row back and writes ``y``. Two row buffers let a row enter while
the previous one is emitted.

Operation: a descriptor (:class:`~moevit.hw.program.descriptor.LayerNormDescriptor`)
on ``desc``; then ``dim`` beats of ``(gamma, beta)`` on ``param``; then
``tokens`` rows of ``dim`` int8 on ``i``; ``o`` carries the rows of ``y``.
"""

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.units import intexpr
from moevit.hw.units.seqmath import Divider, ISqrt
from moevit.model.integer import intops

__all__ = ["LayerNorm", "param_layout", "layernorm_cycles", "RESTART_CYCLES"]

_BANKS = 2
_ROW_BITS = 2
_V_WIDTH = 48  # (D*s2 - s1*s1 + eps) << 12 < 2**47 (intops)


def param_layout():
    """One channel's constants: ``gamma`` (s16) and ``beta`` (s41)."""
    return data.StructLayout({"gamma": signed(16), "beta": signed(41)})


class LayerNorm(wiring.Component):
    """Row-wise integer LayerNorm, exactly ``intops.layernorm``.

    Parameters
    ----------
    max_dim : int
        Widest row (depth of the row and parameter buffers), at most 1024.

    Members
    -------
    desc : In(stream.Signature(LayerNormDescriptor.layout()))
    param : In(stream.Signature(param_layout()))
    i : In(stream.Signature(signed(8)))
    o : Out(stream.Signature(signed(8)))
    busy : Out(1)
        Working, or an output still waits on ``o``.
    error : Out(3)
        The :class:`~moevit.hw.program.descriptor.Fault` of the last descriptor taken;
        a faulty one is skipped (no beat taken or produced).

    Raises
    ------
    TypeError
        If ``max_dim`` is not an integer in 1..1024.
    """

    def __init__(self, *, max_dim):
        self._MustUse__silence = True  # a unit rejected here is not an unused one
        if not isinstance(max_dim, int) or isinstance(max_dim, bool) \
                or not 1 <= max_dim <= 2**10:
            raise TypeError(f"LayerNorm width must be an integer in 1..1024, not {max_dim!r}")
        from moevit.hw.program.descriptor import FAULT_WIDTH, LayerNormDescriptor

        self._max_dim = max_dim
        del self._MustUse__silence
        super().__init__({
            "desc": In(stream.Signature(LayerNormDescriptor.layout())),
            "param": In(stream.Signature(param_layout())),
            "i": In(stream.Signature(signed(8))),
            "o": Out(stream.Signature(signed(8))),
            "busy": Out(1),
            "error": Out(FAULT_WIDTH),
        })

    @classmethod
    def from_config(cls, hw):
        """As wide as the linear kernel's input buffer (``hw.max_in``)."""
        return cls(max_dim=min(hw.max_in, 2**10))

    @property
    def max_dim(self):
        return self._max_dim

    def elaborate(self, platform):
        from moevit.hw.program.descriptor import (FAULT_WIDTH, Fault, LayerNormDescriptor, fault_code,
                                          shift_out_of_range)

        m = Module()
        n = self._max_dim
        idx = range(n + 1)
        s1_shape = signed((128 * n).bit_length() + 1)
        s2_shape = unsigned(((1 << 14) * n).bit_length())
        v_width = _V_WIDTH

        m.submodules.rows = rows = memory.Memory(shape=signed(8), depth=_BANKS * n, init=[])
        m.submodules.params = params = memory.Memory(shape=param_layout(), depth=n, init=[])
        r_wr, r_rd = rows.write_port(), rows.read_port()
        p_wr, p_rd = params.write_port(), params.read_port()
        m.submodules.isqrt = isqrt = ISqrt(width=v_width)
        m.submodules.divider = divider = Divider(
            dividend_width=intops.LN_RECIP_BITS + 1, divisor_width=v_width // 2)
        norm_shift = intops.LN_RECIP_BITS - intops.LN_VAR_SHIFT // 2 - intops.LN_NORM_FRAC

        dim = Signal(range(n + 1))
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
        m.d.comb += fault.eq(fault_code([
            (Fault.OPCODE, desc.opcode != LayerNormDescriptor.OPCODE),
            (Fault.SHAPE, (desc.tokens == 0) | (desc.dim == 0) | (desc.dim > n)),
            (Fault.CONSTANT, shift_out_of_range(desc.shift) | (desc.eps >= 2**34)),
        ]))
        # Comb outputs from the state, not assigned inside it: Icarus never
        # evaluates an always @* block whose inputs keep their initial values.
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.desc.valid):
                    m.d.sync += self.error.eq(fault)
                with m.If(self.desc.valid & (fault == Fault.NONE)):
                    m.d.sync += [dim.eq(desc.dim), tokens.eq(desc.tokens), eps.eq(desc.eps),
                                 shift.eq(desc.shift), p_cnt.eq(0)]
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                with m.If(p_cnt == dim):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(out_rows == tokens):
                    m.next = "IDLE"
        m.d.comb += [
            self.desc.ready.eq(fsm.ongoing("IDLE")),
            # Busy until the last output has left, not only until it is on `o`.
            self.busy.eq(~fsm.ongoing("IDLE") | self.o.valid),
            self.param.ready.eq(fsm.ongoing("PARAMS") & (p_cnt != dim)),
            running.eq(fsm.ongoing("RUN")),
        ]
        m.d.comb += [p_wr.addr.eq(p_cnt), p_wr.data.eq(self.param.payload),
                     p_wr.en.eq(self.param.valid & self.param.ready)]
        with m.If(p_wr.en):
            m.d.sync += p_cnt.eq(p_cnt + 1)

        def ahead(a, b):
            return (a - b)[:_ROW_BITS]

        done_in = Signal(_ROW_BITS)
        done_stat = Signal(_ROW_BITS)
        done_out = Signal(_ROW_BITS)
        row_s1 = Array(Signal(s1_shape, name=f"s1_{k}") for k in range(_BANKS))
        row_s2 = Array(Signal(s2_shape, name=f"s2_{k}") for k in range(_BANKS))
        row_recip = Array(Signal(intops.LN_RECIP_BITS + 1, name=f"recip{k}")
                          for k in range(_BANKS))

        # Ingest: x into bank done_in % 2 with s1 and s2.
        in_bank = Signal(range(_BANKS))
        in_idx = Signal(idx)
        s1 = Signal(s1_shape)
        s2 = Signal(s2_shape)
        m.d.comb += self.i.ready.eq(running & (in_rows != tokens)
                                    & (ahead(done_in, done_out) < _BANKS))
        x = self.i.payload
        m.d.comb += [r_wr.addr.eq(in_bank * n + in_idx), r_wr.data.eq(x),
                     r_wr.en.eq(self.i.valid & self.i.ready)]
        with m.If(r_wr.en):
            new_s1 = Mux(in_idx == 0, 0, s1) + x
            new_s2 = Mux(in_idx == 0, 0, s2) + (x * x).as_unsigned()
            m.d.sync += [s1.eq(new_s1), s2.eq(new_s2), in_idx.eq(in_idx + 1)]
            with m.If(in_idx + 1 == dim):
                m.d.sync += [row_s1[in_bank].eq(new_s1), row_s2[in_bank].eq(new_s2),
                             in_idx.eq(0), in_bank.eq(in_bank ^ 1),
                             done_in.eq(done_in + 1), in_rows.eq(in_rows + 1)]

        # Stats: isqrt of (D*s2 - s1*s1 + eps) << 12, then 2**36 // max(root, 1).
        st_bank = Signal(range(_BANKS))
        variance = Signal(v_width)
        m.d.comb += variance.eq((dim * row_s2[st_bank] - row_s1[st_bank] * row_s1[st_bank] + eps)
                                << intops.LN_VAR_SHIFT)
        sq_sent = Signal()
        m.d.comb += [
            isqrt.i.payload.eq(variance),
            isqrt.i.valid.eq(~sq_sent & (ahead(done_in, done_stat) != 0)),
            divider.i.payload.dividend.eq(1 << intops.LN_RECIP_BITS),
            divider.i.payload.divisor.eq(Mux(isqrt.o.payload == 0, 1, isqrt.o.payload)),
            divider.i.valid.eq(isqrt.o.valid),
            isqrt.o.ready.eq(divider.i.ready),
            divider.o.ready.eq(1),
        ]
        with m.If(isqrt.i.valid & isqrt.i.ready):
            m.d.sync += sq_sent.eq(1)
        with m.If(divider.o.valid):
            m.d.sync += [row_recip[st_bank].eq(divider.o.payload.quotient), sq_sent.eq(0),
                         st_bank.eq(st_bank ^ 1), done_stat.eq(done_stat + 1)]

        # Emit: y_i from x_i, the row's s1 and R, and channel i's gamma, beta.
        o_bank = Signal(range(_BANKS))
        o_idx = Signal(idx)
        o_run = Signal()
        o_started = Signal(_ROW_BITS)
        o_s1 = Signal(s1_shape)
        o_recip = Signal.like(row_recip[0])
        a_valid, a_last = Signal(), Signal()
        a_s1 = Signal(s1_shape)
        a_recip = Signal.like(row_recip[0])
        advance = Signal()
        issue = Signal()
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            issue.eq(o_run & advance),
            r_rd.addr.eq(o_bank * n + o_idx), r_rd.en.eq(advance),
            p_rd.addr.eq(o_idx), p_rd.en.eq(advance),
        ]
        with m.If(~o_run & (ahead(done_stat, o_started) != 0)):
            m.d.sync += [o_run.eq(1), o_idx.eq(0), o_s1.eq(row_s1[o_bank]),
                         o_recip.eq(row_recip[o_bank]), o_started.eq(o_started + 1)]
        centred = Signal(signed(20))
        normed = Signal(signed(48))
        m.d.comb += [
            centred.eq(dim * r_rd.data - a_s1),
            normed.eq(intexpr.round_shift(
                centred * a_recip, Const(norm_shift, 6))),
        ]
        p = data.View(param_layout(), p_rd.data)
        with m.If(advance):
            m.d.sync += [a_valid.eq(issue), a_last.eq(issue & (o_idx + 1 == dim)),
                         a_s1.eq(o_s1), a_recip.eq(o_recip)]
            with m.If(issue):
                m.d.sync += o_idx.eq(o_idx + 1)
                with m.If(o_idx + 1 == dim):
                    m.d.sync += [o_run.eq(0), o_bank.eq(o_bank ^ 1)]
            m.d.sync += [
                self.o.valid.eq(a_valid),
                self.o.payload.eq(intexpr.clip8(intexpr.round_shift(
                    normed * p.gamma + p.beta, shift))),
            ]
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
#: Emit: a row started at cycle s puts its first value on ``o`` at s + 3.
EMIT_LATENCY = 3
#: The last output of a descriptor -> the next descriptor accepted.
RESTART_CYCLES = 1
_NEVER = -(1 << 62)


def layernorm_cycles(tokens, dim):
    """Cycles from the descriptor's acceptance to the last output value.

    Fed with no gaps, drained with no back-pressure: the descriptor, ``dim``
    parameter beats, then each row through ingest (``dim`` cycles; two row
    banks), stats (:data:`STATS_CYCLES`) and emit (``dim`` cycles and one
    between rows).
    """
    D = dim
    last_in = D + 1  # parameters at 1..D, rows from D + 2
    stats_free = emit_free = _NEVER
    out = []
    for r in range(tokens):
        first = max(last_in + 1, out[r - 2] if r >= 2 else _NEVER)
        last_in = first + D - 1
        stats = max(last_in + 1, stats_free)
        stats_free = stats + STATS_CYCLES
        emit = max(stats_free, emit_free)
        emit_free = emit + D + 1
        out.append(emit + D + EMIT_LATENCY - 1)
    return out[-1]
