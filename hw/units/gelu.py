"""Integer GELU unit: ``requantize(intops.gelu(x, b, c), mult, shift)`` on a stream.

The golden model's fused GELU (``moevit.model.integer.golden.linear`` with
:class:`~moevit.model.integer.golden.GeluConsts`): I-BERT's second-order erf
polynomial on each int8 value, then a requantization back to int8. Element
by element, ``lanes`` values per beat, two pipeline steps; a stalled output
holds the pipeline.
"""

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.units import intexpr
from moevit.model.integer import intops

__all__ = ["Gelu", "gelu_cycles", "LATENCY"]

#: A beat taken at cycle t leaves at t + LATENCY (the GELU, then the requantization).
LATENCY = 2


class Gelu(wiring.Component):
    """``lanes`` integer GELUs with requantization, exactly ``intops``.

    Parameters
    ----------
    lanes : int
        int8 values per beat.

    Members
    -------
    b, c : In(unsigned(12)), In(unsigned(22))
        ``intops.gelu`` constants (``gelu_constants``).
    mult, shift : In(unsigned(15)), In(unsigned(6))
        Requantization of the GELU output to int8.
    i : In(stream.Signature(unsigned(8 * lanes)))
        ``lanes`` int8 values, lane ``l`` in bits ``8l..8l+7``.
    o : Out(stream.Signature(unsigned(8 * lanes)))

    Raises
    ------
    TypeError
        If ``lanes`` is not a positive integer.
    """

    def __init__(self, *, lanes):
        self._MustUse__silence = True  # a unit rejected here is not an unused one
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes <= 0:
            raise TypeError(f"Lanes must be a positive integer, not {lanes!r}")
        self._lanes = lanes
        # A plain bit vector, lane l in bits 8l..8l+7: with an ArrayLayout payload the
        # Verilog gets wires named "o__payload[0]", on which Yosys's ABC9 (yowasp) fails.
        beat = stream.Signature(unsigned(8 * lanes))
        del self._MustUse__silence
        super().__init__({
            "b": In(unsigned(12)),
            "c": In(unsigned(22)),
            "mult": In(unsigned(intops.MULT_BITS)),
            "shift": In(unsigned(6)),
            "i": In(beat),
            "o": Out(beat),
        })

    @classmethod
    def from_config(cls, hw):
        """One lane per column of the linear kernel's output beat."""
        return cls(lanes=hw.cols)

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        advance = Signal()
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        mid_valid = Signal()
        mid = [Signal(signed(32), name=f"gelu{l}") for l in range(self._lanes)]
        with m.If(advance):
            m.d.sync += [mid_valid.eq(self.i.valid), self.o.valid.eq(mid_valid)]
            m.d.sync += [mid[l].eq(intexpr.gelu(self.i.payload[8 * l:8 * l + 8].as_signed(),
                                                self.b, self.c))
                         for l in range(self._lanes)]
            m.d.sync += [self.o.payload[8 * l:8 * l + 8].eq(
                intexpr.requantize(mid[l], self.mult, self.shift)) for l in range(self._lanes)]
        return m


def gelu_cycles(beats):
    """Cycles from the first beat taken (cycle 0) to the last beat out, with no gaps
    and no back-pressure: one beat a cycle through a :data:`LATENCY`-step pipeline.
    The exact cost model (tests/test_sim_random_units.py)."""
    return beats - 1 + LATENCY
