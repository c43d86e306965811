"""The LINEAR engine (hw/top/linear_engine.py) against the instruction-level interpreter,
byte for byte over the whole memory: the tiny program's linear layers and experts with
their real weights, random jobs on random design points (gathered and scattered rows,
ragged tiles, GELU and residual), back to back under memory stalls and gaps."""

import dataclasses
import functools

import numpy as np
import pytest
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from moevit.errors import ConfigError
from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.program.descriptor import DescriptorError, Fault, LinearDescriptor
from moevit.hw.program.interpreter import run_instructions
from moevit.hw.program.isa import TASK_ENTRY_BYTES, TaskEntry
from moevit.hw.program.layout import pack_chan, pack_weight
from moevit.hw.top.linear_engine import LinearEngine, check_job, pack_job
from moevit.hw.top.ports import ReadPort
from moevit.sim.benches.engines import compare_images, replay_seed, run_engine
from moevit.sim.linear_cases import random_op


# A bench wrapper: the engine with its index ports answered from per-job tables ------------
class IndexedEngine(wiring.Component):
    """A :class:`LinearEngine` whose ``x_index`` and ``y_index`` read job ``k``'s row lists
    (``x_rows[k]``, ``y_rows[k]``; the job counter steps at each ``done``); the other
    members are the engine's, so :class:`~moevit.hw.top.ports.EngineShell` takes it.

    ``shared``: the four read channels on one, as the top's interconnect joins them:
    requests granted round-robin, the beats returned in request order, each to its
    owner, held while the owner does not take them (so one channel's beats can hold
    the others'). ``window``: the on-chip window's ``(start, end)`` addresses the engine
    is told (with ``hw.x_by_words`` an x inside it is read a word of each row at a time;
    the bench's memory serves every address alike)."""

    def __init__(self, hw, x_rows, y_rows, *, shared=False, window=(0, 0)):
        self._engine = LinearEngine(hw)
        self._hw = hw
        self._tables = [x_rows, y_rows]
        self._shared, self._window = shared, window
        members = {name: member for name, member in self._engine.signature.members.items()
                   if name not in ("x_index", "y_index", "window_at", "window_end")}
        if shared:
            members["rd"] = Out(ReadPort(hw.bus_width)).array(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        engine = m.submodules.engine = self._engine
        wiring.connect(m, wiring.flipped(self.desc), engine.desc)
        if self._shared:
            self._share(m, engine.rd, self.rd[0])
        else:
            for k in range(len(engine.rd)):
                wiring.connect(m, engine.rd[k], wiring.flipped(self.rd[k]))
        wiring.connect(m, engine.wr, wiring.flipped(self.wr))
        m.d.comb += [self.done.eq(engine.done), self.busy.eq(engine.busy),
                     self.error.eq(engine.error), engine.window_at.eq(self._window[0]),
                     engine.window_end.eq(self._window[1])]
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

    @staticmethod
    def _share(m, channels, out):
        n = len(channels)
        owners = m.submodules.owners = SyncFIFO(width=2, depth=16)
        turn = Signal(range(n))
        with m.Switch(turn):
            for k, channel in enumerate(channels):
                with m.Case(k):
                    m.d.comb += [out.req.valid.eq(channel.req.valid & owners.w_rdy),
                                 out.req.payload.eq(channel.req.payload),
                                 channel.req.ready.eq(out.req.ready & owners.w_rdy)]
        m.d.comb += [owners.w_data.eq(turn), owners.w_en.eq(out.req.valid & out.req.ready)]
        with m.If(~out.req.valid | out.req.ready):
            m.d.sync += turn.eq(Mux(turn == n - 1, 0, turn + 1))
        with m.Switch(owners.r_data):
            for k, channel in enumerate(channels):
                with m.Case(k):
                    m.d.comb += [channel.data.valid.eq(out.data.valid & owners.r_rdy),
                                 out.data.ready.eq(channel.data.ready & owners.r_rdy)]
        for channel in channels:
            m.d.comb += channel.data.payload.eq(out.data.payload)
        m.d.comb += owners.r_en.eq(out.data.valid & out.data.ready & out.data.payload.last)


# Expected images: the interpreter ---------------------------------------------------------
def bytes_of(addr, rows, width):
    """The byte addresses of ``rows`` (indices) of a row-major tensor at ``addr``."""
    return addr + np.add.outer(np.asarray(rows) * width, np.arange(width))


def expected_job(memory, desc, x_rows=None, y_rows=None):
    """Run one job on ``memory`` (changed in place) with the interpreter's LINEAR: on the
    gathered rows of x when ``x_rows`` is given, its rows scattered when ``y_rows`` is."""
    hw = desc.hw
    if x_rows is None and y_rows is None:
        run_instructions(memory, hw, [desc])
        return
    T, I, O = desc.tokens, desc.in_features, desc.out_features

    scratch = np.concatenate([memory, np.zeros(T * I + T * O, np.uint8)])
    x_addr, y_dense = desc.x_addr, len(memory) + T * I
    if x_rows is not None:
        x_addr = len(memory)
        scratch[x_addr:y_dense] = memory[bytes_of(desc.x_addr, x_rows, I)].ravel()
    run_instructions(scratch, hw, [dataclasses.replace(desc, x_addr=x_addr, y_addr=y_dense)])
    rows = range(T) if y_rows is None else y_rows
    memory[bytes_of(desc.y_addr, rows, O)] = scratch[y_dense:].reshape(T, O)


@dataclasses.dataclass
class Job:
    """One job of a run: its operation, the rows of ``x_gather`` / ``y_scatter`` (None:
    dense), and for a job the engine must refuse, its forged payload and fault."""

    desc: LinearDescriptor
    x_rows: object = None
    y_rows: object = None
    forged: int = None
    fault: Fault = Fault.NONE

    @property
    def payload(self) -> int:
        flags = dict(x_gather=self.x_rows is not None, y_scatter=self.y_rows is not None)
        if self.forged is None:
            return pack_job(self.desc, **flags)
        width = LinearDescriptor.layout().size
        return pack_job(self.desc, **flags) >> width << width | self.forged

    @property
    def mode(self) -> str:
        return "+".join(name for name, rows in (("gather", self.x_rows), ("scatter", self.y_rows))
                        if rows is not None) or "dense"

    def written(self):
        """The byte addresses the job writes."""
        rows = range(self.desc.tokens) if self.y_rows is None else self.y_rows
        return bytes_of(self.desc.y_addr, rows, self.desc.out_features)

    def expect(self, memory):
        """The job's effect on ``memory`` (the interpreter's; none for a refused job)."""
        if self.fault == Fault.NONE:
            expected_job(memory, self.desc, self.x_rows, self.y_rows)


def run_jobs(hw, memory, jobs, *, test_id, seed, want=None, simulator=None, pauses="random",
             shared=False, window=(0, 0)):
    """Run ``jobs`` on the engine from ``memory``; the whole image after them compared with
    ``want`` (default: each job's :meth:`Job.expect` in turn); ``shared``: the read
    channels on one (:class:`IndexedEngine`). Prints each job's cycles
    beside the kernel's cost model; returns the bench's summary."""
    if want is None:
        want = memory.copy()
        for job in jobs:
            job.expect(want)
    engine = IndexedEngine(hw, [[] if j.x_rows is None else list(j.x_rows) for j in jobs],
                           [[] if j.y_rows is None else list(j.y_rows) for j in jobs],
                           shared=shared, window=window)
    got, summary = run_engine(engine, hw, memory, [j.payload for j in jobs], test_id=test_id,
                              seed=seed, simulator=simulator, memory_pauses=pauses, gaps=pauses)
    print(f"{'job':>3} {'tokens':>6} {'in':>4} {'out':>4} {'gelu':>4} {'res':>3} "
          f"{'mode':<14} {'fault':<6} {'cycles':>7} {'kernel':>7} {'ratio':>6}")
    for k, (job, cycles) in enumerate(zip(jobs, summary["cycles"])):
        d = job.desc
        model = d.expected_cycles()
        print(f"{k:>3} {d.tokens:>6} {d.in_features:>4} {d.out_features:>4} {d.gelu:>4} "
              f"{d.residual:>3} {job.mode:<14} {job.fault.name:<6} {cycles:>7} {model:>7} "
              f"{cycles / model:>6.2f}")
    assert summary["errors"] == [int(j.fault) for j in jobs]
    compare_images(got, want)
    return summary


# The tiny program ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tiny(packing=1):
    """The tiny program, the memory image after its run on task 0, its linear jobs
    (LINEAR, and TASK_LINEAR resolved for task 0) and per EXPERT that some token chose,
    the instruction and its two jobs (fc1 on the gathered rows, fc2 scattered to the
    slots)."""
    from moevit.hw.program.compiler import compile_program
    from moevit.hw.program.interpreter import run_image
    from moevit.model.integer.golden import quantize_image
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    hw = DEFAULT_HW["tiny"].replace(dsp_packing=packing)
    program = compile_program(qmodel, hw)
    final, _ = run_image(program, quantize_image(image, qmodel.scale("input")), 0)
    linears, experts = [], []
    for desc in program.instructions:
        if desc.MNEMONIC == "LINEAR":
            linears.append(Job(desc))
        elif desc.MNEMONIC == "TASK_LINEAR":
            at = desc.table_addr
            words = final[at:at + TASK_ENTRY_BYTES].view("<u4")
            linears.append(Job(desc.resolve(TaskEntry(*(int(w) for w in words)))))
        elif desc.MNEMONIC == "EXPERT":
            top = final[desc.topk_addr:desc.topk_addr + desc.tokens * desc.top_k]
            tokens, slots = np.nonzero(top.reshape(desc.tokens, desc.top_k) == desc.expert)
            if tokens.size:
                fc1, fc2 = desc.linears(tokens.size)
                experts.append((desc, [Job(fc1, x_rows=tokens),
                                       Job(fc2, y_rows=tokens * desc.top_k + slots)]))
    return hw, program, final, linears, experts


#: Cycles the engine and the bench's memory add to a job's kernel cycles at most: at the
#: start, one to hand the job to the kernel and the read-ahead FIFO's latency on the
#: first weights; at the end, the re-packing of the last beat, its W beat and the memory
#: model's write response.
ENGINE_TAIL = 16


def _tiny_run(linears, experts, *, test_id, simulator=None, pauses="random", shared=False,
              extra=(), packing=1):
    """The linear jobs and the experts' jobs from the final image with every byte they
    write made random (so each must be written), then ``extra`` jobs;
    expected: the interpreter's LINEAR and EXPERT instructions themselves."""
    seed = replay_seed()
    hw, _, final, _, _ = _tiny(packing)
    rng = np.random.default_rng(seed)
    memory = final.copy()
    jobs = linears + [job for _, pair in experts for job in pair]
    for job in jobs:
        memory[job.written()] = rng.integers(0, 256, job.written().shape, dtype=np.uint8)
    want = memory.copy()
    run_instructions(want, hw, [job.desc for job in linears] + [e for e, _ in experts])
    for job in jobs:
        # The inputs are the program's: what the interpreter expects is what the run wrote.
        compare_images(want[job.written()].ravel(), final[job.written()].ravel())
    jobs += list(extra)
    summary = run_jobs(hw, memory, jobs, test_id=test_id, seed=seed, want=want,
                       simulator=simulator, pauses=pauses, shared=shared)
    if pauses == "none":
        # Nothing but the start and the tail: the kernel never waits for an operand.
        over = [cycles - job.desc.expected_cycles()
                for job, cycles in zip(jobs, summary["cycles"]) if job.fault == Fault.NONE]
        assert max(over) <= ENGINE_TAIL, f"cycles past the kernel's cost model: {over}"


def _named(jobs, names):
    _, program, _, _, _ = _tiny()
    return [job for job in jobs if program.layout.at(job.desc.y_addr).name in names]


def test_tiny_jobs_fast():
    """The first attention projection (residual add), the first MoE gate (8 logits a token:
    one contiguous write), the expert with the fewest tokens: its fc1 (gathered rows) and
    fc2 (scattered rows), then three jobs the engine refuses, back to back, the read
    channels on one port."""
    hw, _, _, linears, experts = _tiny()
    proj, gate = _named(linears, ("blocks.0.add1.out", "blocks.1.mlp.gate.logits"))
    refused = [
        Job(dataclasses.replace(proj.desc, x_addr=proj.desc.x_addr + 8), fault=Fault.ALIGN),
        Job(gate.desc, y_rows=range(gate.desc.tokens), fault=Fault.ALIGN),
        Job(proj.desc, forged=proj.desc.to_int_with(tokens=hw.max_tokens + 1),
            fault=Fault.SHAPE),
    ]
    fewest = min(experts, key=lambda expert: expert[1][0].desc.tokens)
    _tiny_run([proj, gate], [fewest], extra=refused, shared=True, test_id="engine-linear-tiny")


@pytest.mark.slow
@pytest.mark.parametrize("pauses, shared", [("none", False), ("random", True)])
@pytest.mark.parametrize("packing", [1, 2])
def test_tiny_jobs_all(pauses, shared, packing):
    """Every LINEAR and TASK_LINEAR of the tiny program, then every expert's two jobs
    (both MoE layers), back to back (Verilator), with one and with two MACs per DSP48E2:
    without pauses and a port per channel, the cycles to compare with the kernel's cost
    model; with random pauses, the read channels on one port."""
    _, _, _, linears, experts = _tiny(packing)
    _tiny_run(linears, experts, test_id=f"engine-linear-tiny-all-{pauses}-packing{packing}",
              simulator="verilator", pauses=pauses, shared=shared, packing=packing)


def test_expected_job_is_the_interpreters_expert():
    """The bench's gather/scatter reference (:func:`expected_job`) on an expert's two jobs
    equals the interpreter's EXPERT: the random jobs are checked against the spec."""
    hw, program, final, _, experts = _tiny()
    for expert, jobs in experts[:3]:
        memory = final.copy()
        region = program.layout.at(expert.slots_addr)
        memory[region.offset:region.end] = 0
        want = memory.copy()
        run_instructions(want, hw, [expert])
        for job in jobs:
            job.expect(memory)
        compare_images(memory, want)


def test_bus_word_rule():
    """The bus-word rule in Python (:func:`check_job`) and at construction."""
    hw = DEFAULT_HW["tiny"]
    desc = LinearDescriptor(hw, tokens=5, in_features=32, out_features=8, x_addr=16, y_addr=32)
    check_job(desc)                     # 8 outputs, dense: one contiguous write
    with pytest.raises(DescriptorError, match=r"^Linear job out_features \(a row of y\) 8 is "
                                              r"not a multiple of the 16 bytes of the 128-bit "
                                              r"bus$"):
        check_job(desc, y_scatter=True)
    with pytest.raises(DescriptorError, match=r"^Linear job x_addr 8 is not a multiple"):
        check_job(dataclasses.replace(desc, x_addr=8), x_gather=True)
    with pytest.raises(DescriptorError, match=r"^Linear job in_features \(a row of x\) 40 "):
        check_job(dataclasses.replace(desc, in_features=40))
    with pytest.raises(DescriptorError, match=r"^Linear job res_addr 4 "):
        check_job(dataclasses.replace(desc, residual=1, res_mult_y=1, res_mult_skip=1,
                                      res_shift=1, out_features=16, res_addr=4))
    with pytest.raises(ConfigError, match=r"^Linear engine needs the 16 array columns to be a "
                                          r"multiple of the 32 bytes of the 256-bit bus"):
        LinearEngine(hw.replace(bus_width=256))
    with pytest.raises(TypeError, match=r"^Hardware config must be a HwConfig, not 'tiny'$"):
        LinearEngine("tiny")


# Random design points and jobs --------------------------------------------------------------
def random_engine_hw(rng, *, large=False) -> HwConfig:
    """A design point the engine takes: a bus of 4..64 bytes, ``cols`` a multiple of it,
    post lanes dividing ``cols``, ``rows`` so that the array stays small, random buffer
    depths and outstanding bursts, one or two MACs per DSP48E2, a weight bank's first tile
    streamed behind its load or not, x read a row or a bus word at a time, chains of 1 to 4
    multipliers a position, a chain's x beats a step's features or one (``wide_x``), and its
    w beats (``wide_w``: the weights packed before the read-ahead FIFO)."""
    nbytes = int(rng.choice([4, 8, 16, 32, 64] if large else [4, 8, 16]))
    cols = nbytes * int(rng.integers(1, 4 if nbytes <= 8 else 3))
    post_lanes = int(rng.choice([p for p in (1, 2, 4, 8) if cols % p == 0]))
    rows = int(rng.integers(1, max(2, (128 if large else 32) // cols) + 1))
    chain = int(rng.integers(1, 5))
    return HwConfig(name="random", rows=rows, cols=cols, post_lanes=post_lanes,
                    max_tokens=rows * int(rng.integers(1, 7)),
                    max_in=nbytes * int(rng.integers(1, max(2, 96 // nbytes) + 1)),
                    out_depth=int(rng.integers(3, 9)), bus_width=8 * nbytes,
                    max_outstanding=int(rng.integers(1, 5)),
                    dsp_packing=int(rng.integers(1, 3)),
                    weight_streaming=int(rng.integers(2)), x_by_words=int(rng.integers(2)),
                    chain_depth=chain,
                    wide_x=int(rng.integers(2)) if nbytes % chain == 0 else 0,
                    wide_w=int(rng.integers(2)) if nbytes % chain == 0 else 0)


class _Image:
    """A memory image under construction: random bytes, regions placed on bus words."""

    def __init__(self, rng, nbytes):
        self.rng, self.nbytes, self.parts, self.size = rng, nbytes, [], 0

    def place(self, data=None, size=None) -> int:
        """The address of a new region holding ``data`` (bytes), or ``size`` random bytes."""
        addr = -(-self.size // self.nbytes) * self.nbytes
        # An odd gap now and then: regions need not touch.
        addr += self.nbytes * int(self.rng.integers(0, 2))
        data = self.rng.integers(0, 256, size, dtype=np.uint8) if data is None \
            else np.frombuffer(bytes(data), np.uint8)
        self.parts.append((addr, data))
        self.size = addr + len(data)
        return addr

    def memory(self):
        out = self.rng.integers(0, 256, self.size + self.nbytes, dtype=np.uint8)
        for addr, data in self.parts:
            out[addr:addr + len(data)] = data
        return out


def random_jobs(hw, rng, count):
    """``count`` random jobs and the memory they run on: ragged token and out tiles, GELU
    and residual on or off, dense, gathered, scattered or both; a job sometimes reads the
    previous one's output."""
    B, C = hw.bus_width // 8, hw.cols
    image = _Image(rng, B)
    jobs = []
    for _ in range(count):
        mode = rng.choice(["dense", "gather", "scatter", "gather+scatter"])
        gather, scatter = "gather" in mode, "scatter" in mode
        residual, gelu = bool(rng.random() < 0.4), bool(rng.random() < 0.4)
        tokens = int(rng.integers(1, hw.max_tokens + 1))
        in_features = B * int(rng.integers(1, hw.max_in // B + 1))
        prev = jobs[-1] if jobs else None
        chained = prev is not None and prev.y_rows is None and not gather \
            and prev.desc.out_features % B == 0 and prev.desc.out_features <= hw.max_in \
            and rng.random() < 0.5
        if chained:
            in_features, tokens = prev.desc.out_features, int(rng.integers(1, prev.desc.tokens + 1))
        if scatter or residual or rng.random() < 0.5:
            out_features = B * int(rng.integers(1, 3 * C // B + 1))   # rows on bus words
        else:
            out_features = int(rng.integers(1, C + 1))                 # one contiguous run
        op = random_op(hw, rng, tokens, in_features, out_features, gelu=gelu, residual=residual)
        src_rows = tokens + int(rng.integers(0, 4)) if gather else tokens
        x_rows = rng.integers(0, src_rows, tokens) if gather else None
        if chained:
            x_addr = prev.desc.y_addr
        else:
            x = rng.integers(-128, 128, (src_rows, in_features), dtype=np.int8)
            x[x_rows if gather else slice(None)] = op["x"]
            x_addr = image.place(x.tobytes())
        w_addr = image.place(pack_weight(op["weight"], C))
        chan_addr = image.place(pack_chan(op["bias"], op["multiplier"], op["shift"], C))
        res_addr = image.place(op["skip"].tobytes()) if residual else 0
        dst_rows = tokens + int(rng.integers(0, 4)) if scatter else tokens
        y_rows = rng.permutation(dst_rows)[:tokens] if scatter else None
        y_addr = image.place(size=dst_rows * out_features)
        desc = dataclasses.replace(op["desc"], x_addr=x_addr, w_addr=w_addr,
                                   chan_addr=chan_addr, res_addr=res_addr, y_addr=y_addr)
        check_job(desc, x_gather=gather, y_scatter=scatter)
        jobs.append(Job(desc, x_rows, y_rows))
    return image.memory(), jobs


def _random_run(seed, *, count, large, shared, simulator=None, **changes):
    rng = np.random.default_rng(seed)
    hw = random_engine_hw(rng, large=large).replace(**changes)
    print(f"design point: rows={hw.rows} cols={hw.cols} post_lanes={hw.post_lanes} "
          f"max_tokens={hw.max_tokens} max_in={hw.max_in} out_depth={hw.out_depth} "
          f"bus_width={hw.bus_width} max_outstanding={hw.max_outstanding} "
          f"dsp_packing={hw.dsp_packing} weight_streaming={hw.weight_streaming} "
          f"x_by_words={hw.x_by_words} chain_depth={hw.chain_depth} wide_x={hw.wide_x} "
          f"wide_w={hw.wide_w}")
    memory, jobs = random_jobs(hw, rng, count)
    pauses = str(rng.choice(["none", "fixed", "random"])) if large else "random"
    # The on-chip window the engine is told of (x_by_words reads an x inside it a word of
    # each row at a time): none, all of memory, or a random part, some jobs' x inside it.
    cut = sorted(int(v) for v in rng.integers(0, len(memory) + 1, 2))
    window = [(0, 0), (0, 2 ** 32 - 1), tuple(cut)][int(rng.integers(3))]
    inside = [int(window[0] <= j.desc.x_addr < window[1]) for j in jobs]
    print(f"window {window}: the jobs' x inside it {inside}")
    run_jobs(hw, memory, jobs, test_id=f"engine-linear-random-{seed}", seed=seed,
             simulator=simulator, pauses=pauses, shared=shared, window=window)


@pytest.mark.parametrize("x_by_words, chain, wide", [(0, 1, 0), (1, 3, 0), (1, 4, 1)])
def test_random_jobs_fast(x_by_words, chain, wide):
    """One small random design point with two MACs per DSP48E2 (the tiny jobs have one),
    three random jobs back to back, the read channels on one port (Icarus), x a row or a
    bus word at a time, with chains of 3 multipliers a position or none, or chains of 4
    whose x and w beats bring a step's 4 features."""
    _random_run(replay_seed(), count=3, large=False, shared=True, dsp_packing=2,
                x_by_words=x_by_words, chain_depth=chain, wide_x=wide, wide_w=wide)


@pytest.mark.slow
@pytest.mark.parametrize("case", range(4))
def test_random_jobs(case):
    """Random design points (a Verilator build each), twelve random jobs each, back to
    back under no, fixed or random pauses, the read channels on one port or on four."""
    _random_run(replay_seed(), count=12, large=True, shared=bool(case % 2), simulator="verilator")


# Buffers across 4 GiB: the engine's address arithmetic is 64 bits wide ------------------------
#: The 4 GiB boundary's design point: a weight fetch of several chunks (its chunk is 128
#: bytes), a residual and constants of several requests each.
WRAP_HW = HwConfig(name="wrap", rows=2, cols=4, max_tokens=4, max_in=8, post_lanes=1,
                   out_depth=3, bus_width=32, max_outstanding=2)


def _linear_engine_at(hw, image, base, payload, *, max_cycles=20_000):
    """Run one job (``payload``) on the engine in Amaranth's simulator, its channels
    answered at the stream level from ``image`` (changed in place) placed at program address
    ``base``: a request outside ``[base, base + len(image))`` fails the test. Returns the
    engine's ``error`` at ``done`` and every request as ``(channel, addr, length)``."""
    from amaranth.sim import Simulator

    from moevit.sim.amaranth_tb import stream_source

    engine = LinearEngine(hw)
    nbytes = hw.bus_width // 8
    requests = []

    outside = []

    def span(channel, addr, length):
        """The request's offset into ``image``; None (noted) outside it."""
        requests.append((channel, addr, length))
        if base <= addr and addr + length <= base + len(image):
            return addr - base
        outside.append(f"{channel}: a request of {length} bytes at {addr:#x}, outside the "
                       f"buffers at [{base:#x}, {base + len(image):#x})")
        return None

    async def handshake(ctx, stream, *values):
        """The values of the beat taken on ``stream`` (``ready`` held high until one is)."""
        ctx.set(stream.ready, 1)
        while True:
            _, _, valid, *sampled = await ctx.tick().sample(stream.valid, *values)
            if valid:
                ctx.set(stream.ready, 0)
                return sampled

    def reader(k):
        port = engine.rd[k]

        async def bench(ctx):
            while True:
                addr, length = await handshake(ctx, port.req, port.req.payload.addr,
                                               port.req.payload.length)
                at = span(f"rd{k}", addr, length)
                if at is None:
                    return
                for left in range(length, 0, -nbytes):
                    word = bytes(image[at:at + min(left, nbytes)])
                    ctx.set(port.data.payload.data, int.from_bytes(word, "little"))
                    ctx.set(port.data.payload.bytes, len(word))
                    ctx.set(port.data.payload.last, left <= nbytes)
                    ctx.set(port.data.valid, 1)
                    while not (await ctx.tick().sample(port.data.ready))[2]:
                        pass
                    at += nbytes
                ctx.set(port.data.valid, 0)
        return bench

    async def writer(ctx):
        wr = engine.wr
        while True:
            addr, length = await handshake(ctx, wr.req, wr.req.payload.addr,
                                           wr.req.payload.length)
            at = span("wr", addr, length)
            if at is None:
                return
            for left in range(length, 0, -nbytes):
                word, = await handshake(ctx, wr.data, wr.data.payload)
                image[at:at + min(left, nbytes)] = list(
                    int(word).to_bytes(nbytes, "little")[:min(left, nbytes)])
                at += nbytes

    ended = []

    async def control(ctx):
        await stream_source(engine.desc, [payload])(ctx)
        for _ in range(max_cycles):
            _, _, done, error = await ctx.tick().sample(engine.done, engine.error)
            if done or outside:
                ended.append(int(error) if done else None)
                return
        ended.append(None)

    sim = Simulator(engine)
    sim.add_clock(1e-6)
    for bench in [reader(k) for k in range(LinearEngine.READS)] + [writer]:
        sim.add_testbench(bench, background=True)
    sim.add_testbench(control)
    sim.run()
    assert not outside, outside[0]
    assert ended[0] is not None, f"the job did not end within {max_cycles} cycles"
    return ended[0], requests


@pytest.mark.parametrize("across", ["x", "w", "chan", "res", "y"])
def test_buffer_across_4_gib(across):
    """A job whose one buffer (``across``) starts below 2**32 and ends above it: every
    request at its true address (a 32-bit sum would wrap to address 0, the weights), y
    bit-exact with the interpreter (run on the same bytes placed at low addresses)."""
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    hw = WRAP_HW
    op = random_op(hw, rng, 3, 8, 20, residual=True)
    image = _Image(rng, hw.bus_width // 8)
    tensors = {"x": op["x"].tobytes(), "w": pack_weight(op["weight"], hw.cols),
               "chan": pack_chan(op["bias"], op["multiplier"], op["shift"], hw.cols),
               "res": op["skip"].tobytes(), "y": bytes(3 * 20)}
    # The buffer across the boundary placed last, so that every other one lies below it.
    addr = {name: image.place(tensors[name]) for name in sorted(tensors, key=lambda n: n == across)}
    low = dataclasses.replace(op["desc"], **{f"{name}_addr": a for name, a in addr.items()})
    memory = image.memory()
    want = memory.copy()
    expected_job(want, low)

    # The program address 2**32 falls on a bus word past the middle of the buffer (past the
    # first chunk of a fetch).
    middle = len(tensors[across]) // 2 // 4 * 4
    base = (1 << 32) - addr[across] - middle
    high = dataclasses.replace(low, **{f"{name}_addr": base + a for name, a in addr.items()})
    error, requests = _linear_engine_at(hw, memory, base, pack_job(high))
    assert error == Fault.NONE
    crossing = [r for r in requests if r[1] + r[2] > 1 << 32 and r[1] < base + addr[across]
                + len(tensors[across])]
    assert crossing, "no request past 2**32: the case does not test the boundary"
    compare_images(memory, want)
