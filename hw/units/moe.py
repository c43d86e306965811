"""The MoE unit: top-k gate, gate weights, per-expert token lists and the combine.

The task's gate runs on the linear kernel; its output beats (one per token:
``E`` int8 logits in the first ``E`` of the kernel's ``cols`` lanes) enter this
unit, which then does in hardware what ``moevit.model.integer.golden`` does in
``_Runner.moe`` (M³ViT's computation reordering):

1. **gate** (one token at a time): the logits walk through the insertion list
   (:class:`~moevit.hw.units.topk.TopK`),
   one lane per cycle, giving the top ``k`` (``intops.topk``: larger first, ties
   to the lower index); the weights come from the integer softmax unit
   (:class:`~moevit.hw.units.softmax.Softmax`, ``intops.softmax``), over all ``E``
   logits with the selected ones kept (``"vmoe"``) or over the ``k`` selected
   logits (``"renorm"``); the token's ``k`` entries (token, weight) are appended
   to the selected experts' lists in the list memory (one region of
   ``max_tokens`` entries per expert, so each list is in token order);
2. **lists**: the ``lists`` stream gives, for each expert that some token
   selected, in expert order, a header beat (expert, count) then its entries
   (token, Q0.15 weight); experts no token selected are skipped. The sequencer
   runs each listed expert's fc1 and fc2 on the linear kernel, over the listed
   tokens, and streams fc2's output beats back on ``fc2``;
3. **combine**: each ``fc2`` beat (out-tile-major per expert, as the linear
   kernel emits them) is multiplied by its entry's weight and added into the
   accumulator memory (``blocks.{i}.mlp.combine.acc``, int32 per lane; the
   token's first expert writes instead of adding, so nothing is cleared);
4. **emit**: ``requantize(acc, out_mult, out_shift)`` (``blocks.{i}.mlp.out``) on
   ``y``, out-tile-major like the linear kernel's output, ``last`` on the final
   beat.

The sum is exact in any order (integers), so the order in which experts run
changes nothing: the result is the golden model's bit for bit.

Streams (``amaranth.lib.stream``, valid/ready):

``desc``
    One :class:`MoeDescriptor` per operation.
``logits``
    ``tokens`` beats of :func:`~moevit.hw.units.linear.output_layout` (``cols``
    lanes; lane ``e < experts`` holds the logit of expert ``e``; ``last``
    ignored).
``lists``
    :func:`list_layout` beats, as above; ``last`` on the operation's final beat.
``fc2``
    For each listed expert in list order, ``out_tiles * count`` beats of
    :func:`~moevit.hw.units.linear.output_layout`: beat ``(ot, j)`` holds the
    expert's output for its ``j``-th listed token, features ``ot*cols ..``
    (the ``last`` flag is ignored).
``y``
    ``out_tiles * tokens`` beats, beat ``(ot, t)`` holds ``out[t, ot*cols + c]``
    in lane ``c`` (lanes past ``dim`` are 0).

What the sequencer does around the unit, per MoE layer ``i`` of task ``t``:
send the descriptor (:meth:`MoeDescriptor.for_layer`); run the task's gate
(``blocks.{i}.mlp.gates.{t}``) on the linear kernel with its output on
``logits``; then, for each header ``(e, n)`` on ``lists``, fetch expert ``e``'s
weights once, gather the ``n`` listed tokens' rows of ``blocks.{i}.norm2.out``
as fc1's input (``n`` tokens), run fc1 (fused GELU) and fc2 on the linear
kernel, fc2's output on ``fc2``. The unit's ``y`` is ``blocks.{i}.mlp.out``, the
input of ``add2``. The weights on ``lists`` are for the record: the unit
keeps its own copy for the combine.

A descriptor that breaks a rule of the unit is taken and skipped (no other
stream moves) and ``error`` holds its :class:`~moevit.hw.program.descriptor.Fault` until the next one is
taken. ``busy`` is high from a descriptor's acceptance to its operation's last
beat (on ``lists`` and ``y``) being taken; the unit takes a descriptor only
when it is low. :meth:`MoeDescriptor.expected_cycles` is the unit's exact
cycle count when it is fed without gaps and drained without back-pressure.
"""

