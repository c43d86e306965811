"""Cycles of a compiled program, instruction by instruction.

The top runs one instruction at a time: the next starts when the previous
one's writes are answered. An instruction therefore costs

    max(compute + wait, memory + drain) + ISSUE_CYCLES

* ``compute``: the unit's exact model from its descriptor
  (``expected_cycles()`` of the linear kernel, attention, LayerNorm) plus the
  engine's measured overhead around the kernel (a named constant below, with
  the figure it came from);
* ``memory``: the bytes the instruction reads (the interpreter's read log,
  so an EXPERT no token chose reads only its routing) and writes (its
  output, from the descriptor) over ``bandwidth`` bytes per cycle, reads and
  writes sharing it (a board's DDR does), or, on the bench's memory without a
  rate (the default), each at a bus word a cycle on its own channel (duplex:
  the busier counts). With several memory ports (``hw.memory_ports``) each
  mover's bytes go on its port (:data:`moevit.hw.top.memory_ports.PORT_OF`),
  each port moves ``bandwidth`` bytes a cycle and all of them together at most
  the memory's (:func:`memory_cycles`); with ``hw.weight_ports`` the weights'
  bytes are shared evenly by the ports they stripe over, and still move at most
  one bus word a cycle (one mover), however many ports feed it;
* ``ISSUE_CYCLES``: the sequencer's fetch and hand-over, fitted once (see
  below);
* ``wait`` and ``drain`` (:func:`memory_wait`, :func:`drain_cycles`): what of the
  two sides cannot overlap the other, which only shows on a slow memory. ``wait``:
  memory the unit needs before it can go on (ATTENTION's K and V of a round before
  its first context row, ROUTE's indices and weights written after its last
  token); ``drain``: the memory idle while the unit computes after its last byte
  read (LINEAR's last output tile on the weights that came last, or its last token
  tile when there is one tile, less the time the memory still moves the outputs of
  the tile before it, which queue behind the reads; EXPERT's two layers each, fc2
  reading fc1's output; LAYERNORM's last row through its pipeline); LINEAR's first
  out tile, and each EXPERT layer's, is paced by its activations' arrival, and a
  LINEAR's first step waits for its first token tile's rows whole (:func:`linear_fill`:
  hidden under the first weight bank's load unless the kernel streams its weights); where
  the read-ahead channels share x's port, x's rows come slowly while their FIFOs fill and at
  the port's pace after, and a later token tile can be the one waited for (:func:`x_wait`).
  Measured on the whole ``tiny`` program behind a memory of one byte a cycle per port
  (``tests/test_sim_top_ports.py``; per instruction from the timeline of the
  instructions the sequencer issued, ``run_top(timeline=True)``): -0.08 / -1.54 /
  +0.50 % on 1 / 2 / 4 ports (2026-12-06), every instruction of each kind within 2.6 %
  (``tests/test_hw_cost.py``). Without the terms, on the bench's memory before it
  stopped losing refills, the model erred -11.3 / -15.9 / -22.4 %; with the whole
  drain (no write queue under it), +5.2 % on the first LINEAR. The simulated
  memory's beats equal the model's bytes over 16 on every instruction but a working
  EXPERT (:func:`top_reads`); the sequencer's program reads are a few beats a run.

Where the figures come from (Verilator co-simulation of the whole ``tiny``
program, one image, no memory stalls, the program and image of ``moevit
bench top``; ``cycles`` and the per-unit ``busy`` registers), per task
(0 semseg, 1 depth): cycles 464,993 / 453,279; busy linear 246,785 /
235,063, attention 142,504 / 142,504, LayerNorm 58,551 / 58,551, moe
86,860 / 87,442. The constants were fitted on task 0 only; task 1 is the
check (``tests/test_hw_cost.py`` prints both errors). Since ROUTE is pipelined across
tokens and the expert jobs' cost is fitted on the timeline (2026-12-02): 455,094 / 443,896
cycles simulated, the model -0.08 / -0.11 %; 455,129 / 443,903 since the weights' 4 KiB
page split (2026-12-06), the model +0.43 / +0.32 % once a linear layer's activations
arrive behind the read-ahead channels (:func:`x_arrival`, below): its linear layers -0.7
to +0.4 % each where they were -3.2 to -0.4 %; +0.31 / +0.20 % since the bench's memory
is duplex here (COMBINE, memory-bound: +36.5 % with its writes charged to its reads'
channel, +4.7 % now), the rest over: LayerNorm +0.6 %, the experts +0.8 / +0.0 %, the
per-kind spread of ``ISSUE_CYCLES``. ROUTE's model is exact on
the engine alone (:func:`moevit.hw.top.moe.route_cycles`, since 2026-12-02: the
walk and the softmax tokens apart); COMBINE's (``combine_width`` lanes of a slot row a
cycle) on zcu102-edge-moe's first two blocks, where it is compute-bound.
Every figure is of ``tiny`` at one bus word a cycle; larger models and
narrower memories are extrapolations until ``bench top`` measures them.

With ``hw.expert_prefetch`` (the expert schedule overlapped, :mod:`moevit.hw.top.moe`)
two terms change: an EXPERT whose expert nobody chose, after another EXPERT scanned
the same routing with nothing else in between, ends at once without reading the
routing (``NOTED_EXPERT_CYCLES``, no bytes); and the sequencer assembles each
instruction while the one before it runs (``ISSUE_CYCLES_AHEAD`` instead of
``ISSUE_CYCLES``). The weights read ahead fill the memory's idle cycles: fc2's while fc1
drains (:func:`expert_drains`), and a working EXPERT's fc1 during the fc2 of the EXPERT
before it when that one works on the same routing (:func:`expert_carry`: as much as the
``w`` FIFO holds and that one's memory idles), which also hides its first answer's latency
(:func:`expert_latencies`).

With a memory ``latency`` (cycles from a burst's address to its first answer; a board's
``latency_ns``, :func:`board_latency`) two terms join: ``floor``, the cycles the
instruction's bursts take at least, each mover holding ``hw.max_outstanding`` of them in
flight, each for the latency and its beats (:func:`request_bursts`, :func:`bursts_floor`;
an EXPERT's two jobs each, one after the other), and ``exposed``, the latencies it waits
out whole (:data:`EXPOSED_LATENCIES`: its first answer; an EXPERT's hand-overs between
its jobs; none for an instruction that reads nothing from DRAM: the on-chip window
answers at once). ATTENTION's K and V of each round come ``hw.max_outstanding`` ahead and the
rest that many a latency (:func:`memory_wait`). An instruction costs
``max(compute + wait, memory + drain, floor) + ISSUE_CYCLES + exposed``. Measured on the
whole ``tiny`` program behind the bench's memory with a latency (``run_top(latency=)``,
``tests/test_hw_cost.py``): within 1.4 % at 40, 50 and 100 cycles with 4, 16 or 64 bursts
in flight (without the floor, -15.4 % at 100 cycles and 4 in flight); per instruction
the short linear layers are under-predicted (the projection -4 to -10 %, the gate
TASK_LINEAR -10 to -28 % at 100 cycles: the linear engine's buffers show latency the
floor does not count; not yet located).

With ``hw.onchip_bytes`` (activations in the on-chip window, :mod:`moevit.hw.top.onchip`)
the bytes an instruction reads or writes inside the window do not use the memory's
bandwidth: ``memory`` is the largest of the DRAM bytes over ``bandwidth``, the window's
read beats (one a cycle: the RAM's one read port, shared by the channels) and its
written beats (one a cycle), and ``bytes_read``, ``bytes_written`` count DRAM bytes
only (``onchip`` the window's). Not yet measured against the co-simulated top.

With ``hw.issue_lanes = 2`` (the linear kernel's instructions beside the other engines',
:mod:`moevit.hw.top.sequencer`) an instruction of the side lane moves its bytes on the side
lane's movers (:func:`lane_demand`: its ``w`` on one port, not striped, its writes on a port
of their own), and :func:`lane_timeline` lays the instructions on the two lanes: each costs
its cycles alone, and two at once share the ports, the memory and the window's two ports,
by capacity (max-min fair) and by their bursts' collisions below it (:func:`_shares`).
Measured on ``tiny``'s two-lane batch of two (its first MoE layer, two ports) behind a memory
of 16 / 6 / 3 / 1.5 bytes a cycle a port: -0.2 / -2.1 / -6.1 / -12.0 % with every
instruction costing what it costs alone and the side lane's writes on the main lane's
port; +0.0 / -1.1 / -3.0 / -4.5 % now, and with a 32 KiB window +0.02 % at 16 and -2.6 % at 3
(-0.1 % and -4.9 % alone). One lane of the same hardware at 3 bytes a cycle: -2.4 %, its
linear layers under-predicted 3 to 6 % at that bandwidth (``tests/test_sim_top_lanes.py``).
"""

import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

from moevit.errors import ConfigError
from moevit.hw.program.interpreter import run_instructions
from moevit.hw.program.isa import LANE_OF, TASK_ENTRY_BYTES, TaskEntry
from moevit.hw.program.program import ProgramError

__all__ = ["InstructionCost", "ProgramCost", "program_cycles", "board_bandwidth",
           "board_memory_bandwidth", "board_latency", "check_latency", "request_bursts", "bursts_floor",
           "burst_phases", "latency_cycles", "EXPOSED_LATENCIES", "moved_bytes", "memory_cycles",
           "PORT_CHANNELS",
           "compute_cycles",
           "expert_cycles", "expert_scan_cycles", "written_bytes", "LINEAR_TAIL",
           "EXPERT_JOB_CYCLES", "EXPERT_ROW_CYCLES",
           "ATTENTION_TAIL_FIXED", "KV_BANKS_FIXED", "attention_kv_cycles", "attention_tail",
           "LAYERNORM_TAIL",
           "layernorm_cycles", "layernorm_param_wait",
           "PATCHIFY_TAIL", "patchify_blocks", "ISSUE_CYCLES", "ISSUE_CYCLES_AHEAD", "issue_cycles",
           "NOTED_EXPERT_CYCLES",
           "LAYERNORM_DRAIN", "linear_drain", "linear_tile_outputs", "linear_wait",
           "first_tile_bytes", "x_fill", "linear_fill", "XArrival", "x_arrival", "x_wait",
           "paced_wait", "token_tile_start", "linear_start",
           "visible_drains", "drain_cycles", "ahead_fill", "expert_drains", "expert_carry", "expert_idle", "EXPERT_STREAM_LOSS",
           "EXPERT_STREAM_LOSS_STRIPED", "expert_stream_loss",
           "expert_latencies",
           "memory_wait", "top_reads", "activation_streams", "lane_demand", "lane_capacity",
           "lane_timeline"]

