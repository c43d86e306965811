"""The cost model's memory side with several memory ports: bytes per mover, per port."""

import numpy as np
import pytest

from moevit.hw.bench_top import _program
from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.cost.resources import Resources
from moevit.hw.cost.cycles import (_compute_and_written, memory_cycles, moved_bytes,
                                   program_cycles)
from moevit.hw.program.interpreter import run_instructions


@pytest.fixture(scope="module")
def tiny():
    return _program("tiny")


@pytest.mark.parametrize("task", [0, 1])
def test_the_split_by_mover_is_the_interpreters_count(tiny, task):
    """Every instruction of tiny's program: the bytes moved_bytes puts on the read movers sum
    to what the interpreter reads (but a working EXPERT's are the top's: its routed rows of
    x, and fc2 reading back the hidden rows its fc1 wrote), and the write mover's to what
    it writes."""
    program, image = tiny
    memory = program.memory_image()
    region = program.layout["input"]
    memory[region.offset:region.end] = image.reshape(-1).view(np.uint8)
    for index, d in enumerate(program.instructions):
        _, written, moved, _, routed = _compute_and_written(d, memory, task, program.hw)
        read = run_instructions(memory, program.hw, [d], task)["bytes_read"]
        if d.MNEMONIC == "EXPERT" and routed:
            read += routed * d.hidden - (d.tokens - routed) * d.dim
        assert sum(moved.values()) - moved.get("write", 0) == read, (index, d.MNEMONIC)
        assert moved.get("write", 0) == written


