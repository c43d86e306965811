"""The MoE unit against the golden model: golden layers, random design points, bad descriptors.

Every ``lists`` beat (expert, count, token, gate weight) and every ``y`` beat
is compared in full with the golden model: the tensors a recorded
``golden.run`` kept for the ``tiny`` model's MoE layers (``gate.topk``,
``gate.weights``, ``experts.{e}.tokens``, ``mlp.out``, fed the golden
``gate.logits`` and ``experts.{e}.fc2.out``), or ``moe_reference`` (the same
``intops`` calls as ``golden.py``) for random operations. Runs without pauses
must take :meth:`MoeDescriptor.expected_cycles` exactly.

Fast (``make test``, Icarus): every MoE layer and task of the untrained
``tiny`` model back to back, one random design point, the bad descriptors
(random operations, random gaps and back-pressure). Slow: also the anchors'
layer shapes (``edge-moe``, ``m3vit-s``) on their default hardware. Slow (``make sim``, ``$SIM``): the trained
``tiny`` model, ``MOEVIT_MOE_POINTS`` random design points (default 12) of
four runs each. Replay one with ``MOEVIT_SEED=<seed>`` (the seed is in the
test id and in every failure message).
"""

import os

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.descriptor import Fault
from moevit.sim.moe_cases import check_runs, golden_ops, random_hw, random_op, random_run, run_moe
from moevit.sim.runner import default_simulator
from moevit.sim.units import tiny_quantized

POINTS = int(os.environ.get("MOEVIT_MOE_POINTS", 12))


def _seeds(seeds):
    replay = os.environ.get("MOEVIT_SEED")
    return [int(replay)] if replay else seeds


def _simulate(hw, runs, test_id, simulator=None):
    simulator = simulator or default_simulator()
    summary, result = run_moe(hw, runs, test_id=f"{test_id}-{simulator}", simulator=simulator)
    timed = check_runs(runs, summary, f"{test_id} ({hw})")
    ops = sum(len(run["ops"]) for run in runs)
    print(f"{test_id}: {len(runs)} runs, {ops} operations bit-exact, {timed} timed against "
          f"the cost model, {result.seconds:.1f} s on {simulator}")
    return summary


def _golden_run(trained, **pauses):
    qmodel, image = tiny_quantized(trained=trained)
    return dict(ops=golden_ops(DEFAULT_HW["tiny"], qmodel, image), **pauses)


def test_tiny_layers_icarus():
    """Every MoE layer and task of ``tiny`` (untrained weights that carry signal),
    back to back, each timed against the cost model (the pauses: the other tests)."""
    _simulate(DEFAULT_HW["tiny"], [_golden_run(False)], "moe-tiny-untrained",
              simulator="icarus")


@pytest.mark.slow
def test_tiny_layers_trained():
    """The trained ``tiny``: its layers timed against the cost model, then with pauses."""
    runs = [_golden_run(True), _golden_run(True, gaps="random", stall="fixed", seed=8)]
    _simulate(DEFAULT_HW["tiny"], runs, "moe-tiny-trained")


def design_point(seed, runs):
    """``(hw, runs)`` of one seed: the first run without pauses (timed), then random."""
    rng = np.random.default_rng(seed)
    hw = random_hw(rng, name=f"random-{seed}")
    return hw, [random_run(hw, rng, ops=(2, 3), pauses=False)] + [
        random_run(hw, rng) for _ in range(runs - 1)]


@pytest.mark.parametrize("seed", _seeds([31]))
def test_random_design_point(seed):
    hw, runs = design_point(seed, runs=3)
    print(f"seed {seed}: {hw}")
    _simulate(hw, runs, f"moe-random-{seed}", simulator="icarus")


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds(list(range(1, POINTS + 1))))
def test_random_design_points(seed):
    hw, runs = design_point(seed, runs=4)
    print(f"seed {seed}: {hw}")
    _simulate(hw, runs, f"moe-random-many-{seed}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["edge-moe", "m3vit-s"])
def test_default_arrays(name):
    """The anchors' MoE layer shapes (tokens, experts, top-k, width, gate rule) on their
    default hardware, random logits and expert outputs: timed, then with pauses."""
    from moevit.model.config import get_config

    config, hw = get_config(name), DEFAULT_HW[name]
    rng = np.random.default_rng(sum(map(ord, name)))

    # A sequence longer than the token lists (m3vit-s: 1201 tokens, 256) runs as several
    # operations of at most max_tokens tokens: MoE treats each token alone.
    tokens = min(config.tokens, hw.max_tokens)

    def layer():
        op = random_op(hw, rng, tokens=tokens, dim=config.dim, experts=config.experts,
                       top_k=config.top_k)
        assert op["desc"].renorm == (config.gate == "renorm")
        return op

    runs = [dict(ops=[layer()]), dict(ops=[layer(), layer()], gaps="random", stall="random",
                                      seed=3)]
    _simulate(hw, runs, f"moe-default-{name}")


def test_bad_descriptors_are_skipped_and_flagged():
    """Another opcode, sizes beyond the unit, top-k above the experts, inconsistent
    out tiles, zero constants: each descriptor is taken, skipped (no other beat
    consumed or produced), flagged on ``error``; the operations between are exact."""
    hw = DEFAULT_HW["tiny"]  # the build of test_tiny_layers_icarus
    rng = np.random.default_rng(12)

    def good():
        return random_op(hw, rng, tokens=int(rng.integers(1, 9)), dim=int(rng.integers(1, 40)))

    desc = good()["desc"]

    def with_field(name, value):
        return desc.to_int_with(**{name: value})

    bad = [
        (with_field("opcode", 1), Fault.OPCODE),
        (with_field("tokens", hw.max_tokens + 1), Fault.SHAPE),
        (with_field("experts", hw.cols + 1), Fault.SHAPE),
        (with_field("top_k", 0), Fault.SHAPE),
        (with_field("out_tiles", 7), Fault.SHAPE),
        (with_field("dim", hw.max_in + 1), Fault.SHAPE),
        (with_field("sm_mult", 0), Fault.CONSTANT),
        (with_field("out_shift", 48), Fault.CONSTANT),
    ]
    ops = [good()]
    for word, _ in bad:
        ops += [{"bad": word}, good()]
    runs = [dict(ops=ops[:3]),  # timed against the cost model
            dict(ops=ops[3:], gaps="random", stall="random", seed=9)]
    summary = _simulate(hw, runs, "moe-bad-descriptors", simulator="icarus")
    assert summary[0]["errors"] + summary[1]["errors"] == [code.value for _, code in bad]
