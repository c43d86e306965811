"""Faults injected into the co-simulated top: it stops with the error in its status register
(or completes, slower, under a stalling memory), writes nothing outside its output and
scratch buffers, and the next run is bit-exact.

One simulation (one build) per suite, runs back to back on one device and one memory:
a good run, then each fault followed by a good run. The faults: SLVERR and DECERR on reads
(program fetch, weights, input, scratch) and on writes (scratch, output), a COPY that
writes into the weights or the input (read-only to the top), a memory that
stalls for thousands of cycles at a time, ``ap_rst_n`` pulsed in the middle of an
instruction, and ``ap_start`` written while busy. The memory around every host buffer
holds a guard pattern (``run_top(guard=True)``): after every run, no byte outside the
output and scratch buffers may have changed, the bytes just before and after each buffer
included. The good runs are compared in full (the whole output buffer and the whole
scratch) with the instruction-level interpreter.

Fast (``make test``): a top of the PATCHIFY and COPY engines on Icarus, running PATCHIFY,
COPY (weights to scratch) and a COPY from scratch into the output buffer. Slow: the whole
top on Verilator, the same with tiny's first LINEAR (the weights' read) between them.
Each suite writes its counts to ``build/reliability/`` (``moevit bench reliability``).
"""


import dataclasses

import pytest

from moevit.hw.program.regmap import ERROR_CODES
from moevit.sim.benches.engines import compare_images, replay_seed
from moevit.sim.benches.top import BUFFERS, GUARD_BYTES, expected_runs, run_top
from moevit.sim.reliability import record, short_program, tiny_program

MEMORY, ADDRESS = ERROR_CODES["memory"][0], ERROR_CODES["address"][0]


@pytest.fixture(scope="module")
def tiny():
    return tiny_program()


def fault_runs(program, image, *, linear, stall, reset):
    """``(name, run, expected)`` of each fault: ``expected`` the error code (None: a reset,
    which ends no run). Each fault run is followed by a good one."""
    layout = program.layout
    bounds = layout.boundaries()

    def at(buffer, region, offset=0):   # a physical address inside a region's host copy
        kind_start = {"weights": 0, "scratch": bounds["scratch_at"], "input": bounds["input_at"],
                      "output": bounds["output_at"]}[buffer]
        return BUFFERS[buffer] + layout[region].offset - kind_start + offset

    good = {"task": 0, "images": [image]}
    span = lambda start, kind, side: [(start, start + 16, kind, side)]   # noqa: E731
    faults = [
        ("SLVERR on the program fetch", span(BUFFERS["program"] + 64, "SLVERR", "read")),
        ("DECERR on the input read", span(at("input", "input", 512), "DECERR", "read")),
        ("SLVERR on the weights read (class token)", span(at("weights", "cls"), "SLVERR", "read")),
        ("DECERR on the scratch read", span(at("scratch", "patch_embed.in", 512), "DECERR",
                                            "read")),
        ("SLVERR on the scratch write", span(at("scratch", "patch_embed.in", 768), "SLVERR",
                                             "write")),
        ("DECERR on the output write", span(at("output", "output", 512), "DECERR", "write")),
    ]
    if linear:
        faults.append(("DECERR on the weights read (linear)",
                       span(at("weights", "patch_embed.proj.weight", 256), "DECERR", "read")))
    runs = [("good", good, 0)]
    for name, spans in faults:
        runs += [(name, dict(good, faults=spans), MEMORY), ("good", good, 0)]
    # The last COPY aimed at a buffer the top only reads (a corrupt program: found by the
    # whole top's fuzzing, a PATCHIFY writing into the weights).
    for kind, region in (("weights", "cls"), ("input", "input")):
        *body, copy = program.instructions
        wild = dataclasses.replace(program, instructions=[
            *body, dataclasses.replace(copy, dst_addr=layout[region].offset)])
        runs += [(f"a COPY writing into the {kind}", dict(good, program=wild.encode()),
                  ADDRESS), ("good", good, 0)]
    runs += [("reset in the middle of a run", dict(good, reset=reset), None), ("good", good, 0),
             ("start while busy", dict(good, restart=True), 0), ("good", good, 0),
             ("a memory that stalls", dict(good, memory_pauses="stall", seed=replay_seed(),
                                           **stall), 0),
             ("good", good, 0)]
    return runs