from dataclasses import dataclass

import numpy as np

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import FAULT_WIDTH, Fault, MoeDescriptor
from moevit.hw.units import intexpr
from moevit.hw.units.linear import output_layout
from moevit.hw.units.softmax import PROB_WIDTH, Softmax
from moevit.hw.units.topk import TopK
from moevit.model.integer import intops

__all__ = ["MoeUnit", "gate_weight_states", "list_layout", "moe_reference",
           "moe_streams", "decode_lists", "MoeReference"]


def list_layout(lanes: int, max_tokens: int):
    """A ``lists`` beat: a header (``expert``, ``count``) or one of that expert's
    entries (``token``, ``weight`` in Q0.15; ``expert`` repeated); ``last`` on the
    operation's final beat."""
    return data.StructLayout({
        "header": unsigned(1),
        "expert": range(lanes),
        "count": range(max_tokens + 1),
        "token": range(max_tokens),
        "weight": unsigned(PROB_WIDTH),
        "last": unsigned(1),
    })


def gate_weight_states(m, sm, *, selected, slot_expert, renorm, top_k, weight, j, then):
    """The FSM states ``FEED`` and ``PROBS`` of the gate weights, shared by the MoE unit
    and the ROUTE engine: ``renorm`` feeds the ``top_k`` selected logits (``selected``:
    the one of slot ``j``) into the softmax ``sm``; then each probability ``j`` goes to
    the slot holding expert ``j`` (vmoe: the softmax ran over all experts) or to slot
    ``j`` (renorm), and the FSM goes on to ``then``."""
    with m.State("FEED"):
        m.d.comb += [sm.i.valid.eq(1), sm.i.payload.score.eq(selected),
                     sm.i.payload.last.eq(j == top_k - 1)]
        with m.If(sm.i.ready):
            m.d.sync += j.eq(j + 1)
            with m.If(j == top_k - 1):
                m.d.sync += j.eq(0)
                m.next = "PROBS"
    with m.State("PROBS"):
        m.d.comb += sm.o.ready.eq(1)
        with m.If(sm.o.valid):
            for s in range(len(weight)):
                with m.If(Mux(renorm, s, slot_expert[s]) == j):
                    m.d.sync += weight[s].eq(sm.o.payload.prob)
            m.d.sync += j.eq(j + 1)
            with m.If(sm.o.payload.last):
                m.d.sync += j.eq(0)
                m.next = then


def _entry_layout(max_tokens):
    return data.StructLayout({"token": range(max_tokens), "weight": unsigned(PROB_WIDTH),
                              "first": unsigned(1)})


