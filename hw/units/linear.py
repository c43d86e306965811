"""The reusable linear kernel: ``y = post(requantize(x @ W.T + b, M, S))`` on streams.

One array of ``rows x cols`` int8 multiply-accumulate units serves every
linear layer of the model: patch embedding, QKV and output projections, the
dense MLP, both layers of every expert and the gates. The shape of each
operation comes at run time with a
:class:`~moevit.hw.program.descriptor.LinearDescriptor`; nothing about a layer is
built in.

Each MAC unit is one DSP48E2 (``HwConfig.dsp_packing = 1``), or each pair of
neighbouring output columns shares one per row (``dsp_packing = 2``,
:class:`PairMultiplier`: two int8 products out of one 27 x 18 multiply, AMD
WP486), their accumulators in fabric: half the DSP48E2, the same results and
the same cycles.

With ``HwConfig.chain_depth = D > 1`` each position (or pair) of the array is a
chain of D links (:class:`ChainLink`, a DSP48E2 each, the sum carried down the
cascade): a step multiplies D consecutive input features, so a tile takes
``ceil(in_features / D)`` steps, and one accumulator (the fabric's cost of a
MAC unit) serves D MAC units. The input and weight buffers are split into D
banks (feature ``i`` in bank ``i % D``) so that a step reads its D features at
once; the streams keep a feature a beat, so the first out tile still takes
the activations at a feature a cycle, unless the stream brings a step's D features
a beat (``HwConfig.wide_x``).

Dataflow (output-stationary, out tile outermost)::

    for ot in out_tiles:                 # cols output channels, weights in bank ot % 2
        for tt in token_tiles:           # rows tokens
            for i in in_features, D a step:   # one cycle: rows x cols x D MACs
                acc[r][c] += x[tt*rows + r, i:i+D] @ W[ot*cols + c, i:i+D]
            shadow <- acc                # then drained row by row, requantized

* The input buffer holds the whole ``x`` of the operation (``max_tokens x
  max_in`` int8, ``rows`` tokens per word); it is filled from the ``x`` stream
  while the first out tile already computes on the words that have arrived.
* The weight buffer has two banks of ``max_in`` words of ``cols`` weights:
  the next out tile's weights (and its per-channel constants, from the
  ``chan`` stream) load while the current one computes.
* At the end of a tile the accumulators are copied into a shadow bank and
  the next tile starts at once; the shadow bank drains ``post_lanes`` values
  per cycle (``valid rows * cols / post_lanes`` cycles per tile: the padding
  rows of a ragged last token tile are never drained) through as many
  lanes of requantization (bias add, multiply, round, shift, saturate), the
  optional integer GELU with its requantization, and the optional residual
  add; the chunks of a token row gather into one output beat in the output
  FIFO. The array thus computes without a pause as long as ``in_features``
  exceeds the drain time (a few cycles more than ``rows * cols /
  post_lanes``) and the output is taken; otherwise it stalls, never drops
  data.

Streams (``amaranth.lib.stream``, valid/ready; order of beats):

``desc``
    One :class:`LinearDescriptor` (its ``layout()``) per operation.
``x``
    ``token_tiles * in_features`` beats, tile-major: beat ``(tt, i)`` holds
    ``x[tt*rows + r, i]`` in lane ``r`` (lanes past ``tokens`` are ignored); with
    ``HwConfig.wide_x``, ``token_tiles * ceil(in_features / chain_depth)`` beats of
    ``chain_depth`` features a row: beat ``(tt, s)`` holds ``x[tt*rows + r, s*D + f]``
    in lane ``r*D + f`` (features past ``in_features`` are ignored).
``w``
    ``out_tiles * in_features`` beats: beat ``(ot, i)`` holds
    ``W[ot*cols + c, i]`` in lane ``c`` (lanes past ``out_features`` ignored); with
    ``HwConfig.wide_w``, ``out_tiles * ceil(in_features / D)`` beats of ``D`` features:
    beat ``(ot, s)`` holds ``W[ot*cols + c, s*D + f]`` in lane ``f*cols + c`` (the
    weights' order in memory, a feature's ``cols`` bytes after the one before).
``chan``
    ``out_tiles * cols`` beats of (bias, multiplier, shift), channel order;
    the padding channels of the last out tile are sent too (any valid value).
``res``
    When ``residual`` is set, one beat per output beat (same order and lanes):
    the skip tensor.
``y``
    ``out_tiles * tokens`` beats, out-tile-major: beat ``(ot, t)`` holds
    ``y[t, ot*cols + c]`` in lane ``c`` (lanes past ``out_features`` are 0);
    ``last`` marks the operation's final beat.

The descriptor is checked when it is taken (:class:`~moevit.hw.program.descriptor.Fault`): one
with another opcode, a shape the buffers cannot hold or tiling fields that
disagree with its shape is taken and skipped (no beat of any other stream is
consumed, none is produced) and ``error`` holds its code until the next
descriptor is taken. The ``stalls`` counters (cycles since reset, wrapping)
say what held the kernel: an input stream that offered no beat when the
kernel would take one (``x``, ``w``, ``chan``, ``res``), and the output FIFO
full, holding the post-processing (``out``).

The arithmetic is :mod:`moevit.model.integer.intops` exactly: ``linear_acc``,
``requantize``, ``gelu`` + ``requantize``, ``residual_add``.
"""

import numpy as np

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig, products_width
from moevit.hw.program.descriptor import FAULT_WIDTH, Fault, LinearDescriptor

__all__ = ["LinearKernel", "PairMultiplier", "pack_pair", "unpack_product", "PAIR_SHIFT", "PAIR_WIDTH",
           "STALL_CAUSES", "stalls_layout", "chan_layout",
           "lanes_layout", "output_layout", "linear_streams", "linear_output", "linear_reference"]


def lanes_layout(lanes: int):
    """Payload of ``lanes`` int8 values: ``data[k]``."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), lanes)})


def output_layout(lanes: int):
    """Output payload: ``lanes`` int8 values and the operation's ``last`` beat."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), lanes), "last": unsigned(1)})


