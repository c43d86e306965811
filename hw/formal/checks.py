"""The formal checks of the accelerator: which design, which properties, how deep.

Each :class:`Check` builds a :class:`~moevit.hw.formal.harness.Harness` around
one unit at a small design point (:data:`FORMAL_HW`: the solver's cost grows
fast with widths and memories; the rules do not depend on the sizes) and
names its kind: ``prove`` (k-induction: a proof for every reachable state)
or ``bmc`` (no counterexample within ``depth`` cycles of reset: bounded, and
said so). ``fast`` checks run in ``make test``; all run in ``make formal``.

:data:`CHECKS` lists them, :func:`run_check` runs one. :data:`MUTANTS` are
deliberately broken designs whose checks must FAIL: the proof that the
checks can fail.
"""

import dataclasses
from dataclasses import dataclass
from typing import Callable

from amaranth.back import rtlil
from amaranth.hdl import (Assert, Assume, Cat, Elaboratable, Fragment, Module, Mux, Signal,
                          signed)
from amaranth.lib import wiring

from moevit.hw.config import HwConfig, products_width
from moevit.hw.formal.axi import axi4_read_master, axi4_write_master, axil_slave, burst_checks
from moevit.hw.formal.harness import Harness, flat_ports
from moevit.hw.formal.rules import beats, difference, handshake_rules, past
from moevit.hw.formal.sby import run_sby

__all__ = ["Check", "CHECKS", "MUTANTS", "FORMAL_HW", "run_check"]

#: The small hardware instance of the unit checks.
FORMAL_HW = HwConfig(name="formal", rows=1, cols=2, max_tokens=2, max_in=4,
                     acc_width=products_width(4), post_lanes=1, out_depth=3, heads_parallel=1,
                     score_lanes=2, kv_depth=4, max_head_dim=2, bus_width=32, max_outstanding=2)


@dataclass(frozen=True)
class Check:
    """One formal check.

    ``name`` (``unit.property``), the ``unit`` and design point it runs on,
    ``what`` it proves, ``kind`` and ``depth``, ``build`` (makes the harness),
    ``fast`` (part of ``make test``) and ``expect`` (``PASS``; ``FAIL`` for a mutant,
    with ``rule``: words of the ``Assert`` line that must be the one failing);
    ``timeout`` (seconds) and, for a mutant whose counterexample lies deep,
    ``skip`` (the first steps' assertions not checked); ``flatten`` (see
    :func:`~moevit.hw.formal.sby.run_sby`).
    """

    name: str
    unit: str
    what: str
    kind: str
    depth: int
    build: Callable[[], Elaboratable]
    fast: bool = True
    expect: str = "PASS"
    rule: str = ""
    timeout: int = 600
    skip: int = 0
    flatten: bool = False


def run_check(check: Check, workdir):
    """Run ``check`` in ``workdir``; returns the :class:`~moevit.hw.formal.sby.Outcome`."""
    harness = check.build()
    text = rtlil.convert(harness, name="top", ports=harness.ports())
    return run_sby(text, workdir, kind=check.kind, depth=check.depth, timeout=check.timeout,
                   skip=check.skip, flatten=check.flatten)


# Beat accounting ------------------------------------------------------------------
def _sum_of(m, channel, weight, name, width=12):
    """What the beats taken on ``channel`` weigh together (mod ``2**width``)."""
    total = Signal(width, name=f"sum_{name}")
    with m.If(channel.valid & channel.ready):
        m.d.sync += total.eq(total + weight)
    return total


def _pipeline(src, dst, capacity):
    """``dst`` gives one beat per beat ``src`` takes: at most ``capacity`` inside,
    none left after ``capacity`` cycles with no input and no back-pressure."""

    def prop(m, dut, live):
        i, o = getattr(dut, src), getattr(dut, dst)
        inside = difference(beats(m, i.valid, i.ready, src), beats(m, o.valid, o.ready, dst))
        quiet = Signal(range(capacity + 2), name="quiet")
        with m.If((i.valid & i.ready) | ~o.ready):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet <= capacity):
            m.d.sync += quiet.eq(quiet + 1)
        m.d.comb += [Assert(inside <= capacity, f"{dst}: a beat {src} never gave"),
                     Assert((quiet < capacity) | (inside == 0), f"{dst}: a beat lost")]
    return prop


def _balanced(sources, sink, *, most):
    """Beats out of ``sink`` never outnumber those taken on ``sources`` (summed; a
    path like ``("q", 0)`` names an array member), by at most ``most`` the other way,
    and they are equal whenever the unit is not ``busy``: none lost, none made up."""

    def member(dut, path):
        value = dut
        for step in path if isinstance(path, tuple) else (path,):
            value = value[step] if isinstance(step, int) else getattr(value, step)
        return value

    def prop(m, dut, live):
        width = 10
        given = Signal(width, name="beats_given")
        m.d.sync += given.eq(given + sum(
            (member(dut, s).valid & member(dut, s).ready) for s in sources))
        o = member(dut, sink)
        inside = difference(given, beats(m, o.valid, o.ready, "out", width=width))
        m.d.comb += [Assert(inside <= most, "a beat out that no beat in gave"),
                     Assert(dut.busy | (inside == 0), "idle with a beat owed (lost)")]
    return prop


# Single units -----------------------------------------------------------------------
def _repack(n_in, n_out):
    from moevit.hw.top.movers import Repack

    def prop(m, dut, live):
        m.d.comb += Assume(~dut.i.valid | ((dut.i.payload.bytes >= 1)
                                           & (dut.i.payload.bytes <= n_in)))
        # Every byte taken is held or was given, exactly once: busy says which.
        held = difference(_sum_of(m, dut.i, dut.i.payload.bytes, "i"),
                          _sum_of(m, dut.o, dut.o.payload.bytes, "o"))
        lasts = difference(beats(m, dut.i.valid & dut.i.payload.last, dut.i.ready, "i_last"),
                           beats(m, dut.o.valid & dut.o.payload.last, dut.o.ready, "o_last"))
        # What the induction needs: the counts are the bytes and the last held.
        m.d.comb += [Assert(held == _driven(module, "level"), "held bytes miscounted"),
                     Assert(lasts == _driven(module, "ending"), "held last miscounted")]
        m.d.comb += [Assert(held <= n_in + n_out - 1, "more bytes held than there is room"),
                     Assert(dut.busy == (held != 0), "a byte lost or made up"),
                     Assert(lasts <= 1, "a last lost or made up"),
                     Assert((lasts == 0) | (held != 0), "a last given before its bytes")]
    dut = Repack(n_in, n_out)
    module = dut.elaborate(None)
    return Harness(dut, [prop], elaborated=module)


def _gelu():
    from moevit.hw.units.gelu import LATENCY, Gelu
    return Harness(Gelu(lanes=1), [_pipeline("i", "o", LATENCY)],
                   hold=["b", "c", "mult", "shift"])


def _softmax():
    from moevit.hw.units.softmax import Softmax
    longest = 2

    def rows(m, dut, live):
        # Rows of at most max_row scores (the unit's contract).
        at = Signal(range(longest), name="row_at")
        with m.If(dut.i.valid & dut.i.ready):
            m.d.sync += at.eq(Mux(dut.i.payload.last, 0, at + 1))
        m.d.comb += Assume(~dut.i.valid | dut.i.payload.last | (at < longest - 1))

    return Harness(Softmax(max_row=longest, score_width=8),
                   [rows, _balanced(["i"], "o", most=8)], hold=["multiplier", "shift"])


def _layernorm(lanes=1):
    from moevit.hw.units.layernorm import LayerNorm
    # With lanes, 8 banks (the same RTL as the default's 32, fewer states) of two beats:
    # up to 16 beats inside.
    return Harness(LayerNorm(max_dim=2 * lanes, lanes=lanes, banks=None if lanes == 1 else 8),
                   [_balanced(["i"], "o", most=8 if lanes == 1 else 16)])


