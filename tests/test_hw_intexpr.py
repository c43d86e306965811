"""The Amaranth expressions of moevit.hw.units.intexpr against moevit.model.integer.intops, in full."""

import numpy as np
from amaranth import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from moevit.hw.units import intexpr
from moevit.model.integer import intops


def _evaluate(inputs, build, vectors):
    """Drive each vector of input values and read the expression's value."""
    signals = [Signal(shape) for shape in inputs]
    m = Module()
    expr = build(*signals)
    out = Signal(expr.shape())
    m.d.comb += out.eq(expr)
    results = []

    async def bench(ctx):
        for vector in vectors:
            for signal, value in zip(signals, vector):
                ctx.set(signal, int(value))
            results.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return np.array(results, dtype=np.int64)


def test_exp2_neg_matches_intops():
    rng = np.random.default_rng(0)
    x = np.concatenate([-np.arange(0, 3 << 15, 7), -rng.integers(0, 1 << 45, 2000),
                        [0, -1, -(16 << 15), -(17 << 15) + 1, -(1 << 45)]])

    def build(value):
        z, r = intexpr.exp2_neg_parts(value)
        return intexpr.exp2_neg_poly(r) >> z

    got = _evaluate([signed(47)], build, [(v,) for v in x])
    np.testing.assert_array_equal(got, intops.exp2_neg(x))


def test_gelu_matches_intops_on_every_int8():
    q = np.arange(-128, 128)
    for scale in (2.0**-7, 0.03, 2.0**-2):
        b, c = intops.gelu_constants(scale)
        got = _evaluate([signed(8), unsigned(12), unsigned(22)], intexpr.gelu,
                        [(v, b, c) for v in q])
        np.testing.assert_array_equal(got, intops.gelu(q, b, c))


def test_requantize_matches_intops():
    rng = np.random.default_rng(1)
    acc = np.concatenate([rng.integers(-2**31, 2**31, 3000), [-2**31, 2**31 - 1, 0, -1]])
    mult = rng.integers(1, 2**15, acc.size)
    shift = rng.integers(1, 48, acc.size)
    got = _evaluate([signed(32), unsigned(15), unsigned(6)], intexpr.requantize,
                    list(zip(acc, mult, shift)))
    np.testing.assert_array_equal(got, intops.requantize(acc, mult, shift))
