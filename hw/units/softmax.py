"""Integer softmax unit: ``intops.softmax`` on a stream of score rows.

The golden model's softmax needs three passes over a row (its maximum, the
sum of the exponentials, the normalised values) and one division. The unit
runs them as four stages that work on different rows at once, each with its
own row buffer, so a new score can enter every cycle:

========  =============================================  ==================
stage     work per row                                   buffer it fills
========  =============================================  ==================
ingest    store the scores, track the row maximum        scores (2 rows)
exp       ``e = exp2_neg(round_shift((s-max)*M, S))``,    exponentials
          sum of ``e`` (6-cycle pipeline, one per cycle)  (3 rows)
divide    ``R = 2**40 // sum`` (restoring divider)       ``R`` per row
emit      ``p = (e*R + 2**24) >> 25`` on the output       --
========  =============================================  ==================

Rows end with ``last``; their lengths may differ (up to ``max_row``).

Where rows are short and come back to back (the ROUTE engine's gate rows, one a
token), the sequential divider (a row every :data:`DIVIDE_CYCLES`) and three
exponential banks would set the pace; ``pipelined_divide`` unrolls the divider (a
row a cycle, :class:`~moevit.hw.units.seqmath.PipelinedDivider`) and ``exp_banks``
lets more rows wait between the exp and emit stages.
"""

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.units import intexpr
from moevit.hw.units.seqmath import Divider, PipelinedDivider
from moevit.model.integer import intops

__all__ = ["Softmax", "score_layout", "prob_layout", "RowSchedule", "row_ends",
           "DIVIDE_CYCLES", "PIPELINED_DIVIDE_CYCLES"]

PROB_WIDTH = intops.PROB_FRAC + 1  # u16: [0, 2**15]
EXP_WIDTH = intops.EXP_FRAC + 1
_SCORE_BANKS = 2
_EXP_BANKS = 3       # the default


def score_layout(width=32):
    """Input beat: one score and whether it ends its row."""
    return data.StructLayout({"score": signed(width), "last": unsigned(1)})


def prob_layout():
    """Output beat: one Q0.15 probability and whether it ends its row."""
    return data.StructLayout({"prob": unsigned(PROB_WIDTH), "last": unsigned(1)})


