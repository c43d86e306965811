"""``moevit dse``: the two-stage design-space search of one board for one model config.

The workload is the **compiled program of the model** (:func:`workload`): the
config's signal model is quantized on one synthetic image and compiled once
(untrained weights change no shape), and every instruction is kept as its
descriptor, a TASK_LINEAR resolved for each task. Two assumptions, stated:

* **routing** (:data:`ROUTING`, :func:`routed_tokens`): each token chooses its
  ``top_k`` experts evenly at random, so every expert runs and its weights are
  read once per image (the issue's ZCU102 figure assumes this), its tokens
  spread as such a draw spreads them; a trained gate's routing would skip some
  experts and be faster;
* **tokens**: a sequence longer than ``max_tokens`` is cost as chunks of
  ``max_tokens`` tokens, each reading the layer's weights again. The compiler
  does not split sequences yet, so such a point (m3vit-s's 1,201 tokens on a
  small buffer) is predicted, not compilable: the row says ``compiles: no``.

A design point's cycles per instruction are :mod:`moevit.hw.cost.cycles`' model
(``max(compute + wait, memory + drain) + ISSUE_CYCLES``; the top runs one instruction at a
time, its movers overlapping the instruction's own compute, nothing across
instructions), with the memory side at the board's bandwidth: each of the top's memory
ports (``hw.memory_ports``) at :func:`~moevit.hw.cost.cycles.board_bandwidth`
(the bus, capped by the board's port and its memory), all of them together at
most the board's memory (:func:`~moevit.hw.cost.cycles.board_memory_bandwidth`),
each stream on the port the top's table gives its mover
(:func:`~moevit.hw.cost.cycles.memory_cycles`), bytes from the descriptors'
shapes (:func:`read_bytes`, :func:`moved_bytes`). Resources are
:mod:`moevit.hw.cost.resources`' formulas. Every point overlaps the expert schedule
(``expert_prefetch``) and each weight bank's load with its first tile
(``weight_streaming``; on two issue lanes only when that gives more images a second:
:func:`_streaming_at_best_batch`), and reads x a bus word of every row at a time
(``x_by_words``), a chain's step's features a beat of the kernel's x (``wide_x``).

**Batching** is the compiled batched program (``moevit hw compile --batch B``,
:mod:`moevit.hw.program.compiler`): B images of one task run through one body,
every layer but the attention (per image) one instruction on their ``B *
tokens`` rows, so each weight is read once per batch; each expert gets the
batch's tokens (:data:`ROUTING` of ``B * tokens`` tokens). The workload
of each batch is that program's instructions (:func:`workload` with
``batch``, compiled once and cached like the one-image program), and a
point's best batch (:func:`_best_batch`) is the one with the most images a
second among the batches its token buffer holds (powers of two and the
largest), each predicted from its own program.

**The search.** Stage 1 splits the board's DSPs (and, with the fabric limits, its
LUTs) between the attention kernel and the linear kernel (a share for attention,
:data:`ATTENTION_SHARES`) and takes, for each share, the attention lanes (heads in
parallel x row lanes x score lanes, :data:`ROW_LANES`, QK one or two keys a DSP48E2; on
one head lane the fewest context requantizers that keep its cycles, :func:`_context_lanes`)
that fit it with the fewest attention cycles. Stage 2 tunes, within the rest,
the linear array (rows x cols: :func:`fitted_rows`; :data:`COLS` that divide the model's
width, a beat holding several heads where they are wider than one), the DSP packing, the
post-processing lanes,
the bus width (the board's choices), the LayerNorm lanes (:func:`_norm_lanes`:
the fewest that give the LayerNorm instructions their fewest cycles at the
board's bandwidth; the unit is the same for every array), the COMBINE lanes
(:func:`_combine_lanes`, the same rule) and the buffer depths (``max_in`` and
``kv_depth`` the model's minimum; ``max_tokens`` the largest batch the BRAM
holds, up to :data:`MAX_BATCH` images), the on-chip activation window
(:func:`_window`: the largest of :data:`ONCHIP_CHOICES` the block RAM left holds, up to
what the compiler would place there: its bytes leave DRAM, at every batch), and the
memory ports (1 to the board's, at most ``HwConfig.MAX_MEMORY_PORTS``, with the weights
striped over 1, 2, 4 ... of them: the fewest within :data:`PORTS_SLACK` of the
fastest), under the board's DSP, BRAM, URAM,
LUT and FF (each at its :data:`USABLE` fraction; the points are independent, so they are
tried on one process per core, :func:`_workers`). Each candidate is first sized (its token
buffer and lanes), then evaluated (window, ports and their runs: the search's time) the
least :func:`stage2_bound` first, until the next bound is beyond what the ranking keeps
(:func:`_still_open`): what no choice left can beat, so the search chooses what evaluating
every candidate would, on a few of them (zcu102 edge-moe: 192 of 3,410). Bandwidth is
not split: the two kernels run in turn, each with the whole port. On a throughput board each point's
window, ports and issue lanes are chosen again at its best batch
(:func:`_window_at_best_batch`, :func:`_ports_at_best_batch`, :func:`_lanes_at_best_batch`:
two lanes run a batch's two halves, one's linear layers beside the other's attention,
LayerNorm and routing, :func:`predict_lanes`; the two lanes' memory traffic is not divided
between them there either); on a latency board each ranked point is tried on a top of two
issue lanes running its image in token chunks, its attention's query rows in them or not,
each with its window chosen again (:func:`_lanes_at_batch1`). The chosen point
is one the compiler can serve (the sequence fits the token buffer) when any
can, and the best by the board's objective (:data:`OBJECTIVES`, by its host): a
Zynq board's the fastest at batch 1 (among those within :data:`LATENCY_SLACK` of
it, the most images a second breaks a tie), an Alveo card's the most images a
second at its best batch. The kernel's bus is 128, 256 or 512 bits on every
board (:data:`BUS_CHOICES`): on Zynq a wider bus gains through the weights
striped over several 128-bit HP ports, which the SmartConnects convert to.

**The floors.** :func:`latency_floors` bounds a point's batch-1 latency from below (the
weights' reading; this top's one-instruction-at-a-time schedule; any schedule of its units
that respects the image's data dependencies, :func:`image_segments`) and
:func:`lowest_floor` every point of these kernels that fits the board, beyond the search's
grid (any rows, any columns dividing the model's width): what no HwConfig, or no schedule,
can beat, which the targets' limits quote.
"""

import bisect
import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import signal
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from moevit.errors import ConfigError

__all__ = ["ROUTING", "USABLE", "ATTENTION_SHARES", "ROW_LANES", "MAX_BATCH", "LATENCY_SLACK",
           "PORTS_SLACK", "ONCHIP_CHOICES", "BUS_CHOICES", "OBJECTIVES", "Workload", "workload",
           "routed_tokens", "read_bytes", "moved_bytes", "weight_bytes", "kernel_cycles",
           "latency_floors", "lowest_floor", "image_segments", "predict", "Point", "search",
           "dse_rows", "print_dse", "save_config"]

ROUTING = ("uniform: each token chooses its top_k experts evenly at random, so every expert's "
           "weights are read once per image; expert e of a MoE layer gets the (e + 1/2) / experts "
           "quantile of Binomial(tokens, top_k / experts) tokens (129 x 2 of 16: 9 to 23)")
#: Fractions of a board's resources a design may take (routing, the Vitis shell, the
#: PS interconnect and timing closure need the rest).
USABLE = {"dsp": 0.9, "bram36": 0.85, "uram": 0.85, "lut": 0.7, "ff": 0.7}
#: Stage 1: the shares of the usable DSPs the attention kernel may take.
ATTENTION_SHARES = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2)
#: Stage 1: the attention kernel's context requantizers are the fewest whose ATTENTION
#: cycles are within this of a requantizer a score lane (a beat held ``score_lanes /
#: context_lanes`` cycles adds about that many to an instruction's last row).
CONTEXT_SLACK = 0.002
#: The most images a batch holds (the token buffer's depth bounds it too).
MAX_BATCH = 16
#: The chosen point's batch-1 latency is at most this much above the fastest's.
LATENCY_SLACK = 0.10
#: A point takes the fewest memory ports whose latency is within this of its best.
PORTS_SLACK = 0.01
#: The memory ports the search tries (those the board has).
PORT_CHOICES = (1, 2, 4, 8)
#: The on-chip activation windows the search tries (bytes; ``HwConfig.onchip_bytes``): 0
#: and powers of two from 32 KiB to 4 MiB.
ONCHIP_CHOICES = (0,) + tuple(1 << k for k in range(15, 23))
#: Stage 1's row lanes of a head lane (``HwConfig.row_lanes``), up to the model's tokens.
ROW_LANES = (1, 2, 4, 8, 16)
#: Stage 2's grid (beside each row count, one fitted to the model's tokens: :func:`fitted_rows`).
ROWS = (4, 8, 16, 32, 64, 128)
#: A fitted row count is at most this share above the count it stands beside.
FITTED_ROWS_SLACK = 1 / 8
COLS = (8, 16, 32, 64)
#: Stage 2's chains of multipliers a linear array position (``HwConfig.chain_depth``): a
#: chain of D takes D input features a step on one fabric accumulator, which Yosys leaves in
#: fabric beside every DSP48E2 (36 LUT a MAC unit at 1, 24 at 2, about 12 at 4:
#: :func:`~moevit.hw.cost.resources.chain_resources`).
CHAINS = (1, 2, 4)
POST_LANES = (2, 4, 8, 16, 32, 64)
SCORE_LANES = (4, 8, 16, 32, 64)
NORM_LANES = (1, 2, 4, 8, 16, 32, 64)
#: The kernel's bus widths per host kind. On a Zynq board (``pynq``) each memory port goes
#: through its own SmartConnect to one 128-bit HP port (:mod:`moevit.host.bitstream`), which
#: converts the width: a port still gets one HP port's bytes a cycle
#: (:func:`~moevit.hw.cost.cycles.board_bandwidth`), but the weight mover, striped over
#: ``weight_ports`` of them, takes up to one wide bus word a cycle.
BUS_CHOICES = {"pynq": (128, 256, 512), "pyxrt": (256, 512)}
#: What a board's search ranks by, per host kind, and why.
OBJECTIVES = {
    "pynq": ("latency", "a Zynq board sits at the edge and answers one image at a time "
                        "(batch 1): ranked by the latency per image at batch 1"),
    "pyxrt": ("throughput", "an Alveo card in a server takes a stream of images: ranked by "
                            "images/s at the best batch"),
}


