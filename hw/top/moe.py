"""The MoE layer's engines: ROUTE, EXPERT and COMBINE (:mod:`moevit.hw.program.isa`).

A MoE layer runs as TASK_LINEAR (the task's gate, on the linear engine),
ROUTE, one EXPERT per expert and COMBINE; each engine here follows the
contract of :mod:`moevit.hw.top.ports` and computes exactly what
:mod:`moevit.hw.program.interpreter` does for its opcode.

:class:`RouteEngine`
    reads the logits (``tokens x experts`` int8), walks each token's logits
    through the MoE unit's insertion list (:class:`~moevit.hw.units.topk.TopK`)
    and the integer softmax (:class:`~moevit.hw.units.softmax.Softmax`), keeps
    the ``top_k`` (expert, weight) entries of every token on chip and writes
    them as the ``topk`` (u8) and ``weights`` (u16) tensors.
:class:`ExpertEngine`
    reads the routing's expert indices, lists on chip the (token, slot)
    pairs that chose its expert and, unless the list is empty, hands the
    linear engine fc1 (rows gathered) and fc2 (rows scattered to the slots)
    as two jobs, answering its row lookups from the list.
:class:`CombineEngine`
    streams the gate weights, the slots and the skip tensor, sums each
    token's weighted slots in an on-chip accumulator row, requantizes and
    adds the skip: ``y``.

Placement the engines assume (the compiler's layout gives it): every address
they read or write is a multiple of the bus width in bytes, and COMBINE's
``dim`` is a multiple of the kernel's ``cols`` lanes (``HwConfig.check_model``
holds every model to it). A descriptor that breaks a rule is
refused with its :class:`~moevit.hw.program.descriptor.Fault` (``SHAPE`` for
sizes, ``ALIGN`` for an address off the bus word, ``CONSTANT`` for constants,
``OPCODE``) and ``done`` follows in the next cycle, nothing read or written.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import (Fault, LinearDescriptor, fault_code,
                                          shift_out_of_range)
from moevit.hw.program.isa import CombineDescriptor, ExpertDescriptor, RouteDescriptor
from moevit.hw.top.linear_engine import ahead_layout, weight_ranges
from moevit.hw.top.movers import Repack
from moevit.hw.top.ports import IndexPort, engine_members, linear_job_layout
from moevit.hw.units import intexpr
from moevit.hw.units.softmax import PROB_WIDTH, Softmax
from moevit.hw.units.topk import TopK
from moevit.model.integer import intops

__all__ = ["RouteEngine", "route_job_layout", "route_cycles", "route_write_words",
           "ExpertEngine", "CombineEngine"]


def route_job_layout():
    """ROUTE's ``desc`` payload: the descriptor's image and the softmax constants of
    the current task's gate (``TaskEntry.mult``, ``TaskEntry.shift`` of entry
    ``task`` of the table at ``route.table_addr``, which the sequencer reads)."""
    return data.StructLayout({"route": RouteDescriptor.layout(),
                              "mult": unsigned(intops.MULT_BITS), "shift": unsigned(6)})


def _check_hw(engine, hw):
    if not isinstance(hw, HwConfig):
        engine._MustUse__silence = True  # never elaborated: no unused-elaboratable warning
        raise TypeError(f"Hardware config must be a HwConfig, not {hw!r}")


def _misaligned(hw, *addresses):
    """Any of ``addresses`` not a multiple of the bus width in bytes (an expression)."""
    low = (hw.bus_width // 8 - 1).bit_length()
    bad = Const(0)
    for addr in addresses:
        if low:
            bad = bad | (addr[:low] != 0)
    return bad


def _request(m, port, addr, length, sent):
    """Offer one request on ``port`` until it is taken (``sent`` remembers it)."""
    m.d.comb += [port.valid.eq(~sent), port.payload.addr.eq(addr),
                 port.payload.length.eq(length)]
    with m.If(port.valid & port.ready):
        m.d.sync += sent.eq(1)


def _accept(m, engine, code, run_state):
    """The ``IDLE`` and ``REFUSED`` states: take a descriptor, keep it in a register
    (returned), check it (``code``: a function of the payload) and go to
    ``run_state``, or end it with ``done`` in the next cycle when refused."""
    desc = Signal.like(engine.desc.payload)
    with m.State("IDLE"):
        m.d.comb += engine.desc.ready.eq(1)
        with m.If(engine.desc.valid):
            fault = code(engine.desc.payload)
            m.d.sync += [desc.eq(engine.desc.payload), engine.error.eq(fault)]
            with m.If(fault == Fault.NONE):
                m.next = run_state
            with m.Else():
                m.next = "REFUSED"
    with m.State("REFUSED"):
        m.d.comb += engine.done.eq(1)
        m.next = "IDLE"
    return desc


class RouteEngine(wiring.Component):
    """Runs ROUTE (members: :mod:`moevit.hw.top.ports`; ``desc`` is
    :func:`route_job_layout`): ``interpreter.ROUTE``.

    One read channel (the logits, one request, walked a byte a cycle) and the
    write channel (``topk``, then ``weights``). Two stages run at once, tokens
    apart, with the softmax's rows in flight between them:

    * the walk: a token's ``experts`` logits into the insertion list (and, ``vmoe``,
      into the softmax), then (``renorm``) its ``top_k`` best into the softmax; the
      list's order (its experts, best first) is kept as the token's snapshot;
    * the store: each probability that leaves the softmax goes to its entry (``vmoe``:
      probability ``j`` to the slot of expert ``j`` among the snapshot's ``top_k``, if
      any; ``renorm``: to slot ``j``), written to the index and weight memories (a
      bus word each, a byte or a weight lane written).

    After the last token the two memories leave a bus word a cycle as two write
    requests. The softmax divides with a pipelined divider and holds
    :data:`EXP_BANKS` rows: a gate row is short, and the sequential divider (43
    cycles a row) would otherwise set the pace. Cycles: :func:`route_cycles`.

    Limits (``Fault.SHAPE`` beyond them): ``tokens <= hw.max_tokens``,
    ``experts <= hw.cols`` (the MoE unit's lanes), ``1 <= top_k <= experts``;
    ``Fault.CONSTANT`` for a softmax multiplier of 0 or a shift outside 1..47.
    """

    READS = 1
    #: Rows the softmax holds between its exp and emit stages (at 16 experts and
    #: ``vmoe`` the divider's latency spans about four rows of the walk).
    EXP_BANKS = 6
    #: Tokens walked whose probabilities are not all stored: the softmax's rows in
    #: flight (two score banks, the exp banks) and the one being fed.
    SNAPSHOTS = EXP_BANKS + 3

    def __init__(self, hw: HwConfig):
        _check_hw(self, hw)
        self._hw = hw
        super().__init__(engine_members(route_job_layout(), hw.bus_width, self.READS))

    @property
    def hw(self) -> HwConfig:
        return self._hw

    def _code(self, p):
        hw, r = self._hw, p.route
        return fault_code([
            (Fault.OPCODE, r.opcode != RouteDescriptor.OPCODE),
            (Fault.SHAPE, (r.tokens == 0) | (r.tokens > hw.max_tokens) | (r.experts == 0)
             | (r.experts > hw.cols) | (r.top_k == 0) | (r.top_k > r.experts)),
            (Fault.ALIGN, _misaligned(hw, r.logits_addr, r.topk_addr, r.weights_addr)),
            (Fault.CONSTANT, (p.mult == 0) | shift_out_of_range(p.shift)),
        ])

    def elaborate(self, platform):
        hw = self._hw
        L, NT, nbytes = hw.cols, hw.max_tokens, hw.bus_width // 8
        lanes = nbytes // 2                               # weights (u16) a bus word
        m = Module()
        rd, wr = self.rd[0], self.wr

        m.submodules.logits = logits = Repack(nbytes, 1)
        wiring.connect(m, wiring.flipped(rd.data), logits.i)
        m.submodules.topk = topk = TopK(L)
        m.submodules.softmax = sm = Softmax(max_row=L, score_width=8,
                                            exp_banks=self.EXP_BANKS, pipelined_divide=True)
        index_bits = max(1, (L - 1).bit_length())
        m.submodules.snapshots = snaps = SyncFIFO(width=L * index_bits, depth=self.SNAPSHOTS)
        entries = NT * L
        m.submodules.indices = indices = Memory(shape=unsigned(8 * nbytes),
                                                depth=-(-entries // nbytes), init=[])
        m.submodules.weights = weights = Memory(shape=unsigned(16 * lanes),
                                                depth=-(-entries // lanes), init=[])
        iw, ir = indices.write_port(granularity=8), indices.read_port()
        ww, wr_ = weights.write_port(granularity=16), weights.read_port()

        j = Signal(range(L))             # the walk: logit of the token, slot fed (renorm)
        walked = Signal(16)              # tokens walked
        feeding = Signal()               # renorm: the token's best into the softmax
        push = Signal()                  # a token's walk ended last cycle: its snapshot
        jc = Signal(range(L))            # the store: probability of the token
        stored = Signal(16)              # tokens stored
        n = Signal(range(entries + 1))   # entries stored: tokens * top_k at the end
        read_sent = Signal()
        writes_sent = Signal(2)          # write requests taken (topk, weights)
        stored_all = Signal()            # the last token's last probability is taken
        written_all = Signal()           # the last weights word is taken

        with m.FSM() as fsm:
            d = _accept(m, self, self._code, "RUN")
            r = d.route
            with m.State("RUN"):
                _request(m, rd.req, r.logits_addr, r.tokens * r.experts, read_sent)
                with m.If(stored_all):
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [wr.req.valid.eq(writes_sent != 2),
                             wr.req.payload.addr.eq(Mux(writes_sent[0], r.weights_addr,
                                                        r.topk_addr)),
                             wr.req.payload.length.eq(Mux(writes_sent[0], 2 * n, n))]
                with m.If(wr.req.valid & wr.req.ready):
                    m.d.sync += writes_sent.eq(writes_sent + 1)
                with m.If(written_all):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        m.d.comb += [sm.multiplier.eq(d.mult), sm.shift.eq(d.shift)]

        # The walk. A token's last logit waits for room for its snapshot.
        v = logits.o.payload.data[:8].as_signed()
        last_logit = j == r.experts - 1
        room = snaps.level + push < self.SNAPSHOTS
        can = fsm.ongoing("RUN") & (walked != r.tokens) & ~feeding & (~last_logit | room)
        walk_valid = logits.o.valid & can
        m.d.comb += [topk.value.eq(v), topk.index.eq(j),
                     sm.i.valid.eq(Mux(r.rule, feeding, walk_valid)),
                     sm.i.payload.score.eq(Mux(r.rule, topk.top_v[j], v)),
                     sm.i.payload.last.eq(Mux(r.rule, j == r.top_k - 1, last_logit)),
                     logits.o.ready.eq(can & (r.rule | sm.i.ready)),
                     topk.insert.eq(logits.o.valid & logits.o.ready),
                     snaps.w_en.eq(push), snaps.w_data.eq(topk.top_i.as_value())]
        m.d.sync += push.eq(topk.insert & last_logit)
        with m.If(topk.insert):
            m.d.sync += j.eq(j + 1)
            with m.If(last_logit):
                m.d.sync += [j.eq(0), walked.eq(walked + 1), feeding.eq(r.rule)]
        with m.If(feeding & sm.i.ready):
            m.d.sync += j.eq(j + 1)
            with m.If(j == r.top_k - 1):
                m.d.sync += [j.eq(0), feeding.eq(0)]

        # The store: probability jc of the oldest token walked to its slot, if it has one.
        expert_of = data.ArrayLayout(unsigned(index_bits), L)(snaps.r_data)
        slot = Signal(range(L))
        hit = Signal()
        with m.If(r.rule):
            m.d.comb += [slot.eq(jc), hit.eq(1)]
        with m.Else():
            for s in reversed(range(L)):
                with m.If((s < r.top_k) & (expert_of[s] == jc)):
                    m.d.comb += [slot.eq(s), hit.eq(1)]
        expert, prob = Signal(8), Signal(16)
        at = Signal(range(entries))
        m.d.comb += [expert.eq(Mux(r.rule, expert_of[jc], jc)), prob.eq(sm.o.payload.prob),
                     at.eq(n + slot)]
        take = sm.o.valid & snaps.r_rdy
        low_i, low_w = (nbytes - 1).bit_length(), (lanes - 1).bit_length()
        m.d.comb += [sm.o.ready.eq(snaps.r_rdy),
                     iw.addr.eq(at >> low_i), iw.data.eq(Cat(*[expert] * nbytes)),
                     ww.addr.eq(at >> low_w), ww.data.eq(Cat(*[prob] * lanes))]
        with m.If(take & hit):
            m.d.comb += [iw.en.eq(Const(1, nbytes) << at[:low_i]),
                         ww.en.eq(Const(1, lanes) << at[:low_w])]
        with m.If(take):
            m.d.sync += jc.eq(jc + 1)
            with m.If(sm.o.payload.last):
                m.d.comb += snaps.r_en.eq(1)
                m.d.sync += [jc.eq(0), n.eq(n + r.top_k), stored.eq(stored + 1)]
        m.d.comb += stored_all.eq(take & sm.o.payload.last & (stored == r.tokens - 1))

        # The entries out a bus word a cycle: the indices' words, then the weights'.
        emit = Signal()
        e_addr = Signal(range(max(indices.depth, weights.depth)))
        e_weights = Signal()
        words = Mux(e_weights, (2 * n + nbytes - 1) >> low_i, (n + nbytes - 1) >> low_i)
        b_valid, b_weight, b_last = Signal(), Signal(), Signal()
        advance = ~b_valid | wr.data.ready
        m.d.comb += [ir.addr.eq(e_addr), wr_.addr.eq(e_addr), ir.en.eq(advance),
                     wr_.en.eq(advance),
                     wr.data.valid.eq(b_valid), wr.data.payload.eq(Mux(b_weight, wr_.data,
                                                                       ir.data))]
        with m.If(stored_all):
            m.d.sync += [emit.eq(1), e_addr.eq(0), e_weights.eq(0)]
        with m.If(advance):
            m.d.sync += [b_valid.eq(emit), b_weight.eq(e_weights),
                         b_last.eq(emit & e_weights & (e_addr == words - 1))]
            with m.If(emit):
                m.d.sync += e_addr.eq(e_addr + 1)
                with m.If(e_addr == words - 1):
                    m.d.sync += [e_addr.eq(0), e_weights.eq(1)]
                    with m.If(e_weights):
                        m.d.sync += emit.eq(0)
        m.d.comb += written_all.eq(b_valid & wr.data.ready & b_last)

        with m.If(self.desc.valid & self.desc.ready):
            m.d.sync += [j.eq(0), walked.eq(0), feeding.eq(0), jc.eq(0), stored.eq(0),
                         n.eq(0), read_sent.eq(0), writes_sent.eq(0)]
        return m


def route_cycles(tokens, experts, top_k, renorm, bus_width) -> int:
    """Cycles of a ROUTE on :class:`RouteEngine` from its first logit taken to its
    ``done``, the logits coming a byte a cycle and the writes taken at once: the
    walk and the softmax's rows (:func:`~moevit.hw.units.softmax.row_ends`; ``renorm``
    walks a token's logits before its row), the last probability to the write-out,
    and the two memories a bus word a cycle. Exact (tests/test_sim_engines_moe.py)."""
    from moevit.hw.units.softmax import row_ends

    walk = experts if renorm else 0
    ends = row_ends([top_k if renorm else experts] * tokens, exp_banks=RouteEngine.EXP_BANKS,
                    pipelined_divide=True, gap=walk)
    return walk + ends[-1] + 1 + route_write_words(tokens * top_k, bus_width)


def route_write_words(entries, bus_width) -> int:
    """Bus words a ROUTE of ``entries`` (token, slot) pairs writes: its u8 indices, then
    its u16 weights."""
    nbytes = bus_width // 8
    return -(-entries // nbytes) + -(-2 * entries // nbytes)


def _divmod(m, numerator, divisor, name):
    """``(numerator // divisor, numerator % divisor)`` of two unsigned values, unrolled
    (restoring division, a compare and subtract per quotient bit; a signal per step, so
    the netlist grows with the bits, not twice a bit): for the small sums of the routing
    scan."""
    width, bits = len(numerator), len(divisor)
    quotient = Signal(width, name=f"{name}_quotient")
    rem = Const(0, bits)
    for i in reversed(range(width)):
        shifted = Cat(numerator[i], rem)
        step = Signal(bits, name=f"{name}_rem{i}")
        m.d.comb += [quotient[i].eq(shifted >= divisor),
                     step.eq(Mux(quotient[i], shifted - divisor, shifted))]
        rem = step
    return quotient, rem


class ExpertEngine(wiring.Component):
    """Runs EXPERT (members: :mod:`moevit.hw.top.ports`, and those below):
    ``interpreter.EXPERT`` with the linear engine.

    One read channel (the routing's ``topk``, one request, a bus word a cycle: a
    word holding m indices of ``expert`` takes max(1, m) cycles, one list entry
    written a cycle; :func:`moevit.hw.cost.cycles.expert_scan_cycles`); the
    write channel is unused. Entry ``j`` of the token list is the ``j``-th
    (token, slot) whose index is ``expert`` in row-major order (``np.nonzero``'s);
    at most ``tokens`` of them (a row of ``topk`` names an expert once), else
    ``Fault.SHAPE``. No entry: ``done`` and nothing else (no weight is
    fetched). Else two jobs on ``job``, each after the previous one's
    ``job_done``: fc1 (``ExpertDescriptor.linears(n)[0]``, ``x_gather``: row
    ``j`` of x is row ``token_j``) and fc2 (``linears(n)[1]``, ``y_scatter``: row
    ``j`` of y goes to row ``token_j * top_k + slot_j`` of the slots); ``done``
    with fc2's ``job_done``.

    Members
    -------
    job : Out(stream.Signature(linear_job_layout()))
        The linear engine's jobs.
    job_done : In(1)
        The linear engine ended the current job and its writes are answered
        (the top holds it back until the write mover is idle, as between two
        instructions: fc2 reads what fc1 wrote).
    x_index, y_index : In(IndexPort(hw.max_tokens))
        The list, looked up combinationally: ``x_index.row`` is ``token_j``,
        ``y_index.row`` is ``token_j * top_k + slot_j`` for ``j`` at ``at``.

    ahead : Out(stream.Signature(ahead_layout()))
        With ``hw.expert_prefetch``: the weights the linear engine may read ahead
        (:class:`~moevit.hw.top.linear_engine.LinearEngine`): fc2's while fc1 runs,
        and fc1's while the list is built, when the routing's previous scan
        showed the expert chosen. Never offered otherwise.
    forget : In(1)
        An instruction other than EXPERT was issued: the routing may have changed.
    next_desc : In(ExpertDescriptor.layout())
    next_valid : In(1)
        The sequencer's next instruction (assembled, waiting: ``pending``) is an EXPERT,
        ``next_desc``.

    With ``hw.expert_prefetch`` the scan also notes which experts (below
    ``hw.cols``, ROUTE's limit) the routing names. An EXPERT on the same
    routing (``topk_addr``, ``tokens``, ``top_k``) before anything else runs
    (``forget``) uses that note: for an expert nobody chose it ends at once,
    the routing not read again (its result is the same: no job, nothing
    written); for a chosen one, fc1's weights are read ahead during its scan,
    or already during fc2 of the EXPERT before it, when that one saw it next
    (``next_desc``): the memory then moves them while fc2's last out tile works.
    An EXPERT whose hidden rows or slots overlap its routing leaves no note.

    Limits (``Fault.SHAPE`` beyond them): ``tokens <= hw.max_tokens``, ``dim``
    and ``hidden`` at most ``hw.max_in``; ``Fault.CONSTANT`` for fc1's GELU
    constants out of their ranges (as the linear kernel's).
    """

    READS = 1

    def __init__(self, hw: HwConfig):
        _check_hw(self, hw)
        self._hw = hw
        members = engine_members(ExpertDescriptor.layout(), hw.bus_width, self.READS)
        members.update({"job": Out(stream.Signature(linear_job_layout())),
                        "job_done": In(1),
                        "x_index": In(IndexPort(hw.max_tokens)),
                        "y_index": In(IndexPort(hw.max_tokens)),
                        "ahead": Out(stream.Signature(ahead_layout())),
                        "forget": In(1),
                        "next_desc": In(ExpertDescriptor.layout()), "next_valid": In(1)})
        super().__init__(members)

    @property
    def hw(self) -> HwConfig:
        return self._hw

    def _code(self, p):
        hw = self._hw
        return fault_code([
            (Fault.OPCODE, p.opcode != ExpertDescriptor.OPCODE),
            (Fault.SHAPE, (p.tokens == 0) | (p.tokens > hw.max_tokens) | (p.top_k == 0)
             | (p.dim == 0) | (p.dim > hw.max_in) | (p.hidden == 0) | (p.hidden > hw.max_in)),
            (Fault.ALIGN, _misaligned(hw, p.topk_addr)),
            (Fault.CONSTANT, (p.gelu_b == 0) | (p.gelu_c == 0) | (p.gelu_mult == 0)
             | shift_out_of_range(p.gelu_shift)),
        ])

    def elaborate(self, platform):
        hw = self._hw
        NT, nbytes = hw.max_tokens, hw.bus_width // 8
        m = Module()
        rd = self.rd[0]

        beat = rd.data
        entry = data.StructLayout({"token": range(NT), "row": unsigned(16)})
        m.submodules.list = table = Memory(shape=entry, depth=NT, init=[])
        lw = table.write_port()
        xr, yr = table.read_port(domain="comb"), table.read_port(domain="comb")
        m.d.comb += [xr.addr.eq(self.x_index.at), self.x_index.row.eq(xr.data.token),
                     yr.addr.eq(self.y_index.at), self.y_index.row.eq(yr.data.row)]

        # The job offered, a register (the fields _linear leaves are 0: a register's
        # init, where constant drivers would be left undriven by some simulators);
        # the write channel is unused.
        job = Signal(linear_job_layout())
        m.d.comb += [self.job.payload.eq(job), self.wr.req.valid.eq(0),
                     self.wr.data.valid.eq(0)]

        # The routing, a bus word a cycle: its bytes naming the expert listed one a cycle,
        # lowest first; a word with m of them takes max(1, m) cycles.
        t = Signal(16)                     # token of the word's first byte
        s = Signal(8)                      # its slot
        row = Signal(24)                   # t * top_k + s
        n = Signal(range(NT * 256 + 1))    # entries found (more than tokens: a fault)
        read_sent = Signal()
        listed = Signal(nbytes)            # the word's matches listed already
        values = [beat.payload.data[8 * k:8 * k + 8] for k in range(nbytes)]
        in_request = [k < beat.payload.bytes for k in range(nbytes)]
        pending = Signal(nbytes)           # the word's matches not listed yet
        lowest = Signal(nbytes)            # the one listed this cycle
        at = Signal(range(nbytes))         # its byte in the word
        finished = Signal()                # the word is taken this cycle

        L = hw.cols
        ahead = bool(hw.expert_prefetch)
        mask = Signal(L)                   # the experts the last scan found chosen
        known = Signal()                   # ... and the routing it scanned is unchanged
        key = Signal(data.StructLayout({"addr": 32, "tokens": 16, "top_k": 8}))
        chosen = Signal()                  # the note says this expert is chosen
        offered = Signal()                 # the ahead offer of this stage was taken
        m.d.comb += self.ahead.payload.eq(0)

        with m.FSM() as fsm:
            d = _accept(m, self, self._code, "NOTE" if ahead else "SCAN")
            if ahead:
                with m.State("NOTE"):
                    noted, picked = self._noted(d, known, key, mask)
                    m.d.sync += [chosen.eq(noted & picked), offered.eq(0)]
                    with m.If(noted & ~picked):
                        m.d.comb += self.done.eq(1)        # nobody chose it: as after a scan
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [mask.eq(0), known.eq(0)]
                        m.next = "SCAN"
            with m.State("SCAN"):
                _request(m, rd.req, d.topk_addr, d.tokens * d.top_k, read_sent)
                m.d.comb += beat.ready.eq(finished)
                if ahead:
                    self._offer(m, offered, chosen, w_addr=d.fc1_w_addr,
                                chan_addr=d.fc1_chan_addr, in_features=d.dim, out=d.hidden)
                match = pending.any()
                with m.If(beat.valid & match):
                    # Byte `at` is slot (s + at) % top_k of token t + (s + at) // top_k.
                    whole, _ = _divmod(m, s + at, d.top_k, "listed")
                    m.d.comb += [lw.addr.eq(n), lw.data.token.eq(t + whole),
                                 lw.data.row.eq(row + at), lw.en.eq(n < NT)]
                    m.d.sync += [n.eq(n + 1), listed.eq(listed | lowest)]
                with m.If(finished):
                    whole, part = _divmod(m, s + nbytes, d.top_k, "next")
                    m.d.sync += [listed.eq(0), row.eq(row + nbytes), t.eq(t + whole),
                                 s.eq(part)]
                    if ahead:
                        m.d.sync += mask.eq(mask | Cat(*[
                            Cat(*[(v == e) & inside for v, inside in zip(values, in_request)
                                  ]).any() for e in range(L)]))
                    with m.If(beat.payload.last):
                        with m.If(n + match > d.tokens):
                            m.d.sync += self.error.eq(Fault.SHAPE)
                        m.next = "LISTED"
            with m.State("LISTED"):
                if ahead:
                    self._offer(m, offered, chosen, w_addr=d.fc1_w_addr,
                                chan_addr=d.fc1_chan_addr, in_features=d.dim, out=d.hidden)
                    m.d.sync += [known.eq((self.error == Fault.NONE) & ~self._overlap(d)),
                                 key.addr.eq(d.topk_addr), key.tokens.eq(d.tokens),
                                 key.top_k.eq(d.top_k)]
                with m.If((n == 0) | (self.error != Fault.NONE)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += job.eq(0)
                    m.d.sync += job.x_gather.eq(1)
                    self._linear(m, job.op, n, in_features=d.dim, out_features=d.hidden,
                                 x_addr=d.x_addr, w_addr=d.fc1_w_addr,
                                 chan_addr=d.fc1_chan_addr, y_addr=d.hidden_addr, gelu=1,
                                 gelu_b=d.gelu_b, gelu_c=d.gelu_c, gelu_mult=d.gelu_mult,
                                 gelu_shift=d.gelu_shift)
                    m.next = "FC1"
            with m.State("FC1"):
                m.d.comb += self.job.valid.eq(1)
                with m.If(self.job.ready):
                    m.d.sync += offered.eq(0)
                    m.next = "FC1_RUN"
            with m.State("FC1_RUN"):
                if ahead:
                    self._offer(m, offered, 1, w_addr=d.fc2_w_addr, chan_addr=d.fc2_chan_addr,
                                in_features=d.hidden, out=d.dim)
                with m.If(self.job_done):
                    m.d.sync += job.eq(0)
                    m.d.sync += job.y_scatter.eq(1)
                    self._linear(m, job.op, n, in_features=d.hidden, out_features=d.dim,
                                 x_addr=d.hidden_addr, w_addr=d.fc2_w_addr,
                                 chan_addr=d.fc2_chan_addr, y_addr=d.slots_addr)
                    m.next = "FC2"
            with m.State("FC2"):
                m.d.comb += self.job.valid.eq(1)
                with m.If(self.job.ready):
                    m.d.sync += offered.eq(0)
                    m.next = "FC2_RUN"
            with m.State("FC2_RUN"):
                if ahead:
                    # The next EXPERT's fc1, when the note shows its expert chosen: it
                    # comes next (the sequencer issues in order) and runs fc1 on them.
                    nd = self.next_desc
                    noted, picked = self._noted(nd, known, key, mask)
                    self._offer(m, offered, self.next_valid & noted & picked
                                & (self._code(nd) == Fault.NONE),
                                w_addr=nd.fc1_w_addr, chan_addr=nd.fc1_chan_addr,
                                in_features=nd.dim, out=nd.hidden)
                with m.If(self.job_done):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        m.d.comb += [
            pending.eq(Cat(*[(v == d.expert) & inside for v, inside in zip(values, in_request)])
                       & ~listed),
            lowest.eq(pending & (~pending + 1)),
            finished.eq(beat.valid & ((pending & ~lowest) == 0)),
        ]
        for k in reversed(range(nbytes)):
            with m.If(pending[k]):
                m.d.comb += at.eq(k)
        with m.If(self.desc.valid & self.desc.ready):
            m.d.sync += [t.eq(0), s.eq(0), row.eq(0), n.eq(0), read_sent.eq(0), listed.eq(0)]
        with m.If(self.forget):
            m.d.sync += known.eq(0)
        return m

    def _noted(self, d, known, key, mask):
        """``(noted, picked)`` of EXPERT ``d``: the note is of its routing, and shows its
        expert chosen."""
        L = self._hw.cols
        noted = (known & (key.addr == d.topk_addr) & (key.tokens == d.tokens)
                 & (key.top_k == d.top_k) & (d.expert < L))
        return noted, mask.bit_select(d.expert[:max(1, (L - 1).bit_length())], 1)

    def _offer(self, m, offered, when, *, w_addr, chan_addr, in_features, out):
        """Offer the weights of a job of ``out`` outputs on ``ahead`` (while ``when``,
        until taken)."""
        hw = self._hw
        fields = weight_ranges(hw, w_addr=w_addr, chan_addr=chan_addr, in_features=in_features,
                               out_tiles=(out + hw.cols - 1) // hw.cols)
        m.d.comb += [self.ahead.valid.eq(when & ~offered),
                     *[getattr(self.ahead.payload, k).eq(v) for k, v in fields.items()]]
        with m.If(self.ahead.valid & self.ahead.ready):
            m.d.sync += offered.eq(1)

    @staticmethod
    def _overlap(d):
        """The hidden rows or the slots ``d`` writes may overlap the routing it reads."""
        routing = (d.topk_addr, d.topk_addr + d.tokens * d.top_k)
        hidden = (d.hidden_addr, d.hidden_addr + d.tokens * d.hidden)
        slots = (d.slots_addr, d.slots_addr + d.tokens * d.top_k * d.dim)
        return Cat(*[(a < routing[1]) & (routing[0] < b) for a, b in (hidden, slots)]).any()

    def _linear(self, m, op, n, *, in_features, out_features, **fields):
        """Set ``op`` (a :class:`LinearDescriptor` image, a register) to ``n`` tokens,
        the derived tile counts and ``fields``."""
        hw = self._hw
        m.d.sync += [op.opcode.eq(LinearDescriptor.OPCODE), op.tokens.eq(n),
                     op.in_features.eq(in_features), op.out_features.eq(out_features),
                     op.token_tiles.eq((n + hw.rows - 1) // hw.rows),
                     op.out_tiles.eq((out_features + hw.cols - 1) // hw.cols)]
        m.d.sync += [getattr(op, name).eq(value) for name, value in fields.items()]


class CombineEngine(wiring.Component):
    """Runs COMBINE (members: :mod:`moevit.hw.top.ports`): ``interpreter.COMBINE``.

    Three read channels, one request each: ``rd[0]`` the gate weights (a u16
    at a time), ``rd[1]`` the slots and ``rd[2]`` the skip tensor (``L =
    hw.combine_width`` int8 lanes at a time); the write channel takes ``y`` as one
    request. Slot ``s`` of token ``t``, a row of ``dim / L`` beats, adds ``weight *
    slot`` into the accumulator row (``ceil(max_in / L)`` words of ``L`` int32,
    the MoE unit's combine); the token's last slot goes, instead, through
    ``requantize`` and ``residual_add`` with the token's skip row to ``y``.
    One beat of slots a cycle.

    Limits (``Fault.SHAPE`` beyond them): ``dim <= hw.max_in`` and a multiple
    of ``L``; ``Fault.CONSTANT`` for a multiplier of 0 or a shift outside
    1..47.
    """

    READS = 3

    def __init__(self, hw: HwConfig):
        _check_hw(self, hw)
        self._hw = hw
        super().__init__(engine_members(CombineDescriptor.layout(), hw.bus_width, self.READS))

    @property
    def hw(self) -> HwConfig:
        return self._hw

    def _code(self, p):
        hw = self._hw
        return fault_code([
            (Fault.OPCODE, p.opcode != CombineDescriptor.OPCODE),
            (Fault.SHAPE, (p.tokens == 0) | (p.top_k == 0) | (p.dim == 0) | (p.dim > hw.max_in)
             | (p.dim % hw.combine_width != 0)),
            (Fault.ALIGN, _misaligned(hw, p.weights_addr, p.slots_addr, p.skip_addr, p.y_addr)),
            (Fault.CONSTANT, (p.mult == 0) | shift_out_of_range(p.shift) | (p.res_mult_y == 0)
             | (p.res_mult_skip == 0) | shift_out_of_range(p.res_shift)),
        ])

    def elaborate(self, platform):
        hw = self._hw
        L, nbytes = hw.combine_width, hw.bus_width // 8
        words = -(-hw.max_in // L)
        m = Module()

        m.submodules.weights = wq = Repack(nbytes, 2)
        m.submodules.slots = sq = Repack(nbytes, L)
        m.submodules.skip = kq = Repack(nbytes, L)
        for port, repack in zip(self.rd, (wq, sq, kq)):
            wiring.connect(m, wiring.flipped(port.data), repack.i)
        m.submodules.y = yq = Repack(L, nbytes)
        m.d.comb += [self.wr.data.valid.eq(yq.o.valid), self.wr.data.payload.eq(yq.o.payload.data),
                     yq.o.ready.eq(self.wr.data.ready)]
        lanes = data.ArrayLayout(signed(32), L)
        m.submodules.acc = acc = Memory(shape=lanes, depth=words, init=[])
        aw, ar = acc.write_port(), acc.read_port(domain="comb")

        t = Signal(16)
        s = Signal(8)
        b = Signal(range(words))
        sent = Signal(4)                  # requests taken: rd[0..2], wr
        consumed = Signal()               # every slot beat is in
        # The output stage: a token's sum and skip row, to requantize and add.
        st_valid, st_last = Signal(), Signal()
        st_acc = Signal(lanes)
        st_skip = Signal(data.ArrayLayout(signed(8), L))

        with m.FSM() as fsm:
            d = _accept(m, self, self._code, "RUN")
            with m.State("RUN"):
                for k, (port, addr, length) in enumerate((
                        (self.rd[0].req, d.weights_addr, 2 * d.tokens * d.top_k),
                        (self.rd[1].req, d.slots_addr, d.tokens * d.top_k * d.dim),
                        (self.rd[2].req, d.skip_addr, d.tokens * d.dim),
                        (self.wr.req, d.y_addr, d.tokens * d.dim))):
                    _request(m, port, addr, length, sent[k])
                with m.If(self.wr.data.valid & self.wr.data.ready & yq.o.payload.last):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        with m.If(self.desc.valid & self.desc.ready):
            m.d.sync += [t.eq(0), s.eq(0), b.eq(0), sent.eq(0), consumed.eq(0)]

        # A slot beat, its weight, and (the token's last slot) its skip beat and a
        # free output stage, all at once.
        last_b = Signal()
        last_s = Signal()
        free = Signal()
        m.d.comb += [last_b.eq(b == d.dim // L - 1), last_s.eq(s == d.top_k - 1),
                     free.eq(~st_valid | yq.i.ready)]
        others = Signal()                 # what a slot beat waits for besides itself
        m.d.comb += others.eq(~consumed & wq.o.valid & (~last_s | (kq.o.valid & free)))
        fire = Signal()
        m.d.comb += [fire.eq(sq.o.valid & others), sq.o.ready.eq(others),
                     wq.o.ready.eq(fire & last_b), kq.o.ready.eq(fire & last_s)]
        weight = intexpr.non_negative(wq.o.payload.data[:PROB_WIDTH])
        m.d.comb += ar.addr.eq(b)
        total = Signal(lanes)
        for c in range(L):
            slot = sq.o.payload.data[8 * c:8 * c + 8].as_signed()
            m.d.comb += total[c].eq(Mux(s == 0, 0, ar.data[c]) + weight * slot)
        m.d.comb += [aw.addr.eq(b), aw.data.eq(total), aw.en.eq(fire & ~last_s)]
        with m.If(fire):
            m.d.sync += b.eq(b + 1)
            with m.If(last_b):
                m.d.sync += [b.eq(0), s.eq(s + 1)]
                with m.If(last_s):
                    m.d.sync += [s.eq(0), t.eq(t + 1)]
                    with m.If(t == d.tokens - 1):
                        m.d.sync += consumed.eq(1)
        with m.If(fire & last_s):
            m.d.sync += [st_valid.eq(1), st_acc.eq(total), st_skip.eq(kq.o.payload.data),
                         st_last.eq(last_b & (t == d.tokens - 1))]
        with m.Elif(yq.i.ready):
            m.d.sync += st_valid.eq(0)

        # y = residual_add(requantize(acc), skip), lane by lane.
        y = []
        for c in range(L):
            mlp = intexpr.requantize(st_acc[c], d.mult, d.shift)
            y.append(intexpr.clip8(intexpr.round_shift(
                mlp * d.res_mult_y + st_skip[c] * d.res_mult_skip, d.res_shift)))
        m.d.comb += [yq.i.valid.eq(st_valid), yq.i.payload.data.eq(Cat(*y)),
                     yq.i.payload.bytes.eq(L), yq.i.payload.last.eq(st_last)]
        return m