class Softmax(wiring.Component):
    """Row-wise integer softmax, exactly ``intops.softmax``.

    Parameters
    ----------
    max_row : int
        Longest row (the depth of each row buffer).
    score_width : int
        Bits of a signed score; at most 32 (int32 scores).
    exp_banks : int
        Rows of exponentials held between the exp and emit stages (at least 3).
    pipelined_divide : bool
        The reciprocals from a :class:`~moevit.hw.units.seqmath.PipelinedDivider`
        (a row a cycle) instead of the sequential :class:`~moevit.hw.units.seqmath.Divider`.

    Members
    -------
    multiplier : In(unsigned(15))
        ``M`` of ``intops.softmax``; held while rows are in flight.
    shift : In(unsigned(6))
        ``S`` of ``intops.softmax`` (1..47).
    i : In(stream.Signature(score_layout(score_width)))
        Scores, row after row; ``last`` marks a row's final score.
    o : Out(stream.Signature(prob_layout()))
        Probabilities in the same order, ``last`` on each row's final one.
    busy : Out(1)
        A row is in flight: from its first score until its last probability
        has been taken.

    Raises
    ------
    TypeError
        If ``max_row`` is not a positive integer, ``score_width`` not in 2..32 or
        ``exp_banks`` not an integer of at least 3.
    """

    def __init__(self, *, max_row, score_width=32, exp_banks=_EXP_BANKS,
                 pipelined_divide=False):
        self._MustUse__silence = True  # a unit rejected here is not an unused one
        if not isinstance(max_row, int) or isinstance(max_row, bool) or max_row <= 0:
            raise TypeError(f"Row length must be a positive integer, not {max_row!r}")
        if not isinstance(score_width, int) or not 2 <= score_width <= 32:
            raise TypeError(f"Score width must be an integer in 2..32, not {score_width!r}")
        if not isinstance(exp_banks, int) or isinstance(exp_banks, bool) or exp_banks < 3:
            raise TypeError(f"Exponential banks must be an integer of at least 3, not "
                            f"{exp_banks!r}")
        self._max_row = max_row
        self._score_width = score_width
        self._exp_banks = exp_banks
        self._pipelined = bool(pipelined_divide)
        del self._MustUse__silence
        super().__init__({
            "multiplier": In(unsigned(intops.MULT_BITS)),
            "shift": In(unsigned(6)),
            "i": In(stream.Signature(score_layout(score_width))),
            "o": Out(stream.Signature(prob_layout())),
            "busy": Out(1),
        })

    @classmethod
    def from_config(cls, hw):
        """Rows as long as the attention kernel's key/value buffers, int32 scores."""
        return cls(max_row=hw.kv_depth)

    @property
    def max_row(self):
        return self._max_row

    @property
    def score_width(self):
        return self._score_width

    @property
    def exp_banks(self):
        return self._exp_banks

    @property
    def pipelined_divide(self):
        return self._pipelined

    def elaborate(self, platform):
        m = Module()
        n = self._max_row
        banks = self._exp_banks
        # Row counters only need to tell apart the rows in flight.
        row_bits = (_SCORE_BANKS + banks + 1).bit_length()
        idx_shape = range(n + 1)
        sum_width = ((1 << intops.EXP_FRAC) * n).bit_length()

        m.submodules.scores = scores = memory.Memory(
            shape=signed(self._score_width), depth=_SCORE_BANKS * n, init=[])
        m.submodules.exps = exps = memory.Memory(
            shape=unsigned(EXP_WIDTH), depth=banks * n, init=[])
        s_wr, s_rd = scores.write_port(), scores.read_port()
        e_wr, e_rd = exps.write_port(), exps.read_port()
        m.submodules.divider = divider = (PipelinedDivider if self._pipelined else Divider)(
            dividend_width=intops.SOFTMAX_RECIP_BITS + 1, divisor_width=sum_width)

        # Rows finished by each stage (modulo 2**row_bits).
        done_in = Signal(row_bits)
        done_exp = Signal(row_bits)
        done_div = Signal(row_bits)
        done_out = Signal(row_bits)

        def ahead(a, b):  # rows that stage a finished and stage b has not
            return (a - b)[:row_bits]

        row_max = Array(Signal(signed(self._score_width), name=f"row_max{k}")
                        for k in range(_SCORE_BANKS))
        row_len = Array(Signal(idx_shape, name=f"row_len{k}") for k in range(_SCORE_BANKS))
        exp_len = Array(Signal(idx_shape, name=f"exp_len{k}") for k in range(banks))
        exp_sum = Array(Signal(sum_width, name=f"exp_sum{k}") for k in range(banks))
        recip = Array(Signal(intops.SOFTMAX_RECIP_BITS - intops.PROB_FRAC + 1,
                             name=f"recip{k}") for k in range(banks))


        # Ingest: scores into bank done_in % 2, tracking the maximum.
        in_bank = Signal(range(_SCORE_BANKS))
        in_idx = Signal(idx_shape)
        in_max = Signal(signed(self._score_width))
        # Busy from a row's first score until its last probability has left.
        m.d.comb += self.busy.eq((ahead(done_in, done_out) != 0) | (in_idx != 0))
        m.d.comb += self.i.ready.eq(ahead(done_in, done_exp) < _SCORE_BANKS)
        m.d.comb += [
            s_wr.addr.eq(in_bank * n + in_idx),
            s_wr.data.eq(self.i.payload.score),
            s_wr.en.eq(self.i.valid & self.i.ready),
        ]
        new_max = Signal(signed(self._score_width))
        m.d.comb += new_max.eq(Mux((in_idx != 0) & (in_max > self.i.payload.score),
                                   in_max, self.i.payload.score))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [in_idx.eq(in_idx + 1), in_max.eq(new_max)]
            with m.If(self.i.payload.last):
                m.d.sync += [
                    row_max[in_bank].eq(new_max),
                    row_len[in_bank].eq(in_idx + 1),
                    in_idx.eq(0),
                    in_bank.eq(in_bank ^ 1),
                    done_in.eq(done_in + 1),
                ]

        # Exp: read the scores of the oldest row, six pipeline steps, then
        # write e and add it to the row's sum.
        x_bank = Signal(range(_SCORE_BANKS))
        x_ebank = Signal(range(banks))
        x_idx = Signal(idx_shape)
        x_len = Signal(idx_shape)
        x_max = Signal(signed(self._score_width))
        x_run = Signal()
        x_sum = Signal(sum_width)
        steps = 6
        valid = Signal(steps)  # valid[k]: the value entering step k+1 is real
        last = Signal(steps)
        issue = Signal()
        m.d.comb += issue.eq(x_run & (x_idx < x_len))
        m.d.comb += s_rd.addr.eq(x_bank * n + x_idx)
        m.d.sync += [valid.eq((valid << 1) | issue),
                     last.eq((last << 1) | (issue & (x_idx + 1 == x_len)))]
        with m.If(issue):
            m.d.sync += x_idx.eq(x_idx + 1)
        with m.If(~x_run & (ahead(done_in, done_exp) != 0)
                  & (ahead(done_exp, done_out) < banks)):
            m.d.sync += [x_run.eq(1), x_idx.eq(0), x_len.eq(row_len[x_bank]),
                         x_max.eq(row_max[x_bank]), x_sum.eq(0)]
        # step 1: d = max(s - max, -2**31)
        diff = Signal(signed(33))
        m.d.comb += diff.eq(s_rd.data - x_max)
        d = Signal(signed(32))
        m.d.sync += d.eq(Mux(diff < intops.INT32_MIN, intops.INT32_MIN, diff))
        # step 2: d * M
        prod = Signal(signed(48))
        m.d.sync += prod.eq(d * self.multiplier)
        # step 3: x = round_shift(d*M, S) <= 0, split into z and r
        z, r = Signal(5), Signal(intops.EXP_FRAC)
        zz, rr = intexpr.exp2_neg_parts(intexpr.round_shift(prod, self.shift))
        m.d.sync += [z.eq(zz), r.eq(rr)]
        # steps 4-5: the polynomial, then the shift
        z2, poly = Signal(5), Signal(EXP_WIDTH)
        m.d.sync += [z2.eq(z), poly.eq(intexpr.exp2_neg_poly(r))]
        e = Signal(EXP_WIDTH)
        m.d.sync += e.eq(poly >> z2)
        # step 6: store and sum
        out_idx = Signal(idx_shape)
        m.d.comb += [
            e_wr.addr.eq(x_ebank * n + out_idx),
            e_wr.data.eq(e),
            e_wr.en.eq(valid[steps - 1]),
        ]
        with m.If(valid[steps - 1]):
            m.d.sync += [out_idx.eq(out_idx + 1), x_sum.eq(x_sum + e)]
            with m.If(last[steps - 1]):
                m.d.sync += [
                    exp_sum[x_ebank].eq(x_sum + e),
                    exp_len[x_ebank].eq(out_idx + 1),
                    out_idx.eq(0),
                    x_run.eq(0),
                    x_bank.eq(x_bank ^ 1),
                    x_ebank.eq(Mux(x_ebank == banks - 1, 0, x_ebank + 1)),
                    done_exp.eq(done_exp + 1),
                ]

        # Divide: R = 2**40 // sum, one row at a time (pipelined: a row a cycle, the
        # reciprocals back in order ``latency`` cycles later).
        d_bank = Signal(range(banks))
        m.d.comb += divider.i.payload.dividend.eq(1 << intops.SOFTMAX_RECIP_BITS)
        if self._pipelined:
            d_in = Signal(row_bits)                 # rows sent
            d_in_bank = Signal(range(banks))
            m.d.comb += [divider.i.payload.divisor.eq(exp_sum[d_in_bank]),
                         divider.i.valid.eq(ahead(done_exp, d_in) != 0)]
            with m.If(divider.i.valid):
                m.d.sync += [d_in.eq(d_in + 1),
                             d_in_bank.eq(Mux(d_in_bank == banks - 1, 0, d_in_bank + 1))]
        else:
            d_sent = Signal()
            m.d.comb += [
                divider.i.payload.divisor.eq(exp_sum[d_bank]),
                divider.i.valid.eq(~d_sent & (ahead(done_exp, done_div) != 0)),
                divider.o.ready.eq(1),
            ]
            with m.If(divider.i.valid & divider.i.ready):
                m.d.sync += d_sent.eq(1)
            with m.If(divider.o.valid):
                m.d.sync += d_sent.eq(0)
        with m.If(divider.o.valid):
            m.d.sync += [
                recip[d_bank].eq(divider.o.payload.quotient),
                d_bank.eq(Mux(d_bank == banks - 1, 0, d_bank + 1)),
                done_div.eq(done_div + 1),
            ]

        # Emit: p = (e*R + 2**24) >> 25, one read ahead of the output register.
        o_bank = Signal(range(banks))
        o_idx = Signal(idx_shape)
        o_run = Signal()
        o_len = Signal(idx_shape)
        o_recip = Signal.like(recip[0])
        a_recip = Signal.like(recip[0])
        o_started = Signal(row_bits)
        a_valid, a_last = Signal(), Signal()
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        o_issue = Signal()
        m.d.comb += [
            o_issue.eq(o_run & (o_idx < o_len) & advance),
            e_rd.addr.eq(o_bank * n + o_idx),
            e_rd.en.eq(advance),
        ]
        with m.If(~o_run & (ahead(done_div, o_started) != 0)):
            m.d.sync += [o_run.eq(1), o_idx.eq(0), o_len.eq(exp_len[o_bank]),
                         o_recip.eq(recip[o_bank]), o_started.eq(o_started + 1)]
        with m.If(advance):
            m.d.sync += [a_valid.eq(o_issue), a_last.eq(o_issue & (o_idx + 1 == o_len)),
                         a_recip.eq(o_recip)]
            with m.If(o_issue):
                m.d.sync += o_idx.eq(o_idx + 1)
                with m.If(o_idx + 1 == o_len):
                    m.d.sync += [
                        o_run.eq(0),
                        o_bank.eq(Mux(o_bank == banks - 1, 0, o_bank + 1)),
                    ]
            m.d.sync += [
                self.o.valid.eq(a_valid),
                self.o.payload.last.eq(a_last),
                self.o.payload.prob.eq(intexpr.round_shift(
                    e_rd.data * a_recip,
                    Const(intops.SOFTMAX_RECIP_BITS - intops.PROB_FRAC, 6))),
            ]
        with m.If(self.o.valid & self.o.ready & self.o.payload.last):
            m.d.sync += done_out.eq(done_out + 1)
        return m