# The workload ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One instruction of the program for one task, any HwConfig: the descriptor's class,
    its fields (addresses included, unused), and the tokens an EXPERT gets."""

    mnemonic: str
    unit: str
    fields: tuple
    routed: int = 0
    onchip: tuple = ()     # its address fields whose tensors are in the on-chip window
    # A working EXPERT right after another on the same routing (with hw.expert_prefetch
    # the earlier one reads this one's fc1 weights ahead: chain_experts).
    after_expert: bool = False

    def __post_init__(self):
        # What the cost depends on: the fields but the addresses, the routing, which of
        # its tensors are on chip, and whether an EXPERT follows one it reads ahead for.
        object.__setattr__(self, "shape", (self.mnemonic, self.routed, self.onchip,
                                           self.after_expert) + tuple(
            (k, v) for k, v in self.fields if not k.endswith("_addr")))
        object.__setattr__(self, "values", dict(self.fields))

    def descriptor(self, hw, tokens=None):
        """The descriptor on ``hw`` (a linear one with ``tokens`` tokens instead)."""
        from moevit.hw.program import isa
        from moevit.hw.program.descriptor import (AttentionDescriptor, LayerNormDescriptor,
                                                  LinearDescriptor)

        classes = {"LINEAR": LinearDescriptor, "ATTENTION": AttentionDescriptor,
                   "LAYERNORM": LayerNormDescriptor, "PATCHIFY": isa.PatchifyDescriptor,
                   "COPY": isa.CopyDescriptor, "ROUTE": isa.RouteDescriptor,
                   "EXPERT": isa.ExpertDescriptor, "COMBINE": isa.CombineDescriptor}
        values = dict(self.fields)
        if tokens is not None:
            values["tokens"] = tokens
        return classes[self.mnemonic](hw, **values)


@dataclass
class Workload:
    """The compiled program of a model config for ``batch`` images a run, per task, as
    :class:`Step` s."""

    config: str
    tasks: dict            # task name -> tuple of Step, in program order
    tokens: int            # of one image
    macs: dict             # task name -> multiply-accumulates of one run
    batch: int = 1
    windows: dict = field(default_factory=dict)  # task -> {window bytes: on-chip fields per step}
    concurrent: tuple = ()  # per step in order, on a top of two issue lanes (Program.concurrent)
    streams: tuple = ()     # ... and the half batch it computes (Program.streams)
    _grouped: dict = field(default_factory=dict, repr=False)

    def steps(self, task, onchip=0):
        """``(step, count)`` of the task's distinct shapes (the cost of a step depends
        on its shape only), first appearance order; ``onchip``: with an on-chip window of
        that many bytes (one of :data:`ONCHIP_CHOICES`: the compiler's placement)."""
        key = (task, onchip)
        if key not in self._grouped:
            counts = {}
            for step in self.in_order(task, onchip):
                if step.shape in counts:
                    counts[step.shape][1] += 1
                else:
                    counts[step.shape] = [step, 1]
            self._grouped[key] = tuple((s, n) for s, n in counts.values())
        return self._grouped[key]

    def in_order(self, task, onchip=0) -> tuple:
        """The task's steps in program order, with an on-chip window of ``onchip`` bytes
        (see :meth:`steps`), their EXPERTs chained (:func:`chain_experts`)."""
        if not onchip:
            return chain_experts(self.tasks[task])
        where = self.windows.get(task, {}).get(onchip)
        if where is None:
            raise ConfigError(f"No on-chip placement of {onchip} bytes in the workload "
                              f"(the search's windows: {ONCHIP_CHOICES})")
        return chain_experts([Step(s.mnemonic, s.unit, s.fields, s.routed, tuple(fields))
                              for s, fields in zip(self.tasks[task], where)])

    def onchip_need(self) -> int:
        """The smallest window of :data:`ONCHIP_CHOICES` that holds every activation the
        compiler would place on chip (a larger one gains nothing)."""
        first = next(iter(self.windows.values()), {})
        if not first:
            return 0
        best = first[max(first)]
        return min(c for c, where in first.items() if where == best)


def chain_experts(steps) -> tuple:
    """``steps`` (in program order) with each working EXPERT's ``after_expert``: the
    instruction before it is a working EXPERT on the same routing (with
    ``hw.expert_prefetch`` the top reads this one's fc1 weights during the earlier one's
    fc2: :func:`~moevit.hw.cost.cycles.expert_carry`,
    :func:`~moevit.hw.cost.cycles.expert_latencies`)."""
    def working(step):
        return step is not None and step.mnemonic == "EXPERT" and step.routed > 0

    def routing(step):
        return tuple(step.values[k] for k in ("topk_addr", "tokens", "top_k"))

    steps = list(steps)
    out = []
    for k, step in enumerate(steps):
        before = steps[k - 1] if k else None
        if working(step):
            step = dataclasses.replace(
                step, after_expert=working(before) and routing(before) == routing(step))
        out.append(step)
    return tuple(out)


def step_fields(d):
    """The fields of descriptor ``d`` as a :class:`Step` holds them."""
    return tuple((f.name, getattr(d, f.name)) for f in fields(d)
                 if f.init and f.name != "hw")


def _reference_hw(model, batch=1, lanes=1, chunks=1):
    """A HwConfig the compiler accepts for ``model``: its default with a token buffer
    that holds the whole sequence of ``batch`` images (the workload does not depend on
    it), and ``lanes`` issue lanes (two memory ports for two; one image on two in token
    chunks, ``chunks`` the :attr:`~moevit.hw.config.HwConfig.token_chunks`)."""
    from moevit.hw.config import HwConfig

    base = HwConfig.for_model(model)
    tokens = -(-model.tokens * batch // base.rows) * base.rows
    kv = max(base.kv_depth, model.tokens)
    return base.replace(max_tokens=max(base.max_tokens, tokens), kv_depth=kv,
                        memory_ports=max(base.memory_ports, lanes), issue_lanes=lanes,
                        token_chunks=chunks if lanes == 2 and batch == 1 else 0)


#: Changes when :func:`_compile` changes what it keeps (a cached workload is then stale).
WORKLOAD_VERSION = 5


def _cache_key(model, batch=1, lanes=1, chunks=1) -> str:
    """The model config, the batch, the issue lanes and token chunks, the compiler's sources
    and :data:`WORKLOAD_VERSION`."""
    from moevit.hw import program

    digest = hashlib.sha256(json.dumps([model.to_dict(), WORKLOAD_VERSION, batch, lanes, chunks],
                                       sort_keys=True, default=str).encode())
    for source in sorted(Path(program.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


class _UnitCalibration(dict):
    """Every activation's ``max|a|`` is 1: the quantized model's constants are valid,
    and no image runs through the float model (the program's shapes do not depend on
    them)."""

    def __missing__(self, name):
        return 1.0


def _signal_quantized(model):
    """``model``'s signal model (untrained weights), quantized with a unit calibration
    (once a process: the compile of each batch reuses it)."""
    from moevit.model.integer.evaluate import signal_model
    from moevit.model.integer.quantize import quantize_model

    key = json.dumps(model.to_dict(), sort_keys=True, default=str)
    if key not in _QUANTIZED:
        float_model = signal_model(model)
        state = {name: value.detach().cpu().double().numpy()
                 for name, value in float_model.state_dict().items()}
        _QUANTIZED[key] = quantize_model(state, model, _UnitCalibration())
    return _QUANTIZED[key]


_QUANTIZED = {}


def compile_signal_model(model, batch=1, *, onchip_bytes=0, lanes=1, chunks=1):
    """The program of ``model``'s signal model (untrained weights, unit calibration) for
    ``batch`` images a run, on a HwConfig that holds their whole sequence: the shapes of
    the config's program (``onchip_bytes``: with that on-chip window; ``lanes``: for a top
    of that many issue lanes; ``chunks``: one image's token chunks on two)."""
    from moevit.hw.program.compiler import compile_program

    hw = _reference_hw(model, batch, lanes, chunks).replace(onchip_bytes=onchip_bytes)
    return compile_program(_signal_quantized(model), hw, batch=batch)


@functools.lru_cache(maxsize=None)
def routed_tokens(tokens, top_k, experts) -> tuple:
    """The tokens of each expert of a MoE layer of ``tokens`` tokens under :data:`ROUTING`:
    a token's ``top_k`` distinct experts drawn evenly at random give each expert a count of
    Binomial(tokens, top_k / experts); expert ``e`` gets its (e + 1/2) / experts quantile.
    Why not every expert the mean: an array whose rows just hold the mean (17 rows for 129
    tokens x 2 of 16 experts) then never takes a second token tile, and zcu104-edge-moe so
    fitted was predicted 6.5 % under its co-simulated image (bench top's balanced gates:
    5 to 32 tokens an expert); with this spread, 0.8 % under."""
    p = top_k / experts
    if p >= 1:
        return (tokens,) * experts
    cdf, total = [], 0.0
    for n in range(tokens + 1):
        total += math.exp(math.lgamma(tokens + 1) - math.lgamma(n + 1)
                          - math.lgamma(tokens - n + 1) + n * math.log(p)
                          + (tokens - n) * math.log1p(-p))
        cdf.append(total)
    return tuple(min(bisect.bisect_left(cdf, (e + 0.5) / experts), tokens)
                 for e in range(experts))


def _compile(model, batch=1, lanes=1, chunks=1):
    """The steps of every task, the MACs of one run (``batch`` images), per window of
    :data:`ONCHIP_CHOICES` the address fields of each step whose tensors the compiler
    places on chip (:func:`moevit.hw.program.compiler.place_onchip`), and the steps'
    ``concurrent`` flags (``lanes`` issue lanes), from one compile."""
    from moevit.hw.cost.cycles import _task_entry
    from moevit.hw.program.compiler import place_onchip

    program = compile_signal_model(model, batch, lanes=lanes, chunks=chunks)
    memory = program.memory_image()
    placed = {c: place_onchip(program, c) for c in ONCHIP_CHOICES}
    tasks, macs, windows = {}, {}, {}
    for t, task in enumerate(program.tasks):
        steps, total = [], 0
        where = {c: [] for c in ONCHIP_CHOICES}
        for d in program.instructions:
            if d.MNEMONIC == "TASK_LINEAR":
                d = d.resolve(_task_entry(memory, d.table_addr, t))
            routed = 0
            if d.MNEMONIC == "EXPERT":  # uniform routing (ROUTING)
                routed = routed_tokens(d.tokens, d.top_k, model.experts)[d.expert]
                total += routed * (d.dim * d.hidden * 2)
            elif d.MNEMONIC in ("LINEAR", "ATTENTION"):
                total += d.macs
            steps.append(Step(d.MNEMONIC, d.UNIT, step_fields(d), routed))
            regions = {k: program.layout.at(v) for k, v in step_fields(d)
                       if k.endswith("_addr")}
            for c, names in placed.items():
                where[c].append([k for k, r in regions.items() if r is not None
                                 and r.kind == "scratch" and r.name in names])
        tasks[task["name"]] = steps
        macs[task["name"]] = total
        windows[task["name"]] = where
    return tasks, macs, windows, program.concurrent, program.streams


def workload(config, *, batch=1, lanes=1, chunks=1, progress=False) -> Workload:
    """The workload of model config ``config`` (a name) compiled for ``batch`` images a
    run on a top of ``lanes`` issue lanes (one image on two: in token chunks, ``chunks``
    the :attr:`~moevit.hw.config.HwConfig.token_chunks`), compiled once and kept under
    ``build/dse/`` (keyed by the config, the batch, the lanes, the chunks and the
    compiler's sources)."""
    from moevit.model.config import get_config
    from moevit.paths import build_dir

    model = get_config(config)
    chunks = chunks if lanes == 2 and batch == 1 else 1     # what the compile reads
    name = (config if batch == 1 else f"{config}-batch{batch}") + ("-lanes2" if lanes == 2
                                                                    else "") \
        + (f"-chunks{chunks}" if chunks != 1 else "")
    path = build_dir("dse") / f"workload-{name}-{_cache_key(model, batch, lanes, chunks)}.json"
    if path in _WORKLOADS:
        return _WORKLOADS[path]
    if path.exists():
        data = json.loads(path.read_text())
    else:
        if progress:
            import sys

            print(f"compiling the {config} model once{f' for batch {batch}' if batch > 1 else ''} "
                  f"(cached in {path.parent})", file=sys.stderr)
        tasks, macs, windows, concurrent, streams = _compile(model, batch, lanes, chunks)
        data = {"tasks": {name: [[s.mnemonic, s.unit, s.fields, s.routed] for s in steps]
                          for name, steps in tasks.items()}, "macs": macs,
                "windows": {name: [[c, where] for c, where in w.items()]
                            for name, w in windows.items()}, "concurrent": concurrent,
                "streams": streams}
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    tasks = {name: tuple(Step(m, u, tuple(tuple(f) for f in fs), r) for m, u, fs, r in steps)
             for name, steps in data["tasks"].items()}
    windows = {name: {c: tuple(tuple(f) for f in where) for c, where in w}
               for name, w in data["windows"].items()}
    _WORKLOADS[path] = Workload(config, tasks, model.tokens, data["macs"], batch, windows,
                                concurrent=tuple(data["concurrent"]),
                                streams=tuple(data["streams"]))
    return _WORKLOADS[path]


_WORKLOADS = {}


# One design point --------------------------------------------------------------------------

def read_bytes(step, hw, tokens=None) -> int:
    """Bytes the instruction reads on ``hw`` (weights padded to whole ``cols`` tiles, as
    the compiler lays them out); ``tokens``: a linear chunk's tokens instead."""
    from moevit.hw.program.layout import chan_bytes

    f = step.values
    m = step.mnemonic
    if m == "LINEAR":
        t = f["tokens"] if tokens is None else tokens
        weights = -(-f["out_features"] // hw.cols) * hw.cols * f["in_features"]
        return (t * f["in_features"] + weights + chan_bytes(f["out_features"], hw.cols)
                + (t * f["out_features"] if f["residual"] else 0))
    if m == "ATTENTION":
        return (f["rows"] + 2 * f["tokens"]) * f["heads"] * f["head_dim"]      # q, k, v
    if m == "LAYERNORM":
        return f["tokens"] * f["dim"] + 8 * f["dim"]
    if m == "PATCHIFY":
        return f["channels"] * f["rows"] * f["columns"]
    if m == "COPY":
        return f["length"]
    if m == "ROUTE":
        return f["tokens"] * f["experts"]
    if m == "EXPERT":
        n = step.routed if tokens is None else tokens
        routing = f["tokens"] * f["top_k"]
        if not n:
            return routing
        dim, hidden = f["dim"], f["hidden"]
        fc1 = -(-hidden // hw.cols) * hw.cols * dim + chan_bytes(hidden, hw.cols)
        fc2 = -(-dim // hw.cols) * hw.cols * hidden + chan_bytes(dim, hw.cols)
        return routing + n * dim + fc1 + n * hidden + fc2
    if m == "COMBINE":
        return f["tokens"] * f["top_k"] * (2 + f["dim"]) + f["tokens"] * f["dim"]
    raise ConfigError(f"No cost model for instruction {m}")


def moved_bytes(step, hw, tokens=None, written=0) -> dict:
    """:func:`read_bytes` by the mover that reads them (a name of
    :data:`moevit.hw.top.memory_ports.MOVERS`: the read channel each engine uses), and
    ``written`` on ``write``; ``tokens``: a linear chunk's tokens instead."""
    from moevit.hw.program.layout import chan_bytes

    f = step.values
    m = step.mnemonic

    def linear(n, inputs, outputs, residual=False):
        return {"x": n * inputs, "w": -(-outputs // hw.cols) * hw.cols * inputs,
                "chan": chan_bytes(outputs, hw.cols), "res": n * outputs if residual else 0}

    if m == "LINEAR":
        moved = linear(f["tokens"] if tokens is None else tokens, f["in_features"],
                       f["out_features"], f["residual"])
    elif m == "ATTENTION":
        keys, width = f["tokens"], f["heads"] * f["head_dim"]
        moved = {"x": f["rows"] * width, "w": keys * width, "chan": keys * width}  # q, k, v
    elif m == "LAYERNORM":
        moved = {"x": 8 * f["dim"], "w": f["tokens"] * f["dim"]}      # parameters, rows
    elif m == "EXPERT":
        n = step.routed if tokens is None else tokens
        moved = {"list": f["tokens"] * f["top_k"]}
        if n:
            fc1 = linear(n, f["dim"], f["hidden"])
            fc2 = linear(n, f["hidden"], f["dim"])
            moved.update({k: fc1[k] + fc2[k] for k in ("x", "w", "chan")})
    elif m == "COMBINE":
        moved = {"x": 2 * f["tokens"] * f["top_k"], "w": f["tokens"] * f["top_k"] * f["dim"],
                 "chan": f["tokens"] * f["dim"]}                      # gate weights, slots, skip
    else:                                                             # one stream, on x
        moved = {"x": read_bytes(step, hw, tokens)}
    moved["write"] = written
    return {k: v for k, v in moved.items() if v}


def _stream_bytes(step, n) -> list:
    """:func:`~moevit.hw.cost.cycles.activation_streams` of ``step`` (``n``: a linear
    chunk's tokens, an EXPERT's routed tokens)."""
    from moevit.hw.cost.cycles import activation_streams

    return activation_streams(step.mnemonic, step.values, n)


def _onchip_memory(step, hw, by_mover, n, bandwidth, memory_bandwidth):
    """``(DRAM bytes per mover, memory cycles, on-chip bytes read, written)`` of ``step``
    whose tensors at ``step.onchip`` are in the on-chip window: as
    :func:`moevit.hw.cost.cycles.program_cycles` counts it, the DRAM bytes on the ports, the
    window's reads and writes each a bus word a cycle (its one read and one write port)."""
    from moevit.hw.cost.cycles import memory_cycles
    from moevit.hw.program.isa import LANE_OF

    dram, inside = dict(by_mover), {"read": 0, "write": 0}
    for name, mover, size in _stream_bytes(step, n):
        if name in step.onchip:
            size = min(size, dram.get(mover, 0))   # a chunk after the first has no routing
            dram[mover] = dram.get(mover, 0) - size
            inside["write" if mover == "write" else "read"] += size
    word = hw.bus_width // 8
    return dram, max(memory_cycles(hw, dram, bandwidth, memory_bandwidth, LANE_OF[step.mnemonic]),
                     -(-inside["read"] // word), -(-inside["write"] // word)), \
        inside["read"], inside["write"]


def _expert_linears(step, hw, n):
    """An EXPERT step's two jobs on ``n`` routed tokens, built once per shape and array
    (descriptors are slow to build; what the costs read of them depends on those only)."""
    from moevit.hw.program.descriptor import LinearDescriptor

    key = ("jobs", step.shape, *_linear_fields(hw), n)
    if key not in _CYCLES:
        f = step.values
        gelu = {k: f[k] for k in ("gelu_b", "gelu_c", "gelu_mult", "gelu_shift")}
        _CYCLES[key] = (
            LinearDescriptor(hw, tokens=n, in_features=f["dim"], out_features=f["hidden"],
                             gelu=1, **gelu),
            LinearDescriptor(hw, tokens=n, in_features=f["hidden"], out_features=f["dim"]))
    return _CYCLES[key]


_CYCLES = {}  # (shape, the hw fields a cost reads, tokens) -> cycles: shared by the points


def _linear_fields(hw) -> tuple:
    """The fields of ``hw`` a linear step's compute, drains and tiles depend on (the keys
    of their :data:`_CYCLES` entries)."""
    return hw.rows, hw.cols, hw.chain_depth, hw.post_lanes, hw.weight_streaming


def _chunk_cycles(step, hw, tokens) -> int:
    """Compute cycles of a linear step (LINEAR, or an EXPERT's two layers) on ``tokens``."""
    from moevit.hw.cost.cycles import compute_cycles, expert_cycles

    key = (step.shape, *_linear_fields(hw), tokens)
    if key not in _CYCLES:
        _CYCLES[key] = (expert_cycles(*_expert_linears(step, hw, tokens))
                        if step.mnemonic == "EXPERT"
                        else compute_cycles(step.descriptor(hw, tokens=tokens), hw))
    return _CYCLES[key]


def _chunk_drain(step, hw, tokens, by_mover, bandwidth, memory_bandwidth) -> int:
    """:func:`~moevit.hw.cost.cycles.drain_cycles` of a linear step's chunk of ``tokens``
    moving ``by_mover`` (its DRAM bytes)."""
    from moevit.hw.cost.cycles import (expert_drains, linear_drain, linear_tile_outputs,
                                       memory_cycles)

    # visible_drains, its jobs' drains and tile outputs kept per shape.
    key = ("drain", step.shape, *_linear_fields(hw), tokens)
    if key not in _CYCLES:
        jobs = (_expert_linears(step, hw, tokens) if step.mnemonic == "EXPERT"
                else [step.descriptor(hw, tokens=tokens)])
        _CYCLES[key] = [(linear_drain(job), linear_tile_outputs(job)) for job in jobs]
    drains = [max(0, drain - memory_cycles(hw, {k: n for k, n in outputs.items()
                                                if by_mover.get(k)},
                                          bandwidth, memory_bandwidth))
              for drain, outputs in _CYCLES[key]]
    if step.mnemonic == "EXPERT":
        return expert_drains(drains, hw, bandwidth, memory_bandwidth)
    return sum(drains)


def _chunk_wait(step, hw, tokens, by_mover, bandwidth, memory_bandwidth) -> int:
    """:func:`~moevit.hw.cost.cycles.memory_wait` of a linear step's chunk of ``tokens``
    moving ``by_mover`` (its DRAM bytes)."""
    from moevit.hw.cost.cycles import linear_overlap, paced_wait, x_arrival

    def alone(n):       # memory_cycles of n bytes on x, one port
        return math.ceil(n / min(bandwidth, memory_bandwidth or bandwidth))

    # The jobs, their overlaps (linear_overlap: what paced_wait and linear_wait subtract)
    # and the first layer's share of x kept per shape (descriptors and their tiles are slow
    # to build).
    key = ("overlaps", step.shape, *_linear_fields(hw), tokens)
    if key not in _CYCLES:
        if step.mnemonic == "EXPERT":
            fc1, fc2 = _expert_linears(step, hw, tokens)
            _CYCLES[key] = ((fc1, fc2), (linear_overlap(fc1), linear_overlap(fc2)),
                            (fc1.in_features, fc1.in_features + fc2.in_features))
        else:
            job = step.descriptor(hw, tokens=tokens)
            _CYCLES[key] = ((job,), (linear_overlap(job),), (1, 1))
    jobs, overlaps, (part, whole) = _CYCLES[key]
    x = by_mover.get("x", 0)
    if step.mnemonic == "EXPERT":
        first = x * part // whole
        return sum(max(0, alone(n) - overlap) for n, overlap in zip((first, x - first), overlaps))
    return paced_wait(jobs[0], hw, x_arrival(jobs[0], hw, by_mover, bandwidth,
                                             memory_bandwidth), x, overlaps[0])


def _overlap(step, hw, by_mover, bandwidth, memory_bandwidth, latency=0) -> tuple:
    """``(wait, drain)`` of a step other than a linear one (:func:`~moevit.hw.cost.cycles.
    memory_wait`, :func:`~moevit.hw.cost.cycles.drain_cycles`)."""
    from moevit.hw.cost.cycles import drain_cycles, memory_wait

    if step.mnemonic not in ("ATTENTION", "ROUTE", "LAYERNORM", "PATCHIFY"):
        return 0, 0                     # no overlap term (cycles.memory_wait, drain_cycles)
    key = ("descriptor", step.shape, hw)
    if key not in _CYCLES:
        _CYCLES[key] = _other_descriptor(step, hw)
    d = _CYCLES[key]
    return (memory_wait(d, hw, by_mover, bandwidth, memory_bandwidth, routed=step.routed,
                        latency=latency),
            drain_cycles(d, hw, bandwidth, memory_bandwidth, by_mover, routed=step.routed))


def _other_descriptor(step, hw):
    """The descriptor of a step other than a linear one on ``hw``; a MoE step whose tokens
    exceed the token buffer on a buffer that holds them (cost per token as if chunked)."""
    from moevit.hw.program.descriptor import DescriptorError

    try:
        return step.descriptor(hw)
    except DescriptorError:
        tokens = dict(step.fields).get("tokens", 0)
        if step.unit != "moe" or tokens <= hw.max_tokens:
            raise
        return step.descriptor(hw.replace(max_tokens=-(-tokens // hw.rows) * hw.rows))


def _other_cycles(step, hw) -> tuple:
    """(compute cycles, bytes written) of a step other than a linear one, on ``hw``; a
    MoE step whose tokens exceed the token buffer is cost per token as if chunked."""
    from moevit.hw.cost.cycles import compute_cycles, written_bytes

    # What these steps' compute reads: the attention, LayerNorm and COMBINE lanes, the bus,
    # the columns, buffers.
    key = (step.shape, hw.heads_parallel, hw.row_lanes, hw.score_lanes, hw.context_width,
           hw.kv_banks, hw.pipelined_heads, hw.norm_lanes, hw.combine_width, hw.bus_width,
           hw.cols, hw.max_tokens, hw.kv_depth, hw.max_in, hw.max_head_dim)
    if key not in _CYCLES:
        d = _other_descriptor(step, hw)
        _CYCLES[key] = (compute_cycles(d, hw, routed=step.routed),
                        written_bytes(d, routed=step.routed))
    return _CYCLES[key]


def _split(tokens, limit):
    """Token counts of ``tokens`` cut into chunks of at most ``limit``."""
    full, rest = divmod(tokens, limit)
    return [limit] * full + ([rest] if rest else [])


@dataclass
class Prediction:
    """A program's predicted run of ``batch`` images: cycles per unit and bound."""

    cycles: int
    batch: int
    units: dict            # unit -> cycles (an EXPERT's on "expert": the linear kernel's work)
    memory_cycles: int     # cycles of memory-bound instructions
    bytes: int
    chunked: bool          # a sequence was longer than the token buffer
    compute_bound: dict = field(default_factory=dict)  # unit -> its compute-bound cycles
    demand: dict = field(default_factory=dict)  # bytes on each shared resource (lane_demand)


def _chunk_latency(step, hw, tokens, compute, latency, linear, dram) -> tuple:
    """:func:`~moevit.hw.cost.cycles.latency_cycles` ``(floor, exposed)`` of ``step`` (a
    linear step's chunk of ``tokens``, moving ``dram``: its DRAM bytes per mover) on a
    memory of ``latency`` cycles."""
    from moevit.hw.cost.cycles import burst_phases, latency_cycles

    if not latency:
        return 0, 0
    # The bursts depend on the shape, the array, the bus and the attention's head lanes (an
    # EXPERT's phases also on its jobs' compute: the array's chains).
    key = ("bursts", step.shape, tokens, *_linear_fields(hw), hw.bus_width, hw.heads_parallel)
    if key not in _CYCLES:
        d = (step.descriptor(hw, tokens=tokens) if linear and step.mnemonic == "LINEAR"
             else _other_descriptor(step, hw))
        _CYCLES[key] = burst_phases(d, hw, routed=tokens if step.mnemonic == "EXPERT" else None)
    reads = any(n for mover, n in dram.items() if mover != "write")
    return latency_cycles(step.mnemonic, _CYCLES[key], hw, compute, latency, dram_reads=reads,
                          onchip=step.onchip,
                          read_ahead=bool(hw.expert_prefetch) and step.after_expert,
                          dram_bytes=reads or bool(dram.get("write")))


def predict(steps, hw, bandwidth, batch=1, memory_bandwidth=None, latency=0) -> Prediction:
    """Cycles of one run of ``steps`` (``(step, count)`` pairs, :meth:`Workload.steps`: a
    program that computes ``batch`` images a run, the workload's) on ``hw`` at
    ``bandwidth`` bytes a cycle per memory port and ``memory_bandwidth`` for all
    (:func:`~moevit.hw.cost.cycles.memory_cycles`) answering each burst ``latency`` cycles
    after its address; ``max(compute + wait, memory + drain, floor) + ISSUE_CYCLES +
    exposed`` per instruction and chunk, as :func:`~moevit.hw.cost.cycles.program_cycles`).

    Raises
    ------
    DescriptorError
        A step ``hw`` cannot run (a sequence longer than the key/value buffers, a layer
        wider than the input buffer).
    """
    context = (hw, bandwidth, memory_bandwidth, latency)
    if _STEP_COSTS.get("context") != context:     # a step's cost is the same in every task
        _STEP_COSTS.clear()
        _STEP_COSTS["context"] = context
    total = memory_bound = moved = 0
    units, compute_bound, demand = {}, {}, {}
    chunked = False
    for step, count in steps:
        if step.shape not in _STEP_COSTS:
            _STEP_COSTS[step.shape] = _step_cost(step, hw, bandwidth, memory_bandwidth, latency)
        parts, split = _STEP_COSTS[step.shape]
        chunked |= split
        for unit, cycles, nbytes, bound, part_demand in parts:
            cycles *= count
            total += cycles
            moved += nbytes * count
            units[unit] = units.get(unit, 0) + cycles
            if bound:
                memory_bound += cycles
            else:
                compute_bound[unit] = compute_bound.get(unit, 0) + cycles
            for r, n in part_demand.items():
                demand[r] = demand.get(r, 0) + n * count
    return Prediction(total, batch, units, memory_bound, moved, chunked, compute_bound, demand)


#: The last :func:`predict` context (hw, bandwidths, latency) and each step's
#: :func:`_step_cost` in it: the tasks and batches of one point share most steps.
_STEP_COSTS = {}


def _step_cost(step, hw, bandwidth, memory_bandwidth, latency) -> tuple:
    """``(parts, chunked)`` of one ``step`` of :func:`predict`: per chunk of its tokens (one
    for a step other than a linear one) ``(unit, cycles, DRAM and on-chip bytes, memory-bound,
    bytes on each shared resource)``; ``chunked``: its sequence was cut."""
    from moevit.hw.cost.cycles import (expert_scan_cycles, expert_stream_loss, issue_cycles,
                                       lane_demand, memory_cycles)
    from moevit.hw.program.isa import LANE_OF

    issue = issue_cycles(hw)
    f = step.values
    chunked = False
    linear = step.mnemonic == "LINEAR" or (step.mnemonic == "EXPERT" and step.routed)
    if linear:
        tokens = f["tokens"] if step.mnemonic == "LINEAR" else step.routed
        chunks = _split(tokens, hw.max_tokens)
        chunked = len(chunks) > 1
        parts = []
        for n in chunks:
            out = n * (f["out_features"] if step.mnemonic == "LINEAR"
                       else f["hidden"] + f["dim"])
            chunk = moved_bytes(step, hw, tokens=n, written=out)
            chunk.pop("list", None)
            parts.append([_chunk_cycles(step, hw, n), chunk, n])
        if step.mnemonic == "EXPERT":  # the routing, read and scanned once
            parts[0][1]["list"] = f["tokens"] * f["top_k"]
            parts[0][0] += expert_scan_cycles(hw, f["tokens"] * f["top_k"], step.routed)
    else:
        compute, written = _other_cycles(step, hw)
        parts = [[compute, moved_bytes(step, hw, written=written), step.routed]]
    unit = "expert" if step.mnemonic == "EXPERT" else step.unit
    costs = []
    for compute, by_mover, n in parts:
        nbytes = sum(by_mover.values())
        inside = (0, 0)
        if step.onchip:
            by_mover, memory, *inside = _onchip_memory(step, hw, by_mover, n, bandwidth,
                                                       memory_bandwidth)
        else:
            memory = memory_cycles(hw, by_mover, bandwidth, memory_bandwidth,
                                   LANE_OF[step.mnemonic])
        if linear:
            wait = _chunk_wait(step, hw, n, by_mover, bandwidth, memory_bandwidth)
            drain = _chunk_drain(step, hw, n, by_mover, bandwidth, memory_bandwidth)
        else:
            wait, drain = _overlap(step, hw, by_mover, bandwidth, memory_bandwidth, latency)
        floor, exposed = _chunk_latency(step, hw, n, compute, latency, linear, by_mover)
        if step.mnemonic == "EXPERT" and step.routed:
            drain += expert_stream_loss(hw)
        if step.after_expert and hw.expert_prefetch and len(parts) == 1:
            memory -= _carry(step, hw, n, compute + wait, memory, drain, floor, bandwidth,
                             memory_bandwidth)
        memory = max(memory + drain, floor)
        costs.append((unit, max(compute + wait, memory) + issue + exposed, nbytes,
                      memory > compute + wait,
                      lane_demand(hw, LANE_OF[step.mnemonic], by_mover, *inside)))
    return costs, chunked


def _carry(step, hw, n, busy, memory, drain, floor, bandwidth, memory_bandwidth) -> int:
    """:func:`~moevit.hw.cost.cycles.expert_carry` of an EXPERT ``step`` (``n`` routed
    tokens; ``busy``: its compute and wait cycles, ``memory``, ``drain``, ``floor``) after
    an EXPERT of its shape (its neighbour under :data:`ROUTING`, a few tokens apart):
    the carry at which the one before leaves as many idle cycles as this one takes
    (a few rounds from none)."""
    from moevit.hw.cost.cycles import expert_carry, expert_idle

    fc1, fc2 = _expert_linears(step, hw, n)
    # What the FIFO and fc1's bytes allow, whatever the idle cycles (the search's hot loop).
    most = expert_carry(fc1, hw, bandwidth, memory_bandwidth, idle=math.inf)
    carry = 0
    for _ in range(4):
        work = max(busy, memory - carry + drain, floor)
        before, carry = carry, min(most, expert_idle(fc2, work, memory - carry))
        if carry == before:       # a fixed point: the rounds left would change nothing
            break
    return carry


def interleave_cycles(step, hw) -> int:
    """The cycles the compiler interleaves a program of two issue lanes by
    (:func:`~moevit.hw.program.compiler.interleave`): ``step`` alone on ``hw`` at one bus
    word a cycle a port, every tensor in DRAM (so the order does not depend on the board
    or on the on-chip window)."""
    key = ("interleave", step.mnemonic, step.routed, step.fields, hw)
    if key not in _CYCLES:
        plain = Step(step.mnemonic, step.unit, step.fields, step.routed)
        _CYCLES[key] = predict([(plain, 1)], hw, hw.bus_width / 8).cycles
    return _CYCLES[key]


def lanes_order(work, task, hw):
    """``(steps, concurrent)`` of ``work`` (a workload compiled for two issue lanes) in the
    order the compiler gives ``hw`` (:func:`~moevit.hw.program.compiler.schedule` of its
    segments, :func:`~moevit.hw.program.compiler.segments_of` its streams: the two half
    batches, or one image's two token chunks between its joint steps, interleaved on
    :func:`interleave_cycles`), with their flags."""
    from moevit.hw.program.compiler import schedule, segments_of
    from moevit.hw.program.isa import LANE_OF

    steps = work.in_order(task, hw.onchip_bytes)
    segments = segments_of(work.streams)
    order, concurrent, _ = schedule([(kind, [[(LANE_OF[steps[k].mnemonic],
                                               interleave_cycles(steps[k], hw)) for k in part]
                                             for part in parts]) for kind, parts in segments])
    # Chained again in this order: an EXPERT's neighbours are the interleaved ones.
    return list(chain_experts([steps[segments[s][1][max(stream, 0)][i]]
                               for s, stream, i in order])), concurrent


def predict_lanes(work, task, hw, bandwidth, batch=1, memory_bandwidth=None, latency=0):
    """:func:`predict` of ``work`` (a workload compiled for two issue lanes) on ``hw``, a
    top of two: its two half batches interleaved again as the compiler would for ``hw``
    (:func:`~moevit.hw.program.compiler.interleave` on :func:`interleave_cycles`), each
    step's cycles as :func:`predict` gives them alone on the board, laid on the two lanes
    sharing the memory (:func:`~moevit.hw.cost.cycles.lane_timeline`); the units' cycles are
    their sums alone, the run's the span."""
    from moevit.hw.cost.cycles import lane_capacity, lane_timeline

    steps, concurrent = lanes_order(work, task, hw)
    alone = {}
    for step in steps:
        if step.shape not in alone:
            alone[step.shape] = predict([(step, 1)], hw, bandwidth, batch, memory_bandwidth,
                                        latency)
    runs = [alone[step.shape] for step in steps]
    cycles = [run.cycles for run in runs]
    _, ends = lane_timeline([s.mnemonic for s in steps], concurrent, cycles,
                            [run.demand for run in runs],
                            lane_capacity(hw, bandwidth, memory_bandwidth))
    units, compute_bound = {}, {}
    for run in runs:
        for unit, n in run.units.items():
            units[unit] = units.get(unit, 0) + n
        for unit, n in run.compute_bound.items():
            compute_bound[unit] = compute_bound.get(unit, 0) + n
    return Prediction(max(ends), batch, units,
                      sum(r.memory_cycles for r in runs), sum(r.bytes for r in runs),
                      any(r.chunked for r in runs), compute_bound)


# The search --------------------------------------------------------------------------------

@dataclass
class Point:
    """One design point: its HwConfig, resources and predicted run."""

    hw: object
    resources: object
    latency_cycles: int              # the slowest task, batch 1
    prediction: Prediction           # that task's batch-1 run
    task: str
    best_batch: int = 1
    best_cycles_per_image: float = 0.0
    share: float = 0.0
    largest: object = None           # the fitting point with the most MAC units
    best_prediction: Prediction = None   # that task's run at the best batch

    @property
    def mac_units(self) -> int:
        return self.hw.macs + self.hw.attention_macs

    @property
    def latency_ms(self) -> float:
        return self.latency_cycles / (self.hw.clock_mhz * 1e3)


def _buses(board, cols):
    """The bus widths of :data:`BUS_CHOICES` the top can have beside ``cols`` array columns:
    the linear engine writes whole bus words of outputs, so the columns are a multiple of
    the bus's bytes (:class:`moevit.hw.top.linear_engine.LinearEngine` refuses the rest)."""
    return [bus for bus in BUS_CHOICES[board.host] if cols % (bus // 8) == 0]


def _divisors(n, choices):
    return [c for c in choices if n % c == 0]


def _norm_lanes(steps, hw, bandwidth, model) -> int:
    """The fewest LayerNorm lanes that give the ``LAYERNORM`` ``steps`` their fewest
    cycles on ``hw`` at ``bandwidth`` (more lanes stop paying once the instruction is
    memory-bound): among those the model's width, the bus and ``max_in`` allow."""
    key = ("norm_lanes", hw.bus_width, hw.max_in, hw.memory_ports, hw.weight_ports,
           hw.chan_striped, hw.issue_lanes, bandwidth, model.name)
    if key not in _CYCLES:
        allowed = [n for n in _divisors(model.dim, NORM_LANES)
                   if 8 * n <= hw.bus_width and hw.max_in % n == 0]
        _CYCLES[key] = min(allowed, key=lambda n: (
            predict(steps, hw.replace(norm_lanes=n), bandwidth).cycles, n))
    return _CYCLES[key]


def _combine_lanes(steps, hw, bandwidth) -> int:
    """``combine_lanes`` for ``hw``: the fewest of the columns' power-of-two divisors that
    give the ``COMBINE`` ``steps`` their fewest cycles at ``bandwidth`` (each lane costs
    five DSPs, and past the pace its slots arrive at, nothing), 0 when that is every
    column. Judged with every tensor in DRAM: on chip the slots arrive a bus word a
    cycle, so the choice may be short of that pace (the search's cycles are then the
    ones it gets)."""
    key = ("combine_lanes", hw.cols, hw.bus_width, hw.memory_ports, hw.weight_ports,
           hw.chan_striped, hw.issue_lanes, bandwidth, steps)
    if key not in _CYCLES:
        allowed = [n for n in NORM_LANES if n <= hw.cols and hw.cols % n == 0]
        lanes = min(allowed, key=lambda n: (
            predict(steps, hw.replace(combine_lanes=n), bandwidth).cycles, n))
        _CYCLES[key] = 0 if lanes == hw.cols else lanes
    return _CYCLES[key]


def _fits(res, board, fabric=True):
    """The first resource over its usable share, or None; ``fabric``: LUT and FF count
    (Yosys's upper bounds), else only DSP, BRAM and URAM."""
    for name in ("dsp", "bram36", "uram", "lut", "ff")[:5 if fabric else 3]:
        limit = getattr(board, name) * USABLE[name]
        if getattr(res, name) > limit:
            return name
    return None


#: Bursts in flight a mover, on every point: under a memory latency of tens of cycles the
#: linear engine's one-beat y writes and row reads need many (4 bound the tiny top at 100
#: cycles: +26 %, 16 +3.7 %), and they cost next to nothing: a memory port's movers by
#: Yosys, 733 LUT / 269 FF at 4, 737 / 305 at 64 (128-bit bus; 1,212 / 269 and 1,216 / 305
#: at 512 bits; 2026-12-03): only the bursts' bookkeeping FIFOs grow.
OUTSTANDING = 64


def _base_hw(model, board):
    from moevit.hw.config import HwConfig, products_width

    widest = max(model.patch_dim, model.dim, model.mlp_hidden, model.expert_hidden)
    # Every point overlaps: the expert schedule (the sequencer's look-ahead and the next
    # job's weights read ahead, resources.PREFETCH), a bank's load with its first tile
    # (weight_streaming, a compare in the kernel's issue; on one issue lane neither makes
    # an instruction slower, on two, _streaming_at_best_batch), an attention head's K
    # and V with the head before where it is free (kv_banks, :func:`_kv_banks`; its rows
    # straight behind the head before's, pipelined_heads), and a
    # linear operation's first step behind one word of each row of x, not its first token
    # tile whole (x_by_words: a few counters in the x tiler); a chained array's x a step's
    # features a beat (wide_x, set with the chain: Yosys on the x tiler of a 9-row, 512-bit
    # point with chains of 4, 2026-12-08: 2,376 -> 2,061 LUT and 339 -> 354 RAM32M16 for its
    # FIFO, 4,756 -> 4,752 FF, so no term of its own). Each MAC unit's accumulator
    # and its shadow are as wide as the widest input's sums need (about 2 LUT and 2 FF a
    # bit and MAC unit: 768 inputs need 25 bits, 14 of each fewer a unit than 32).
    return HwConfig(name=f"{board.name}-{model.name}", max_in=widest,
                    acc_width=products_width(widest),
                    kv_depth=-(-model.tokens // 16) * 16,
                    max_head_dim=model.head_dim, clock_mhz=float(board.clock_mhz),
                    score_lanes=math.gcd(8, model.head_dim), rows=4, cols=8, post_lanes=2,
                    max_tokens=-(-model.tokens // 4) * 4,
                    bus_width=BUS_CHOICES[board.host][0], max_outstanding=OUTSTANDING,
                    expert_prefetch=1, weight_streaming=1, x_by_words=1)


def _grid(quick, tokens):
    if quick:
        return fitted_rows((8, 32), tokens), (16, 32), (8,), (16, 64), (1, 2)
    return fitted_rows(ROWS, tokens), COLS, POST_LANES, SCORE_LANES, CHAINS


def _multipliers(cols, chains) -> tuple:
    """``(dsp_packing, chain_depth)`` pairs of an array of ``cols`` columns: one multiplier a
    position, and where the columns pair up two MACs a DSP48E2 in each of ``chains``. A
    chain without packing is left out: the packed chain of the same depth has its cycles,
    half its DSPs and fewer LUTs (one accumulator a pair of columns)."""
    return ((1, 1),) + (tuple((2, d) for d in chains) if cols % 2 == 0 else ())


def fitted_rows(grid, tokens) -> tuple:
    """``grid``'s row counts and, beside each, the fewest rows that hold ``tokens`` in one
    token tile less, where that is at most :data:`FITTED_ROWS_SLACK` more rows: a linear
    layer takes a pass of ``in_features`` cycles a token tile however few of its rows are
    busy, and edge-moe's 129 tokens on 32 rows leave one token in the fifth tile (the array
    81 % busy); 33 rows take them in four."""
    fitted = ((r, -(-tokens // (tokens // r))) for r in grid if tokens >= r)
    return tuple(sorted(set(grid) | {f for r, f in fitted if f <= r * (1 + FITTED_ROWS_SLACK)}))


def _max_tokens(hw, tokens, board, the_fit, fabric=True):
    """The deepest token buffer that fits: the most images of ``tokens`` (a power of two,
    up to MAX_BATCH), or, when not even one image fits, the deepest that does (chunks)."""
    from moevit.hw.cost.resources import resources

    best = None
    batch = 1
    while batch <= MAX_BATCH:
        depth = -(-tokens * batch // hw.rows) * hw.rows
        candidate = hw.replace(max_tokens=depth)
        res = resources(candidate, the_fit)
        if _fits(res, board, fabric):
            break
        best = (candidate, res)
        batch *= 2
    if best is None:  # chunks of the sequence
        for depth in (512, 256, 128, 64):
            depth = -(-depth // hw.rows) * hw.rows
            if depth >= tokens:
                continue
            candidate = hw.replace(max_tokens=depth)
            res = resources(candidate, the_fit)
            if not _fits(res, board, fabric):
                return candidate, res
    return best


def _bandwidths(board, hw):
    """``(bandwidth, memory_bandwidth, latency)`` of :func:`predict` on ``board``: a port's,
    the memory's behind all ports, and its latency in ``hw``'s cycles."""
    from moevit.hw.cost.cycles import board_bandwidth, board_latency, board_memory_bandwidth

    return board_bandwidth(board, hw), board_memory_bandwidth(board, hw), \
        board_latency(board, hw)


def _window(work, hw, board, the_fit, fabric):
    """``hw`` with the largest on-chip window of :data:`ONCHIP_CHOICES` that fits the board
    beside the rest, up to the one that holds every activation the compiler places on chip
    (:meth:`Workload.onchip_need`): more on chip never adds DRAM bytes. (Not tried: a
    smaller window for an instruction whose two on-chip streams would go faster on two
    DRAM ports than through the window's one read port.)"""
    from moevit.hw.cost.resources import resources

    need = work.onchip_need()
    for size in sorted((c for c in ONCHIP_CHOICES if 0 < c <= need), reverse=True):
        candidate = hw.replace(onchip_bytes=size)
        if not _fits(resources(candidate, the_fit), board, fabric):
            return candidate
    return hw


def _port_counts(board, hw):
    """The memory port counts of :data:`PORT_CHOICES` the board has and the top can take
    (two at least on two issue lanes)."""
    return [n for n in PORT_CHOICES
            if hw.issue_lanes <= n <= min(board.ports, hw.MAX_MEMORY_PORTS)]


def _stripes(ports):
    """``(weight_ports, chan_striped)`` choices on ``ports`` memory ports, the cheaper first:
    the weights over 1, 2, 4 ... of them (:data:`PORT_CHOICES`), and when striped, the
    constants on their own port or over the weights' ports too (else the port they share
    with a stripe of the weights carries more than the others, and the weight stream, a
    beat of every stripe port at a time, goes at its pace; its striper costs LUT RAM)."""
    return [(w, chan) for w in PORT_CHOICES if w <= ports for chan in ((0, 1) if w > 1 else (0,))]


def _ports(work, hw, board, the_fit, fabric):
    """``(hw, resources, runs per task)`` with the memory ports of :data:`PORT_CHOICES`
    the board has, and the weights striped over as many of them (``weight_ports``, the
    same choices; the constants with them or not, :func:`_stripes`): the fewest ports, then
    the fewest weight ports, the constants unstriped first, whose slowest task is
    within :data:`PORTS_SLACK` of the best; more are tried only while the point is
    memory-bound and they fit."""
    from moevit.hw.cost.resources import resources

    tried = []
    for ports in _port_counts(board, hw):
        # The weights (and constants) striped over 1, 2, 4 ... of the ports, each stripe's
        # FIFOs counted; a choice that does not fit tried with fewer lanes.
        for weights, chan in _stripes(ports):
            candidate = hw.replace(memory_ports=ports, weight_ports=weights, chan_striped=chan)
            if tried:
                candidate = _fewer_lanes(candidate, board, the_fit, fabric)
                if candidate is None:
                    break
            res = resources(candidate, the_fit)
            runs = batch1_runs(work, candidate, board)
            tried.append((max(r.cycles for r in runs.values()), candidate, res, runs))
            if not any(r.memory_cycles for r in runs.values()):
                break                   # compute-bound everywhere: more ports gain nothing
        if candidate is None or not any(r.memory_cycles for r in runs.values()):
            break
    best = min(cycles for cycles, *_ in tried)
    return next((hw, res, runs) for cycles, hw, res, runs in tried
                if cycles <= best * (1 + PORTS_SLACK))


def _fewer_lanes(hw, board, the_fit, fabric):
    """``hw``, or with its COMBINE and LayerNorm lanes halved in turn (COMBINE first: five
    DSP48E2 and ~520 LUTs a lane) until it fits ``board``; None when one lane of each does
    not. More memory ports then trade against lanes (:func:`_ports`), and
    :func:`_lanes_on_ports` gives back the lanes the ports leave room for."""
    from moevit.hw.cost.resources import resources

    order = ["combine_lanes", "norm_lanes"]      # the one halved last goes to the end
    while _fits(resources(hw, the_fit), board, fabric):
        lanes = {"combine_lanes": hw.combine_width, "norm_lanes": hw.norm_lanes}
        name = next((n for n in order if lanes[n] > 1), None)
        if name is None:
            return None
        hw = hw.replace(**{name: lanes[name] // 2})
        order.remove(name)
        order.append(name)
    return hw


def _lanes_on_ports(work, hw, res, runs, norms, combines, board, the_fit, fabric):
    """``(hw, resources, runs)`` with the LayerNorm and COMBINE lanes chosen again on the
    memory ports :func:`_ports` chose (more ports feed more lanes), when that changes them
    and fits."""
    from moevit.hw.cost.resources import resources
    from moevit.model.config import get_config

    model = get_config(work.config)
    port = _bandwidths(board, hw)[0]
    candidate = hw.replace(norm_lanes=_norm_lanes(norms, hw, port, model),
                           combine_lanes=_combine_lanes(combines, hw, port))
    if candidate == hw:
        return hw, res, runs
    fitted = resources(candidate, the_fit)
    if _fits(fitted, board, fabric):
        return hw, res, runs
    return candidate, fitted, batch1_runs(work, candidate, board)


def batch1_runs(work, hw, board) -> dict:
    """Task -> the :class:`Prediction` of one image of ``work`` (a one-lane workload of batch
    1) on ``hw`` on ``board``; with ``hw.token_chunks``, of the program the compiler then
    gives it: the image's token chunks interleaved on the two lanes (:func:`predict_lanes`)."""
    port, memory, latency = _bandwidths(board, hw)
    if hw.token_chunks:
        chunked = workload(work.config, lanes=2, chunks=hw.token_chunks)
        return {t: predict_lanes(chunked, t, hw, port, 1, memory, latency) for t in work.tasks}
    return {t: predict(work.steps(t, hw.onchip_bytes), hw, port, memory_bandwidth=memory,
                       latency=latency) for t in work.tasks}


def _batches(tokens, hw):
    """The batches :func:`_best_batch` tries on ``hw``: 1, the powers of two and the
    largest whose ``tokens`` rows a run the token buffer holds, up to MAX_BATCH."""
    largest = max(1, min(MAX_BATCH, hw.max_tokens // tokens))
    return sorted({1, largest} | {b for b in (2, 4, 8, 16, 32, 64) if b <= largest})


def _best_batch(work, hw, board, task):
    """(batch, cycles per image, its :class:`Prediction`) of the best throughput the token
    buffer allows, each batch predicted from its compiled batched program
    (:func:`workload`; on two issue lanes, its two half batches: :func:`predict_lanes`)."""
    best = (1, None, None)
    port, memory, latency = _bandwidths(board, hw)
    for batch in _batches(work.tokens, hw):
        if hw.issue_lanes == 2 and (batch > 1 or hw.token_chunks):  # two streams
            run = predict_lanes(workload(work.config, batch=batch, lanes=2,
                                         chunks=hw.token_chunks), task, hw, port, batch,
                                memory, latency)
        else:
            steps = workload(work.config, batch=batch).steps(task, hw.onchip_bytes)
            run = predict(steps, hw, port, batch, memory, latency)
        if best[1] is None or run.cycles / batch < best[1]:
            best = (batch, run.cycles / batch, run)
    return best


def _ports_at_best_batch(point, work, board, the_fit, fabric):
    """On a throughput board, ``point``'s memory ports and weight ports chosen again as
    :func:`_ports` chooses them, but by the cycles an image at the best batch: a batch
    reads each expert's weights once for all its images, so its balance of memory and
    compute is not batch 1's. ``point`` changes in place, to the fewest ports within
    :data:`PORTS_SLACK` of the fastest choice, when it is not within that itself."""
    from moevit.hw.cost.resources import resources

    tried = []
    for ports in _port_counts(board, point.hw):
        for weights, chan in _stripes(ports):
            hw = point.hw.replace(memory_ports=ports, weight_ports=weights, chan_striped=chan)
            res = resources(hw, the_fit)
            if _fits(res, board, fabric):
                continue
            best = _best_batch(work, hw, board, point.task)
            tried.append((best[1], hw, res, best))
    least = min(cycles for cycles, *_ in tried)
    # The point's own stay while within the slack of the fastest (the slack measured from
    # the fastest alone: a choice within it of the point's may still be past it).
    if point.best_cycles_per_image <= least * (1 + PORTS_SLACK):
        return
    cycles, hw, res, best = next(t for t in tried if t[0] <= least * (1 + PORTS_SLACK))
    _adopt(point, hw, res, work, board, the_fit, fabric)


def _window_at_best_batch(point, work, board, the_fit, fabric):
    """On a throughput board, ``point``'s on-chip window chosen again as :func:`_window`
    chooses it, but for each batch :func:`_best_batch` tries, from that batch's program:
    a batch's activations are ``batch`` times batch 1's, so the window batch 1 fills
    leaves most of them in DRAM. ``point`` changes in place when a larger window gives
    more images a second."""
    from moevit.hw.cost.resources import resources

    best = (point.best_cycles_per_image, point.hw)
    port, memory, latency = _bandwidths(board, point.hw)
    for batch in _batches(work.tokens, point.hw):
        batched = workload(work.config, batch=batch)
        hw = _window(batched, point.hw, board, the_fit, fabric)
        if hw.onchip_bytes <= point.hw.onchip_bytes:
            continue
        run = predict(batched.steps(point.task, hw.onchip_bytes), hw, port, batch, memory,
                      latency)
        if run.cycles / batch < best[0]:
            best = (run.cycles / batch, hw)
    if best[1] != point.hw:
        _adopt(point, best[1], resources(best[1], the_fit), work, board, the_fit, fabric)


def _on_two_lanes(point, board, the_fit, fabric, **changes):
    """``(hw, resources)`` of ``point`` on a top of two issue lanes (two memory ports at
    least; ``changes`` besides), or ``(None, None)`` when that does not fit ``board``."""
    from moevit.hw.cost.resources import resources

    hw = point.hw.replace(issue_lanes=2, memory_ports=max(2, point.hw.memory_ports), **changes)
    res = resources(hw, the_fit)
    if _fits(res, board, fabric) or hw.memory_ports > min(board.ports, hw.MAX_MEMORY_PORTS):
        return None, None
    return hw, res


def _lanes_at_best_batch(point, work, board, the_fit, fabric):
    """On a throughput board, ``point`` on a top of two issue lanes
    (``HwConfig.issue_lanes``; two memory ports at least) when that fits and gives more
    images a second at its best batch by more than :data:`PORTS_SLACK`: the linear
    kernel's half batch beside the other engines' (:func:`predict_lanes`). Whether it
    moved."""
    hw, res = _on_two_lanes(point, board, the_fit, fabric)
    if hw is None:
        return False
    if _best_batch(work, hw, board, point.task)[1] < point.best_cycles_per_image \
            * (1 - PORTS_SLACK):
        _adopt(point, hw, res, work, board, the_fit, fabric)
        return True
    return False


def _lanes_at_batch1(point, work, board, the_fit, fabric):
    """On a latency board, ``point`` on a top of two issue lanes in token chunks
    (``HwConfig.token_chunks``) when that fits and its slowest task's image takes fewer
    cycles by more than :data:`PORTS_SLACK`: the image's token-wise layers in two chunks,
    one chunk's linear layers beside the other's LayerNorm, routing and COMBINE (1), and
    the attention's query rows too (2), the faster (:func:`batch1_runs`). Each with its
    on-chip window chosen again (:func:`_window`): its tensors live longer, beside the
    other chunk's instructions, so it may need a larger one (zcu102-edge-moe with the
    attention in chunks: 4.00 ms in its window of 256 KiB, 3.79 in 512)."""
    from moevit.hw.cost.resources import resources

    best = None
    for chunks in (1, 2):
        hw, _ = _on_two_lanes(point, board, the_fit, fabric, token_chunks=chunks)
        if hw is None:
            return
        hw = _window(workload(work.config, lanes=2, chunks=chunks), hw, board, the_fit, fabric)
        cycles = max(r.cycles for r in batch1_runs(work, hw, board).values())
        if best is None or cycles < best[0]:
            best = (cycles, hw)
    cycles, hw = best
    if cycles < point.latency_cycles * (1 - PORTS_SLACK):
        _adopt(point, hw, resources(hw, the_fit), work, board, the_fit, fabric)


def _streaming_at_best_batch(point, work, board, the_fit, fabric):
    """On a throughput board, ``point`` without weight streaming when that gives more
    images a second at its best batch: on two issue lanes shorter linear instructions can
    interleave worse with the other lane's (u280 edge-moe at batch 16 in the compiler's
    greedy order before 2026-12-04: 1,514.4 images/s with it, 1,530.3 without; in today's,
    1,870.5 with it, 1,790.8 without; on one lane an instruction is never slower with it).
    Whether it moved."""
    from moevit.hw.cost.resources import resources

    if point.hw.issue_lanes == 1:
        return False
    hw = point.hw.replace(weight_streaming=0)
    if _best_batch(work, hw, board, point.task)[1] < point.best_cycles_per_image:
        _adopt(point, hw, resources(hw, the_fit), work, board, the_fit, fabric)
        return True
    return False


def _attention_lanes(model, base, score_grid, attention):
    """``base`` with each attention kernel the model takes: heads in parallel dividing its
    heads, row lanes (:data:`ROW_LANES`) up to its tokens, score lanes of ``score_grid``
    dividing its head width, QK's products one or two a DSP48E2 (``score_packing``: fewer
    DSP48E2, more block RAM); its context lanes :func:`_context_lanes` for the ``ATTENTION``
    steps ``attention``, and two banks of K and V where they take no more block RAM than
    one (:func:`_kv_banks`)."""
    for hp in _divisors(model.heads, range(1, model.heads + 1)):
        for rl in (r for r in ROW_LANES if r <= model.tokens):
            for sl in _divisors(model.head_dim, score_grid):
                for packing in (1, 2) if sl % 2 == 0 else (1,):
                    hw = base.replace(heads_parallel=hp, row_lanes=rl, score_lanes=sl,
                                      score_packing=packing)
                    hw = hw.replace(context_lanes=_context_lanes(hw, attention))
                    hw = _with_kv_banks(hw, _kv_banks(hw))
                    yield hw
                    # Fewer requantizers, a little slower: DSP48E2 for more lanes elsewhere.
                    k = hw.context_width
                    while hw.heads_parallel == 1 and k > 1:
                        k //= 2
                        yield hw.replace(context_lanes=k)


def _with_kv_banks(hw, banks):
    """``hw`` on ``banks`` banks of K and V, its heads pipelined on two (a few counters a
    row pipeline, :data:`~moevit.hw.cost.resources.FEATURES`)."""
    return hw.replace(kv_banks=banks, pipelined_heads=int(banks == 2))


def _kv_banks(hw) -> int:
    """2 when a second bank of K and V costs ``hw``'s attention kernel no block RAM (its
    buffers hold a bank of up to half a BRAM's depth: edge-moe's 144 tokens), else 1: a
    second bank only saves the heads' K and V loads, a few per cent of the attention's
    cycles, which the block RAM it would take from the token buffer and the on-chip
    window would cost more than (m3vit-s's 1,216 tokens on zcu102: 226.6 -> 271.7 ms)."""
    from moevit.hw.cost.resources import unit_resources

    one, two = (unit_resources("attention", _with_kv_banks(hw, k)).bram36 for k in (1, 2))
    return 2 if two == one else 1


def _context_lanes(hw, attention) -> int:
    """``context_lanes`` for ``hw``'s attention kernel: the fewest of its score lanes'
    power-of-two divisors that keep the ``attention`` steps' cycles within
    :data:`CONTEXT_SLACK` of a requantizer a score lane (each is two DSP48E2 and a rounding
    shifter, and the rows leave ``row_lanes`` every ``tokens * chunks`` cycles: a few keep
    up); 0, every score lane, on more than one head lane (``HwConfig``'s rule)."""
    if hw.heads_parallel > 1:
        return 0

    def cycles(lanes):
        return sum(_other_cycles(s, hw.replace(context_lanes=lanes))[0] * n
                   for s, n in attention)

    most = cycles(0) * (1 + CONTEXT_SLACK)
    return next((k for k in (1 << b for b in range(hw.score_lanes.bit_length()))
                 if k < hw.score_lanes and hw.score_lanes % k == 0 and cycles(k) <= most), 0)


def _kind(work, mnemonic) -> tuple:
    """``(step, count)`` of ``work``'s first task whose instructions are ``mnemonic``."""
    return tuple((s, n) for s, n in work.steps(next(iter(work.tasks))) if s.mnemonic == mnemonic)


def _adopt(point, hw, res, work, board, the_fit, fabric):
    """``point`` moved to ``hw`` (``res`` its resources): its batch-1 runs, LayerNorm and
    COMBINE lanes (:func:`_lanes_on_ports`), slowest task and best batch again."""
    runs = batch1_runs(work, hw, board)
    hw, res, runs = _lanes_on_ports(work, hw, res, runs, _kind(work, "LAYERNORM"),
                                    _kind(work, "COMBINE"), board, the_fit, fabric)
    point.task = max(runs, key=lambda t: runs[t].cycles)
    point.hw, point.resources = hw, res
    point.latency_cycles, point.prediction = runs[point.task].cycles, runs[point.task]
    point.best_batch, point.best_cycles_per_image, point.best_prediction = _best_batch(
        work, hw, board, point.task)


def search(board, config, *, quick=False, fabric=True, progress=True) -> list:
    """The design points of ``config`` that fit ``board``, best first (see the module
    description). ``fabric=False`` ignores the LUT and FF limits: Yosys leaves the
    accumulators Vivado packs into the DSP48E2 in fabric, so its LUT/FF are upper bounds
    that may stop a point Vivado would fit.

    Raises
    ------
    ConfigError
        No point fits: the message says what the smallest point needs and the board has.
    """
    from moevit.hw.boards import get_board
    from moevit.hw.cost.resources import _default_fit, unit_resources
    from moevit.model.config import get_config

    board = get_board(board) if isinstance(board, str) else board
    model = get_config(config)
    work = workload(config, progress=progress)
    the_fit = _default_fit()
    base = _base_hw(model, board)
    rows_grid, cols_grid, post_grid, lanes_grid, chain_grid = _grid(quick, model.tokens)
    usable_dsp = board.dsp * USABLE["dsp"]
    attention, norms, combines = (_kind(work, m) for m in ("ATTENTION", "LAYERNORM", "COMBINE"))

    # Stage 1: per share of the DSPs (and LUTs), the attention lanes within it with the
    # fewest cycles.
    lanes = []
    for hw in _attention_lanes(model, base, lanes_grid, attention):
        cycles = sum(_other_cycles(s, hw)[0] * n for s, n in attention)
        res = unit_resources("attention", hw, the_fit)
        lanes.append((cycles, res.dsp, res.lut if fabric else 0, hw.heads_parallel,
                      hw.row_lanes, hw.score_lanes, hw.context_lanes, hw.kv_banks))
    # Per share three picks: within its DSPs, with one row lane (the search before row lanes:
    # it keeps every point that one tried) and with any, and within its DSPs and LUTs (row
    # lanes cost LUTs the DSPs do not show); each tried once, at the smallest share giving it.
    stage1 = {}
    for share in ATTENTION_SHARES:
        for most_rows, lut_share in ((1, math.inf), (max(ROW_LANES), math.inf),
                                     (max(ROW_LANES), share)):
            fitting = [lane for lane in lanes if lane[1] <= share * usable_dsp
                       and lane[2] <= lut_share * board.lut * USABLE["lut"]
                       and lane[4] <= most_rows]
            if fitting and min(fitting)[3:] not in stage1.values():
                stage1[share, most_rows, lut_share] = min(fitting)[3:]

    # Stage 2: the linear array, packing, post lanes, bus, LayerNorm lanes and buffers under
    # the rest.
    candidates = []
    for (share, *_), (hp, rl, sl, cl, kb) in stage1.items():
        for r in rows_grid:
            for c in _divisors(model.dim, cols_grid):
                for packing, chain in _multipliers(c, chain_grid):
                    for post in _divisors(c, post_grid):
                        for bus in _buses(board, c):
                            candidates.append((share, hp, rl, sl, cl, kb, r, c, packing,
                                               chain, post, bus))
    _STAGE2.update(work=work, board=board, base=base, the_fit=the_fit, fabric=fabric,
                   model=model, norms=norms, combines=combines)
    try:
        with _workers(len(candidates)) as pool:
            points, misses = _stage2(pool, candidates, work, board, model, progress,
                                     desc=f"dse {board.name} {config}")
    finally:
        _STAGE2.clear()
    if not points:
        raise ConfigError(_no_fit_message(model, board, base, the_fit, misses))
    largest = max(points, key=lambda p: (p.mac_units, -p.latency_cycles))
    # A point the compiler can serve today (the whole sequence in the token buffer) before
    # one that needs token chunking.
    points = [p for p in points if p.hw.max_tokens >= model.tokens] or points
    ranked = _rank(points, work, board, the_fit, fabric)
    ranked[0].largest = largest
    return ranked


#: The search's state for :func:`_stage2_point` (set before the workers fork, so each
#: worker inherits it with the caches filled so far).
_STAGE2 = {}


@contextlib.contextmanager
def _workers(tasks):
    """A pool of one process per core for stage 2 (its points are independent and the
    search's minute is spent there), or None on one core or for a few points."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if (cores or 1) < 2 or tasks < 256:
        yield None
        return
    # Ctrl-C is the parent's to answer (it ends the pool): not a traceback from each worker.
    pool = multiprocessing.get_context("fork").Pool(
        min(cores, 8), initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        yield pool
    finally:
        pool.terminate()


def _stage2(pool, candidates, work, board, model, progress, desc):
    """``(points, misses)`` of stage 2: every candidate sized (:func:`_stage2_sized`: its
    token buffer, LayerNorm and COMBINE lanes; the limit a miss is over counted), then the
    sized ones evaluated (:func:`_stage2_point`: window, ports, lanes and their runs) in the
    order of :func:`stage2_bound`, the least first, until the next one's bound shows that
    neither it nor any after it can be chosen (:func:`_still_open`); then every one of the
    most MAC units that gives a point (the ``largest`` the row reports is the fastest of
    them). The points come back in the candidates' order, as the ranking's ties expect."""
    from tqdm import tqdm

    def run(function, items, bar):
        runs = pool.imap(function, items, chunksize=8) if pool else map(function, items)
        for result in runs:
            bar.update()
            yield result

    objective = OBJECTIVES[board.host][0]
    sized, misses = [], {}
    with tqdm(total=len(candidates), desc=desc, unit="point", disable=not progress,
              dynamic_ncols=True) as bar:
        bar.set_postfix_str("sizing")
        for index, (kind, value) in enumerate(run(_stage2_sized, candidates, bar)):
            if kind == "sized":
                sized.append((value[1], index, value[0]))      # (bound, order, item)
            elif kind == "miss":
                misses[value] = misses.get(value, 0) + 1
    sized.sort(key=lambda item: item[:2])
    # The ranking takes the points the compiler can serve (the whole sequence in the token
    # buffer) when there are any, else every point.
    ranked = [c for c in sized if c[2][1].max_tokens >= model.tokens] or sized
    evaluated = {}
    step = 64       # candidates evaluated between two looks at the bounds
    with tqdm(total=len(ranked), desc=desc, unit="point", disable=not progress,
              dynamic_ncols=True) as bar:
        bar.set_postfix_str("evaluating, the least bound first")
        start = 0
        while start < len(ranked) and _still_open(ranked[start][0], evaluated.values(),
                                                  objective):
            chunk = ranked[start:start + step]
            for (_, index, _), point in zip(chunk, run(_stage2_point, [c[2] for c in chunk],
                                                       bar)):
                if point is not None:
                    evaluated[index] = point
            start += len(chunk)
        if start < len(ranked):     # the bar ends full: the rest need no evaluation
            bar.total = start
            bar.set_postfix_str(f"{len(ranked) - start} left out by their bounds")
    # The largest point is the fastest of those with the most MAC units: every candidate of
    # the highest count that gives a point evaluated.
    for macs in sorted({_item_macs(item) for _, _, item in sized}, reverse=True):
        level = [(index, item) for _, index, item in sized if _item_macs(item) == macs]
        for index, item in level:
            if index not in evaluated:
                point = _stage2_point(item)
                if point is not None:
                    evaluated[index] = point
        if any(index in evaluated for index, _ in level):
            break
    return [evaluated[i] for i in sorted(evaluated)], misses


def _still_open(bound, points, objective) -> bool:
    """Whether a candidate of ``bound`` (:func:`stage2_bound`) could still be chosen beside
    the evaluated ``points`` (those the ranking takes): on a latency board, a bound within
    :data:`LATENCY_SLACK` of their fastest batch-1 latency (the ranking keeps no slower
    one); on a throughput board, a bound under their fewest cycles an image at the best
    batch (no batch of its beats its bound)."""
    points = list(points)
    if not points:
        return True
    if objective == "latency":
        return bound <= min(p.latency_cycles for p in points) * (1 + LATENCY_SLACK)
    return bound <= min(p.best_cycles_per_image for p in points)


def stage2_bound(work, hw, board) -> float:
    """What no point stage 2 makes of the sized ``hw`` (its window, memory ports, weight
    ports and lanes not chosen yet) can beat, in the board's objective's measure. On a
    latency board, cycles of the slowest task at batch 1: the linear array's steps and the
    attention's multiply-accumulates (:func:`kernel_cycles`, which no choice left changes)
    or every weight read once at the board's whole memory bandwidth, whichever is longer.
    On a throughput board, the cycles an image that no batch beats (:func:`array_bound`),
    the least over the tasks."""
    from moevit.hw.cost.cycles import board_memory_bandwidth

    if OBJECTIVES[board.host][0] == "throughput":
        return min(array_bound(work, hw, t) for t in work.tasks)
    memory = board_memory_bandwidth(board, hw)
    worst = 0.0
    for task in work.tasks:
        compute = weights = 0.0
        for step, count in work.steps(task):
            if step.mnemonic in ("LINEAR", "EXPERT", "ATTENTION"):
                compute += count * kernel_cycles(step, hw)
            weights += count * weight_bytes(step, hw) / memory
        worst = max(worst, compute, weights)
    return worst


def _item_macs(item) -> int:
    hw = item[1]
    return hw.macs + hw.attention_macs


def _stage2_sized(candidate):
    """Stage 2's first part for one ``(share, heads_parallel, row_lanes, score_lanes,
    context_lanes, kv_banks, rows, cols, packing, chain_depth, post_lanes, bus)``: its
    LayerNorm and COMBINE lanes and its deepest token buffer that fits, ``("sized",
    ((share, hw), bound))`` (:func:`stage2_bound`); ``("miss", the limit it is over)``; or
    ``(None, None)`` for a point the top cannot take."""
    from moevit.hw.cost.resources import resources

    s = _STAGE2
    work, board, the_fit, fabric, model = (s[k] for k in ("work", "board", "the_fit",
                                                          "fabric", "model"))
    share, hp, rl, sl, cl, kb, r, c, packing, chain, post, bus = candidate
    try:
        hw = _with_kv_banks(s["base"], kb).replace(
            heads_parallel=hp, row_lanes=rl, score_lanes=sl, context_lanes=cl, rows=r,
            cols=c, dsp_packing=packing, chain_depth=chain, wide_x=int(chain > 1),
            post_lanes=post, bus_width=bus, max_tokens=-(-model.tokens // r) * r)
    except ConfigError:
        return None, None
    port = _bandwidths(board, hw)[0]
    hw = hw.replace(norm_lanes=_norm_lanes(s["norms"], hw, port, model),
                    combine_lanes=_combine_lanes(s["combines"], hw, port))
    sized = _max_tokens(hw, model.tokens, board, the_fit, fabric)
    if sized is None:
        return "miss", _fits(resources(hw, the_fit), board, fabric)
    return "sized", ((share, sized[0]), stage2_bound(work, sized[0], board))


def _stage2_point(item):
    """Stage 2's second part for one sized ``(share, hw)`` (:func:`_stage2_sized`): its
    on-chip window, memory ports and lanes chosen, a :class:`Point` (on a throughput board
    with its best batch), or None for a point the top cannot take."""
    from moevit.hw.program.descriptor import DescriptorError

    s = _STAGE2
    work, board, the_fit, fabric = (s[k] for k in ("work", "board", "the_fit", "fabric"))
    share, hw = item
    try:
        hw, res, runs = _ports(work, _window(work, hw, board, the_fit, fabric), board,
                               the_fit, fabric)
        hw, res, runs = _lanes_on_ports(work, hw, res, runs, s["norms"], s["combines"], board,
                                        the_fit, fabric)
    except DescriptorError:
        return None
    task = max(runs, key=lambda t: runs[t].cycles)
    point = Point(hw, res, runs[task].cycles, runs[task], task, share=share)
    if OBJECTIVES[board.host][0] == "throughput":
        point.best_batch, point.best_cycles_per_image, point.best_prediction = _best_batch(
            work, hw, board, task)
    return point


def array_bound(work, hw, task) -> float:
    """Cycles per image that no batch of ``task`` on ``hw`` beats: its linear layers' and
    experts' multiply-accumulates per image (under :data:`ROUTING`) over the array's MAC
    units, or its attention's over the attention kernel's (per image at every batch),
    whichever is longer: each MAC unit does one a cycle at most, and the two kernels at
    most run side by side (two issue lanes)."""
    macs = attention = 0
    for step, count in work.steps(task):
        f = step.values
        if step.mnemonic == "LINEAR":
            macs += count * f["tokens"] * f["in_features"] * f["out_features"]
        elif step.mnemonic == "EXPERT":
            macs += count * step.routed * 2 * f["dim"] * f["hidden"]
        elif step.mnemonic == "ATTENTION":
            attention += count * kernel_cycles(step, hw)
    return max(macs / hw.macs, attention) / work.batch


def _rank(points, work, board, the_fit, fabric) -> list:
    """``points`` best first by the board's objective (:data:`OBJECTIVES`), each with its
    best batch: on a latency board those whose batch-1 latency is within
    :data:`LATENCY_SLACK` of the fastest, the fastest first (then the most images a second);
    on a throughput board every point :func:`array_bound` does not rule out, its window,
    memory ports and issue lanes chosen again at its best batch
    (:func:`_window_at_best_batch`, :func:`_ports_at_best_batch`,
    :func:`_lanes_at_best_batch`), the most images a second at its best batch first (then
    the fastest at batch 1)."""
    if OBJECTIVES[board.host][0] == "latency":
        fastest = min(p.latency_cycles for p in points)
        points = [p for p in points if p.latency_cycles <= fastest * (1 + LATENCY_SLACK)]
        for p in points:
            _lanes_at_batch1(p, work, board, the_fit, fabric)
            p.best_batch, p.best_cycles_per_image, p.best_prediction = _best_batch(
                work, p.hw, board, p.task)
        # Token chunks may have made the fastest faster: the slack from it again.
        fastest = min(p.latency_cycles for p in points)
        points = [p for p in points if p.latency_cycles <= fastest * (1 + LATENCY_SLACK)]
    if OBJECTIVES[board.host][0] == "throughput":
        # Most points cannot win, whatever their batch (array_bound); the rest, the most
        # promising first, each at its best batch.
        bounds = {id(p): array_bound(work, p.hw, p.task) for p in points}
        kept, best = [], float("inf")
        for p in sorted(points, key=lambda p: bounds[id(p)]):
            if bounds[id(p)] > best:
                break
            if p.best_prediction is None:     # stage 2 gives it on a throughput board
                p.best_batch, p.best_cycles_per_image, p.best_prediction = _best_batch(
                    work, p.hw, board, p.task)
            best = min(best, p.best_cycles_per_image)
            kept.append(p)
        points = kept
        best = float("inf")
        for p in sorted(points, key=lambda p: p.best_cycles_per_image):
            # More ports save at most the memory-bound instructions' cycles.
            run = p.best_prediction
            if (run.cycles - run.memory_cycles) / run.batch < best:
                _window_at_best_batch(p, work, board, the_fit, fabric)
                _ports_at_best_batch(p, work, board, the_fit, fabric)
                if _lanes_at_best_batch(p, work, board, the_fit, fabric):
                    _ports_at_best_batch(p, work, board, the_fit, fabric)
                # (without streaming the memory's share moves: the ports again)
                if _streaming_at_best_batch(p, work, board, the_fit, fabric):
                    _ports_at_best_batch(p, work, board, the_fit, fabric)
                best = min(best, p.best_cycles_per_image)
    if OBJECTIVES[board.host][0] == "latency":
        return sorted(points, key=lambda p: (p.latency_cycles, p.best_cycles_per_image,
                                             p.resources.dsp))
    return sorted(points, key=lambda p: (p.best_cycles_per_image, p.latency_cycles,
                                         p.resources.dsp))


def _no_fit_message(model, board, base, the_fit, misses):
    from moevit.hw.cost.resources import memories, resources

    smallest = base.replace(max_tokens=-(-model.tokens // base.rows) * base.rows)
    res = resources(smallest, the_fit)
    over = _fits(res, board) or max(misses, key=misses.get, default=None)
    if over is None:
        return (f"Model {model.name!r} fits no design point of the search's grid on board "
                f"{board.name}: no array's columns divide its width {model.dim}, or "
                f"no point can run its layers")
    need, have = getattr(res, over), getattr(board, over) * USABLE[over]
    where = ""
    if over == "bram36":
        biggest = max(((u, n, w, d) for u in ("linear", "attention", "moe", "layernorm")
                       for n, w, d, _ in memories(u, smallest)), key=lambda m: m[2] * m[3])
        where = (f"; the largest memory is the {biggest[0]} unit's {biggest[1]} buffer, "
                 f"{biggest[2]} bits x {biggest[3]} (the {model.tokens} tokens and "
                 f"{smallest.max_in} features of the model)")
    return (f"Model {model.name!r} fits no design point on board {board.name}: the smallest "
            f"needs {need:,.0f} {over.upper()} of the {have:,.0f} usable "
            f"({USABLE[over]:.0%} of {getattr(board, over):,}){where}")


# Rows, table, saved configs ----------------------------------------------------------------

#: The issue's targets, per (board, config): (field, ">=" or "<=", value).
TARGETS = {
    ("zcu102", "edge-moe"): (("mac_units", ">=", 4000), ("latency_ms", "<=", 2.0)),
    ("u280", "edge-moe"): (("best_fps", ">=", 1500),),
}
#: Units whose compute the search cannot scale (no lanes parameter in the HwConfig).
FIXED_UNITS = ("moe", "mover")


def _binding_run(point, board):
    """The run the board's objective ranks by (:data:`OBJECTIVES`): batch 1 on a latency
    board, the best batch on a throughput board."""
    if OBJECTIVES[board.host][0] == "throughput" and point.best_prediction is not None:
        return point.best_prediction
    return point.prediction


def _binding(point, board, fabric=True, work=None):
    """What limits the point in the run its board ranks by (:func:`_binding_run`):
    ``bandwidth`` when its memory-bound instructions take more cycles than any unit's
    compute-bound ones; else that unit, if the search cannot scale it (``compute:
    layernorm``, or the attention with every head and score lane of the model's
    (``work``) in parallel and the most row lanes the search tries: ``compute: attention
    (at its most lanes)``); else the resource
    that stops a larger array."""
    from moevit.model.config import get_config

    run, hw = _binding_run(point, board), point.hw
    unit = max(run.compute_bound, key=run.compute_bound.get, default=None)
    if unit is None or run.memory_cycles >= run.compute_bound[unit]:
        return "bandwidth"
    if unit in FIXED_UNITS:
        return f"compute: {unit}"
    if unit == "attention" and work is not None and hw.score_lanes == hw.max_head_dim \
            and hw.heads_parallel == get_config(work.config).heads \
            and hw.row_lanes == max(r for r in ROW_LANES if r <= work.tokens):
        return "compute: attention (at its most lanes)"
    # The on-chip window fills the block RAM the rest leaves (:func:`_window`), so it is
    # not what stops a larger array: the resources without it.
    from moevit.hw.cost.resources import resources

    without = resources(hw.replace(onchip_bytes=0)) if hw.onchip_bytes else point.resources
    used = {name: getattr(without, name) / (getattr(board, name) * USABLE[name])
            for name in ("dsp", "bram36", "uram", "lut", "ff")[:5 if fabric else 3]
            if getattr(board, name)}
    name = max(used, key=used.get)
    return {"dsp": "DSP", "bram36": "BRAM", "uram": "URAM", "lut": "LUT", "ff": "FF"}[name] \
        if used[name] > 0.75 else f"compute: {unit}"


def point_row(point, board, work, fabric=True) -> dict:
    """The figures of one design point, as ``moevit dse --json`` prints them."""
    hw, res = point.hw, point.resources
    hz = hw.clock_mhz * 1e6
    macs = work.macs[point.task]
    fps1 = hz / point.latency_cycles
    best_fps = hz / point.best_cycles_per_image
    attention_units = hw.attention_macs
    row = {
        "board": board.name, "config": work.config, "name": hw.name, "task": point.task,
        "mac_units": hw.macs + attention_units, "linear_mac_units": hw.macs,
        "attention_mac_units": attention_units, "dsp_packing": hw.dsp_packing,
        "chain_depth": hw.chain_depth,
        "memory_ports": hw.memory_ports, "weight_ports": hw.weight_ports,
        "norm_lanes": hw.norm_lanes, "combine_lanes": hw.combine_width,
        "context_lanes": hw.context_width, "kv_banks": hw.kv_banks,
        "onchip_bytes": hw.onchip_bytes,
        "issue_lanes": hw.issue_lanes,
        "latency_ms": point.latency_ms, "fps_batch1": fps1, "best_batch": point.best_batch,
        "best_fps": best_fps, "macs_per_image": macs, "gops": 2 * macs * fps1 / 1e9,
        "best_gops": 2 * macs * best_fps / 1e9,
        "dsp_efficiency": macs * fps1 / (res.dsp * hz) if res.dsp else 0.0,
        "binding_limit": _binding(point, board, fabric, work),
        "fabric_limits": fabric,
        "binding_batch": _binding_run(point, board).batch,
        "memory_bound_share": point.prediction.memory_cycles / point.prediction.cycles,
        "bandwidth_gbs": _bandwidth(board, hw) * hw.clock_mhz / 1e3,
        "memory_latency": _bandwidths(board, hw)[2],
        "max_outstanding": hw.max_outstanding,
        "dsp": int(res.dsp), "lut": round(res.lut), "ff": round(res.ff),
        "bram36": res.bram36, "uram": res.uram,
        "board_dsp": board.dsp, "board_lut": board.lut, "board_ff": board.ff,
        "board_bram36": board.bram36, "board_uram": board.uram,
        "unit_cycles": dict(point.prediction.units), "clock_mhz": hw.clock_mhz,
        "compiles": hw.max_tokens >= work.tokens, "routing": ROUTING,
        "objective": OBJECTIVES[board.host][0], "objective_reason": OBJECTIVES[board.host][1],
        "attention_share": point.share, "hw": hw.to_dict(),
    }
    floors = latency_floors(work, hw, board, point.task)
    row.update(weights_floor_ms=floors["weights"], serial_floor_ms=floors["serial"],
               units_floor_ms=floors["units"], units_binding=floors["units_binding"])
    for prefix, serial in (("lowest_floor_", False), ("lowest_serial_floor_", True)):
        lowest = lowest_floor(work, board, point.task, fabric, serial=serial)
        if lowest is not None:
            row.update({prefix + k: v for k, v in lowest.items()})
    if point.largest is not None:
        big = point.largest
        row.update(largest_mac_units=big.mac_units, largest_dsp=int(big.resources.dsp),
                   largest_latency_ms=big.latency_ms,
                   largest_array=_array(big.hw))
    for name, _, value in TARGETS.get((board.name, work.config), ()):
        if name == "mac_units" and point.mac_units < value:
            lowest = lowest_floor(work, board, point.task, fabric, mac_units=value)
            row["mac_target_floor"] = lowest and {**lowest, "mac_units_at_least": value}
            if lowest:
                serial = lowest_floor(work, board, point.task, fabric, mac_units=value,
                                      serial=True)
                row["mac_target_floor"]["serial_ms"] = serial and serial["ms"]
    row["targets"] = [_target(row, *t) for t in TARGETS.get((board.name, work.config), ())]
    return row


def _array(hw) -> str:
    """The linear array of ``hw``: rows x columns (x the chains' depth, where over one) / MACs
    a DSP48E2."""
    chain = f"x{hw.chain_depth}" if hw.chain_depth > 1 else ""
    return f"{hw.rows}x{hw.cols}{chain}/{hw.dsp_packing}"


def _bandwidth(board, hw):
    """Bytes a cycle the design gets: its ports', at most the board memory's."""
    port, memory, _ = _bandwidths(board, hw)
    return min(hw.memory_ports * port, memory)


def weight_bytes(step, hw) -> int:
    """Bytes of weights and channel constants ``step`` reads on ``hw`` (a LINEAR's, a
    chosen expert's two layers'), padded to whole ``cols`` tiles as the compiler lays
    them out: what every image reads at batch 1 wherever its activations are."""
    if step.mnemonic == "LINEAR" or (step.mnemonic == "EXPERT" and step.routed):
        moved = moved_bytes(step, hw)
        return moved.get("w", 0) + moved.get("chan", 0)
    return 0


def kernel_cycles(step, hw) -> float:
    """The fewest cycles ``step`` holds its unit of ``hw``, whatever runs beside it: on the
    linear array its steps, one a cycle (every tile of ``rows`` tokens by ``cols`` outputs
    takes ``in_features / chain_depth`` of them, so an expert's few tokens leave most rows
    idle); on the attention kernel its QK and PV multiply-accumulates on every MAC unit at
    once; another instruction's compute as the model costs it (LayerNorm, routing,
    COMBINE: a row a few cycles, nothing left to take)."""
    f = step.values

    def steps(tokens, inputs, outputs):
        tiles = sum(-(-n // hw.rows) for n in _split(tokens, hw.max_tokens))
        return tiles * -(-outputs // hw.cols) * -(-inputs // hw.chain_depth)

    if step.mnemonic == "LINEAR":
        return steps(f["tokens"], f["in_features"], f["out_features"])
    if step.mnemonic == "EXPERT":
        return steps(step.routed, f["dim"], f["hidden"]) + steps(step.routed, f["hidden"],
                                                                 f["dim"])
    if step.mnemonic == "ATTENTION":
        return 2 * f["rows"] * f["tokens"] * f["heads"] * f["head_dim"] / hw.attention_macs
    return _other_cycles(step, hw)[0]


def image_segments(work, task, onchip=0) -> tuple:
    """``task``'s steps for one image (program order) cut where a step needs every token
    of the one before: before each ATTENTION (every token's K and V) and before each MoE
    layer's first EXPERT (every token's routing: each expert's weights read once, for
    all its tokens). Within a segment every layer is token-wise, so a top could pipeline
    it token by token across its units. A tuple of segments, each a tuple of steps."""
    segments, previous = [[]], None
    for step in work.in_order(task, onchip):
        if step.mnemonic == "ATTENTION" or (step.mnemonic == "EXPERT"
                                            and previous != "EXPERT"):
            segments.append([])
        segments[-1].append(step)
        previous = step.mnemonic
    return tuple(tuple(s) for s in segments if s)


def _unit_of(step) -> str:
    return "linear" if step.mnemonic in ("LINEAR", "EXPERT") else step.unit


def _chained(busy, weights) -> tuple:
    """``(cycles, binding)`` of segments' per-unit cycles ``busy`` (a list of dicts) after
    one another, each as long as its busiest unit, and every weight read at any time
    (``weights`` cycles): the memory or the unit busiest over the segments."""
    chain, by_unit = 0, {}
    for units in busy:
        unit = max(units, key=units.get)
        chain += units[unit]
        by_unit[unit] = by_unit.get(unit, 0) + units[unit]
    if weights >= chain:
        return weights, "memory"
    return chain, max(by_unit, key=by_unit.get)


def latency_floors(work, hw, board, task) -> dict:
    """Lower bounds of ``task``'s latency at batch 1 on ``hw`` (ms): ``weights``, every
    weight read once at the bandwidth the design gets (:func:`_bandwidth`); ``serial``, the
    top's schedule (one instruction at a time) with every instruction holding its unit the
    fewest cycles it can (:func:`kernel_cycles`) or at its weights' reading, whichever is
    longer; ``units``, any schedule of these units that respects the image's data
    dependencies: :func:`image_segments` one after another, each as long as its busiest
    unit's :func:`kernel_cycles` (its layers pipelined token by token), and every weight
    read ahead whenever the memory is free, so at least their reading (``units_binding``
    names the memory or the unit busiest over the segments). Below ``serial`` only
    instructions run side by side can go, which no HwConfig field gives; below ``units``,
    no top built of these kernels."""
    bandwidth = _bandwidth(board, hw)
    weights = serial = 0.0
    for step, count in work.steps(task, hw.onchip_bytes):
        reading = weight_bytes(step, hw) / bandwidth
        weights += count * reading
        serial += count * max(kernel_cycles(step, hw), reading)
    busy = []
    for segment in image_segments(work, task, hw.onchip_bytes):
        units = {}
        for step in segment:
            units[_unit_of(step)] = units.get(_unit_of(step), 0) + kernel_cycles(step, hw)
        busy.append(units)
    chain, binding = _chained(busy, weights)
    floors = {name: cycles / (hw.clock_mhz * 1e3)
              for name, cycles in (("weights", weights), ("serial", serial), ("units", chain))}
    return {**floors, "units_binding": binding}


def lowest_floor(work, board, task, fabric=True, *, mac_units=0, serial=False):
    """The least batch-1 latency of ``task`` (ms) that any HwConfig of these kernels fitting
    ``board`` could have: over every linear array (rows up to the tokens, columns that
    divide the model's width in whole bus words, :func:`_multipliers` with :data:`CHAINS`)
    beside every attention kernel's lanes, everything else at its smallest (a token buffer
    of one tile, the narrowest bus), and the weights read on all the board's ports. On any
    schedule that respects the image's data dependencies (``serial`` False: the ``units``
    floor of :func:`latency_floors`, its segments each as long as the longer of the array's
    and the attention kernel's :func:`kernel_cycles` in it, at least the weights'
    reading), or on this top's, one instruction at a time (``serial``: each linear step's cycles or its
    weights' reading, whichever is longer, plus the attention's). LayerNorm, routing and
    COMBINE are left out. A dict of ``ms``, ``binding`` (``linear``, ``attention`` or
    ``memory``: what the floor is longest for), ``array`` (:func:`_array`), ``attention``
    (head lanes x row lanes x score lanes), its ``context_lanes`` and their
    ``mac_units``; None when nothing fits. ``fabric``: as :func:`search`; ``mac_units``:
    only HwConfigs with at least that many."""
    from moevit.hw.cost.resources import resources, unit_resources
    from moevit.model.config import get_config

    key = (repr(board), work.config, task, fabric, mac_units, serial)
    if key in _LOWEST:
        return _LOWEST[key]
    model = get_config(work.config)
    least = _base_hw(model, board).replace(expert_prefetch=0, combine_lanes=1)
    port, memory, _ = _bandwidths(board, least)
    bandwidth = min(max(_port_counts(board, least)) * port, memory)
    steps = work.steps(task)
    linear = [s for s, _ in steps if s.mnemonic in ("LINEAR", "EXPERT")]
    attending = [(s, n) for s, n in steps if s.mnemonic == "ATTENTION"]
    # Each shape's count per segment of the image (serial: one segment of them all), a row
    # a shape of ``linear`` and of the attention steps.
    segments = (work.in_order(task),) if serial else image_segments(work, task)
    counts = {}
    for i, segment in enumerate(segments):
        for step in segment:
            counts.setdefault(step.shape, np.zeros(len(segments)))[i] += 1
    linear_in, attention_in = (np.array([counts[s.shape] for s in kind]).reshape(len(kind), -1)
                               for kind in (linear, [s for s, _ in attending]))
    # The array's steps change with its rows only where a layer's or an expert's tokens
    # take one token tile less: the fewest rows for each count of tiles suffice.
    tokens = {s.values["tokens"] if s.mnemonic == "LINEAR" else s.routed for s in linear} - {0}
    row_counts = sorted({-(-n // tiles) for n in tokens for tiles in range(1, n + 1)})
    # (a bound on its floors, its cycles per segment, its weights' reading (serial: 0),
    # what binds its part of a serial floor, hw, the resources of all but the attention)
    arrays = []
    for cols in (c for c in range(1, model.dim + 1) if model.dim % c == 0):
        if not _buses(board, cols):
            continue                # the linear engine writes whole bus words
        for packing, chain in _multipliers(cols, CHAINS):
            for rows in row_counts:
                try:
                    hw = least.replace(rows=rows, cols=cols, dsp_packing=packing,
                                       chain_depth=chain, wide_x=int(chain > 1),
                                       post_lanes=min(_divisors(cols, POST_LANES)),
                                       max_tokens=rows, bus_width=min(_buses(board, cols)))
                except ConfigError:
                    continue
                held = np.array([kernel_cycles(s, hw) for s in linear])
                reading = np.array([weight_bytes(s, hw) / bandwidth for s in linear])
                beats, read = held @ linear_in.sum(axis=1), reading @ linear_in.sum(axis=1)
                if serial:
                    per_segment, read = np.maximum(held, reading) @ linear_in, 0.0
                else:
                    per_segment = held @ linear_in
                arrays.append((max(per_segment.sum(), read), per_segment, read,
                               "linear" if beats >= read else "memory", hw,
                               resources(hw) + unit_resources("attention", hw) * -1))
    attentions = [(np.array([kernel_cycles(s, hw) for s, _ in attending]) @ attention_in,
                   unit_resources("attention", hw), hw)
                  for hw in _attention_lanes(model, least, SCORE_LANES, attending)]
    best = None
    for bound, per_segment, reading, which, hw, rest in sorted(arrays, key=lambda a: a[0]):
        if best is not None and bound >= best[0]:
            break                   # sorted: no later array can do better
        for cycles, res, lanes in attentions:
            # (what binds is named for the best only: _chained's sum, vectorized)
            floor = (per_segment.sum() + cycles.sum() if serial
                     else max(np.maximum(per_segment, cycles).sum(), reading))
            if (best is None or floor < best[0]) \
                    and hw.macs + lanes.attention_macs >= mac_units \
                    and _fits(rest + res, board, fabric) is None:
                best = (floor, hw, lanes, per_segment, cycles, reading, which)
    if best is None:
        _LOWEST[key] = None
    else:
        floor, hw, lanes, per_segment, cycles, reading, which = best
        if serial:
            binding = which if per_segment.sum() >= cycles.sum() else "attention"
        else:
            binding = _chained([{"linear": l, "attention": a}
                                for l, a in zip(per_segment, cycles)], reading)[1]
        _LOWEST[key] = {
            "ms": float(floor) / (least.clock_mhz * 1e3), "binding": binding,
            "array": _array(hw),
            "attention": f"{lanes.heads_parallel}x{lanes.row_lanes}x{lanes.score_lanes}"
                         + ("/2" if lanes.score_packing == 2 else ""),
            "context_lanes": lanes.context_width, "mac_units": hw.macs + lanes.attention_macs}
    return _LOWEST[key]


_LOWEST = {}    # lowest_floor's answers (the report asks again)

#: How the chosen point's text names its ``token_chunks``.
_CHUNKS_TEXT = {0: "", 1: " (one image in token chunks)",
                2: " (one image in token chunks, its attention's query rows too)"}


def _target(row, name, op, value):
    """A target's verdict; when missed, what stops it: for the MAC units the resource
    nearest its limit (a larger array needs more of it); for the latency, the binding limit
    and, when the target is below it, the floor of the top's schedule (:func:`latency_floors`);
    else the binding limit."""
    met = row[name] >= value if op == ">=" else row[name] <= value
    limit = row["binding_limit"]
    if name == "mac_units":
        used = {key: row[key] / (row["board_" + key] * USABLE[key])
                for key in ("dsp", "bram36", "uram", "lut", "ff")[:5 if row["fabric_limits"] else 3]
                if row["board_" + key]}
        key = max(used, key=used.get)
        largest = (f"; the search's point with the most MAC units that fits (array "
                   f"{row['largest_array']}), {row['largest_mac_units']} MAC units and "
                   f"{row['largest_dsp']} DSPs, is not faster ({row['largest_latency_ms']:.2f} "
                   f"ms)" if "largest_array" in row else "")
        limit = (f"{key.upper()} {used[key]:.0%} of its usable share"
                 + (" (Yosys upper bound)" if key in ("lut", "ff") else "")
                 + f"{largest}: {row['binding_limit']} binds")
        low = row.get("mac_target_floor")
        if low:
            limit += (f"; with {value:,} MAC units or more, no HwConfig of these kernels that "
                      f"fits goes under {low['ms']:.2f} ms on any schedule of one image (array "
                      f"{low['array']}, attention lanes {low['attention']}: "
                      f"{_busiest(low['binding'])})")
            latency = [v for f, _, v in TARGETS.get((row["board"], row["config"]), ())
                       if f == "latency_ms"]
            if latency and low["ms"] > latency[0]:
                limit += (f", over the {latency[0]:g} ms target: the two targets exclude each "
                          f"other on these kernels")
            elif latency and (low.get("serial_ms") or 0) > latency[0]:
                limit += (f", under the {latency[0]:g} ms target, but not one instruction at a "
                          f"time ({low['serial_ms']:.2f} ms at least): only a schedule that "
                          f"overlaps the units more could meet both")
        elif "mac_target_floor" in row:
            limit += f"; no HwConfig of these kernels with {value:,} MAC units fits"
    if name == "latency_ms" and value < row["serial_floor_ms"]:
        limit += (f"; below the floor of one instruction at a time, {row['serial_floor_ms']:.2f} "
                  f"ms: each at its unit's fewest cycles or its weights' reading")
    if name == "latency_ms" and value < row.get("lowest_serial_floor_ms", 0):
        limit += (f"; and below it on every HwConfig of these kernels that fits: "
                  f"{row['lowest_serial_floor_ms']:.2f} ms at least (array "
                  f"{row['lowest_serial_floor_array']}, attention lanes "
                  f"{row['lowest_serial_floor_attention']})")
    if name == "latency_ms" and value < row.get("lowest_floor_ms", 0):
        limit += (f"; below every HwConfig of these kernels that fits, on any schedule of "
                  f"one image: "
                  f"{row['lowest_floor_ms']:.2f} ms at least (array "
                  f"{row['lowest_floor_array']}), {_busiest(row['lowest_floor_binding'])}")
    return {"field": name, "op": op, "value": value, "predicted": row[name], "met": bool(met),
            "limit": None if met else limit}


def _busiest(unit) -> str:
    """What binds the ``units`` floor (:func:`latency_floors`), in words."""
    if unit == "memory":
        return "the weights' reading"
    return "mostly " + {"linear": "the linear array's steps",
                        "attention": "the attention kernel's multiply-accumulates"}.get(
                            unit, f"the {unit} unit's work")


def dse_rows(board, config, *, quick=False, fabric=True, progress=True) -> list:
    """One row (the chosen point) for ``board`` and ``config``."""
    from moevit.hw.boards import get_board

    board = get_board(board) if isinstance(board, str) else board
    key = (repr(board), config, quick, fabric)  # a board's repr holds every figure
    if key not in _SEARCHED:
        points = search(board, config, quick=quick, fabric=fabric, progress=progress)
        _SEARCHED[key] = point_row(points[0], board, workload(config), fabric)
    return [copy.deepcopy(_SEARCHED[key])]


_SEARCHED = {}  # the rows of the searches this process ran (the report repeats them)


def print_dse(rows) -> None:
    for r in rows:
        h = r["hw"]
        print(f"{r['board']} / {r['config']}: chosen HwConfig {r['name']!r}")
        chains = h.get("chain_depth", 1)
        chains = f" in chains of {chains}" if chains > 1 else ""
        print(f"  linear array {h['rows']}x{h['cols']} ({r['linear_mac_units']} MAC units"
              f"{chains}, packing {h['dsp_packing']}, {h['post_lanes']} post lanes), attention "
              f"{h['heads_parallel']} heads x {h.get('row_lanes', 1)} rows x 2 x "
              f"{h['score_lanes']} lanes ({r['attention_mac_units']} MAC units, "
              f"{r['context_lanes']} context requantizers a head lane, "
              f"{r['kv_banks']} bank(s) of K and V"
              f"{', heads pipelined' if h.get('pipelined_heads') else ''}"
              f"{', QK two keys a DSP48E2' if h.get('score_packing', 1) == 2 else ''}), "
              f"{r['norm_lanes']} LayerNorm lanes, "
              f"{r['combine_lanes']} COMBINE lanes, "
              f"bus {h['bus_width']} bits x {r['memory_ports']} memory port(s) (weights "
              f"over {r['weight_ports']}"
              f"{', their constants too' if h.get('chan_striped') else ''}), "
              f"max_tokens {h['max_tokens']}, max_in {h['max_in']}, kv_depth {h['kv_depth']}, "
              f"on-chip window {h.get('onchip_bytes', 0):,} bytes, "
              f"{r['issue_lanes']} issue lane(s)"
              f"{_CHUNKS_TEXT[h.get('token_chunks', 0)]}, "
              f"{h['clock_mhz']:g} MHz")
        print(f"  objective: {r['objective']} ({r['objective_reason']})")
        print(f"  latency {r['latency_ms']:.3f} ms per image at batch 1 ({r['task']}, the "
              f"slowest task): {r['fps_batch1']:.1f} images/s; best batch {r['best_batch']}: "
              f"{r['best_fps']:.1f} images/s")
        print(f"  {r['gops']:.1f} GOPS at batch 1 ({r['best_gops']:.1f} at batch "
              f"{r['best_batch']}), DSP efficiency {r['dsp_efficiency']:.2f} MACs/DSP/cycle, "
              f"binding limit: {r['binding_limit']} at batch {r['binding_batch']} (batch 1's "
              f"memory-bound share "
              f"{r['memory_bound_share']:.0%} at {r['bandwidth_gbs']:.1f} GB/s, a latency of "
              f"{r['memory_latency']} cycles, {r['max_outstanding']} bursts in flight a mover)")
        print("  resources: " + ", ".join(
            f"{name} {r[key]:,.0f}/{r['board_' + key]:,} ({r[key] / r['board_' + key]:.0%})"
            if r["board_" + key] else f"{name} {r[key]:,.0f}/0"
            for name, key in (("DSP", "dsp"), ("LUT", "lut"), ("FF", "ff"),
                              ("BRAM36", "bram36"), ("URAM", "uram"))))
        print(f"  floors at batch 1: every weight read once at {r['bandwidth_gbs']:.1f} GB/s "
              f"{r['weights_floor_ms']:.3f} ms; one instruction at a time, each at its unit's "
              f"fewest cycles or its weights' reading, {r['serial_floor_ms']:.3f} ms; any "
              f"schedule of these units that respects the image's dependencies (the layers "
              f"between an attention's and the experts' joins pipelined token by token, every "
              f"weight read ahead), "
              f"{r['units_floor_ms']:.3f} ms "
              f"({_busiest(r['units_binding'])})"
              + (f"; any HwConfig of these kernels that fits, "
                 f"{r['lowest_floor_ms']:.3f} ms at least (array {r['lowest_floor_array']}, "
                 f"attention lanes {r['lowest_floor_attention']}, "
                 f"{_busiest(r['lowest_floor_binding'])})"
                 if "lowest_floor_ms" in r else "")
              + (f"; one instruction at a time on any HwConfig of these kernels that fits, "
                 f"{r['lowest_serial_floor_ms']:.3f} ms at least (array "
                 f"{r['lowest_serial_floor_array']}, attention lanes "
                 f"{r['lowest_serial_floor_attention']})"
                 if "lowest_serial_floor_ms" in r else ""))
        total = sum(r["unit_cycles"].values())
        print("  cycles per unit: " + ", ".join(f"{u} {c / total:.0%}"
                                                for u, c in r["unit_cycles"].items()))
        if not r["compiles"]:
            print(f"  note: max_tokens {h['max_tokens']} < the model's sequence: predicted with "
                  f"token chunking, which the compiler does not do yet (hw compile refuses it)")
        for t in r["targets"]:
            verdict = "met" if t["met"] else f"NOT met (limit: {t['limit']})"
            print(f"  target {t['field']} {t['op']} {t['value']:g}: predicted "
                  f"{t['predicted']:,.2f}, {verdict}")
        print(f"  (predicted by the cost model; routing {ROUTING}; LUT/FF are Yosys upper bounds)")


def save_config(row, folder=None) -> Path:
    """Write the chosen point as the named HwConfig ``<board>-<config>`` (``hw/configs/``)."""
    from moevit.hw.config import CONFIGS_FOLDER

    folder = Path(folder or CONFIGS_FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{row['name']}.json"
    data = {"name": row["name"], "board": row["board"], "config": row["config"],
            "generated_by": f"moevit dse --board {row['board']} --config {row['config']} --save",
            "hw": row["hw"],
            "predicted": {k: round(row[k], 3) if isinstance(row[k], float) else row[k]
                          for k in ("mac_units", "latency_ms", "fps_batch1", "best_batch",
                                    "best_fps", "binding_limit")}}
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return path
