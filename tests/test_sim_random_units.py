"""Randomized differential suites of the attention kernel, softmax, LayerNorm and GELU.

Each case (:func:`moevit.sim.randomized.draw`) is one random design point
(one build) and sequences of random operations back to back in one
simulation: the first with no pauses, whose cycles must equal the unit's
cost model exactly; the others (one; three in the slow set) with gaps and
back-pressure on every stream. The bench
compares every output with the golden model in full, checks that nothing
follows the last beat and that ``busy`` falls; the test checks that
back-pressure held the unit's outputs in the paused sequences (when an output
under pauses carried at least ``HELD_BEATS`` beats).

Fast (``make test``, Icarus): one case per unit. Slow (``make sim``,
``$SIM``): ``SLOW_CASES`` larger cases per unit. ``MOEVIT_SEED=<n>`` runs
only seed ``n`` (the seed is printed and named in the test id).
"""

import os

import pytest

from moevit.sim.randomized import UNITS, draw, tally
from moevit.sim.runner import default_simulator
from moevit.sim.units import run_sequences

FAST_SEEDS = (0,)
HELD_BEATS = 32
SLOW_CASES = 25


def _seeds(default):
    chosen = os.environ.get("MOEVIT_SEED")
    return [int(chosen)] if chosen else list(default)


def run_case(unit, seed, *, large, simulator):
    case = draw(unit, seed, large=large)
    print(f"MOEVIT_SEED={seed}: {case.describe()}")
    run = run_sequences(unit, case.hw, case.streams, case.sequences,
                        test_id=f"random-{unit}-{seed}-{'large' if large else 'small'}-{simulator}",
                        simulator=simulator, seed=seed)
    assert run.cycles[0] == case.model_cycles, (
        f"MOEVIT_SEED={seed}: {unit} cycles with no pauses {run.cycles[0]}, cost model "
        f"{case.model_cycles}")
    for number, (paused, held) in enumerate(zip(case.sequences[1:], run.held[1:]), 1):
        # An output that carried enough beats under a pause pattern was held by it (a
        # short one may slip through the pauses by chance).
        stalled = [name for name in held if paused.pauses[name]["kind"] != "none"
                   and sum(len(op[f"{name}.expected"]) for op in paused.ops) >= HELD_BEATS]
        if stalled:
            assert sum(held[name] for name in stalled) > 0, (
                f"MOEVIT_SEED={seed}: back-pressure on {stalled} never held an output in "
                f"sequence {number}")
    tally(case, simulator, run.seconds)
    return case, run


@pytest.mark.parametrize("seed", _seeds(FAST_SEEDS))
@pytest.mark.parametrize("unit", UNITS)
def test_random_sequences(unit, seed):
    run_case(unit, seed, large=False, simulator="icarus")


@pytest.mark.parametrize("seed", _seeds((3,)))
def test_random_attention_with_row_lanes(seed):
    """A second attention point (seed 0's has one row lane and one bank of K and V): three
    head lanes of four row lanes each, so the Q rows are dealt and the contexts gathered
    across row lanes, and two banks of K and V (a head's loaded while the one before
    computes; each row lane starts its next head on its own)."""
    case, _ = run_case("attention", seed, large=False, simulator="icarus")
    assert (case.hw.row_lanes > 1 and case.hw.kv_banks == 2) or "MOEVIT_SEED" in os.environ


@pytest.mark.parametrize("seed", _seeds((14,)))
def test_random_attention_with_fewer_requantizers(seed):
    """A third attention point: four row lanes whose context beats pass two requantizers
    (``context_lanes`` 2 of 4 score lanes), each beat held two cycles."""
    case, _ = run_case("attention", seed, large=False, simulator="icarus")
    assert case.hw.context_width < case.hw.score_lanes or "MOEVIT_SEED" in os.environ


@pytest.mark.parametrize("seed", _seeds((100,)))
def test_random_attention_with_pipelined_heads(seed):
    """A fourth attention point: two banks of K and V with pipelined heads (each row lane's
    QK takes the next head's rows while its last rows of the head before pass the softmax
    and PV on the other bank), four row lanes, one requantizer of eight score lanes."""
    case, _ = run_case("attention", seed, large=False, simulator="icarus")
    assert case.hw.pipelined_heads and case.hw.row_lanes > 1 \
        and case.hw.context_width < case.hw.score_lanes or "MOEVIT_SEED" in os.environ


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds(range(1000, 1000 + SLOW_CASES)))
@pytest.mark.parametrize("unit", UNITS)
def test_random_sequences_large(unit, seed):
    run_case(unit, seed, large=True, simulator=default_simulator())