def chan_layout():
    """Per-channel constants of requantize: int32 bias, u15 multiplier, shift 1..47."""
    return data.StructLayout({
        "bias": signed(HwConfig.BIAS_WIDTH),
        "multiplier": unsigned(HwConfig.MULTIPLIER_WIDTH),
        "shift": unsigned(HwConfig.SHIFT_WIDTH),
    })


STALL_CAUSES = ("x", "w", "chan", "res", "out")


def stalls_layout():
    """The ``stalls`` counters: 32 bits per cause of :data:`STALL_CAUSES`."""
    return data.StructLayout({cause: unsigned(32) for cause in STALL_CAUSES})


def _requant_stages(m, en, value, mult, shift, name):
    """``clip8((value*mult + 2**(shift-1)) >> shift)`` in three registered stages.

    Returns the int8 signal (valid three ``en`` steps after ``value``) and the
    number of stages.
    """
    prod = Signal(signed(48), name=f"{name}_prod")
    sh1 = Signal(unsigned(6), name=f"{name}_sh1")
    rnd = Signal(signed(49), name=f"{name}_rnd")
    sh2 = Signal(unsigned(6), name=f"{name}_sh2")
    out = Signal(signed(8), name=f"{name}_q")
    # 2**(shift-1) as bits 1.. of 1 << shift (a shift amount must not be signed).
    half = (Const(1, 49) << sh1)[1:49]
    shifted = rnd >> sh2
    with m.If(en):
        m.d.sync += [
            prod.eq(value * mult),  # two DSP48E2: 32 bits exceed the 27-bit A port
            sh1.eq(shift),
            rnd.eq(prod + half),
            sh2.eq(sh1),
            out.eq(Mux(shifted > 127, 127, Mux(shifted < -128, -128, shifted))),
        ]
    return out, 3


# Two int8 MACs per DSP48E2 (HwConfig.dsp_packing = 2) ---------------------------------
#: Bits between the two weights of a pair: the low product (16 bits) and two guard bits.
PAIR_SHIFT = 18
#: Width of a packed pair: the 27-bit side of the DSP48E2's 27 x 18 multiplier.
PAIR_WIDTH = 27
PAIR_PRODUCT = 34    # |a * (w_hi * 2**18 + w_lo)| <= 2**32 + 2**14: 34 bits, signed
#: Width of a chain's sum (HwConfig.chain_depth > 1): the DSP48E2's P and cascade.
CHAIN_WIDTH = 48


def pack_pair(w_lo, w_hi):
    """``w_hi * 2**18 + w_lo``: two int8 weights on the 27-bit side of one multiplier
    (an Amaranth value of ``signed(27)``, or an int from ints)."""
    if isinstance(w_lo, int) and isinstance(w_hi, int):
        return (w_hi << PAIR_SHIFT) + w_lo
    return (w_hi.as_signed() << PAIR_SHIFT) + w_lo.as_signed()


class PairMultiplier(wiring.Component):
    """One multiplier for two int8 MACs that share an activation, one register stage.

    The packing of AMD's white paper WP486 (*Deep Learning with INT8
    Optimization on Xilinx Devices*): the activation ``a`` on the 18-bit side of
    the DSP48E2's signed 27 x 18 multiplier, the pair's weights packed
    ``w = w_hi * 2**18 + w_lo`` on the 27-bit side (:func:`pack_pair`), so
    ``p = a * w = (a * w_hi) * 2**18 + a * w_lo``. Each int8 product fits 16
    bits (``-128 * -128 = 2**14``), so the low one is ``p``'s 16 low bits; but
    when it is negative it borrows one from the field above, which then reads
    ``a * w_hi - 1``: adding the low product's sign bit (``p[17]``) gives the
    high product back exactly. Written as one multiply into one register, so
    Yosys maps it to one DSP48E2 (MREG); the accumulators stay outside.

    Attributes
    ----------
    a : In(signed(8))
        The activation.
    w : In(signed(27))
        The packed weights (:func:`pack_pair`).
    lo, hi : Out(signed(16))
        ``a * w_lo`` and ``a * w_hi`` of the previous cycle's inputs.
    """

    def __init__(self):
        super().__init__({"a": In(signed(8)), "w": In(signed(PAIR_WIDTH)),
                          "lo": Out(signed(16)), "hi": Out(signed(16))})

    def elaborate(self, platform):
        m = Module()
        p = Signal(signed(PAIR_PRODUCT))
        m.d.sync += p.eq(self.a * self.w)
        m.d.comb += [out.eq(part) for out, part in zip((self.lo, self.hi), unpack_product(p))]
        return m


def unpack_product(p):
    """``(a * w_lo, a * w_hi)`` out of one packed product ``p = a * pack_pair(w_lo, w_hi)``
    (:class:`PairMultiplier`): the low field, and the high one plus the low's sign bit (the
    borrow a negative low product took from it)."""
    return p[:16].as_signed(), p[PAIR_SHIFT:].as_signed() + p[PAIR_SHIFT - 1]


#: What a packed chain's first link adds to its product (the DSP48E2 adds it for free: its
#: W multiplexer's RND constant): the low field's sum, within -2**17 .. 2**17 - 1 over at
#: most 7 links, then lies in 0 .. 2**18 - 1, so it never borrows from the high field.
PAIR_OFFSET = 2 ** (PAIR_SHIFT - 1)


def unpack_pair(total):
    """``(low, high)``: the two sums of a chain of packed products ``total`` (an
    Amaranth value) whose first link added :data:`PAIR_OFFSET`: the high field is the
    high sum exactly, the low field the low sum plus the offset (its top bit flipped
    reads it as two's complement, no adder)."""
    top = PAIR_SHIFT - 1
    return Cat(total[:top], ~total[top]).as_signed(), total[PAIR_SHIFT:].as_signed()


#: The name of a chain link's submodule (``link<row>_<column or pair>_<link>``): the
#: resource estimate finds the links by it (:data:`moevit.hw.estimate.CHAIN_LINKS`).
CHAIN_LINK_NAME = "link"


