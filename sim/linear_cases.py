"""Random cases of the linear kernel, drawn from one seed, and their check.

A *design point* is a HwConfig drawn within what the generator accepts; a
*run* is a sequence of operations sent back to back with its pause patterns
(:func:`moevit.sim.benches.linear.write_case`). Everything comes from one
seed, so a failing case is replayed from the seed it prints. The outputs are
compared in full with the golden model's integer primitives
(``moevit.model.integer.intops``, through :func:`~moevit.hw.units.linear.linear_reference`);
on a run without pauses the cycles must equal the cost model
(:meth:`~moevit.hw.program.descriptor.LinearDescriptor.sequence_cycles`) and no stall
counter may move.
"""

import numpy as np

from moevit.hw.config import HwConfig, products_width
from moevit.hw.program.descriptor import LinearDescriptor
from moevit.hw.units.linear import STALL_CAUSES, linear_reference
from moevit.model.integer import intops
from moevit.sim.streams import PAUSE_KINDS

__all__ = ["random_op", "random_hw", "random_shape", "random_run", "check_outputs", "check_runs"]

def random_op(hw, rng, tokens, in_features, out_features, *, gelu=False, residual=False,
              x_max=128):
    """A random operation whose outputs spread over the int8 range (some saturate).

    ``x_max`` narrows the activations to ``-x_max .. x_max - 1`` (the weights keep the
    whole int8 range) and the requantization with them, so that one output step is a
    few units of the accumulator: an error of a few units (a MAC's lost borrow) then
    moves most outputs, where at the full range it moves a few in a hundred.
    """
    x = rng.integers(-x_max, x_max, (tokens, in_features), dtype=np.int8)
    weight = rng.integers(-128, 128, (out_features, in_features), dtype=np.int8)
    # The accumulator's standard deviation (74: of a uniform int8).
    spread = 74.0 * 74.0 * np.sqrt(in_features) * x_max / 128
    bias = rng.integers(-int(spread), int(spread) + 1, out_features).astype(np.int32)
    mult, shift = intops.quantize_multiplier(40.0 / spread * rng.uniform(0.5, 2.0, out_features))
    # The extremes of the contract's ranges on a few channels.
    mult[0], shift[0] = 2**15 - 1, 47
    if out_features > 1:
        mult[1], shift[1] = 1, 1
        # ... and the largest sum of products on channel 1 of token 0 (every product
        # (-128) x (-128)): on an accumulator of hw.acc_width bits at its narrowest, one
        # bit short would wrap it negative, and the output saturate at -128, not 127.
        x[0], weight[1] = -min(x_max, 128), -128
    fields = dict(tokens=tokens, in_features=in_features, out_features=out_features)
    if gelu:
        b, c = intops.gelu_constants(0.05)
        gm, gs = intops.quantize_multiplier(1.0 / (2 * c))
        fields.update(gelu=1, gelu_b=b, gelu_c=c, gelu_mult=int(gm), gelu_shift=int(gs))
    skip = None
    if residual:
        ma, mb, rs = intops.residual_constants(0.05, 0.04, 0.06)
        fields.update(residual=1, res_mult_y=ma, res_mult_skip=mb, res_shift=rs)
        skip = rng.integers(-128, 128, (tokens, out_features), dtype=np.int8)
    desc = LinearDescriptor(hw, **fields)
    return dict(desc=desc, x=x, weight=weight, bias=bias, multiplier=mult, shift=shift, skip=skip)


def random_hw(rng, name="random") -> HwConfig:
    """A small design point: any array shape, post lanes, buffer and FIFO depths
    the generator accepts (small, so that a build and its runs take seconds), and
    one or two MACs per DSP48E2 (two when ``cols`` is even, half the time), the
    weight banks' first tiles streamed behind their loads half the time, the
    accumulators as narrow as ``max_in`` allows half the time, and a chain of 2 or
    more multipliers a position half the time (its x beats a step's features, ``wide_x``,
    half of those times where the default bus word holds them; its w beats, ``wide_w``,
    the same)."""
    post_lanes = int(rng.choice([1, 2, 4, 8]))
    cols = post_lanes * int(rng.choice([1, 2, 3]))
    rows = int(rng.integers(1, 9))
    max_tokens = rows * int(rng.integers(1, 6))
    max_in = int(rng.integers(1, 65))
    out_depth = int(rng.integers(3, 9))
    packing = 2 if cols % 2 == 0 and rng.random() < 0.5 else 1
    streaming = int(rng.integers(2))
    # Accumulators as narrow as max_in allows (as the search makes them) half the time.
    acc_width = products_width(max_in) if rng.random() < 0.5 else 32
    # A chain of 2 to the deepest the packing allows half the time (drawn last: the
    # seeds' other fields stay those of the points drawn before chains existed).
    deepest = HwConfig.MAX_PACKED_CHAIN if packing == 2 else HwConfig.MAX_CHAIN_DEPTH
    chain = int(rng.integers(2, deepest + 1)) if rng.random() < 0.5 else 1
    # A chain's x beats, and its w beats, a step's features half the time each where the
    # default bus word holds them.
    wide_x = int(rng.integers(2)) if chain > 1 and 16 % chain == 0 else 0
    wide_w = int(rng.integers(2)) if chain > 1 and 16 % chain == 0 else 0
    return HwConfig(name=name, rows=rows, cols=cols, post_lanes=post_lanes,
                    max_tokens=max_tokens, max_in=max_in, out_depth=out_depth,
                    dsp_packing=packing, weight_streaming=streaming, acc_width=acc_width,
                    chain_depth=chain, wide_x=wide_x, wide_w=wide_w)


