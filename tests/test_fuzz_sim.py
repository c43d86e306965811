"""Fuzzing the sequencer in co-simulation: corrupted programs and random instruction words
run on the RTL top, one after the other on one device.

hypothesis draws a batch of programs: corruptions of a short real program (bit flips,
random words, header fields, truncations, extensions, one instruction field set to a
random or extreme value; the CRCs fixed or not: the sequencer checks none) and programs of
a valid header and random instruction words. They run back to back in one simulation
(one build), a good run after every few. Every run must stop (``ap_done``, within the
run's time bound: a hang fails the simulation, with the handshakes in ``hang.txt``) with an
error code of the register map or none, write nothing outside its output and scratch
buffers (the guard pattern, ``run_top(guard=True)``), and every good run is bit-exact in
full. One example is one simulation, so hypothesis does not shrink; a failure prints the
batch's blob and the programs are in ``build/sim/_rtl/<test id>/run<k>-program.bin``.

Fast (``make test``): a batch of 12 on a top of the PATCHIFY and COPY engines on Icarus,
derandomized (the same batches each time, so the time it takes stays put): hypothesis's
simplest batch (one program: a bit of the first instruction flipped) and a random one.
Slow: three random batches of 30 on the whole top (tiny's first instructions) on
Verilator.
"""

import numpy as np
import pytest
from hypothesis import Phase, given
from hypothesis import strategies as st

from moevit.hw.program.program import HEADER_WORDS
from moevit.hw.program.regmap import ERROR_CODES
from moevit.sim.benches.engines import compare_images
from moevit.sim.benches.top import expected_runs, run_top
from moevit.sim.reliability import (fix_crcs, hypothesis_settings, mutate_program,
                                    program_mutations, record, short_program, tiny_program)

CODES = {code for code, _ in ERROR_CODES.values()}
GOOD_EVERY = 4


def programs(short, count):
    """A strategy of ``count`` corrupted ``program.bin`` contents of ``short``."""
    data = short.encode()
    mutated = program_mutations(short.instructions, len(data), 4 * HEADER_WORDS).map(
        lambda m: mutate_program(data, short.instructions, *m))
    random_words = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=40).map(
        lambda words: fix_crcs(data[:4 * HEADER_WORDS]
                               + np.array(words, "<u4").tobytes()))
    return st.lists(st.one_of(mutated, mutated, random_words), min_size=count, max_size=count)


def check_batch(short, image, batch, *, test_id, simulator, engines, timeout_us, tally):
    # Each program once: hypothesis's first batch is its simplest, one program repeated.
    batch = list(dict.fromkeys(batch))
    good = {"task": 0, "images": [image]}
    runs, kinds = [good], ["good"]
    for k, data in enumerate(batch):
        runs.append(dict(good, program=data))
        kinds.append("fuzz")
        if k % GOOD_EVERY == GOOD_EVERY - 1 or k == len(batch) - 1:
            runs.append(good)
            kinds.append("good")
    got = run_top(short, runs, test_id=test_id, simulator=simulator, engines=engines,
                  guard=True, timeout_us=timeout_us)
    reference = expected_runs(short, [(0, [image])])[0]
    for k, (kind, row) in enumerate(zip(kinds, got)):
        print(f"run {k:2d} {kind:<5} error {row['error']} done {row['done']} instruction "
              f"{row['instruction']:>5} cycles {row['cycles']:>7} outside {row['outside']}")
        assert row["done"] == 1 and row["idle"] == 1, f"run {k} did not end: {row}"
        assert row["error"] in CODES, f"run {k}: error code {row['error']} is none of {CODES}"
        assert row["outside"] == 0, (
            f"run {k} ({kind}) wrote {row['outside']} bytes outside its output and scratch "
            f"buffers, first at {[hex(a) for a in row['outside_at']]} (its program: "
            f"build/sim/_rtl/{test_id}/run{k}-program.bin)")
        if kind == "good":
            assert row["error"] == 0, f"good run {k}: error {row['error']}"
            compare_images(row["outputs"][0], reference["outputs"][0], f"run {k} output")
            compare_images(row["scratch"], reference["scratch"], f"run {k} scratch")
        else:
            tally["cases"] += 1
            tally.setdefault("codes", {}).setdefault(row["error"], 0)
            tally["codes"][row["error"]] += 1


def _fuzz(*, linear, count, examples, derandomize, simulator, test_id, timeout_us, suite):
    program, image = tiny_program()
    short = short_program(program, linear=linear)
    tally = {"cases": 0}

    @hypothesis_settings(max_examples=examples, derandomize=derandomize,
                         phases=[Phase.explicit, Phase.reuse, Phase.generate])
    @given(programs(short, count))
    def fuzz(batch):
        check_batch(short, image, batch, test_id=test_id, simulator=simulator,
                    engines=None if linear else ("patchify", "copy"), timeout_us=timeout_us,
                    tally=tally)

    with record(suite, "fuzz", f"sequencer in co-simulation, {simulator}") as counts:
        fuzz()
        codes = ", ".join(f"{n} code {c}" for c, n in sorted(tally.get("codes", {}).items()))
        counts.update(cases=tally["cases"], detail=f"stopped with: {codes}")
    print(f"{tally['cases']} corrupted programs: {codes}")


def test_fuzz_sequencer_small_top():
    _fuzz(linear=False, count=12, examples=2, derandomize=True, simulator="icarus",
          test_id="fuzz-sim-small", timeout_us=3000, suite="fuzz-sim-icarus-small-top")


@pytest.mark.slow
def test_fuzz_sequencer_whole_top():
    _fuzz(linear=True, count=30, examples=3, derandomize=False, simulator="verilator",
          test_id="fuzz-sim-whole", timeout_us=20_000, suite="fuzz-sim-verilator-whole-top")
