"""Sequential integer arithmetic: a restoring divider and a bit-serial square root.

Both are small multi-cycle units for operations that happen once per row
(the softmax reciprocal, the LayerNorm inverse standard deviation), where one
result bit per cycle costs nothing against the row's length and saves a wide
combinational array. Where rows come faster than one per result's bits (the
LayerNorm unit with lanes), :class:`PipelinedDivider` and :class:`PipelinedISqrt`
unroll the same steps into one register stage per bit: an operand every cycle,
the result the same number of cycles later.
"""

from amaranth import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Divider", "ISqrt", "PipelinedDivider", "PipelinedISqrt"]


def _positive(what, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TypeError(f"{what} must be a positive integer, not {value!r}")


class Divider(wiring.Component):
    """Unsigned restoring divider: ``quotient = dividend // divisor``.

    One quotient bit per cycle: a result ``dividend_width`` cycles after the
    operands are accepted. A zero divisor gives an all-ones quotient (the
    callers never divide by zero: a softmax row sum is at least one).

    Parameters
    ----------
    dividend_width : int
        Bits of the unsigned dividend (and of the quotient).
    divisor_width : int
        Bits of the unsigned divisor.

    Members
    -------
    i : In(stream.Signature(StructLayout({"dividend", "divisor"})))
        Operands.
    o : Out(stream.Signature(StructLayout({"quotient", "remainder"})))
        Results, held until accepted.
    """

    def __init__(self, *, dividend_width, divisor_width):
        self._MustUse__silence = True  # a unit rejected here is not an unused one
        _positive("Dividend width", dividend_width)
        _positive("Divisor width", divisor_width)
        self._nw = dividend_width
        self._dw = divisor_width
        del self._MustUse__silence
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "dividend": unsigned(dividend_width), "divisor": unsigned(divisor_width)}))),
            "o": Out(stream.Signature(data.StructLayout({
                "quotient": unsigned(dividend_width), "remainder": unsigned(divisor_width)}))),
        })

    @property
    def dividend_width(self):
        return self._nw

    @property
    def divisor_width(self):
        return self._dw

    def elaborate(self, platform):
        m = Module()
        nw, dw = self._nw, self._dw
        # The dividend shifts out at the top while quotient bits shift in at
        # the bottom, so one register holds both.
        shift = Signal(nw)
        divisor = Signal(dw)
        rem = Signal(dw + 1)
        count = Signal(range(nw + 1))
        trial = Signal(dw + 2)
        m.d.comb += trial.eq(rem.shift_left(1) | shift[nw - 1])
        m.d.comb += [self.o.payload.quotient.eq(shift), self.o.payload.remainder.eq(rem)]

        # Comb outputs from the state, not assigned inside it: Icarus never
        # evaluates an always @* block whose inputs keep their initial values.
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.i.valid):
                    m.d.sync += [
                        shift.eq(self.i.payload.dividend),
                        divisor.eq(self.i.payload.divisor),
                        rem.eq(0),
                        count.eq(nw),
                    ]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(trial >= divisor):
                    m.d.sync += [rem.eq(trial - divisor), shift.eq((shift << 1) | 1)]
                with m.Else():
                    m.d.sync += [rem.eq(trial), shift.eq(shift << 1)]
                m.d.sync += count.eq(count - 1)
                with m.If(count == 1):
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(self.o.ready):
                    m.next = "IDLE"
        m.d.comb += [self.i.ready.eq(fsm.ongoing("IDLE")), self.o.valid.eq(fsm.ongoing("DONE"))]
        return m


class ISqrt(wiring.Component):
    """Bit-serial integer square root: ``root = floor(sqrt(value))``.

    The digit-by-digit method: two bits of the operand and one bit of the root
    per cycle, so a result ``ceil(width / 2)`` cycles after the operand is
    accepted.

    Parameters
    ----------
    width : int
        Bits of the unsigned operand; the root has ``ceil(width / 2)`` bits.

    Members
    -------
    i : In(stream.Signature(unsigned(width)))
        Operand.
    o : Out(stream.Signature(unsigned(ceil(width / 2))))
        Root, held until accepted.
    """

    def __init__(self, *, width):
        self._MustUse__silence = True  # a unit rejected here is not an unused one
        _positive("Operand width", width)
        self._width = width
        self._rw = (width + 1) // 2
        del self._MustUse__silence
        super().__init__({
            "i": In(stream.Signature(unsigned(width))),
            "o": Out(stream.Signature(unsigned(self._rw))),
        })

    @property
    def width(self):
        return self._width

    def elaborate(self, platform):
        m = Module()
        rw = self._rw
        value = Signal(2 * rw)  # padded to an even number of bits
        root = Signal(rw)
        rem = Signal(rw + 2)
        count = Signal(range(rw + 1))
        cur = Signal(rw + 3)
        trial = Signal(rw + 3)
        m.d.comb += [
            cur.eq((rem << 2) | value[2 * rw - 2:]),
            trial.eq((root << 2) | 1),
            self.o.payload.eq(root),
        ]
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.i.valid):
                    m.d.sync += [value.eq(self.i.payload), root.eq(0), rem.eq(0),
                                 count.eq(rw)]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(cur >= trial):
                    m.d.sync += [rem.eq(cur - trial), root.eq((root << 1) | 1)]
                with m.Else():
                    m.d.sync += [rem.eq(cur), root.eq(root << 1)]
                m.d.sync += [value.eq(value << 2), count.eq(count - 1)]
                with m.If(count == 1):
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(self.o.ready):
                    m.next = "IDLE"
        m.d.comb += [self.i.ready.eq(fsm.ongoing("IDLE")), self.o.valid.eq(fsm.ongoing("DONE"))]
        return m