def test_memory_cycles_per_port():
    hw = DEFAULT_HW["tiny"]
    moved = {"x": 1000, "w": 3000, "chan": 200, "res": 100, "write": 1200}
    total = sum(moved.values())
    assert memory_cycles(hw, moved, 16) == -(-total // 16)            # one port: as before
    two = hw.replace(memory_ports=2)                                   # w | the rest
    assert memory_cycles(two, moved, 16) == -(-3000 // 16)
    assert memory_cycles(two, moved, 16, memory_bandwidth=20) == -(-total // 20)
    four = hw.replace(memory_ports=4)                                  # x | w | chan+res | write
    assert memory_cycles(four, moved, 16) == -(-3000 // 16)
    assert memory_cycles(four, {"x": 1000, "chan": 200, "res": 100, "write": 1200}, 4) == 300


def test_memory_cycles_with_striped_weights():
    """weight_ports k: w's bytes shared evenly by its k ports (its own and the ones after
    it), never faster than its mover's one bus word (16 bytes) a cycle."""
    four = DEFAULT_HW["tiny"].replace(memory_ports=4)          # x | w | chan+res | write
    moved = {"x": 1000, "w": 4000, "chan": 200, "res": 100, "write": 1200}
    assert memory_cycles(four, moved, 1) == 4000                          # w alone on port 1
    assert memory_cycles(four.replace(weight_ports=2), moved, 1) == 2000 + 300   # ports 1, 2
    assert memory_cycles(four.replace(weight_ports=4), moved, 1) == 1000 + 1200  # 1, 2, 3, 0
    # At a bus word a cycle per port the mover binds: striping gains nothing.
    assert memory_cycles(four.replace(weight_ports=4), moved, 16) == 4000 // 16 \
        == memory_cycles(four, moved, 16)
    # Ports of half a bus word: the busiest port binds (port 2: half of w, chan and res;
    # port 3: a quarter of w and the writes), then the mover.
    assert memory_cycles(four.replace(weight_ports=2), moved, 8) == -(-2300 // 8)
    assert memory_cycles(four.replace(weight_ports=4), moved, 8) == 2200 // 8
    assert memory_cycles(four.replace(weight_ports=2), {"w": 4000}, 8) == 4000 // 16
    assert memory_cycles(four.replace(weight_ports=4), {"w": 4000}, 8) == 4000 // 16
    assert memory_cycles(four.replace(weight_ports=4), moved, 4,
                         memory_bandwidth=10) == -(-sum(moved.values()) // 10)


def test_memory_cycles_with_striped_constants():
    """chan_striped: chan's bytes dealt over the weights' ports as w's are; res stays on
    chan's own port (2)."""
    four = DEFAULT_HW["tiny"].replace(memory_ports=4)          # x | w | chan+res | write
    moved = {"w": 4000, "chan": 800, "res": 100}
    two, every = four.replace(weight_ports=2), four.replace(weight_ports=4)
    assert memory_cycles(two, moved, 1) == 2000 + 800 + 100                    # port 2
    assert memory_cycles(two.replace(chan_striped=1), moved, 1) == 2000 + 400 + 100
    assert memory_cycles(every, moved, 1) == 1000 + 800 + 100
    assert memory_cycles(every.replace(chan_striped=1), moved, 1) == 1000 + 200 + 100
    assert memory_cycles(every.replace(chan_striped=1), {"w": 4000, "chan": 800}, 1) == 1200


def test_more_ports_fewer_cycles_on_a_slow_memory(tiny):
    """At 2 bytes a cycle per port, tiny is memory-bound: more ports, fewer cycles; the
    one-port figure is the model's as it was (the same bytes over the same bandwidth)."""
    import dataclasses

    program, image = tiny
    costs = {}
    for ports in (1, 2, 4):
        hw = program.hw.replace(memory_ports=ports)
        costs[ports] = program_cycles(dataclasses.replace(program, hw=hw), image, 0,
                                      bandwidth=2)
    one = costs[1]
    assert one.cycles == sum(max(i.compute, -(-(i.bytes_read + i.bytes_written) // 2))
                             + (i.cycles - max(i.compute, i.memory)) for i in one.instructions)
    print(f"tiny at 2 bytes a cycle per port: { {n: c.cycles for n, c in costs.items()} }")
    assert costs[4].cycles < costs[2].cycles < costs[1].cycles


def test_resources_add_an_arbiter_per_port():
    from moevit.hw.cost.resources import PORT_OVERHEAD, resources

    hw = DEFAULT_HW["edge-moe"]
    one, four = resources(hw), resources(hw.replace(memory_ports=4))
    assert (four.lut - one.lut, four.ff - one.ff) == pytest.approx(
        (3 * PORT_OVERHEAD.lut, 3 * PORT_OVERHEAD.ff))
    assert (four.dsp, four.bram36) == (one.dsp, one.bram36)


def test_resources_of_a_wider_bus_and_the_weights_striper():
    """The arbiters scale with the bus; a striper buffers the longest burst per striped
    port: 256 beats of 131 bits at 128 bits (2 BRAM36), 64 beats of 515 at 512 (LUT RAM:
    172 RAM64M of 4 LUTs)."""
    from moevit.hw.cost.resources import PORT_OVERHEAD, port_overhead

    hw = DEFAULT_HW["edge-moe"].replace(memory_ports=4)
    assert port_overhead(hw) == PORT_OVERHEAD * 3
    assert port_overhead(hw.replace(bus_width=512)) == PORT_OVERHEAD * 12
    assert port_overhead(hw.replace(weight_ports=4)) == PORT_OVERHEAD * 3 + Resources(bram36=8)
    assert port_overhead(hw.replace(bus_width=512, weight_ports=2)) == \
        PORT_OVERHEAD * 12 + Resources(lut=2 * 172 * 4)
    # The constants' striper (chan_striped) buffers as much again.
    assert port_overhead(hw.replace(weight_ports=4, chan_striped=1)) == \
        PORT_OVERHEAD * 3 + Resources(bram36=16)
    assert port_overhead(hw.replace(bus_width=512, weight_ports=2, chan_striped=1)) == \
        PORT_OVERHEAD * 12 + Resources(lut=4 * 172 * 4)


@pytest.mark.parametrize("board", ["zcu102", "u280"])
def test_the_search_chooses_ports_within_the_boards(board):
    """dse (quick grid) on edge-moe: the chosen ports are among the board's; its bandwidth is
    the ports' at most the memory's; the chosen point is no slower than itself on one port."""
    from moevit.hw.boards import get_board
    from moevit.hw.cost.cycles import board_bandwidth, board_memory_bandwidth
    from moevit.hw.cost.dse import dse_rows, predict, workload

    row = dse_rows(board, "edge-moe", quick=True, progress=False)[0]
    b = get_board(board)
    hw = HwConfig.from_dict(row["hw"])
    assert 1 <= hw.memory_ports <= b.ports and row["memory_ports"] == hw.memory_ports
    assert 1 <= hw.weight_ports <= hw.memory_ports and row["weight_ports"] == hw.weight_ports
    port, memory = board_bandwidth(b, hw), board_memory_bandwidth(b, hw)
    assert row["bandwidth_gbs"] == pytest.approx(min(hw.memory_ports * port, memory)
                                                 * hw.clock_mhz / 1e3)
    steps = workload("edge-moe").steps(row["task"])
    chosen = predict(steps, hw, port, memory_bandwidth=memory).cycles
    one = predict(steps, hw.replace(memory_ports=1, weight_ports=1, chan_striped=0,
                                    issue_lanes=1, token_chunks=0), port,
                  memory_bandwidth=memory).cycles   # (one port: one issue lane)
    unstriped = predict(steps, hw.replace(weight_ports=1, chan_striped=0), port,
                        memory_bandwidth=memory).cycles
    print(f"{board}: {hw.memory_ports} port(s), weights over {hw.weight_ports}: {chosen:,} "
          f"cycles; weights over one {unstriped:,}; one port {one:,}")
    assert chosen <= unstriped and chosen <= one
