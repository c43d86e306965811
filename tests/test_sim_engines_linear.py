"""The LINEAR engine (hw/top/linear_engine.py) against the instruction-level interpreter,
byte for byte over the whole memory: the tiny program's linear layers and experts with
their real weights, random jobs on random design points (gathered and scattered rows,
ragged tiles, GELU and residual), back to back under memory stalls and gaps."""

import dataclasses
import functools
import os
import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from moevit.errors import ConfigError
from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.program.descriptor import DescriptorError, Fault, LinearDescriptor
from moevit.hw.program.interpreter import run_instructions
from moevit.hw.program.isa import TASK_ENTRY_BYTES, TaskEntry
from moevit.hw.program.layout import pack_chan, pack_weight
from moevit.hw.top.linear_engine import LinearEngine, check_job, pack_job
from moevit.sim.benches.engines import run_engine
from moevit.sim.linear_cases import random_op


def _seed():
    seed = int(os.environ.get("MOEVIT_SEED", random.randrange(1 << 16)))
    print(f"seed {seed} (replay with MOEVIT_SEED={seed})")
    return seed


def _compare(got, want):
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} bytes differ, first at {bad[0]:#x}: {got[bad[0]]} != " \
                          f"{want[bad[0]]}"


# A bench wrapper: the engine with its index ports answered from per-job tables ------------
class IndexedEngine(wiring.Component):
    """A :class:`LinearEngine` whose ``x_index`` and ``y_index`` read job ``k``'s row lists
    (``x_rows[k]``, ``y_rows[k]``; the job counter steps at each ``done``); the other
    members are the engine's, so :class:`~moevit.hw.top.ports.EngineShell` takes it."""

    def __init__(self, hw, x_rows, y_rows):
        self._engine = LinearEngine(hw)
        self._hw = hw
        self._tables = [x_rows, y_rows]
        super().__init__({name: member for name, member
                          in self._engine.signature.members.items()
                          if name not in ("x_index", "y_index")})

    def elaborate(self, platform):
        m = Module()
        engine = m.submodules.engine = self._engine
        wiring.connect(m, wiring.flipped(self.desc), engine.desc)
        for k in range(len(engine.rd)):
            wiring.connect(m, engine.rd[k], wiring.flipped(self.rd[k]))
        wiring.connect(m, engine.wr, wiring.flipped(self.wr))
        m.d.comb += [self.done.eq(engine.done), self.busy.eq(engine.busy),
                     self.error.eq(engine.error)]
        depth = self._hw.max_tokens
        jobs = max(1, max(len(t) for t in self._tables))
        job = Signal(range(jobs + 1))
        with m.If(engine.done):
            m.d.sync += job.eq(job + 1)
        for name, table, port in zip(("x_rows", "y_rows"), self._tables,
                                     (engine.x_index, engine.y_index)):
            init = np.zeros((jobs, depth), np.int64)
            for k, rows in enumerate(table):
                init[k, :len(rows)] = rows
            memory = m.submodules[name] = Memory(shape=16, depth=jobs * depth,
                                                 init=[int(v) for v in init.ravel()])
            read = memory.read_port(domain="comb")
            m.d.comb += [read.addr.eq(job * depth + port.at), port.row.eq(read.data)]
        return m


# Expected images: the interpreter ---------------------------------------------------------
def expected_job(memory, desc, x_rows=None, y_rows=None):
    """Run one job on ``memory`` (changed in place) with the interpreter's LINEAR: on the
    gathered rows of x when ``x_rows`` is given, its rows scattered when ``y_rows`` is."""
    hw = desc.hw
    if x_rows is None and y_rows is None:
        run_instructions(memory, hw, [desc])
        return
    T, I, O = desc.tokens, desc.in_features, desc.out_features
    base = -(-len(memory) // 64) * 64
    scratch = np.zeros(base + T * I + 64 + T * O, np.uint8)
    scratch[:len(memory)] = memory
    x_addr, y_addr = desc.x_addr, desc.y_addr
    if x_rows is not None:
        for j, row in enumerate(x_rows):
            scratch[base + j * I:base + (j + 1) * I] = memory[x_addr + row * I:x_addr + (row + 1) * I]
        x_addr = base
    y_dense = base + T * I + 64
    run_instructions(scratch, hw, [dataclasses.replace(desc, x_addr=x_addr, y_addr=y_dense)])
    y = scratch[y_dense:y_dense + T * O].reshape(T, O)
    rows = range(T) if y_rows is None else y_rows
    for j, row in enumerate(rows):
        memory[desc.y_addr + row * O:desc.y_addr + (row + 1) * O] = y[j]


def run_jobs(hw, memory, jobs, *, test_id, seed, simulator=None, pauses="random"):
    """Run ``jobs`` (``(desc, x_rows, y_rows)``) on the engine and on the interpreter; the
    whole images compared. Returns the bench's summary."""
    want = memory.copy()
    for desc, x_rows, y_rows in jobs:
        expected_job(want, desc, x_rows, y_rows)
    engine = IndexedEngine(hw, [[] if x is None else list(x) for _, x, _ in jobs],
                           [[] if y is None else list(y) for _, _, y in jobs])
    payloads = [pack_job(d, x_gather=x is not None, y_scatter=y is not None) for d, x, y in jobs]
    got, summary = run_engine(engine, hw, memory, payloads, test_id=test_id, seed=seed,
                              simulator=simulator, memory_pauses=pauses, gaps=pauses)
    assert summary["errors"] == [Fault.NONE] * len(jobs)
    _compare(got, want)
    print(f"{'job':>3} {'tokens':>6} {'in':>4} {'out':>4} {'mode':<8} {'cycles':>7} "
          f"{'kernel':>7} {'ratio':>6}")
    for k, ((desc, x, y), cycles) in enumerate(zip(jobs, summary["cycles"])):
        mode = "gather" if x is not None else "scatter" if y is not None else "dense"
        model = desc.expected_cycles()
        print(f"{k:>3} {desc.tokens:>6} {desc.in_features:>4} {desc.out_features:>4} "
              f"{mode:<8} {cycles:>7} {model:>7} {cycles / model:>6.2f}")
    return summary


# The tiny program ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tiny():
    """The tiny program, the memory image after its run on task 0 and each linear job of the
    run (LINEAR, TASK_LINEAR resolved for task 0, EXPERT's fc1 and fc2 with their rows)."""
    from moevit.hw.program.compiler import compile_program
    from moevit.hw.program.interpreter import run_image
    from moevit.model.integer.golden import quantize_image
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    hw = DEFAULT_HW["tiny"]
    program = compile_program(qmodel, hw)
    final, _ = run_image(program, quantize_image(image, qmodel.scale("input")), 0)
    linears, experts = [], []
    for desc in program.instructions:
        if desc.MNEMONIC == "LINEAR":
            linears.append((desc, None, None))
        elif desc.MNEMONIC == "TASK_LINEAR":
            at = desc.table_addr
            words = final[at:at + TASK_ENTRY_BYTES].view("<u4")
            linears.append((desc.resolve(TaskEntry(*(int(w) for w in words))), None, None))
        elif desc.MNEMONIC == "EXPERT":
            top = final[desc.topk_addr:desc.topk_addr + desc.tokens * desc.top_k]
            tokens, slots = np.nonzero(top.reshape(desc.tokens, desc.top_k) == desc.expert)
            if tokens.size:
                fc1, fc2 = desc.linears(tokens.size)
                experts.append((desc, [(fc1, tokens, None),
                                       (fc2, None, tokens * desc.top_k + slots)]))
    return hw, program, final, linears, experts


def _dirty(final, jobs, seed):
    """The final image with every job's output region made random: the jobs must write it."""
    rng = np.random.default_rng(seed)
    memory = final.copy()
    for desc, _, y_rows in jobs:
        rows = desc.tokens if y_rows is None else max(y_rows) + 1
        size = rows * desc.out_features
        memory[desc.y_addr:desc.y_addr + size] = rng.integers(0, 256, size, dtype=np.uint8)
    return memory


def _tiny_linears(names, *, test_id, simulator=None):
    seed = _seed()
    hw, program, final, linears, _ = _tiny()
    jobs = [job for job in linears if program.layout.at(job[0].y_addr).name in names] \
        if names else linears
    memory = _dirty(final, jobs, seed)
    run_jobs(hw, memory, jobs, test_id=test_id, seed=seed, simulator=simulator)


def test_tiny_linears_fast():
    """The first attention projection (residual add) and the first MoE gate (8 logits a
    token: one contiguous write), back to back."""
    _tiny_linears(("blocks.0.add1.out", "blocks.1.mlp.gate.logits"), test_id="engine-linear-tiny")


@pytest.mark.slow
def test_tiny_linears_all():
    """Every LINEAR and TASK_LINEAR of the tiny program, back to back (Verilator)."""
    _tiny_linears((), test_id="engine-linear-tiny-all", simulator="verilator")
