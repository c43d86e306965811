"""The top with several memory ports in co-simulation: every port a view onto the same bytes,
each with its own pauses; bit-exact against the interpreter as the one-port top is."""

import dataclasses

import numpy as np
import pytest
from test_sim_top import check_runs

from moevit.hw.config import DEFAULT_HW
from moevit.hw.top.memory_ports import ports_of
from moevit.sim.benches.engines import replay_seed


@pytest.fixture(scope="module")
def tiny():
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    image = golden.quantize_image(image, qmodel.scale("input"))
    programs = {}

    def program(ports):
        if ports not in programs:
            programs[ports] = compile_program(qmodel, DEFAULT_HW["tiny"].replace(
                memory_ports=ports))
        return programs[ports]

    return program, image


def test_two_ports_run_a_short_program_under_random_pauses(tiny):
    """PATCHIFY, COPY and a LAYERNORM of the first 9 tokens (its rows on channel ``w``: port
    1) on a two-port top with only their engines, two runs (two tasks, two images), each port
    pausing at random on its own pattern, on Icarus: bit-exact, and both ports carried reads."""
    program, image = tiny
    program = program(2)
    patchify, copy, norm = (program.instructions[k] for k in (0, 2, 3))
    norm = dataclasses.replace(norm, tokens=9)
    short = dataclasses.replace(program, instructions=[patchify, copy, norm])
    assert [d.MNEMONIC for d in short.instructions] == ["PATCHIFY", "COPY", "LAYERNORM"]
    seed = replay_seed()
    other = np.random.default_rng(seed).integers(-128, 128, image.shape, dtype=np.int8)
    got = check_runs(short, [(0, [image]), (1, [other])], test_id="top-ports2-short",
                     simulator="icarus", engines=("patchify", "copy", "layernorm"),
                     memory_pauses="random", seed=seed, timeout_us=2000)
    assert ports_of(program.hw)["w"] == 1
    for run in got:
        print(f"bytes read per port: {run['port_bytes_read']}")
        assert len(run["port_bytes_read"]) == 2 and min(run["port_bytes_read"]) > 0