def _attention(row_lanes=1, **changes):
    from moevit.hw.units.attention import Attention
    hw = FORMAL_HW.replace(row_lanes=row_lanes, **changes)
    return Harness(Attention(hw), [_balanced([("q", 0)], ("o", 0), most=16 * row_lanes)])


def _moe():
    from moevit.hw.units.moe import MoeUnit
    return Harness(MoeUnit(FORMAL_HW))


# The linear kernel: streams, beats per descriptor, the accumulators --------------
def _driven(module, name):
    """The signal ``name`` that ``module`` (an elaborated Amaranth ``Module``) drives.
    Reading a unit's internal register, here its accumulators, needs its module;
    Amaranth keeps what each module drives in ``_driving``."""
    found = [s for s in module._driving if s.name == name]
    if len(found) != 1:
        raise LookupError(f"{name!r} is driven {len(found)} times in the module, not once")
    return found[0]


#: The linear kernel's instance: two products a sum, so a tile's whole
#: accumulation lies within the check's depth.
LINEAR_HW = dataclasses.replace(FORMAL_HW, max_in=2, acc_width=products_width(2))


def _linear(hw=LINEAR_HW):
    from moevit.hw.units.linear import LinearKernel

    kernel = LinearKernel(hw)
    module = kernel.elaborate(None)

    def outputs(m, dut, live):
        # y: out_tiles * tokens beats per descriptor taken without a fault.
        owed = Signal(24, name="y_owed")
        took, shape = Signal(name="took_desc"), Signal(32, name="desc_beats")
        m.d.sync += took.eq(dut.desc.valid & dut.desc.ready)
        with m.If(dut.desc.valid & dut.desc.ready):
            m.d.sync += shape.eq(dut.desc.payload.out_tiles * dut.desc.payload.tokens)
        with m.If(took & (dut.error == 0)):
            m.d.sync += owed.eq(owed + shape)
        given = beats(m, dut.y.valid, dut.y.ready, "y", width=24)
        ops = beats(m, took & (dut.error == 0), 1, "ops")
        lasts = beats(m, dut.y.valid & dut.y.payload.last, dut.y.ready, "y_last")
        m.d.comb += [Assert(difference(owed, given) < (1 << 23), "y: more beats than owed"),
                     Assert(dut.busy | took | (owed == given), "y: idle with beats owed"),
                     Assert(dut.busy | took | (ops == lasts), "y: a last lost or made up")]

    def accumulators(m, dut, live):
        # Each accumulator against the same sum in a register 8 bits wider: equal,
        # so no sum of products a descriptor can ask for wraps.
        f3 = _driven(module, "f3")
        valid, first = f3[0], f3[1]
        for r in range(hw.rows):
            for c in range(hw.cols):
                acc, prod = _driven(module, f"acc{r}_{c}"), _driven(module, f"m{r}_{c}")
                wide = Signal(signed(hw.acc_width + 8), name=f"wide{r}_{c}")
                with m.If(valid):
                    m.d.sync += wide.eq(Mux(first, 0, wide) + prod)
                m.d.comb += Assert(acc == wide, f"acc{r}_{c} overflowed")

    return Harness(kernel, [outputs, accumulators], elaborated=module)


def _short_accumulator():
    """The linear kernel with an accumulator one bit short of ``max_in`` products
    (a configuration HwConfig refuses, built behind its back)."""
    short = dataclasses.replace(LINEAR_HW)
    object.__setattr__(short, "acc_width", LINEAR_HW.acc_width - 1)
    return _linear(short)


# AXI4 masters -------------------------------------------------------------------
def _requests_covered(nbytes, prefix):
    """Each good request is read (written) once, in order, inside itself: bursts from
    its address on, back to back, ``ceil(length / B)`` beats in all, and the next
    request taken only after its last burst."""

    def prop(m, dut, live):
        from moevit.hw.top.movers import ADDR_WIDTH
        s = (nbytes - 1).bit_length()
        p = dut.req.payload
        good = Signal(name="good_request")
        end = Signal(ADDR_WIDTH + 1)
        m.d.comb += [end.eq(p.addr + p.length - 1),
                     good.eq((p.length != 0) & ~end[ADDR_WIDTH] & ((p.addr[:s] == 0) if s else 1))]
        axi = dut.axi
        addr, length = getattr(axi, f"{prefix}addr"), getattr(axi, f"{prefix}len")
        issued = getattr(axi, f"{prefix}valid") & getattr(axi, f"{prefix}ready")
        taken = dut.req.valid & dut.req.ready
        left = Signal(len(p.length) - s + 1, name="beats_left")
        at = Signal(ADDR_WIDTH, name="next_addr")
        after = Signal.like(left)
        m.d.comb += after.eq(left - (length + 1))
        with m.If(getattr(axi, f"{prefix}valid")):
            m.d.comb += [Assert(length + 1 <= left, f"{prefix}: a burst past its request"),
                         Assert(addr == at, f"{prefix}: a burst off its request's next address")]
        with m.If(issued):
            m.d.sync += [left.eq(after), at.eq(addr + ((length + 1) << s))]
        with m.If(taken):
            m.d.comb += Assert(Mux(issued, after, left) == 0,
                               f"{prefix}: a request taken before the last one was issued")
            with m.If(good):
                m.d.sync += [left.eq((p.length + nbytes - 1) >> s), at.eq(p.addr)]
    return prop


class _Patched(Elaboratable):
    """Elaborates ``dut`` with names of the ``hw.top`` modules set otherwise:
    ``patches`` maps ``(module name, name)`` to the value while it elaborates."""

    def __init__(self, dut, patches):
        self.dut = dut
        self._patches = patches

    def elaborate(self, platform):
        import importlib
        saved = {}
        for (module, name), value in self._patches.items():
            module = importlib.import_module(f"moevit.hw.top.{module}")
            saved[module, name] = getattr(module, name)
            setattr(module, name, value)
        try:
            return Fragment.get(self.dut, platform)
        finally:
            for (module, name), value in saved.items():
                setattr(module, name, value)


def _big_pages(dut):
    """``dut`` with the movers' page size doubled: its bursts may cross 4 KiB (a mutant)."""
    from moevit.hw.top.movers import PAGE_BYTES
    return _Patched(dut, {("movers", "PAGE_BYTES"): 2 * PAGE_BYTES})


MOVER = dict(data_width=32, max_outstanding=2, length_width=13)


def _read_mover(*, requests=False, broken=False):
    """The read mover as an AXI4 master; with ``requests``, also each request's
    coverage (a separate check: the address bookkeeping is the solver's hard part)."""
    from moevit.hw.top.movers import ReadMover

    dut = ReadMover(MOVER["data_width"], max_outstanding=MOVER["max_outstanding"],
                    length_width=MOVER["length_width"])
    nbytes = MOVER["data_width"] // 8

    def master(m, dut, live):
        axi4_read_master(m, dut.axi, live, nbytes=nbytes,
                         max_outstanding=MOVER["max_outstanding"])
        m.d.comb += Assert(~dut.data.valid | dut.axi.rvalid, "data: a beat without an R beat")

    props = [master] + ([_requests_covered(nbytes, "ar")] if requests else [])
    return Harness(dut, props, elaborated=_big_pages(dut) if broken else None)


def _write_mover(*, requests=False):
    from moevit.hw.top.movers import WriteMover

    dut = WriteMover(MOVER["data_width"], max_outstanding=MOVER["max_outstanding"],
                     length_width=MOVER["length_width"])
    nbytes = MOVER["data_width"] // 8

    def master(m, dut, live):
        axi4_write_master(m, dut.axi, live, nbytes=nbytes,
                          max_outstanding=MOVER["max_outstanding"])
        m.d.comb += Assert(~dut.axi.wvalid | dut.data.valid, "w: a beat without a data beat")

    props = [master] + ([_requests_covered(nbytes, "aw")] if requests else [])
    return Harness(dut, props)


