"""AXI4 and AXI4-Lite properties, written from the rule lists of ZipCPU's formal
property sets (wb2axip ``bench/formal/faxi_master.v``, ``faxil_slave.v``), in Amaranth.

Each function takes a harness module ``m``, the AXI record (or the flat
members of a port) as the design under check sees it, and the ``live`` flag;
rules on what the design drives are asserted, rules on what its partner
drives are assumed.

:func:`axi4_read_master` / :func:`axi4_write_master`
    A master (a mover, an arbiter's shared port) against a memory that keeps
    the rules: every channel's handshake; INCR bursts of the full bus width,
    aligned, never across a 4 KiB page; at most ``max_outstanding`` bursts in
    flight; R beats (B responses) only for bursts in flight, ``rlast`` on each
    burst's last beat (one B per burst, after its last W); ``wlast`` on the
    last W beat of each burst, and no more W beats than the AWs announced.
:func:`axil_slave`
    An AXI4-Lite slave (the control port): handshakes, one response per
    request, in order (at most one in flight per channel here), no response
    without a request, OKAY responses.
"""

from amaranth.hdl import Assert, Assume, Module, Mux, Signal
from amaranth.lib.fifo import SyncFIFO

from moevit.hw.formal.rules import beats, difference, handshake_rules
from moevit.hw.top.movers import PAGE_BYTES

__all__ = ["axi4_read_master", "axi4_write_master", "axil_slave", "burst_checks"]

INCR = 1


def _bursts_in_flight(m, name, depth, *, accepted, length, taken, last):
    """The lengths of the bursts in flight, oldest first (the memory's view: pushed when
    an address beat is ``accepted``, popped when the ``last`` data beat is ``taken``),
    and the index of the next data beat within the oldest."""
    queue = SyncFIFO(width=8, depth=depth)
    m.submodules[f"{name}queue"] = queue
    beat = Signal(8, name=f"{name}beat")
    m.d.comb += [queue.w_en.eq(accepted), queue.w_data.eq(length),
                 queue.r_en.eq(taken & last)]
    with m.If(taken):
        m.d.sync += beat.eq(Mux(last, 0, beat + 1))
    return queue, beat


def burst_checks(m, addr, length, size, burst, nbytes, name, *, check=Assert):
    """An address beat's own rules: INCR, the full bus width, aligned, inside one page
    (``check=Assume``: a master promises them)."""
    s = (nbytes - 1).bit_length()
    last_byte = addr[:12] + ((length + 1) << s) - 1
    m.d.comb += [
        check(burst == INCR, f"{name}: burst type is not INCR"),
        check(size == s, f"{name}: beat size is not the bus width"),
        check(addr[:s] == 0 if s else 1, f"{name}: address not aligned to the bus"),
        check(last_byte < PAGE_BYTES, f"{name}: burst crosses a 4 KiB boundary"),
    ]


def axi4_read_master(m: Module, axi, live, *, nbytes, max_outstanding, name="axi"):
    """AR and R of a read master ``axi`` (an :class:`~moevit.hw.top.movers.AXI4ReadSignature`
    record or an object with its members)."""
    handshake_rules(m, axi.arvalid, axi.arready,
                    [axi.arid, axi.araddr, axi.arlen, axi.arsize, axi.arburst],
                    assume=False, name=f"{name}_ar", live=live)
    handshake_rules(m, axi.rvalid, axi.rready, [axi.rid, axi.rdata, axi.rresp, axi.rlast],
                    assume=True, name=f"{name}_r", live=live)
    with m.If(axi.arvalid):
        burst_checks(m, axi.araddr, axi.arlen, axi.arsize, axi.arburst, nbytes, f"{name}_ar")

    # The memory: beats only for a burst in flight, rlast on its last one.
    queue, beat = _bursts_in_flight(m, f"{name}_r", max_outstanding + 1,
                                    accepted=axi.arvalid & axi.arready, length=axi.arlen,
                                    taken=axi.rvalid & axi.rready, last=axi.rlast)
    m.d.comb += [Assume(~axi.rvalid | queue.r_rdy),
                 Assume(~axi.rvalid | (axi.rlast == (beat == queue.r_data)))]
    ar = beats(m, axi.arvalid, axi.arready, f"{name}_ar")
    done = beats(m, axi.rvalid & axi.rlast, axi.rready, f"{name}_rlast")
    m.d.comb += Assert(difference(ar, done) <= max_outstanding,
                       f"{name}: more than {max_outstanding} read bursts in flight")
    return ar, done


