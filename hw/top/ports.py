"""How an instruction engine meets the memory and the sequencer: the one contract of the top.

The top runs a program one instruction at a time. Each opcode is executed
by an *engine*: a component that takes the instruction's descriptor, drives
its unit (the linear kernel, attention, LayerNorm, the MoE unit...) and
moves the unit's operands between external memory and the unit's streams.
Only one engine runs at a time, so the top hands the memory movers
(:class:`~moevit.hw.top.movers.ReadMover`, :class:`~moevit.hw.top.movers.WriteMover`)
to the running engine through a plain multiplexer.

Every engine has these members:

``desc`` : ``In(stream.Signature(layout))``
    One beat per instruction (its descriptor's ``layout()``, or the job
    layout the engine documents); taken only while the engine is idle.
``rd`` : ``Out(ReadPort(data_width)).array(n)``
    Read channels: requests ``(addr, length)`` and the bytes that come back,
    one bus beat at a time (the read mover's rules: ``addr`` aligned to the
    bus width, ``last`` on a request's final beat).
``wr`` : ``Out(WritePort(data_width))``
    The write channel: requests and their bytes, bus beats in request order.
``done`` : ``Out(1)``
    One cycle when the instruction's work is handed over: its last request
    issued and its last write beat taken (never in the cycle that takes the
    descriptor). The top then waits for the write
    mover's last response before the next instruction (a later one may read
    what this one wrote).
``busy`` : ``Out(1)``
    From the descriptor's acceptance to ``done``.
``error`` : ``Out(FAULT_WIDTH)``
    The unit's :class:`~moevit.hw.program.descriptor.Fault` for a descriptor it
    refused (the engine then ends the instruction with ``done`` at once).

Addresses in requests are the program's byte addresses (offsets into the
memory image of :mod:`moevit.hw.program.layout`); the top relocates them to
the host's buffers, so an engine never adds a base.

:class:`EngineShell` wraps one engine with a read mover per read channel and
a write mover, each on its own flat AXI4 master (``m_axi_rd<k>_*``,
``m_axi_wr_*``): what the engine benches simulate against one shared memory.
"""

from amaranth.hdl import Module, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import FAULT_WIDTH, LinearDescriptor
from moevit.hw.top.movers import (ReadMover, WriteMover, axi_members, beat_layout,
                                  connect_flat, request_layout)

__all__ = ["ReadPort", "WritePort", "IndexPort", "engine_members", "linear_job_layout",
           "EngineShell"]


class ReadPort(wiring.Signature):
    """A read channel, from the requester's side: ``req`` out, ``data`` in."""

    def __init__(self, data_width):
        self._data_width = data_width
        super().__init__({"req": Out(stream.Signature(request_layout())),
                          "data": In(stream.Signature(beat_layout(data_width)))})

    def __eq__(self, other):
        return isinstance(other, ReadPort) and other._data_width == self._data_width

    def __repr__(self):
        return f"ReadPort({self._data_width})"


class WritePort(wiring.Signature):
    """A write channel, from the requester's side: ``req`` and ``data`` out."""

    def __init__(self, data_width):
        self._data_width = data_width
        super().__init__({"req": Out(stream.Signature(request_layout())),
                          "data": Out(stream.Signature(unsigned(data_width)))})

    def __eq__(self, other):
        return isinstance(other, WritePort) and other._data_width == self._data_width

    def __repr__(self):
        return f"WritePort({self._data_width})"


class IndexPort(wiring.Signature):
    """A row-index lookup, from the asker's side: ``at`` out, ``row`` in, combinational
    (``row`` belongs to the ``at`` of the same cycle)."""

    def __init__(self, max_tokens):
        super().__init__({"at": Out(range(max_tokens)), "row": In(16)})


def engine_members(desc_layout, data_width, reads) -> dict:
    """The members every engine has (see the module's description)."""
    return {"desc": In(stream.Signature(desc_layout)),
            "rd": Out(ReadPort(data_width)).array(reads),
            "wr": Out(WritePort(data_width)),
            "done": Out(1), "busy": Out(1), "error": Out(FAULT_WIDTH)}


def linear_job_layout():
    """One operation of the linear engine: a :class:`LinearDescriptor`'s image (``op``)
    and two row modes for the MoE unit's expert-by-expert reordering.

    ``x_gather``: row ``j`` of x is row ``index.x[j]`` of the tensor at ``op.x_addr``
    (``in_features`` bytes a row) instead of row ``j``; ``y_scatter``: row ``j`` of y
    goes to row ``index.y[j]`` of the tensor at ``op.y_addr`` (``out_features`` bytes a
    row). The residual stream is always dense.
    """
    return data.StructLayout({"op": LinearDescriptor.layout(), "x_gather": unsigned(1),
                              "y_scatter": unsigned(1)})


class EngineShell(wiring.Component):
    """One engine with its movers, each on its own flat AXI4 master port.

    Members: the engine's ``desc``, ``done``, ``busy``, ``error`` and its other
    non-channel members as they are; ``wr_busy`` (the write mover has a burst
    in flight); ``m_axi_rd<k>_*`` and ``m_axi_wr_*``.
    """

    def __init__(self, engine, hw: HwConfig):
        self._engine = engine
        self._hw = hw
        members = {}
        for name, member in engine.signature.members.items():
            if name not in ("rd", "wr"):
                members[name] = member
        self._reads = [ReadMover(hw.bus_width, max_outstanding=hw.max_outstanding)
                       for _ in range(len(engine.rd))]
        self._write = WriteMover(hw.bus_width, max_outstanding=hw.max_outstanding)
        for k, mover in enumerate(self._reads):
            members.update(axi_members(f"rd{k}", mover.axi.signature))
        members.update(axi_members("wr", self._write.axi.signature))
        members["wr_busy"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        engine = m.submodules.engine = self._engine
        for name, member in engine.signature.members.items():
            if name in ("rd", "wr"):
                continue
            if member.is_port:
                if member.flow == In:
                    m.d.comb += getattr(engine, name).eq(getattr(self, name))
                else:
                    m.d.comb += getattr(self, name).eq(getattr(engine, name))
            elif member.flow == In:
                wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(engine, name))
            else:
                wiring.connect(m, getattr(engine, name), wiring.flipped(getattr(self, name)))
        for k, mover in enumerate(self._reads):
            m.submodules[f"rd{k}"] = mover
            wiring.connect(m, engine.rd[k].req, mover.req)
            wiring.connect(m, mover.data, engine.rd[k].data)
            connect_flat(m, self, f"rd{k}", mover.axi)
        m.submodules.wr = self._write
        wiring.connect(m, engine.wr.req, self._write.req)
        wiring.connect(m, engine.wr.data, self._write.data)
        connect_flat(m, self, "wr", self._write.axi)
        m.d.comb += self.wr_busy.eq(self._write.busy)
        return m
