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
``dim`` is a multiple of the kernel's ``cols`` lanes (as every model's width
is: ``cols`` divides the head width). A descriptor that breaks a rule is
refused with its :class:`~moevit.hw.program.descriptor.Fault` (``SHAPE`` for
sizes and placement, ``CONSTANT`` for constants, ``OPCODE``) and ``done``
follows in the next cycle, nothing read or written.
"""

from amaranth.hdl import Array, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import FAULT_WIDTH, Fault, fault_code, shift_out_of_range
from moevit.hw.program.isa import RouteDescriptor
from moevit.hw.top.movers import Repack
from moevit.hw.top.ports import engine_members
from moevit.hw.units.softmax import PROB_WIDTH, Softmax
from moevit.hw.units.topk import TopK
from moevit.model.integer import intops

__all__ = ["RouteEngine", "route_job_layout"]


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
    write channel (``topk``, then ``weights``). Per token: its ``experts``
    logits into the insertion list (and, ``vmoe``, into the softmax), the
    ``top_k`` best (``renorm``) into the softmax, the probabilities to their
    slots, the ``top_k`` entries into the entry memory (``max_tokens * cols``
    entries); after the last token, the entries leave as two write requests.

    Limits (``Fault.SHAPE`` beyond them): ``tokens <= hw.max_tokens``,
    ``experts <= hw.cols`` (the MoE unit's lanes), ``1 <= top_k <= experts``;
    ``Fault.CONSTANT`` for a softmax multiplier of 0 or a shift outside 1..47.
    """

    READS = 1

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
             | (r.experts > hw.cols) | (r.top_k == 0) | (r.top_k > r.experts)
             | _misaligned(hw, r.logits_addr, r.topk_addr, r.weights_addr)),
            (Fault.CONSTANT, (p.mult == 0) | shift_out_of_range(p.shift)),
        ])

    def elaborate(self, platform):
        hw = self._hw
        L, NT, nbytes = hw.cols, hw.max_tokens, hw.bus_width // 8
        m = Module()
        rd, wr = self.rd[0], self.wr

        m.submodules.logits = logits = Repack(nbytes, 1)
        wiring.connect(m, wiring.flipped(rd.data), logits.i)
        m.submodules.pack = pack = Repack(2, nbytes)     # u8 indices, then u16 weights
        m.d.comb += [wr.data.valid.eq(pack.o.valid), wr.data.payload.eq(pack.o.payload.data),
                     pack.o.ready.eq(wr.data.ready)]
        m.submodules.topk = topk = TopK(L)
        m.submodules.softmax = sm = Softmax(max_row=L, score_width=8)
        entry = data.StructLayout({"expert": unsigned(8), "weight": unsigned(PROB_WIDTH)})
        m.submodules.entries = entries = Memory(shape=entry, depth=NT * L, init=[])
        ew, er = entries.write_port(), entries.read_port()

        weight = [Signal(PROB_WIDTH, name=f"w{s}") for s in range(L)]
        j = Signal(range(L + 1))         # logit walked / score fed / probability / slot
        t = Signal(16)                   # token
        n = Signal(range(NT * L + 1))    # entries written
        read_sent = Signal()
        writes_sent = Signal(2)          # write requests taken (topk, weights)
        lasts = Signal()                 # the topk request's last beat has left
        emit = Signal()                  # the entries are being read out
        e_addr = Signal(range(NT * L))
        e_weights = Signal()             # reading out the weights (else the indices)

        v = logits.o.payload.data[:8].as_signed()
        m.d.comb += [topk.value.eq(v), topk.index.eq(j)]

        with m.FSM() as fsm:
            d = _accept(m, self, self._code, "WALK")
            r = d.route
            with m.State("WALK"):
                _request(m, rd.req, r.logits_addr, r.tokens * r.experts, read_sent)
                # Every logit into the list; vmoe: into the softmax too, in lane order.
                m.d.comb += [sm.i.valid.eq(logits.o.valid & ~r.rule),
                             sm.i.payload.score.eq(v),
                             sm.i.payload.last.eq(j == r.experts - 1),
                             logits.o.ready.eq(r.rule | sm.i.ready)]
                with m.If(logits.o.valid & logits.o.ready):
                    m.d.comb += topk.insert.eq(1)
                    m.d.sync += j.eq(j + 1)
                    with m.If(j == r.experts - 1):
                        m.d.sync += j.eq(0)
                        with m.If(r.rule):
                            m.next = "FEED"
                        with m.Else():
                            m.next = "PROBS"
            with m.State("FEED"):
                # renorm: the k selected logits into the softmax, best first.
                m.d.comb += [sm.i.valid.eq(1), sm.i.payload.score.eq(topk.top_v[j]),
                             sm.i.payload.last.eq(j == r.top_k - 1)]
                with m.If(sm.i.ready):
                    m.d.sync += j.eq(j + 1)
                    with m.If(j == r.top_k - 1):
                        m.d.sync += j.eq(0)
                        m.next = "PROBS"
            with m.State("PROBS"):
                # vmoe: probability j is the slot's that holds expert j; renorm: slot j's.
                m.d.comb += sm.o.ready.eq(1)
                with m.If(sm.o.valid):
                    for s in range(L):
                        with m.If(Mux(r.rule, s, topk.top_i[s]) == j):
                            m.d.sync += weight[s].eq(sm.o.payload.prob)
                    m.d.sync += j.eq(j + 1)
                    with m.If(sm.o.payload.last):
                        m.d.sync += j.eq(0)
                        m.next = "STORE"
            with m.State("STORE"):
                # Slot j's entry at t * top_k + j: the tensors' row-major order.
                m.d.comb += [ew.addr.eq(n), ew.en.eq(1), ew.data.expert.eq(topk.top_i[j]),
                             ew.data.weight.eq(Array(weight)[j])]
                m.d.sync += [n.eq(n + 1), j.eq(j + 1)]
                with m.If(j == r.top_k - 1):
                    m.d.sync += [j.eq(0), t.eq(t + 1)]
                    with m.If(t == r.tokens - 1):
                        m.d.sync += [emit.eq(1), e_addr.eq(0), e_weights.eq(0)]
                        m.next = "WRITE"
                    with m.Else():
                        m.next = "WALK"
            with m.State("WRITE"):
                # Two requests; their bytes from the entries, read ahead one cycle.
                m.d.comb += [wr.req.valid.eq(writes_sent != 2),
                             wr.req.payload.addr.eq(Mux(writes_sent[0], r.weights_addr,
                                                        r.topk_addr)),
                             wr.req.payload.length.eq(Mux(writes_sent[0], 2 * n, n))]
                with m.If(wr.req.valid & wr.req.ready):
                    m.d.sync += writes_sent.eq(writes_sent + 1)
                with m.If(wr.data.valid & wr.data.ready & pack.o.payload.last):
                    m.d.sync += lasts.eq(1)
                    with m.If(lasts):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        m.d.comb += [sm.multiplier.eq(d.mult), sm.shift.eq(d.shift)]
        with m.If(self.desc.valid & self.desc.ready):
            m.d.sync += [j.eq(0), t.eq(0), n.eq(0), read_sent.eq(0), writes_sent.eq(0),
                         lasts.eq(0)]

        # The entries out: n indices (a byte each), then n weights (two bytes each).
        b_valid = Signal()
        b_weight = Signal()
        b_last = Signal()
        advance = Signal()
        m.d.comb += [advance.eq(~pack.i.valid | pack.i.ready), er.addr.eq(e_addr),
                     er.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [b_valid.eq(emit), b_weight.eq(e_weights),
                         b_last.eq(e_addr == n - 1)]
            with m.If(emit):
                m.d.sync += e_addr.eq(e_addr + 1)
                with m.If(e_addr == n - 1):
                    m.d.sync += [e_addr.eq(0), e_weights.eq(1)]
                    with m.If(e_weights):
                        m.d.sync += emit.eq(0)
        m.d.comb += [pack.i.valid.eq(b_valid), pack.i.payload.last.eq(b_last),
                     pack.i.payload.data.eq(Mux(b_weight, er.data.weight, er.data.expert)),
                     pack.i.payload.bytes.eq(Mux(b_weight, 2, 1))]
        return m