def random_shape(hw, rng, *, max_tiles=4, max_out_tiles=3):
    """``(tokens, in_features, out_features)``: 1..N tiles each way, the last token
    tile with 1..rows valid rows and the last out tile with 1..cols channels;
    short reductions (fewer cycles than a drain) as often as long ones."""
    token_tiles = int(rng.integers(1, min(max_tiles, hw.max_tokens // hw.rows) + 1))
    tokens = (token_tiles - 1) * hw.rows + int(rng.integers(1, hw.rows + 1))
    short = min(hw.max_in, hw.rows * hw.cols // hw.post_lanes + 5)
    in_features = int(rng.integers(1, (short if rng.random() < 0.5 else hw.max_in) + 1))
    out_tiles = int(rng.integers(1, max_out_tiles + 1))
    out_features = (out_tiles - 1) * hw.cols + int(rng.integers(1, hw.cols + 1))
    return tokens, in_features, out_features


def random_run(hw, rng, *, ops=(1, 4), shape=random_shape, pauses=True) -> dict:
    """A run: 1..4 random operations (GELU and residual on or off, a third of them
    on narrow activations) with random pause kinds and probabilities
    (``pauses=False``: none) and a seed."""
    sequence = [random_op(hw, rng, *shape(hw, rng), gelu=bool(rng.integers(2)),
                          residual=bool(rng.integers(2)),
                          x_max=int(rng.choice([128, 128, 4])))
                for _ in range(int(rng.integers(ops[0], ops[1] + 1)))]
    run = dict(ops=sequence, seed=int(rng.integers(2**31)))
    if pauses:
        run.update(gaps=str(rng.choice(PAUSE_KINDS)), stall=str(rng.choice(PAUSE_KINDS)),
                   gap_probability=round(float(rng.uniform(0.1, 0.7)), 2),
                   stall_probability=round(float(rng.uniform(0.1, 0.9)), 2))
    return run


def check_outputs(runs, results, what):
    """Every output of every run equal to the golden model's, in full (AssertionError)."""
    for r, (run, got) in enumerate(zip(runs, results)):
        for k, op in enumerate(run["ops"]):
            if "desc" not in op:
                continue
            d = op["desc"]
            where = (f"{what} run {r} (seed {run.get('seed', 0)}) op {k} "
                     f"{d.tokens}x{d.in_features}->{d.out_features}")
            want = linear_reference(d, op["x"], op["weight"], op["bias"], op["multiplier"],
                                    op["shift"], op.get("skip"))
            out = got["outputs"][k]
            assert out.dtype == np.int8 and out.shape == want.shape, where
            bad = np.argwhere(out != want)
            assert bad.size == 0, (
                f"{where}: {len(bad)} of {want.size} outputs differ, first at "
                f"{bad[0].tolist()}: {out[tuple(bad[0])]} != {want[tuple(bad[0])]}")


def check_runs(runs, results, what):
    """:func:`check_outputs`; on runs without pauses, also the cycles equal to the
    cost model's and no stall counter moved.

    Returns the number of runs without pauses (whose cycles were checked).
    """
    check_outputs(runs, results, what)
    timed = 0
    for r, (run, got) in enumerate(zip(runs, results)):
        good = [op["desc"] for op in run["ops"] if "desc" in op]
        if run.get("gaps", "none") != "none" or run.get("stall", "none") != "none" \
                or len(good) != len(run["ops"]):
            continue
        where = f"{what} run {r} (seed {run.get('seed', 0)})"
        model = LinearDescriptor.sequence_cycles(good)
        assert got["cycles"] == model, f"{where}: simulated {got['cycles']} != model {model}"
        moved = [s for s in got["stalls"] if any(s[c] for c in STALL_CAUSES)]
        assert not moved, f"{where}: stall counters moved without pauses: {moved}"
        timed += 1
    return timed