def check_faults(program, image, *, linear, simulator, test_id, stall, suite):
    short = short_program(program, linear=linear)
    runs = fault_runs(short, image, linear=linear, stall=stall, reset=150 if not linear else 600)
    reference = expected_runs(short, [(0, [image])])[0]
    with record(suite, "faults", f"fault injection, {simulator}") as counts:
        got = run_top(short, [run for _, run, _ in runs], test_id=test_id, simulator=simulator,
                      engines=None if linear else ("patchify", "copy"), guard=True,
                      timeout_us=3000)
        good_cycles = got[0]["cycles"]
        counts.update(injected=sum(name != "good" for name, _, _ in runs), survived=0)
        for k, ((name, run, code), row) in enumerate(zip(runs, got)):
            during = f" (reset at instruction {row['reset_instruction']})" if code is None else ""
            print(f"run {k:2d} {name:<42} error {row['error']} done {row['done']} idle "
                  f"{row['idle']} instruction {row['instruction']} cycles {row['cycles']:>6} "
                  f"outside {row['outside']}{during}")
            assert row["outside"] == 0, (
                f"run {k} ({name}) wrote {row['outside']} bytes outside its output and "
                f"scratch buffers, first at {[hex(a) for a in row['outside_at']]}")
            if code is None:   # the reset came mid-run; then the device idle, no error, no done
                assert row["reset_idle"] == 0, f"run {k} ({name}): the run had ended"
                assert (row["idle"], row["error"], row["done"]) == (1, 0, 0), f"run {k} ({name})"
            else:
                assert (row["error"], row["done"]) == (code, 1), f"run {k} ({name}): {row}"
            if name == "start while busy":
                assert row["start_while_busy"] == 1
            if code == 0:   # a run that completes is bit-exact, in full
                compare_images(row["outputs"][0], reference["outputs"][0], f"run {k} output")
                compare_images(row["scratch"], reference["scratch"], f"run {k} ({name}) scratch",
                               short.layout, short.layout.boundaries()["scratch_at"])
            if name == "a memory that stalls":
                assert row["cycles"] > good_cycles + 1000, \
                    f"the stalling memory cost only {row['cycles'] - good_cycles} cycles"
            if name != "good" and k + 1 < len(got) and got[k + 1]["error"] == 0:
                counts["survived"] += 1
        top = "the whole top" if linear else "a PATCHIFY+COPY top"
        counts["detail"] = (f"{top}; guard {GUARD_BYTES} B around each buffer; the stalled run "
                            f"{got[-2]['cycles']} cycles, a good one {good_cycles}")
    assert counts["survived"] == counts["injected"]


def test_faults_small_top(tiny):
    """The fast suite: Icarus, a top of two engines."""
    program, image = tiny
    check_faults(program, image, linear=False, simulator="icarus", test_id="faults-small",
                 # Every channel stalls by cycle 300 for 1,500 cycles at least, so the run's
                 # last writes (about cycle 460 unstalled) wait: any seed costs > 1,000 cycles.
                 stall={"timeout_us": 2000, "stalls": {"shortest": 1500, "longest": 2000,
                                                        "flowing": (100, 300)}},
                 suite="faults-icarus-small-top")


@pytest.mark.slow
def test_faults_whole_top(tiny):
    """The slow suite: Verilator, the whole top, the first LINEAR included."""
    program, image = tiny
    check_faults(program, image, linear=True, simulator="verilator", test_id="faults-whole",
                 stall={"timeout_us": 20_000}, suite="faults-verilator-whole-top")
