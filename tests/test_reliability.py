"""The reliability counts (``moevit bench reliability``) and the long regression
(``make sim-long``).

The long regression: every unit and the whole top bit-exact over many seeds of random gaps
and back-pressure, reusing the random benches: per seed, the attention kernel, softmax,
LayerNorm and GELU (:func:`moevit.sim.randomized.draw`, a random design point and random
operations under a pause pattern per stream), the linear kernel
(:mod:`moevit.sim.linear_cases`, a random array and random runs), the COPY engine with its
movers (random copies, random descriptor gaps and memory pauses), and the whole top (tiny's
PATCHIFY, first LINEAR, class-token COPY and a COPY into the output, with the memory pausing
at random on its five channels; all seeds are runs of one simulation). ``$MOEVIT_SEEDS``
seeds each (``make sim-long``: 100; the slow set otherwise: 2), ``MOEVIT_SEED=<n>`` one.
Each (unit, seed) writes ``build/reliability/sim-long-<unit>/<seed>.json``.
"""

import json

import numpy as np
import pytest

from moevit.cli import main
from moevit.sim import reliability
from moevit.sim.reliability import record, seeds

SEEDS = seeds(2)
UNITS = ("attention", "softmax", "layernorm", "gelu")


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
    assert [r["suite"] for r in rows] == ["formal", "faults-x"]
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
    monkeypatch.setenv("MOEVIT_SEEDS", "x")
    with pytest.raises(Exception, match="MOEVIT_SEEDS must be a positive integer"):
        seeds(2)
    monkeypatch.setenv("MOEVIT_SEED", "17")
    assert seeds(2) == [17]


# The long regression ----------------------------------------------------------------------
def _simulator():
    from moevit.sim.runner import default_simulator

    return default_simulator()


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("unit", UNITS)
def test_sim_long_unit(unit, seed):
    from moevit.sim.randomized import draw
    from moevit.sim.units import run_sequences

    simulator = _simulator()
    with record(f"sim-long-{unit}/{seed}", "seeds", "seeds bit-exact"):
        case = draw(unit, seed, large=True)
        print(f"MOEVIT_SEED={seed}: {case.describe()}")
        run = run_sequences(unit, case.hw, case.streams, case.sequences,
                            test_id=f"long-{unit}-{seed}-{simulator}", simulator=simulator,
                            seed=seed)   # compares every output in full
        assert run.cycles[0] == case.model_cycles, f"MOEVIT_SEED={seed}: cycles"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_sim_long_linear(seed):
    from moevit.sim.linear_cases import check_runs, random_hw, random_run
    from moevit.sim.units import run_linear

    simulator = _simulator()
    with record(f"sim-long-linear/{seed}", "seeds", "seeds bit-exact"):
        rng = np.random.default_rng([7, seed])
        hw = random_hw(rng, name=f"long-{seed}")
        runs = [random_run(hw, rng) for _ in range(3)]
        print(f"MOEVIT_SEED={seed}: {hw}")
        results, _ = run_linear(hw, runs, test_id=f"long-linear-{seed}-{simulator}",
                                simulator=simulator)
        check_runs(runs, results, f"MOEVIT_SEED={seed} ({hw})")


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_sim_long_copy_engine(seed):
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.interpreter import run_instructions
    from moevit.hw.program.isa import CopyDescriptor
    from moevit.hw.top.copy import CopyEngine
    from moevit.sim.benches.engines import compare_images, run_engine

    with record(f"sim-long-copy-engine/{seed}", "seeds", "seeds bit-exact"):
        rng = np.random.default_rng([8, seed])
        hw = DEFAULT_HW["tiny"]
        nbytes = hw.bus_width // 8
        memory = rng.integers(0, 256, 1 << 15, dtype=np.uint8)
        half = len(memory) // 2
        copies = []
        for _ in range(6):
            length = int(rng.integers(1, 2000))
            src = int(rng.integers(0, (half - length) // nbytes)) * nbytes
            dst = half + int(rng.integers(0, (half - length) // nbytes)) * nbytes
            src, dst = (dst, src) if rng.random() < 0.5 else (src, dst)
            copies.append(CopyDescriptor(hw, length=length, src_addr=src, dst_addr=dst))
        want = memory.copy()
        run_instructions(want, hw, copies)
        got, _ = run_engine(CopyEngine(hw), hw, memory, [c.to_int() for c in copies],
                            test_id=f"long-copy-{seed}", simulator=_simulator(), seed=seed,
                            memory_pauses="random", gaps="random")
        compare_images(got, want, f"MOEVIT_SEED={seed}")


@pytest.mark.slow
def test_sim_long_top():
    """Every seed a run of one simulation: the memory pausing at random (probability 0.3)
    on its five channels from that seed."""
    from moevit.sim.benches.engines import compare_images
    from moevit.sim.benches.top import expected_runs, run_top
    from moevit.sim.reliability import short_program, tiny_program

    program, image = tiny_program()
    short = short_program(program, linear=True)
    runs = [{"task": 0, "images": [image], "memory_pauses": "random", "seed": s} for s in SEEDS]
    got = run_top(short, runs, test_id="long-top", simulator=_simulator(), guard=True)
    reference = expected_runs(short, [(0, [image])])[0]
    for seed, row in zip(SEEDS, got):
        with record(f"sim-long-top/{seed}", "seeds", "seeds bit-exact"):
            print(f"MOEVIT_SEED={seed}: {row['cycles']} cycles")
            assert (row["error"], row["done"], row["outside"]) == (0, 1, 0), row
            compare_images(row["outputs"][0], reference["outputs"][0], f"seed {seed} output")
            compare_images(row["scratch"], reference["scratch"], f"seed {seed} scratch")
