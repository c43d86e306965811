"""The sequencer in Amaranth's simulator: it fetches the tiny program from a memory model and
issues exactly the program's instructions (their words, and the task's table entry where one
is read), image after image; a bad header, task, opcode or address stops it with its code.
Both with and without ``expert_prefetch`` (the look-ahead: the next instruction assembled while
one runs, shown as ``pending``; its errors stop the run only after the one before it)."""

import dataclasses

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.isa import TASK_ENTRY_BYTES
from moevit.hw.program.program import HEADER_FIELDS, HEADER_WORDS
from moevit.hw.top.sequencer import MAIN_OPCODES, TABLE_OPCODES, Sequencer, code

BASE = 0x10000          # where the test places the program and the weights (physical)


@pytest.fixture(scope="module", params=[0, 1], ids=["plain", "look-ahead"])
def tiny(request):
    from moevit.hw.program.compiler import compile_program
    from moevit.sim.units import tiny_quantized

    qmodel, _ = tiny_quantized(trained=False)
    return compile_program(qmodel, DEFAULT_HW["tiny"].replace(expert_prefetch=request.param))


def _memory(program, body=None):
    """Physical memory: the program at BASE + its region's offset, weights at BASE."""
    image = program.memory_image()
    if body is not None:
        at = program.layout["program"].offset + 4 * HEADER_WORDS
        image[at:at + len(body)] = np.frombuffer(body, np.uint8)
    memory = np.zeros(BASE + len(image) + 64, np.uint8)
    memory[BASE:BASE + len(image)] = image
    return memory


def _run(program, memory, task, images, **kwargs):
    """Simulate one run; returns (issued [(opcode, image int, entry words)], error, status)."""
    return _runs(program, [memory], task, images, **kwargs)[0]


