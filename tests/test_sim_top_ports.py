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


#: Bytes a cycle per memory port, reads and writes together, for the bandwidth-limited runs:
#: a sixteenth of tiny's 128-bit bus, so that its program is memory-bound.
SLOW_MEMORY = 1.0


@pytest.mark.slow
def test_whole_tiny_on_more_ports_under_a_slow_memory(tiny):
    """The whole tiny model, both tasks, on tops of 1, 2 and 4 memory ports behind a memory
    of SLOW_MEMORY bytes a cycle per port (Verilator): every run bit-exact, fewer cycles
    with more ports, and the cost model's cycles within the aim of the simulated ones
    (printed; task 0 measured 1,005,580 / 738,588 / 661,097 cycles)."""
    from moevit.hw.cost.cycles import program_cycles
    from moevit.hw.cost.report import AIM

    program, image = tiny
    cycles, rows = {}, []
    for ports in (1, 2, 4):
        got = check_runs(program(ports), [(0, [image]), (1, [image])],
                         test_id=f"top-ports{ports}-tiny-slow", simulator="verilator",
                         bandwidth=SLOW_MEMORY, timeout_us=100_000)
        for run in got:
            model = program_cycles(program(ports), image, run["task"],
                                   bandwidth=SLOW_MEMORY).cycles
            cycles[ports, run["task"]] = run["cycles"]
            rows.append((ports, run["task"], run["cycles"], model, run["port_bytes_read"]))
    print(f"\nwhole tiny at {SLOW_MEMORY:g} byte(s) a cycle per port, reads and writes together")
    print(f"{'ports':>5} {'task':>4} {'simulated':>11} {'vs 1 port':>9} {'cost model':>11} "
          f"{'error':>7}  bytes read per port")
    for ports, task, simulated, model, per_port in rows:
        print(f"{ports:>5} {task:>4} {simulated:>11,} {simulated / cycles[1, task]:>9.3f} "
              f"{model:>11,} {model / simulated - 1:>+7.2%}  {per_port}")
    for task in (0, 1):
        assert cycles[4, task] < cycles[2, task] < cycles[1, task]
    for ports, task, simulated, model, _ in rows:
        assert abs(model / simulated - 1) <= AIM, (ports, task)


@pytest.mark.slow
def test_a_short_program_on_more_ports_under_a_slow_memory(tiny):
    """PATCHIFY, COPY and a whole LAYERNORM on tops of 1, 2 and 4 memory ports with only
    their engines behind a memory of SLOW_MEMORY bytes a cycle per port (Icarus, minutes
    where the whole model takes an hour): bit-exact, fewer cycles with more ports, and the
    cost model's memory side (its compute and issue figures are the whole program's) against
    the simulated cycles, printed."""
    from moevit.hw.cost.cycles import program_cycles

    program, image = tiny
    rows = []
    for ports in (1, 2, 4):
        full = program(ports)
        short = dataclasses.replace(full, instructions=[full.instructions[k] for k in (0, 2, 3)])
        run = check_runs(short, [(0, [image])], test_id=f"top-ports{ports}-short-slow",
                         simulator="icarus", engines=("patchify", "copy", "layernorm"),
                         bandwidth=SLOW_MEMORY, timeout_us=20_000)[0]
        model = program_cycles(short, image, 0, bandwidth=SLOW_MEMORY).cycles
        rows.append((ports, run["cycles"], model, run["port_bytes_read"]))
    print(f"\nPATCHIFY, COPY, LAYERNORM at {SLOW_MEMORY:g} byte(s) a cycle per port")
    print(f"{'ports':>5} {'simulated':>10} {'vs 1 port':>9} {'cost model':>10} {'error':>7}  "
          f"bytes read per port")
    for ports, simulated, model, per_port in rows:
        print(f"{ports:>5} {simulated:>10,} {simulated / rows[0][1]:>9.3f} {model:>10,} "
              f"{model / simulated - 1:>+7.2%}  {per_port}")
    assert rows[2][1] < rows[1][1] < rows[0][1]
