"""The streaming attention kernel (UbiMoE's latency-optimized attention).

Per head, ``out = requantize(weighted_sum(softmax(Q Kᵀ, M_s, S_s), V), M_o, S_o)``
exactly as the golden model computes it (``moevit.model.integer.intops``), on
streams: K and V are held on chip for the head, the query rows stream
through, and the score matrix never leaves the kernel (one row of it lives
in the softmax unit's row buffers).

One head lane (:class:`AttentionHead`) is a three-stage row pipeline::

    q ──► QK: score_j = Σ_c q·k_j  ──► Softmax ──► PV: acc += p_j·v_j ──► acc
          (L multipliers, K buffer)    (4 stages,     (L multipliers, V buffer)
                                        row buffers)

``L = hw.score_lanes`` multipliers work along the head dimension in each of
QK and PV, so one score (and one probability's update of the context row)
takes ``C = head_dim / L`` cycles and a query row ``tokens * C`` cycles in
each stage; the stages work on consecutive rows at once (with ``hw.score_packing`` 2,
QK takes its keys in pairs on ``L / 2`` multipliers of two products each, at the same
rate). The kernel has
``hw.heads_parallel`` head lanes (:class:`HeadLane`), each with its own streams;
lane ``p`` computes heads ``p, p + P, p + 2P, ...`` of the descriptor. A head
lane holds ``hw.row_lanes`` such pipelines, each with its own copy of K and V:
they take the head's query rows in turn, so that many rows compute at once. The
pipelines hand their context rows out as int32 accumulators; the head lane
requantizes them (``L`` requantizers, shared by its row lanes: a row's context
leaves in ``C`` cycles of the ``tokens * C`` it took to compute, so one set keeps
up with all of them).

Stream order, per head of a lane: K (``tokens * C`` beats, token-major, each
beat ``L`` int8 of one token), V (same, accepted alongside K), then Q (``rows * C``
beats, accepted once K and V are in: the descriptor's query rows, a range of the
tokens' or all of them); ``o`` carries the context rows in Q's beat order. With two
banks of K and V (``hw.kv_banks``) the next head's K and V are accepted while the head
before computes (its Q still streaming); with pipelined heads (``hw.pipelined_heads``)
Q rows are accepted from the start, two ahead of QK, and QK takes the next head's rows
straight after the head before's while those pass the softmax and PV.
"""

import bisect
from functools import lru_cache

from amaranth import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.units import intexpr
from moevit.hw.config import products_width
from moevit.hw.units.linear import PAIR_PRODUCT, pack_pair, unpack_product
from moevit.hw.units.softmax import EMIT_LATENCY, RowSchedule, Softmax
from moevit.model.integer import intops

__all__ = ["AttentionHead", "HeadLane", "Attention", "beat_layout", "acc_layout", "head_cycles",
           "head_tail", "heads_cycles", "row_issue_cycles", "RESTART_CYCLES", "restart_cycles"]

# u16 probability times int8 value: s24; a row of them sums to an int32
# (intops.weighted_sum).
_ACC_WIDTH = 32


def beat_layout(lanes):
    """One stream beat: ``lanes`` int8 values along the head dimension."""
    return data.ArrayLayout(signed(8), lanes)


def acc_layout(lanes):
    """One context beat before requantization: ``lanes`` int32 accumulators."""
    return data.ArrayLayout(signed(_ACC_WIDTH), lanes)


def _adder_tree(values):
    while len(values) > 1:
        values = [values[k] + values[k + 1] if k + 1 < len(values) else values[k]
                  for k in range(0, len(values), 2)]
    return values[0]


class _Heads:
    """How an :class:`AttentionHead`'s stages move through a descriptor's heads (one bank
    or two): the signals the sequencing drives and those the stages pulse."""

    def __init__(self, words):
        self.idle, self.computing = Signal(), Signal()
        self.k_in = Signal()        # QK's head has its K and V in
        self.k_base, self.v_base = Signal(range(words)), Signal(range(words))  # their banks
        # One a row: its Q in, its last key issued, its last probability taken by PV, its
        # context's last beat out.
        self.row_taken, self.row_issued = Signal(), Signal()
        self.row_finished, self.row_left = Signal(), Signal()
        self.q_more = None          # rows_loaded -> more Q rows to take