def _runs(program, memories, task, images, *, finish_after=3, limit=200_000, waited=None,
          durations=None):
    """Simulate one run per memory, back to back on one sequencer; a list of what
    :func:`_run` returns. ``idle`` is low while a read is being answered (as the top's,
    where it covers the movers). ``waited``: a list that gets, per issued instruction,
    the cycles the next one was ``pending`` (assembled) before this one finished.
    ``durations`` (a random generator; a top of two issue lanes): each instruction takes
    a random 1 to 300 cycles on its lane, and each issue also records its cycle, its lane
    and which lanes were busy then."""
    from amaranth.sim import Simulator

    hw = program.hw
    nbytes = hw.bus_width // 8
    dut = Sequencer(hw)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    state = {"memory": memories[0], "reading": 0}

    def reader(port):
        async def serve(ctx):
            while True:
                ctx.set(port.req.ready, 1)
                _, _, valid, addr, length = await ctx.tick().sample(
                    port.req.valid, port.req.payload.addr, port.req.payload.length)
                if not valid:
                    continue
                ctx.set(port.req.ready, 0)
                state["reading"] += 1
                ctx.set(dut.idle, 0)
                memory = state["memory"]
                assert addr % nbytes == 0, f"unaligned read {addr:#x}"
                beats = -(-length // nbytes)
                for k in range(beats):
                    chunk = memory[addr + k * nbytes:addr + (k + 1) * nbytes]
                    ctx.set(port.data.payload.data, int.from_bytes(chunk.tobytes(), "little"))
                    ctx.set(port.data.payload.last, k == beats - 1)
                    ctx.set(port.data.payload.bytes, min(nbytes, length - k * nbytes))
                    ctx.set(port.data.valid, 1)
                    await ctx.tick().until(port.data.ready)
                ctx.set(port.data.valid, 0)
                state["reading"] -= 1
                ctx.set(dut.idle, state["reading"] == 0)
        return serve

    async def host(ctx):
        ctx.set(dut.program, BASE + program.layout["program"].offset)
        ctx.set(dut.weights, BASE)
        ctx.set(dut.task, task)
        ctx.set(dut.images, images)
        ctx.set(dut.idle, 1)
        for memory in memories:
            state["memory"] = memory
            results.append(await (one_run if durations is None else one_run_lanes)(ctx))

    async def start(ctx):
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.issue.ready, 1)

    async def one_run_lanes(ctx):
        issued, busy, cycle = [], [None, None], 0
        await start(ctx)
        for _ in range(limit):
            was_busy = [end is not None for end in busy]
            done_now = [end is not None and cycle >= end for end in busy]
            ctx.set(dut.finished, done_now[0] | done_now[1] << 1)
            busy = [None if d else end for d, end in zip(done_now, busy)]
            _, _, valid, done, opcode, image = await ctx.tick().sample(
                dut.issue.valid, dut.done, dut.issue.payload.opcode, dut.issue.payload.image)
            cycle += 1
            if done:
                return (issued, ctx.get(dut.error),
                        (ctx.get(dut.instruction), ctx.get(dut.image)))
            if valid:
                lane = int(opcode not in MAIN_OPCODES)
                issued.append((opcode, image, cycle, lane, was_busy))
                busy[lane] = cycle + int(durations.integers(1, 301))
        raise AssertionError("no done")

    async def one_run(ctx):
        issued = []
        await start(ctx)
        for _ in range(limit):
            _, _, valid, done, opcode, image, entry = await ctx.tick().sample(
                dut.issue.valid, dut.done, dut.issue.payload.opcode, dut.issue.payload.image,
                dut.issue.payload.entry)
            if done:
                return (issued, ctx.get(dut.error),
                        (ctx.get(dut.instruction), ctx.get(dut.image)))
            if valid:
                issued.append((opcode, image.as_value().value if hasattr(image, "as_value")
                               else image, [ctx.get(dut.issue.payload.entry[k])
                                            for k in range(4)]))
                ctx.set(dut.issue.ready, 0)
                ahead = 0
                for _ in range(finish_after):
                    _, _, pending = await ctx.tick().sample(dut.pending)
                    ahead += pending
                if waited is not None:
                    waited.append(ahead)
                ctx.set(dut.finished, 1)
                await ctx.tick()
                ctx.set(dut.finished, 0)
                ctx.set(dut.issue.ready, 1)
        raise AssertionError("no done")

    results = []
    sim.add_testbench(reader(dut.prog), background=True)
    sim.add_testbench(reader(dut.entry), background=True)
    sim.add_testbench(host)
    sim.run()
    return results


def _entry(program, desc, task):
    at = desc.table_addr + TASK_ENTRY_BYTES * task
    return [int(w) for w in program.memory_image()[at:at + 16].view("<u4")]


@pytest.mark.parametrize("task, images", [(0, 1), (1, 2)])
def test_issues_the_program(tiny, task, images):
    issued, error, status = _run(tiny, _memory(tiny), task, images)
    assert error == 0 and status == (len(tiny.instructions) - 1, images - 1)
    assert len(issued) == images * len(tiny.instructions)
    for k, (opcode, image, entry) in enumerate(issued):
        desc = tiny.instructions[k % len(tiny.instructions)]
        assert opcode == desc.OPCODE and image == desc.to_int(), f"instruction {k}"
        if opcode in TABLE_OPCODES:
            assert entry == _entry(tiny, desc, task), f"instruction {k} entry"


def test_look_ahead(tiny):
    """With ``expert_prefetch`` every instruction after the first is assembled (and its
    table entry read) while the one before it runs; without, none is."""
    waited = []
    issued, error, _ = _run(tiny, _memory(tiny), 1, 1, finish_after=60, waited=waited)
    assert error == 0 and len(issued) == len(tiny.instructions)
    ready = [w > 0 for w in waited[:-1]]
    assert all(ready) if tiny.hw.expert_prefetch else not any(ready), waited


