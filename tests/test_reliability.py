"""The reliability counts (``moevit bench reliability``) and the long regression
(``make sim-long``).

The long regression: every unit and the whole top bit-exact over many seeds of random gaps
and back-pressure, reusing the random benches. A unit's seeds share one design point
(:data:`LONG_HW`), so one build serves them all and a simulation serves many (a build
takes minutes, a seed seconds); the random design points are the fast and slow random suites' work
(``tests/test_sim_random_units.py``, ``tests/test_sim_linear_random.py``). Per seed: the
attention kernel, softmax, LayerNorm and GELU (:func:`moevit.sim.randomized.draw`: random
operations, first without pauses (their cycles equal to the cost model's), then under a
pause pattern per stream), the linear kernel (:mod:`moevit.sim.linear_cases`: three random
runs with random pauses), the COPY engine with its movers (random copies on a random
memory of its own, random descriptor gaps and memory pauses), and the whole top (tiny's
PATCHIFY, first LINEAR, class-token COPY and a COPY into the output, with the memory pausing
at random on its five channels; every seed a run of one simulation).

``$MOEVIT_SEEDS`` seeds each (``make sim-long``: 100; the slow set otherwise: 2),
``MOEVIT_SEED=<n>`` one. Each (unit, seed) writes
``build/reliability/sim-long-<unit>/<seed>.json`` (the records of the seeds about to run
are removed first, so a seed that a failure kept from running has none). A simulation of
the sequence units (:data:`CHUNK` seeds) stops at the first wrong beat: its seed failed,
the rest of its chunk is not counted; ``MOEVIT_SEEDS=<its seed>`` replays it exactly (the
same chunks, the same simulation up to it).
"""

import json

import numpy as np
import pytest

from moevit.cli import main
from moevit.errors import ConfigError
from moevit.sim import reliability
from moevit.sim.reliability import record, seeds

SEEDS = seeds(2)
UNITS = reliability.LONG_UNITS[:4]   # the sequence units: attention, softmax, LayerNorm, GELU


# The counts -------------------------------------------------------------------------------
@pytest.fixture
def results(tmp_path, monkeypatch):
    """``build/`` in a temporary folder, so these tests neither read nor leave results."""
    from moevit.paths import BUILD_VARIABLE

    monkeypatch.setenv(BUILD_VARIABLE, str(tmp_path))
    return tmp_path


def test_record_writes_counts_and_failure(results):
    with record("faults-x", "faults", "fault injection") as counts:
        counts.update(injected=3, survived=3, detail="three")
    with pytest.raises(RuntimeError):
        with record("fuzz-y", "fuzz", "fuzz") as counts:
            counts.update(cases=5)
            raise RuntimeError("the suite failed")
    for seed, ok in ((1, True), (2, True), (3, False)):
        try:
            with record(f"sim-long-gelu/{seed}", "seeds", "seeds"):
                assert ok
        except AssertionError:
            pass
    rows = {r["suite"]: r for r in reliability.reliability_rows()}
    assert rows["formal"]["status"] == "not run: make formal"
    assert (rows["faults-x"]["passed"], rows["faults-x"]["total"]) == (3, 3)
    assert rows["faults-x"]["status"] == "passed" and rows["faults-x"]["detail"] == "three"
    assert (rows["fuzz-y"]["passed"], rows["fuzz-y"]["total"], rows["fuzz-y"]["status"]) == \
        (0, 5, "failed")
    long = rows["sim-long-gelu"]
    assert (long["passed"], long["total"], long["status"]) == (2, 3, "failed")
    assert long["what"] == "seeds bit-exact" and long["when"]


def test_formal_summary_is_read(results):
    (results / "formal").mkdir()
    (results / "formal" / "summary.json").write_text(json.dumps([     # make formal's rows
        {"name": "repack.bytes", "unit": "Repack", "kind": "prove", "depth": 4,
         "result": "PASS", "expect": "PASS", "ok": True, "seconds": 3.5},
        {"name": "sequencer.progress", "unit": "Sequencer", "kind": "bmc", "depth": 13,
         "result": "PASS", "expect": "PASS", "ok": True, "seconds": 10},
        {"name": "mutant.x", "unit": "Gelu", "kind": "bmc", "depth": 6,
         "result": "FAIL", "expect": "FAIL", "ok": True, "seconds": 1}]))
    row = reliability.reliability_rows()[0]
    assert (row["passed"], row["total"], row["status"]) == (2, 2, "passed")
    assert row["detail"] == ("1 proven (k-induction), 1 bounded at depth 13, "
                             "1 of 1 mutants caught") and row["seconds"] == 14.5
    # A mutant not caught is a failure of the checks.
    (results / "formal" / "summary.json").write_text(json.dumps([
        {"name": "mutant.x", "kind": "bmc", "depth": 6, "result": "PASS", "expect": "FAIL",
         "ok": False, "seconds": 1}]))
    assert reliability.reliability_rows()[0]["status"] == "failed"


