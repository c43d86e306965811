"""The MoE engines (ROUTE, EXPERT, COMBINE) against the instruction-level interpreter.

Each run compares the whole memory image after the engine bench
(:func:`~moevit.sim.benches.engines.run_engine`) with the image
:func:`~moevit.hw.program.interpreter.run_instructions` leaves, byte for byte:
the tiny program's own instructions on the memory the instructions before
them left (their outputs overwritten with noise first, so a missing write
shows), and random instructions back to back (random shapes, gate rules,
constants at their extremes, logits with ties, experts no token chose, refused
descriptors between them), under random memory stalls and descriptor gaps.

EXPERT is checked alone (Amaranth's simulator, the linear engine played by the
bench: its jobs against ``ExpertDescriptor.linears(n)``, its index answers against
``np.nonzero``, no job for an expert no token chose) and with the linear engine
(:class:`ExpertWithLinear`: the whole image against ``interpreter.EXPERT`` and the
read bursts, so that no weight of an unchosen expert is fetched). The bench records every
read burst: ROUTE and COMBINE must read exactly their operands.

Fast (``make test``, Icarus): the tiny program, one random sequence per engine, and
EXPERTs with the expert prefetch on one random design point of the linear engine's.
Slow (``make sim``, ``$SIM``, Verilator by default here): the second task, random
design points (bus width, lanes, tokens; the prefetch's: bus, array, packing, weight
streaming), ``MOEVIT_MOE_ENGINE_POINTS`` of them (default 6). Every seed is printed;
``MOEVIT_SEED=<seed>`` replays it.
"""

import functools
import os
import random

import numpy as np
import pytest
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring

from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.program.compiler import compile_program
from moevit.hw.program.descriptor import Fault
from moevit.hw.program.interpreter import run_instructions
from moevit.hw.program.isa import (TASK_ENTRY_BYTES, CombineDescriptor, ExpertDescriptor,
                                   RouteDescriptor, TaskEntry)
from moevit.hw.top import movers
from moevit.hw.top.moe import CombineEngine, ExpertEngine, RouteEngine, route_job_layout
from moevit.hw.top.linear_engine import LinearEngine
from moevit.hw.top.ports import engine_members, linear_job_layout
from moevit.model.integer import golden, intops
from moevit.sim.benches.engines import run_engine
from moevit.sim.moe_cases import random_logits
from moevit.sim.units import tiny_quantized

POINTS = int(os.environ.get("MOEVIT_MOE_ENGINE_POINTS", 6))
pytestmark = pytest.mark.usefixtures("one_thread")   # the tiny model's quantization


def _seed(default=None):
    replay = os.environ.get("MOEVIT_SEED")
    seed = int(replay) if replay else (random.randrange(1 << 16) if default is None else default)
    print(f"seed {seed} (replay with MOEVIT_SEED={seed})")
    return seed


