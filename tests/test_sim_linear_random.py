"""The linear kernel against the golden model on random design points and random runs.

Each design point comes from one seed: a HwConfig (array shape, post lanes,
buffer and FIFO depths, one or two MACs per DSP48E2, weight streaming or not,
accumulators of 32 bits or as narrow as the inputs allow, chains of multipliers or not,
a chain's x and w beats a step's features or one)
and several runs,
each a random sequence of operations back to back (ragged shapes, GELU and
residual on or off, 1..N tiles each way) with random gaps on every input stream
(``desc`` included) and back-pressure on the output; every run shares the design point's one
build and one simulation. Every output is compared in full with
``moevit.model.integer.intops``; a run without pauses must take the cost model's
cycles exactly, with no stall counter moving. The default arrays (``tiny``,
``edge-moe``, ``m3vit-s``) get the same, plus runs where the output FIFO
fills and holds the post-processing and where the residual stream starves
it (their stall counters must move), and skipped bad descriptors.

Fast (``make test``): seven design points and the bad descriptors on ``tiny``.
Slow (``make sim``, ``SIM=icarus`` or ``verilator``): ``MOEVIT_LINEAR_POINTS``
design points (default 30) of ``MOEVIT_LINEAR_RUNS`` runs (default 8) and
the default arrays (``tiny`` and ``m3vit-s`` with packing too). Replay one design point with ``MOEVIT_SEED=<seed>``
(the seed is in the test id and in every failure message).
"""

import os
import time

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.descriptor import Fault
from moevit.hw.units.linear import STALL_CAUSES
from moevit.sim.linear_cases import check_runs, random_hw, random_op, random_run
from moevit.sim.runner import default_simulator
from moevit.sim.units import run_linear

RUNS = int(os.environ.get("MOEVIT_LINEAR_RUNS", 8))
POINTS = int(os.environ.get("MOEVIT_LINEAR_POINTS", 30))
# 6 x 6 with one MAC per DSP48E2; 8 x 6 with two; both streaming; 8 x 12 with two, its
# accumulators as narrow as its 61 inputs allow (21 bits); 2 x 4 with chains of 8,
# streaming; 4 x 6 with packed chains of 5; 3 x 8 with chains of 4 whose x and w beats
# bring a step's 4 features (wide_x, wide_w), 58 inputs (last beats of 2); 5 x 12 the same,
# streaming
FAST_SEEDS = [101, 203, 4, 8, 21, 20, 153]
SLOW_SEEDS = list(range(1, POINTS + 1))


def _seeds(seeds):
    replay = os.environ.get("MOEVIT_SEED")
    return [int(replay)] if replay else seeds


@pytest.fixture(scope="module")
def tally(request):
    """Counts of what ran, printed after the module (even under output capture)."""
    counts = {"design points": 0, "runs": 0, "operations": 0, "runs timed against the model": 0,
              **{f"{cause} stall cycles": 0 for cause in STALL_CAUSES}, "seconds": 0.0}
    yield counts
    if counts["runs"]:
        plugins = request.config.pluginmanager
        line = ", ".join(f"{v:.0f} {k}" if k == "seconds" else f"{v} {k}"
                         for k, v in counts.items())
        with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
            plugins.get_plugin("terminalreporter").write_line(
                f"\nlinear random suite on {default_simulator()}: {line}")


def _simulate(hw, runs, test_id, tally):
    simulator = default_simulator()
    start = time.monotonic()
    results, _ = run_linear(hw, runs, test_id=f"{test_id}-{simulator}", simulator=simulator)
    timed = check_runs(runs, results, f"{test_id} ({hw})")
    tally["design points"] += 1
    tally["runs"] += len(runs)
    tally["operations"] += sum(len(run["ops"]) for run in runs)
    tally["runs timed against the model"] += timed
    for got in results:
        for stalls in got["stalls"]:
            for cause in STALL_CAUSES:
                tally[f"{cause} stall cycles"] += stalls[cause]
    tally["seconds"] += time.monotonic() - start
    return results