# The interconnect ------------------------------------------------------------------
def _read_arbiter():
    from moevit.hw.top.interconnect import ReadArbiter
    ports, most = 2, 2

    def rules(m, dut, live):
        for k, port in enumerate(dut.ports):
            # Each port is a master keeping the rules; it gets only its own beats.
            handshake_rules(m, port.arvalid, port.arready, [port.araddr, port.arlen, port.arsize,
                                                           port.arburst],
                            assume=True, name=f"port{k}_ar", live=live)
            with m.If(port.arvalid):
                burst_checks(m, port.araddr, port.arlen, port.arsize, port.arburst, 4,
                             f"port{k}_ar", check=Assume)
            handshake_rules(m, port.rvalid, port.rready, [port.rdata, port.rresp, port.rlast],
                            assume=False, name=f"port{k}_r", live=live)
            asked = beats(m, port.arvalid, port.arready, f"port{k}_ar")
            answered = beats(m, port.rvalid & port.rlast, port.rready, f"port{k}_rlast")
            m.d.comb += Assert(difference(asked, answered) <= most,
                               f"port{k}: a burst's beats to a port that did not ask")
        axi4_read_master(m, dut.axi, live, nbytes=4, max_outstanding=most)

    # Unbuffered: the beat FIFOs of the buffered arbiter (a 4 KiB page each) are
    # beyond what the solver takes in minutes; the grant and the routing are the same.
    return Harness(ReadArbiter(32, ports, most, buffer_beats=0), [rules], streams=False)


def _read_striper(buffer_beats=0):
    """The read striper between a master that keeps the rules and two memories that do,
    each burst tagged with its number (the master's bursts go to successive pages: address
    bits 12.. count them) and each memory answering a burst's beats with its tag (and the
    tag's next two bits as the response): the master gets each beat in issue order, tag,
    response and ``rlast`` at the right place."""
    from amaranth.lib.fifo import SyncFIFO

    from moevit.hw.formal.axi import _bursts_in_flight
    from moevit.hw.top.interconnect import ReadStriper
    ports, most, tag = 2, 2, 8

    def rules(m, dut, live):
        axi = dut.axi
        # The master: AXI's rules, its n-th burst on page n.
        handshake_rules(m, axi.arvalid, axi.arready, [axi.arid, axi.araddr, axi.arlen,
                                                      axi.arsize, axi.arburst], assume=True,
                        name="master_ar", live=live)
        with m.If(axi.arvalid):
            burst_checks(m, axi.araddr, axi.arlen, axi.arsize, axi.arburst, 4, "master_ar",
                         check=Assume)
        asked = beats(m, axi.arvalid, axi.arready, "master_ar")
        m.d.comb += Assume(~axi.arvalid | (axi.araddr[12:12 + tag] == asked[:tag]))
        # What the master gets: R's rules, beats only for its bursts, in issue order.
        handshake_rules(m, axi.rvalid, axi.rready, [axi.rdata, axi.rresp, axi.rlast],
                        assume=False, name="master_r", live=live)
        lengths, beat = _bursts_in_flight(m, "master_r", most + 1,
                                          accepted=axi.arvalid & axi.arready,
                                          length=axi.arlen, taken=axi.rvalid & axi.rready,
                                          last=axi.rlast)
        done = beats(m, axi.rvalid & axi.rlast, axi.rready, "master_rlast")
        with m.If(axi.rvalid):
            m.d.comb += [
                Assert(lengths.r_rdy, "master: a beat for no burst in flight"),
                Assert(axi.rlast == (beat == lengths.r_data),
                       "master: rlast not on its burst's last beat"),
                Assert(axi.rdata[:tag] == done[:tag], "master: a beat of another burst"),
                Assert(axi.rresp == axi.rdata[tag:tag + 2], "master: a beat's response lost"),
            ]
        m.d.comb += Assert(difference(asked, done) <= most,
                           f"master: more than {most} bursts in flight")
        for k, port in enumerate(dut.ports):
            # Each port: an AXI4 read master towards a memory that tags its beats.
            axi4_read_master(m, port, live, nbytes=4, max_outstanding=most, name=f"port{k}")
            tags = m.submodules[f"port{k}_tags"] = SyncFIFO(width=tag, depth=most + 1)
            m.d.comb += [tags.w_en.eq(port.arvalid & port.arready),
                         tags.w_data.eq(port.araddr[12:12 + tag]),
                         tags.r_en.eq(port.rvalid & port.rready & port.rlast)]
            with m.If(port.rvalid):
                m.d.comb += [Assume(port.rdata[:tag] == tags.r_data),
                             Assume(port.rresp == port.rdata[tag:tag + 2])]
            with m.If(port.arvalid):
                m.d.comb += Assert(port.araddr[12] == k, f"port{k}: not its turn's burst")

    return Harness(ReadStriper(32, ports, most, buffer_beats=buffer_beats), [rules],
                   streams=False)


def _write_arbiter():
    from moevit.hw.top.interconnect import WriteArbiter
    ports, most = 2, 2

    def rules(m, dut, live):
        for k, port in enumerate(dut.ports):
            handshake_rules(m, port.awvalid, port.awready, [port.awaddr, port.awlen],
                            assume=True, name=f"port{k}_aw", live=live)
            handshake_rules(m, port.wvalid, port.wready, [port.wdata, port.wstrb, port.wlast],
                            assume=True, name=f"port{k}_w", live=live)
            handshake_rules(m, port.bvalid, port.bready, [port.bresp], assume=False,
                            name=f"port{k}_b", live=live)
            asked = beats(m, port.awvalid, port.awready, f"port{k}_aw")
            answered = beats(m, port.bvalid, port.bready, f"port{k}_b")
            m.d.comb += Assert(difference(asked, answered) <= most,
                               f"port{k}: a B to a port that did not write")
        axi = dut.axi
        for channel, payload in (("aw", [axi.awaddr, axi.awlen]),
                                 ("w", [axi.wdata, axi.wstrb, axi.wlast])):
            handshake_rules(m, getattr(axi, f"{channel}valid"), getattr(axi, f"{channel}ready"),
                            payload, assume=False, name=f"axi_{channel}", live=live)
        handshake_rules(m, axi.bvalid, axi.bready, [axi.bresp], assume=True, name="axi_b",
                        live=live)
        aw = beats(m, axi.awvalid, axi.awready, "axi_aw")
        b = beats(m, axi.bvalid, axi.bready, "axi_b")
        m.d.comb += [Assume(~axi.bvalid | (difference(aw, b) != 0)),
                     Assert(difference(aw, b) <= most, f"more than {most} bursts in flight")]

    return Harness(WriteArbiter(32, ports, most), [rules], streams=False)


