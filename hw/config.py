"""Hardware parameters of one accelerator instance.

A :class:`HwConfig` fixes everything that is built into the RTL: the shape of
the multiply-accumulate array, the data widths, the depths of the on-chip
buffers and the clock target. Run-time shapes (tokens, features) are not
here: they come with each operation's descriptor (:mod:`moevit.hw.program.descriptor`)
and are checked against these limits when the descriptor is made.

``DEFAULT_HW`` holds one instance per model config (``HwConfig.for_model``).
Units other than the linear kernel add their parameters as fields here, with a
default, a check in ``__post_init__`` and, where the model constrains them, a
check in :meth:`HwConfig.check_model`.
"""

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from moevit.errors import ConfigError
from moevit.model.config import check_positive, get_config

__all__ = ["HwConfig", "DEFAULT_HW", "get_hw_config", "hw_config_model", "saved_hw_configs",
           "CONFIGS_FOLDER", "products_width"]


def products_width(count: int, a_width: int = 8, b_width: int = 8) -> int:
    """Bits of a signed accumulator that holds any sum of ``count`` products.

    The largest magnitude is ``count`` products of the two most negative
    values, ``(-2**(a-1)) * (-2**(b-1)) = 2**(a+b-2)``, plus a sign bit.
    """
    return (count << (a_width + b_width - 2)).bit_length() + 1


