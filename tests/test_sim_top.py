"""The whole accelerator in co-simulation against the instruction-level interpreter (itself equal
to the golden model): outputs and the whole activation scratch, bit for bit, run after run,
with task switches, several images per start, and a slowed memory."""

import dataclasses
import os
import random

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.sim.benches.top import expected_runs, run_top


@pytest.fixture(scope="module")
def tiny():
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    program = compile_program(qmodel, DEFAULT_HW["tiny"])
    return program, golden.quantize_image(image, qmodel.scale("input"))


def _seed():
    seed = int(os.environ.get("MOEVIT_SEED", random.randrange(1 << 16)))
    print(f"seed {seed} (replay with MOEVIT_SEED={seed})")
    return seed


def _compare(got, want, what):
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{what}: {bad.size} of {got.size} bytes differ, first at +{bad[0]:#x}"


def check_runs(program, runs, **options):
    got = run_top(program, runs, **options)
    want = expected_runs(program, runs)
    for k, (run, expected) in enumerate(zip(got, want)):
        print(f"run {k}: task {run['task']}, {run['images']} image(s), {run['cycles']} cycles, "
              f"busy {run['busy']}")
        assert (run["error"], run["done"]) == (0, 1), f"run {k}: error {run['error']}"
        for n, (output, reference) in enumerate(zip(run["outputs"], expected["outputs"])):
            _compare(output, reference, f"run {k} image {n} output")
        _compare(run["scratch"], expected["scratch"], f"run {k} scratch")
    return got


def _head(program, count):
    """The program's first ``count`` instructions (a shorter run for Icarus)."""
    return dataclasses.replace(program, instructions=program.instructions[:count])


def test_top_runs_the_start_of_tiny(tiny):
    """PATCHIFY, the patch embedding with its residual (position), COPY and a LayerNorm,
    twice, on Icarus: the fast top-level case of ``make test``."""
    program, image = tiny
    short = _head(program, 4)
    rng = np.random.default_rng(_seed())
    other = rng.integers(-128, 128, image.shape, dtype=np.int8)
    check_runs(short, [(0, [image]), (1, [other])], test_id="top-start", simulator="icarus",
               engines=("patchify", "linear", "copy", "layernorm"))


@pytest.mark.slow
def test_top_runs_tiny_every_task(tiny):
    """The whole tiny model for each task, a task switch between two images, and two
    images from one start, on Verilator; the switch costs no cycle."""
    program, image = tiny
    rng = np.random.default_rng(_seed())
    other = rng.integers(-128, 128, image.shape, dtype=np.int8)
    runs = [(0, [image]), (1, [image]), (1, [image]), (0, [image]), (1, [other, image])]
    got = check_runs(program, runs, test_id="top-tiny", simulator="verilator")
    # A switch costs nothing: a task's run takes the same cycles after the other task as
    # after itself.
    assert got[1]["cycles"] == got[2]["cycles"] and got[3]["cycles"] == got[0]["cycles"]


@pytest.mark.slow
def test_top_under_a_slow_memory(tiny):
    """The first blocks with the memory pausing at random on every channel."""
    program, image = tiny
    seed = _seed()
    check_runs(_head(program, 26), [(1, [image])], test_id="top-slow", simulator="verilator",
               memory_pauses="random", seed=seed)
