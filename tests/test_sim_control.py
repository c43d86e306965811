"""The control port in simulation: cocotbext-axi's AxiLiteMaster against the register model.

``handshake`` walks the ap_ctrl_hs protocol step by step with the values the
Vitis rules give (start, ap_done and ap_ready clear on read, ISR toggle on
write, the interrupt when enabled, a start while busy ignored and flagged,
auto-restart, unmapped words); ``random_traffic`` sends random reads and
writes (whole words and single bytes, mapped and unmapped) from three
concurrent hosts, with a seeded pause generator on each of the five channels,
while the bench plays the top (random done delays, stray dones, random status
and busy inputs). A cycle-level model built from the register map's JSON
checks every read word, the interrupt, start, running and the arguments in
every cycle (:mod:`moevit.sim.benches.control`).

Fast (``make test``): both on Icarus, one seed. Slow (``make sim``):
``MOEVIT_CONTROL_SEEDS`` seeds (default 8) of ``MOEVIT_CONTROL_OPS`` operations
(default 3000) on ``$SIM``, pauses none, fixed (each channel its own
pattern), light and heavy random. Replay one seed with
``MOEVIT_CONTROL_SEED=<seed>`` (the seed is in the test id).
"""

import os

import pytest

from moevit.sim.benches.control import run_control
from moevit.sim.runner import default_simulator

SEEDS = int(os.environ.get("MOEVIT_CONTROL_SEEDS", 8))
OPS = int(os.environ.get("MOEVIT_CONTROL_OPS", 3000))


def _seeds(seeds):
    replay = os.environ.get("MOEVIT_CONTROL_SEED")
    return [int(replay)] if replay else seeds


def _report(result, what):
    summary = result.json("summary.json")
    print(f"{what}: " + ", ".join(f"{v} {k}" for k, v in summary.items())
          + f", {result.seconds:.1f} s")
    return summary


@pytest.mark.parametrize("pause", [0.0, "fixed", 0.4])
def test_handshake(pause):
    result = run_control(f"control-handshake-{pause}", testcase="handshake", pause=pause,
                         simulator="icarus")
    summary = _report(result, "handshake")
    # Every access of the walk was checked by the monitor too.
    assert (summary["runs"], summary["reads"], summary["writes"]) == (4, 20, 16)


@pytest.mark.parametrize("seed", _seeds([7]))
def test_random_traffic(seed):
    result = run_control(f"control-random-{seed}", testcase="random_traffic", seed=seed, ops=300,
                         pause=0.3, simulator="icarus")
    summary = _report(result, f"random traffic, seed {seed}")
    # The traffic reached every kind of event the model checks.
    assert summary["reads"] > 80 and summary["writes"] > 80
    assert summary["runs"] > 2 and summary["interrupt cycles"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("pause", [0.0, "fixed", 0.2, 0.6])
@pytest.mark.parametrize("seed", _seeds(list(range(1, SEEDS + 1))))
def test_random_traffic_long(seed, pause):
    simulator = default_simulator()
    result = run_control(f"control-random-{seed}-{pause}-{simulator}", testcase="random_traffic",
                         seed=seed, ops=OPS, pause=pause, simulator=simulator)
    summary = _report(result, f"random traffic, seed {seed}, pause {pause}, {simulator}")
    assert summary["runs"] > 10 and summary["interrupt cycles"] > 0