class ChainLink(wiring.Component):
    """One link of a chain of the linear array (``HwConfig.chain_depth > 1``): one
    DSP48E2's datapath, ``p <- a * w + cin`` through its product register (MREG),
    post-adder and output register (PREG), ``cin`` being the link before's ``p`` over
    the cascade (PCIN; for a chain's first link none, or with packed pairs the constant
    :data:`PAIR_OFFSET`). ``w`` is one int8 weight, or a pair packed for two MACs
    (:func:`pack_pair`, 27 bits).

    A module of its own so that a resource estimate can count each link as the one
    DSP48E2 it maps to: Yosys (0.70) packs no post-adder or register into a DSP48E2,
    only into the 7 series' DSP48E1 (:mod:`moevit.hw.estimate`).
    """

    def __init__(self, *, packed: bool, first: bool):
        self._first = first
        # A packed chain's first link adds PAIR_OFFSET (see unpack_pair).
        self._offset = PAIR_OFFSET if packed and first else 0
        ports = {"a": In(signed(8)), "w": In(signed(PAIR_WIDTH if packed else 8)),
                 "p": Out(signed(CHAIN_WIDTH))}
        if not first:
            ports["cin"] = In(signed(CHAIN_WIDTH))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        prod = Signal(signed(PAIR_PRODUCT))
        m.d.sync += [prod.eq(self.a * self.w),
                     self.p.eq(prod + self._offset if self._first else prod + self.cin)]
        return m