def _pipe_signature(in_shape, out_shape):
    """An operand in and a result out each cycle: no back-pressure."""
    return {"i": In(stream.Signature(in_shape, always_ready=True)),
            "o": Out(stream.Signature(out_shape, always_ready=True))}


class PipelinedDivider(wiring.Component):
    """:class:`Divider`'s steps unrolled: one quotient bit per register stage.

    Takes operands every cycle; each result leaves ``dividend_width`` cycles
    after its operands, in order. Same parameters and payloads as
    :class:`Divider`; neither stream has ``ready``.
    """

    def __init__(self, *, dividend_width, divisor_width):
        self._MustUse__silence = True
        _positive("Dividend width", dividend_width)
        _positive("Divisor width", divisor_width)
        self._nw, self._dw = dividend_width, divisor_width
        del self._MustUse__silence
        super().__init__(_pipe_signature(
            data.StructLayout({"dividend": unsigned(dividend_width),
                               "divisor": unsigned(divisor_width)}),
            data.StructLayout({"quotient": unsigned(dividend_width),
                               "remainder": unsigned(divisor_width)})))

    @property
    def latency(self):
        return self._nw

    def elaborate(self, platform):
        m = Module()
        nw, dw = self._nw, self._dw
        valid, shift = self.i.valid, self.i.payload.dividend
        divisor, rem = self.i.payload.divisor, Const(0, dw + 1)
        for k in range(nw):
            trial = Signal(dw + 2, name=f"trial{k}")
            m.d.comb += trial.eq(rem.shift_left(1) | shift[nw - 1])
            more = trial >= divisor
            stage = (Signal(name=f"valid{k}"), Signal(nw, name=f"shift{k}"),
                     Signal(dw, name=f"divisor{k}"), Signal(dw + 1, name=f"rem{k}"))
            m.d.sync += [stage[0].eq(valid), stage[1].eq((shift << 1) | more),
                         stage[2].eq(divisor), stage[3].eq(Mux(more, trial - divisor, trial))]
            valid, shift, divisor, rem = stage
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.quotient.eq(shift),
                     self.o.payload.remainder.eq(rem)]
        return m


class PipelinedISqrt(wiring.Component):
    """:class:`ISqrt`'s steps unrolled: one root bit per register stage.

    Takes an operand every cycle; each root leaves ``ceil(width / 2)`` cycles
    after its operand, in order. Neither stream has ``ready``.
    """

    def __init__(self, *, width):
        self._MustUse__silence = True
        _positive("Operand width", width)
        self._width, self._rw = width, (width + 1) // 2
        del self._MustUse__silence
        super().__init__(_pipe_signature(unsigned(width), unsigned(self._rw)))

    @property
    def latency(self):
        return self._rw

    def elaborate(self, platform):
        m = Module()
        rw = self._rw
        valid, value = self.i.valid, self.i.payload
        root, rem = Const(0, rw), Const(0, rw + 2)
        for k in range(rw):
            # Operand bits 2(rw-1-k)+1 .. 2(rw-1-k) come down at stage k.
            cur = Signal(rw + 3, name=f"cur{k}")
            trial = Signal(rw + 3, name=f"trial{k}")
            pair = value.shift_right(2 * (rw - 1 - k))[:2]
            m.d.comb += [cur.eq((rem << 2) | pair), trial.eq((root << 2) | 1)]
            more = cur >= trial
            stage = (Signal(name=f"valid{k}"), Signal(2 * rw, name=f"value{k}"),
                     Signal(rw, name=f"root{k}"), Signal(rw + 2, name=f"rem{k}"))
            m.d.sync += [stage[0].eq(valid), stage[1].eq(value), stage[2].eq((root << 1) | more),
                         stage[3].eq(Mux(more, cur - trial, cur))]
            valid, value, root, rem = stage
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.eq(root)]
        return m