class AttentionHead(wiring.Component):
    """One row pipeline: QK, softmax and PV on ``rows`` query rows of one head at a time;
    the context rows leave as int32 accumulators (:class:`HeadLane` requantizes them).

    Parameters
    ----------
    lanes : int
        Multipliers along the head dimension in each of QK and PV.
    max_tokens : int
        Depth of the K and V buffers in tokens (the longest sequence).
    max_head_dim : int
        Widest head; a multiple of ``lanes``.
    kv_banks : int
        1: a head's K and V load once the head before has left the pipeline; 2: into the
        other bank, while the head before computes (at most one head ahead).
    pipelined_heads : bool
        With two banks: QK takes the next head's rows straight after its last row of the
        head before, whose last rows still pass the softmax and PV on the other bank (Q
        rows taken from the start, not once the head's K and V are in); the next head's
        K and V load once PV has finished the head that used its bank before. Else a
        head starts once the head before has left the pipeline.
    score_packing : int
        2: QK's products two to a DSP48E2 (AMD WP486): two neighbouring keys share the
        query's value, half the lanes a step (:meth:`_qk`), a row ``chunks`` cycles longer
        when its keys are odd (:func:`row_issue_cycles`); 1: a multiplier a product.

    Members
    -------
    tokens, rows, chunks, rounds : In
        Run-time shape: sequence length (keys and values), the query rows this
        pipeline computes of each head, ``head_dim / lanes`` and heads; held
        while ``busy``.
    sm_mult, sm_shift : In
        Softmax constants.
    start : In(1)
        Pulse: begin with the values above.
    busy : Out(1)
        Working, or a context beat still waits on ``o``.
    q, k, v : In(stream.Signature(beat_layout(lanes)))
    acc : Out(stream.Signature(acc_layout(lanes)))
        A context row's accumulators, ``lanes`` per beat in ``q``'s beat order.
    """

    def __init__(self, *, lanes, max_tokens, max_head_dim, kv_banks=1, pipelined_heads=False,
                 score_packing=1):
        self._MustUse__silence = True  # a unit rejected here is not an unused one
        for what, value in (("Score lanes", lanes), ("Key/value buffer depth", max_tokens),
                            ("Head dim", max_head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise TypeError(f"{what} must be a positive integer, not {value!r}")
        if max_head_dim % lanes:
            raise ValueError(f"Score lanes {lanes} do not divide the head dim {max_head_dim}")
        if kv_banks not in (1, 2) or isinstance(kv_banks, bool):
            raise ValueError(f"K/V banks must be 1 or 2, not {kv_banks!r}")
        if pipelined_heads and kv_banks != 2:
            raise ValueError("Pipelined heads need two banks of K and V")
        if score_packing not in (1, 2) or isinstance(score_packing, bool) \
                or lanes % score_packing:
            raise ValueError(f"Score packing must be 1, or 2 with even score lanes, not "
                             f"{score_packing!r} ({lanes} lanes)")
        self._packing = score_packing
        self._kv_banks = kv_banks
        self._pipelined_heads = bool(pipelined_heads)
        self._lanes = lanes
        self._max_tokens = max_tokens
        self._max_chunks = max_head_dim // lanes
        beat = stream.Signature(beat_layout(lanes))
        del self._MustUse__silence
        super().__init__({
            "tokens": In(range(max_tokens + 1)),
            "rows": In(range(max_tokens + 1)),
            "chunks": In(range(self._max_chunks + 1)),
            "rounds": In(8),
            "sm_mult": In(intops.MULT_BITS),
            "sm_shift": In(6),
            "start": In(1),
            "busy": Out(1),
            "q": In(beat),
            "k": In(beat),
            "v": In(beat),
            "acc": Out(stream.Signature(acc_layout(lanes))),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def score_width(self):
        """Bits of a score: a sum of ``max_head_dim`` int8 products."""
        return products_width(self._max_chunks * self._lanes)

    def elaborate(self, platform):
        m = Module()
        L, C_max, T_max = self._lanes, self._max_chunks, self._max_tokens
        depth = T_max * C_max
        word = unsigned(8 * L)
        addr_shape = range(depth + 1)

        banks = self._kv_banks
        m.submodules.vbuf = vbuf = memory.Memory(shape=word, depth=banks * depth, init=[])
        v_wr, v_rd = vbuf.write_port(), vbuf.read_port()
        m.submodules.softmax = sm = Softmax(max_row=T_max, score_width=self.score_width)

        tokens = Signal.like(self.tokens)
        rows = Signal.like(self.rows)
        chunks = Signal.like(self.chunks)
        rounds = Signal.like(self.rounds)
        consts = [Signal.like(s) for s in (self.sm_mult, self.sm_shift)]
        sm_mult, sm_shift = consts
        m.d.comb += [sm.multiplier.eq(sm_mult), sm.shift.eq(sm_shift)]
        words = Signal(addr_shape)  # tokens * chunks, the beats of one matrix
        m.d.comb += words.eq(tokens * chunks)

        k_cnt = Signal(addr_shape)
        v_cnt = Signal(addr_shape)
        full = Signal()     # the K and V of the head loading are in
        m.d.comb += full.eq((k_cnt == words) & (v_cnt == words))
        loading = Signal()
        write_base = Signal(range(banks * depth))   # the bank loading
        heads = (self._pipelined if self._pipelined_heads else self._sequential)(
            m, depth, rounds, rows, full, loading, write_base, k_cnt, v_cnt)
        with m.If(self.start & heads.idle):
            m.d.sync += [tokens.eq(self.tokens), rows.eq(self.rows), chunks.eq(self.chunks),
                         rounds.eq(self.rounds)]
            m.d.sync += [dst.eq(src) for dst, src in zip(consts, (self.sm_mult, self.sm_shift))]
        # Busy until the last context beat has left, not only until it is on `acc`.
        m.d.comb += self.busy.eq(~heads.idle | self.acc.valid)

        # K and V into their buffers, side by side.
        k_reads = self._k_buffer(m, depth, write_base, k_cnt, words, chunks)
        m.d.comb += [
            self.k.ready.eq(loading & (k_cnt != words)),
            self.v.ready.eq(loading & (v_cnt != words)),
            v_wr.addr.eq(write_base + v_cnt), v_wr.data.eq(self.v.payload.as_value()),
            v_wr.en.eq(self.v.valid & self.v.ready),
        ]
        with m.If(self.k.valid & self.k.ready):
            m.d.sync += k_cnt.eq(k_cnt + 1)
        with m.If(v_wr.en):
            m.d.sync += v_cnt.eq(v_cnt + 1)

        self._qk(m, k_reads, sm, tokens, rows, chunks, heads)
        self._pv(m, v_rd, sm, tokens, chunks, heads)
        return m

    @property
    def _pair_words(self):
        """Words of a bank of each packed K memory: a word a pair of keys and chunk."""
        return -(-self._max_tokens // 2) * self._max_chunks

    def _k_buffer(self, m, depth, write_base, k_cnt, words, chunks):
        """The K buffer, written from ``k``; its read ports for QK, a list of one (unpacked:
        word ``t * chunks + c`` holds chunk ``c`` of key ``t``) or of two (packed, a half of
        the score lanes each: word ``(t // 2) * chunks + c`` of half ``h`` holds lanes
        ``h * L/2 ..`` of chunk ``c`` of keys ``t - t % 2`` (low half of the word) and
        ``t - t % 2 + 1`` (high half), so that one read gives a pair's weights)."""
        L, beat = self._lanes, self.k.payload.as_value()
        taken = self.k.valid & self.k.ready
        if self._packing == 1:
            m.submodules.kbuf = kbuf = memory.Memory(shape=unsigned(8 * L), depth=depth
                                                     * self._kv_banks, init=[])
            k_wr, k_rd = kbuf.write_port(), kbuf.read_port()
            m.d.comb += [k_wr.addr.eq(write_base + k_cnt), k_wr.data.eq(beat),
                         k_wr.en.eq(taken)]
            return [k_rd]
        pairs = self._pair_words
        half = 4 * L
        # Where beat k_cnt goes: its chunk, whether its key is a pair's second, and the
        # pair's first word; all 0 at a matrix's first beat.
        chunk, second = Signal(range(self._max_chunks)), Signal()
        pair = Signal(range(pairs * self._kv_banks + 1))
        at_start = k_cnt == 0
        c_now, second_now, pair_now = (Mux(at_start, 0, v) for v in (chunk, second, pair))
        with m.If(taken):
            with m.If(c_now + 1 == chunks):
                m.d.sync += [chunk.eq(0), second.eq(~second_now),
                             pair.eq(pair_now + Mux(second_now, chunks, 0))]
            with m.Else():
                m.d.sync += [chunk.eq(c_now + 1), second.eq(second_now), pair.eq(pair_now)]
        # An odd matrix's last key writes zeros as its pair's second: no key is ever read
        # unwritten (a simulator's unknown bits would spread through the packed product).
        last_alone = ~second_now & (k_cnt + chunks >= words)
        reads = []
        for h in range(2):
            mem = memory.Memory(shape=unsigned(8 * L), depth=pairs * self._kv_banks, init=[])
            m.submodules[f"kbuf{h}"] = mem
            wr, rd = mem.write_port(granularity=half), mem.read_port()
            part = beat[h * half:(h + 1) * half]
            m.d.comb += [
                wr.addr.eq(Mux(write_base != 0, pairs, 0) + pair_now + c_now),
                wr.data.eq(Cat(part, Mux(second_now, part, 0))),
                wr.en.eq(Mux(taken, Mux(second_now, 0b10, Mux(last_alone, 0b11, 0b01)), 0)),
            ]
            reads.append(rd)
        return reads

    def _sequential(self, m, depth, rounds, rows, full, loading, write_base, k_cnt, v_cnt):
        """Heads one after the other: load K and V (with two banks: the next head's while
        this one computes, at most one ahead), compute every row, next head."""
        banks = self._kv_banks
        heads = _Heads(banks * depth)
        head = Signal.like(rounds)
        rows_out = Signal.like(rows)
        loads = Signal.like(rounds)     # two banks: heads whose K and V are in
        loaded = Signal()               # the head to compute has its K and V in
        if banks == 1:
            m.d.comb += loaded.eq(full)
        else:
            m.d.comb += loaded.eq((loads > head) | ((loads == head) & full))
        # Comb outputs from the state, not assigned inside it: Icarus never
        # evaluates an always @* block whose inputs keep their initial values.
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [head.eq(0), loads.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                with m.If(head == rounds):
                    m.next = "IDLE"
                with m.Elif(loaded):
                    m.d.sync += rows_out.eq(0)
                    if banks == 1:
                        m.d.sync += [k_cnt.eq(0), v_cnt.eq(0)]
                    m.next = "COMPUTE"
            with m.State("COMPUTE"):
                with m.If(rows_out == rows):
                    m.d.sync += head.eq(head + 1)
                    m.next = "LOAD"
        with m.If(heads.row_left):
            m.d.sync += rows_out.eq(rows_out + 1)
        m.d.comb += [heads.idle.eq(fsm.ongoing("IDLE")),
                     heads.computing.eq(fsm.ongoing("COMPUTE")), heads.k_in.eq(1)]
        if banks == 1:
            m.d.comb += loading.eq(fsm.ongoing("LOAD") & (head != rounds))
        else:
            m.d.comb += [
                loading.eq(~fsm.ongoing("IDLE") & (loads != rounds)
                           & ((loads == head) | (loads == head + 1))),
                write_base.eq(Mux(loads[0], depth, 0)),
                heads.k_base.eq(Mux(head[0], depth, 0)),
                heads.v_base.eq(Mux(head[0], depth, 0)),
            ]
            with m.If(loading & full):
                m.d.sync += [loads.eq(loads + 1), k_cnt.eq(0), v_cnt.eq(0)]
        # Each head's Q rows, counted again from the next head's first.
        heads.q_more = lambda rows_loaded: rows_loaded != rows
        return heads

    def _pipelined(self, m, depth, rounds, rows, full, loading, write_base, k_cnt, v_cnt):
        """Heads pipelined through two banks of K and V: head ``loads`` loads into bank
        ``loads % 2`` once PV has finished the head that used it before; QK takes a head's
        rows once its K and V are in, straight after the head before's (whose last rows
        still pass the softmax and PV, on the other bank)."""
        heads = _Heads(2 * depth)
        loads = Signal.like(rounds)      # heads whose K and V are in
        q_head, qk_head, pv_head, out_head = (Signal.like(rounds, name=f"{n}_head")
                                              for n in ("q", "qk", "pv", "out"))
        q_row, qk_row, pv_row, out_row = (Signal.like(rows, name=f"{n}_row")
                                          for n in ("q", "qk", "pv", "out"))
        idle = Signal(init=1)
        with m.If(self.start & idle):
            m.d.sync += [idle.eq(0), loads.eq(0), k_cnt.eq(0), v_cnt.eq(0)]
            m.d.sync += [c.eq(0) for c in (q_head, qk_head, pv_head, out_head,
                                           q_row, qk_row, pv_row, out_row)]
        with m.If(~idle & (out_head == rounds)):
            m.d.sync += idle.eq(1)
        m.d.comb += [
            heads.idle.eq(idle), heads.computing.eq(~idle),
            # At most one head ahead of PV: the other bank is PV's (and QK's, behind it).
            loading.eq(~idle & (loads != rounds) & ((loads == pv_head) | (loads == pv_head + 1))),
            write_base.eq(Mux(loads[0], depth, 0)),
            heads.k_in.eq((loads > qk_head) | ((loads == qk_head) & full)),
            heads.k_base.eq(Mux(qk_head[0], depth, 0)),
            heads.v_base.eq(Mux(pv_head[0], depth, 0)),
        ]
        with m.If(loading & full):
            m.d.sync += [loads.eq(loads + 1), k_cnt.eq(0), v_cnt.eq(0)]
        # Each stage counts its rows and heads; a pipeline with no rows follows the loads.
        for event, head, row in ((heads.row_taken, q_head, q_row),
                                 (heads.row_issued, qk_head, qk_row),
                                 (heads.row_finished, pv_head, pv_row),
                                 (heads.row_left, out_head, out_row)):
            with m.If(event):
                with m.If(row + 1 == rows):
                    m.d.sync += [row.eq(0), head.eq(head + 1)]
                with m.Else():
                    m.d.sync += row.eq(row + 1)
        with m.If(~idle & (rows == 0)):
            m.d.sync += [head.eq(loads) for head in (q_head, qk_head, pv_head, out_head)]
        heads.q_more = lambda rows_loaded: (rows != 0) & (q_head != rounds)
        return heads

    def _qk(self, m, k_reads, sm, tokens, rows, chunks, heads):
        """Query rows against the K buffer: one score per key on ``sm.i``. Packed (two K
        read ports, :meth:`_k_buffer`), the keys go in pairs, half the lanes of a chunk a
        step (a chunk's halves one after the other): ``2 * chunks`` steps a pair, whose
        two scores leave ``chunks`` cycles apart, so they reach the softmax as evenly as
        unpacked ones, ``chunks`` cycles later."""
        L, C_max = self._lanes, self._max_chunks
        beat = beat_layout(L)
        # Two query rows: the next loads while the current is in use.
        qrow = Array(Array(Signal(8 * L, name=f"q{b}_{c}") for c in range(C_max))
                     for b in range(2))
        q_fill_bank, q_fill_c = Signal(), Signal(range(C_max + 1))
        rows_loaded = Signal(16)  # query rows fully in a bank
        rows_used = Signal(16)  # query rows whose last product left the multipliers
        computing = heads.computing
        m.d.comb += self.q.ready.eq(computing & heads.q_more(rows_loaded)
                                    & ((rows_loaded - rows_used)[:16] < 2))
        m.d.comb += heads.row_taken.eq(self.q.valid & self.q.ready & (q_fill_c + 1 == chunks))
        with m.If(self.q.valid & self.q.ready):
            m.d.sync += qrow[q_fill_bank][q_fill_c].eq(self.q.payload.as_value())
            with m.If(q_fill_c + 1 == chunks):
                m.d.sync += [q_fill_c.eq(0), q_fill_bank.eq(~q_fill_bank),
                             rows_loaded.eq(rows_loaded + 1)]
            with m.Else():
                m.d.sync += q_fill_c.eq(q_fill_c + 1)

        # Issue (step 0): row r, key j (packed: the pair's first), chunk c, half h; the K
        # read takes one cycle.
        G = self._packing             # keys a step
        advance = Signal()
        m.d.comb += advance.eq(~sm.i.valid | sm.i.ready)
        r_issue = Signal(16)
        i_bank = Signal()
        i_key = Signal(range(self._max_tokens + 2))
        i_c = Signal(range(C_max + 1))
        i_h = Signal(G - 1)             # packed: the half of the lanes
        i_addr = Signal(range(self._max_tokens * C_max + 1))
        issue = Signal()
        m.d.comb += issue.eq(computing & (rows_loaded != r_issue) & heads.k_in & advance)
        # (packed, a bank is half as many words: :meth:`_k_buffer`)
        k_base = heads.k_base if G == 1 else Mux(heads.k_base != 0, self._pair_words, 0)
        for k_rd in k_reads:
            m.d.comb += [k_rd.addr.eq(k_base + i_addr), k_rd.en.eq(advance)]
        end_chunk, end_key, end_row = Signal(), Signal(), Signal()
        m.d.comb += [end_chunk.eq(i_h == G - 1), end_key.eq(end_chunk & (i_c + 1 == chunks)),
                     end_row.eq(end_key & (i_key + G >= tokens)),
                     heads.row_issued.eq(issue & end_row)]
        with m.If(issue):
            if G > 1:
                m.d.sync += i_h.eq(~i_h)
            with m.If(end_chunk):
                m.d.sync += [i_c.eq(Mux(end_key, 0, i_c + 1)), i_addr.eq(i_addr + 1)]
            with m.If(end_key):
                m.d.sync += i_key.eq(i_key + G)
            with m.If(end_row):
                m.d.sync += [i_key.eq(0), i_addr.eq(0), i_bank.eq(~i_bank),
                             r_issue.eq(r_issue + 1)]
        with m.If(~computing):
            m.d.sync += [r_issue.eq(0), rows_loaded.eq(0), rows_used.eq(0), i_bank.eq(0),
                         q_fill_bank.eq(0), q_fill_c.eq(0), i_c.eq(0), i_key.eq(0),
                         i_addr.eq(0), i_h.eq(0)]

        # Step 1: the products of one step (unpacked: summed).
        p1_valid, p1_bank, p1_first, p1_end_key, p1_end_row, p1_pair = (
            Signal(name=f"qk1_{n}") for n in ("valid", "bank", "first", "end_key", "end_row",
                                              "pair"))
        p1_c, p1_h = Signal.like(i_c), Signal.like(i_h)
        with m.If(advance):
            m.d.sync += [p1_valid.eq(issue), p1_bank.eq(i_bank), p1_c.eq(i_c), p1_h.eq(i_h),
                         p1_first.eq((i_c == 0) & (i_h == 0)), p1_end_key.eq(end_key),
                         p1_end_row.eq(end_row), p1_pair.eq(i_key + 1 < tokens)]
        qword = qrow[p1_bank][p1_c]
        with m.If(advance & p1_valid & p1_end_row):
            m.d.sync += rows_used.eq(rows_used + 1)

        # Step 2: the step's products registered (packed: in the DSP48E2's product
        # register); then the steps of one key (or pair) summed.
        p2_valid, p2_first, p2_end_key, p2_end_row, p2_pair = (
            Signal(name=f"qk2_{n}") for n in ("valid", "first", "end_key", "end_row", "pair"))
        with m.If(advance):
            m.d.sync += [p2_valid.eq(p1_valid), p2_first.eq(p1_first),
                         p2_end_key.eq(p1_end_key), p2_end_row.eq(p1_end_row),
                         p2_pair.eq(p1_pair)]
        if G == 1:
            kbeat, qbeat = data.View(beat, k_reads[0].data), data.View(beat, qword)
            dot = Signal(signed(products_width(L)))
            m.d.comb += dot.eq(_adder_tree([qbeat[l] * kbeat[l] for l in range(L)]))
            p2_dot = Signal.like(dot)
            with m.If(advance):
                m.d.sync += p2_dot.eq(dot)
            sums = [p2_dot]
        else:
            half = beat_layout(L // 2)
            kword = Mux(p1_h, k_reads[1].data, k_reads[0].data)
            k_lo, k_hi = (data.View(half, kword[n * 4 * L:(n + 1) * 4 * L]) for n in range(2))
            q_half = data.View(half, Mux(p1_h, qword[4 * L:], qword[:4 * L]))
            products = [Signal(signed(PAIR_PRODUCT), name=f"qk_pair{l}") for l in range(L // 2)]
            with m.If(advance):
                m.d.sync += [prod.eq(q_half[l] * pack_pair(k_lo[l], k_hi[l]))
                             for l, prod in enumerate(products)]
            lows, highs = zip(*(unpack_product(prod) for prod in products))
            sums = [Signal(signed(products_width(L // 2)), name=f"qk_{n}")
                    for n in ("low", "high")]
            m.d.comb += [sums[0].eq(_adder_tree(list(lows))),
                         sums[1].eq(_adder_tree(list(highs)))]
        accs = [Signal(signed(self.score_width), name=f"qk_acc{g}") for g in range(G)]
        totals = [Signal(signed(self.score_width), name=f"qk_total{g}") for g in range(G)]
        m.d.comb += [total.eq(Mux(p2_first, 0, acc) + part)
                     for total, acc, part in zip(totals, accs, sums)]
        with m.If(advance & p2_valid):
            m.d.sync += [acc.eq(total) for acc, total in zip(accs, totals)]
        score = (sm.i.valid, sm.i.payload.score, sm.i.payload.last)
        if G == 1:
            with m.If(advance):
                m.d.sync += [sm.i.valid.eq(p2_valid & p2_end_key), score[1].eq(totals[0]),
                             score[2].eq(p2_end_row)]
            return
        # Packed: the pair's second score waits `chunks` moving cycles in `held`.
        held, held_last = Signal.like(totals[1]), Signal()
        held_wait = Signal(range(C_max + 1))     # 0: none held
        with m.If(advance):
            with m.If(p2_valid & p2_end_key):
                m.d.sync += [sm.i.valid.eq(1), score[1].eq(totals[0]),
                             score[2].eq(p2_end_row & ~p2_pair),
                             held.eq(totals[1]), held_last.eq(p2_end_row),
                             held_wait.eq(Mux(p2_pair, chunks, 0))]
            with m.Elif(held_wait == 1):
                m.d.sync += [sm.i.valid.eq(1), score[1].eq(held), score[2].eq(held_last),
                             held_wait.eq(0)]
            with m.Else():
                m.d.sync += sm.i.valid.eq(0)
                with m.If(held_wait != 0):
                    m.d.sync += held_wait.eq(held_wait - 1)

    def _pv(self, m, v_rd, sm, tokens, chunks, heads):
        """Probabilities times the V buffer into context rows on ``acc``."""
        L, C_max = self._lanes, self._max_chunks
        beat = beat_layout(L)
        acc = Array(Array(Signal(signed(_ACC_WIDTH), name=f"ctx{c}_{l}") for l in range(L))
                    for c in range(C_max))
        shadow = Array(Array(Signal(signed(_ACC_WIDTH), name=f"out{c}_{l}") for l in range(L))
                       for c in range(C_max))
        shadow_busy = Signal()

        # Issue: each probability visits the C chunks of its value row.
        i_c = Signal(range(C_max + 1))
        i_addr = Signal(range(self._max_tokens * C_max + 1))
        i_first = Signal(init=1)  # the next probability starts a row
        end_key = Signal()
        m.d.comb += end_key.eq(i_c + 1 == chunks)
        issue = Signal()
        computing = heads.computing
        # The row's final update waits for the shadow registers to be free.
        m.d.comb += issue.eq(computing & sm.o.valid
                             & ~(sm.o.payload.last & end_key & shadow_busy))
        m.d.comb += [
            sm.o.ready.eq(issue & end_key),
            v_rd.addr.eq(heads.v_base + i_addr),
            heads.row_finished.eq(issue & end_key & sm.o.payload.last),
        ]
        with m.If(issue):
            m.d.sync += [i_c.eq(Mux(end_key, 0, i_c + 1)), i_addr.eq(i_addr + 1)]
            with m.If(end_key):
                m.d.sync += i_first.eq(sm.o.payload.last)
                with m.If(sm.o.payload.last):
                    m.d.sync += i_addr.eq(0)

        # Step 1: L products of one probability and one V chunk, accumulated.
        p1_valid, p1_first, p1_done = Signal(), Signal(), Signal()
        p1_c = Signal.like(i_c)
        p1_prob = Signal(unsigned(intops.PROB_FRAC + 1))
        m.d.sync += [p1_valid.eq(issue), p1_first.eq(i_first), p1_c.eq(i_c),
                     p1_prob.eq(sm.o.payload.prob),
                     p1_done.eq(issue & end_key & sm.o.payload.last)]
        vbeat = data.View(beat, v_rd.data)
        with m.If(p1_valid):
            for l in range(L):
                prod = intexpr.non_negative(p1_prob) * vbeat[l]
                m.d.sync += acc[p1_c][l].eq(Mux(p1_first, 0, acc[p1_c][l]) + prod)

        # Step 2: a finished row moves to the shadow registers for output.
        p2_done = Signal()
        m.d.sync += p2_done.eq(p1_valid & p1_done)
        with m.If(p2_done):
            m.d.sync += [shadow[c][l].eq(acc[c][l]) for c in range(C_max) for l in range(L)]
            m.d.sync += shadow_busy.eq(1)

        # Output: one beat of L accumulators per cycle.
        e_c = Signal(range(C_max + 1))
        out = self.acc
        with m.If(out.valid & out.ready):
            m.d.sync += out.valid.eq(0)
        with m.If(shadow_busy & ~p2_done & (~out.valid | out.ready)):
            m.d.sync += out.valid.eq(1)
            m.d.sync += [out.payload[l].eq(shadow[e_c][l]) for l in range(L)]
            with m.If(e_c + 1 == chunks):
                m.d.sync += [e_c.eq(0), shadow_busy.eq(0)]
                m.d.comb += heads.row_left.eq(1)
            with m.Else():
                m.d.sync += e_c.eq(e_c + 1)


class HeadLane(wiring.Component):
    """One head lane of ``row_lanes`` row pipelines (:class:`AttentionHead`) sharing its
    streams and its requantizers: more query rows of one head at once.

    Every row pipeline holds its own copy of the head's K and V (one stream, taken by all
    at once: they load in step) and computes query rows ``s, s + R, s + 2R, ...`` of the
    head (``R = row_lanes``, ``s`` its index); the query rows are dealt to the pipelines
    in turn, ``chunks`` beats each, and their context rows gathered back in the same turn,
    so ``q`` and ``o`` keep the one pipeline's order. ``R`` is a power of two (a
    pipeline's share of the rows is a shift). The gathered accumulators pass the lane's
    ``lanes`` requantizers on their way to ``o`` (combinational: a pipeline's output
    register is the stage before them, so the timing is the pipeline's own). With
    ``context_lanes`` ``K`` below ``lanes`` there are ``K`` requantizers instead: a
    gathered beat is held ``lanes / K`` cycles, ``K`` of its accumulators requantized a
    cycle, and leaves on ``o`` (a register) the cycle after its last part. The rows finish
    ``row_lanes`` every ``tokens * chunks`` cycles, so a few requantizers keep up with
    them; each is two DSP48E2 and a rounding shifter.

    Members as :class:`AttentionHead`'s (``rows``: the head's query rows, dealt over the
    pipelines), with ``out_mult`` and ``out_shift`` (the context's requantization) and
    ``o`` (int8 beats) for ``acc``.
    """

    def __init__(self, *, row_lanes, lanes, max_tokens, max_head_dim, context_lanes=0,
                 kv_banks=1, pipelined_heads=False, score_packing=1):
        if not isinstance(row_lanes, int) or row_lanes < 1 or row_lanes & (row_lanes - 1):
            self._MustUse__silence = True  # a unit rejected here is not an unused one
            raise ValueError(f"Row lanes must be a power of two, not {row_lanes!r}")
        if not isinstance(context_lanes, int) or context_lanes < 0 \
                or (context_lanes and lanes % context_lanes):
            self._MustUse__silence = True
            raise ValueError(f"Context lanes must be 0 or divide the {lanes} score lanes, "
                             f"not {context_lanes!r}")
        self._context_lanes = context_lanes or lanes
        self._rows = [AttentionHead(lanes=lanes, max_tokens=max_tokens,
                                    max_head_dim=max_head_dim, kv_banks=kv_banks,
                                    pipelined_heads=pipelined_heads,
                                    score_packing=score_packing)
                      for _ in range(row_lanes)]
        ports = dict(self._rows[0].signature.members)
        del ports["acc"]
        ports.update(out_mult=In(intops.MULT_BITS), out_shift=In(6),
                     o=Out(stream.Signature(beat_layout(lanes))))
        super().__init__(ports)

    @property
    def row_lanes(self):
        return len(self._rows)

    def elaborate(self, platform):
        m = Module()
        R, pipes = self.row_lanes, self._rows
        shift = (R - 1).bit_length()
        for s, pipe in enumerate(pipes):
            m.submodules[f"row{s}"] = pipe
            m.d.comb += [getattr(pipe, name).eq(getattr(self, name)) for name in (
                "tokens", "chunks", "rounds", "sm_mult", "sm_shift", "start")]
            # Rows s, s + R, ... below rows: ceil((rows - s) / R).
            m.d.comb += pipe.rows.eq((self.rows + (R - 1 - s)) >> shift)
        busy = Cat(pipe.busy for pipe in pipes).any()
        if self._context_lanes < len(self.o.payload):
            busy |= self.o.valid        # the requantizers' output register holds a beat
        m.d.comb += self.busy.eq(busy)

        # The requantizers, after the gather.
        out_mult, out_shift = Signal.like(self.out_mult), Signal.like(self.out_shift)
        with m.If(self.start):
            m.d.sync += [out_mult.eq(self.out_mult), out_shift.eq(self.out_shift)]
        acc = stream.Signature(acc_layout(len(self.o.payload))).flip().create()
        if self._context_lanes == len(self.o.payload):
            m.d.comb += [self.o.valid.eq(acc.valid), acc.ready.eq(self.o.ready)]
            m.d.comb += [self.o.payload[l].eq(intexpr.requantize(acc.payload[l], out_mult,
                                                                 out_shift))
                         for l in range(len(self.o.payload))]
        else:
            self._requantize_in_parts(m, acc, out_mult, out_shift)

        if R == 1:
            for name in ("q", "k", "v"):
                wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(pipes[0], name))
            m.d.comb += [acc.valid.eq(pipes[0].acc.valid), pipes[0].acc.ready.eq(acc.ready),
                         acc.payload.eq(pipes[0].acc.payload)]
            return m

        # K and V: every pipeline takes each beat in the same cycle.
        for name in ("k", "v"):
            outer = getattr(self, name)
            all_ready = Cat(getattr(pipe, name).ready for pipe in pipes).all()
            m.d.comb += outer.ready.eq(all_ready)
            for pipe in pipes:
                inner = getattr(pipe, name)
                m.d.comb += [inner.valid.eq(outer.valid & all_ready),
                             inner.payload.eq(outer.payload)]

        # Q dealt and the accumulators gathered a row (``chunks`` beats) at a time, pipeline
        # by pipeline; each head's first row goes to pipeline 0.
        rows, chunks = Signal.like(self.rows), Signal.like(self.chunks)
        with m.If(self.start):
            m.d.sync += [rows.eq(self.rows), chunks.eq(self.chunks)]
        for outer, inners in ((self.q, [pipe.q for pipe in pipes]),
                              (acc, [pipe.acc for pipe in pipes])):
            at, chunk, row = Signal(range(R)), Signal.like(chunks), Signal.like(rows)
            if outer is self.q:
                for s, inner in enumerate(inners):
                    m.d.comb += [inner.valid.eq(outer.valid & (at == s)),
                                 inner.payload.eq(outer.payload)]
                m.d.comb += outer.ready.eq(Array(inner.ready for inner in inners)[at])
            else:
                for s, inner in enumerate(inners):
                    m.d.comb += inner.ready.eq(outer.ready & (at == s))
                m.d.comb += [
                    outer.valid.eq(Array(inner.valid for inner in inners)[at]),
                    outer.payload.eq(Array(inner.payload.as_value() for inner in inners)[at]),
                ]
            with m.If(self.start):
                m.d.sync += [at.eq(0), chunk.eq(0), row.eq(0)]
            with m.Elif(outer.valid & outer.ready):
                m.d.sync += chunk.eq(chunk + 1)
                with m.If(chunk + 1 == chunks):
                    # ``at`` wraps by itself: R is a power of two.
                    m.d.sync += [chunk.eq(0), at.eq(at + 1), row.eq(row + 1)]
                    with m.If(row + 1 == rows):
                        m.d.sync += [at.eq(0), row.eq(0)]
        return m

    def _requantize_in_parts(self, m, acc, out_mult, out_shift):
        """``acc`` to ``o`` through ``K`` requantizers: part ``n`` of a held beat (its
        accumulators ``n*K .. n*K + K - 1``) a cycle, the parts shifted into a row of
        ``lanes - K`` bytes; the last part goes with that row into the ``o`` register and
        takes the beat."""
        L, K = len(self.o.payload), self._context_lanes
        parts = L // K
        part = Signal(range(parts))
        done = Signal(8 * (L - K))                  # the parts before the last, in order
        words = Array(acc.payload.as_value().word_select(n, 32 * K) for n in range(parts))
        word = Signal(32 * K)
        m.d.comb += word.eq(words[part])
        values = [intexpr.requantize(word.word_select(k, 32).as_signed(), out_mult, out_shift)
                  for k in range(K)]
        last = part == parts - 1
        step = Signal()
        m.d.comb += [step.eq(acc.valid & (~last | ~self.o.valid | self.o.ready)),
                     acc.ready.eq(step & last)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(step):
            with m.If(last):
                m.d.sync += [part.eq(0), self.o.valid.eq(1),
                             self.o.payload.eq(Cat(done, *values))]
            with m.Else():
                m.d.sync += [part.eq(part + 1), done.eq(Cat(done[8 * K:], *values))]


class Attention(wiring.Component):
    """The attention kernel: ``hw.heads_parallel`` head lanes under one descriptor.

    Parameters
    ----------
    hw : HwConfig
        ``score_lanes``, ``kv_depth``, ``max_head_dim``, ``heads_parallel`` and
        ``row_lanes`` size the kernel.

    Members
    -------
    desc : In(stream.Signature(AttentionDescriptor.layout()))
        One descriptor per operation; the next is accepted when every lane
        has finished.
    busy : Out(1)
    error : Out(3)
        The :class:`~moevit.hw.program.descriptor.Fault` of the last descriptor taken;
        a faulty one is skipped (no beat taken or produced).
    q, k, v : In(stream.Signature(beat_layout(hw.score_lanes))).array(hw.heads_parallel)
        Lane ``p``'s query, key and value beats.
    o : Out(stream.Signature(beat_layout(hw.score_lanes))).array(hw.heads_parallel)
        Lane ``p``'s context beats.
    """

    def __init__(self, hw):
        from moevit.hw.program.descriptor import FAULT_WIDTH, AttentionDescriptor

        self._hw = hw
        beat = stream.Signature(beat_layout(hw.score_lanes))
        P = hw.heads_parallel
        super().__init__({
            "desc": In(stream.Signature(AttentionDescriptor.layout())),
            "busy": Out(1),
            "error": Out(FAULT_WIDTH),
            "q": In(beat).array(P),
            "k": In(beat).array(P),
            "v": In(beat).array(P),
            "o": Out(beat).array(P),
        })

    @classmethod
    def from_config(cls, hw):
        return cls(hw)

    @property
    def hw(self):
        return self._hw

    @property
    def macs(self):
        """Multiply-accumulate units: QK and PV lanes of every row lane of every head lane."""
        return self._hw.attention_macs

    def elaborate(self, platform):
        from moevit.hw.program.descriptor import (FAULT_WIDTH, AttentionDescriptor, Fault, fault_code,
                                          shift_out_of_range)

        m = Module()
        hw = self._hw
        lanes = []
        for p in range(hw.heads_parallel):
            lane = HeadLane(row_lanes=hw.row_lanes, lanes=hw.score_lanes,
                            max_tokens=hw.kv_depth, max_head_dim=hw.max_head_dim,
                            context_lanes=hw.context_lanes, kv_banks=hw.kv_banks,
                            pipelined_heads=hw.pipelined_heads, score_packing=hw.score_packing)
            m.submodules[f"head{p}"] = lane
            lanes.append(lane)
            for name in ("q", "k", "v"):
                wiring.connect(m, wiring.flipped(getattr(self, name)[p]), getattr(lane, name))
            wiring.connect(m, lane.o, wiring.flipped(self.o[p]))
        desc = self.desc.payload
        started = Signal()
        any_busy = Signal()
        m.d.comb += any_busy.eq(Cat(lane.busy for lane in lanes).any() | started)
        m.d.comb += [self.busy.eq(any_busy), self.desc.ready.eq(~any_busy)]
        taken = self.desc.valid & self.desc.ready
        fault = Signal(FAULT_WIDTH)
        max_chunks = hw.max_head_dim // hw.score_lanes
        m.d.comb += fault.eq(fault_code([
            (Fault.OPCODE, desc.opcode != AttentionDescriptor.OPCODE),
            (Fault.SHAPE, (desc.tokens == 0) | (desc.tokens > hw.kv_depth) | (desc.heads == 0)
             | (desc.rows == 0) | (desc.rows > desc.tokens)
             | (desc.chunks == 0) | (desc.chunks > max_chunks)),
            (Fault.DERIVED, (desc.chunks * hw.score_lanes != desc.head_dim)
             | (desc.rounds * hw.heads_parallel != desc.heads)),
            (Fault.CONSTANT, (desc.sm_mult == 0) | (desc.out_mult == 0)
             | shift_out_of_range(desc.sm_shift) | shift_out_of_range(desc.out_shift)),
        ]))
        with m.If(taken):
            m.d.sync += self.error.eq(fault)
        m.d.sync += started.eq(taken)
        for lane in lanes:
            m.d.comb += [
                lane.tokens.eq(desc.tokens), lane.rows.eq(desc.rows), lane.chunks.eq(desc.chunks),
                lane.rounds.eq(desc.rounds),
                lane.sm_mult.eq(desc.sm_mult), lane.sm_shift.eq(desc.sm_shift),
                lane.out_mult.eq(desc.out_mult), lane.out_shift.eq(desc.out_shift),
                lane.start.eq(taken & (fault == Fault.NONE)),
            ]
        return m


# Timing -------------------------------------------------------------------------
# The exact cost model of the kernel, read from the RTL above and equal to the
# simulated cycles (tests/test_sim_random_units.py, moevit bench attention).
# On one bank of K and V heads do not overlap (a head loads K and V only once the
# previous head's last context beat has left its row pipeline), so every head of a
# descriptor takes the same time: :func:`head_cycles` (and the last its :func:`head_tail`
# more, the beat still in the requantizers). On two a head's K and V load behind the head
# before, and each row pipeline's QK takes its next head's rows straight after its last
# row of the head before: :func:`heads_cycles`.
#: Issue of a key's last chunk -> its score on the softmax's input.
QK_DEPTH = 3
#: PV takes a row's last probability at cycle t -> its C context beats leave at
#: t + OUT_DEPTH + 1 ... t + OUT_DEPTH + C (the shadow registers, then ``o``).
OUT_DEPTH = 3
#: The last context beat of a descriptor -> the next descriptor accepted (the row
#: pipelines' state machines go idle two cycles after it, one with pipelined heads; behind requantizers of fewer lanes than the score lanes, :func:`restart_cycles`,
#: the beat leaves later and their output register is the last to empty).
RESTART_CYCLES = 2


def restart_cycles(parts=1, pipelined=False) -> int:
    """:data:`RESTART_CYCLES` behind requantizers that take a beat in ``parts`` cycles, with
    heads ``pipelined`` or not."""
    return RESTART_CYCLES if parts == 1 and not pipelined else RESTART_CYCLES - 1


_NEVER = -(1 << 62)


def row_issue_cycles(tokens, chunks, packing=1):
    """Cycles a row pipeline's QK issues one query row for: a step each chunk of each key,
    or packed (``HwConfig.score_packing`` 2) each half chunk of each pair of keys."""
    return -(-tokens // packing) * packing * chunks


@lru_cache(maxsize=256)
def head_cycles(tokens, chunks, row_lanes=1, parts=1, rows=None, packing=1):
    """Cycles of one head: from its first K/V beat to the next head's first K/V beat.

    Fed with no gaps and drained with no back-pressure. The model follows each
    query row through the stages of its row lane (:class:`_RowPipeline`): Q row
    load, QK issue (``tokens * chunks`` cycles a row; frozen while the softmax
    cannot take a row's first score), the softmax's exp and divide stages
    (:class:`~moevit.hw.units.softmax.RowSchedule`), its emit stage and PV (one
    probability every ``chunks`` cycles; a row's last one waits for the previous
    row's context to leave the shadow registers). With ``row_lanes`` lanes the Q
    rows are dealt in turn (a lane takes its next row once the dealer has dealt
    the row before it) and the context rows gathered in turn (a row's context
    waits, in its lane's registers, for the row before it to leave). ``parts``:
    ``score_lanes / context_lanes``, the cycles a gathered beat takes through the
    head lane's requantizers (:class:`HeadLane`). ``rows``: the head's query rows (None:
    ``tokens``). ``packing``: ``HwConfig.score_packing`` (:func:`row_issue_cycles`; a
    row's first score ``chunks`` cycles later).
    """
    return _heads(tokens, chunks, row_lanes, parts, 1, 1, rows, packing=packing)[0]


def head_tail(tokens, chunks, row_lanes=1, parts=1, rows=None, packing=1):
    """Cycles from the last head's :func:`head_cycles` to the cycle after its last context
    beat: 0 when the requantizers take a beat a cycle (it leaves as it is gathered), else
    the parts of the last beat still in them and their output register."""
    span, end = _heads(tokens, chunks, row_lanes, parts, 1, 1, rows, packing=packing)
    return end - span


def heads_cycles(tokens, chunks, rounds, row_lanes=1, parts=1, banks=1, rows=None,
                 pipelined=False, packing=1):
    """Cycles of a descriptor's ``rounds`` heads on one head lane, from the first K/V beat
    to the cycle after the last context beat. With one bank of K and V (``banks`` 1) the
    heads follow one another: ``rounds`` :func:`head_cycles` and the last's
    :func:`head_tail`. With two, a head's K and V load while the head before computes (a
    row pipeline takes the next head's beats once it has started the head before and the
    K and V before are in), and each row pipeline starts its next head as soon as it has
    finished its rows of the one before and that head's K and V are in; ``pipelined``
    (``HwConfig.pipelined_heads``): its QK takes the next head's rows straight after its
    last row of the head before (Q rows from the first cycle), and the next head's K and V
    load once PV has finished the head that used their bank before. ``rows``: each head's
    query rows (None: ``tokens``); ``packing`` as :func:`head_cycles`."""
    return _heads(tokens, chunks, row_lanes, parts, rounds, banks, rows, pipelined, packing)[1]


@lru_cache(maxsize=256)
def _heads(tokens, chunks, row_lanes, parts, rounds, banks, rows=None, pipelined=False,
           packing=1):
    """``(span, end)`` of ``rounds`` heads: the cycle the next head's first K/V beat could
    come (a descriptor's next head on one bank), and the cycle after the last context
    beat."""
    T, C, N, R = tokens, chunks, parts, row_lanes
    ready = [0] * R     # a row pipeline's first cycle waiting for its next head (LOAD)
    began = [0] * R     # ... and for the head it computes, once it began waiting for it
    # Pipelined: each row pipeline one timeline throughout, its Q rows taken from the start.
    lanes = [_RowPipeline(T, C, 0, packing) for _ in range(R)]
    finished = []       # pipelined: per head, the cycle PV took its last probability
    first_kv = 0        # the head's first K/V beat
    dealt = gathered = _NEVER
    for head in range(rounds):
        loaded = first_kv + T * C    # its K and V in
        if not pipelined:
            # K and V take `T * C` cycles, then one to switch to compute
            lanes = [_RowPipeline(T, C, max(r, loaded) + 1, packing) for r in ready]
            began, ready = ready, [lane.compute + 1 for lane in lanes]  # a lane without rows
        last_finished = _NEVER
        for r in range(T if rows is None else rows):
            lane = lanes[r % R]
            dealt = max(dealt, lane.q_free()) + C
            done = lane.add_row(dealt, loaded)
            last_finished = max(last_finished, done)
            # Its context's first beat in the lane's output register, once the row before
            # has left it.
            first = max(done + OUT_DEPTH + 1, lane.out_free)
            taken = max(first, gathered)  # ... shown to the requantizers
            # Beat c moves on from the shadow registers as beat c - 1 is taken, N - 1
            # cycles after it is shown; the last beat frees them (PV's last probability
            # waits).
            free = taken + (C - 1) * N if C > 1 else first
            lane.pv.row_done += free - (done + OUT_DEPTH + C)
            gathered = taken + C * N
            lane.out_free = gathered
            # The next head loads the cycle after the last beat (through requantizers of
            # fewer lanes: the cycle after it left the shadow registers).
            ready[r % R] = gathered if N == 1 else free + 1
        finished.append(last_finished)
        # The next head's K and V: on one bank once every pipeline waits for it; on two
        # once its bank is free (every pipeline has begun this head; pipelined: PV has
        # finished the head before) and this one's are in.
        if banks == 1:
            first_kv = max(ready)
        elif pipelined:
            first_kv = max(loaded + 1, finished[head - 1] + 1 if head else _NEVER)
        else:
            first_kv = max(max(began), loaded + 1)
    return max(ready), gathered + (N > 1)


class _RowPipeline:
    """One row lane's QK, softmax and PV stages, timed row by row (:func:`head_cycles`)."""

    def __init__(self, tokens, chunks, compute, packing=1):
        self.T, self.C, self.row = tokens, chunks, row_issue_cycles(tokens, chunks, packing)
        self.G = packing
        self.compute = compute
        self.qk, self.softmax, self.pv = _QkClock(), RowSchedule(), _PvStage(chunks)
        self.issue_start, self.row_done = [], []
        self.emit_free = _NEVER
        self.out_free = _NEVER  # the cycle its output register takes a row's first beat

    def q_free(self):
        """The first cycle the lane takes its next query row's first beat: two rows load at
        once; row n waits for row n - 2's last product."""
        n = len(self.issue_start)
        if n < 2:
            return self.compute
        return self.qk.real(self.issue_start[n - 2] + self.row) + 1

    def add_row(self, loaded, k_in=_NEVER):
        """A row whose query is in by ``loaded`` and its head's K and V by ``k_in``: the
        cycle PV takes its last probability."""
        T, C, n = self.T, self.C, len(self.issue_start)
        start = self.qk.adv_of(max(loaded, k_in))
        if n:
            start = max(start, self.issue_start[n - 1] + self.row)
        self.issue_start.append(start)
        first = self.qk.present(start + self.G * C + QK_DEPTH - 1, self.softmax.ingest_from(n))
        last_in = first + (T - 1) * C
        bank_free = self.row_done[n - 3] + 1 if n >= 3 else _NEVER
        emit_start = max(self.softmax.add(last_in, T, bank_free), self.emit_free)
        done, last_read = self.pv.row(T, emit_start)
        self.row_done.append(done)
        self.emit_free = last_read + 1
        return done


class _QkClock:
    """The QK pipeline's own clock: it stops while a row's first score waits.

    ``adv`` counts the cycles the pipeline moves; ``real`` is the clock cycle.
    """

    def __init__(self):
        self._at, self._total = [], []  # adv times of the stops, stopped cycles up to each

    def real(self, adv):
        k = bisect.bisect_right(self._at, adv)
        return adv + (self._total[k - 1] if k else 0)

    def adv_of(self, real):
        """The first moving cycle at or after the clock cycle ``real``."""
        low, high = real - (self._total[-1] if self._total else 0), real
        while low < high:
            mid = (low + high) // 2
            if self.real(mid) >= real:
                high = mid
            else:
                low = mid + 1
        return low

    def present(self, adv, ready):
        """A row's first score shown at ``adv``, taken once the softmax is ``ready``."""
        shown = adv + (self._total[-1] if self._total else 0)
        taken = max(shown, ready)
        if taken > shown:
            self._at.append(adv)
            self._total.append((self._total[-1] if self._total else 0) + taken - shown)
        return taken


class _PvStage:
    """The softmax's emit stage (two registers) feeding PV, one probability at a time.

    Per probability: *issued*, the cycle emit reads its exponential (a cycle
    the emit pipeline moves: its output is empty or being taken); *shown*, the
    first cycle it is on the softmax's output; *taken*, the cycle PV takes it
    with its last chunk (``chunks`` cycles after PV starts on it).
    """

    def __init__(self, chunks):
        self.C = chunks
        self.items = [(_NEVER, _NEVER, _NEVER)] * 2  # (issued, shown, taken) of the last two
        self.row_done = _NEVER  # the previous row's last probability taken

    def row(self, T, start):
        """A row whose emit stage starts at ``start``: ``(last taken, last issued)``."""
        C = self.C
        j = 0
        while j < T:
            if j == 6 and T >= 12:
                # Steady from here: emit keeps two ahead and PV takes one every C
                # cycles (probability k is taken at a + (k-5)C, shown the cycle after
                # k-1 is taken, issued when k-2 is), so jump to the row's last three.
                a, j = self.items[1][2], T - 3
                self.items = [(a + (k - 7) * C, a + (k - 6) * C + 1, a + (k - 5) * C)
                              for k in (j - 2, j - 1)]
            issued = start + 1 if j == 0 else self.items[1][0] + 1
            for _, shown, taken in self.items:
                if shown <= issued < taken:
                    issued = taken
            shown = max(issued + 1, self.items[1][2]) + 1
            taken = max(shown, self.items[1][2] + 1) + C - 1
            busy_until = self.row_done + OUT_DEPTH + C  # the shadow registers hold the last row
            if j == T - 1 and self.row_done + OUT_DEPTH <= taken < busy_until:
                taken = busy_until
            self.items = [self.items[1], (issued, shown, taken)]
            j += 1
        self.row_done = taken
        return taken, issued