class LinearKernel(wiring.Component):
    """The reusable linear kernel (see the module's description).

    Parameters
    ----------
    hw : HwConfig
        The array shape (``rows x cols``), buffer depths and widths.

    Attributes
    ----------
    desc, x, w, chan, res : In(stream.Signature)
        Descriptor, activations, weights, per-channel constants, skip tensor.
    y : Out(stream.Signature)
        Outputs.
    error : Out(FAULT_WIDTH)
        Why the last descriptor taken was skipped (``NONE``: it was not).
    stalls : Out(stalls_layout())
        Cycles each cause held the kernel, since reset (see the module).
    busy : Out(1)
        Some stage holds work of an operation (the AND of the stages' idle
        signals, negated); the kernel takes the next descriptor only when it
        is low, so no stage ever starts an operation on the state of another.
    """

    def __init__(self, hw: HwConfig):
        if not isinstance(hw, HwConfig):
            self._MustUse__silence = True  # never elaborated: no unused-elaboratable warning
            raise TypeError(f"Hardware config must be a HwConfig, not {hw!r}")
        self._hw = hw
        super().__init__({
            "desc": In(stream.Signature(LinearDescriptor.layout())),
            "x": In(stream.Signature(lanes_layout(hw.rows * hw.x_features))),
            "w": In(stream.Signature(lanes_layout(hw.cols * hw.w_features))),
            "chan": In(stream.Signature(chan_layout())),
            "res": In(stream.Signature(lanes_layout(hw.cols))),
            "y": Out(stream.Signature(output_layout(hw.cols))),
            "error": Out(FAULT_WIDTH),
            "stalls": Out(stalls_layout()),
            "busy": Out(1),
        })

    @classmethod
    def from_config(cls, hw):
        return cls(hw)

    @property
    def hw(self) -> HwConfig:
        return self._hw

    def elaborate(self, platform):
        hw = self._hw
        R, C, D = hw.rows, hw.cols, hw.chain_depth
        S = hw.max_steps        # a tile's steps at most: the depth of a bank's half
        m = Module()

        x_depth = (hw.max_tokens // R) * S
        aw = max(1, (x_depth - 1).bit_length())

        # Operation registers -------------------------------------------------
        # `active`: from the descriptor's acceptance to the operation's last beat
        # entering the output FIFO. The kernel is idle (and takes the next
        # descriptor) when every stage is: see `busy` at the end.
        d = Signal(LinearDescriptor.layout())
        active = Signal()
        busy = Signal()
        start = Signal()
        m.d.comb += [self.busy.eq(busy), self.desc.ready.eq(~busy),
                     start.eq(self.desc.valid & ~busy)]
        # A descriptor that disagrees with this array is skipped, never run.
        p = self.desc.payload
        code = Signal(FAULT_WIDTH)
        with m.If(p.opcode != LinearDescriptor.OPCODE):
            m.d.comb += code.eq(Fault.OPCODE)
        with m.Elif((p.tokens == 0) | (p.tokens > hw.max_tokens) | (p.in_features == 0)
                    | (p.in_features > hw.max_in) | (p.out_features == 0)):
            m.d.comb += code.eq(Fault.SHAPE)
        # tiles = ceil(size / side)  <=>  size <= tiles * side < size + side
        with m.Elif((p.token_tiles * R < p.tokens) | (p.token_tiles * R >= p.tokens + R)
                    | (p.out_tiles * C < p.out_features)
                    | (p.out_tiles * C >= p.out_features + C)):
            m.d.comb += code.eq(Fault.DERIVED)
        with m.If(start):
            m.d.sync += [d.eq(p), active.eq(code == Fault.NONE),
                         self.error.eq(code)]
        in_last = Signal(16)
        m.d.comb += in_last.eq(d.in_features - 1)

        # Input buffer: fills from the x stream ------------------------------
        # D banks (one with chain_depth 1): feature i of a token tile in bank i % D, at
        # word tt * steps + i // D, so that a step reads its D features at once. A beat
        # brings XF features of every row (hw.wide_x: D, a step's whole; else 1).
        XF = hw.x_features
        x_mems = [Memory(shape=unsigned(8 * R), depth=x_depth, init=[]) for _ in range(D)]
        x_wrs, x_rds = [], []
        for b, mem in enumerate(x_mems):
            m.submodules["x_mem" if D == 1 else f"x_mem{b}"] = mem
            x_wrs.append(mem.write_port())
            x_rds.append(mem.read_port(transparent_for=()))
        x_count = Signal(aw + 1)     # words written (steps whole in every bank)
        x_i = Signal(16)             # the beat's first feature in its tile
        x_tt = Signal(16)
        x_done = Signal()
        x_take = Signal()
        x_tile_end = Signal()
        m.d.comb += [self.x.ready.eq(active & ~x_done),
                     x_take.eq(self.x.valid & self.x.ready),
                     x_tile_end.eq(x_i == in_last if XF == 1 else x_i + XF > in_last)]
        if XF == D:                  # a beat a step: every bank's word at once
            x_step_end = Const(1)
            m.d.comb += [port.addr.eq(x_count) for port in x_wrs]
        else:
            x_b = Signal(range(D))       # the bank of the next feature
            x_q = Signal(16)             # its step in the tile
            x_base = Signal(aw + 1)      # the tile's first word
            x_step_end = Signal()
            m.d.comb += x_step_end.eq((x_b == D - 1) | (x_i == in_last))
            with m.If(x_take):
                m.d.sync += x_b.eq(Mux(x_step_end, 0, x_b + 1))
                with m.If(x_i == in_last):
                    m.d.sync += [x_q.eq(0), x_base.eq(x_base + x_q + 1)]
                with m.Elif(x_step_end):
                    m.d.sync += x_q.eq(x_q + 1)
        beat = self.x.payload.data
        for b, port in enumerate(x_wrs):
            # Bank b's word: feature b of every row (lane r * XF + b of a wide beat).
            m.d.comb += [port.data.eq(beat.as_value() if XF == 1
                                      else Cat(*(beat[r * XF + b] for r in range(R)))),
                         port.en.eq(x_take & (1 if XF == D else x_b == b))]
            if XF != D:
                m.d.comb += port.addr.eq(x_base + x_q)
        with m.If(x_take):
            with m.If(x_step_end):
                m.d.sync += x_count.eq(x_count + 1)
            with m.If(x_tile_end):
                m.d.sync += [x_i.eq(0), x_tt.eq(x_tt + 1)]
                with m.If(x_tt == d.token_tiles - 1):
                    m.d.sync += x_done.eq(1)
            with m.Else():
                m.d.sync += x_i.eq(x_i + XF)

        # Weight buffer (two banks) and per-channel constants ------------------
        # Each bank split as the input buffer is: feature i at word i // D of memory i % D.
        # A beat brings WF features (hw.wide_w: D, a step's whole, feature f in lanes
        # f * C ...; else 1).
        WF = hw.w_features
        w_mems = [Memory(shape=unsigned(8 * C), depth=2 * S, init=[]) for _ in range(D)]
        w_wrs, w_rds = [], []
        for b, mem in enumerate(w_mems):
            m.submodules["w_mem" if D == 1 else f"w_mem{b}"] = mem
            w_wrs.append(mem.write_port())
            w_rds.append(mem.read_port(transparent_for=()))
        full = [Signal(name=f"full{b}") for b in range(2)]
        consts = [[Signal(chan_layout(), name=f"chan{b}_{c}") for c in range(C)]
                  for b in range(2)]
        l_ot = Signal(16)
        l_i = Signal(16)
        l_c = Signal(range(C + 1))
        l_bank = Signal()
        l_w_got = Signal()
        l_c_got = Signal()
        l_free = Signal()
        m.d.comb += l_free.eq(active & (l_ot != d.out_tiles) & ~Mux(l_bank, full[1], full[0]))
        w_take = Signal()
        m.d.comb += [
            self.w.ready.eq(l_free & ~l_w_got),
            self.chan.ready.eq(l_free & ~l_c_got),
            w_take.eq(self.w.valid & self.w.ready),
        ]
        w_tile_end = Signal()            # the bank's last beat
        m.d.comb += w_tile_end.eq(l_i == in_last if WF == 1 else l_i + WF > in_last)
        if D == 1:
            l_q = l_i                    # steps whole in the bank being loaded
            m.d.comb += w_wrs[0].addr.eq(Mux(l_bank, S, 0) + l_i)
        elif WF == D:                    # a beat a step: every bank's word at once
            l_q = Signal(16)
            with m.If(w_take):
                m.d.sync += l_q.eq(Mux(w_tile_end, 0, l_q + 1))
        else:
            l_b = Signal(range(D))
            l_q = Signal(16)
            with m.If(w_take):
                with m.If(l_i == in_last):
                    m.d.sync += [l_b.eq(0), l_q.eq(0)]
                with m.Elif(l_b == D - 1):
                    m.d.sync += [l_b.eq(0), l_q.eq(l_q + 1)]
                with m.Else():
                    m.d.sync += l_b.eq(l_b + 1)
        w_beat = self.w.payload.data.as_value()
        for b, port in enumerate(w_wrs):
            m.d.comb += [port.data.eq(w_beat if WF == 1 else w_beat[b * 8 * C:(b + 1) * 8 * C]),
                         port.en.eq(w_take & (1 if WF == D else l_b == b))]
            if D > 1:
                m.d.comb += port.addr.eq(Mux(l_bank, S, 0) + l_q)
        with m.If(w_take):
            with m.If(w_tile_end):
                m.d.sync += [l_i.eq(0), l_w_got.eq(1)]
            with m.Else():
                m.d.sync += l_i.eq(l_i + WF)
        with m.If(self.chan.valid & self.chan.ready):
            for b in range(2):
                with m.If(l_bank == b):
                    # A shift register: after C beats lane c holds channel c.
                    m.d.sync += consts[b][C - 1].eq(self.chan.payload)
                    m.d.sync += [consts[b][c].eq(consts[b][c + 1]) for c in range(C - 1)]
            with m.If(l_c == C - 1):
                m.d.sync += [l_c.eq(0), l_c_got.eq(1)]
            with m.Else():
                m.d.sync += l_c.eq(l_c + 1)
        bank_loaded = Signal()
        m.d.comb += bank_loaded.eq(l_w_got & l_c_got)
        with m.If(bank_loaded):
            m.d.sync += [l_w_got.eq(0), l_c_got.eq(0), l_bank.eq(~l_bank), l_ot.eq(l_ot + 1)]

        # Issue: one (tt, i) step of the array per cycle ------------------------
        c_ot = Signal(16)
        c_tt = Signal(16)
        c_i = Signal(16)
        c_bank = Signal()
        c_base = Signal(aw + 1)       # tt * in_features
        c_t0 = Signal(16)             # tt * rows
        c_o0 = Signal(16)             # ot * cols
        pending = Signal()            # a tile's last step issued, not yet in the shadow bank
        shadow_busy = Signal()
        x_addr = Signal(aw + 1)
        m.d.comb += x_addr.eq(c_base + c_i)
        is_last = Signal()
        if D == 1:
            m.d.comb += is_last.eq(c_i == in_last)
        else:
            c_f = Signal(16)          # the step's first feature: c_i * D
            m.d.comb += is_last.eq(c_f + (D - 1) >= in_last)
        # The tile's bank: full, or (hw.weight_streaming) being loaded for this tile with
        # the step's weight beat already written; the last step needs the whole bank (its
        # constants).
        bank_full = Mux(c_bank, full[1], full[0])
        bank_ready = Signal()
        if hw.weight_streaming:
            m.d.comb += bank_ready.eq(bank_full | (
                ~is_last & (l_bank == c_bank) & (l_ot == c_ot) & (l_w_got | (c_i < l_q))))
        else:
            m.d.comb += bank_ready.eq(bank_full)
        go = Signal()
        m.d.comb += go.eq(
            active & (c_ot != d.out_tiles) & bank_ready
            & (x_done | (x_addr < x_count))
            & ~(is_last & (pending | shadow_busy)))
        for x_rd, w_rd in zip(x_rds, w_rds):
            m.d.comb += [x_rd.addr.eq(x_addr), w_rd.addr.eq(Mux(c_bank, S, 0) + c_i)]
        # The features of the step past in_features (its last step's) multiply zeros.
        if D > 1:
            lane_on = [Signal(name=f"lane_on{b}") for b in range(D)]
            m.d.sync += [lane_on[b].eq(c_f + b <= in_last) for b in range(D)]
        rows_left = Signal(17)
        m.d.comb += rows_left.eq(d.tokens - c_t0)
        lanes_left = Signal(17)
        m.d.comb += lanes_left.eq(d.out_features - c_o0)
        tag = data.StructLayout({
            "valid": 1, "first": 1, "last": 1, "bank": 1, "end_ot": 1, "end_op": 1,
            "rows": range(R + 1), "lanes": range(C + 1),
        })
        f1 = Signal(tag)
        m.d.sync += [
            f1.valid.eq(go),
            f1.first.eq(c_i == 0),
            f1.last.eq(is_last),
            f1.bank.eq(c_bank),
            f1.end_ot.eq(c_tt == d.token_tiles - 1),
            f1.end_op.eq((c_tt == d.token_tiles - 1) & (c_ot == d.out_tiles - 1)),
            f1.rows.eq(Mux(rows_left >= R, R, rows_left)),
            f1.lanes.eq(Mux(lanes_left >= C, C, lanes_left)),
        ]
        tile_steps = d.in_features if D == 1 else c_i + 1
        with m.If(go):
            with m.If(is_last):
                m.d.sync += [c_i.eq(0), pending.eq(1)]
                if D > 1:
                    m.d.sync += c_f.eq(0)
                with m.If(c_tt == d.token_tiles - 1):
                    m.d.sync += [c_tt.eq(0), c_base.eq(0), c_t0.eq(0),
                                 c_ot.eq(c_ot + 1), c_o0.eq(c_o0 + C), c_bank.eq(~c_bank)]
                with m.Else():
                    m.d.sync += [c_tt.eq(c_tt + 1), c_base.eq(c_base + tile_steps),
                                 c_t0.eq(c_t0 + R)]
            with m.Else():
                m.d.sync += c_i.eq(c_i + 1)
                if D > 1:
                    m.d.sync += c_f.eq(c_f + D)

        # The MAC array: operand registers, product registers, accumulators -----
        # Tags f2.. follow f1 through the array: f3 is the products' stage (with
        # chain_depth 1), the accumulators add at `f_acc` and the shadow bank copies them
        # a stage later. A chain of D > 1 links adds a stage a link: link b takes its
        # operands b cycles late, and its sum is registered.
        lag = 0 if D == 1 else D
        tags = [None, f1]
        for n in range(2, 5 + lag):
            tags.append(Signal(tag, name=f"f{n}"))
            m.d.sync += tags[n].eq(tags[n - 1])
        f_acc, f_copy = tags[3 + lag], tags[4 + lag]

        def delayed(sig, n, name):
            for k in range(n):
                reg = Signal.like(sig, name=f"{name}_d{k}")
                m.d.sync += reg.eq(sig)
                sig = reg
            return sig

        # sums[r][c]: the step's products of row r and column c, valid with f_acc.
        sums = [[None] * C for _ in range(R)]
        links = [[None] * (C // hw.dsp_packing) for _ in range(R)]
        for b in range(D):
            sfx = "" if D == 1 else f"_{b}"
            x_word = Signal(data.ArrayLayout(signed(8), R), name=f"x_word{sfx}")
            w_word = Signal(data.ArrayLayout(signed(8), C), name=f"w_word{sfx}")
            m.d.comb += [x_word.eq(x_rds[b].data), w_word.eq(w_rds[b].data)]
            a_reg = [Signal(signed(8), name=f"a{r}{sfx}") for r in range(R)]
            # A feature past in_features multiplies zero: its bank holds another's.
            m.d.sync += [a_reg[r].eq(x_word[r] if D == 1 else Mux(lane_on[b], x_word[r], 0))
                         for r in range(R)]
            if hw.dsp_packing == 2:
                # Columns 2j and 2j+1 share one multiplier per row; their weights are
                # packed once per pair, for every row.
                b_reg = [Signal(signed(PAIR_WIDTH), name=f"bp{j}{sfx}") for j in range(C // 2)]
                m.d.sync += [b_reg[j].eq(pack_pair(w_word[2 * j], w_word[2 * j + 1]))
                             for j in range(C // 2)]
            else:
                b_reg = [Signal(signed(8), name=f"b{c}{sfx}") for c in range(C)]
                m.d.sync += [b_reg[c].eq(w_word[c]) for c in range(C)]
            if D > 1:
                a_reg = [delayed(a_reg[r], b, f"a{r}{sfx}") for r in range(R)]
                b_reg = [delayed(w, b, f"w{j}{sfx}") for j, w in enumerate(b_reg)]
            for r in range(R):
                for j, w in enumerate(b_reg):
                    if D > 1:
                        link = m.submodules[f"{CHAIN_LINK_NAME}{r}_{j}_{b}"] = ChainLink(
                            packed=hw.dsp_packing == 2, first=b == 0)
                        m.d.comb += [link.a.eq(a_reg[r]), link.w.eq(w)]
                        if b:
                            m.d.comb += link.cin.eq(links[r][j].p)
                        links[r][j] = link
                    elif hw.dsp_packing == 2:
                        pair = m.submodules[f"mul{r}_{j}"] = PairMultiplier()
                        m.d.comb += [pair.a.eq(a_reg[r]), pair.w.eq(w)]
                        sums[r][2 * j], sums[r][2 * j + 1] = pair.lo, pair.hi
                    else:
                        # Written as mult -> register -> add-to-register so that Yosys
                        # maps each MAC unit onto one DSP48E2 (MREG, PREG).
                        sums[r][j] = Signal(signed(16), name=f"m{r}_{j}")
                        m.d.sync += sums[r][j].eq(a_reg[r] * w)
        if D > 1:
            # A chain's sums cut to the bits D products need: an operand as wide as the
            # accumulator costs Yosys two LUTs a bit of its adder (the clear's multiplexer
            # kept out of the adder's LUT), a narrower one one (zcu102-edge-moe's 2-row
            # slice 27,895 -> 26,256 LUT, 2026-12-07).
            width = products_width(D)
            for r in range(R):
                for j, link in enumerate(links[r]):
                    if hw.dsp_packing == 2:
                        # The packed sums split as PairMultiplier splits one product.
                        sums[r][2 * j], sums[r][2 * j + 1] = (
                            part[:width].as_signed() for part in unpack_pair(link.p))
                    else:
                        sums[r][j] = link.p[:width].as_signed()
        acc = [[Signal(signed(hw.acc_width), name=f"acc{r}_{c}") for c in range(C)]
               for r in range(R)]
        with m.If(f_acc.valid):
            m.d.sync += [acc[r][c].eq(Mux(f_acc.first, 0, acc[r][c]) + sums[r][c])
                         for r in range(R) for c in range(C)]

        # Shadow bank: the finished tile, drained in chunks of P lanes ------------
        # Chunk j holds row j // k, columns (j % k)*P .. +P. Chunk 0 goes straight to
        # `head`, which the post-processing reads; the others are loaded in place (flip-
        # flops with an enable) and read into `head` one a pop through one multiplexer a
        # lane bit: about a third of a LUT a bit of the bank (Yosys), where a bank shifting
        # toward chunk 0 takes one (its load-or-shift multiplexer).
        P = hw.post_lanes
        k = C // P
        shadow = [None] + [[Signal(signed(hw.acc_width), name=f"sh{j}_{p}") for p in range(P)]
                           for j in range(1, R * k)]
        head = [Signal(signed(hw.acc_width), name=f"head{p}") for p in range(P)]
        sh_next = Signal(range(R * k + 1))   # the chunk the next pop reads
        sh_tag = Signal(tag)
        sh_row = Signal(range(R + 1))
        sh_q = Signal(range(max(k, 2)))
        en = Signal()        # the post-processing pipeline advances
        pop = Signal()
        m.d.comb += pop.eq(en & shadow_busy)
        copy = Signal()
        m.d.comb += copy.eq(f_copy.valid & f_copy.last)
        chunk = lambda j, p: acc[j // k][(j % k) * P + p]
        with m.If(copy):
            m.d.sync += [head[p].eq(chunk(0, p)) for p in range(P)]
            m.d.sync += [shadow[j][p].eq(chunk(j, p)) for j in range(1, R * k) for p in range(P)]
            m.d.sync += [sh_tag.eq(f_copy), sh_row.eq(0), sh_q.eq(0), sh_next.eq(1),
                         shadow_busy.eq(1), pending.eq(0)]
        with m.Elif(pop):
            m.d.sync += sh_next.eq(sh_next + 1)
            with m.Switch(sh_next):
                for j in range(1, R * k):
                    with m.Case(j):
                        m.d.sync += [head[p].eq(shadow[j][p]) for p in range(P)]
            with m.If(sh_q == k - 1):
                m.d.sync += [sh_q.eq(0), sh_row.eq(sh_row + 1)]
                # Only the tile's valid rows drain: padding rows never hold
                # the shadow bank (nor the weight bank, below).
                with m.If(sh_row == sh_tag.rows - 1):
                    m.d.sync += shadow_busy.eq(0)
                    with m.If(sh_tag.end_ot):
                        for b in range(2):
                            with m.If(sh_tag.bank == b):
                                m.d.sync += full[b].eq(0)
            with m.Else():
                m.d.sync += sh_q.eq(sh_q + 1)
        with m.If(bank_loaded):
            for b in range(2):
                with m.If(l_bank == b):
                    m.d.sync += full[b].eq(1)
        # (the copy never meets a pop: issue holds a tile's last step while
        # the shadow bank is busy, so a copy only lands in an idle bank)

        # Post-processing, P lanes, all stages advance together on `en` ---------
        side = data.StructLayout({"valid": 1, "last": 1, "row_end": 1,
                                  "q": range(max(k, 2)), "lanes": range(C + 1)})
        s0 = Signal(side)
        with m.If(en):
            m.d.sync += [
                s0.valid.eq(pop),
                s0.last.eq(sh_tag.end_op & (sh_row == sh_tag.rows - 1) & (sh_q == k - 1)),
                s0.row_end.eq(sh_q == k - 1),
                s0.q.eq(sh_q),
                s0.lanes.eq(sh_tag.lanes),
            ]
        cur = [Signal(chan_layout(), name=f"cur{p}") for p in range(P)]
        with m.Switch(Cat(sh_q, sh_tag.bank)):
            for b in range(2):
                for q in range(k):
                    with m.Case(q | b << len(sh_q)):
                        m.d.comb += [cur[p].eq(consts[b][q * P + p]) for p in range(P)]

        def delay(sig, name):
            out = Signal.like(sig, name=name)
            with m.If(en):
                m.d.sync += out.eq(sig)
            return out

        post_valid = [s0.valid]  # every stage's valid bit of the post-processing

        lane_out = []
        for p in range(P):
            acc_b = Signal(signed(32), name=f"accb{p}")
            mult0 = Signal(unsigned(15), name=f"mult{p}")
            shift0 = Signal(unsigned(6), name=f"shift{p}")
            with m.If(en):
                m.d.sync += [
                    acc_b.eq((head[p] + cur[p].bias)[:32].as_signed()),
                    mult0.eq(cur[p].multiplier),
                    shift0.eq(cur[p].shift),
                ]
            q, _ = _requant_stages(m, en, acc_b, mult0, shift0, f"rq{p}")
            lane_out.append(q)
        n_requant = 1 + 3

        # Integer GELU (intops.gelu) and its requantization, per tensor.
        gelu_b = d.gelu_b
        gelu_c = d.gelu_c
        g_out = []
        for p in range(P):
            q = lane_out[p]
            mag = Signal(unsigned(8), name=f"g{p}_mag")
            m.d.comb += mag.eq(Mux(q < 0, -q, q))
            t = Signal(unsigned(12), name=f"g{p}_t")
            q1 = delay(q, f"g{p}_q1")
            with m.If(en):
                m.d.sync += t.eq(gelu_b - Mux(mag < gelu_b, mag, gelu_b))
            t2 = Signal(unsigned(24), name=f"g{p}_t2")
            with m.If(en):
                m.d.sync += t2.eq(t * t)
            q2 = delay(q1, f"g{p}_q2")
            f = Signal(unsigned(23), name=f"g{p}_f")
            with m.If(en):
                m.d.sync += f.eq(Mux(q2 >= 0, (gelu_c << 1) - t2, t2))
            q3 = delay(q2, f"g{p}_q3")
            g = Signal(signed(32), name=f"g{p}_y")
            with m.If(en):
                m.d.sync += g.eq(q3 * f)
            gq, _ = _requant_stages(m, en, g, d.gelu_mult, d.gelu_shift, f"gq{p}")
            # The plain path, delayed to the same stage.
            plain = q
            for n in range(4 + 3):
                plain = delay(plain, f"g{p}_p{n}")
            sel = Signal(signed(8), name=f"g{p}_out")
            m.d.comb += sel.eq(Mux(d.gelu, gq, plain))
            g_out.append(sel)
        n_gelu = 4 + 3

        # Residual add (intops.residual_add) with the skip stream: one beat per
        # row, taken with the row's first chunk and held for the others.
        side_pre = s0
        for n in range(n_requant - 1 + n_gelu):
            side_pre = delay(side_pre, f"side{n}")
            post_valid.append(side_pre.valid)
        need_res = Signal()
        m.d.comb += need_res.eq(side_pre.valid & d.residual & (side_pre.q == 0))
        skip_in = self.res.payload.data
        skip_hold = Signal(data.ArrayLayout(signed(8), C))
        with m.If(en & need_res):
            m.d.sync += skip_hold.eq(skip_in)
        skip = [Signal(signed(8), name=f"skip{p}") for p in range(P)]
        with m.Switch(side_pre.q):
            for q in range(k):
                with m.Case(q):
                    src = skip_in if q == 0 else skip_hold
                    m.d.comb += [skip[p].eq(src[q * P + p]) for p in range(P)]
        r_out = []
        for p in range(P):
            s = Signal(signed(25), name=f"r{p}_sum")
            s_sh = Signal(unsigned(6), name=f"r{p}_sh")
            with m.If(en):
                m.d.sync += [s.eq(g_out[p] * d.res_mult_y + skip[p] * d.res_mult_skip),
                             s_sh.eq(d.res_shift)]
            rnd = Signal(signed(49), name=f"r{p}_rnd")
            with m.If(en):
                m.d.sync += rnd.eq(s + (Const(1, 49) << s_sh)[1:49])
            sh2 = delay(s_sh, f"r{p}_sh2")
            shifted = rnd >> sh2
            res_q = Signal(signed(8), name=f"r{p}_q")
            with m.If(en):
                m.d.sync += res_q.eq(Mux(shifted > 127, 127, Mux(shifted < -128, -128, shifted)))
            plain = g_out[p]
            for n in range(3):
                plain = delay(plain, f"r{p}_p{n}")
            sel = Signal(signed(8), name=f"r{p}_out")
            m.d.comb += sel.eq(Mux(d.residual, res_q, plain))
            r_out.append(sel)
        side_out = side_pre
        for n in range(3):
            side_out = delay(side_out, f"side_r{n}")
            post_valid.append(side_out.valid)

        # Output: k chunks gather into one beat of C lanes, then the FIFO -------
        masked = [Signal(signed(8), name=f"out{p}") for p in range(P)]
        for p in range(P):
            m.d.comb += masked[p].eq(Mux(side_out.q * P + p < side_out.lanes, r_out[p], 0))
        gather = Signal(data.ArrayLayout(signed(8), C))
        fifo = SyncFIFOBuffered(width=8 * C + 1, depth=hw.out_depth)
        m.submodules.fifo = fifo
        beat = Signal(output_layout(C))
        for c in range(C):
            last_chunk = c // P == k - 1
            m.d.comb += beat.data[c].eq(masked[c % P] if last_chunk else gather[c])
        m.d.comb += beat.last.eq(side_out.last)
        with m.If(en & side_out.valid):
            with m.Switch(side_out.q):
                for q in range(k - 1):
                    with m.Case(q):
                        m.d.sync += [gather[q * P + p].eq(masked[p]) for p in range(P)]
        writes = Signal()
        m.d.comb += writes.eq(side_out.valid & side_out.row_end)
        can_write = Signal()
        m.d.comb += can_write.eq(~writes | fifo.w_rdy)
        m.d.comb += [
            en.eq(can_write & (~need_res | self.res.valid)),
            self.res.ready.eq(can_write & need_res),
            fifo.w_data.eq(beat.as_value()),
            fifo.w_en.eq(en & writes),
            self.y.valid.eq(fifo.r_rdy),
            self.y.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.y.ready),
        ]

        # End of the operation: its last beat enters the FIFO. The stages'
        # counters restart with the next descriptor.
        with m.If(en & side_out.valid & side_out.last):
            m.d.sync += active.eq(0)
        with m.If(start):
            m.d.sync += [x_count.eq(0), x_i.eq(0), x_tt.eq(0), x_done.eq(0),
                         l_ot.eq(0), l_i.eq(0), l_c.eq(0), l_bank.eq(0),
                         l_w_got.eq(0), l_c_got.eq(0),
                         c_ot.eq(0), c_tt.eq(0), c_i.eq(0), c_bank.eq(0),
                         c_base.eq(0), c_t0.eq(0), c_o0.eq(0)]
            if D > 1:
                m.d.sync += [l_q.eq(0), c_f.eq(0)]
            if WF != D:
                m.d.sync += l_b.eq(0)
            if XF != D:
                m.d.sync += [x_b.eq(0), x_q.eq(0), x_base.eq(0)]

        # Idle is the AND of the stages' own idle signals: the loader, input and
        # issue counters (under `active`), the MAC pipeline, a tile waiting for
        # or in the shadow bank, a loaded weight bank, the post-processing
        # pipeline. The output FIFO is not a stage of the operation: the next
        # one may start while it empties.
        array_busy = Signal()
        m.d.comb += array_busy.eq(Cat(*(t.valid for t in tags[1:])).any() | pending)
        m.d.comb += busy.eq(active | array_busy | shadow_busy | full[0] | full[1]
                            | Cat(*post_valid).any())

        # Stall counters: a stream that starved the kernel, or the full FIFO.
        held = {name: getattr(self, name).ready & ~getattr(self, name).valid
                for name in ("x", "w", "chan", "res")}
        held["out"] = ~can_write
        for cause in STALL_CAUSES:
            with m.If(held[cause]):
                counter = getattr(self.stalls, cause)
                m.d.sync += counter.eq(counter + 1)
        return m


# Host-side packing (what the driver and the test benches send) --------------
def _lanes_int(values) -> int:
    return int.from_bytes(np.ascontiguousarray(values, dtype=np.int8).tobytes(), "little")


def linear_streams(desc: LinearDescriptor, x, weight, bias, multiplier, shift, skip=None):
    """Payload integers of every input stream for one operation.

    Parameters
    ----------
    desc : LinearDescriptor
    x : int8 array (tokens, in_features)
    weight : int8 array (out_features, in_features)
    bias : int32 array (out_features,)
    multiplier, shift : int arrays (out_features,)
    skip : int8 array (tokens, out_features), when ``desc.residual``

    Returns
    -------
    dict of lists of int: ``desc``, ``x``, ``w``, ``chan``, ``res``.
    """
    hw = desc.hw
    R, C = hw.rows, hw.cols
    T, I, O = desc.tokens, desc.in_features, desc.out_features
    x = np.asarray(x, dtype=np.int8).reshape(T, I)
    weight = np.asarray(weight, dtype=np.int8).reshape(O, I)
    XF, beats = hw.x_features, desc.x_beats
    xp = np.zeros((desc.token_tiles * R, beats * XF), np.int8)
    xp[:T, :I] = x
    # beat (tt, s): lanes r * XF + f = xp[tt*R + r, s*XF + f]
    xb = xp.reshape(desc.token_tiles, R, beats, XF).transpose(0, 2, 1, 3).reshape(-1, R * XF)
    WF, w_beats = hw.w_features, desc.w_beats
    wp = np.zeros((desc.out_tiles * C, w_beats * WF), np.int8)
    wp[:O, :I] = weight
    # beat (ot, s): lanes f * C + c = wp[ot*C + c, s*WF + f]
    wb = wp.reshape(desc.out_tiles, C, w_beats, WF).transpose(0, 2, 3, 1).reshape(-1, C * WF)
    pad = desc.out_tiles * C
    b = np.zeros(pad, np.int64)
    b[:O] = np.asarray(bias, dtype=np.int64).reshape(O)
    mu = np.ones(pad, np.int64)
    mu[:O] = np.asarray(multiplier, dtype=np.int64).reshape(O)
    sh = np.ones(pad, np.int64)
    sh[:O] = np.asarray(shift, dtype=np.int64).reshape(O)
    chan = [(int(b[k]) & 0xFFFFFFFF) | int(mu[k]) << 32 | int(sh[k]) << 47 for k in range(pad)]
    res = []
    if desc.residual:
        skip = np.asarray(skip, dtype=np.int8).reshape(T, O)
        sp = np.zeros((T, pad), np.int8)
        sp[:, :O] = skip
        res = [_lanes_int(sp[t, ot * C:(ot + 1) * C])
               for ot in range(desc.out_tiles) for t in range(T)]
    return {
        "desc": [desc.to_int()],
        "x": [_lanes_int(row) for row in xb],
        "w": [_lanes_int(row) for row in wb],
        "chan": chan,
        "res": res,
    }


def linear_output(desc: LinearDescriptor, beats) -> np.ndarray:
    """The int8 ``(tokens, out_features)`` result from the ``y`` beats; checks ``last``
    and that the padding lanes (past ``out_features``) are 0."""
    C = desc.hw.cols
    T, O = desc.tokens, desc.out_features
    expected = desc.out_tiles * T
    beats = list(beats)
    if len(beats) != expected:
        raise ValueError(f"Expected {expected} output beats, not {len(beats)}")
    raw = np.array([b & ((1 << (8 * C)) - 1) for b in beats], dtype=object)
    lanes = np.frombuffer(b"".join(int(v).to_bytes(C, "little") for v in raw),
                          dtype=np.int8).reshape(desc.out_tiles, T, C)
    lasts = [b >> (8 * C) for b in beats]
    if lasts != [0] * (expected - 1) + [1]:
        raise ValueError(f"The last flag is set on beats {[k for k, v in enumerate(lasts) if v]}, "
                         f"not only on beat {expected - 1}")
    y = lanes.transpose(1, 0, 2).reshape(T, desc.out_tiles * C)
    padding = np.argwhere(y[:, O:] != 0)
    if padding.size:
        t, c = padding[0]
        raise ValueError(f"Padding lane {O + c} of token {t} is {y[t, O + c]}, not 0 "
                         f"({len(padding)} nonzero padding lanes)")
    return np.ascontiguousarray(y[:, :O])


def linear_reference(desc: LinearDescriptor, x, weight, bias, multiplier, shift, skip=None):
    """The golden result (``moevit.model.integer.intops``) of one operation."""
    from moevit.model.integer import intops

    acc = intops.linear_acc(x, weight, bias)
    y = intops.requantize(acc, np.asarray(multiplier), np.asarray(shift))
    if desc.gelu:
        g = intops.gelu(y, desc.gelu_b, desc.gelu_c)
        y = intops.requantize(g, desc.gelu_mult, desc.gelu_shift)
    if desc.residual:
        y = intops.residual_add(y, skip, desc.res_mult_y, desc.res_mult_skip, desc.res_shift)
    return y
