"""The MoE engines (ROUTE, EXPERT, COMBINE) against the instruction-level interpreter.

Each run compares the whole memory image after the engine bench
(:func:`~moevit.sim.benches.engines.run_engine`) with the image
:func:`~moevit.hw.program.interpreter.run_instructions` leaves, byte for byte:
the tiny program's own instructions on the memory the instructions before
them left (their outputs overwritten with noise first, so a missing write
shows), and random instructions back to back (random shapes, gate rules,
constants at their extremes, logits with ties, experts no token chose, refused
descriptors between them), under random memory stalls and descriptor gaps.

Fast (``make test``, Icarus): the tiny program, one random sequence each.
Slow (``make sim``, ``$SIM``, Verilator by default here): random design points
(bus width, lanes, tokens), ``MOEVIT_MOE_ENGINE_POINTS`` of them (default 6).
Every seed is printed; ``MOEVIT_SEED=<seed>`` replays it.
"""

import functools
import os
import random

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.program.compiler import compile_program
from moevit.hw.program.descriptor import Fault
from moevit.hw.program.interpreter import run_instructions
from moevit.hw.program.isa import TASK_ENTRY_BYTES, RouteDescriptor, TaskEntry
from moevit.hw.top.moe import RouteEngine, route_job_layout
from moevit.model.integer import golden, intops
from moevit.sim.benches.engines import run_engine
from moevit.sim.moe_cases import random_logits
from moevit.sim.units import tiny_quantized

POINTS = int(os.environ.get("MOEVIT_MOE_ENGINE_POINTS", 6))


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


def _run(engine, hw, memory, payloads, test_id, seed, simulator=None):
    got, summary = run_engine(engine, hw, memory, payloads, test_id=test_id, seed=seed,
                              simulator=simulator, gaps="random", memory_pauses="random")
    print(f"{test_id}: cycles {summary['cycles']}, {summary['seconds']:.1f} s")
    return got, summary


# Random instructions --------------------------------------------------------------------
class _Memory:
    """A random memory image and an allocator of bus-aligned regions with gaps."""

    def __init__(self, hw, rng, size=1 << 16):
        self.align = hw.bus_width // 8
        self.rng = rng
        self.image = rng.integers(0, 256, size, np.uint8)
        self.next = 0

    def take(self, size):
        start = self.next + self.align * int(self.rng.integers(0, 3))
        self.next = -(-(start + size) // self.align) * self.align
        assert self.next <= len(self.image), "the random case outgrew its memory"
        return start

    def put(self, array):
        array = np.ascontiguousarray(array)
        at = self.take(array.nbytes)
        self.image[at:at + array.nbytes] = array.reshape(-1).view(np.uint8)
        return at


def _softmax_constants(rng):
    if rng.random() < 0.2:
        return int(rng.choice([1, 2**15 - 1])), int(rng.choice([1, 47]))
    return tuple(int(v) for v in intops.softmax_constants(float(rng.choice([0.004, 0.05, 0.3]))))


def random_routes(hw, rng, count):
    """``(memory, descriptors, payloads, faults)``: ``count`` random ROUTEs, one of them
    refused (its fault expected)."""
    mem = _Memory(hw, rng)
    descs, payloads, faults = [], [], []
    refused = int(rng.integers(count))
    for k in range(count):
        tokens = int(rng.integers(1, hw.max_tokens + 1))
        experts = int(rng.integers(1, hw.cols + 1))
        top_k = int(rng.integers(1, experts + 1))
        mult, shift = _softmax_constants(rng)
        tasks = int(rng.integers(1, 4))
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
    return mem.image, descs, payloads, faults


def _route_fault(hw, rng):
    options = [(Fault.OPCODE, {"opcode": 8}), (Fault.SHAPE, {"experts": hw.cols + 1}),
               (Fault.SHAPE, {"top_k": 0}), (Fault.SHAPE, {"tokens": hw.max_tokens + 1})]
    if hw.bus_width > 8:
        options.append((Fault.SHAPE, {"weights_addr": 1}))
    return options[int(rng.integers(len(options)))]


# ROUTE ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_route_tiny_program(task):
    """Both ROUTEs of the tiny program, back to back, on the gate logits of ``task``."""
    seed = _seed()
    hw, memory, routes = _tiny_case("ROUTE", task, seed)
    want = memory.copy()
    run_instructions(want, hw, routes, task)
    payloads = [route_job(d, _entry(memory, d, task)) for d in routes]
    got, summary = _run(RouteEngine(hw), hw, memory, payloads, f"engine-route-tiny-{task}", seed)
    assert summary["errors"] == [Fault.NONE] * len(routes)
    _compare(got, want, "tiny ROUTEs")


def _route_sequence(hw, seed, count, test_id, simulator=None):
    rng = np.random.default_rng(seed)
    memory, descs, payloads, faults = random_routes(hw, rng, count)
    want = memory.copy()
    run_instructions(want, hw, descs)
    got, summary = _run(RouteEngine(hw), hw, memory, payloads, test_id, seed, simulator)
    assert summary["errors"] == [int(f) for f in faults]
    _compare(got, want, f"random ROUTEs (seed {seed}, {hw})")


def test_route_random_sequence():
    """Random ROUTEs and refused ones, back to back, on the tiny hardware."""
    seed = _seed()
    _route_sequence(DEFAULT_HW["tiny"], seed, 6, "engine-route-random")