@dataclass(frozen=True)
class HwConfig:
    """Parameters of one accelerator instance.

    Parameters
    ----------
    name : str
        Name of the instance (usually the model config it serves).
    rows : int
        Token lanes of the multiply-accumulate array: tokens computed at once.
    cols : int
        Output lanes of the array: output features computed at once. The array
        has ``rows * cols`` multiply-accumulate units, one DSP48E2 each.
    act_width, weight_width : int
        Bits of an activation and of a weight (signed); 8 in the numeric
        contract.
    acc_width : int
        Bits of a multiply-accumulate unit's accumulator (signed); at most 32,
        the int32 of the numeric contract, and enough for ``max_in`` products.
    max_tokens : int
        Depth of the input buffer in tokens: the most tokens one linear
        descriptor may carry (a multiple of ``rows``). Longer sequences are
        split into several descriptors.
    max_in : int
        Depth of the input and weight buffers in features: the most input
        features of one linear descriptor.
    post_lanes : int
        Lanes of the linear kernel's post-processing (requantization, GELU,
        residual add); divides ``cols``. A finished tile drains in
        ``rows * cols / post_lanes`` cycles, hidden behind the next tile's
        ``in_features`` cycles when that is longer.
    out_depth : int
        Depth of the output FIFO in beats (one beat = ``cols`` int8 outputs
        of one token); it absorbs back-pressure on the output stream. At
        least 3, so that it takes one beat per cycle.
    clock_mhz : float
        Clock target in MHz (used by the cost model and the build scripts).
    heads_parallel : int
        Attention heads computed at once (the attention unit's parameter).
    row_lanes : int
        Query rows of one head each head lane computes at once: a power of two
        from 1 to :data:`MAX_ROW_LANES`, each row lane a whole QK, softmax and PV
        pipeline with its own copy of the head's K and V
        (:class:`moevit.hw.units.attention.HeadLane`).
    score_lanes : int
        Multipliers along the head dimension in each of the attention unit's
        QK and PV stages: a score takes ``head_dim / score_lanes`` cycles.
        Must divide the head width.
    kv_depth : int
        Depth of the attention unit's key/value buffer, in tokens: the longest
        sequence it takes.
    max_head_dim : int
        Widest attention head the key/value buffers hold (a multiple of
        ``score_lanes``).
    bus_width : int
        Bits of the data bus of the AXI4 memory port (``m_axi_gmem``): a power
        of two from 32 to 1024, the widths the memory movers take; 128 for the
        Zynq UltraScale+ HP ports, 256-512 for HBM. Every DRAM region of a
        compiled program starts on a bus word.
    max_outstanding : int
        Bursts the read mover and the write mover each keep in flight.
    dsp_packing : int
        int8 multiply-accumulates per DSP48E2 slice in the linear kernel's
        array: 1, or 2 (two weights of neighbouring output columns share one
        activation in one 27x18 multiply, AMD WP486); 2 needs an even ``cols``.
    chain_depth : int
        Input features each position of the linear kernel's array multiplies in
        a cycle, their products summed along a chain of multipliers (a
        DSP48E2 column: each slice's post-adder takes the one before through
        its cascade) before the accumulator: the array has ``rows x cols x
        chain_depth`` MAC units but one accumulator a position, and takes
        ``ceil(in_features / chain_depth)`` steps a tile. At most
        :attr:`MAX_CHAIN_DEPTH`; with ``dsp_packing = 2`` at most
        :attr:`MAX_PACKED_CHAIN`, the sums of low products the low field holds.
    expert_prefetch : int
        1: the top overlaps the MoE layer's expert-by-expert schedule: the
        sequencer assembles the next instruction while one runs, the linear
        engine reads the next job's weights and constants ahead into a deeper
        weight FIFO (fc2's while fc1 computes, and the next EXPERT's fc1 while
        fc2 computes when the sequencer's next instruction is an EXPERT whose
        expert the routing's scan found chosen), and an expert that the
        routing's previous scan found unchosen ends without reading the
        routing again. 0: each instruction and job fetches its own
        operands when it starts (:mod:`moevit.hw.top.moe`).
    memory_ports : int
        AXI4 memory masters of the top, each a full port of ``bus_width`` bits with
        64-bit addresses: ``m_axi_gmem`` and, from 2, ``m_axi_gmem1`` ... The read
        and write movers are spread over them by one fixed table
        (:data:`moevit.hw.top.memory_ports.PORT_OF`); 1 to
        :data:`MAX_MEMORY_PORTS`, and at most the board's ports (the bitstream build
        refuses more, :func:`moevit.host.bitstream.write_inputs`; the search tries no more).
    norm_lanes : int
        Values the LayerNorm unit takes and gives per cycle (a power of two, at most
        the bus bytes, dividing ``max_in``); a LayerNorm row's width must be a multiple
        of it. 1 is the unit of one value a cycle; more lanes sum each beat with an
        adder tree and compute each row's statistics in a pipeline
        (:mod:`moevit.hw.units.layernorm`).
    onchip_bytes : int
        Bytes of the on-chip activation memory (:mod:`moevit.hw.top.onchip`): 0,
        every activation in DRAM scratch; else a multiple of the bus word, and
        the compiler places the activations by liveness in a window of this
        size (:mod:`moevit.hw.program.compiler`).
    weight_ports : int
        Memory ports the read channel ``w`` (the weights) stripes its bursts over:
        1, its own port as in :data:`~moevit.hw.top.memory_ports.PORT_OF`; ``k``
        up to ``memory_ports``, its bursts dealt in turn to its port and the ``k - 1``
        after it (:func:`moevit.hw.top.memory_ports.weight_stripe`), still one mover
        of one bus word a cycle.
    issue_lanes : int
        Instructions the top may run at once. 1: one after the other. 2: one on the
        *main* lane (LINEAR, TASK_LINEAR, EXPERT: the linear kernel) beside one on the
        *side* lane (every other engine), an instruction waiting for the other lane's
        only when the program does not mark it ``concurrent``
        (:data:`~moevit.hw.program.isa.LANE_OF`); the compiler splits a batch into two
        half batches and interleaves them so that each lane has work. Needs 2 memory
        ports or more.
    combine_lanes : int
        int8 lanes of the top's COMBINE engine (:class:`moevit.hw.top.moe.CombineEngine`),
        each five DSP48E2 (gate weight, requantize, residual add): 0, as many as ``cols``;
        else a divisor of ``cols``. A COMBINE takes ``(top_k + 1) * dim / lanes`` cycles
        a token: more lanes than its slots arrive at only cost DSPs.
    context_lanes : int
        Requantizers of each attention head lane's context rows
        (:class:`moevit.hw.units.attention.HeadLane`), two DSP48E2 each: 0, as many as
        ``score_lanes`` (a context beat leaves the cycle it is gathered); else a divisor of
        them, a beat leaving ``score_lanes / context_lanes`` cycles after the one before
        (with one head lane only: the engine gathers the head lanes' rows in turn). Rows
        finish ``row_lanes`` every ``tokens * chunks`` cycles, so a few keep up.
    kv_banks : int
        Banks of each attention row pipeline's K and V buffers
        (:class:`moevit.hw.units.attention.AttentionHead`): 1, a head's K and V load once
        the head before it has finished; 2, they load into the other bank while it
        computes, so a descriptor's heads after its first start without waiting for them.
        Where a bank fills at most half its block RAM's depth (edge-moe's 144 tokens),
        the second costs no block RAM.
    token_chunks : int
        1: on a top of two issue lanes, a one-image program runs its token-wise layers
        (LayerNorm, the linear layers, the gate and its routing, COMBINE) in two chunks of
        rows, one chunk's linear layers beside the other's LayerNorm, routing and COMBINE
        (:meth:`moevit.hw.program.compiler._Compiler.token_chunks`); the attention and the
        experts still take every row at once. 2: the attention too, each chunk's query rows
        against every key in an ATTENTION of their own, the second chunk's beside the first
        chunk's next layers. 0: one image runs one instruction at a time. Only the compiler
        reads it: the RTL and the programs' fingerprint are the two-lane top's
        (:meth:`rtl`).
    weight_streaming : int
        1: the linear kernel issues a weight bank's first token tile behind the bank's
        load, each step once its weight beat is in (as it does behind the ``x`` stream),
        so an operation's first bank no longer loads whole before its first step; the
        tile's last step still waits for the bank's constants. 0: every tile waits for
        its bank to be full (the kernel every measured figure before 2026-12-03 is of).
    x_by_words : int
        1: the linear engine reads an x that lies in the on-chip window a bus word of every
        row at a time (word 0 of each row of the token tile, then word 1, ...: one request
        a row and word, :class:`moevit.hw.top.linear_engine.XTiler`), and the kernel's steps
        on a word's features start once that word of every row is in, so an operation's
        first step waits for one word a row, not for its first tile whole (on
        zcu102-edge-moe a 768-input layer's 33 rows took ~400 cycles); the on-chip window's
        read channels then take a request as the last beat of the one before is read
        (one-word requests would leave a channel idle every other cycle). From DRAM a row
        a request as before. 0: every measured figure before 2026-12-05.
    wide_x : int
        1: each beat of the linear kernel's ``x`` stream holds ``chain_depth`` consecutive
        features of every row of its token tile (the x tiler takes them out of one bus word,
        so ``chain_depth`` must divide the word's bytes), and the first out tile takes its
        activations as fast as its chains multiply them. 0: a feature a beat, so a chain of
        ``D`` waits ``D`` cycles a step for them on the first out tile (on zcu102-edge-moe's
        chains of 2, ~3,100 cycles of a 768-input layer of 8 token tiles); every measured
        figure before 2026-12-08. With ``chain_depth`` 1 a beat is a step either way.
    wide_w : int
        1: each beat of the linear kernel's ``w`` stream holds ``chain_depth`` consecutive
        features of the out tile's ``cols`` weights (the order they lie in memory), so a
        chained array loads a weight bank ``chain_depth`` times as fast as a feature a beat
        and can take its weights faster than the memory brings them. 0: a feature a beat
        (every measured figure before 2026-12-08). ``chain_depth`` must divide the bus
        word's bytes (a layer's inputs, whole bus words, are then whole beats); with
        ``chain_depth`` 1 a beat is a step either way.
    pipelined_heads : int
        1 (with ``kv_banks`` 2): each attention row pipeline's QK takes a descriptor's next
        head's rows straight after its last row of the head before, whose last rows still
        pass the softmax and PV on the other bank; a head's K and V load once PV has
        finished the head that used their bank before
        (:class:`moevit.hw.units.attention.AttentionHead`). Each head after the first no
        longer waits for the one before to drain (zcu102-edge-moe: ~630 cycles a
        descriptor of three heads). 0: the attention of every figure measured before it.
    score_packing : int
        int8 multiplies per DSP48E2 in the attention kernel's QK stage: 1, or 2 (two
        neighbouring keys share the query's value in one 27x18 multiply, AMD WP486: a row
        pipeline's QK takes its keys in pairs, half its score lanes a cycle, so a pair
        takes ``2 * head_dim / score_lanes`` cycles, the same rate on half the DSP48E2;
        an odd sequence's last key pairs with nothing, one ``head_dim / score_lanes``
        more a query row); needs an even ``score_lanes``. PV's products (a 16-bit
        probability times an int8 value, 24 bits) do not pack.
    chan_striped : int
        1 (with ``weight_ports`` > 1): the read channel ``chan`` (each output channel's
        bias and requantization constants, read with the weights) deals its bursts over
        the weights' ports as ``w`` does (:func:`moevit.hw.top.memory_ports.chan_stripe`),
        so that no port of the weight stream also carries every layer's constants (on
        zcu102-edge-moe an expert's 4,608 constant bytes rode one of the four weight
        ports: 2,592 cycles of its bytes against the others' 2,304). 0: ``chan`` on its
        own port of :data:`~moevit.hw.top.memory_ports.PORT_OF`.

    Raises
    ------
    ConfigError
        When a parameter is out of range or two parameters disagree; the
        message names the rule and the values.
    """

    name: str = "custom"
    rows: int = 4
    cols: int = 16
    act_width: int = 8
    weight_width: int = 8
    acc_width: int = 32
    max_tokens: int = 128
    max_in: int = 256
    post_lanes: int = 4
    out_depth: int = 64
    clock_mhz: float = 250.0
    # Attention unit (issue 7) parameters.
    heads_parallel: int = 1
    # Query rows per head lane at once (issue 14): a power of two.
    row_lanes: int = 1
    score_lanes: int = 8
    kv_depth: int = 256
    max_head_dim: int = 64
    # Memory port (issue 12 §3) parameters.
    bus_width: int = 128
    max_outstanding: int = 4
    # DSP packing (issue 14): int8 MACs per DSP48E2.
    dsp_packing: int = 1
    # Input features a step of the linear array, summed along a chain (issue 14).
    chain_depth: int = 1
    # The expert schedule overlapped (issue 12): 0 or 1.
    expert_prefetch: int = 0
    # AXI4 memory masters of the top (issue 14): 1 = the single m_axi_gmem.
    memory_ports: int = 1
    # LayerNorm lanes (issue 14): values per cycle.
    norm_lanes: int = 1
    # On-chip activation memory (issue 12 §3): bytes, 0 for none.
    onchip_bytes: int = 0
    # The weight stream striped over memory ports (issue 14): 1 = its own port.
    weight_ports: int = 1
    # Instructions the top runs at once (issue 14): 1, or 2 (the linear kernel's and the rest's).
    issue_lanes: int = 1
    # The top's COMBINE lanes (issue 14): 0 = cols.
    combine_lanes: int = 0
    # The attention head lanes' context requantizers (issue 14): 0 = score_lanes.
    context_lanes: int = 0
    # A weight bank's first token tile issues behind its load (issue 14): 0 or 1.
    weight_streaming: int = 0
    # One image's token-wise layers in two chunks on the two issue lanes (issue 14): 0 or 1.
    token_chunks: int = 0
    # The attention's K and V buffers, one head ahead (issue 14): 1 or 2 banks.
    kv_banks: int = 1
    # The linear engine's x tiles a bus word of every row at a time (issue 14): 0 or 1.
    x_by_words: int = 0
    # chain_depth features of each row an x beat of the linear kernel (issue 14): 0 or 1.
    wide_x: int = 0
    # chain_depth features of the out tile's weights a w beat of the linear kernel: 0 or 1.
    wide_w: int = 0
    # The attention's next head's rows straight behind the head before's (issue 14): 0 or 1.
    pipelined_heads: int = 0
    # The channel constants striped over the weights' ports (issue 14): 0 or 1.
    chan_striped: int = 0
    # int8 multiplies per DSP48E2 in the attention's QK stage (issue 14): 1 or 2.
    score_packing: int = 1

    # Fixed by the numeric contract (moevit.model.integer.intops.requantize).
    BIAS_WIDTH = 32
    MULTIPLIER_WIDTH = 15
    SHIFT_WIDTH = 6
    # Bus widths the memory movers take (moevit.hw.top.movers.DATA_WIDTHS).
    MIN_BUS_WIDTH = 32
    MAX_BUS_WIDTH = 1024
    #: Memory ports the top can spread its movers over: one per mover (7 read, 1 write).
    MAX_MEMORY_PORTS = 8
    #: Fields left out of :meth:`to_dict`, and so of the fingerprint a program records
    #: (:func:`moevit.hw.program.program.hw_hash`), while they hold this value, the
    #: behaviour from before they existed: programs, caches and saved configs made then
    #: stay valid.
    SILENT_DEFAULTS = {"memory_ports": 1, "norm_lanes": 1, "onchip_bytes": 0,
                       "weight_ports": 1, "row_lanes": 1, "issue_lanes": 1, "combine_lanes": 0,
                       "weight_streaming": 0, "token_chunks": 0, "context_lanes": 0,
                       "kv_banks": 1, "x_by_words": 0, "pipelined_heads": 0,
                       "chan_striped": 0, "chain_depth": 1, "score_packing": 1,
                       "wide_x": 0, "wide_w": 0}
    #: Fields the RTL does not read (how the compiler lays a program out): :meth:`rtl`.
    COMPILER_ONLY = ("token_chunks",)
    #: Row lanes of a head lane: each copies the head's K and V, so a few.
    MAX_ROW_LANES = 16
    #: Multipliers along one chain of the linear array (a few DSP48E2 of a column).
    MAX_CHAIN_DEPTH = 8
    #: ... with two int8 MACs a DSP48E2: the low field (18 bits) holds the sum of at most 7
    #: low products (each within +-2**14).
    MAX_PACKED_CHAIN = 7

    def __post_init__(self):
        for what, name in (
            ("Array rows", "rows"),
            ("Array columns", "cols"),
            ("Activation width", "act_width"),
            ("Weight width", "weight_width"),
            ("Accumulator width", "acc_width"),
            ("Token buffer depth", "max_tokens"),
            ("Input buffer depth", "max_in"),
            ("Post-processing lanes", "post_lanes"),
            ("Output FIFO depth", "out_depth"),
            ("Heads in parallel", "heads_parallel"),
            ("Score lanes", "score_lanes"),
            ("Key/value buffer depth", "kv_depth"),
            ("Attention head width", "max_head_dim"),
            ("Bus width", "bus_width"),
            ("Outstanding bursts", "max_outstanding"),
        ):
            check_positive(what, getattr(self, name))
        if isinstance(self.clock_mhz, bool) or not isinstance(self.clock_mhz, (int, float)) \
                or not self.clock_mhz > 0:
            raise ConfigError(f"Clock target must be a positive number of MHz, not {self.clock_mhz!r}")
        if self.act_width != 8 or self.weight_width != 8:
            raise ConfigError(
                f"Activation and weight widths must be 8 (int8 numeric contract), not "
                f"{self.act_width} and {self.weight_width}"
            )
        if self.acc_width > self.BIAS_WIDTH:
            raise ConfigError(
                f"Accumulator of {self.acc_width} bits exceeds the int32 accumulation of the "
                f"numeric contract; at most {self.BIAS_WIDTH}"
            )
        needed = products_width(self.max_in, self.act_width, self.weight_width)
        if self.acc_width < needed:
            raise ConfigError(
                f"Accumulator of {self.acc_width} bits cannot hold {self.max_in} int8 products; "
                f"needs {needed}"
            )
        if self.bus_width & (self.bus_width - 1):
            raise ConfigError(f"Bus width must be a power of two bits, not {self.bus_width}")
        if not self.MIN_BUS_WIDTH <= self.bus_width <= self.MAX_BUS_WIDTH:
            raise ConfigError(
                f"Bus width of {self.bus_width} bits is outside the {self.MIN_BUS_WIDTH} to "
                f"{self.MAX_BUS_WIDTH} bits the memory movers take")
        if isinstance(self.row_lanes, bool) or not isinstance(self.row_lanes, int) \
                or not 1 <= self.row_lanes <= self.MAX_ROW_LANES \
                or self.row_lanes & (self.row_lanes - 1):
            raise ConfigError(
                f"Row lanes must be a power of two from 1 to {self.MAX_ROW_LANES}, not "
                f"{self.row_lanes!r}")
        if self.max_head_dim % self.score_lanes:
            raise ConfigError(
                f"Score lanes {self.score_lanes} do not divide the attention head width "
                f"{self.max_head_dim}"
            )
        if self.out_depth < 3:
            # The linear kernel's buffered FIFO takes a beat every other cycle below 3.
            raise ConfigError(
                f"Output FIFO depth {self.out_depth} cannot take one beat per cycle; "
                f"at least 3")
        if self.cols % self.post_lanes:
            raise ConfigError(
                f"Post-processing lanes {self.post_lanes} do not divide the {self.cols} array "
                f"columns")
        if isinstance(self.dsp_packing, bool) or self.dsp_packing not in (1, 2):
            raise ConfigError(
                f"DSP packing must be 1 or 2 int8 MACs per DSP48E2, not {self.dsp_packing!r}")
        if self.dsp_packing == 2 and self.cols % 2:
            raise ConfigError(
                f"DSP packing 2 pairs neighbouring output columns; {self.cols} array columns "
                f"are odd")
        if type(self.chain_depth) is not int or not 1 <= self.chain_depth <= self.MAX_CHAIN_DEPTH:
            raise ConfigError(
                f"Chain depth must be an integer from 1 to {self.MAX_CHAIN_DEPTH}, not "
                f"{self.chain_depth!r}")
        if self.dsp_packing == 2 and self.chain_depth > self.MAX_PACKED_CHAIN:
            raise ConfigError(
                f"Chain depth {self.chain_depth} with DSP packing 2: the low product's field "
                f"holds the sum of at most {self.MAX_PACKED_CHAIN}")
        if type(self.expert_prefetch) is not int or self.expert_prefetch not in (0, 1):
            raise ConfigError(
                f"Expert prefetch must be 0 or 1, not {self.expert_prefetch!r}")
        if isinstance(self.memory_ports, bool) or not isinstance(self.memory_ports, int) \
                or not 1 <= self.memory_ports <= self.MAX_MEMORY_PORTS:
            raise ConfigError(
                f"Memory ports must be an integer from 1 to {self.MAX_MEMORY_PORTS} (one per "
                f"mover), not {self.memory_ports!r}")
        if isinstance(self.norm_lanes, bool) or not isinstance(self.norm_lanes, int) \
                or self.norm_lanes < 1 or self.norm_lanes & (self.norm_lanes - 1):
            raise ConfigError(
                f"LayerNorm lanes must be a power of two, not {self.norm_lanes!r}")
        if 8 * self.norm_lanes > self.bus_width:
            raise ConfigError(
                f"LayerNorm lanes {self.norm_lanes} exceed the {self.bus_width // 8} bytes a "
                f"bus word of {self.bus_width} bits brings a cycle")
        if self.max_in % self.norm_lanes:
            raise ConfigError(
                f"LayerNorm lanes {self.norm_lanes} do not divide the input buffer depth "
                f"{self.max_in}")
        word = self.bus_width // 8
        if isinstance(self.onchip_bytes, bool) or not isinstance(self.onchip_bytes, int) \
                or self.onchip_bytes < 0 or self.onchip_bytes % word:
            raise ConfigError(
                f"On-chip activation memory must be a non-negative multiple of the "
                f"{word}-byte bus word, not {self.onchip_bytes!r} bytes")
        if isinstance(self.weight_ports, bool) or not isinstance(self.weight_ports, int) \
                or not 1 <= self.weight_ports <= self.memory_ports:
            raise ConfigError(
                f"Weight ports must be an integer from 1 to the {self.memory_ports} memory "
                f"port(s), not {self.weight_ports!r}")
        if isinstance(self.issue_lanes, bool) or self.issue_lanes not in (1, 2):
            raise ConfigError(f"Issue lanes must be 1 or 2, not {self.issue_lanes!r}")
        if self.issue_lanes == 2 and self.memory_ports < 2:
            raise ConfigError(
                "Two issue lanes need at least 2 memory ports: the second lane's write mover "
                "takes a port's write channel of its own")
        for what, lanes, whole, of in (("COMBINE lanes", self.combine_lanes, self.cols,
                                        "array columns"),
                                       ("Context lanes", self.context_lanes, self.score_lanes,
                                        "score lanes")):
            if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 0 \
                    or (lanes and whole % lanes):
                raise ConfigError(f"{what} must be 0 (as many as the {whole} {of}) or a "
                                  f"divisor of them, not {lanes!r}")
        if self.context_width < self.score_lanes and self.heads_parallel > 1:
            raise ConfigError(
                f"Context lanes below the score lanes need one head lane, not "
                f"{self.heads_parallel}: the attention engine gathers the head lanes' rows in "
                f"turn, and requantizers slower than that gather would hold each other's")
        if type(self.kv_banks) is not int or self.kv_banks not in (1, 2):
            raise ConfigError(f"K/V banks must be 1 or 2, not {self.kv_banks!r}")
        if type(self.weight_streaming) is not int or self.weight_streaming not in (0, 1):
            raise ConfigError(f"Weight streaming must be 0 or 1, not {self.weight_streaming!r}")
        if type(self.x_by_words) is not int or self.x_by_words not in (0, 1):
            raise ConfigError(f"x_by_words must be 0 or 1, not {self.x_by_words!r}")
        if type(self.wide_x) is not int or self.wide_x not in (0, 1):
            raise ConfigError(f"wide_x must be 0 or 1, not {self.wide_x!r}")
        if self.wide_x and word % self.chain_depth:
            raise ConfigError(
                f"wide_x 1 takes an x beat's {self.chain_depth} features (the chain depth) out "
                f"of one bus word, whose {word} bytes they do not divide")
        if type(self.wide_w) is not int or self.wide_w not in (0, 1):
            raise ConfigError(f"wide_w must be 0 or 1, not {self.wide_w!r}")
        if self.wide_w and word % self.chain_depth:
            raise ConfigError(
                f"wide_w 1 packs {self.chain_depth} features (the chain depth) a w beat, which "
                f"a layer's inputs (whole {word}-byte bus words) must fill: the depth must "
                f"divide the word's bytes")
        if type(self.pipelined_heads) is not int or self.pipelined_heads not in (0, 1):
            raise ConfigError(f"pipelined_heads must be 0 or 1, not {self.pipelined_heads!r}")
        if self.pipelined_heads and self.kv_banks != 2:
            raise ConfigError("pipelined_heads 1 needs kv_banks 2: a head's rows follow the "
                              f"head before's only into the other bank (kv_banks {self.kv_banks})")
        if type(self.score_packing) is not int or self.score_packing not in (1, 2):
            raise ConfigError(f"Score packing must be 1 or 2 int8 multiplies per DSP48E2, not "
                              f"{self.score_packing!r}")
        if self.score_packing == 2 and self.score_lanes % 2:
            raise ConfigError(f"Score packing 2 takes half the score lanes a cycle, two keys a "
                              f"DSP48E2: they must be even, not {self.score_lanes}")
        if type(self.chan_striped) is not int or self.chan_striped not in (0, 1):
            raise ConfigError(f"chan_striped must be 0 or 1, not {self.chan_striped!r}")
        if self.chan_striped and self.weight_ports < 2:
            raise ConfigError("chan_striped 1 needs weight_ports 2 or more: the constants are "
                              f"striped over the weights' ports (weight_ports {self.weight_ports})")
        if type(self.token_chunks) is not int or self.token_chunks not in (0, 1, 2):
            raise ConfigError(f"Token chunks must be 0, 1 or 2, not {self.token_chunks!r}")
        if self.token_chunks and self.issue_lanes == 1:
            raise ConfigError("Token chunks run one chunk beside the other on two issue lanes; "
                              "this HwConfig has one (issue_lanes 1)")
        if self.max_tokens % self.rows:
            raise ConfigError(
                f"Token buffer depth {self.max_tokens} is not a multiple of the {self.rows} "
                f"array rows"
            )

    @property
    def macs(self) -> int:
        """Multiply-accumulate units in the array."""
        return self.rows * self.cols * self.chain_depth

    @property
    def max_steps(self) -> int:
        """Steps of the linear array a tile of ``max_in`` features takes."""
        return -(-self.max_in // self.chain_depth)

    @property
    def x_features(self) -> int:
        """Features of every row a beat of the linear kernel's ``x`` stream brings
        (:attr:`wide_x`)."""
        return self.chain_depth if self.wide_x else 1

    @property
    def w_features(self) -> int:
        """Features of the out tile's weights a beat of the linear kernel's ``w`` stream
        brings (:attr:`wide_w`)."""
        return self.chain_depth if self.wide_w else 1

    @property
    def combine_width(self) -> int:
        """Lanes of the top's COMBINE engine (``combine_lanes``, 0: ``cols``)."""
        return self.combine_lanes or self.cols

    @property
    def context_width(self) -> int:
        """Requantizers of an attention head lane (``context_lanes``, 0: ``score_lanes``)."""
        return self.context_lanes or self.score_lanes

    @property
    def attention_macs(self) -> int:
        """Multiply-accumulate units of the attention kernel: a QK and a PV multiplier per
        score lane of every row lane of every head lane."""
        return 2 * self.score_lanes * self.heads_parallel * self.row_lanes

    def check_model(self, model) -> None:
        """Check that this instance can run every layer of ``model``.

        Parameters
        ----------
        model : moevit.model.config.ModelConfig

        Raises
        ------
        ConfigError
            When the array's columns do not divide the model's width (COMBINE
            sums the experts' rows in beats of ``cols``; a beat may hold several
            heads), a linear layer has more input features than the input
            buffer holds, the score lanes do not divide the
            head width, or the sequence or a head is longer than the
            attention unit's key/value buffers, the attention engine's head lanes
            are not whole bus words, or the LayerNorm lanes do not divide the
            model's width.
        """
        if model.dim % self.cols:
            raise ConfigError(
                f"Array columns {self.cols} do not divide the width {model.dim} of model "
                f"{model.name!r}; COMBINE sums its rows in beats of the columns"
            )
        if model.heads % self.heads_parallel:
            raise ConfigError(
                f"Heads in parallel {self.heads_parallel} do not divide the {model.heads} heads "
                f"of model {model.name!r}"
            )
        if model.head_dim % self.score_lanes:
            raise ConfigError(
                f"Score lanes {self.score_lanes} do not divide the head width {model.head_dim} "
                f"of model {model.name!r}"
            )
        if model.head_dim > self.max_head_dim:
            raise ConfigError(
                f"Attention head width {self.max_head_dim} cannot hold the {model.head_dim}-wide "
                f"heads of model {model.name!r}"
            )
        if model.tokens > self.kv_depth:
            raise ConfigError(
                f"Key/value buffer of {self.kv_depth} tokens cannot hold the {model.tokens} "
                f"tokens of model {model.name!r}; needs {model.tokens}"
            )
        if model.dim % self.norm_lanes:
            raise ConfigError(
                f"LayerNorm lanes {self.norm_lanes} do not divide the width {model.dim} of "
                f"model {model.name!r}'s LayerNorm rows")
        widest = _widest_input(model)
        if widest > self.max_in:
            raise ConfigError(
                f"Input buffer of {self.max_in} features cannot hold the {widest} input features "
                f"of model {model.name!r}; needs {widest}"
            )
        word = self.bus_width // 8
        if (self.heads_parallel * model.head_dim) % word:
            raise ConfigError(
                f"The attention engine's {self.heads_parallel} head lane(s) of {model.head_dim} "
                f"bytes are not whole {self.bus_width}-bit bus words ({word} bytes) for model "
                f"{model.name!r}; every request of the engine is whole bus words")

    @classmethod
    def for_model(cls, model, **changes) -> "HwConfig":
        """The default instance for ``model`` (a ModelConfig or its name), with changes.

        The result is checked against the model (:meth:`check_model`).
        """
        if isinstance(model, str):
            model = get_config(model)
        base = _DEFAULTS.get(model.name)
        if base is None:
            base = dict(name=model.name, cols=min(16, model.head_dim), max_in=_widest_input(model),
                        post_lanes=math.gcd(4, min(16, model.head_dim)),
                        max_tokens=-(-model.tokens // 4) * 4,
                        score_lanes=math.gcd(8, model.head_dim),
                        kv_depth=max(256, model.tokens),
                        max_head_dim=max(64, -(-model.head_dim // 8) * 8))
        hw = cls(**{**base, **changes})
        hw.check_model(model)
        return hw

    def replace(self, **changes) -> "HwConfig":
        """A copy with some fields changed, validated again."""
        return replace(self, **changes)

    def rtl(self) -> "HwConfig":
        """This HwConfig less the fields only the compiler reads (:data:`COMPILER_ONLY` at
        their defaults): what the RTL is generated from and what a program's fingerprint
        names (:func:`moevit.hw.program.program.hw_hash`), so one top runs the programs of
        both."""
        return self.replace(**{name: self.SILENT_DEFAULTS[name] for name in self.COMPILER_ONLY})

    def to_dict(self) -> dict:
        """The fields, less those at their :data:`SILENT_DEFAULTS` value."""
        silent = self.SILENT_DEFAULTS
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in silent or getattr(self, f.name) != silent[f.name]}

    @classmethod
    def from_dict(cls, data: dict) -> "HwConfig":
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"Malformed hardware config: {error}") from None


def _widest_input(model):
    """The most input features of any linear layer of ``model``."""
    return max(model.patch_dim, model.dim, model.mlp_hidden, model.expert_hidden)


# One instance per model config. Rows are chosen so that the token count pads
# little (tiny: 65 -> 68, edge-moe: 129 -> 136, ViT-S 197 -> 200); columns divide
# the model's width; the input buffer holds the widest layer's input. All three
# target the ZCU102/ZCU104 HP ports (128 bits); there a 4 KiB burst is 256 beats,
# so 4 bursts in flight cover a DDR latency of hundreds of cycles.
_DEFAULTS = {
    "tiny": dict(name="tiny", rows=4, cols=16, max_tokens=128, max_in=256, post_lanes=4,
                 out_depth=32, bus_width=128, max_outstanding=4),
    "edge-moe": dict(name="edge-moe", rows=8, cols=32, max_tokens=256, max_in=768,
                     post_lanes=8, out_depth=64, bus_width=128, max_outstanding=4),
    "m3vit-s": dict(name="m3vit-s", rows=8, cols=32, max_tokens=256, max_in=1536,
                    post_lanes=8, out_depth=64, kv_depth=1216, bus_width=128,
                    max_outstanding=4),
}


#: Named instances chosen by ``moevit dse --save`` for a board and a model config
#: (``zcu102-edge-moe.json``): data, generated once and committed.
CONFIGS_FOLDER = Path(__file__).parent / "configs"


def saved_hw_configs() -> list:
    """Names of the saved instances (:data:`CONFIGS_FOLDER`)."""
    return sorted(p.stem for p in CONFIGS_FOLDER.glob("*.json"))


def _saved(name):
    """The saved instance file's ``hw`` and ``config`` (its model config), or None."""
    path = CONFIGS_FOLDER / f"{name}.json"
    if not (isinstance(name, str) and path.is_file()):
        return None
    try:
        data = json.loads(path.read_text())
        return data["hw"], data["config"]
    except KeyError as error:
        raise ConfigError(f"The saved hardware config {path} has no {error} field") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"The saved hardware config {path} is malformed: {error}") from None


def _check_name(name):
    from moevit.model.config import CONFIGS

    if name not in CONFIGS:
        raise ConfigError(f"Unknown config {name!r}; known configs are {sorted(CONFIGS)}, "
                          f"saved hardware configs {saved_hw_configs()}")


def get_hw_config(name: str) -> HwConfig:
    """A saved instance (``zcu102-edge-moe``, :func:`saved_hw_configs`), or the default
    hardware instance of the named model config."""
    saved = _saved(name)
    if saved:
        return HwConfig.from_dict(saved[0])
    _check_name(name)
    return HwConfig.for_model(name)


def hw_config_model(name: str) -> str:
    """The model config that the named instance serves: a saved instance's (the search
    chose it for that model), or ``name`` itself (a model config's default instance)."""
    saved = _saved(name)
    if saved:
        return saved[1]
    _check_name(name)
    return name


class _Defaults(dict):
    def __missing__(self, name):
        self[name] = get_hw_config(name)
        return self[name]


DEFAULT_HW = _Defaults()
"""Default instance per model config name, made on first use: ``DEFAULT_HW["tiny"]``."""