#: The LINEAR engine ends exactly 12 cycles after the kernel's ``expected_cycles`` on
#: every tiny job without memory stalls (the linear engine's report, commit 2dfbf3e).
LINEAR_TAIL = 12
#: An expert's two jobs in the top, over their kernel models: a fixed cost (fc2 waits
#: for fc1's last rows to be written before it reads them back; each job's first reads and
#: last writes) and a cost per routed row (its gather and scatter). Fitted on the
#: timeline of the tiny top's task 0 (``run_top(timeline=True)``, Verilator, a bus word a
#: cycle, 2026-12-02): its five working EXPERTs, of 4, 61, 64, 64 and 64 rows, took 77,
#: 201, 244, 186 and 212 cycles over the two jobs' models and the issue cycles; least
#: squares: 69 + 2.1 a row. (A flat 12 a row, fitted on the linear unit's busy total
#: before the scan was a bus word a cycle, over-counted a 64-row expert by ~530 cycles.)
#: The engines alone, behind a memory without latency, take the scan, the two jobs'
#: models and 3 cycles, exactly, for 1 to 64 routed rows: both terms are the top's
#: memory latency and the hand-over between the jobs.
EXPERT_JOB_CYCLES = 69
EXPERT_ROW_CYCLES = 2
#: Per attention instruction, over the kernel's model: per round, one cycle a token, and
#: the head lanes' K and V dealt one score-lane beat a cycle (:class:`Deal
#: <moevit.hw.top.attention_engine.Deal>`: ``P * tokens * chunks`` cycles where the
#: kernel's model counts one lane's ``tokens * chunks``); and a few fixed. Fitted on tiny
#: (busy attention 142,504 vs the model's 141,440 over its four attentions of 65 tokens x
#: 4 heads, one lane: 266 each = 4 x 65 + 6); the lanes' term measured on the engine alone
#: (Icarus, no stalls, 512-bit bus, heads of 64, 7 to 24 tokens, 1 or 2 rounds): with 1,
#: 2 and 3 lanes of 2, 4 and 8 chunks it leaves 5 to 7 cycles, 1 or 2 over the fixed 6.
ATTENTION_TAIL_FIXED = 6
#: With two banks of K and V (``hw.kv_banks``) a round's K and V are dealt while the round
#: before computes: the per-round terms count for the first round only, and the
#: instruction takes this many cycles more. Measured on the engine alone (Icarus, no
#: stalls, 512-bit bus, heads of 64, 7 and 24 tokens, 2 and 3 rounds; 1 and 3 lanes of 2,
#: 4 and 8 chunks, 2 of 8 requantizers): exact.
KV_BANKS_FIXED = 2


def attention_kv_cycles(d) -> int:
    """Cycles of one round's K and V dealt to the ``hw.heads_parallel`` head lanes, one
    score-lane beat a cycle: the pace the memory has to keep."""
    return d.hw.heads_parallel * d.tokens * d.chunks


def attention_tail(d) -> int:
    """The attention engine's cycles over the kernel's model for descriptor ``d`` (with two
    banks of K and V, when a round computes longer than the next round's K and V take to
    deal, as on every point the search sees)."""
    per_round = d.tokens + attention_kv_cycles(d) - d.tokens * d.chunks
    if d.hw.kv_banks == 2:
        return per_round + ATTENTION_TAIL_FIXED + KV_BANKS_FIXED
    return d.rounds * per_round + ATTENTION_TAIL_FIXED


#: Per LayerNorm instruction over ``expected_cycles`` (busy LayerNorm 58,551 vs the
#: model's 58,212 over tiny's 9 instructions; the engine bench alone said about +9).
LAYERNORM_TAIL = 38


