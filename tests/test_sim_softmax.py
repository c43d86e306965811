"""The integer softmax unit in simulation, bit for bit against ``intops.softmax``.

Fast (Icarus): rows that drive the softmax to its extremes (all-equal rows,
one dominant score, int32 extremes whose difference is clamped, rows of one
score, the longest row) with seeded gaps and back-pressure, under ordinary and
extreme constants. Slow (``$SIM``): every score row of the trained ``tiny``
model's first attention layer, against the golden model's recorded
probabilities.
"""

import numpy as np
import pytest

from moevit.hw.config import HwConfig
from moevit.hw.units.softmax import Softmax
from moevit.model.integer import intops
from moevit.sim.runner import default_simulator
from moevit.sim.units import run_softmax, tiny_quantized

HW = HwConfig(name="softmax-small", kv_depth=40)


def extreme_rows(rng):
    top, bottom = intops.INT32_MAX, intops.INT32_MIN
    return [
        rng.integers(-2**20, 2**20, 17),
        np.full(9, 1234),  # all equal
        np.array([5]),  # one score
        np.concatenate([[2**20], rng.integers(-2**10, 2**10, 12)]),  # one dominant
        np.array([top, bottom, bottom, top, 0]),  # s - max below -2**31: clamped
        np.array([bottom] * 6),
        rng.integers(-2**31, 2**31, HW.kv_depth),  # the longest row
        np.array([3, 3]),
    ]


@pytest.mark.parametrize("constants", ["ordinary", "extreme"])
def test_extremes_icarus(constants):
    rng = np.random.default_rng(5)
    rows = extreme_rows(rng)
    if constants == "ordinary":
        mult, shift = intops.softmax_constants(2.0**-12)
    else:  # the largest exponent step: every non-maximum score underflows
        mult, shift = 2**15 - 1, 1
    run = run_softmax(HW, rows, mult, shift, test_id=f"softmax-extremes-{constants}",
                      simulator="icarus", gaps="random", stall="random", seed=4)
    probs = np.split(run.out, np.cumsum([len(r) for r in rows])[:-1])
    assert (probs[1] == probs[1][0]).all()  # the bench compared every value; these
    assert probs[2][0] == intops.PROB_ONE  # are the extremes the rows were built for


def test_constant_exponent_icarus():
    """M = 1, S = 47: every exponent rounds to 0, every row is uniform."""
    rows = [np.arange(7) * 1000, np.array([intops.INT32_MIN, intops.INT32_MAX])]
    run = run_softmax(HW, rows, 1, 47, test_id="softmax-uniform", simulator="icarus",
                      gaps="fixed", stall="none", seed=1)
    assert (run.out[:7] == run.out[0]).all()


@pytest.mark.slow
def test_tiny_model_scores():
    from moevit.model.integer import golden

    qmodel, image = tiny_quantized()
    result = golden.run(qmodel, image, 0)
    mult, shift = (int(c) for c in qmodel["blocks.0.attn.softmax"])
    heads = qmodel.config.heads
    rows = [row for h in range(heads) for row in result.tensors[f"blocks.0.attn.scores.h{h}"]]
    run = run_softmax(HwConfig(name="tiny-softmax", kv_depth=qmodel.config.tokens), rows, mult,
                      shift, test_id=f"softmax-tiny-{default_simulator()}", seed=2)
    expected = np.concatenate([result.tensors[f"blocks.0.attn.probs.h{h}"].ravel()
                               for h in range(heads)])
    np.testing.assert_array_equal(run.out, expected)


def test_bad_parameters():
    with pytest.raises(TypeError, match=r"^Row length must be a positive integer, not 0$"):
        Softmax(max_row=0)
    with pytest.raises(TypeError, match=r"^Score width must be an integer in 2\.\.32, not 40$"):
        Softmax(max_row=8, score_width=40)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_short_rows_back_to_back_cycles(seed):
    """Short rows back to back (the ROUTE engine's gate rows) on a random
    ``exp_banks`` and divider (sequential or pipelined), with a random ``gap``
    between a row's last score and the next one's first: every probability as ``intops.softmax``, each
    row's last one on ``o`` in the cycle :func:`row_ends` gives (Amaranth's
    simulator, ``o`` always ready)."""
    from amaranth.sim import Simulator

    from moevit.hw.units.softmax import row_ends

    rng = np.random.default_rng(seed)
    banks, pipelined = int(rng.choice([3, 4, 6])), bool(seed % 2)
    gap, longest = int(rng.integers(0, 6)), int(rng.choice([2, 8, 16]))
    mult, shift = intops.softmax_constants(float(rng.choice([0.05, 0.3])))
    rows = [rng.integers(-128, 128, int(rng.integers(1, longest + 1))) for _ in range(12)]
    print(f"seed {seed}: exp_banks {banks}, pipelined {pipelined}, gap {gap}, "
          f"lengths {[len(r) for r in rows]}")
    dut = Softmax(max_row=longest, score_width=8, exp_banks=banks, pipelined_divide=pipelined)
    ends, probs = [], []

    async def feed(ctx):
        ctx.set(dut.multiplier, mult)
        ctx.set(dut.shift, shift)
        for r, row in enumerate(rows):
            for _ in range(gap if r else 0):
                await ctx.tick()
            for k, score in enumerate(row):
                ctx.set(dut.i.payload.score, int(score))
                ctx.set(dut.i.payload.last, k == len(row) - 1)
                ctx.set(dut.i.valid, 1)
                await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def drain(ctx):
        ctx.set(dut.o.ready, 1)
        cycle, first = 0, None
        async for _, _, valid, ready, prob, last, taken in ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload.prob, dut.o.payload.last,
                dut.i.valid & dut.i.ready):
            if taken and first is None:
                first = cycle
            if valid:
                probs.append(prob)
                if last:
                    ends.append(cycle - first)
                    if len(ends) == len(rows):
                        return
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(feed)
    sim.add_testbench(drain)
    sim.run()
    want = np.concatenate([intops.softmax(r[None, :], mult, shift)[0] for r in rows])
    np.testing.assert_array_equal(probs, want, err_msg=f"seed {seed}")
    model = row_ends([len(r) for r in rows], exp_banks=banks, pipelined_divide=pipelined,
                     gap=gap)
    assert ends == model, f"seed {seed}: simulated {ends}, model {model}"