def _relocator(kind, *, writes=False, narrow=False, blind=False):
    """The Relocator's contract for requests whose address starts in region ``kind`` (one
    of :data:`~moevit.hw.top.interconnect.REGION_KINDS`, or ``"beyond"``: at or past
    ``output_end``), the bounds in order (the sequencer refuses a header whose are not)
    and ``bounds``, ``bases``, ``image`` held, no request in the first cycle (a change
    takes effect two cycles later, its contract).

    A request taken is dropped with ``error`` the next cycle when it starts beyond the
    output or runs past its region's end; else it is passed once, the next cycle, at
    the same offset into the host's slot of its region (``bases.<kind>``, plus ``image``
    slots of the region's size for input and output), wholly inside that slot (mod 2**64).

    Case-split by kind: the relocator keeps nothing of one request for the next but its
    output register, so each request's verdict depends on it and the held inputs alone,
    and the five checks together cover every request. ``writes``: the write channel's
    relocator, which drops with ``error`` every request that starts in a read-only kind
    (the weights, the input) as it drops one beyond the output. Mutants: ``narrow``, its
    sums 32 bits wide; ``blind``, the write contract on a relocator built without it."""
    from moevit.hw.top.interconnect import READ_ONLY_KINDS, REGION_KINDS, Relocator

    def prop(m, dut, live):
        b, p = dut.bounds, dut.i.payload
        starts = [0, b.scratch_at, b.input_at, b.output_at]
        ends = [b.scratch_at, b.input_at, b.output_at, b.output_end]
        m.d.comb += Assume((b.scratch_at <= b.input_at) & (b.input_at <= b.output_at)
                           & (b.output_at <= b.output_end))
        m.d.comb += Assume(live | ~dut.i.valid)
        if kind == "beyond":
            m.d.comb += Assume(~dut.i.valid | (p.addr >= b.output_end))
        else:
            k = REGION_KINDS.index(kind)
            m.d.comb += Assume(~dut.i.valid | ((p.addr >= starts[k]) & (p.addr < ends[k])))

        # The last request taken, and whether it was taken in the previous cycle.
        taken = dut.i.valid & dut.i.ready
        addr, length = Signal.like(p.addr, name="req_addr"), Signal.like(p.length, name="req_len")
        just = Signal(name="just_taken")
        m.d.sync += just.eq(taken)
        with m.If(taken):
            m.d.sync += [addr.eq(p.addr), length.eq(p.length)]
        took = beats(m, dut.i.valid, dut.i.ready, "taken")
        passed = beats(m, dut.o.valid, dut.o.ready, "passed")
        dropped = beats(m, dut.error, 1, "dropped")

        if kind == "beyond" or (writes and kind in READ_ONLY_KINDS):
            where = "beyond the output" if kind == "beyond" else f"writing the {kind}"
            with m.If(just):
                m.d.comb += [Assert(dut.error, f"a request {where} not refused"),
                             Assert(~dut.o.valid, f"a request {where} passed")]
        else:
            # The host's slot and the region's start as the relocation sees them: from the
            # inputs of the cycle before the request is taken (it registers its sums off
            # them), kept with the request. Flattened, the product image * size is then
            # the relocation's own term, not a second multiplier the solver must equate.
            early_slot = Signal(64, name="early_slot")
            early_start = Signal(32, name="early_start")
            m.d.sync += [early_start.eq(starts[k]),
                         early_slot.eq(dut.bases[kind] + (dut.image * (ends[k] - starts[k])
                                                          if kind in ("input", "output") else 0))]
            slot, start, end = (Signal(64, name="req_slot"), Signal(32, name="req_start"),
                                Signal(32, name="req_end"))
            with m.If(taken):
                m.d.sync += [slot.eq(early_slot), start.eq(early_start), end.eq(ends[k])]
            offset = addr - start
            fits = addr + length <= end
            with m.If(just):
                m.d.comb += [Assert(dut.error == ~fits, "error is not: the request runs past "
                                                        "its region"),
                             Assert(dut.o.valid == fits, "a request passed that runs past its "
                                                         "region, or one dropped that fits")]
            moved = (dut.o.payload.addr - slot)[:len(slot)]     # its offset in the slot
            with m.If(dut.o.valid):
                m.d.comb += [Assert(fits, "a request passed outside its region"),
                             Assert(moved == offset, "a request passed off its slot offset"),
                             Assert(dut.o.payload.length == length, "a request's length changed")]
        # Each request taken is passed or refused, once: what was taken and neither passed
        # nor counted refused waits in the register, or is refused this cycle.
        m.d.comb += [Assert(~dut.error | just, "an error without a request"),
                     Assert((took - passed - dropped)[:len(took)] == dut.o.valid + dut.error,
                            "a request lost or passed twice")]

    dut = Relocator(writes=writes and not blind)
    return Harness(dut, [prop], hold=[name for name in flat_ports(dut)
                                      if name.startswith(("bounds", "bases", "image"))],
                   elaborated=_Patched(dut, {("interconnect", "ADDR_WIDTH"): 32}) if narrow
                   else None)


def _relocator_what(kind, writes=False):
    from moevit.hw.top.interconnect import READ_ONLY_KINDS

    if kind == "beyond":
        return "stream rules; requests starting beyond the output: each dropped with error"
    if writes and kind in READ_ONLY_KINDS:
        return (f"stream rules; write requests starting in the {kind} region (read-only to the "
                f"top): each dropped with error")
    slot = "image N's slot" if kind in ("input", "output") else "host buffer"
    return (f"stream rules; requests starting in the {kind} region: each passed once, at its "
            f"offset into the {kind}'s {slot}, wholly inside it, or dropped with error when "
            f"it runs past the region")


# The control port -----------------------------------------------------------------
def _control():
    from moevit.hw.top.control import Control

    def slave(m, dut, live):
        bus = dut.s_axi_control
        owed_aw, owed_w = axil_slave(m, bus, live)
        # This bridge's own bookkeeping, seen from its ports (what makes the
        # induction close): a request is held, ready low, until its write is
        # done, and the write's answer then waits in B.
        m.d.comb += [Assert(owed_aw == (~bus.awready + bus.bvalid), "AW held and owed disagree"),
                     Assert(owed_w == (~bus.wready + bus.bvalid), "W held and owed disagree")]

    return Harness(Control(), [slave])


# The sequencer: no deadlock --------------------------------------------------------
#: Cycles the sequencer's partners take at most: to take a request or an issued
#: instruction, to send an owed beat, to finish an instruction, to drain on a halt.
RESPONSE = 2
#: Cycles the sequencer may run without progress (a request, a beat, an issue, a
#: finished instruction, the top's abort or done): its own steps between two handshakes.
PROGRESS_BOUND = RESPONSE + 4
#: The header the sequencer's check reads: its first 15 words, the fields the sequencer
#: looks at (magic to onchip_end). The format's other 17 (the body's CRC, reserved words,
#: the header's CRC; the host checks the CRCs) it reads and ignores, so they only put
#: the body 17 cycles later: beyond a depth the solver finishes in minutes.
FORMAL_HEADER_WORDS = 15
#: The sequencer check's depth: a whole run of a short program from reset, the header,
#: the checks, and a body of several instructions (one image or two).
SEQUENCER_DEPTH = 34


class _BodyEndIgnored(wiring.Component):
    """The sequencer before the fix of its truncated body (a mutant): the body's ``last``
    is hidden from it, so it waits for the words of an instruction the body does not
    hold, and reads words past the last instruction as the next image's. The header's
    ``last`` still reaches it."""

    def __init__(self, hw):
        from moevit.hw.top.sequencer import Sequencer
        self._seq = Sequencer(hw)
        super().__init__(dict(self._seq.signature.members))

    def elaborate(self, platform):
        m = Module()
        m.submodules.seq = seq = self._seq
        for name, member in self.signature.members.items():
            if name == "prog":
                continue
            if member.is_port:
                ours, theirs = getattr(self, name), getattr(seq, name)
                m.d.comb += (theirs.eq(ours) if member.flow == wiring.In else ours.eq(theirs))
            else:
                wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(seq, name))
        wiring.connect(m, wiring.flipped(self.prog.req), seq.prog.req)
        body = Signal(name="body_request")
        with m.If(seq.prog.req.valid & seq.prog.req.ready):
            m.d.sync += body.eq(seq.prog.req.payload.addr != self.program)
        m.d.comb += [seq.prog.data.valid.eq(self.prog.data.valid),
                     seq.prog.data.payload.eq(self.prog.data.payload),
                     seq.prog.data.payload.last.eq(self.prog.data.payload.last & ~body),
                     self.prog.data.ready.eq(seq.prog.data.ready)]
        return m