def test_stops_with_its_code(tiny):
    body = bytearray(tiny.encode()[4 * HEADER_WORDS:])
    # A task the program does not have: nothing is issued.
    issued, error, _ = _run(tiny, _memory(tiny), task=2, images=1)
    assert (issued, error) == ([], code("task"))
    # An unknown opcode as the fourth instruction: three are issued, then the stop.
    at = 4 * sum(d.words() for d in tiny.instructions[:3])
    bad = bytearray(body)
    bad[at] = 0x7F
    issued, error, status = _run(tiny, _memory(tiny, bytes(bad)), task=0, images=1,
                                 finish_after=30)
    assert (len(issued), error, status[0]) == (3, code("opcode"), 3)
    # An address at the output's end.
    first = tiny.instructions[0]
    moved = type(first)(tiny.hw, **{**first.to_dict(), "y_addr": tiny.layout.size - 16})
    bad = bytearray(body)
    bad[:4 * first.words()] = np.array(moved.pack(), "<u4").tobytes()
    issued, error, status = _run(tiny, _memory(tiny, bytes(bad)), task=0, images=1)
    assert (issued, error, status[0]) == ([], code("address"), 0)
    # Another hardware's program: the header's fingerprint differs.
    other = _memory(tiny)
    at = BASE + tiny.layout["program"].offset + 4 * 3
    other[at] ^= 1
    issued, error, _ = _run(tiny, other, task=0, images=1)
    assert (issued, error) == ([], code("program"))
    # A body length its instructions cannot take (found by fuzzing the whole top: a
    # 2 GB body request held the read mover after the stop, and the next run hung).
    # ... or regions out of order (found by fuzzing the whole top: input_at 0xffffffff made
    # the output's addresses scratch, relocated past the scratch buffer).
    for field, value in (("body_words", 0x1E1E5B2B), ("instructions", 1 << 16),
                         ("input_at", 0xFFFFFFFF)):
        huge = _memory(tiny)
        at = BASE + tiny.layout["program"].offset + 4 * HEADER_FIELDS.index(field)
        huge[at:at + 4] = np.frombuffer(np.uint32(value).tobytes(), np.uint8)
        issued, error, _ = _run(tiny, huge, task=0, images=1)
        assert (issued, error) == ([], code("program")), field


def test_a_body_that_does_not_end_with_its_last_instruction(tiny):
    """The header's instruction count and the body's end disagree: the sequencer stops with
    ``program`` at the instruction where they part (it used to wait for words that never
    came, or read the words past the last instruction as the next image's), and the next
    start on the same sequencer runs the good program."""
    first, second = (d.words() for d in tiny.instructions[:2])

    def header(**fields):
        memory = _memory(tiny)
        for name, value in fields.items():
            at = BASE + tiny.layout["program"].offset + 4 * HEADER_FIELDS.index(name)
            memory[at:at + 4] = np.frombuffer(np.uint32(value).tobytes(), np.uint8)
        return memory

    bad = [header(instructions=4, body_words=first),            # ends after instruction 0
           header(instructions=2, body_words=first + 2),        # ends inside instruction 1
           header(instructions=1, body_words=first + second)]   # goes on past the last one
    *stopped, good = _runs(tiny, [*bad, _memory(tiny)], task=0, images=2, finish_after=30)
    assert [(len(issued), error, status) for issued, error, status in stopped] == [
        (0, code("program"), (0, 0)), (1, code("program"), (1, 0)),
        (0, code("program"), (0, 0))]
    issued, error, status = good
    assert (len(issued), error, status) == (2 * len(tiny.instructions), 0,
                                            (len(tiny.instructions) - 1, 1))
    assert [i[1] for i in issued] == [d.to_int() for d in tiny.instructions] * 2