# Timing -------------------------------------------------------------------------
# Cycle counts read from the stages above; the models below equal the simulated
# cycles (tests/test_sim_random_units.py).
#: A row of n scores leaves the exp stage n + EXP_CYCLES cycles after it starts:
#: one cycle to start, the six-step pipeline, one to record the sum.
EXP_CYCLES = 7
#: The divider takes its operands, runs one cycle per quotient bit, hands back
#: the reciprocal; the next row's division starts the cycle after.
DIVIDE_CYCLES = intops.SOFTMAX_RECIP_BITS + 3
#: The pipelined divider: a quotient bit a stage, the reciprocal recorded the cycle
#: its last stage ends; a row's division starts the cycle its exponentials are done.
PIPELINED_DIVIDE_CYCLES = intops.SOFTMAX_RECIP_BITS + 2
#: Emit: a row started at cycle s puts its first probability on ``o`` at s + 3.
EMIT_LATENCY = 3
_NEVER = -(1 << 62)


class RowSchedule:
    """Cycles at which each row leaves the exp and divide stages.

    The ingest and emit stages depend on what feeds and drains the unit
    (a stream source, or the attention kernel's QK and PV stages), so the
    caller times those and asks this schedule about the two stages in between.
    Cycle numbers are the caller's.
    """

    def __init__(self, *, pipelined_divide=False):
        self.pipelined = pipelined_divide
        self.exp_done = []  # the cycle done_exp counts the row (its exp bank is full)
        self.div_done = []  # the cycle done_div counts the row (its reciprocal is ready)

    def ingest_from(self, row):
        """First cycle the ingest stage takes row ``row``'s first score (a free score bank)."""
        return self.exp_done[row - 2] if row >= 2 else _NEVER

    def add(self, last_in, length, bank_free):
        """Time the next row; returns the cycle its emit stage may start.

        ``last_in``: the cycle its last score was taken; ``bank_free``: the cycle
        after the row ``exp_banks`` before it was fully taken from ``o`` (the exp
        stage writes into one of that many banks).
        """
        previous = self.exp_done[-1] if self.exp_done else _NEVER
        start = max(last_in + 1, previous, bank_free)
        self.exp_done.append(start + length + EXP_CYCLES)
        if self.pipelined:
            self.div_done.append(self.exp_done[-1] + PIPELINED_DIVIDE_CYCLES)
        else:
            divide = max(self.exp_done[-1], self.div_done[-1] if self.div_done else _NEVER)
            self.div_done.append(divide + DIVIDE_CYCLES)
        return self.div_done[-1]


def row_ends(lengths, *, exp_banks=_EXP_BANKS, pipelined_divide=False, gap=0):
    """Cycle of each row's last probability on ``o``, rows fed back to back.

    Counted from the cycle the first score is taken (cycle 0), with a score
    offered every cycle and ``o`` always ready: the exact cost model of the
    unit (``exp_banks``, ``pipelined_divide``: as :class:`Softmax`'s).
    ``gap``: cycles between a row's last score taken and the next row's first
    offered (the ROUTE engine's renorm walk: a token's logits into the insertion
    list before its selected scores).
    """
    schedule, ends = RowSchedule(pipelined_divide=pipelined_divide), []
    last_in = emit_free = _NEVER
    for row, length in enumerate(lengths):
        first = max(last_in + 1 + gap, schedule.ingest_from(row), 0)
        last_in = first + length - 1
        bank_free = ends[row - exp_banks] + 1 if row >= exp_banks else _NEVER
        start = max(schedule.add(last_in, length, bank_free), emit_free)
        # Emit: one probability a cycle; the next row starts the cycle after the last read.
        emit_free = start + length + 1
        ends.append(start + length + EMIT_LATENCY - 1)
    return ends
