"""The top's AXI4 memory masters: its movers spread over ``hw.memory_ports`` ports by one table.

A port is a full AXI4 master of ``hw.bus_width`` bits with 64-bit addresses,
named as Vitis and Vivado name a kernel's ports: ``m_axi_gmem`` (port 0, as the
one-port top has always named it), then ``m_axi_gmem1``, ``m_axi_gmem2`` ...
Every port reaches the same memory (the host's buffers); which one a mover
uses is fixed when the top is built, by :data:`PORT_OF`:

========  ====  ====  ====  ====  ====  =======  =====  =====
ports     x     w     chan  res   list  program  entry  write
========  ====  ====  ====  ====  ====  =======  =====  =====
1         0     0     0     0     0     0        0      0
2         0     1     0     0     0     0        0      0
3         0     1     0     0     0     0        0      2
4         0     1     2     2     0     0        0      3
5         0     1     2     3     0     0        0      4
6         0     1     2     3     4     4        4      5
7         0     1     2     3     4     5        5      6
8         0     1     2     3     4     5        6      7
========  ====  ====  ====  ====  ====  =======  =====  =====

The movers, by the name of what the linear engine reads on them
(:data:`MOVERS`): the engine read channels 0 to 4 (``x``, ``w``, ``chan``,
``res``; ``list`` is EXPERT's routing), the sequencer's ``program`` and task
``entry`` reads, and the ``write`` mover. The other engines use the same
channels: ATTENTION q, k, v on x, w, chan; LAYERNORM its parameters and rows on
x and w; COMBINE gate weights, slots and skip rows on x, w, chan; PATCHIFY,
COPY and ROUTE one stream on x.

Why this table: ``w`` is by far the heaviest stream (every expert's weights,
once per image), so it has a port of its own from two ports on, away from the
activations (``x``). With two ports the writes join the activations rather
than the weights: the cost model charges a port's reads and writes against
one bandwidth (:func:`moevit.hw.cost.cycles.port_bytes`), and a linear layer's
``x`` and ``y`` together weigh about what its weights do. From three ports the
write mover has a port of its own; from four, ATTENTION's q, k, v and its
output each have one. The sequencer's reads (a few words per instruction) and
EXPERT's routing go with ``x`` until there are ports to spare.

**The weights striped** (``hw.weight_ports = k`` > 1, :func:`weight_stripe`): the
``w`` mover's bursts are dealt in turn to ``k`` ports, its own port of the table and
the ``k - 1`` after it (wrapping to port 0): with 4 ports, ``k = 2`` stripes over
ports 1 and 2, ``k = 4`` over 1, 2, 3, 0. A
:class:`~moevit.hw.top.interconnect.ReadStriper` between the mover and those ports
gives the beats back in order. The mover still takes one bus word a cycle: striping
pays where a port gives less than that (a narrow port behind a wide bus, a memory
shared with the other streams). With ``k = 1`` the top is built as before.
With ``hw.chan_striped`` a second striper deals ``chan``'s bursts over the same ports
(:func:`striped_movers`): the constants read beside every weight tile no longer all
load the one weight port that ``chan`` shares, which the weight stream would wait for.

**The side lane** (``hw.issue_lanes = 2``: the engines other than the linear kernel's run
beside it, :mod:`moevit.hw.top.accelerator`) has movers of its own, named as the side
engines use them (:data:`SIDE_MOVERS`): ``side_x``, ``side_w``, ``side_chan`` on the ports
of ``x``, ``w`` and ``chan`` (ATTENTION's q, k and v keep their ports), and ``side_write``
on a port whose write channel the ``write`` mover leaves free (:data:`SIDE_WRITE_PORT`;
two lanes need two ports).

A port with one read master (a mover, or a striper's share of ``w``) connects it
straight to the port; with several, a
:class:`~moevit.hw.top.interconnect.ReadArbiter` joins them (a striper's share takes
``w``'s place among the movers). The write mover
always owns its port's write channels alone; a port's unused channels are
held idle (``arvalid``, ``awvalid``, ``wvalid`` low).
"""

from amaranth.lib import wiring

from moevit.hw.config import HwConfig
from moevit.hw.top.movers import AXI4ReadSignature, AXI4WriteSignature, axi_members, connect_flat

__all__ = ["MOVERS", "READ_MOVERS", "PORT_OF", "SIDE_MOVERS", "SIDE_WRITE_PORT", "port_name",
           "ports_of", "weight_stripe", "striped_movers", "port_members", "connect_ports"]

#: The top's movers in the order of :data:`PORT_OF`'s rows: its read movers (engine
#: channels 0 to 4, then the sequencer's two), then the write mover.
MOVERS = ("x", "w", "chan", "res", "list", "program", "entry", "write")
READ_MOVERS = MOVERS[:-1]

#: Ports -> the port of each mover of :data:`MOVERS` (the module's table).
PORT_OF = {
    1: (0, 0, 0, 0, 0, 0, 0, 0),
    2: (0, 1, 0, 0, 0, 0, 0, 0),
    3: (0, 1, 0, 0, 0, 0, 0, 2),
    4: (0, 1, 2, 2, 0, 0, 0, 3),
    5: (0, 1, 2, 3, 0, 0, 0, 4),
    6: (0, 1, 2, 3, 4, 4, 4, 5),
    7: (0, 1, 2, 3, 4, 5, 5, 6),
    8: (0, 1, 2, 3, 4, 5, 6, 7),
}
#: The side lane's movers (``hw.issue_lanes = 2``): its read channels, then its write mover.
SIDE_MOVERS = ("side_x", "side_w", "side_chan", "side_write")
#: Ports -> the port of the side lane's write mover: one whose write channel is free.
SIDE_WRITE_PORT = {2: 1, 3: 0, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2}