def test_bench_reliability_table_json_and_markdown(results, capsys):
    with record("faults-x", "faults", "fault injection") as counts:
        counts.update(injected=4, survived=4, detail="")
    assert main(["bench", "reliability", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["suite"] for r in rows] == ["formal", "faults-x"] + [
        f"sim-long-{unit}" for unit in reliability.LONG_UNITS]
    assert {r["status"] for r in rows[2:]} == {"not run: make sim-long"}
    assert {"suite", "what", "passed", "total", "status", "when", "seconds", "detail"} <= \
        set(rows[1])
    assert main(["bench", "reliability"]) == 0
    out = capsys.readouterr().out
    assert "faults survived" in out and "not run: make formal" in out
    markdown = reliability.reliability_markdown()
    assert markdown.splitlines()[0].startswith("| suite |") and "| faults-x |" in markdown


def test_bench_reliability_bad_result_file(results, capsys):
    (results / "reliability").mkdir(parents=True, exist_ok=True)
    (results / "reliability" / "junk.json").write_text("{")
    assert main(["bench", "reliability"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moevit: error: The result file") and err.count("\n") == 1


def test_seeds_env(monkeypatch):
    monkeypatch.delenv("MOEVIT_SEED", raising=False)
    monkeypatch.setenv("MOEVIT_SEEDS", "3")
    assert seeds(2) == [1, 2, 3]
    monkeypatch.setenv("MOEVIT_SEEDS", "51-53")
    assert seeds(2) == [51, 52, 53]
    for bad in ("x", "0", "5-3", "0-4"):
        monkeypatch.setenv("MOEVIT_SEEDS", bad)
        with pytest.raises(ConfigError, match=rf"^MOEVIT_SEEDS must be a positive integer or "
                                              rf"FIRST-LAST, not '{bad}'$"):
            seeds(2)
    monkeypatch.setenv("MOEVIT_SEED", "17")
    assert seeds(2) == [17]


# The long regression ----------------------------------------------------------------------
#: The design point each unit's seeds share: mid-sized, odd shapes, two attention lanes.
LONG_HW = {"attention": dict(score_lanes=4, max_head_dim=12, kv_depth=25, heads_parallel=2),
           "softmax": dict(kv_depth=46), "layernorm": dict(max_in=81),
           "gelu": dict(cols=26, post_lanes=1),
           "linear": dict(rows=4, cols=6, post_lanes=2, max_tokens=12, max_in=40, out_depth=5,
                          dsp_packing=2)}


#: Seeds a simulation (so results land as it goes): the sequence units' case reaches
#: the bench through the environment, where one variable holds at most 128 KiB (attention:
#: about 2 KiB a seed).
CHUNK = 25


def _simulator():
    from moevit.sim.runner import default_simulator

    return default_simulator()


def _fresh(unit):
    """Remove the records of the seeds about to run (a stale pass must not outlive them)."""
    for seed in SEEDS:
        (reliability.results_dir(f"sim-long-{unit}") / f"{seed}.json").unlink(missing_ok=True)


def _point(unit):
    return ", ".join(f"{name}={value}" for name, value in LONG_HW[unit].items())


def _long_hw(unit):
    from moevit.hw.config import HwConfig

    return HwConfig(name=f"long-{unit}", **LONG_HW[unit])


@pytest.mark.slow
@pytest.mark.parametrize("unit", UNITS)
def test_sim_long_unit(unit):
    """The seeds' sequences back to back on the unit's design point, :data:`CHUNK` seeds a
    simulation (one build); every seed's first sequence (no pauses) on the cost model's
    cycles."""
    import contextlib
    import re

    from moevit.sim.randomized import draw
    from moevit.sim.runner import SimulationError
    from moevit.sim.units import run_sequences

    simulator, hw = _simulator(), _long_hw(unit)
    _fresh(unit)
    failures, seconds, operations = [], 0.0, 0
    for at in range(0, len(SEEDS), CHUNK):
        chunk = SEEDS[at:at + CHUNK]
        cases = {seed: draw(unit, seed, large=True, hw=hw) for seed in chunk}
        operations += sum(c.operations for c in cases.values())
        owner, first = [], {}          # the seed of each sequence; each seed's first sequence
        for seed, case in cases.items():
            first[seed] = len(owner)
            owner += [seed] * len(case.sequences)
        try:
            run = run_sequences(unit, hw, cases[chunk[0]].streams,
                                [s for case in cases.values() for s in case.sequences],
                                test_id=f"long-{unit}-{simulator}", simulator=simulator,
                                seed=chunk[0])
        except SimulationError as error:
            # The bench stops at the first wrong beat ("sequence <n> ..."), before it writes
            # the cycles: that seed failed, the chunk's others are not counted. An error it
            # cannot place (a crash, a check after the last sequence) fails the whole chunk.
            where = re.search(r"sequence (\d+)", str(error))
            blamed = [owner[int(where.group(1))]] if where else chunk
            for seed in blamed:
                with contextlib.suppress(SimulationError), \
                        record(f"sim-long-{unit}/{seed}", "seeds", "seeds bit-exact"):
                    raise error
            failures.append(f"MOEVIT_SEED={blamed[0]} (exact replay: MOEVIT_SEEDS={blamed[0]}, "
                            f"the seeds of its chunk before it matched in full): {error}")
            continue
        seconds += run.seconds
        for seed, case in cases.items():   # the first sequence of each seed has no pauses
            with contextlib.suppress(AssertionError), \
                    record(f"sim-long-{unit}/{seed}", "seeds", "seeds bit-exact") as counts:
                counts["seconds"] = round(run.seconds / len(chunk), 2)   # its share of the run
                cycles = run.cycles[first[seed]]
                if cycles != case.model_cycles:
                    failures.append(f"MOEVIT_SEED={seed}: cycles {cycles} != cost model "
                                    f"{case.model_cycles}")
                    raise AssertionError(failures[-1])
    print(f"{unit} on {_point(unit)}: {len(SEEDS) - len(failures)} of {len(SEEDS)} seeds "
          f"bit-exact and on the cost model's cycles ({operations} operations), "
          f"{seconds:.0f} s of simulation")
    assert not failures, f"{unit}: {len(failures)} seeds failed; the first: {failures[0]}"


@pytest.mark.slow
def test_sim_long_linear():
    """Three random runs per seed, every seed's runs in one simulation; each run's pauses
    seeded by itself (``MOEVIT_SEED=<n>`` replays seed n exactly)."""
    from moevit.sim.linear_cases import check_runs, random_run
    from moevit.sim.units import run_linear

    simulator, hw = _simulator(), _long_hw("linear")
    _fresh("linear")
    runs = {}
    for seed in SEEDS:     # three runs a seed, from the seed's own generator
        rng = np.random.default_rng([7, seed])
        runs[seed] = [random_run(hw, rng) for _ in range(3)]
    every = [run for seed in SEEDS for run in runs[seed]]
    results, sim = run_linear(hw, every, test_id=f"long-linear-{simulator}", simulator=simulator)
    print(f"linear on {_point('linear')}: {len(every)} runs of seeds {SEEDS[0]}..{SEEDS[-1]} in "
          f"{sim.seconds:.0f} s of simulation")
    failed = []
    for k, seed in enumerate(SEEDS):
        try:
            with record(f"sim-long-linear/{seed}", "seeds", "seeds bit-exact") as counts:
                counts["seconds"] = round(sim.seconds / len(SEEDS), 2)
                check_runs(runs[seed], results[3 * k:3 * k + 3], f"MOEVIT_SEED={seed} ({hw})")
        except AssertionError as error:
            failed.append(str(error))
    assert not failed, f"{len(failed)} of {len(SEEDS)} seeds failed; the first: {failed[0]}"


@pytest.mark.slow
def test_sim_long_copy_engine():
    """:data:`CHUNK` seeds a simulation, one build: each seed's random memory and six random
    copies on 32 KiB of its own, every copy back to back with random descriptor gaps and
    memory pauses (seeded by the chunk's first seed)."""
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.interpreter import run_instructions
    from moevit.hw.program.isa import CopyDescriptor
    from moevit.hw.top.copy import CopyEngine
    from moevit.sim.benches.engines import compare_images, run_engine

    _fresh("copy-engine")
    hw = DEFAULT_HW["tiny"]
    nbytes, block = hw.bus_width // 8, 1 << 15
    failed, seconds = [], 0.0
    for at in range(0, len(SEEDS), CHUNK):
        chunk = SEEDS[at:at + CHUNK]
        memory, copies = [], []
        for k, seed in enumerate(chunk):   # seed k's memory at k * block
            rng = np.random.default_rng([8, seed])
            memory.append(rng.integers(0, 256, block, dtype=np.uint8))
            half = block // 2
            for _ in range(6):
                length = int(rng.integers(1, 2000))
                src = int(rng.integers(0, (half - length) // nbytes)) * nbytes
                dst = half + int(rng.integers(0, (half - length) // nbytes)) * nbytes
                src, dst = (dst, src) if rng.random() < 0.5 else (src, dst)
                copies.append(CopyDescriptor(hw, length=length, src_addr=k * block + src,
                                             dst_addr=k * block + dst))
        memory = np.concatenate(memory)
        want = memory.copy()
        run_instructions(want, hw, copies)
        got, summary = run_engine(CopyEngine(hw), hw, memory, [c.to_int() for c in copies],
                                  test_id="long-copy", simulator=_simulator(), seed=chunk[0],
                                  memory_pauses="random", gaps="random")
        seconds += summary["seconds"]
        for k, seed in enumerate(chunk):
            try:
                with record(f"sim-long-copy-engine/{seed}", "seeds", "seeds bit-exact") as counts:
                    counts["seconds"] = round(summary["seconds"] / len(chunk), 2)
                    part = slice(k * block, (k + 1) * block)
                    compare_images(got[part], want[part], f"MOEVIT_SEED={seed}")
            except AssertionError as error:
                failed.append(str(error))
    print(f"copy engine: {len(SEEDS) - len(failed)} of {len(SEEDS)} seeds bit-exact, "
          f"{seconds:.0f} s of simulation")
    assert not failed, f"{len(failed)} of {len(SEEDS)} seeds failed; the first: {failed[0]}"


@pytest.mark.slow
def test_sim_long_top():
    """Every seed a run (:data:`CHUNK` runs a simulation, one build), the memory pausing at
    random (probability 0.3) on its five channels from that seed; guard pattern checked."""
    from moevit.sim.benches.engines import compare_images
    from moevit.sim.benches.top import expected_runs, run_top
    from moevit.sim.reliability import short_program, tiny_program

    _fresh("top")
    program, image = tiny_program()
    short = short_program(program, linear=True)
    reference = expected_runs(short, [(0, [image])])[0]
    failed, seconds = [], 0.0
    for at in range(0, len(SEEDS), CHUNK):
        chunk = SEEDS[at:at + CHUNK]
        runs = [{"task": 0, "images": [image], "memory_pauses": "random", "seed": s}
                for s in chunk]
        got = run_top(short, runs, test_id=f"long-top-{chunk[0]}", simulator=_simulator(),
                      guard=True)
        seconds += got[0]["seconds"]
        for seed, row in zip(chunk, got):
            try:
                with record(f"sim-long-top/{seed}", "seeds", "seeds bit-exact") as counts:
                    counts["seconds"] = round(row["seconds"] / len(chunk), 2)
                    print(f"MOEVIT_SEED={seed}: {row['cycles']} cycles")
                    assert (row["error"], row["done"], row["outside"]) == (0, 1, 0), row
                    compare_images(row["outputs"][0], reference["outputs"][0],
                                   f"seed {seed} output")
                    compare_images(row["scratch"], reference["scratch"], f"seed {seed} scratch")
            except AssertionError as error:
                failed.append(str(error))
    print(f"the whole top, {len(short.instructions)} instructions of tiny (PATCHIFY, the first "
          f"LINEAR, the class token's COPY, a COPY into the output): "
          f"{len(SEEDS) - len(failed)} of {len(SEEDS)} seeds bit-exact, {seconds:.0f} s of "
          f"simulation")
    assert not failed, f"{len(failed)} of {len(SEEDS)} seeds failed; the first: {failed[0]}"