def _sequencer(*, broken=False):
    from moevit.hw.program.program import HEADER_FIELDS, MAGIC, VERSION, hw_hash
    from moevit.hw.top.sequencer import Sequencer

    owed_words = {}
    aborts = []          # high in the first cycle of the top's abort

    def partners(m, dut, live):
        """The memory and the top as they are promised to behave, within RESPONSE cycles."""
        def within(name, waiting):
            count = Signal(range(RESPONSE + 1), name=f"wait_{name}")
            m.d.sync += count.eq(Mux(waiting, count + 1, 0))
            m.d.comb += Assume(~waiting | (count < RESPONSE))

        owing = []
        for name, port in (("prog", dut.prog), ("entry", dut.entry)):
            within(f"{name}_req", port.req.valid & ~port.req.ready)
            # Each request's beats (whole words: lengths are multiples of 4 here),
            # last on the final one, none without a request.
            owed = Signal(36, name=f"owed_{name}")
            took = port.req.valid & port.req.ready
            sent = port.data.valid & port.data.ready
            m.d.sync += owed.eq(owed + Mux(took, (port.req.payload.length + 3) >> 2, 0) - sent)
            m.d.comb += [Assume(~port.data.valid | (owed != 0)),
                         Assume(port.data.payload.last == (owed == 1)),
                         Assume(port.data.payload.bytes == 4)]
            within(f"{name}_data", (owed != 0) & ~port.data.valid)
            owing.append(owed != 0)
            owed_words[name] = owed
        within("issue", dut.issue.valid & ~dut.issue.ready)
        # The issue stream's rules, but for the cycle after an abort: the top stops the
        # run (an error elsewhere) and the sequencer withdraws the instruction it offered,
        # by design (the engines are held in reset).
        aborted = past(m, dut.abort != 0, "abort")
        # The top's abort as the top drives it: its error flags stay up until the next start.
        m.d.comb += Assume(~aborted | (dut.abort != 0) | past(m, dut.start, "start"))
        aborts.append((dut.abort != 0) & ~aborted)
        handshake_rules(m, dut.issue.valid, dut.issue.ready, dut.issue.payload, assume=False,
                        name="issue", live=live & ~aborted)
        running = Signal(name="instruction_running")
        with m.If(dut.issue.valid & dut.issue.ready):
            m.d.sync += running.eq(1)
        with m.If(dut.finished):
            m.d.sync += running.eq(0)
        m.d.comb += Assume(~dut.finished | running)
        within("finish", running & ~dut.finished)
        # The top is idle only when no beat is owed (its movers are busy until then).
        m.d.comb += Assume(~dut.idle | ~(owing[0] | owing[1]))
        within("idle", dut.halting & ~dut.idle & ~owing[0] & ~owing[1])

    def good_header(m, dut, live):
        """The header's own checks pass (a header that fails them stops the run at once,
        in CHECK): the check is about the body. Its counts, tasks and bounds stay free."""
        digest = hw_hash(FORMAL_HW)
        good = {"magic": MAGIC, "version": VERSION, "header_words": FORMAL_HEADER_WORDS,
                "hw_hash_lo": digest & 0xFFFFFFFF, "hw_hash_hi": digest >> 32,
                "bus_bits": FORMAL_HW.bus_width}
        word = Signal(range(FORMAL_HEADER_WORDS + 1), name="header_word")
        header = Signal(name="header_request")
        prog = dut.prog
        with m.If(prog.req.valid & prog.req.ready):
            m.d.sync += [word.eq(0), header.eq(prog.req.payload.addr == dut.program)]
        with m.Elif(prog.data.valid & prog.data.ready & (word < FORMAL_HEADER_WORDS)):
            m.d.sync += word.eq(word + 1)
        for name, value in good.items():
            with m.If(header & prog.data.valid & (word == HEADER_FIELDS.index(name))):
                m.d.comb += Assume(prog.data.payload.data == value)

    def progress(m, dut, live):
        moved = Signal(name="progress")
        m.d.comb += moved.eq(
            (dut.prog.req.valid & dut.prog.req.ready) | (dut.prog.data.valid & dut.prog.data.ready)
            | (dut.entry.req.valid & dut.entry.req.ready)
            | (dut.entry.data.valid & dut.entry.data.ready)
            | (dut.issue.valid & dut.issue.ready) | dut.finished | dut.done | aborts[0])
        quiet = Signal(range(PROGRESS_BOUND + 2), name="quiet")
        with m.If(~dut.running | moved):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet <= PROGRESS_BOUND):
            m.d.sync += quiet.eq(quiet + 1)
        m.d.comb += Assert(quiet <= PROGRESS_BOUND, "running without progress (deadlock)")

    def whole_body(m, dut, live):
        # The program's words are read to the end of each request, and no further: a new
        # request, or the run's end, finds none still owed.
        owed = owed_words["prog"]
        m.d.comb += Assert(~(dut.prog.req.valid | dut.done) | (owed == 0),
                           "a request or done with program words unread")

    # The mutant is checked for progress only: its truncated body must show as the hang.
    dut = _BodyEndIgnored(FORMAL_HW) if broken else Sequencer(FORMAL_HW)
    short_header = _Patched(dut, {("sequencer", "HEADER_WORDS"): FORMAL_HEADER_WORDS,
                                  ("sequencer", "HEADER_FIELDS"):
                                      HEADER_FIELDS[:FORMAL_HEADER_WORDS]})
    return Harness(dut, [partners, good_header, progress] + ([] if broken else [whole_body]),
                   hold=["program", "weights", "task", "images"], ruled_apart=["issue"],
                   elaborated=short_header)