def layernorm_param_wait(d, hw) -> int:
    """Cycles the LayerNorm unit waits for its parameters beyond its own model: the
    engine reads them at ``bus bytes / 8`` channels a cycle (8 bytes each) while the
    unit takes ``norm_lanes`` a beat (exact in the engine bench without stalls:
    tests/test_sim_engines_normattn.py)."""
    from moevit.hw.top.layernorm_engine import PARAM_BYTES

    bus_cycles = -(-PARAM_BYTES * d.dim // (hw.bus_width // 8))
    return max(0, bus_cycles - d.dim // hw.norm_lanes)


def layernorm_cycles(d, hw) -> int:
    """The LAYERNORM engine: the unit's model (``hw.norm_lanes`` values a cycle), the
    wait for the parameters, and the top's tail."""
    return d.expected_cycles() + layernorm_param_wait(d, hw) + LAYERNORM_TAIL
#: PATCHIFY emits one run of ``min(patch, bus bytes)`` a cycle; the rest of tiny's
#: measured 1,659 cycles (1,536 of runs) is its loader's first block and the drain.
PATCHIFY_TAIL = 123
#: The sequencer's cost per instruction (fetch, issue, waiting for the last write's
#: answer), fitted on the whole of task 0: (464,993 - the rest of the model's 462,089) / 51
#: instructions = 56.9.
ISSUE_CYCLES = 57
#: The same with the sequencer's look-ahead (``hw.expert_prefetch``), fitted the same way
#: on task 0 of the co-simulated top with the prefetch (``bench top``, 462,671 cycles):
#: (462,671 - the rest of the model's 462,032) / 51 = 12.5; task 1 is the check (451,350
#: simulated). Lower than ``ISSUE_CYCLES`` by the assembly now hidden and by the routing
#: scans of unchosen experts, which that constant absorbed (135 cycles each then, a byte a
#: cycle; a bus word a cycle since 2026-12-02 and counted as compute:
#: :func:`expert_scan_cycles`). Both constants kept on the word-wide scan: the four tiny
#: runs are within 0.3 % (``moevit hw cost --check``).
ISSUE_CYCLES_AHEAD = 13
#: An EXPERT the routing's note shows unchosen (``hw.expert_prefetch``): it takes its
#: descriptor, looks the note up and ends (the EXPERT engine's ``NOTE`` state).
NOTED_EXPERT_CYCLES = 2
#: LAYERNORM's last row through the unit's pipeline (sums, inverse square root,
#: normalisation) after its last byte is read, less what the earlier rows' writes queued
#: behind the reads fill of it: the memory idles that long at the end of a memory-bound
#: LAYERNORM. Fitted: each LAYERNORM of tiny behind one byte a cycle (whole program, one
#: port; the bench's corrected memory, 2026-12-02) took 8,904 cycles for 8,832 bytes, 72
#: cycles of the memory idle, less the issue cycles. (297 on the memory that lost refills.)
LAYERNORM_DRAIN = 15


def _tile(d) -> int:
    """Compute cycles of one out tile of linear operation ``d``."""
    return -(-_linear(d) // d.out_tiles)


def linear_drain(d) -> int:
    """Compute cycles of linear operation ``d`` after its last read: the kernel loads an
    out tile's weights while it works on the one before (two banks), so the last tile's
    work follows the last weights; with one out tile the weights come first and the
    last token tile's steps follow the last activations, a beat a step (a chain's steps
    take ``chain_depth`` features each, but its x stream brings ``hw.x_features`` a beat:
    :attr:`~moevit.hw.program.descriptor.LinearDescriptor.x_beats`)."""
    return _tile(d) if d.out_tiles > 1 else d.x_beats


def linear_tile_outputs(d) -> dict:
    """The bytes of one tile of linear operation ``d``'s outputs by mover (its writes and
    its residual's reads): what the memory still moves while the last tile works."""
    if d.out_tiles > 1:
        size = d.tokens * -(-d.out_features // d.out_tiles)
    else:
        size = -(-d.tokens // d.token_tiles) * d.out_features
    return {"write": size, **({"res": size} if d.residual else {})}


def linear_wait(d, x_cycles, fill_cycles=0) -> int:
    """Cycles linear operation ``d`` waits for its activations beyond its own model, when
    they take ``x_cycles`` to arrive and its first token tile's rows (:func:`first_tile_bytes`)
    ``fill_cycles``: its first out tile works on the token rows as they come, every later
    tile on the whole of them (the co-simulated top on four ports: the x port alone sets
    the first tile's pace); and its first step waits for the first tile whole
    (:func:`linear_fill`)."""
    return max(linear_fill(d, fill_cycles), x_cycles - linear_overlap(d))


def linear_overlap(d) -> int:
    """Compute cycles of linear operation ``d``'s first out tile that can run while its
    activations arrive: the work on every token tile but the last, which starts only once
    x's last row is in (one token tile: none)."""
    tile = _tile(d)
    return tile - -(-tile // d.token_tiles)


def token_tile_start(d, k) -> int:
    """Cycles of linear operation ``d``'s model from its first step to the step its token
    tile ``k`` of the first out tile needs its rows by (the kernel's timing,
    :meth:`~moevit.hw.program.descriptor.LinearDescriptor.expected_cycles`): a tile a
    ``max(x_beats, issue_to_copy + 1 + drain)`` cycles (the x stream brings a beat a
    cycle, ``hw.x_features`` features of each row), its rows late by as much delay its
    last step as much."""
    return k * max(d.x_beats, d.issue_to_copy + 1 + d.drain_cycles())


def first_tile_bytes(d) -> int:
    """Bytes of linear operation ``d``'s first token tile: its first ``rows`` token rows."""
    return min(d.hw.rows, d.tokens) * d.in_features


def x_fill(d, hw, arrival, onchip) -> int:
    """Cycles linear operation ``d``'s first token tile takes on ``hw`` to be ready for
    its first step, where ``arrival(n)`` is the cycles ``n`` bytes of x take to arrive: the
    tile's rows whole (:func:`first_tile_bytes`), or with ``hw.x_by_words`` and x in the
    on-chip window (``onchip``) one bus word of each row (word-major requests), and more
    where a later word of every row comes slower than the kernel takes the word before (a
    beat a cycle, ``hw.x_features`` features of each row)."""
    if not (hw.x_by_words and onchip):
        return arrival(first_tile_bytes(d))
    nbytes = hw.bus_width // 8
    group = arrival(min(hw.rows, d.tokens) * nbytes)
    return group + (d.in_features // nbytes - 1) * max(0, group - nbytes // hw.x_features)


def linear_fill(d, fill_cycles) -> int:
    """Cycles linear operation ``d``'s first step waits beyond its own model for its first
    token tile, whose rows take ``fill_cycles`` to arrive: the x tiler hands the kernel a
    beat (one feature of every row of a tile) only once the tile's rows are all in. Without
    ``weight_streaming`` the kernel waits for its first weight bank anyway
    (``max(in_features, cols) + 1`` cycles), which hides as much of it. Seen on
    zcu102-edge-moe (32 rows, ``x`` from the on-chip window a 64-byte word a cycle): the
    linear kernel's ``x`` stall counter over a layer of 768 inputs 452 cycles, of 192 inputs
    133, the model short by 380 and ~100 before this term."""
    return max(0, fill_cycles - linear_start(d))


def linear_start(d) -> int:
    """Cycles of linear operation ``d``'s model before its first step: its first weight bank
    (``max(w_beats, cols) + 1``), with ``weight_streaming`` its first step's beats
    (``chain_depth / w_features``)."""
    hw = d.hw
    return (hw.chain_depth // hw.w_features if hw.weight_streaming
            else max(d.w_beats, hw.cols) + 1)


def visible_drains(jobs, hw, bandwidth, memory_bandwidth=None, dram=None,
                   duplex=False) -> int:
    """The memory's idle cycles at the end of linear ``jobs`` run one after the other:
    each one's :func:`linear_drain` less the time the memory still moves the tile of
    outputs before its last (:func:`linear_tile_outputs`; the writes queue behind the
    reads, so they fill the drain), of the movers with DRAM bytes in ``dram`` (default:
    all; outputs in the on-chip window fill nothing). On a ``duplex`` memory the writes
    have channels of their own and fill none of the reads' idle."""
    def filling(outputs):
        return {k: n for k, n in outputs.items()
                if (dram is None or dram.get(k)) and not (duplex and k == "write")}

    return sum(max(0, linear_drain(job) - memory_cycles(
        hw, filling(linear_tile_outputs(job)), bandwidth, memory_bandwidth)) for job in jobs)


@dataclass(frozen=True)
class XArrival:
    """When a linear job's activations (x, from DRAM) are in, behind the read-ahead channels
    that share x's port (:func:`x_arrival`): the arbiter grants a burst of each requesting
    channel in turn, so with each x row (one request of ``row`` bytes) a sharer moves one
    request of its own until its FIFO holds what it takes; x comes slowly while they fill
    and at the port's pace after.

    ``sharers``: per channel ``(chunk, held, total_chunk, total_held)``, the bytes of a
    request and the bytes it takes before x's last row on x's port, and the same over all
    ports (for ``memory_bandwidth``)."""

    row: int
    sharers: tuple
    bandwidth: float
    memory_bandwidth: float | None = None

    def cycles(self, nbytes) -> int:
        """Cycles the first ``nbytes`` of x take to arrive."""
        # A sharer's turn after x's last row does not hold it.
        turns = max(0, -(-nbytes // self.row) - 1)
        cycles = (nbytes + sum(min(turns * c, h) for c, h, _, _ in self.sharers)) / self.bandwidth
        if self.memory_bandwidth is not None:
            total = nbytes + sum(min(turns * c, h) for _, _, c, h in self.sharers)
            cycles = max(cycles, total / self.memory_bandwidth)
        return math.ceil(cycles)

    def kinks(self) -> tuple:
        """The x rows after which a sharer's FIFO is full on x's port: x comes faster."""
        return tuple(sorted({-(-h // c) for c, h, _, _ in self.sharers if c and h}))


def x_arrival(job, hw, moved, bandwidth, memory_bandwidth=None, lane="main") -> XArrival:
    """How linear ``job``'s activations (``moved["x"]``, its DRAM bytes) arrive when the
    engine's read-ahead channels share their port (:class:`XArrival`): until x's last row
    ``w``, ``chan`` and the skip tensor (``res``) on x's port take what their FIFOs hold
    (:meth:`LinearEngine.w_depth <moevit.hw.top.linear_engine.LinearEngine.w_depth>`,
    ``CHAN_DEPTH``, ``RES_DEPTH`` bus beats) and two out tiles' worth (the kernel's two
    weight banks), a request of theirs (:meth:`LinearEngine.w_chunk
    <moevit.hw.top.linear_engine.LinearEngine.w_chunk>`, a quarter of ``CHAN_DEPTH``, an
    out tile's ``cols`` of a token) with each x row. Seen on tiny with 32 rows, streamed
    weights and the 512-beat FIFO on one 128-bit port (x from DRAM): the linear kernel's
    ``x`` stall counter ~800 cycles on a layer of 260 x beats, the model 16 % short on the
    linear layers with x's bytes alone; on tiny's 4 rows the first 20 rows of a 64-input
    layer come at a ninth of the port (a 512-byte ``w`` request a 64-byte row), and with
    x's bytes and the FIFOs' spread evenly under the first out tile (before 2026-12-06) the
    model was ~400 cycles short on each qkv and fc1 layer of tiny's prefetch top (-0.78 /
    -0.67 % on the run; +0.02 / +0.09 % with the rows' pace, :func:`x_wait`). On ports of
    their own the channels cost x nothing beyond the memory's total."""
    from moevit.hw.top.linear_engine import LinearEngine
    from moevit.hw.top.movers import PAGE_BYTES

    word = hw.bus_width // 8
    held = {"w": LinearEngine.w_depth(hw) * word, "chan": LinearEngine.CHAN_DEPTH * word,
            "res": LinearEngine.RES_DEPTH * word}
    chunks = {"w": min(LinearEngine.w_chunk(hw), PAGE_BYTES),
              "chan": LinearEngine.CHAN_DEPTH // 4 * word, "res": hw.cols}
    routes = lane_routes(hw.memory_ports, hw.weight_ports, hw.issue_lanes, lane,
                         hw.chan_striped)
    port = routes["x"][0][0]
    sharers = []
    for k, room in held.items() if moved.get("x") else ():     # x from the window: none
        taken = min(moved.get(k, 0), room + 2 * moved.get(k, 0) // job.out_tiles)
        if not taken:
            continue
        fraction = sum(f for at, f in routes[k] if at == port)
        # A sharer off x's port moves on its own: all it takes counts in the memory's total.
        sharers.append((chunks[k], taken * fraction, chunks[k] / fraction, taken) if fraction
                       else (0, 0, taken, taken))
    return XArrival(job.in_features, tuple(sharers), bandwidth, memory_bandwidth)


def paced_wait(d, hw, arrival: XArrival, x, overlap) -> int:
    """Cycles linear operation ``d`` on ``hw`` waits for its activations (``x`` DRAM bytes,
    none when they lie in the on-chip window) arriving as ``arrival`` says:
    :func:`linear_wait` (the first token tile whole, :func:`x_fill`, from DRAM as x
    arrives, else a bus word a cycle from the window; all of x less ``overlap``,
    :func:`linear_overlap`) or a later token tile where x speeds up (:func:`x_wait`).
    ``hw`` and ``overlap`` are given: the search keeps descriptors and overlaps per shape,
    whatever the rest of the HwConfig."""
    word = hw.bus_width // 8
    fill = x_fill(d, hw, arrival.cycles if x else (lambda n: -(-n // word)), not x)
    return max(linear_fill(d, fill), arrival.cycles(x) - overlap, x_wait(d, arrival))


def x_wait(d, arrival: XArrival) -> int:
    """Cycles linear operation ``d``'s first out tile waits for a later token tile, where
    x's rows come at ``arrival``'s changing pace: the tiles on either side of each row
    where x speeds up (the wait, arrival less the kernel's steady pace, peaks there, at the
    first tile, :func:`linear_fill`, or at the last, :func:`linear_wait`); the kernel
    reaches tile ``k`` after its first weight bank (:func:`linear_start`) and the tiles
    before (:func:`token_tile_start`)."""
    rows, tiles = d.hw.rows, d.token_tiles
    candidates = {min(max(k, 1), tiles - 1) for r in arrival.kinks()
                  for k in (r // rows - 1, -(-r // rows) - 1)}
    return max((arrival.cycles(min((k + 1) * rows, d.tokens) * d.in_features)
                - linear_start(d) - token_tile_start(d, k)
                for k in candidates if tiles > 1), default=0)


def ahead_fill(hw, bandwidth, memory_bandwidth=None) -> int:
    """Cycles of a drain the next job's weights fill with ``hw.expert_prefetch``: the
    linear engine's ``w`` FIFO (:meth:`LinearEngine.w_depth
    <moevit.hw.top.linear_engine.LinearEngine.w_depth>` bus beats) filled at the
    memory's pace (0 without the prefetch)."""
    from moevit.hw.top.linear_engine import LinearEngine

    if not hw.expert_prefetch:
        return 0
    fifo = LinearEngine.w_depth(hw) * hw.bus_width // 8
    return memory_cycles(hw, {"w": fifo}, bandwidth, memory_bandwidth)


def expert_drains(drains, hw, bandwidth, memory_bandwidth=None) -> int:
    """An EXPERT's visible drain from its two jobs' (``drains``, :func:`visible_drains` of
    each): with ``hw.expert_prefetch`` the memory moves fc2's weights into the ``w`` FIFO
    while fc1 drains, at most :func:`ahead_fill` of it."""
    fill = ahead_fill(hw, bandwidth, memory_bandwidth)
    fc1, fc2 = drains
    return fc1 - min(fc1, fill) + fc2


def expert_carry(fc1, hw, bandwidth, memory_bandwidth=None, *, idle) -> int:
    """Memory cycles of a working EXPERT moved during the EXPERT before it (with
    ``hw.expert_prefetch``, when that one works on the same routing and saw this one next
    and chosen: its fc2 reads this one's fc1 weights ahead): its fc1's (``fc1``, the job's
    :class:`~moevit.hw.program.descriptor.LinearDescriptor`) weights and constants, at most
    what the ``w`` FIFO holds (:func:`ahead_fill`) and the ``idle`` memory cycles at that
    one's end (:func:`expert_idle`)."""
    ranges = {"w": fc1.out_tiles * hw.cols * fc1.in_features,
              "chan": fc1.out_tiles * hw.cols * 8}
    return min(ahead_fill(hw, bandwidth, memory_bandwidth), idle,
               memory_cycles(hw, ranges, bandwidth, memory_bandwidth))


def expert_idle(fc2, cycles, memory) -> int:
    """The memory's idle cycles at the end of a working EXPERT whose second job is ``fc2``,
    which takes ``cycles`` (its issue and exposed latencies aside) and ``memory`` cycles of
    its own bytes: what it leaves to the next one's fc1 weights (:func:`expert_carry`),
    within its fc2."""
    return max(0, min(cycles - memory, _linear(fc2)))


def drain_cycles(d, hw, bandwidth, memory_bandwidth=None, dram=None, *, op=None,
                 routed=None, duplex=False) -> int:
    """Cycles the memory idles at the end of descriptor ``d`` while its unit computes after
    its last byte read, at ``bandwidth`` bytes a cycle per port (``dram``: its DRAM bytes
    per mover, as :func:`memory_wait` takes them; ``op``, ``routed``: as
    :func:`compute_cycles`; ``duplex``: as :func:`memory_cycles`); see the module's
    description."""
    m = d.MNEMONIC
    if m in ("LINEAR", "TASK_LINEAR"):
        return visible_drains([op or d], hw, bandwidth, memory_bandwidth, dram, duplex)
    if m == "EXPERT" and routed:
        # fc2 reads fc1's output: fc1 drains before fc2's reads start.
        return expert_drains([visible_drains([job], hw, bandwidth, memory_bandwidth, dram,
                                             duplex)
                              for job in d.linears(routed)], hw, bandwidth, memory_bandwidth)
    if m == "LAYERNORM":
        return LAYERNORM_DRAIN
    return 0


def memory_wait(d, hw, moved, bandwidth, memory_bandwidth=None, *, op=None,
                routed=None, latency=0) -> int:
    """Memory cycles descriptor ``d``'s unit waits for beyond its own model, at
    ``bandwidth`` bytes a cycle per port (``moved``: its DRAM bytes per mover, as
    :func:`memory_cycles` takes them).

    LINEAR, TASK_LINEAR (``op``), EXPERT's two layers (``routed`` tokens: fc1 on the
    gathered rows, fc2 on fc1's output read back): :func:`linear_wait` for the time their
    activations (channel ``x``) take. ATTENTION: a round of ``hw.heads_parallel`` heads
    needs its K (channel ``w``) and V (``chan``) before its first context row; the
    kernel's model and :func:`attention_tail` cover the lanes' pace
    (:func:`attention_kv_cycles`), the rest of the load is waited for (with two banks of K
    and V, ``hw.kv_banks``, for the first round; a later round's load waits only where it
    is longer than the round before computes). LAYERNORM: its
    parameters (channel ``x``) before its first row, beyond what
    :func:`layernorm_param_wait` counts at a bus word a cycle. ROUTE: its indices and
    weights are written after its last token. PATCHIFY: its blocks' loads, each behind the
    latency, where they are slower than the emission (:func:`patchify_blocks`)."""
    m = d.MNEMONIC
    lane = LANE_OF[m]

    def alone(mover, n):
        return memory_cycles(hw, {mover: n}, bandwidth, memory_bandwidth, lane)

    if m in ("LINEAR", "TASK_LINEAR"):
        job = op or d
        return paced_wait(job, hw, x_arrival(job, hw, moved, bandwidth, memory_bandwidth, lane),
                          moved.get("x", 0), linear_overlap(job))
    if m == "EXPERT" and routed:
        fc1, fc2 = d.linears(routed)
        x1 = moved.get("x", 0) * d.dim // (d.dim + d.hidden)
        return (linear_wait(fc1, alone("x", x1))
                + linear_wait(fc2, alone("x", moved.get("x", 0) - x1)))
    if m == "LAYERNORM":
        params = max(0, alone("x", moved.get("x", 0)) - d.dim // hw.norm_lanes)
        return max(0, params - layernorm_param_wait(d, hw))
    if m == "ATTENTION":
        per_round = {k: moved.get(k, 0) // d.rounds for k in ("w", "chan")}
        load = memory_cycles(hw, per_round, bandwidth, memory_bandwidth, lane)
        if latency and (moved.get("w") or moved.get("chan")):
            # K and V of the next round (from DRAM) wait for the kernel's buffers: their movers hold
            # ``max_outstanding`` requests (a token each) ahead, the rest come that many a
            # latency once the round starts.
            ahead = min(d.tokens, hw.max_outstanding)
            beats = -(-hw.heads_parallel * d.head_dim // (hw.bus_width // 8))
            load = max(load, (d.tokens - ahead) * (latency + beats) / hw.max_outstanding)
        wait = max(0, int(np.ceil(load)) - attention_kv_cycles(d))
        if hw.kv_banks == 1:
            return d.rounds * wait
        # Two banks: a later round's K and V load while the round before computes (with
        # pipelined heads: while its rows pass QK, a row lane's share each).
        from moevit.hw.units.attention import head_cycles, row_issue_cycles

        computes = -(-d.rows // hw.row_lanes) * row_issue_cycles(d.tokens, d.chunks,
                                                                 hw.score_packing) \
            if hw.pipelined_heads \
            else head_cycles(d.tokens, d.chunks, hw.row_lanes, hw.score_lanes // hw.context_width,
                             d.rows, hw.score_packing) - d.tokens * d.chunks - 1
        later = max(0, max(int(np.ceil(load)), attention_kv_cycles(d)) - computes)
        return wait + (d.rounds - 1) * later
    if m == "PATCHIFY" and moved.get("x"):
        # The loader fills one half of the band buffer while the emitter empties the other:
        # the first block loads before any run leaves (PATCHIFY_TAIL holds it at a bus word
        # a cycle; its latency is exposed), then each block waits for the slower of its own
        # load, behind the latency again, and the emission of the block before.
        blocks, _ = patchify_blocks(d)
        block = moved["x"] / blocks
        load = alone("x", int(np.ceil(block)))
        emit = block / min(d.patch, hw.bus_width // 8)
        first = max(0, load - block / (hw.bus_width // 8))
        return int(np.ceil(first + (blocks - 1) * max(0, load + latency - emit)))
    if m == "ROUTE":
        # Written after the last token; the engine's model counts a bus word a cycle.
        from moevit.hw.top.moe import route_write_words

        written = moved.get("write", 0)
        return max(0, memory_cycles(hw, {"write": written}, bandwidth, memory_bandwidth, lane)
                   - route_write_words(d.tokens * d.top_k, hw.bus_width))
    return 0


@dataclass
class InstructionCost:
    """One instruction: what runs, on which unit, and its cycles."""

    index: int
    mnemonic: str
    unit: str
    compute: int
    memory: int
    bytes_read: int
    bytes_written: int
    cycles: int          # max(compute + wait, memory + drain, floor) + ISSUE_CYCLES + exposed
    onchip: int = 0      # bytes read and written in the on-chip window
    floor: int = 0       # the cycles its bursts take under the memory's latency

    @property
    def bound(self) -> str:
        return "memory" if max(self.memory, self.floor) > self.compute else "compute"

    def row(self) -> dict:
        return dict(vars(self), bound=self.bound)


@dataclass
class ProgramCost:
    """Every instruction's cost and the whole program's, at ``bandwidth`` bytes a cycle."""

    instructions: list
    bandwidth: float
    clock_mhz: float
    starts: tuple = ()   # with two issue lanes: the cycle each instruction starts ...
    ends: tuple = ()     # ... and ends (lane_timeline: slower than alone where they share)

    @property
    def cycles(self) -> int:
        if self.ends:
            return max(self.ends)
        return sum(i.cycles for i in self.instructions)

    @property
    def latency_ms(self) -> float:
        return self.cycles / (self.clock_mhz * 1e3)

    def by_unit(self) -> dict:
        """Unit -> cycles, instructions, memory-bound instructions and their cycles, bytes."""
        units = {}
        for i in self.instructions:
            u = units.setdefault(i.unit, {"unit": i.unit, "instructions": 0, "cycles": 0,
                                          "memory_bound": 0, "memory_cycles": 0,
                                          "bytes": 0})
            u["instructions"] += 1
            u["cycles"] += i.cycles
            u["memory_bound"] += i.bound == "memory"
            u["memory_cycles"] += i.cycles if i.bound == "memory" else 0
            u["bytes"] += i.bytes_read + i.bytes_written
        return units


def board_bandwidth(board, hw) -> float:
    """Bytes per cycle of ``hw``'s clock that ``board`` gives one memory port of ``hw``'s bus:
    the bus, capped by one of the board's ports at its clock (the design's, unless the board
    gives the ports their own) and by one channel of the board's fastest memory (a port
    reaches its memory through one: the ZCU102's one PS DDR4 controller, 17 GB/s; one of the
    U280's HBM2 pseudo-channels, 14.375 GB/s, however wide the kernel's bus)."""
    fastest = max(board.memories, key=lambda m: m.bandwidth_gbs)
    channel = fastest.bandwidth_gbs / fastest.channels * 1e3 / hw.clock_mhz
    port = board.port_bits / 8 * (board.port_clock_mhz or hw.clock_mhz) / hw.clock_mhz
    return min(channel, hw.bus_width / 8, port)


def board_memory_bandwidth(board, hw) -> float:
    """Bytes per cycle of ``hw``'s clock of ``board``'s fastest memory, all ports together
    (its peak: the ZCU102's PS DDR4 17 GB/s, the U280's HBM2 460 GB/s)."""
    return max(m.bandwidth_gbs for m in board.memories) * 1e3 / hw.clock_mhz


def board_latency(board, hw) -> int:
    """Cycles of ``hw``'s clock from a burst's address to its first answer on ``board``'s
    fastest memory (the board file's ``latency_ns``)."""
    fastest = max(board.memories, key=lambda m: m.bandwidth_gbs)
    return math.ceil(fastest.latency_ns * hw.clock_mhz / 1e3)


def moved_bytes(d, hw, *, op=None, routed=None, written=0) -> dict:
    """The bytes descriptor ``d`` moves, by the mover that moves them (a name of
    :data:`moevit.hw.top.memory_ports.MOVERS`): its reads as the interpreter counts them
    (:mod:`moevit.hw.program.interpreter`), on the read channel each engine uses, and
    ``written`` on ``write`` (``op``, ``routed``: as :func:`compute_cycles`)."""
    from moevit.hw.program.layout import chan_bytes
    from moevit.hw.program.isa import TASK_ENTRY_BYTES

    def linear(op, x_rows):
        weights = op.out_tiles * op.in_features * hw.cols
        return {"x": x_rows * op.in_features, "w": weights,
                "chan": chan_bytes(op.out_features, hw.cols),
                "res": op.tokens * op.out_features if op.residual else 0}

    m = d.MNEMONIC
    if m == "LINEAR":
        moved = linear(d, d.tokens)
    elif m == "TASK_LINEAR":
        moved = dict(linear(op, op.tokens), entry=TASK_ENTRY_BYTES)
    elif m == "ATTENTION":
        width = d.heads * d.head_dim
        moved = {"x": d.rows * width, "w": d.tokens * width, "chan": d.tokens * width}
    elif m == "LAYERNORM":
        moved = {"x": 8 * d.dim, "w": d.tokens * d.dim}       # parameters, rows
    elif m == "PATCHIFY":
        moved = {"x": d.channels * d.rows * d.columns}
    elif m == "COPY":
        moved = {"x": d.length}
    elif m == "ROUTE":
        moved = {"x": d.tokens * d.experts, "entry": TASK_ENTRY_BYTES}
    elif m == "EXPERT":
        moved = {"list": d.tokens * d.top_k}
        if routed:
            # The routed rows of x, and fc1's output read back by fc2 (:func:`top_reads`).
            fc1, fc2 = (linear(job, 0) for job in d.linears(routed))
            moved.update({k: fc1[k] + fc2[k] for k in ("w", "chan", "res")},
                         x=routed * (d.dim + d.hidden))
    elif m == "COMBINE":
        moved = {"x": 2 * d.tokens * d.top_k, "w": d.tokens * d.top_k * d.dim,
                 "chan": d.tokens * d.dim}                   # gate weights, slots, skip
    else:
        raise ConfigError(f"No cost model for instruction {m}")
    moved["write"] = written
    return {k: v for k, v in moved.items() if v}


def request_bursts(d, hw, *, op=None, routed=None) -> dict:
    """The AXI bursts descriptor ``d``'s engine issues, by mover (the names of
    :func:`moved_bytes`): ``{mover: (bursts, beats)}``. Each engine's requests as its module
    describes them (the linear engine: x a row a request, w and chan in requests of a
    quarter of their read-ahead FIFOs, the skip tensor and y a token and out tile a
    request, y one request when it is one dense run; ATTENTION q, k, v and its output a
    token and round a request; PATCHIFY an image row of a block a request; the others one
    request a tensor), each request cut into bursts at 4 KiB (``op``, ``routed``: as
    :func:`compute_cycles`)."""
    from moevit.hw.program.layout import chan_bytes
    from moevit.hw.top.linear_engine import LinearEngine
    from moevit.hw.top.movers import MAX_BURST, PAGE_BYTES

    word = hw.bus_width // 8
    page = min(PAGE_BYTES, MAX_BURST * word)
    bursts = {}

    def add(mover, size, count=1):
        if size and count:
            b, n = bursts.get(mover, (0, 0))
            bursts[mover] = (b + count * -(-size // page), n + count * -(-size // word))

    def linear(job, gathered=False):
        w_chunk = LinearEngine.w_chunk(hw)
        chan_chunk = LinearEngine.CHAN_DEPTH // 4 * word
        add("x", job.in_features, job.tokens)
        weights = job.out_tiles * job.in_features * hw.cols
        add("w", w_chunk, weights // w_chunk)
        add("w", weights % w_chunk)
        chan = chan_bytes(job.out_features, hw.cols)
        add("chan", chan_chunk, chan // chan_chunk)
        add("chan", chan % chan_chunk)
        if job.residual:
            add("res", hw.cols, job.tokens * job.out_tiles)
        if job.out_features <= hw.cols and not gathered:
            add("write", job.tokens * job.out_features)
        else:
            add("write", hw.cols, job.tokens * job.out_tiles)

    m = d.MNEMONIC
    if m == "LINEAR":
        linear(d)
    elif m == "TASK_LINEAR":
        add("entry", TASK_ENTRY_BYTES)
        linear(op)
    elif m == "ATTENTION":
        row = hw.heads_parallel * d.head_dim
        for mover, count in (("x", d.rows), ("w", d.tokens), ("chan", d.tokens),
                             ("write", d.rows)):
            add(mover, row, count * d.rounds)
    elif m == "LAYERNORM":
        add("x", 8 * d.dim)
        add("w", d.tokens * d.dim)
        add("write", d.tokens * d.dim)
    elif m == "PATCHIFY":
        blocks, block = patchify_blocks(d)
        add("x", block * d.patch, blocks * d.channels * d.patch)
        add("write", d.channels * d.rows * d.columns)
    elif m == "COPY":
        add("x", d.length)
        add("write", d.length)
    elif m == "ROUTE":
        add("entry", TASK_ENTRY_BYTES)
        add("x", d.tokens * d.experts)
        add("write", d.tokens * d.top_k)
        add("write", 2 * d.tokens * d.top_k)
    elif m == "EXPERT":
        add("list", d.tokens * d.top_k)
        if routed:
            fc1, fc2 = d.linears(routed)
            linear(fc1, gathered=True)
            linear(fc2, gathered=True)
    elif m == "COMBINE":
        add("x", 2 * d.tokens * d.top_k)
        add("w", d.tokens * d.top_k * d.dim)
        add("chan", d.tokens * d.dim)
        add("write", d.tokens * d.dim)
    else:
        raise ConfigError(f"No cost model for instruction {m}")
    return bursts


def bursts_floor(hw, bursts: dict, latency) -> int:
    """Cycles ``bursts`` (:func:`request_bursts`) take at least when the memory answers
    each burst ``latency`` cycles after its address: every mover holds at most
    ``hw.max_outstanding`` bursts in flight, each for the latency and its beats."""
    if not latency or not bursts:
        return 0
    return int(np.ceil(max((n * latency + beats) / hw.max_outstanding
                           for n, beats in bursts.values())))


#: The memory latencies an instruction waits out whole, by kind: its first answer (every
#: kind), and an EXPERT's four more (fc1's first rows after the routing, fc1's last writes
#: answered before fc2 reads them back, fc2's first rows, its last writes), ROUTE's and
#: COMBINE's one more (ROUTE writes after its last token; COMBINE's three reads start
#: together, its write follows them). Measured on the whole tiny program (task 0, 64
#: bursts in flight, so that only the latency shows; 2026-12-03): at 100 cycles a
#: working EXPERT took 648-693 cycles more than at 0, ROUTE 173, COMBINE 182-213, COPY,
#: LAYERNORM and an unchosen EXPERT 99. An EXPERT waits out only those of its phases
#: whose bytes are in DRAM (:func:`expert_latencies`).
EXPOSED_LATENCIES = {"EXPERT": 5, "ROUTE": 2, "COMBINE": 2}


#: The memory cycles a working EXPERT's weight stream loses beyond its bytes over the ports
#: when memory-bound, fitted (least squares, a constant): zcu102-edge-moe's whole image at
#: the ZCU102's memory (weights striped over four ports of 16 bytes a cycle, 85.3 in all, a
#: 50-cycle latency) with balanced routing (``bench top --routing balanced``: every expert
#: of every MoE layer chosen by 5 to 30 of 129 tokens x 2 on semseg, the search's assumption),
#: Verilator, bit-exact, task 0, 903,011 cycles (2026-12-04): its 90 working EXPERTs after
#: the first of their layer took 2,732 to 3,048 cycles, about 2,844 + 5.3 a routed row (a
#: spread of 57 about that line), 420 on average more than the model without this term.
#: The check, task 1 of the same run (887,285 cycles, bit-exact): the model -0.04 %, its
#: EXPERTs -0.33 % together, -4.0 to +5.9 % each.
#: (Fitted before on the first two blocks' 15 such EXPERTs, another balancing: 280; the
#: whole image's EXPERTs were then 4.8 % under.) Where it goes is not located: the kernel
#: and the memory run at the same pace there (a weight beat a cycle each, the ``w`` FIFO
#: full ahead), so any stall of one is the other's; the kernel's own counters show no
#: ``w`` stall and an ``x`` stall of 11 a routed row + 10 (fc1's and fc2's first token
#: tiles, :func:`linear_fill`, and the gather), which this constant holds on average. Not
#: the read-ahead's depth: with the ``w`` FIFO at 1,024 beats the EXPERTs took what they
#: take at 512; at 128 the gap grows by about 370.
EXPERT_STREAM_LOSS = 420
#: The same with the constants striped over the weights' ports (``hw.chan_striped``), fitted
#: the same way on zcu102-edge-moe as saved since (its whole image, balanced routing, the
#: ZCU102's memory, Verilator, bit-exact, 2026-12-06): task 0's 84 working EXPERTs after the
#: first of their layer and before the last, 2,805 cycles on average, the model then -0.5 a
#: one (the run 728,791 cycles, the model -0.16 %); the check, task 1 (710,624 cycles): +0.4
#: an EXPERT, the run -0.20 %. The ports' bytes say the stripe saves 216 cycles an expert
#: (the 4,608 bytes of constants that rode one port spread over four); the simulation gave
#: 128 (the first two blocks: 2,929 -> 2,801 on average): an expert's nine bursts of
#: constants (six of fc1, three of fc2) land three on the busiest port, not 2.25 (24
#: cycles), and the rest is not located.
EXPERT_STREAM_LOSS_STRIPED = 510


def expert_stream_loss(hw) -> int:
    """:data:`EXPERT_STREAM_LOSS`, or :data:`EXPERT_STREAM_LOSS_STRIPED` on ``hw`` with its
    constants striped."""
    return EXPERT_STREAM_LOSS_STRIPED if hw.chan_striped else EXPERT_STREAM_LOSS


def expert_latencies(onchip, *, read_ahead=False) -> int:
    """The latencies a working EXPERT waits out whole (:data:`EXPOSED_LATENCIES`'s five when
    its tensors are in DRAM), by the address fields of its tensors in the on-chip window,
    ``onchip``, which answers at once: its first answer (the routing's, ``topk_addr``; on
    chip, fc1's first weights', unless ``read_ahead``: the EXPERT before it read them), fc1's
    first rows (``x_addr``), its hidden rows written and read back (``hidden_addr``: two)
    and fc2's last writes (``slots_addr``). fc2's weights are read during fc1 with
    ``hw.expert_prefetch`` and come behind the hidden rows without it. Measured on
    zcu102-edge-moe's first two blocks (every activation on chip, the prefetch; bench top
    at 50 cycles, 2026-12-04): the working EXPERTs took 139 to 621 cycles fewer than the
    five's prediction, the first after ROUTE 229."""
    def dram(name):
        return name not in onchip

    first = dram("topk_addr") or not read_ahead
    return int(first) + int(dram("x_addr")) + 2 * int(dram("hidden_addr")) \
        + int(dram("slots_addr"))


def patchify_blocks(d) -> tuple:
    """``(blocks, patches of a block)`` of PATCHIFY descriptor ``d``: the engine loads the
    image rows of up to :attr:`PatchifyEngine.PATCHES
    <moevit.hw.top.patchify_engine.PatchifyEngine>` patches of a grid row at a time."""
    from moevit.hw.top.patchify_engine import PatchifyEngine

    grid = d.columns // d.patch
    block = min(grid, PatchifyEngine.PATCHES)
    return (d.rows // d.patch) * -(-grid // block), block


def burst_phases(d, hw, *, op=None, routed=None) -> list:
    """The bursts of descriptor ``d`` (:func:`request_bursts`) in the phases that run one
    after the other, each with its compute cycles: an EXPERT's two jobs (none when nobody
    chose it), else one phase (``None``: the instruction's own)."""
    if d.MNEMONIC == "EXPERT":
        return [(request_bursts(job, hw), _linear(job)) for job in d.linears(routed)] \
            if routed else []
    return [(request_bursts(d, hw, op=op, routed=routed), None)]


def check_latency(latency) -> int:
    """``latency`` (cycles of the memory's answer), or a :class:`ConfigError` naming it."""
    if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
        raise ConfigError(f"Memory latency must be a whole number of cycles >= 0, not "
                          f"{latency!r}")
    return latency


def latency_cycles(mnemonic, phases, hw, compute, latency, *, dram_reads=True,
                   dram_bytes=True, onchip=None, read_ahead=False) -> tuple:
    """``(floor, exposed)`` of an instruction of kind ``mnemonic`` whose bursts are
    ``phases`` (:func:`burst_phases`) on a memory that answers ``latency`` cycles after each
    burst's address: the cycles it takes at least (:func:`bursts_floor`; an EXPERT's two
    jobs each, one after the other, over ``compute``), and the latencies it waits out
    whole (:data:`EXPOSED_LATENCIES`; an EXPERT nobody chose only its routing's; a working
    one :func:`expert_latencies` of its fields on chip ``onchip`` and ``read_ahead``, when
    given). The on-chip window answers at once: without ``dram_reads`` nothing is
    waited out, without ``dram_bytes`` (read or written) there is no floor either."""
    if not latency or not dram_bytes:
        return 0, 0
    if mnemonic != "EXPERT":
        floor = bursts_floor(hw, phases[0][0], latency)
    elif phases:
        floor = compute + sum(max(0, bursts_floor(hw, bursts, latency) - cycles)
                              for bursts, cycles in phases)
    else:
        floor = 0
    exposed = EXPOSED_LATENCIES.get(mnemonic, 1) if phases or mnemonic != "EXPERT" else 1
    if mnemonic == "EXPERT" and phases and onchip is not None:
        exposed = expert_latencies(onchip, read_ahead=read_ahead)
    return floor, exposed * latency if dram_reads else 0


def issue_cycles(hw) -> int:
    """The sequencer's cycles an instruction on ``hw``: :data:`ISSUE_CYCLES_AHEAD` with its
    look-ahead (``hw.expert_prefetch``, and always on two issue lanes), else
    :data:`ISSUE_CYCLES`."""
    return ISSUE_CYCLES_AHEAD if hw.expert_prefetch or hw.issue_lanes == 2 else ISSUE_CYCLES


#: A memory port's channels, as :func:`lane_demand` names them: its reads' (and, sharing
#: them, its writes'), and on a duplex memory its writes' own.
PORT_CHANNELS = ("port", "port_write")


def memory_cycles(hw, moved: dict, bandwidth, memory_bandwidth=None, lane="main", *,
                  duplex=False) -> int:
    """Cycles to move ``moved`` (:func:`moved_bytes`) on ``hw``'s memory ports: each port
    carries its movers' bytes (:data:`moevit.hw.top.memory_ports.PORT_OF`; a port's reads
    and writes share it, as behind a board's DDR, or with ``duplex`` each have their own
    channel, as the bench's memory without a rate gives them: the busier one counts) at
    ``bandwidth`` bytes a cycle, all ports together at most
    ``memory_bandwidth`` (default: no limit beyond the ports'). One port: the bytes over
    ``bandwidth``, as before there were ports. With ``hw.weight_ports`` > 1 the bytes of
    ``w`` are dealt evenly over its stripe (its bursts go round-robin,
    :func:`moevit.hw.top.memory_ports.weight_stripe`; ``chan``'s too with
    ``hw.chan_striped``), and ``w`` still takes at most one bus
    word a cycle: its one mover's rate, whatever its ports give. An instruction of the side
    ``lane`` on a top of two moves on the side lane's movers (:func:`lane_demand`: its
    ``w`` on one port, its writes on their own)."""
    demand = lane_demand(hw, lane, moved, duplex=duplex)
    cycles = max((n for r, n in demand.items() if r[0] in PORT_CHANNELS),
                 default=0) / bandwidth
    # Striped: still one mover, a bus word a cycle at most.
    if len(lane_routes(hw.memory_ports, hw.weight_ports, hw.issue_lanes, lane,
                       hw.chan_striped)["w"]) > 1:
        cycles = max(cycles, moved.get("w", 0) / (hw.bus_width / 8))
    if memory_bandwidth is not None:
        cycles = max(cycles, demand.get("memory", 0) / memory_bandwidth)
    return math.ceil(cycles)


def top_reads(d, reads, routed) -> list:
    """The top's reads of descriptor ``d``: the interpreter's read log ``reads``
    (``(address, bytes)``), but for an EXPERT with ``routed`` tokens, where the interpreter
    reads the whole of x and hands fc1's output to fc2 in place, the top's: the routed
    rows of x (its gather) and fc2's read of fc1's output back from ``hidden_addr`` (both
    seen in co-simulation, in the memory's beats). The rows are counted at x's start: a
    row's address says only whether it is on chip, and x is in one place."""
    if d.MNEMONIC == "EXPERT" and routed:
        return [*((a, n) for a, n in reads if a != d.x_addr),
                (d.x_addr, routed * d.dim), (d.hidden_addr, routed * d.hidden)]
    return reads


def _task_entry(memory, table_addr, task) -> TaskEntry:
    at = table_addr + TASK_ENTRY_BYTES * task
    return TaskEntry(*(int(w) for w in np.frombuffer(memory[at:at + TASK_ENTRY_BYTES].tobytes(),
                                                     "<u4")))


def _linear(d) -> int:
    return d.expected_cycles() + LINEAR_TAIL


def expert_scan_cycles(hw, size, routed=0, hits=None) -> int:
    """Cycles of an EXPERT's scan of its routing (:class:`~moevit.hw.top.moe.ExpertEngine`),
    ``size`` bytes (``tokens x top_k`` indices): a bus word a cycle, one cycle per index
    naming the expert when a word holds more than one. ``hits``: which indices name it
    (exact); else ``routed`` of them spread over the words, at most one a word until
    every word has one (the uniform routing the search assumes,
    :data:`moevit.hw.cost.dse.ROUTING`)."""
    nbytes = hw.bus_width // 8
    if hits is None:
        return max(-(-size // nbytes), routed)
    per_word = np.add.reduceat(np.asarray(hits, int), np.arange(0, size, nbytes))
    return int(np.maximum(per_word, 1).sum())


def expert_cycles(fc1, fc2) -> int:
    """An expert's two linear jobs on its gathered tokens, and the gather and scatter."""
    return _linear(fc1) + _linear(fc2) + EXPERT_JOB_CYCLES + fc1.tokens * EXPERT_ROW_CYCLES


def compute_cycles(d, hw, *, op=None, routed=None, routing=None) -> int:
    """Compute cycles of descriptor ``d`` on ``hw`` (its engine's, memory aside).

    ``op``: a TASK_LINEAR's operation resolved for the task; ``routed``: the tokens an
    EXPERT gets (0: only its routing is scanned); ``routing``: the indices it scans
    (:func:`expert_scan_cycles`; without them, ``routed`` spread evenly)."""
    m = d.MNEMONIC
    if m == "LINEAR":
        return _linear(d)
    if m == "TASK_LINEAR":
        return _linear(op)
    if m == "ATTENTION":
        return d.expected_cycles() + attention_tail(d)
    if m == "LAYERNORM":
        return layernorm_cycles(d, hw)
    if m == "PATCHIFY":
        size = d.channels * d.rows * d.columns
        return -(-size // min(d.patch, hw.bus_width // 8)) + PATCHIFY_TAIL
    if m == "COPY":
        return -(-d.length // (hw.bus_width // 8))
    if m == "ROUTE":
        # The walk and the softmax tokens apart, then the indices and weights written
        # (:func:`moevit.hw.top.moe.route_cycles`, exact on the engine alone).
        from moevit.hw.top.moe import route_cycles

        return route_cycles(d.tokens, d.experts, d.top_k, d.rule == 1, hw.bus_width)
    if m == "EXPERT":
        size = d.tokens * d.top_k
        scan = expert_scan_cycles(hw, size, routed or 0,
                                  None if routing is None else routing[:size] == d.expert)
        return scan + (expert_cycles(*d.linears(routed)) if routed else 0)
    if m == "COMBINE":
        # Its lanes (hw.combine_width) of a slot row a cycle; the gate weight and the skip
        # row come beside the slot beats (the engine takes them in the same cycle). Measured
        # on zcu102-edge-moe's first MoE layer (bench top, compute-bound): 6,203 cycles for
        # 6,192 + the issue; the model that counted a cycle a skip beat and a weight erred
        # +52 % (2026-12-04).
        return d.tokens * d.top_k * d.dim // hw.combine_width
    raise ConfigError(f"No cost model for instruction {m}")


def written_bytes(d, *, op=None, routed=None) -> int:
    """Bytes descriptor ``d`` writes (``op``, ``routed``: as :func:`compute_cycles`)."""
    m = d.MNEMONIC
    if m == "LINEAR":
        return d.tokens * d.out_features
    if m == "TASK_LINEAR":
        return op.tokens * op.out_features
    if m == "ATTENTION":
        return d.rows * d.heads * d.head_dim
    if m == "LAYERNORM":
        return d.tokens * d.dim
    if m == "PATCHIFY":
        return d.channels * d.rows * d.columns
    if m == "COPY":
        return d.length
    if m == "ROUTE":
        return d.tokens * d.top_k * 3
    if m == "EXPERT":
        return (routed or 0) * (d.hidden + d.dim)
    if m == "COMBINE":
        return d.tokens * d.dim
    raise ConfigError(f"No cost model for instruction {m}")


def _compute_and_written(d, memory, task, hw):
    """(compute cycles, bytes written, bytes moved per mover, the resolved operation, the
    tokens routed) of descriptor ``d`` before it runs on ``memory``."""
    op = routed = top = None
    if d.MNEMONIC == "TASK_LINEAR":
        op = d.resolve(_task_entry(memory, d.table_addr, task))
    elif d.MNEMONIC == "EXPERT":
        top = memory[d.topk_addr:d.topk_addr + d.tokens * d.top_k]
        routed = int(np.count_nonzero(top == d.expert))
    written = written_bytes(d, op=op, routed=routed)
    return (compute_cycles(d, hw, op=op, routed=routed, routing=top), written,
            moved_bytes(d, hw, op=op, routed=routed, written=written), op, routed)


def program_cycles(program, image, task, *, bandwidth=None, memory_bandwidth=None,
                   latency=0, progress=False) -> ProgramCost:
    """The predicted cycles of ``program`` on one int8 ``image`` for ``task``.

    The program runs on the instruction-level interpreter (the routing, and so which
    experts work, depends on the image and the task; the read log gives each
    instruction's bytes).

    Parameters
    ----------
    bandwidth : float, optional
        Memory bytes per cycle of each memory port, its reads and writes together (a
        board's figure: :func:`board_bandwidth`); default: the bench's memory without a
        rate, one bus word a cycle on each of a port's read and write channels (duplex).
    memory_bandwidth : float, optional
        Bytes per cycle of the memory behind all the ports together (default: no limit
        beyond the ports'; a board's: :func:`board_memory_bandwidth`).
    progress : bool
        A progress bar over the instructions (stderr).

    Raises
    ------
    ConfigError
        A bandwidth that is not a positive number.
    ProgramError
        The task is not one of the program's, or the image is not the program's input.
    """
    hw = program.hw
    duplex = bandwidth is None
    if duplex:
        bandwidth = hw.bus_width / 8
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) \
            or not np.isfinite(bandwidth) or bandwidth <= 0:
        raise ConfigError(f"Bandwidth must be a positive number of bytes per cycle, not "
                          f"{bandwidth!r}")
    if not 0 <= task < len(program.tasks):
        raise ProgramError(f"Task {task} is not one of the program's {len(program.tasks)} tasks")
    region, image = program.layout["input"], np.asarray(image)
    if image.dtype != np.int8 or image.shape != region.shape:
        raise ProgramError(f"Input image must be int8 of shape {region.shape}, not "
                           f"{image.dtype} {image.shape}")
    memory = program.memory_image()
    memory[region.offset:region.end] = image.reshape(-1).view(np.uint8)
    ahead = bool(hw.expert_prefetch)
    issue = issue_cycles(hw)
    bounds = program.layout.boundaries()
    window = (bounds["output_end"], bounds["onchip_end"])
    costs, demands = [], []      # demands: what each shares with the other lane (lane_demand)
    note = None                  # the routing an EXPERT scanned last (expert_prefetch)
    idle = None                  # the EXPERT before read this one's fc1 ahead: its idle cycles
    steps = tqdm(program.instructions, desc=f"cost task {task}", unit="instr", disable=not progress,
                 dynamic_ncols=True)
    following = [*program.instructions[1:], None]
    for index, (d, after) in enumerate(zip(steps, following)):
        if ahead and d.MNEMONIC == "EXPERT" and note == _routing(d) and d.expert < hw.cols \
                and not _chosen(d, memory):
            costs.append(InstructionCost(index, d.MNEMONIC, d.UNIT, NOTED_EXPERT_CYCLES, 0, 0,
                                         0, NOTED_EXPERT_CYCLES + issue))
            demands.append({})
            idle = None
            continue
        note = _routing(d) if d.MNEMONIC == "EXPERT" else None
        # The next instruction an EXPERT on this routing, its expert chosen: this EXPERT's
        # fc2 reads its fc1 weights ahead (moevit.hw.top.moe), if this one works.
        followed = (ahead and note is not None and after is not None
                    and after.MNEMONIC == "EXPERT" and _routing(after) == note
                    and after.expert < hw.cols and _chosen(after, memory))
        compute, written, moved, op, routed = _compute_and_written(d, memory, task, hw)
        reads = top_reads(d, run_instructions(memory, hw, [d], task)["reads"], routed)
        # The top's reads are the truth; the descriptor's split agrees with them
        # (tests/test_hw_cost_ports.py), and any byte it missed would go on x.
        missed = sum(size for _, size in reads) + written - sum(moved.values())
        if missed:
            moved["x"] = moved.get("x", 0) + missed
        target = op or d
        streams = activation_streams("LINEAR" if op else d.MNEMONIC, vars(target),
                                     routed if d.MNEMONIC == "EXPERT"
                                     else getattr(target, "tokens", 0))
        read, written, mem_cycles, onchip, dram = _memory(d, reads, written, moved, window, hw,
                                                          bandwidth, memory_bandwidth, streams,
                                                          duplex)
        wait = memory_wait(d, hw, dram, bandwidth, memory_bandwidth, op=op, routed=routed,
                           latency=latency)
        drain = drain_cycles(d, hw, bandwidth, memory_bandwidth, dram, op=op, routed=routed,
                             duplex=duplex)
        read_ahead = idle is not None and bool(routed)
        carry = expert_carry(d.linears(routed)[0], hw, bandwidth, memory_bandwidth,
                             idle=idle) if read_ahead else 0
        floor, exposed = latency_cycles(d.MNEMONIC, burst_phases(d, hw, op=op, routed=routed)
                                        if latency else [], hw, compute, latency,
                                        dram_reads=bool(read), dram_bytes=bool(read or written),
                                        onchip=_onchip_fields(d, window),
                                        read_ahead=read_ahead)
        loss = expert_stream_loss(hw) if d.MNEMONIC == "EXPERT" and routed and read else 0
        work = max(compute + wait, mem_cycles - carry + drain + loss, floor)
        idle = expert_idle(d.linears(routed)[1], work, mem_cycles - carry) \
            if followed and routed else None
        costs.append(InstructionCost(index, d.MNEMONIC, d.UNIT, compute, mem_cycles, read,
                                     written, work + issue + exposed, sum(onchip), floor))
        demands.append(lane_demand(hw, LANE_OF[d.MNEMONIC], dram, *onchip, duplex=duplex))
    if not program.concurrent:
        return ProgramCost(costs, float(bandwidth), hw.clock_mhz)
    starts, ends = lane_timeline([d.MNEMONIC for d in program.instructions], program.concurrent,
                                 [c.cycles for c in costs], demands,
                                 lane_capacity(hw, bandwidth, memory_bandwidth, duplex=duplex))
    return ProgramCost(costs, float(bandwidth), hw.clock_mhz, starts, ends)


def lane_demand(hw, lane, moved, onchip_read=0, onchip_written=0, *, duplex=False) -> dict:
    """The bytes an instruction on ``lane`` ("main" or "side") puts on each memory resource
    the two issue lanes share: ``("port", k)`` its DRAM bytes ``moved`` (per mover,
    :func:`moved_bytes`) on port ``k`` (:func:`lane_routes`; with ``duplex`` its writes on
    ``("port_write", k)``, the port's own write channel), ``"memory"`` all of them, and
    the on-chip window's ``"onchip_read"`` and ``"onchip_write"`` bytes (its one read port
    and its one write port)."""
    routes = lane_routes(hw.memory_ports, hw.weight_ports, hw.issue_lanes, lane,
                         hw.chan_striped)
    demand = {}
    total = 0
    for mover, n in moved.items():
        if not n:
            continue
        for resource, fraction in routes[mover]:
            if duplex and mover == "write":
                resource = ("port_write", resource[1])
            demand[resource] = demand.get(resource, 0) + n * fraction
        total += n
    if total:
        demand["memory"] = total
    for name, n in (("onchip_read", onchip_read), ("onchip_write", onchip_written)):
        if n:
            demand[name] = n
    return demand


@functools.lru_cache(maxsize=None)
def lane_routes(memory_ports, weight_ports, issue_lanes, lane, chan_striped=0) -> dict:
    """Mover -> ``((("port", k), fraction of its bytes), ...)`` for an instruction on
    ``lane`` of a top with these ports and lanes: the main lane's movers by
    :func:`~moevit.hw.top.memory_ports.ports_of`, a striped mover's bytes (the weights,
    and the constants with ``chan_striped``) dealt evenly over its stripe; the side lane's
    ``side_x``, ``side_w``, ``side_chan`` on the ports of ``x``, ``w``, ``chan`` (none of
    them striped) and its writes on ``SIDE_WRITE_PORT``. Cached: the search asks millions
    of times for a few tops."""
    from moevit.hw.top.memory_ports import MOVERS, ports_of, striped_movers

    hw = SimpleNamespace(memory_ports=memory_ports, weight_ports=weight_ports,
                         issue_lanes=issue_lanes, chan_striped=chan_striped)
    where, stripes = ports_of(hw), striped_movers(hw)
    routes = {}
    for mover in MOVERS:
        if lane == "side" and f"side_{mover}" in where:
            routes[mover] = ((("port", where[f"side_{mover}"]), 1),)
        elif mover in stripes:
            routes[mover] = tuple((("port", k), 1 / len(stripes[mover]))
                                  for k in stripes[mover])
        else:
            routes[mover] = ((("port", where[mover]), 1),)
    return routes


def lane_capacity(hw, bandwidth, memory_bandwidth=None, *, duplex=False) -> dict:
    """Bytes a cycle each shared resource of :func:`lane_demand` serves: a port
    ``bandwidth`` (its reads and writes together, as :func:`memory_cycles` charges them,
    or with ``duplex`` each channel of its own), the memory behind them
    ``memory_bandwidth`` (none: no limit), the on-chip window a bus word a cycle on each
    of its ports."""
    channels = PORT_CHANNELS if duplex else PORT_CHANNELS[:1]
    capacity = {(c, k): bandwidth for c in channels for k in range(hw.memory_ports)}
    capacity["onchip_read"] = capacity["onchip_write"] = hw.bus_width / 8
    if memory_bandwidth is not None:
        capacity["memory"] = memory_bandwidth
    return capacity


def _shares(rates, capacity) -> list:
    """The speed (at most 1: its pace alone) of each of two running instructions, given the
    bytes a cycle ``rates`` each moves on each resource at its pace alone.

    Two limits, the lower wins. The resource's capacity, shared max-min fair (the arbiters
    take turns): both speed up together until a resource is full, whose users stop there,
    and the other goes on. And collisions below capacity: an instruction streams on a
    resource in bursts, a fraction ``u = rate / capacity`` of its time alone; where the
    other streams at the same moment (independently, a fraction ``u' s'`` of the time at
    its speed ``s'``), each gets half, so its burst takes twice as long:
    ``1 / s = 1 + sum over resources of u u' s'`` (solved by iterating)."""
    speed = [0.0] * len(rates)
    active = set(range(len(rates)))
    while active:
        level, full = 1.0, set()
        for r, cap in capacity.items():
            want = sum(rates[i].get(r, 0) for i in active)
            if not want:
                continue
            used = sum(speed[i] * rates[i].get(r, 0) for i in range(len(rates))
                       if i not in active)
            room = max(0.0, cap - used) / want
            if room < level - 1e-12:
                level, full = room, {r}
            elif abs(room - level) <= 1e-12:
                full.add(r)
        for i in active:
            speed[i] = level
        stopped = active if level >= 1.0 else {i for i in active
                                               if any(rates[i].get(r, 0) for r in full)}
        active -= stopped
    both = sum(rates[0].get(r, 0) * rates[1].get(r, 0) / cap ** 2
               for r, cap in capacity.items())
    burst = [1.0, 1.0]
    for _ in range(20):
        burst = [1 / (1 + both * burst[1]), 1 / (1 + both * burst[0])]
    return [min(a, b) for a, b in zip(speed, burst)]


def lane_timeline(mnemonics, concurrent, cycles, demands=None, capacity=None) -> tuple:
    """``(starts, ends)``: the cycle each instruction (of ``mnemonics``, with the program's
    ``concurrent`` flags) starts and ends on a top of two issue lanes, each taking its
    ``cycles`` alone: in program order, once its lane is free and, unless it is
    ``concurrent``, the other lane too (:mod:`moevit.hw.top.sequencer`).

    With ``demands`` (per instruction, :func:`lane_demand`) and ``capacity``
    (:func:`lane_capacity`), two instructions that run at once share the memory: each
    moves its bytes evenly over its cycles alone, and where the two together want more of
    a resource (a port, the memory, the on-chip window's read or write port) than it
    serves, they slow down, sharing it max-min fair, and below that their bursts collide
    (:func:`_shares`). Without them, each costs what it costs alone."""
    count = len(cycles)
    starts, ends = [0.0] * count, [0.0] * count
    capacity = capacity or {}
    # An instruction alone never wants more than a resource serves (its cycles alone count it).
    rates = [{r: min(n / max(c, 1), capacity.get(r, math.inf)) for r, n in d.items()}
             for d, c in zip(demands, cycles)] if demands else [{}] * count
    running = {}                 # lane -> [instruction, its cycles alone still to go]
    now, k = 0.0, 0
    while k < count or running:
        while k < count:
            lane = LANE_OF[mnemonics[k]]
            if lane in running or (not concurrent[k] and running):
                break
            starts[k] = now
            running[lane] = [k, float(cycles[k])]
            k += 1
        lanes = list(running)
        speed = _shares([rates[running[lane][0]] for lane in lanes], capacity) \
            if len(lanes) == 2 else [1.0] * len(lanes)
        step = min(running[lane][1] / s for lane, s in zip(lanes, speed))
        now += step
        for lane, s in zip(lanes, speed):
            running[lane][1] -= step * s
            if running[lane][1] <= 1e-6:
                ends[running.pop(lane)[0]] = now
    return (tuple(int(math.ceil(t - 1e-6)) for t in starts),
            tuple(int(math.ceil(t - 1e-6)) for t in ends))


def activation_streams(mnemonic, f, n) -> list:
    """``(address field, mover, bytes)`` of each activation stream of an instruction of kind
    ``mnemonic`` with fields ``f`` (a dict; ``n``: a LINEAR's or TASK_LINEAR's tokens, an
    EXPERT's routed tokens), as :func:`moved_bytes` counts them: what an on-chip window can
    serve, and which mover's bytes it takes off the ports."""
    m = mnemonic
    if m in ("LINEAR", "TASK_LINEAR"):
        out = n * f["out_features"]
        return [("x_addr", "x", n * f["in_features"]),
                ("res_addr", "res", out if f.get("residual") else 0), ("y_addr", "write", out)]
    if m == "EXPERT":
        return [("topk_addr", "list", f["tokens"] * f["top_k"]), ("x_addr", "x", n * f["dim"]),
                ("hidden_addr", "x", n * f["hidden"]), ("hidden_addr", "write", n * f["hidden"]),
                ("slots_addr", "write", n * f["dim"])]
    if m == "ATTENTION":
        width = f["heads"] * f["head_dim"]
        keys, rows = f["tokens"] * width, f["rows"] * width
        return [("q_addr", "x", rows), ("k_addr", "w", keys), ("v_addr", "chan", keys),
                ("out_addr", "write", rows)]
    if m == "LAYERNORM":
        size = f["tokens"] * f["dim"]
        return [("x_addr", "w", size), ("y_addr", "write", size)]
    if m == "COPY":
        return [("src_addr", "x", f["length"]), ("dst_addr", "write", f["length"])]
    if m == "ROUTE":
        k = f["tokens"] * f["top_k"]
        return [("logits_addr", "x", f["tokens"] * f["experts"]), ("topk_addr", "write", k),
                ("weights_addr", "write", 2 * k)]
    if m == "COMBINE":
        return [("weights_addr", "x", 2 * f["tokens"] * f["top_k"]),
                ("slots_addr", "w", f["tokens"] * f["top_k"] * f["dim"]),
                ("skip_addr", "chan", f["tokens"] * f["dim"]), ("y_addr", "write",
                                                                 f["tokens"] * f["dim"])]
    if m == "PATCHIFY":
        return [("y_addr", "write", f["channels"] * f["rows"] * f["columns"])]
    return []


def _memory(d, reads, written, moved, window, hw, bandwidth, memory_bandwidth, streams=(),
            duplex=False):
    """``(DRAM bytes read, DRAM bytes written, memory cycles, (on-chip bytes read, written),
    DRAM bytes per mover)`` of ``d``:
    ``reads`` its read log, ``written`` its bytes written (:func:`written_bytes`), split
    by the window ``(start, end)`` they fall in (see the module's description); ``moved``
    the bytes per mover (:func:`moved_bytes`), each port's share of the DRAM bytes
    (``duplex``: as :func:`memory_cycles`).

    The read log does not say which mover read a byte: the window's reads are taken off
    the movers of the instruction's activation streams whose fields lie in the window
    (``streams``, :func:`activation_streams`), the rest, if any, from every read mover in
    proportion to its bytes. (Only in proportion, until 2026-12-04: an EXPERT or LINEAR with
    its activations on chip and its weights in DRAM then had half its x rows counted on the
    x port, +7.5 % on a 128-row EXPERT of zcu102-edge-moe at the board's bandwidth.)"""
    def inside(addr):
        return window[0] <= addr < window[1]

    total_read = sum(size for _, size in reads)
    onchip_read = sum(size for addr, size in reads if inside(addr))
    read = total_read - onchip_read
    # Where each part of the output goes: EXPERT's hidden rows and slots, ROUTE's indices
    # (a byte each) and weights (two), else everything at the output field.
    if d.MNEMONIC == "EXPERT":
        parts = [(d.hidden_addr, written * d.hidden // (d.hidden + d.dim)),
                 (d.slots_addr, written * d.dim // (d.hidden + d.dim))]
    elif d.MNEMONIC == "ROUTE":
        parts = [(d.topk_addr, written // 3), (d.weights_addr, 2 * written // 3)]
    else:
        parts = [(getattr(d, d.OUTPUT), written)]
    onchip_written = sum(size for addr, size in parts if inside(addr))
    if onchip_read or onchip_written:
        moved = dict(moved, write=written - onchip_written) if written else dict(moved)
        left = onchip_read                   # the window's reads not yet taken off a mover
        for name, mover, size in streams:
            if mover != "write" and size and inside(getattr(d, name)):
                size = min(size, moved.get(mover, 0), left)
                moved[mover] -= size
                left -= size
        rest = sum(n for mover, n in moved.items() if mover != "write")
        if left and rest:
            moved = {mover: (n * (1 - left / rest) if mover != "write" else n)
                     for mover, n in moved.items()}
    word = hw.bus_width // 8
    cycles = max(memory_cycles(hw, moved, bandwidth, memory_bandwidth, LANE_OF[d.MNEMONIC],
                               duplex=duplex),
                 -(-onchip_read // word), -(-onchip_written // word))
    return read, written - onchip_written, cycles, (onchip_read, onchip_written), moved


def _onchip_fields(d, window) -> tuple:
    """The address fields of ``d`` inside the on-chip ``window`` ``(start, end)``."""
    return tuple(name for name, value in vars(d).items()
                 if name.endswith("_addr") and window[0] <= value < window[1])


def _routing(d):
    """What an EXPERT's note of the routing is keyed by (``moevit.hw.top.moe``)."""
    return d.topk_addr, d.tokens, d.top_k


def _chosen(d, memory) -> bool:
    top = memory[d.topk_addr:d.topk_addr + d.tokens * d.top_k]
    return bool(np.count_nonzero(top == d.expert))