def design_point(seed, runs=RUNS):
    """``(hw, runs)`` of one seed: the first run without pauses (timed), then random."""
    rng = np.random.default_rng(seed)
    hw = random_hw(rng, name=f"random-{seed}")
    return hw, [random_run(hw, rng, ops=(2, 4), pauses=False)] + [
        random_run(hw, rng) for _ in range(runs - 1)]


@pytest.mark.parametrize("seed", _seeds(FAST_SEEDS))
def test_random_design_point(seed, tally):
    hw, runs = design_point(seed, runs=4)
    print(f"seed {seed}: {hw}")
    _simulate(hw, runs, f"linear-random-{seed}", tally)


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds(SLOW_SEEDS))
def test_random_design_points(seed, tally):
    hw, runs = design_point(seed)
    print(f"seed {seed}: {hw}")
    _simulate(hw, runs, f"linear-random-many-{seed}", tally)


def _small_shape(hw, rng):
    """Shapes that keep a default array's simulation short: 1..3 tiles each way."""
    token_tiles = int(rng.integers(1, 4))
    tokens = (token_tiles - 1) * hw.rows + int(rng.integers(1, hw.rows + 1))
    in_features = int(rng.integers(1, 3 * hw.rows * hw.cols // hw.post_lanes))
    out_features = int(rng.integers(1, 3 * hw.cols + 1))
    return tokens, in_features, out_features


@pytest.mark.slow
@pytest.mark.parametrize("name, packing", [("tiny", 1), ("edge-moe", 1), ("m3vit-s", 1),
                                           ("tiny", 2), ("m3vit-s", 2)],
                         ids=["tiny", "edge-moe", "m3vit-s", "tiny-packed", "m3vit-s-packed"])
def test_default_arrays(name, packing, tally):
    """Random runs on a default array (and with two MACs per DSP48E2: the same runs),
    then runs that must stall: the output FIFO fills (its counter moves), the residual
    stream starves the post-processing."""
    hw = DEFAULT_HW[name].replace(dsp_packing=packing)
    rng = np.random.default_rng(sum(map(ord, name)))
    runs = [random_run(hw, rng, ops=(2, 4), shape=_small_shape, pauses=False)]
    runs += [random_run(hw, rng, shape=_small_shape) for _ in range(RUNS - 1)]
    # Four times the beats the FIFO holds, taken one cycle in ten (made at least one
    # in twenty-five cycles).
    tokens = 3 * hw.rows
    fill = [random_op(hw, rng, tokens, 8, -(-4 * hw.out_depth // tokens) * hw.cols)]
    runs.append(dict(ops=fill, stall="random", stall_probability=0.9, seed=1))
    starve = [random_op(hw, rng, 2 * hw.rows, 8, 2 * hw.cols, residual=True)]
    runs.append(dict(ops=starve, gaps="random", gap_probability=0.6, seed=2))
    results = _simulate(hw, runs, f"linear-default-{name}-packing{packing}", tally)
    assert results[-2]["stalls"][0]["out"] > 0
    assert results[-1]["stalls"][0]["res"] > 0


def test_bad_descriptors_are_skipped_and_flagged(tally):
    """Another opcode, an impossible shape, inconsistent tiling: each descriptor is
    taken, skipped (no other beat consumed), flagged on ``error``; the good
    operations between them are exact."""
    hw = DEFAULT_HW["tiny"]
    rng = np.random.default_rng(4)

    def good():
        return random_op(hw, rng, 7, 9, 20, residual=True)

    desc = good()["desc"]

    def with_field(name, value):
        return desc.to_int_with(**{name: value})

    bad = [
        (with_field("opcode", 2), Fault.OPCODE),
        (with_field("tokens", hw.max_tokens + 1), Fault.SHAPE),
        (with_field("in_features", 0), Fault.SHAPE),
        (with_field("token_tiles", 3), Fault.DERIVED),   # 7 tokens on 4 rows: 2
        (with_field("out_tiles", 1), Fault.DERIVED),     # 20 channels on 16: 2
    ]
    ops = [good()]
    for word, _ in bad:
        ops += [{"bad": word}, good()]
    runs = [dict(ops=ops, gaps="random", stall="random", seed=9)]
    results = _simulate(hw, runs, "linear-bad-descriptors", tally)
    assert results[0]["errors"] == [code.value for _, code in bad]