def test_onchip_window_header_and_addresses():
    """A program with an on-chip window: its instructions (window addresses included) are
    issued; an address at the window's end stops with ``address``; a header whose window
    is larger than the HwConfig's ``onchip_bytes``, or ends before the output, with
    ``program``."""
    from moevit.hw.program.compiler import compile_program
    from moevit.sim.units import tiny_quantized

    qmodel, _ = tiny_quantized(trained=False)
    program = compile_program(qmodel, DEFAULT_HW["tiny"].replace(onchip_bytes=32768))
    # PATCHIFY, the patch embedding and COPY: each writes on chip.
    program = dataclasses.replace(program, instructions=program.instructions[:3])
    assert all(program.layout.at(getattr(d, d.OUTPUT), k).kind == "onchip"
               for k, d in enumerate(program.instructions))
    bounds = program.layout.boundaries()
    assert bounds["onchip_end"] > bounds["output_end"]
    head = program.layout["program"].offset
    issued, error, _ = _run(program, _memory(program), 0, 1)
    assert error == 0 and len(issued) == len(program.instructions)
    first = program.instructions[0]
    body = bytearray(program.encode()[4 * HEADER_WORDS:])
    moved = type(first)(program.hw, **{**first.to_dict(), "y_addr": bounds["onchip_end"]})
    body[:4 * first.words()] = np.array(moved.pack(), "<u4").tobytes()
    issued, error, _ = _run(program, _memory(program, bytes(body)), task=0, images=1)
    assert (issued, error) == ([], code("address"))
    for end in (bounds["output_end"] + 32768 + 16, bounds["output_end"] - 16):
        memory = _memory(program)
        at = BASE + head + 4 * HEADER_FIELDS.index("onchip_end")
        memory[at:at + 4] = np.frombuffer(np.uint32(end).tobytes(), np.uint8)
        issued, error, _ = _run(program, memory, task=0, images=1)
        assert (issued, error) == ([], code("program")), end


def test_two_issue_lanes():
    """A top of two issue lanes: the two half-batch streams of a batch of two, each
    instruction taking a random 1 to 300 cycles on its lane (seed printed): every
    instruction is issued once, in order, without its concurrent bit; never to a busy lane,
    nor beside the other lane's unless concurrent; and the lanes do overlap. A concurrent
    bit on a top of one lane is an unknown opcode."""
    from moevit.hw.program.compiler import compile_program
    from moevit.sim.benches.engines import replay_seed
    from moevit.sim.units import tiny_quantized

    qmodel, _ = tiny_quantized(trained=False)
    hw = DEFAULT_HW["tiny"].replace(max_tokens=256, memory_ports=2, issue_lanes=2)
    program = compile_program(qmodel, hw, batch=2)
    rng = np.random.default_rng(replay_seed())
    issued, error, status = _run(program, _memory(program), 1, 2, durations=rng)
    n = len(program.instructions)
    assert error == 0 and status == (n - 1, 1) and len(issued) == 2 * n
    overlapped = 0
    for k, (opcode, image, cycle, lane, was_busy) in enumerate(issued):
        desc = program.instructions[k % n]
        assert opcode == desc.OPCODE and image == desc.to_int(), f"instruction {k}"
        assert not was_busy[lane], f"instruction {k} issued to its busy lane at {cycle}"
        assert program.concurrent[k % n] or not was_busy[1 - lane], \
            f"instruction {k} issued beside the other lane's at {cycle}, not concurrent"
        overlapped += was_busy[1 - lane]
    print(f"{overlapped} of {len(issued)} instructions issued while the other lane ran")
    assert overlapped >= n // 4
    # One lane: the concurrent bit on the second instruction makes its opcode unknown.
    plain = compile_program(qmodel, hw.replace(issue_lanes=1), batch=2)
    bad = bytearray(plain.encode()[4 * HEADER_WORDS:])
    bad[4 * plain.instructions[0].words()] |= 0x80
    issued, error, status = _run(plain, _memory(plain, bytes(bad)), 0, 1, finish_after=30)
    assert (len(issued), error, status[0]) == (1, code("opcode"), 1)
