"""The golden model's integer formulas as Amaranth expressions.

Each function here builds the combinational expression of one formula of
:mod:`moevit.model.integer.intops`, with the same widths, so that the units that
pipeline them (softmax, GELU, LayerNorm, attention) read like the
specification. Registers between the steps are the caller's choice.
"""

from amaranth import Cat, Const, Mux, signed, unsigned

from moevit.model.integer import intops

__all__ = ["non_negative", "round_shift", "clip8", "requantize", "exp2_neg_parts", "exp2_neg_poly",
           "gelu"]


def non_negative(value):
    """An unsigned value as a signed one of the same magnitude (one bit wider)."""
    return Cat(value, Const(0, 1)).as_signed()


def round_shift(value, shift):
    """``(value + 2**(shift-1)) >> shift`` for a run-time ``shift >= 1``.

    Written as ``((value >> (shift-1)) + 1) >> 1``, which is equal for every
    integer (the dropped low bits are below half of the last step), so no
    variable left shift is needed.
    """
    return ((value >> (shift - 1)[:len(shift)]) + 1) >> 1


def clip8(value):
    """Saturate a signed value to ``[-128, 127]`` (``intops.clip8``)."""
    return Mux(value < intops.INT8_MIN, Const(intops.INT8_MIN, signed(8)),
               Mux(value > intops.INT8_MAX, Const(intops.INT8_MAX, signed(8)), value[:8].as_signed()))


def requantize(acc, multiplier, shift):
    """``clip8((acc * M + 2**(S-1)) >> S)`` (``intops.requantize``); signed(8)."""
    return clip8(round_shift(acc * multiplier, shift))


def exp2_neg_parts(x):
    """Split a non-positive Q.15 exponent into ``(z, r)`` of ``intops.exp2_neg``.

    ``z = min((-x) >> 15, 16)`` (unsigned(5)) and ``r = (-x) & 0x7fff``
    (unsigned(15)).
    """
    neg = (-x).as_unsigned()
    whole = neg >> intops.EXP_FRAC
    z = Mux(whole > 16, 16, whole[:5])
    return z, neg[:intops.EXP_FRAC]


def exp2_neg_poly(r):
    """``p = 2**15 + ((r * (EXP_A + ((EXP_B * r) >> 15))) >> 15)``: ``2**-v`` in Q0.15.

    Returns an unsigned(16) value in ``(2**14, 2**15]``; ``p >> z`` is the
    result of ``intops.exp2_neg``.
    """
    inner = Const(intops.EXP_A, signed(16)) + ((Const(intops.EXP_B, unsigned(13)) * r)
                                               >> intops.EXP_FRAC)
    p = (1 << intops.EXP_FRAC) + ((non_negative(r) * inner) >> intops.EXP_FRAC)
    return p.as_unsigned()[:16]


def gelu(q, b, c):
    """``intops.gelu``: ``q * (2c - t*t)`` for ``q >= 0``, ``q * t*t`` below, signed(32).

    ``t = b - min(|q|, b)``; ``q`` signed(8), ``b`` unsigned(12), ``c`` unsigned(22).
    """
    mag = Mux(q < 0, -q, q).as_unsigned()[:8]
    t = (b - Mux(mag < b, mag, b)).as_unsigned()[:12]
    t2 = t * t
    factor = non_negative(Mux(q < 0, t2, (c << 1) - t2))
    return (q * factor)[:32].as_signed()