def axi4_write_master(m: Module, axi, live, *, nbytes, max_outstanding, name="axi"):
    """AW, W and B of a write master ``axi``."""
    handshake_rules(m, axi.awvalid, axi.awready,
                    [axi.awid, axi.awaddr, axi.awlen, axi.awsize, axi.awburst],
                    assume=False, name=f"{name}_aw", live=live)
    handshake_rules(m, axi.wvalid, axi.wready, [axi.wdata, axi.wstrb, axi.wlast],
                    assume=False, name=f"{name}_w", live=live)
    handshake_rules(m, axi.bvalid, axi.bready, [axi.bid, axi.bresp],
                    assume=True, name=f"{name}_b", live=live)
    with m.If(axi.awvalid):
        burst_checks(m, axi.awaddr, axi.awlen, axi.awsize, axi.awburst, nbytes, f"{name}_aw")

    # W beats follow the AW lengths in order: wlast exactly on each burst's last beat.
    lengths, beat = _bursts_in_flight(m, f"{name}_w", max_outstanding + 1,
                                      accepted=axi.awvalid & axi.awready, length=axi.awlen,
                                      taken=axi.wvalid & axi.wready, last=axi.wlast)
    with m.If(axi.wvalid):
        m.d.comb += [Assert(lengths.r_rdy, f"{name}_w: a W beat before its AW"),
                     Assert(axi.wlast == (beat == lengths.r_data),
                            f"{name}_w: wlast not on the burst's last beat")]

    aw = beats(m, axi.awvalid, axi.awready, f"{name}_aw")
    w_done = beats(m, axi.wvalid & axi.wlast, axi.wready, f"{name}_wlast")
    b = beats(m, axi.bvalid, axi.bready, f"{name}_b")
    # The memory answers a burst once, after its last W beat.
    m.d.comb += Assume(~axi.bvalid | (difference(w_done, b) != 0))
    m.d.comb += Assert(difference(aw, b) <= max_outstanding,
                       f"{name}: more than {max_outstanding} write bursts in flight")
    return aw, w_done, b


def axil_slave(m: Module, bus, live, *, okay=0, name="s_axil"):
    """An AXI4-Lite slave ``bus`` (the members of
    :class:`~moevit.hw.top.control.AxiLiteSignature`) against a master that keeps
    the rules."""
    for channel, payload in (("aw", [bus.awaddr]), ("w", [bus.wdata, bus.wstrb]),
                             ("ar", [bus.araddr])):
        handshake_rules(m, getattr(bus, f"{channel}valid"), getattr(bus, f"{channel}ready"),
                        payload, assume=True, name=f"{name}_{channel}", live=live)
    handshake_rules(m, bus.bvalid, bus.bready, [bus.bresp], assume=False,
                    name=f"{name}_b", live=live)
    handshake_rules(m, bus.rvalid, bus.rready, [bus.rdata, bus.rresp], assume=False,
                    name=f"{name}_r", live=live)
    aw = beats(m, bus.awvalid, bus.awready, f"{name}_aw")
    w = beats(m, bus.wvalid, bus.wready, f"{name}_w")
    b = beats(m, bus.bvalid, bus.bready, f"{name}_b")
    ar = beats(m, bus.arvalid, bus.arready, f"{name}_ar")
    r = beats(m, bus.rvalid, bus.rready, f"{name}_r")
    # One response per request: never ahead of its requests, one held request
    # beside one unanswered response at most (the slave takes an address while
    # B waits), and every owed read is in R.
    owed_aw, owed_w = difference(aw, b), difference(w, b)
    m.d.comb += [
        Assert(owed_aw <= 2, f"{name}: more than two write addresses owed"),
        Assert(owed_w <= 2, f"{name}: more than two write data owed"),
        Assert(difference(ar, r) <= 1, f"{name}: more than one read owed"),
        Assert(~bus.bvalid | ((owed_aw != 0) & (owed_w != 0)),
               f"{name}: a write response without its address and datum"),
        Assert(bus.rvalid == (difference(ar, r) == 1),
               f"{name}: a read response without its request, or a read unanswered"),
        Assert(~bus.bvalid | (bus.bresp == okay), f"{name}: BRESP not OKAY"),
        Assert(~bus.rvalid | (bus.rresp == okay), f"{name}: RRESP not OKAY"),
    ]
    return owed_aw, owed_w