class MoeUnit(wiring.Component):
    """The MoE unit (see the module's description).

    Parameters
    ----------
    hw : HwConfig
        ``cols`` (lanes of a beat, and the most experts), ``max_tokens`` (the
        most tokens, the depth of each expert's list) and ``max_in`` (the
        widest expert output) size the unit.

    Attributes
    ----------
    desc, logits, fc2 : In(stream.Signature)
    lists, y : Out(stream.Signature)
    error : Out(FAULT_WIDTH)
    busy : Out(1)
    """

    def __init__(self, hw: HwConfig):
        if not isinstance(hw, HwConfig):
            self._MustUse__silence = True  # never elaborated: no unused-elaboratable warning
            raise TypeError(f"Hardware config must be a HwConfig, not {hw!r}")
        self._hw = hw
        super().__init__({
            "desc": In(stream.Signature(MoeDescriptor.layout())),
            "logits": In(stream.Signature(output_layout(hw.cols))),
            "lists": Out(stream.Signature(list_layout(hw.cols, hw.max_tokens))),
            "fc2": In(stream.Signature(output_layout(hw.cols))),
            "y": Out(stream.Signature(output_layout(hw.cols))),
            "error": Out(FAULT_WIDTH),
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
        L, NT = hw.cols, hw.max_tokens
        max_ot = -(-hw.max_in // L)
        m = Module()

        d = Signal(MoeDescriptor.layout())
        entries = Signal(24)          # tokens * top_k
        m.submodules.softmax = sm = Softmax(max_row=L, score_width=8)
        m.d.comb += [sm.multiplier.eq(d.sm_mult), sm.shift.eq(d.sm_shift)]

        # Descriptor check -----------------------------------------------------
        p = self.desc.payload
        code = Signal(FAULT_WIDTH)
        with m.If(p.opcode != MoeDescriptor.OPCODE):
            m.d.comb += code.eq(Fault.OPCODE)
        with m.Elif((p.tokens == 0) | (p.tokens > NT) | (p.experts == 0) | (p.experts > L)
                    | (p.top_k == 0) | (p.top_k > p.experts) | (p.dim == 0) | (p.dim > hw.max_in)
                    | (p.out_tiles * L < p.dim) | (p.out_tiles * L >= p.dim + L)):
            m.d.comb += code.eq(Fault.SHAPE)
        with m.Elif((p.sm_mult == 0) | (p.sm_shift == 0) | (p.sm_shift > 47)
                    | (p.out_mult == 0) | (p.out_shift == 0) | (p.out_shift > 47)):
            m.d.comb += code.eq(Fault.CONSTANT)

        # Memories ---------------------------------------------------------------
        # Lists: region e (max_tokens entries) holds expert e's tokens in order.
        m.submodules.list_mem = list_mem = Memory(shape=_entry_layout(NT), depth=L * NT, init=[])
        lw = list_mem.write_port()
        lr = list_mem.read_port()                    # the lists stream
        cr = list_mem.read_port(transparent_for=())  # the combine
        # Accumulators: word (ot, t) at ot * max_tokens + t, L int32 lanes.
        m.submodules.acc_mem = acc_mem = Memory(shape=data.ArrayLayout(signed(32), L),
                                                depth=max_ot * NT, init=[])
        aw = acc_mem.write_port()
        ar = acc_mem.read_port(transparent_for=(aw,))   # combine: read after the last write
        er = acc_mem.read_port()                        # emit

        count = Array(Signal(range(NT + 1), name=f"count{e}") for e in range(L))

        def next_expert(start, name):
            """The first expert at or after ``start`` that some token selected (a
            priority encoder: experts no token selected cost no cycle)."""
            found = Signal(name=f"{name}_found")
            index = Signal(range(L), name=f"{name}_expert")
            for e in reversed(range(L)):  # the last assignment, the lowest expert, wins
                with m.If((count[e] != 0) & (start <= e)):
                    m.d.comb += [found.eq(1), index.eq(e)]
            return found, index

        # Gate: the current token's logits, the insertion list, the weights ------
        lg = [Signal(signed(8), name=f"lg{c}") for c in range(L)]
        m.submodules.topk = topk = TopK(L)
        top_v = [topk.top_v[s] for s in range(L)]
        top_i = [topk.top_i[s] for s in range(L)]
        weight = [Signal(PROB_WIDTH, name=f"w{s}") for s in range(L)]
        t = Signal(16)              # token
        j = Signal(range(L + 1))    # lane walked / probability received / slot written

        # Lane j's logit goes into the insertion list (intops.topk's order).
        v = lg[0]
        m.d.comb += [topk.value.eq(v), topk.index.eq(j)]

        def insert():
            m.d.comb += topk.insert.eq(1)
            m.d.sync += [lg[c].eq(lg[c + 1]) for c in range(L - 1)]

        # The smallest selected expert: the one whose fc2 output writes the
        # token's accumulators (the others add).
        least = top_i[0]
        for s in range(1, L):
            smaller = Signal(range(L), name=f"least{s}")
            m.d.comb += smaller.eq(Mux((d.top_k > s) & (top_i[s] < least), top_i[s], least))
            least = smaller
        slot_e = Signal(range(L))
        m.d.comb += slot_e.eq(Array(top_i)[j])

        lists_go = Signal()
        combine_go = Signal()
        lists_done = Signal()
        combine_done = Signal()
        emit_go = Signal()
        emit_done = Signal()

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.desc.ready.eq(1)
                with m.If(self.desc.valid):
                    m.d.sync += [d.eq(p), self.error.eq(code), t.eq(0),
                                 entries.eq(p.tokens * p.top_k)]
                    m.d.sync += [count[e].eq(0) for e in range(L)]
                    with m.If(code == Fault.NONE):
                        m.next = "TOKEN"
            with m.State("TOKEN"):
                m.d.comb += self.logits.ready.eq(1)
                with m.If(self.logits.valid):
                    m.d.sync += [lg[c].eq(self.logits.payload.data[c]) for c in range(L)]
                    m.d.sync += j.eq(0)
                    m.next = "WALK"
            with m.State("WALK"):
                # vmoe: every logit also goes into the softmax, in lane order.
                m.d.comb += [sm.i.valid.eq(~d.renorm), sm.i.payload.score.eq(v),
                             sm.i.payload.last.eq(j == d.experts - 1)]
                with m.If(d.renorm | sm.i.ready):
                    insert()
                    m.d.sync += j.eq(j + 1)
                    with m.If(j == d.experts - 1):
                        m.d.sync += j.eq(0)
                        with m.If(d.renorm):
                            m.next = "FEED"
                        with m.Else():
                            m.next = "PROBS"
            gate_weight_states(m, sm, selected=Array(top_v)[j], slot_expert=top_i,
                               renorm=d.renorm, top_k=d.top_k, weight=weight, j=j,
                               then="WRITE")
            with m.State("WRITE"):
                # Slot j's entry at the end of its expert's list.
                m.d.comb += [
                    lw.addr.eq(slot_e * NT + count[slot_e]),
                    lw.data.token.eq(t),
                    lw.data.weight.eq(Array(weight)[j]),
                    lw.data.first.eq(slot_e == least),
                    lw.en.eq(1),
                ]
                for e in range(L):
                    with m.If(slot_e == e):
                        m.d.sync += count[e].eq(count[e] + 1)
                m.d.sync += j.eq(j + 1)
                with m.If(j == d.top_k - 1):
                    m.d.sync += [j.eq(0), t.eq(t + 1)]
                    with m.If(t == d.tokens - 1):
                        m.d.comb += [lists_go.eq(1), combine_go.eq(1)]
                        m.next = "EXPERTS"
                    with m.Else():
                        m.next = "TOKEN"
            with m.State("EXPERTS"):
                with m.If(combine_done):
                    m.d.comb += emit_go.eq(1)
                    m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(emit_done & lists_done):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))

        # Lists: a header and the entries of each expert with a token ---------------
        l_run = Signal()
        l_e = Signal(range(L + 1))
        l_j = Signal(range(NT + 1))
        l_head = Signal()
        l_sent = Signal(24)
        a_valid = Signal()
        a_head = Signal()
        a_e = Signal(range(L))
        a_count = Signal(range(NT + 1))
        a_last = Signal()
        advance = Signal()
        l_found, l_cur = next_expert(l_e, "lists")
        l_count = Signal(range(NT + 1))
        m.d.comb += [advance.eq(~self.lists.valid | self.lists.ready), l_count.eq(count[l_cur]),
                     lr.addr.eq(l_cur * NT + l_j), lr.en.eq(advance)]
        with m.If(lists_go):
            m.d.sync += [l_run.eq(1), l_e.eq(0), l_j.eq(0), l_head.eq(1), l_sent.eq(0)]
        with m.If(advance):
            m.d.sync += a_valid.eq(0)
            with m.If(l_run & ~l_found):
                m.d.sync += l_run.eq(0)
            with m.Elif(l_run & l_head):
                m.d.sync += [a_valid.eq(1), a_head.eq(1), a_e.eq(l_cur),
                             a_count.eq(l_count), a_last.eq(0), l_head.eq(0)]
            with m.Elif(l_run):
                m.d.sync += [a_valid.eq(1), a_head.eq(0), a_last.eq(l_sent == entries - 1),
                             l_sent.eq(l_sent + 1), l_j.eq(l_j + 1)]
                with m.If(l_j == l_count - 1):
                    m.d.sync += [l_j.eq(0), l_e.eq(l_cur + 1), l_head.eq(1)]
        m.d.comb += [
            self.lists.valid.eq(a_valid),
            self.lists.payload.header.eq(a_head),
            self.lists.payload.expert.eq(a_e),
            self.lists.payload.count.eq(Mux(a_head, a_count, 0)),
            self.lists.payload.token.eq(Mux(a_head, 0, lr.data.token)),
            self.lists.payload.weight.eq(Mux(a_head, 0, lr.data.weight)),
            self.lists.payload.last.eq(a_last),
            lists_done.eq(~l_run & ~a_valid),
        ]

        # Combine: fc2 beats times their weight, into the accumulators ---------------
        c_run = Signal()
        c_e = Signal(range(L + 1))
        c_j = Signal(range(NT + 1))
        c_ot = Signal(16)
        s1 = Signal(data.StructLayout({"valid": 1, "ot": 16}))
        s1_y = Signal(data.ArrayLayout(signed(8), L))
        s2 = Signal(data.StructLayout({"valid": 1, "first": 1, "weight": PROB_WIDTH,
                                       "addr": range(max_ot * NT)}))
        s2_y = Signal(data.ArrayLayout(signed(8), L))
        take = Signal()
        c_found, c_cur = next_expert(c_e, "combine")
        c_count = Signal(range(NT + 1))
        m.d.comb += [
            c_count.eq(count[c_cur]),
            self.fc2.ready.eq(c_run & c_found),
            take.eq(self.fc2.valid & self.fc2.ready),
            cr.addr.eq(c_cur * NT + c_j),
        ]
        with m.If(combine_go):
            m.d.sync += [c_run.eq(1), c_e.eq(0), c_j.eq(0), c_ot.eq(0)]
        with m.If(take):
            m.d.sync += c_j.eq(c_j + 1)
            with m.If(c_j == c_count - 1):
                m.d.sync += c_j.eq(0)
                with m.If(c_ot == d.out_tiles - 1):
                    m.d.sync += [c_ot.eq(0), c_e.eq(c_cur + 1)]
                with m.Else():
                    m.d.sync += c_ot.eq(c_ot + 1)
        m.d.sync += [s1.valid.eq(take), s1.ot.eq(c_ot), s1_y.eq(self.fc2.payload.data)]
        m.d.comb += ar.addr.eq(s1.ot * NT + cr.data.token)
        m.d.sync += [s2.valid.eq(s1.valid), s2.first.eq(cr.data.first),
                     s2.weight.eq(cr.data.weight), s2.addr.eq(ar.addr), s2_y.eq(s1_y)]
        m.d.comb += [aw.addr.eq(s2.addr), aw.en.eq(s2.valid)]
        for c in range(L):
            product = intexpr.non_negative(s2.weight) * s2_y[c]
            m.d.comb += aw.data[c].eq(Mux(s2.first, 0, ar.data[c]) + product)
        with m.If(c_run & ~c_found):
            m.d.sync += c_run.eq(0)
        m.d.comb += combine_done.eq(~c_run & ~s1.valid & ~s2.valid)

        # Emit: requantize the accumulators, out-tile-major ---------------------------
        e_run = Signal()
        e_t = Signal(16)
        e_ot = Signal(16)
        b_valid = Signal()
        b_last = Signal()
        b_ot = Signal(16)
        e_adv = Signal()
        m.d.comb += [e_adv.eq(~self.y.valid | self.y.ready),
                     er.addr.eq(e_ot * NT + e_t), er.en.eq(e_adv)]
        with m.If(emit_go):
            m.d.sync += [e_run.eq(1), e_t.eq(0), e_ot.eq(0)]
        with m.If(e_adv):
            m.d.sync += [b_valid.eq(e_run), b_ot.eq(e_ot),
                         b_last.eq((e_ot == d.out_tiles - 1) & (e_t == d.tokens - 1))]
            with m.If(e_run):
                m.d.sync += e_t.eq(e_t + 1)
                with m.If(e_t == d.tokens - 1):
                    m.d.sync += [e_t.eq(0), e_ot.eq(e_ot + 1)]
                    with m.If(e_ot == d.out_tiles - 1):
                        m.d.sync += e_run.eq(0)
        m.d.comb += [self.y.valid.eq(b_valid), self.y.payload.last.eq(b_last)]
        for c in range(L):
            q = intexpr.requantize(er.data[c], d.out_mult, d.out_shift)
            m.d.comb += self.y.payload.data[c].eq(Mux(b_ot * L + c < d.dim, q, 0))
        m.d.comb += emit_done.eq(~e_run & ~b_valid)
        return m


# Host-side model and packing (what the benches send and check) ------------------
@dataclass
class MoeReference:
    """The golden model's MoE layer for one descriptor (``golden._Runner.moe``)."""

    topk: np.ndarray        # (T, k) experts, best first
    weights: np.ndarray     # (T, k) Q0.15
    tokens: dict            # expert -> ascending token indices (selected experts only)
    out: np.ndarray         # (T, dim) int8


def moe_reference(desc: MoeDescriptor, logits, expert_out) -> MoeReference:
    """The golden result of one operation, with ``intops`` as ``golden.py`` uses it.

    ``logits`` int8 ``(tokens, experts)``; ``expert_out[e]`` int8 ``(n_e, dim)``, the
    fc2 output of expert ``e`` for its tokens in ascending order.
    """
    logits = np.asarray(logits)
    top = intops.topk(logits, desc.top_k)
    if desc.renorm:
        weights = intops.softmax(np.take_along_axis(logits.astype(np.int64), top, axis=1),
                                 desc.sm_mult, desc.sm_shift)
    else:
        probs = intops.softmax(logits, desc.sm_mult, desc.sm_shift)
        weights = np.take_along_axis(probs, top, axis=1)
    selected = np.zeros((desc.tokens, desc.top_k, desc.dim), np.int8)
    tokens = {}
    for e in range(desc.experts):
        rows, slots = np.nonzero(top == e)
        if rows.size:
            tokens[e] = rows
            selected[rows, slots] = expert_out[e]
    acc = intops.weighted_sum(weights[:, None, :], selected)[:, 0]
    out = intops.requantize(acc, desc.out_mult, desc.out_shift)
    return MoeReference(top, weights, tokens, out)


def _lanes(row, lanes) -> int:
    padded = np.zeros(lanes, np.int8)
    padded[:len(row)] = row
    return int.from_bytes(padded.tobytes(), "little")


def moe_streams(desc: MoeDescriptor, logits, expert_out, order) -> dict:
    """Payload integers of the input streams: ``desc``, ``logits`` and ``fc2``
    (the experts of ``order``, each ``out_tiles * n_e`` beats, out-tile-major)."""
    C = desc.hw.cols
    fc2 = []
    for e in order:
        rows = np.asarray(expert_out[e], np.int8)
        for ot in range(desc.out_tiles):
            fc2 += [_lanes(row[ot * C:(ot + 1) * C], C) for row in rows]
    return {"desc": [desc.to_int()],
            "logits": [_lanes(row, C) for row in np.asarray(logits, np.int8)],
            "fc2": fc2}


def decode_lists(desc: MoeDescriptor, beats):
    """The ``lists`` beats as ``{expert: (tokens, weights)}`` in stream order; checks the
    headers' counts, the ``last`` flag and the beat count."""
    from moevit.sim.streams import unpack

    layout = list_layout(desc.hw.cols, desc.hw.max_tokens)
    lists, current, left = {}, None, 0
    beats = [unpack(layout, b) for b in beats]
    for k, b in enumerate(beats):
        if b["header"]:
            if left:
                raise ValueError(f"Beat {k}: header of expert {b['expert']} with {left} "
                                 f"entries of expert {current} missing")
            current, left = b["expert"], b["count"]
            if current in lists or left == 0:
                raise ValueError(f"Beat {k}: header of expert {current}, count {left}, "
                                 "repeated or empty")
            lists[current] = ([], [])
        else:
            if not left:
                raise ValueError(f"Beat {k}: an entry without a header")
            lists[current][0].append(b["token"])
            lists[current][1].append(b["weight"])
            left -= 1
        if b["last"] != (k == len(beats) - 1):
            raise ValueError(f"Beat {k}: last flag {b['last']}")
    if left:
        raise ValueError(f"{left} entries of expert {current} missing at the end")
    return {e: (np.array(tok, np.int64), np.array(w, np.int64)) for e, (tok, w) in lists.items()}