assert set(PORT_OF) == set(range(1, HwConfig.MAX_MEMORY_PORTS + 1))
assert all(SIDE_WRITE_PORT[n] != PORT_OF[n][-1] for n in SIDE_WRITE_PORT)
assert all(sorted(set(row)) == list(range(n)) for n, row in PORT_OF.items()), \
    "every port has a mover"


def port_name(k: int) -> str:
    """The name of port ``k`` in ``m_axi_<name>``: ``gmem``, ``gmem1``, ``gmem2`` ..."""
    return "gmem" if k == 0 else f"gmem{k}"


def ports_of(hw: HwConfig) -> dict:
    """Mover name -> its port on ``hw``'s top (the side lane's too with two issue lanes)."""
    where = dict(zip(MOVERS, PORT_OF[hw.memory_ports]))
    if hw.issue_lanes == 2:
        where.update(side_x=where["x"], side_w=where["w"], side_chan=where["chan"],
                     side_write=SIDE_WRITE_PORT[hw.memory_ports])
    return where


def weight_stripe(hw: HwConfig) -> tuple:
    """The ports the ``w`` mover's bursts go to in turn: its own, then the
    ``hw.weight_ports - 1`` after it (modulo ``hw.memory_ports``)."""
    own = ports_of(hw)["w"]
    return tuple((own + j) % hw.memory_ports for j in range(hw.weight_ports))


def striped_movers(hw: HwConfig) -> dict:
    """Mover -> the ports its bursts are dealt over, for the movers striped on ``hw``'s top:
    ``w`` over :func:`weight_stripe` (``hw.weight_ports`` > 1), and ``chan`` over the same
    ports with ``hw.chan_striped``."""
    if hw.weight_ports < 2:
        return {}
    stripe = weight_stripe(hw)
    return {"w": stripe, **({"chan": stripe} if hw.chan_striped else {})}


def port_members(hw: HwConfig) -> dict:
    """The top's members of its memory ports (``m_axi_gmem_*``, ``m_axi_gmem1_*`` ...)."""
    members = {}
    for k in range(hw.memory_ports):
        members.update(axi_members(port_name(k), AXI4ReadSignature(hw.bus_width)))
        members.update(axi_members(port_name(k), AXI4WriteSignature(hw.bus_width)))
    return members


def connect_ports(m, top, hw: HwConfig, reads, write, side=None):
    """Join the read movers ``reads`` (in :data:`READ_MOVERS` order) and the write mover
    ``write`` to ``top``'s flat ports (:func:`port_members`) by :data:`PORT_OF`, and with
    two issue lanes the side lane's ``side`` (its read movers and its write mover, in
    :data:`SIDE_MOVERS` order) by :func:`ports_of`: a
    :class:`~moevit.hw.top.interconnect.ReadArbiter` per port with several read masters
    (each may have all its bursts in flight), a straight connection for one; with
    ``hw.weight_ports`` > 1 a :class:`~moevit.hw.top.interconnect.ReadStriper` deals
    ``w``'s bursts over :func:`weight_stripe`, and with ``hw.chan_striped`` another
    ``chan``'s (:func:`striped_movers`)."""
    from moevit.hw.top.interconnect import ReadArbiter, ReadStriper

    assert len(reads) == len(READ_MOVERS)
    assert (side is None) == (hw.issue_lanes == 1)
    where = PORT_OF[hw.memory_ports]
    stripes = striped_movers(hw)
    # Each port's read masters in READ_MOVERS order (a striped mover's share in its place),
    # then the side lane's.
    masters = [[] for _ in range(hw.memory_ports)]
    for name, mover, port in zip(READ_MOVERS, reads, where):
        if name not in stripes:
            masters[port].append(mover.axi)
            continue
        striper = ReadStriper(hw.bus_width, len(stripes[name]), hw.max_outstanding)
        m.submodules["striper" if name == "w" else f"{name}_striper"] = striper
        wiring.connect(m, mover.axi, striper.axi)
        for share, k in zip(striper.ports, stripes[name]):
            masters[k].append(share)
    side_reads, side_write = (side[:-1], side[-1]) if side else ((), None)
    for mover, name in zip(side_reads, SIDE_MOVERS):
        masters[ports_of(hw)[name]].append(mover.axi)
    for k in range(hw.memory_ports):
        name = port_name(k)
        mine = masters[k]
        if len(mine) == 1:
            connect_flat(m, top, name, mine[0])
        elif mine:
            arbiter = ReadArbiter(hw.bus_width, len(mine), len(mine) * hw.max_outstanding)
            m.submodules["arbiter" if k == 0 else f"arbiter{k}"] = arbiter
            for j, axi in enumerate(mine):
                wiring.connect(m, axi, arbiter.ports[j])
            connect_flat(m, top, name, arbiter.axi)
        if where[-1] == k:
            connect_flat(m, top, name, write.axi)
        if side_write is not None and SIDE_WRITE_PORT[hw.memory_ports] == k:
            connect_flat(m, top, name, side_write.axi)