# The engines of the top: their streams, and requests inside their descriptor's buffers
def _mover_answers(m, port, nbytes, name):
    """Assume the read mover's side of a read channel: per request ``ceil(length / B)``
    beats, none without a request, ``last`` on the final one, ``bytes`` those of the
    beat (full but for a ragged last)."""
    owed = Signal(24, name=f"owed_{name}")
    rest = Signal(8, name=f"rest_{name}")        # bytes of the last request's last beat
    took = port.req.valid & port.req.ready
    sent = port.data.valid & port.data.ready
    m.d.sync += owed.eq(owed + Mux(took, (port.req.payload.length + nbytes - 1) // nbytes, 0)
                        - sent)
    with m.If(took):
        m.d.sync += rest.eq(port.req.payload.length - (port.req.payload.length - 1)
                            // nbytes * nbytes)
    m.d.comb += [Assume(~port.data.valid | (owed != 0)),
                 Assume(port.data.payload.last == (owed == 1)),
                 Assume(port.data.payload.bytes == Mux(owed == 1, rest, nbytes))]


def _engine(make, buffers, limits, extra=(), hw=FORMAL_HW, patches=None, short=False):
    """An engine of the top on :data:`FORMAL_HW`: the stream rules of every channel
    (the harness) and every request inside a buffer its descriptor names.

    ``buffers(d)``: ``{channel: [(first byte, end), ...]}`` for the descriptor ``d``
    the engine took (``"rd0"``, ``"wr"``...); ``limits(d)``: what is assumed of a
    descriptor (small sizes keep the solver's products small); ``patches``: names of
    the ``hw.top`` modules set otherwise while it elaborates (a mutant, :class:`_Patched`);
    ``short``: every buffer one byte shorter than the descriptor's (a mutant: a request
    that reaches a buffer's last byte fails, which shows the rule binds)."""
    dut = make(hw)
    nbytes = hw.bus_width // 8

    def prop(m, dut, live):
        d = Signal.like(dut.desc.payload, name="desc_taken")
        with m.If(dut.desc.valid & dut.desc.ready):
            m.d.sync += d.eq(dut.desc.payload)
        with m.If(dut.desc.valid):
            m.d.comb += Assume(limits(dut.desc.payload))
        for k, port in enumerate(dut.rd):
            _mover_answers(m, port, nbytes, f"rd{k}")
        # The write mover takes a data beat only for a request it took (the copy engine,
        # whose bytes pass through, relies on it: it ends on the read's last beat).
        wr = dut.wr
        owed = Signal(24, name="owed_wr")
        m.d.sync += owed.eq(owed + Mux(wr.req.valid & wr.req.ready,
                                       (wr.req.payload.length + nbytes - 1) // nbytes, 0)
                            - (wr.data.valid & wr.data.ready))
        m.d.comb += Assume(~wr.data.ready | (owed != 0))
        for channel, spans in buffers(d).items():
            req = dut.wr.req if channel == "wr" else dut.rd[int(channel[2:])].req
            addr, length = req.payload.addr, req.payload.length
            inside = [(addr >= first) & (addr + length <= end - short) for first, end in spans]
            with m.If(req.valid):
                m.d.comb += Assert(Cat(*inside).any(),
                                   f"{channel}: a request outside its descriptor's buffers")
    return Harness(dut, [prop, *extra], elaborated=_Patched(dut, patches) if patches else None)


def _copy_engine():
    from moevit.hw.top.copy import CopyEngine
    return _engine(CopyEngine,
                   lambda d: {"rd0": [(d.src_addr, d.src_addr + d.length)],
                              "wr": [(d.dst_addr, d.dst_addr + d.length)]},
                   lambda d: d.length < 16)


def _patchify_engine():
    from moevit.hw.top.patchify_engine import PatchifyEngine
    nbytes = FORMAL_HW.bus_width // 8

    def buffers(d):
        size = d.channels * d.rows * d.columns
        # A row's request starts at its first byte rounded down to the bus.
        return {"rd0": [(d.x_addr & ~(nbytes - 1), d.x_addr + size)],
                "wr": [(d.y_addr, d.y_addr + size)]}

    return _engine(lambda hw: PatchifyEngine(hw, patches=2), buffers,
                   lambda d: (d.channels < 2) & (d.rows < 4) & (d.columns < 4))


def _layernorm_engine():
    from moevit.hw.top.layernorm_engine import PARAM_BYTES, LayerNormEngine
    return _engine(LayerNormEngine,
                   lambda d: {"rd0": [(d.param_addr, d.param_addr + PARAM_BYTES * d.dim)],
                              "rd1": [(d.x_addr, d.x_addr + d.tokens * d.dim)],
                              "wr": [(d.y_addr, d.y_addr + d.tokens * d.dim)]},
                   lambda d: (d.tokens < 4) & (d.dim < 8))


#: The linear engine's instance: an output chunk is whole bus words (4 columns).
LINEAR_ENGINE_HW = dataclasses.replace(FORMAL_HW, cols=4)


def _linear_engine(*, narrow=False, by_words=False):
    """``narrow``: the engine's address registers 32 bits wide, as before the fix of
    their wrap (a mutant); ``by_words``: x read a bus word of every row at a time
    (``hw.x_by_words``)."""
    from moevit.hw.top.linear_engine import CHAN_BYTES, LinearEngine
    hw = LINEAR_ENGINE_HW.replace(x_by_words=int(by_words))
    cols = hw.cols

    def buffers(d):
        op = d.op
        y = (op.y_addr, op.y_addr + op.tokens * op.out_features)
        return {"rd0": [(op.x_addr, op.x_addr + op.tokens * op.in_features)],
                "rd1": [(op.w_addr, op.w_addr + op.out_tiles * op.in_features * cols)],
                "rd2": [(op.chan_addr, op.chan_addr + op.out_tiles * cols * CHAN_BYTES)],
                "rd3": [(op.res_addr, op.res_addr + op.tokens * op.out_features)],
                "wr": [y]}

    def limits(d):
        # LINEAR's own jobs (no gather, scatter or prefetched weights: the MoE's), their
        # buffers anywhere: one that runs past 2**32 is asked for there, not wrapped.
        return ((d.op.tokens < 4) & (d.op.in_features < 8) & (d.op.out_features < 8)
                & ~d.x_gather & ~d.y_scatter)

    def no_ahead(m, dut, live):
        m.d.comb += Assume(~dut.ahead.valid)

    return _engine(LinearEngine, buffers, limits, [no_ahead], hw=hw,
                   patches={("linear_engine", "ADDR_WIDTH"): 32} if narrow else None)


#: The attention engine's instance: heads of 4 bytes, so that a head's slice is a bus word
#: (the engine refuses any other: with FORMAL_HW's 2-byte heads no request would be made).
ATTENTION_ENGINE_HW = dataclasses.replace(FORMAL_HW, max_head_dim=4)


def _attention_engine(short=False):
    from moevit.hw.top.attention_engine import AttentionEngine

    def buffers(d):
        # k, v: rows of heads * head_dim bytes, row_pitch apart, q the same for its query
        # rows; the context dense, a row a query row.
        row = d.heads * d.head_dim
        span, queries = ((n - 1) * d.row_pitch + row for n in (d.tokens, d.rows))
        return {"rd0": [(d.q_addr, d.q_addr + queries)], "rd1": [(d.k_addr, d.k_addr + span)],
                "rd2": [(d.v_addr, d.v_addr + span)],
                "wr": [(d.out_addr, d.out_addr + d.rows * row)]}

    return _engine(AttentionEngine, buffers,
                   lambda d: (d.tokens < 4) & (d.heads < 3) & (d.head_dim < 5)
                   & (d.row_pitch < 16), hw=ATTENTION_ENGINE_HW, short=short)


def _route_engine(short=False):
    from moevit.hw.top.moe import RouteEngine

    def buffers(d):
        r = d.route
        return {"rd0": [(r.logits_addr, r.logits_addr + r.tokens * r.experts)],
                "wr": [(r.topk_addr, r.topk_addr + r.tokens * r.top_k),
                       (r.weights_addr, r.weights_addr + 2 * r.tokens * r.top_k)]}

    return _engine(RouteEngine, buffers,
                   lambda d: (d.route.tokens < 4) & (d.route.experts < 4) & (d.route.top_k < 4),
                   short=short)


def _expert_engine(short=False):
    """The EXPERT engine's own reads (the routing), no write of its own, and its two
    linear jobs naming the descriptor's buffers: fc1 from the gathered rows of x into
    the hidden rows, fc2 from them, scattered into the slots."""
    from moevit.hw.top.moe import ExpertEngine

    def buffers(d):
        return {"rd0": [(d.topk_addr, d.topk_addr + d.tokens * d.top_k)], "wr": []}

    def jobs(m, dut, live):
        # The linear engine: job_done only for a job it took.
        running = Signal(name="job_running")
        with m.If(dut.job.valid & dut.job.ready):
            m.d.sync += running.eq(1)
        with m.If(dut.job_done):
            m.d.sync += running.eq(0)
        m.d.comb += Assume(~dut.job_done | running)
        d = Signal.like(dut.desc.payload, name="expert_taken")
        with m.If(dut.desc.valid & dut.desc.ready):
            m.d.sync += d.eq(dut.desc.payload)
        j, op = dut.job.payload, dut.job.payload.op
        fc1 = (j.x_gather & ~j.y_scatter & (op.x_addr == d.x_addr) & (op.w_addr == d.fc1_w_addr)
               & (op.chan_addr == d.fc1_chan_addr) & (op.y_addr == d.hidden_addr)
               & (op.in_features == d.dim) & (op.out_features == d.hidden))
        fc2 = (~j.x_gather & j.y_scatter & (op.x_addr == d.hidden_addr)
               & (op.w_addr == d.fc2_w_addr) & (op.chan_addr == d.fc2_chan_addr)
               & (op.y_addr == d.slots_addr) & (op.in_features == d.hidden)
               & (op.out_features == d.dim))
        with m.If(dut.job.valid):
            m.d.comb += Assert(fc1 | fc2, "job: not the descriptor's fc1 or fc2")

    return _engine(ExpertEngine, buffers,
                   lambda d: (d.tokens < 4) & (d.top_k < 3) & (d.dim < 8) & (d.hidden < 8),
                   [jobs], short=short)


def _combine_engine(short=False):
    from moevit.hw.top.moe import CombineEngine

    def buffers(d):
        return {"rd0": [(d.weights_addr, d.weights_addr + 2 * d.tokens * d.top_k)],
                "rd1": [(d.slots_addr, d.slots_addr + d.tokens * d.top_k * d.dim)],
                "rd2": [(d.skip_addr, d.skip_addr + d.tokens * d.dim)],
                "wr": [(d.y_addr, d.y_addr + d.tokens * d.dim)]}

    return _engine(CombineEngine, buffers,
                   lambda d: (d.tokens < 4) & (d.top_k < 3) & (d.dim < 8), short=short)


# The whole top ------------------------------------------------------------------------
#: The engines of the top's check: the smallest top that runs a program.
TOP_ENGINES = ("copy",)


def _top():
    """The accelerator top (COPY engine only) on :data:`FORMAL_HW`: ``m_axi_gmem`` an AXI4
    master (each channel's handshake, INCR bursts of the bus width inside 4 KiB, one
    response per burst, at most the arbiter's bursts in flight) and ``s_axi_control`` an
    AXI4-Lite slave, the memory and the host free within their own rules; no reset
    after the first cycle."""
    from types import SimpleNamespace

    from moevit.hw.top.accelerator import ENGINE_CHANNELS, Accelerator

    dut = Accelerator(FORMAL_HW, engines=TOP_ENGINES)
    nbytes = FORMAL_HW.bus_width // 8

    def ports(m, dut, live):
        m.d.comb += Assume(dut.ap_rst_n)
        gmem = SimpleNamespace(**{name[len("m_axi_gmem_"):]: getattr(dut, name)
                                  for name in flat_ports(dut) if name.startswith("m_axi_gmem_")})
        reads = (ENGINE_CHANNELS + 2) * FORMAL_HW.max_outstanding   # the arbiter's most
        axi4_read_master(m, gmem, live, nbytes=nbytes, max_outstanding=reads, name="gmem")
        axi4_write_master(m, gmem, live, nbytes=nbytes,
                          max_outstanding=FORMAL_HW.max_outstanding, name="gmem")
        axil_slave(m, dut.s_axi_control, live)

    # The read arbiter unbuffered, as in read_arbiter.axi: its beat FIFOs (a 4 KiB page a
    # port) are beyond the solver; the grant, the routing and the bursts are the same.
    unbuffered = _Patched(dut, {("interconnect", "longest_burst"): lambda width: 0})
    return Harness(dut, [ports], streams=False, clocked=False, elaborated=unbuffered)


# Mutants ---------------------------------------------------------------------------
class _Withdrawing(wiring.Component):
    """A GELU whose output ``valid`` drops every other cycle, taken or not (a mutant)."""

    def __init__(self):
        from moevit.hw.units.gelu import Gelu
        self._gelu = Gelu(lanes=1)
        super().__init__(dict(self._gelu.signature.members))

    def elaborate(self, platform):
        m = Module()
        m.submodules.gelu = gelu = self._gelu
        for name in ("b", "c", "mult", "shift"):
            m.d.comb += getattr(gelu, name).eq(getattr(self, name))
        wiring.connect(m, wiring.flipped(self.i), gelu.i)
        phase = Signal()
        m.d.sync += phase.eq(~phase)
        m.d.comb += [self.o.payload.eq(gelu.o.payload), self.o.valid.eq(gelu.o.valid & phase),
                     gelu.o.ready.eq(self.o.ready & phase)]
        return m


#: The time limit of the deepest checks (seconds; the others have SymbiYosys' 600).
LONG = 3600

CHECKS = [
    Check("repack.bytes", "Repack(4 -> 2)", "stream rules; every byte once, in order of lasts",
          "prove", 4, lambda: _repack(4, 2)),
    Check("repack.bytes_up", "Repack(2 -> 3)", "stream rules; every byte once, in order of lasts",
          "prove", 4, lambda: _repack(2, 3), fast=False),
    Check("gelu.beats", "Gelu(lanes=1)", "stream rules; one beat out per beat in, none lost",
          "bmc", 6, _gelu, fast=False),
    *[Check(f"relocator.{kind}", "Relocator(64-bit addresses, 32-bit bounds)",
            _relocator_what(kind),
            "prove", 3, lambda kind=kind: _relocator(kind), fast=kind == "beyond",
            flatten=True)
      for kind in ("weights", "scratch", "input", "output", "beyond")],
    # The write channel's: the same, but the weights and the input are read-only.
    *[Check(f"relocator.write_{kind}", "Relocator(writes, 64-bit addresses, 32-bit bounds)",
            _relocator_what(kind, writes=True),
            "prove", 3, lambda kind=kind: _relocator(kind, writes=True),
            fast=kind in ("weights", "input"), flatten=True)
      for kind in ("weights", "scratch", "input", "output", "beyond")],
    Check("control.axil", "Control (s_axi_control)",
          "AXI4-Lite slave: handshakes, one OKAY response per request, in order",
          "prove", 4, _control),
    Check("read_mover.axi", "ReadMover(32 bit, 2 outstanding)",
          "AR/R rules, INCR bus-wide aligned bursts inside 4 KiB pages, <= 2 in flight, "
          "no data beat without its R beat", "bmc", 8, _read_mover, fast=False),
    Check("read_mover.requests", "ReadMover(32 bit, 2 outstanding)",
          "each good request read once, in order, inside itself (bursts back to back, "
          "ceil(length/4) beats)", "bmc", 5, lambda: _read_mover(requests=True), fast=False),
    Check("write_mover.axi", "WriteMover(32 bit, 2 outstanding)",
          "AW/W/B rules, 4 KiB pages, WLAST on each burst's last beat, no W before its AW, "
          "one B per burst, <= 2 in flight", "bmc", 7, _write_mover, fast=False),
    Check("write_mover.requests", "WriteMover(32 bit, 2 outstanding)",
          "each good request written once, in order, inside itself", "bmc", 4,
          lambda: _write_mover(requests=True), fast=False),
    Check("read_arbiter.axi", "ReadArbiter(32 bit, 2 ports, 2 outstanding, unbuffered)",
          "AR/R rules on the shared master and each port; each port gets only its own "
          "bursts' beats", "bmc", 6, _read_arbiter, fast=False),
    Check("read_striper.axi", "ReadStriper(32 bit, 2 ports, 2 outstanding, unbuffered)",
          "AR/R rules on the master side and each port; bursts dealt in turn, unchanged; "
          "each beat to the master in issue order with its response, rlast in place",
          "bmc", 8, _read_striper, fast=False),
    Check("write_arbiter.axi", "WriteArbiter(32 bit, 2 ports, 2 outstanding)",
          "AW/W/B rules on the shared master and each port; each B to the port that wrote",
          "bmc", 6, _write_arbiter, fast=False),
    Check("linear.beats_acc", "LinearKernel(1x2 array, max_in 2, acc 17 bit)",
          "stream rules; out_tiles*tokens beats per descriptor; accumulators never wrap",
          "bmc", 14, _linear, fast=False),
    Check("softmax.beats", "Softmax(max_row=2)", "stream rules; one probability per score",
          "bmc", 16, _softmax, fast=False),
    Check("layernorm.beats", "LayerNorm(max_dim=2)", "stream rules; one beat out per beat in",
          "bmc", 16, _layernorm, fast=False),
    Check("layernorm.lanes.beats", "LayerNorm(max_dim=4, lanes=2)",
          "stream rules; never a beat out that no beat in gave (the pipelined statistics' "
          "63 cycles lie past the depth)", "bmc", 16, lambda: _layernorm(lanes=2), fast=False),
    Check("attention.beats", "Attention(formal hw)", "stream rules; one o beat per q beat",
          "bmc", 16, _attention, fast=False),
    Check("attention.rows.beats", "Attention(formal hw, 2 row lanes)",
          "stream rules; one o beat per q beat, the rows dealt to two row lanes and gathered",
          "bmc", 16, lambda: _attention(row_lanes=2), fast=False),
    Check("attention.pipelined.beats",
          "Attention(formal hw, 2 row lanes, 2 banks of K and V, pipelined heads)",
          "stream rules; one o beat per q beat, each row lane's next head's rows straight "
          "behind the head before's", "bmc", 16,
          lambda: _attention(row_lanes=2, kv_banks=2, pipelined_heads=1), fast=False),
    Check("attention.packed.beats",
          "Attention(formal hw, 2 row lanes, QK two keys a DSP48E2)",
          "stream rules; one o beat per q beat, each pair's second score held a chunk",
          "bmc", 16, lambda: _attention(row_lanes=2, score_packing=2), fast=False),
    Check("sequencer.progress", f"Sequencer(formal hw, {FORMAL_HEADER_WORDS}-word header)",
          f"stream rules; with memory (any words) and engines answering within {RESPONSE} "
          f"cycles, never more than {PROGRESS_BOUND} cycles running without progress (no "
          f"deadlock; the top's abort, held until the next start, is progress in its first "
          f"cycle), through the header and the body's words; each request's words read "
          f"to its end before the next request or done", "bmc", SEQUENCER_DEPTH, _sequencer,
          fast=False, timeout=LONG),
    Check("moe.streams", "MoeUnit(formal hw)", "stream rules of every stream",
          "bmc", 12, _moe, fast=False),
    Check("top.axi", "Accelerator(formal hw, COPY engine only)",
          "m_axi_gmem: AXI4 master rules (handshakes, INCR bus-wide bursts inside 4 KiB, "
          "one response per burst, bursts in flight bounded); s_axi_control: AXI4-Lite "
          "slave rules", "bmc", 8, _top, fast=False, timeout=LONG),
    Check("copy_engine.requests", "CopyEngine(formal hw)",
          "stream rules of desc, rd, wr; each request inside src or dst", "bmc", 8,
          _copy_engine, fast=False),
    Check("patchify_engine.requests", "PatchifyEngine(formal hw, 2 patches a block)",
          "stream rules of desc, rd, wr; each request inside x or y (images of at most "
          "1x3x3)", "bmc", 12, _patchify_engine, fast=False),
    Check("layernorm_engine.requests", "LayerNormEngine(formal hw)",
          "stream rules of desc, rd, wr; each request inside the params, x or y (at most "
          "3 tokens of 7)", "bmc", 5, _layernorm_engine, fast=False),
    Check("attention_engine.requests", "AttentionEngine(formal hw, heads of 4)",
          "stream rules of desc, rd, wr; each request inside q, k, v or the context (at most "
          "3 tokens, 2 heads of 4, row pitch below 16)", "bmc", 10, _attention_engine,
          fast=False, timeout=LONG),
    Check("route_engine.requests", "RouteEngine(formal hw)",
          "stream rules of desc, rd, wr; each request inside the logits, topk or weights (at "
          "most 3 tokens, 3 experts)", "bmc", 10, _route_engine, fast=False, timeout=LONG),
    Check("expert_engine.requests", "ExpertEngine(formal hw)",
          "stream rules of desc, rd, wr, job, ahead; reads inside the routing, no write of its "
          "own, each job the descriptor's fc1 or fc2 (at most 3 tokens, top-2, 7 features)",
          "bmc", 10, _expert_engine, fast=False, timeout=LONG),
    Check("combine_engine.requests", "CombineEngine(formal hw)",
          "stream rules of desc, rd, wr; each request inside the weights, slots, skip or y (at "
          "most 3 tokens, top-2, 7 features)", "bmc", 10, _combine_engine, fast=False,
          timeout=LONG),
    Check("linear_engine.requests", "LinearEngine(formal hw, 1x4 array)",
          "stream rules of desc, rd, wr; each request inside x, w, chan, res or y (LINEAR "
          "jobs of at most 3 tokens, 7 in and 7 out features, buffers anywhere: across "
          "2**32 too)", "bmc", 6,
          _linear_engine, fast=False, timeout=LONG),
    Check("linear_engine.requests_by_words", "LinearEngine(formal hw, 1x4 array, x by words)",
          "as linear_engine.requests, with x_by_words: the on-chip window's bounds free, so "
          "x read a row or a bus word of every row at a time", "bmc", 6,
          lambda: _linear_engine(by_words=True), fast=False, timeout=LONG),
]

MUTANTS = [
    Check("mutant.sequencer_truncated_body", "Sequencer blind to its body's end",
          "must FAIL: a body that ends before its last instruction hangs the sequencer",
          "bmc", SEQUENCER_DEPTH, lambda: _sequencer(broken=True), fast=False, expect="FAIL",
          rule="deadlock", skip=SEQUENCER_DEPTH - 1, timeout=LONG),
    Check("mutant.linear_engine_32_bit_addresses", "LinearEngine, 32-bit address registers",
          "must FAIL: a buffer across 2**32 wraps onto address 0", "bmc", 6,
          lambda: _linear_engine(narrow=True), fast=False, expect="FAIL",
          rule="Assert(Cat(*inside).any()", timeout=LONG),
    *[Check(f"mutant.{name}_engine_short_buffers", f"{unit}, buffers one byte short",
            "must FAIL: a request reaches its buffer's last byte (the buffer rule binds)",
            "bmc", 10, lambda make=make: make(short=True), fast=False, expect="FAIL",
            rule="Assert(Cat(*inside).any()", timeout=LONG)
      for name, unit, make in (("attention", "AttentionEngine", _attention_engine),
                               ("route", "RouteEngine", _route_engine),
                               ("expert", "ExpertEngine", _expert_engine),
                               ("combine", "CombineEngine", _combine_engine))],
    Check("mutant.relocator_32_bit_sums", "Relocator adding bases in 32 bits",
          "must FAIL: an output request relocated off its slot", "bmc", 3,
          lambda: _relocator("output", narrow=True), expect="FAIL",
          rule="off its slot offset", flatten=True),
    Check("mutant.relocator_writes_anywhere", "Relocator without the read-only kinds",
          "must FAIL: a write request into the weights passed", "bmc", 3,
          lambda: _relocator("weights", writes=True, blind=True), expect="FAIL",
          rule="not refused", flatten=True),
    Check("mutant.read_mover_crosses_4k", "ReadMover with 8 KiB pages",
          "must FAIL: a burst crosses 4 KiB", "bmc", 4, lambda: _read_mover(broken=True),
          expect="FAIL", rule="crosses a 4 KiB boundary"),
    Check("mutant.gelu_withdraws_valid", "Gelu whose valid drops while not ready",
          "must FAIL: valid withdrawn", "bmc", 6,
          lambda: Harness(_Withdrawing(), hold=["b", "c", "mult", "shift"]), fast=False,
          expect="FAIL",
          rule="valid withdrawn before ready"),
    Check("mutant.linear_short_accumulator", "LinearKernel, acc one bit short",
          "must FAIL: an accumulator wraps", "bmc", 14, _short_accumulator, fast=False,
          expect="FAIL", rule="overflowed"),
]
