"""The memory movers in simulation against cocotbext-axi's AxiRam
(``moevit.sim.benches.movers``): random design points (bus width, outstanding
bursts), random sequences of reads and writes back to back (random 64-bit
addresses, lengths of 1 byte to 12 KiB, across 4 KiB boundaries, up to the top
of the address space) with random gaps, back-pressure and memory pauses;
every byte compared in full; the cost model exact on runs without pauses;
SLVERR, DECERR and bad requests reported, the movers usable after them.

Each design point comes from one seed, in the test id; replay one with
``MOEVIT_SEED=<seed>``.
"""

import os

import numpy as np
import pytest

from moevit.hw.top.movers import DATA_WIDTHS, read_cycles, write_cycles
from moevit.sim.benches.movers import AXIRAM_LATENCY, run_movers, run_spec
from moevit.sim.runner import default_simulator
from moevit.sim.streams import PAUSE_KINDS

FAST_SEEDS = [25]
SLOW_SEEDS = list(range(1, int(os.environ.get("MOEVIT_MOVERS_POINTS", 24)) + 1))
HIGH = (0, 2**62, 2**63, 2**63 + 2**62)   # the top address bits of a region


def _seeds(seeds):
    replay = os.environ.get("MOEVIT_SEED")
    return [int(replay)] if replay else seeds


def random_requests(rng, nbytes, count, first_region, max_length, top=False):
    """``count`` requests in disjoint regions (16 MiB apart, distinct modulo the RAM's
    2**62), aligned to the bus, anywhere in a 4 KiB page; lengths from 1 byte.
    With ``top``, the first may end at the top of the address space (one region
    there per run)."""
    out = []
    for k in range(count):
        region = (first_region + k + 1) << 24
        if top and k == 0 and rng.random() < 0.3:
            length = int(rng.integers(1, max_length + 1))
            out.append((2**64 - -(-length // nbytes) * nbytes, length))
            continue
        addr = int(rng.choice(HIGH)) | region | int(rng.integers(0, 4096)) << 12 \
            | int(rng.integers(0, 4096 // nbytes)) * nbytes
        kind = rng.random()
        length = int(rng.integers(1, nbytes + 1)) if kind < 0.2 else \
            int(rng.integers(1, max_length + 1))
        out.append((addr, length))
    return out


def design_point(seed, runs=4, max_length=6000):
    """``(data_width, max_outstanding, runs)``: two timed runs without pauses (reads,
    writes), then random runs of both at once with random pauses."""
    rng = np.random.default_rng(seed)
    width = int(rng.choice(DATA_WIDTHS[:5]))
    outstanding = int(rng.integers(1, 9))
    nbytes = width // 8
    specs, region = [], 0

    def requests(top=True):
        nonlocal region
        count = int(rng.integers(1, 6))
        made = random_requests(rng, nbytes, count, region, max_length, top)
        region += count
        return made

    def crossing():
        """A request from a few beats below a 4 KiB boundary across it."""
        nonlocal region
        region += 1
        below = int(rng.integers(1, 4)) * nbytes
        addr = (region + 1) << 24 | int(rng.integers(1, 4096)) << 12
        return [(addr - below, below + int(rng.integers(1, max_length + 1)))]

    specs.append(run_spec(reads=crossing() + requests(), seed=int(rng.integers(2**31))))
    specs.append(run_spec(writes=requests() + crossing(), seed=int(rng.integers(2**31))))
    for _ in range(runs - 2):
        top = bool(rng.integers(2))    # the reads' or the writes' top region
        specs.append(run_spec(reads=requests(top), writes=requests(not top),
                              seed=int(rng.integers(2**31)),
                              gaps=str(rng.choice(PAUSE_KINDS)), stall=str(rng.choice(PAUSE_KINDS)),
                              memory=str(rng.choice(PAUSE_KINDS)),
                              probability=round(float(rng.uniform(0.1, 0.7)), 2)))
    return width, outstanding, specs


def _simulate(seed, test_id, **kwargs):
    width, outstanding, runs = design_point(seed, **kwargs)
    simulator = default_simulator()
    print(f"seed {seed}: {width}-bit bus, {outstanding} outstanding bursts, "
          f"{sum(len(r['reads']) + len(r['writes']) for r in runs)} requests")
    summary, result = run_movers(width, outstanding, runs, test_id=f"{test_id}-{simulator}",
                                 simulator=simulator)
    reads, writes = runs[0]["reads"], runs[1]["writes"]
    model = (read_cycles(reads, width, outstanding, latency=AXIRAM_LATENCY),
             write_cycles(writes, width, outstanding, latency=AXIRAM_LATENCY))
    got = (summary[0]["read_cycles"], summary[1]["write_cycles"])
    assert got == model, f"seed {seed}: simulated (read, write) cycles {got} != model {model}"
    print(f"seed {seed}: {sum(s['bursts']['read'] for s in summary)} read and "
          f"{sum(s['bursts']['write'] for s in summary)} write bursts, cycles {got} == model, "
          f"{result.seconds:.1f} s")
    return summary


@pytest.mark.parametrize("seed", _seeds(FAST_SEEDS))
def test_random_design_point(seed):
    _simulate(seed, f"movers-random-{seed}", runs=3, max_length=3000)


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds(SLOW_SEEDS))
def test_random_design_points(seed):
    _simulate(seed, f"movers-random-many-{seed}", runs=5, max_length=8000)


def test_errors_reported_and_movers_usable():
    """SLVERR and DECERR ranges (whole beats), a misaligned address, a zero length, a
    request past the top of the address space: each fails once with its code, and
    the requests after it are exact (every byte compared, guards untouched)."""
    width = 128
    base = 0x8000_0000
    wbase = base + 0x10_0000     # the writes' regions, apart from the reads'
    faults = [(base + 0x3000, base + 0x3100, "SLVERR"), (base + 0x7FF0, base + 0x8000, "DECERR"),
              (wbase + 0x3000, wbase + 0x3010, "SLVERR"), (wbase + 0x8000, wbase + 0x8100,
                                                          "DECERR")]
    reads = [(base, 300), (base + 0x1000, 0x2800), (base + 0x4000, 1),   # SLVERR mid-request
             (base + 0x7000, 0x1000), (base + 0x5000 + 4, 64), (base + 0x6000, 0),
             (2**64 - 32, 40), (2**64 - 32, 32), (base + 0x9000, 5000)]
    writes = [(wbase, 100), (wbase + 0x2F00, 0x400), (wbase + 0xB000, 17),
              (wbase + 0x7F00, 0x200), (wbase + 0xC000 + 8, 16), (wbase + 0xD000, 4097)]
    runs = [run_spec(reads=reads, writes=writes, serial=True, seed=5, faults=faults,
                     gaps="random", stall="random", memory="random", probability=0.3)]
    summary, _ = run_movers(width, 2, runs, test_id=f"movers-errors-{default_simulator()}")
    assert summary[0]["read"] == ["OKAY", "SLVERR", "OKAY", "DECERR", "MISALIGNED", "LENGTH",
                                  "LENGTH", "OKAY", "OKAY"]
    assert summary[0]["write"] == ["OKAY", "SLVERR", "OKAY", "DECERR", "MISALIGNED", "OKAY"]