def _compare(got, want, what):
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{what}: {bad.size} bytes differ, first at {bad[0]:#x}: " \
                          f"{got[bad[0]]} != {want[bad[0]]}"


# The tiny program ---------------------------------------------------------------------------
@functools.cache
def _tiny_state(task):
    """The tiny program and the memory its instructions before the last COMBINE left
    for ``task`` (every ROUTE and EXPERT of both MoE layers has run)."""
    hw = DEFAULT_HW["tiny"]
    qmodel, image = tiny_quantized(trained=False)
    program = compile_program(qmodel, hw)
    memory = program.memory_image()
    region = program.layout["input"]
    memory[region.offset:region.end] = \
        golden.quantize_image(image, qmodel.scale("input")).reshape(-1).view(np.uint8)
    last = max(k for k, d in enumerate(program.instructions) if d.MNEMONIC == "COMBINE")
    run_instructions(memory, hw, program.instructions[:last], task)
    return program, memory


def _tiny_case(mnemonic, task, seed):
    """The tiny program's ``mnemonic`` instructions and the memory before them, their
    outputs (the regions they write) overwritten with noise."""
    program, memory = _tiny_state(task)
    memory = memory.copy()
    rng = np.random.default_rng(seed)
    chosen = [d for d in program.instructions if d.MNEMONIC == mnemonic]
    for region in program.layout.regions:
        if any(region.offset <= getattr(d, field) < region.end for d in chosen
               for field in _outputs(d)):
            memory[region.offset:region.end] = rng.integers(0, 256, region.size, np.uint8)
    return program.hw, memory, chosen


def _outputs(d):
    return {"ROUTE": ("topk_addr", "weights_addr"), "EXPERT": ("hidden_addr", "slots_addr"),
            "COMBINE": ("y_addr",)}[d.MNEMONIC]


def _entry(memory, d, task):
    """The gate's task entry the interpreter reads for ROUTE ``d``."""
    at = d.table_addr + TASK_ENTRY_BYTES * task
    return TaskEntry(*(int(w) for w in memory[at:at + TASK_ENTRY_BYTES].view("<u4")))


def route_job(d, entry, **faults):
    """ROUTE's ``desc`` payload (:func:`route_job_layout`) for descriptor ``d`` and the
    task's table entry; ``faults`` overwrite descriptor fields (unchecked)."""
    image = d.to_int_with(**faults) if faults else d.to_int()
    layout = route_job_layout()
    return image | entry.mult << layout["mult"].offset | entry.shift << layout["shift"].offset


def _run(engine, hw, memory, payloads, test_id, seed, simulator=None, **options):
    got, summary = run_engine(engine, hw, memory, payloads, test_id=test_id, seed=seed,
                              simulator=simulator, gaps="random", memory_pauses="random",
                              **options)
    print(f"{test_id}: cycles {summary['cycles']}, {summary['seconds']:.1f} s")
    return got, summary


def read_requests(d):
    """The read requests ``(channel, address, length)`` of MoE instruction ``d``."""
    if d.MNEMONIC == "ROUTE":
        return [(0, d.logits_addr, d.tokens * d.experts)]
    if d.MNEMONIC == "COMBINE":
        return [(0, d.weights_addr, 2 * d.tokens * d.top_k),
                (1, d.slots_addr, d.tokens * d.top_k * d.dim), (2, d.skip_addr, d.tokens * d.dim)]
    raise ValueError(d.MNEMONIC)


def check_reads(hw, reads, descs, faults, what):
    """Each instruction read exactly its operands (in the movers' bursts, channel by
    channel); a refused one nothing."""
    descs = iter(descs)
    for k, (bursts, fault) in enumerate(zip(reads, faults)):
        want = [] if fault != Fault.NONE else [
            [channel, at, beats * hw.bus_width // 8]
            for channel, addr, length in read_requests(next(descs))
            for at, beats in movers.bursts(addr, length, hw.bus_width)]
        assert sorted(bursts, key=lambda b: b[0]) == want, f"{what}: reads of instruction {k}"


# Random instructions --------------------------------------------------------------------
class _Memory:
    """A random memory image and an allocator of bus-aligned regions with gaps."""

    def __init__(self, hw, rng, image=None):
        self.align = hw.bus_width // 8
        self.rng = rng
        self.image = np.zeros(0, np.uint8) if image is None else image

    def take(self, size):
        """A region of ``size`` bytes (noise until written)."""
        start = len(self.image) + self.align * int(self.rng.integers(0, 3))
        end = -(-(start + size) // self.align) * self.align
        self.image = np.concatenate([self.image, self.rng.integers(0, 256, end - len(self.image),
                                                                   np.uint8)])
        return start

    def put(self, array):
        array = np.ascontiguousarray(array)
        at = self.take(array.nbytes)
        self.image[at:at + array.nbytes] = array.reshape(-1).view(np.uint8)
        return at


def random_point(seed):
    """A random design point: the bus width, the lanes (experts), the token and
    feature buffers."""
    rng = np.random.default_rng(seed)
    cols = int(rng.choice([1, 2, 3, 4, 8, 16, 32]))
    rows = int(rng.integers(1, 5))
    return HwConfig(name=f"random-{seed}", rows=rows, cols=cols, post_lanes=1,
                    max_tokens=rows * int(rng.integers(1, 13)),
                    max_in=cols * int(rng.integers(1, 5)), out_depth=4,
                    bus_width=int(rng.choice([32, 64, 128, 256, 512, 1024])))


def _slow_seeds():
    replay = os.environ.get("MOEVIT_SEED")
    return [int(replay)] if replay else [1000 + k for k in range(POINTS)]


def _softmax_constants(rng):
    if rng.random() < 0.2:
        return int(rng.choice([1, 2**15 - 1])), int(rng.choice([1, 47]))
    return tuple(int(v) for v in intops.softmax_constants(float(rng.choice([0.004, 0.05, 0.3]))))


def random_routes(hw, mem, count, most_tokens=40):
    """``(descriptors, payloads, faults)``: ``count`` random ROUTEs in ``mem`` (a
    :class:`_Memory`) of at most ``most_tokens`` tokens, one of them refused (its fault
    expected); their gates' tables have two or three tasks."""
    rng = mem.rng
    descs, payloads, faults = [], [], []
    refused = int(rng.integers(count))
    for k in range(count):
        tokens = int(rng.integers(1, min(hw.max_tokens, most_tokens) + 1))
        experts = int(rng.integers(1, hw.cols + 1))
        top_k = int(rng.integers(1, experts + 1))
        mult, shift = _softmax_constants(rng)
        tasks = int(rng.integers(2, 4))
        table = mem.put(np.array([[0, 0, 1, TaskEntry.pack_consts(mult, shift)]] * tasks,
                                 "<u4"))
        d = RouteDescriptor(hw, tokens=tokens, experts=experts, top_k=top_k,
                            rule=int(rng.integers(2)), tasks=tasks, table_addr=table,
                            logits_addr=mem.put(random_logits(rng, tokens, experts)),
                            topk_addr=mem.take(tokens * top_k),
                            weights_addr=mem.take(2 * tokens * top_k))
        entry = TaskEntry(0, 0, 1, TaskEntry.pack_consts(mult, shift))
        if k == refused:
            fault, fields = _route_fault(hw, rng)
            payloads.append(route_job(d, entry, **fields))
            faults.append(fault)
        else:
            descs.append(d)
            payloads.append(route_job(d, entry))
            faults.append(Fault.NONE)
    return descs, payloads, faults


def _route_fault(hw, rng):
    options = [(Fault.OPCODE, {"opcode": 8}), (Fault.SHAPE, {"experts": hw.cols + 1}),
               (Fault.SHAPE, {"top_k": 0}), (Fault.SHAPE, {"tokens": hw.max_tokens + 1})]
    if hw.bus_width > 8:
        options.append((Fault.ALIGN, {"weights_addr": 1}))
    return options[int(rng.integers(len(options)))]


def _slow_simulator():
    return os.environ.get("SIM", "verilator")


def _sequence(engine, make, hw, seed, count, test_id, *, simulator=None, tiny=None):
    """``count`` random instructions from ``make`` back to back on ``engine``, after
    ``tiny``'s (``(mnemonic, task, payload)``: the tiny program's instructions of that
    mnemonic, ``payload(d, memory)`` their ``desc`` payloads) when given."""
    rng = np.random.default_rng(seed)
    descs, payloads, task = [], [], 0
    if tiny:
        mnemonic, task, payload = tiny
        program_hw, memory, descs = _tiny_case(mnemonic, task, seed)
        # The tiny program's top, with the COMBINE lanes asked for (the program does not
        # depend on them).
        hw = program_hw.replace(combine_lanes=hw.combine_lanes)
        payloads = [payload(d, memory) for d in descs]
        mem = _Memory(hw, rng, memory)
    else:
        mem = _Memory(hw, rng)
    faults = [Fault.NONE] * len(descs)
    more = make(hw, mem, count)
    descs, payloads, faults = descs + more[0], payloads + more[1], faults + more[2]
    want = mem.image.copy()
    run_instructions(want, hw, descs, task)
    got, summary = _run(engine(hw), hw, mem.image, payloads, test_id, seed, simulator)
    what = f"{test_id} (seed {seed}, {hw})"
    assert summary["errors"] == [int(f) for f in faults], what
    _compare(got, want, what)
    check_reads(hw, summary["reads"], descs, faults, what)


# ROUTE ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_route_tiny_program_and_random(task):
    """Both ROUTEs of the tiny program on ``task``'s gate logits, then random ROUTEs and a
    refused one, back to back."""
    seed = _seed()
    _sequence(RouteEngine, random_routes, DEFAULT_HW["tiny"], seed, 4,
              f"engine-route-tiny-{task}",
              tiny=("ROUTE", task, lambda d, memory: route_job(d, _entry(memory, d, task))))


@pytest.mark.slow
@pytest.mark.parametrize("seed", _slow_seeds())
def test_route_random_design_points(seed):
    """ROUTE on a random design point: up to its token buffer, every bus width."""
    hw = random_point(seed)
    print(hw)
    _sequence(RouteEngine, functools.partial(random_routes, most_tokens=hw.max_tokens), hw,
              seed, 8, f"engine-route-point-{seed}", simulator=_slow_simulator())


async def send_beats(ctx, port, hw, data, rng=None, gap=0.0):
    """``data`` on read port ``port`` as bus beats (the last one flagged), each after a
    pause of ``gap`` odds a cycle (``rng``)."""
    nbytes = hw.bus_width // 8
    beats = [data[k:k + nbytes] for k in range(0, len(data), nbytes)]
    for k, beat in enumerate(beats):
        while rng is not None and rng.random() < gap:
            await ctx.tick()
        ctx.set(port.data.payload.as_value(), int.from_bytes(beat, "little")
                | (k == len(beats) - 1) << hw.bus_width | len(beat) << hw.bus_width + 1)
        ctx.set(port.data.valid, 1)
        await ctx.tick().until(port.data.ready)
        ctx.set(port.data.valid, 0)


def simulate_route_alone(hw, memory, payloads):
    """RouteEngine in Amaranth's simulator, its memory answering at once and taking every
    write beat: ``(memory after, faults, cycles from each descriptor taken to its done)``."""
    from amaranth.sim import Simulator

    dut, nbytes = RouteEngine(hw), hw.bus_width // 8
    memory = memory.copy()
    faults, cycles, writes = [], [], []

    async def descriptors(ctx):
        for payload in payloads:
            ctx.set(dut.desc.payload.as_value(), payload)
            ctx.set(dut.desc.valid, 1)
            await ctx.tick().until(dut.desc.ready)
            ctx.set(dut.desc.valid, 0)
            taken = len(cycles)
            for _ in range(200_000):
                if len(faults) > taken:
                    break
                await ctx.tick()

    async def read_memory(ctx):
        port = dut.rd[0]
        ctx.set(port.req.ready, 1)
        while True:
            _, _, valid, req = await ctx.tick().sample(port.req.valid, port.req.payload)
            if not valid:
                continue
            await send_beats(ctx, port, hw, memory[req.addr:req.addr + req.length].tobytes())

    async def write_memory(ctx):
        ctx.set(dut.wr.req.ready, 1)
        ctx.set(dut.wr.data.ready, 1)
        beats = []
        async for _, _, rv, req, dv, word in ctx.tick().sample(
                dut.wr.req.valid, dut.wr.req.payload, dut.wr.data.valid, dut.wr.data.payload):
            if rv:
                writes.append((req.addr, req.length))
            if dv:
                beats.append(int(word).to_bytes(nbytes, "little"))
            while writes and len(beats) * nbytes >= writes[0][1]:
                addr, length = writes.pop(0)
                words = -(-length // nbytes)
                memory[addr:addr + length] = np.frombuffer(b"".join(beats[:words])[:length],
                                                           np.uint8)
                del beats[:words]

    async def monitor(ctx):
        cycle = taken_at = 0
        async for _, _, done, error, valid, ready in ctx.tick().sample(
                dut.done, dut.error, dut.desc.valid, dut.desc.ready):
            if valid and ready:
                taken_at = cycle
            if done:
                faults.append(Fault(error))
                cycles.append(cycle - taken_at)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(descriptors)
    sim.add_testbench(read_memory, background=True)
    sim.add_testbench(write_memory, background=True)
    sim.add_process(monitor)
    sim.run()
    return memory, faults, cycles


@pytest.mark.parametrize("point", ["tiny", "board", 7, 8, 11])
def test_route_cycles(point):
    """Without stalls, every ROUTE of a random sequence (random shapes, both gate rules,
    one refused) takes :func:`~moevit.hw.top.moe.route_cycles` and 3 more (the descriptor
    taken, the request, the first word's arrival), and leaves the interpreter's image.
    ``board``: edge-moe's gate (16 experts, top 2, vmoe) on a 512-bit bus, 200 tokens."""
    from moevit.hw.top.moe import route_cycles

    seed = _seed()
    rng = np.random.default_rng(seed)
    if point == "board":
        hw = HwConfig(name="route-board", rows=8, cols=16, post_lanes=1, max_tokens=200,
                      max_in=64, out_depth=4, bus_width=512)
        mem = _Memory(hw, rng)
        descs, payloads, faults = random_routes(hw, mem, 1, most_tokens=1)
        table = mem.put(np.array([[0, 0, 1, TaskEntry.pack_consts(*intops.softmax_constants(
            0.05))]] * 2, "<u4"))
        d = RouteDescriptor(hw, tokens=200, experts=16, top_k=2, rule=0, tasks=2,
                            table_addr=table,
                            logits_addr=mem.put(random_logits(rng, 200, 16)),
                            topk_addr=mem.take(400), weights_addr=mem.take(800))
        entry = TaskEntry(0, 0, 1, TaskEntry.pack_consts(*intops.softmax_constants(0.05)))
        descs, payloads, faults = descs + [d], payloads + [route_job(d, entry)], \
            faults + [Fault.NONE]
    else:
        hw = DEFAULT_HW["tiny"] if point == "tiny" else random_point(point)
        mem = _Memory(hw, rng)
        descs, payloads, faults = random_routes(hw, mem, 6, most_tokens=hw.max_tokens)
    want = mem.image.copy()
    run_instructions(want, hw, descs, 0)
    got, errors, cycles = simulate_route_alone(hw, mem.image, payloads)
    assert errors == faults, f"seed {seed} on {hw}"
    _compare(got, want, f"seed {seed} on {hw}")
    ran = iter(descs)
    over = [c - route_cycles(d.tokens, d.experts, d.top_k, d.rule, hw.bus_width)
            for c, f, d in ((c, f, next(ran) if f == Fault.NONE else None)
                            for c, f in zip(cycles, faults)) if d is not None]
    print(f"seed {seed}, {hw.name}: cycles {cycles}, over the model {over}")
    assert over and set(over) == {3}, f"seed {seed} on {hw}: over the model {over}"


# EXPERT alone: its jobs and its index answers ----------------------------------------------
def linear_jobs(d, topk):
    """What EXPERT ``d`` hands the linear engine for the routing ``topk``: the job
    payloads (fc1 gathered, fc2 scattered; none when no token chose the expert) and
    the rows its index ports answer (x: tokens, y: token * top_k + slot)."""
    tokens, slots = np.nonzero(topk == d.expert)
    if tokens.size == 0:
        return [], [], []
    layout = linear_job_layout()
    fc1, fc2 = d.linears(tokens.size)
    jobs = [fc1.to_int() | 1 << layout["x_gather"].offset,
            fc2.to_int() | 1 << layout["y_scatter"].offset]
    return jobs, list(tokens), list(tokens * d.top_k + slots)


def random_experts(hw, rng):
    """``(memory, descriptors, payloads, want)``: a random routing and the EXPERTs of
    its experts in a random order (some chosen by no token), a refused descriptor and
    a routing that names an expert twice in a row (``Fault.SHAPE``) among them; ``want``
    per payload: ``(fault, jobs, x rows, y rows)``."""
    mem = _Memory(hw, rng)
    tokens = int(rng.integers(1, min(hw.max_tokens, 40) + 1))
    experts = int(rng.integers(1, 13))
    top_k = int(rng.integers(1, experts + 1))
    chosen = rng.permutation(experts)[:max(top_k, int(rng.integers(1, experts + 1)))]
    topk = np.stack([rng.permutation(chosen)[:top_k] for _ in range(tokens)]).astype(np.uint8)
    topk_addr = mem.put(topk)
    dim = int(rng.integers(1, hw.max_in + 1))
    hidden = int(rng.integers(1, hw.max_in + 1))
    b, c = 1 + int(rng.integers(100)), 5000 + int(rng.integers(3000))
    fields = dict(tokens=tokens, dim=dim, hidden=hidden, top_k=top_k, gelu_b=b, gelu_c=c,
                  gelu_mult=1 + int(rng.integers(2**15 - 1)), gelu_shift=int(rng.integers(1, 48)),
                  topk_addr=topk_addr)
    for name in ("x_addr", "fc1_w_addr", "fc1_chan_addr", "fc2_w_addr", "fc2_chan_addr",
                 "hidden_addr", "slots_addr"):
        fields[name] = mem.take(64)
    payloads, want = [], []
    for e in rng.permutation(experts):
        d = ExpertDescriptor(hw, expert=int(e), **fields)
        payloads.append(d.to_int())
        want.append((Fault.NONE, *linear_jobs(d, topk)))
    d = ExpertDescriptor(hw, expert=int(chosen[0]), **fields)
    bad = [(Fault.OPCODE, {"opcode": 9}), (Fault.SHAPE, {"tokens": hw.max_tokens + 1}),
           (Fault.SHAPE, {"hidden": hw.max_in + 1}), (Fault.CONSTANT, {"gelu_shift": 0})]
    if hw.bus_width > 8:
        bad.append((Fault.ALIGN, {"topk_addr": topk_addr + 1}))
    fault, image = bad[int(rng.integers(len(bad)))]
    at = int(rng.integers(len(payloads) + 1))
    payloads.insert(at, d.to_int_with(**image))
    want.insert(at, (fault, [], [], []))
    if top_k > 1:  # a corrupt routing: expert 0 in every row, twice in the first
        twice = np.zeros((tokens, top_k), np.uint8)
        d = ExpertDescriptor(hw, expert=0, **dict(fields, topk_addr=mem.put(twice)))
        payloads.append(d.to_int())
        want.append((Fault.SHAPE, [], [], []))
    return mem.image, payloads, want


def simulate_expert_alone(hw, memory, payloads, seed, *, stalls=True, scans=None):
    """ExpertEngine in Amaranth's simulator, its memory and the linear engine played by
    the bench (random gaps, back-pressure and job lengths; none with ``stalls=False``).
    Per payload: ``(error, jobs, x rows, y rows)``, the rows read from the index ports
    while the jobs run. ``scans``: a list that gets, per payload, the cycles from its
    descriptor taken to its first job offered (or its ``done``)."""
    from amaranth.sim import Simulator

    rng = random.Random(seed)
    gap, ready = (0.3, 0.7) if stalls else (0.0, 1.0)
    dut = ExpertEngine(hw)
    got, current = [], {"jobs": [], "x": [], "y": []}

    async def descriptors(ctx):
        for k, payload in enumerate(payloads):
            while rng.random() < gap:
                await ctx.tick()
            ctx.set(dut.desc.payload.as_value(), payload)
            ctx.set(dut.desc.valid, 1)
            await ctx.tick().until(dut.desc.ready)
            ctx.set(dut.desc.valid, 0)
            for _ in range(100_000):
                if len(got) > k:
                    break
                await ctx.tick()
            assert len(got) == k + 1, f"EXPERT {k}: no done"

    async def read_memory(ctx):
        port = dut.rd[0]
        while True:
            ctx.set(port.req.ready, rng.random() < ready)
            _, _, valid, taken, req = await ctx.tick().sample(port.req.valid, port.req.ready,
                                                             port.req.payload)
            if not (valid and taken):
                continue
            ctx.set(port.req.ready, 0)
            await send_beats(ctx, port, hw, memory[req.addr:req.addr + req.length].tobytes(),
                             rng, gap)

    async def linear_engine(ctx):
        while True:
            ctx.set(dut.job.ready, rng.random() < (0.6 if stalls else 1.0))
            _, _, valid, ready, job = await ctx.tick().sample(dut.job.valid, dut.job.ready,
                                                             dut.job.payload.as_value())
            if not (valid and ready):
                continue
            ctx.set(dut.job.ready, 0)
            current["jobs"].append(int(job))
            n = unpack_job(int(job))["op"]["tokens"]
            for j in range(n):     # the rows the linear engine asks for, in its own time
                ctx.set(dut.x_index.at, j)
                ctx.set(dut.y_index.at, n - 1 - j)
                current["x"].append(ctx.get(dut.x_index.row))
                current["y"].insert(0, ctx.get(dut.y_index.row))
                if rng.random() < gap:
                    await ctx.tick()
            for _ in range(rng.randrange(4) if stalls else 0):
                await ctx.tick()
            ctx.set(dut.job_done, 1)
            await ctx.tick()
            ctx.set(dut.job_done, 0)

    async def monitor(ctx):
        cycle, taken_at = 0, None
        async for _, _, done, error, desc_valid, desc_ready, job_valid in ctx.tick().sample(
                dut.done, dut.error, dut.desc.valid, dut.desc.ready, dut.job.valid):
            cycle += 1
            if desc_valid and desc_ready:
                taken_at = cycle
            if scans is not None and taken_at is not None and (job_valid or done):
                scans.append(cycle - taken_at)
                taken_at = None
            if done:
                jobs = current["jobs"]
                n = len(current["x"]) // 2 if jobs else 0
                got.append((Fault(error), jobs, current["x"][:n], current["y"][n:]))
                current.update(jobs=[], x=[], y=[])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(descriptors)
    sim.add_testbench(read_memory, background=True)
    sim.add_testbench(linear_engine, background=True)
    sim.add_process(monitor)
    sim.run()
    return got


def unpack_job(image):
    from moevit.sim.streams import unpack

    return unpack(linear_job_layout(), image)


def test_expert_jobs_tiny_program():
    """The tiny program's 16 EXPERTs on the routing its ROUTEs left: their jobs and lists."""
    seed = _seed()
    hw, memory, experts = _tiny_case("EXPERT", 0, seed)
    got = simulate_expert_alone(hw, memory, [d.to_int() for d in experts], seed)
    for k, d in enumerate(experts):
        topk = memory[d.topk_addr:d.topk_addr + d.tokens * d.top_k].reshape(d.tokens, d.top_k)
        assert got[k] == (Fault.NONE, *linear_jobs(d, topk)), f"EXPERT {k} (expert {d.expert})"
    unchosen = sum(not jobs for _, jobs, _, _ in got)
    print(f"tiny EXPERTs: {unchosen} of {len(got)} chosen by no token")


@pytest.mark.parametrize("point", ["tiny", 7, 8])
def test_expert_jobs_and_lists(point):
    """EXPERTs of every expert of a random routing (and refused ones): the jobs handed to
    the linear engine equal ``ExpertDescriptor.linears(n)``'s, none for an expert no
    token chose, and the index ports answer the interpreter's token lists."""
    seed = _seed()
    hw = DEFAULT_HW["tiny"] if point == "tiny" else random_point(point)
    memory, payloads, want = random_experts(hw, np.random.default_rng(seed))
    got = simulate_expert_alone(hw, memory, payloads, seed)
    for k, (mine, theirs) in enumerate(zip(got, want)):
        assert mine == theirs, f"EXPERT {k} of seed {seed} on {hw}"


@pytest.mark.parametrize("point", ["tiny", 7, 8, 11])
def test_expert_scan_cycles(point):
    """Without stalls, an EXPERT's routing scan takes the cost model's cycles
    (:func:`~moevit.hw.cost.cycles.expert_scan_cycles`: a bus word a cycle, one a match
    where a word holds more than one) and a fixed few more (the request and the state
    changes: 3 to a chosen expert's first job, 2 to an unchosen one's ``done``), for every
    EXPERT of a random routing."""
    from moevit.hw.cost.cycles import expert_scan_cycles
    from moevit.sim.streams import unpack

    seed = _seed()
    hw = DEFAULT_HW["tiny"] if point == "tiny" else random_point(point)
    memory, payloads, want = random_experts(hw, np.random.default_rng(seed))
    scans = []
    got = simulate_expert_alone(hw, memory, payloads, seed, stalls=False, scans=scans)
    assert got == want, f"seed {seed} on {hw}"
    over = {True: set(), False: set()}
    for payload, (fault, jobs, _, _), cycles in zip(payloads, want, scans):
        if fault != Fault.NONE:
            continue
        d = unpack(ExpertDescriptor.layout(), payload)
        size = d["tokens"] * d["top_k"]
        hits = memory[d["topk_addr"]:d["topk_addr"] + size] == d["expert"]
        over[bool(jobs)].add(cycles - expert_scan_cycles(hw, size, hits=hits))
    print(f"seed {seed}, bus {hw.bus_width}: scan cycles over the model, chosen "
          f"{sorted(over[True])}, unchosen {sorted(over[False])}")
    # The bench's fixed cycles: the descriptor taken, the request, the first word's arrival,
    # and LISTED -> FC1 for a chosen expert (one more than the `done` of an unchosen one).
    assert over[True] | over[False] and over[True] <= {3} and over[False] <= {2}


# EXPERT with the linear engine --------------------------------------------------------------
class ExpertWithLinear(wiring.Component):
    """:class:`ExpertEngine` and :class:`LinearEngine` joined as the top joins them (the
    jobs, the index ports, ``job_done`` from the linear engine's ``done``): one engine
    for the bench. Read channel 0 is the EXPERT engine's (``topk``), 1.. the linear
    engine's; the write channel is the linear engine's. With ``payloads`` (those the bench
    hands over, in order), the one after the current one is shown on ``next_desc`` while
    the current one runs, as the sequencer's look-ahead shows it."""

    def __init__(self, hw, payloads=()):
        self.expert, self.linear = ExpertEngine(hw), LinearEngine(hw)
        self._payloads = list(payloads)
        super().__init__(engine_members(ExpertDescriptor.layout(), hw.bus_width,
                                        ExpertEngine.READS + LinearEngine.READS))

    def elaborate(self, platform):
        m = Module()
        expert = m.submodules.expert = self.expert
        linear = m.submodules.linear = self.linear
        wiring.connect(m, wiring.flipped(self.desc), expert.desc)
        channels = list(expert.rd) + list(linear.rd)
        for inner, outer in zip(channels, self.rd):
            wiring.connect(m, inner, wiring.flipped(outer))
        wiring.connect(m, linear.wr, wiring.flipped(self.wr))
        wiring.connect(m, expert.job, linear.desc)
        wiring.connect(m, linear.x_index, expert.x_index)
        wiring.connect(m, linear.y_index, expert.y_index)
        wiring.connect(m, expert.ahead, linear.ahead)
        m.d.comb += [expert.job_done.eq(linear.done), self.done.eq(expert.done),
                     self.busy.eq(expert.busy | linear.busy),
                     self.error.eq(Mux(expert.error != 0, expert.error, linear.error))]
        taken = Signal(range(len(self._payloads) + 2))     # descriptors handed over
        with m.If(self.desc.valid & self.desc.ready):
            m.d.sync += taken.eq(taken + 1)
        with m.Switch(taken):
            for k, payload in enumerate(self._payloads[1:], start=1):
                with m.Case(k):    # the k-th is (or was last) running: payload k is next
                    m.d.comb += [expert.next_desc.eq(payload),
                                 expert.next_valid.eq(payload & 0xFF == ExpertDescriptor.OPCODE)]
        return m


def check_expert_reads(program, reads, experts, memory, what):
    """EXPERT ``k`` read its routing (channel 0, exactly) and, when some token chose
    its expert, only its own operands (x, its weights and constants, its hidden rows)
    on the linear engine's channels, its two weight tensors among them; an expert no
    token chose read nothing else: its weights were never fetched."""
    hw = program.hw
    for k, (bursts, d) in enumerate(zip(reads, experts)):
        topk = memory[d.topk_addr:d.topk_addr + d.tokens * d.top_k].reshape(d.tokens, d.top_k)
        routing = [[0, at, beats * hw.bus_width // 8]
                   for at, beats in movers.bursts(d.topk_addr, d.tokens * d.top_k, hw.bus_width)]
        assert [b for b in bursts if b[0] == 0] == routing, f"{what}: EXPERT {k}'s routing"
        linear = [b for b in bursts if b[0] != 0]
        if not (topk == d.expert).any():
            assert linear == [], f"{what}: EXPERT {k} (expert {d.expert}, no token) fetched"
            continue
        own = {name: program.layout.at(getattr(d, name)) for name in (
            "x_addr", "fc1_w_addr", "fc1_chan_addr", "fc2_w_addr", "fc2_chan_addr",
            "hidden_addr")}
        for _, at, size in linear:
            assert any(r.offset <= at and at + size <= r.end for r in own.values()), \
                f"{what}: EXPERT {k} read {size} bytes at {at:#x}, not its own operand"
        for name in ("fc1_w_addr", "fc2_w_addr"):
            r = own[name]
            assert any(r.offset <= at < r.end for _, at, _ in linear), \
                f"{what}: EXPERT {k} never read its {name[:-5]}"


@pytest.mark.parametrize("task, few", [(0, True), pytest.param(0, False, marks=pytest.mark.slow),
                                       pytest.param(1, False, marks=pytest.mark.slow)])
def test_expert_with_linear_tiny_program(task, few):
    """The tiny program's 16 EXPERTs (``few``: its expert with the fewest tokens and one
    no token chose) and a refused one, back to back, on the EXPERT and the linear engine:
    the hidden rows and the slots equal the interpreter's, byte for byte, and the weights
    of experts no token chose are never read."""
    seed = _seed()
    hw, memory, experts = _tiny_case("EXPERT", task, seed)
    program, _ = _tiny_state(task)
    if few:
        counts = [int((memory[d.topk_addr:d.topk_addr + d.tokens * d.top_k] == d.expert).sum())
                  for d in experts]
        fewest = min((c, k) for k, c in enumerate(counts) if c)[1]
        experts = [experts[fewest]] + [d for d, c in zip(experts, counts) if not c][:1]
    payloads = [d.to_int() for d in experts]
    at = np.random.default_rng(seed).integers(len(payloads) + 1)
    payloads.insert(at, experts[0].to_int_with(topk_addr=experts[0].topk_addr + 1))
    faults = [Fault.NONE] * len(experts)
    faults.insert(at, Fault.ALIGN)
    want = memory.copy()
    run_instructions(want, hw, experts, task)
    got, summary = _run(ExpertWithLinear(hw), hw, memory, payloads,
                        f"engine-expert-tiny-{task}-{'few' if few else 'all'}", seed,
                        simulator=None if few else _slow_simulator())
    what = f"tiny EXPERTs (seed {seed})"
    assert summary["errors"] == [int(f) for f in faults], what
    _compare(got, want, what)
    reads = summary["reads"]
    assert reads.pop(at) == [], f"{what}: the refused EXPERT read"
    check_expert_reads(program, reads, experts, memory, what)


def _with_prefetch(d, prefetch):
    import dataclasses

    return dataclasses.replace(d, hw=d.hw.replace(expert_prefetch=prefetch))


def _prefetch_case(seed):
    """The chosen expert of the tiny program with the fewest tokens, twice, each time
    followed by one nobody chose: ``(hw, memory, program, order)``."""
    hw, memory, experts = _tiny_case("EXPERT", 0, seed)
    program, _ = _tiny_state(0)
    cases = []
    for topk_addr in sorted({d.topk_addr for d in experts}):
        layer = [d for d in experts if d.topk_addr == topk_addr]
        top = memory[topk_addr:topk_addr + layer[0].tokens * layer[0].top_k]
        counts = [int((top == d.expert).sum()) for d in layer]
        fewest = min((c, k) for k, c in enumerate(counts) if c)
        unchosen = [k for k, c in enumerate(counts) if not c][:2]
        cases.append((fewest[0], [layer[fewest[1]], layer[unchosen[0]], layer[fewest[1]],
                                  layer[unchosen[1]]]))
    return hw, memory, program, min(cases, key=lambda c: c[0])[1]


def test_expert_prefetch_tiny_program():
    """``hw.expert_prefetch``: a chosen expert of the tiny program twice, each time
    followed by one nobody chose, and a refused EXPERT among them, back to back on the EXPERT and the
    linear engine under random stalls: the memory equals the interpreter's, byte for
    byte; the first EXPERT reads the routing, the others on it do not when nobody chose
    their expert (they read nothing at all) and read it once when somebody did; every
    weight and constant of a chosen expert is read exactly once (read ahead, never
    again), none of an unchosen one."""
    seed = _seed()
    plain_hw, memory, program, order = _prefetch_case(seed)
    hw = plain_hw.replace(expert_prefetch=1)
    descs = [_with_prefetch(d, 1) for d in order]
    want = memory.copy()
    run_instructions(want, hw, descs, 0)
    payloads = [d.to_int() for d in descs]
    at = 1 + np.random.default_rng(seed).integers(len(payloads))
    payloads.insert(at, descs[0].to_int_with(topk_addr=descs[0].topk_addr + 1))
    got, summary = _run(ExpertWithLinear(hw, payloads), hw, memory, payloads,
                        "engine-expert-prefetch", seed)
    what = f"tiny EXPERTs with prefetch (seed {seed})"
    faults = [Fault.NONE] * len(descs)
    faults.insert(at, Fault.ALIGN)
    assert summary["errors"] == [int(f) for f in faults], what
    _compare(got, want, what)
    reads = summary["reads"]
    assert reads.pop(at) == [], f"{what}: the refused EXPERT read"
    routing = [[b for b in bursts if b[0] == 0] for bursts in reads]
    assert [bool(r) for r in routing] == [True, False, True, False], f"{what}: routing reads"
    assert reads[1] == reads[3] == [], f"{what}: an unchosen expert read"
    for d, bursts in ((descs[0], reads[0]), (descs[2], reads[2])):
        for name in ("fc1_w_addr", "fc1_chan_addr", "fc2_w_addr", "fc2_chan_addr"):
            region = program.layout.at(getattr(d, name))
            read = sum(size for channel, addr, size in bursts
                       if channel and region.offset <= addr < region.end)
            assert read == region.size, f"{what}: expert {d.expert} read {read} bytes of " \
                                        f"its {region.size}-byte {name[:-5]}"


@pytest.mark.slow
def test_expert_prefetch_saves_cycles():
    """The four EXPERTs of :func:`test_expert_prefetch_tiny_program` without stalls, with
    and without ``hw.expert_prefetch``: the same memory after, fewer cycles with it."""
    seed = _seed()
    _, memory, _, order = _prefetch_case(seed)
    cycles, after = {}, {}
    for prefetch in (0, 1):
        descs = [_with_prefetch(d, prefetch) for d in order]
        hw = descs[0].hw
        after[prefetch], summary = run_engine(
            ExpertWithLinear(hw, [d.to_int() for d in descs]), hw, memory,
            [d.to_int() for d in descs],
            test_id=f"engine-expert-prefetch-{prefetch}", seed=seed,
            simulator=_slow_simulator())
        cycles[prefetch] = summary["cycles"]
    print(f"cycles of the four EXPERTs without stalls: {cycles[0]} (sum {sum(cycles[0])}) "
          f"without prefetch, {cycles[1]} (sum {sum(cycles[1])}) with")
    _compare(after[1], after[0], "with and without prefetch")
    assert sum(cycles[1]) < sum(cycles[0])


def random_expert_layer(hw, rng):
    """A random MoE layer's EXPERTs on ``hw`` in a memory image: x, a routing (experts
    chosen by no token among them), each expert's weights and constants (random
    operations, :func:`~moevit.sim.linear_cases.random_op`); ``(memory, descriptors)``:
    every expert once in a random order, and one of them again somewhere."""
    from test_sim_engines_linear import _Image

    from moevit.hw.program.layout import pack_chan, pack_weight
    from moevit.sim.linear_cases import random_op

    nbytes = hw.bus_width // 8
    image = _Image(rng, nbytes)
    tokens = int(rng.integers(1, hw.max_tokens + 1))
    dim, hidden = (nbytes * int(rng.integers(1, hw.max_in // nbytes + 1)) for _ in range(2))
    experts = int(rng.integers(2, 7))
    top_k = int(rng.integers(1, experts + 1))
    chosen = rng.permutation(experts)[:max(top_k, int(rng.integers(1, experts + 1)))]
    topk = np.stack([rng.permutation(chosen)[:top_k] for _ in range(tokens)]).astype(np.uint8)
    x = rng.integers(-128, 128, (tokens, dim), dtype=np.int8)
    shared = dict(tokens=tokens, dim=dim, hidden=hidden, top_k=top_k,
                  x_addr=image.place(x.tobytes()), topk_addr=image.place(topk.tobytes()),
                  hidden_addr=image.place(size=tokens * hidden),
                  slots_addr=image.place(size=tokens * top_k * dim))

    def place(op, name):
        return {f"{name}_w_addr": image.place(pack_weight(op["weight"], hw.cols)),
                f"{name}_chan_addr": image.place(pack_chan(op["bias"], op["multiplier"],
                                                           op["shift"], hw.cols))}

    descs = []
    for e in range(experts):
        fc1 = random_op(hw, rng, tokens, dim, hidden, gelu=True)
        fc2 = random_op(hw, rng, tokens, hidden, dim)
        gelu = {k: getattr(fc1["desc"], k) for k in ("gelu_b", "gelu_c", "gelu_mult",
                                                      "gelu_shift")}
        descs.append(ExpertDescriptor(hw, expert=e, **gelu, **place(fc1, "fc1"),
                                      **place(fc2, "fc2"), **shared))
    order = [descs[k] for k in rng.permutation(experts)]
    order.insert(int(rng.integers(len(order) + 1)), order[int(rng.integers(len(order)))])
    return image.memory(), order


def _expert_point(seed, *, large, simulator=None):
    """:func:`random_expert_layer` on a random design point of the linear engine's
    (:func:`random_engine_hw`: bus, array, one or two MACs a DSP48E2, weight streaming or
    not) with the expert prefetch, on the EXPERT and the linear engine under random stalls:
    the whole image equals the interpreter's."""
    from test_sim_engines_linear import random_engine_hw

    rng = np.random.default_rng(seed)
    hw = random_engine_hw(rng, large=large).replace(expert_prefetch=1)
    memory, descs = random_expert_layer(hw, rng)
    d = descs[0]
    print(f"seed {seed}: {hw}; {len(descs)} EXPERTs of {d.tokens} tokens, dim {d.dim}, "
          f"hidden {d.hidden}, top-{d.top_k}")
    want = memory.copy()
    run_instructions(want, hw, descs, 0)
    payloads = [d.to_int() for d in descs]
    got, summary = _run(ExpertWithLinear(hw, payloads), hw, memory, payloads,
                        f"engine-expert-prefetch-{seed}", seed, simulator)
    what = f"EXPERTs with prefetch (seed {seed}, {hw})"
    assert summary["errors"] == [0] * len(descs), what
    _compare(got, want, what)
    check_weights_read_once(hw, memory, descs, summary["reads"], what)


def check_weights_read_once(hw, memory, descs, reads, what):
    """Each chosen EXPERT of ``descs`` (run in order, on one routing) read the bytes of its
    two weight tensors once (``reads``: the bench's bursts per EXPERT, channel 2 the linear
    engine's ``w``); an unchosen one none; and a chosen one's fc1 weights after a chosen
    one were read ahead, during the EXPERT before it (its fc2), when the routing's note
    holds its expert (below ``hw.cols``, :class:`~moevit.hw.top.moe.ExpertEngine`)."""
    w_channel = ExpertEngine.READS + LinearEngine.W
    d0 = descs[0]
    topk = memory[d0.topk_addr:d0.topk_addr + d0.tokens * d0.top_k]
    chosen = [bool((topk == d.expert).any()) for d in descs]

    def w_bytes(bursts, addr, size):
        return sum(max(0, min(a + n, addr + size) - max(a, addr))
                   for channel, a, n in bursts if channel == w_channel)

    def tiles(n):
        return -(-n // hw.cols) * hw.cols

    everything = [b for bursts in reads for b in bursts]
    for k, d in enumerate(descs):
        for addr, size in ((d.fc1_w_addr, tiles(d.hidden) * d.dim),
                           (d.fc2_w_addr, tiles(d.dim) * d.hidden)):
            times = sum(chosen[j] for j, e in enumerate(descs) if e.expert == d.expert)
            assert w_bytes(everything, addr, size) == times * size, \
                f"{what}: expert {d.expert}'s weights at {addr:#x} not read {times} time(s)"
        if k and chosen[k] and chosen[k - 1] and d.expert < hw.cols:
            ahead = w_bytes(reads[k - 1], d.fc1_w_addr, tiles(d.hidden) * d.dim)
            assert ahead, f"{what}: EXPERT {k}'s fc1 weights not read during EXPERT {k - 1}"


def test_expert_prefetch_random_design_point():
    """One small random design point of :func:`_expert_point` (Icarus)."""
    _expert_point(_seed(), large=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", _slow_seeds())
def test_expert_prefetch_random_design_points(seed):
    """:func:`_expert_point` on larger random design points (buses up to 64 bytes)."""
    _expert_point(seed, large=True, simulator=_slow_simulator())


# COMBINE --------------------------------------------------------------------------------------
@pytest.mark.parametrize("lanes", [0, 4])
def test_combine_tiny_program_and_random(lanes):
    """Both COMBINEs of the tiny program on the slots its experts left, then random
    COMBINEs and a refused one, back to back: on as many lanes as the array's columns, and
    on fewer (``combine_lanes``)."""
    seed = _seed()
    _sequence(CombineEngine, random_combines, DEFAULT_HW["tiny"].replace(combine_lanes=lanes),
              seed, 4, f"engine-combine-tiny-{lanes}",
              tiny=("COMBINE", 0, lambda d, memory: d.to_int()))


def _requant_constants(rng, scale):
    if rng.random() < 0.2:
        return int(rng.choice([1, 2**15 - 1])), int(rng.choice([1, 47]))
    return tuple(int(v) for v in intops.quantize_multiplier(scale * float(rng.uniform(0.5, 2))))


def _gate_weights(rng, tokens, top_k):
    """Q0.15 weights as a gate makes them (a row sums to at most 2**15), extremes included."""
    raw = rng.random((tokens, top_k)) ** 3
    weights = np.floor(raw / raw.sum(axis=1, keepdims=True) * 2**15 * rng.uniform(0.3, 1))
    extreme = rng.random(tokens) < 0.2
    weights[extreme] = 0
    weights[extreme, 0] = 2**15
    return weights.astype(np.uint16)


def random_combines(hw, mem, count, most_tokens=40):
    """``(descriptors, payloads, faults)``: ``count`` random COMBINEs in ``mem`` (at most
    ``most_tokens`` tokens), one refused."""
    rng = mem.rng
    descs, payloads, faults = [], [], []
    refused = int(rng.integers(count))
    for k in range(count):
        tokens = int(rng.integers(1, min(hw.max_tokens, most_tokens) + 1))
        top_k = int(rng.integers(1, 5))
        lanes = hw.combine_width
        dim = lanes * int(rng.integers(1, hw.max_in // lanes + 1))
        mult, shift = _requant_constants(rng, 2.0 ** -22)
        res_y, res_skip, res_shift = intops.residual_constants(
            *(float(v) for v in rng.uniform(0.01, 0.1, 3)))
        slots = rng.integers(-128, 128, (tokens, top_k, dim)).astype(np.int8)
        slots[rng.random((tokens, top_k)) < 0.1] = rng.choice([-128, 127])
        d = CombineDescriptor(
            hw, tokens=tokens, dim=dim, top_k=top_k, mult=mult, shift=shift,
            res_mult_y=res_y, res_mult_skip=res_skip, res_shift=res_shift,
            weights_addr=mem.put(_gate_weights(rng, tokens, top_k)), slots_addr=mem.put(slots),
            skip_addr=mem.put(rng.integers(-128, 128, (tokens, dim)).astype(np.int8)),
            y_addr=mem.take(tokens * dim))
        if k == refused:
            options = [(Fault.OPCODE, {"opcode": 7}), (Fault.SHAPE, {"dim": hw.max_in + 1}),
                       (Fault.SHAPE, {"top_k": 0}), (Fault.CONSTANT, {"mult": 0}),
                       (Fault.CONSTANT, {"res_shift": 48})]
            if lanes > 1:
                options.append((Fault.SHAPE, {"dim": dim - 1}))
            if hw.bus_width > 8:
                options.append((Fault.ALIGN, {"slots_addr": d.slots_addr + 1}))
            fault, fields = options[int(rng.integers(len(options)))]
            payloads.append(d.to_int_with(**fields))
            faults.append(fault)
        else:
            descs.append(d)
            payloads.append(d.to_int())
            faults.append(Fault.NONE)
    return descs, payloads, faults


@pytest.mark.slow
@pytest.mark.parametrize("seed", _slow_seeds())
def test_combine_random_design_points(seed):
    """COMBINE on a random design point: up to its buffers, every bus width, on a random
    divisor of the columns as its lanes."""
    hw = random_point(seed)
    divisors = [n for n in range(1, hw.cols + 1) if hw.cols % n == 0]
    hw = hw.replace(combine_lanes=int(np.random.default_rng(seed).choice(divisors)))
    print(hw)
    _sequence(CombineEngine, functools.partial(random_combines, most_tokens=hw.max_tokens), hw,
              seed, 8, f"engine-combine-point-{seed}", simulator=_slow_simulator())
