"""The wrapper every check puts around its design: a clock, the stream rules of every
stream member, held configuration inputs and the check's own properties.

:class:`Harness` finds each ``amaranth.lib.stream`` member of a component (at
any depth: ``rd[0].req``, ``desc``, ``o``) by its ``valid``/``ready``/``payload``
ports. For a stream the component receives it *assumes* the sender's rules;
for one it sends it *asserts* them (:func:`~moevit.hw.formal.rules.handshake_rules`).
Every other input is free in each cycle unless named in ``hold``, where it is
one value for the whole run (the configuration a unit's contract says holds
still: a GELU's constants, a relocator's bases).

The check starts from the design's reset state (every register at its
``init``), and the reset is never asserted afterwards.
"""

from amaranth.hdl import Assume, ClockDomain, Elaboratable, Module, Value, ValueCastable
from amaranth.hdl._ir import PortDirection
from amaranth.lib.wiring import In

from moevit.hw.formal.rules import after_first, handshake_rules, past

__all__ = ["Harness", "stream_members", "flat_ports"]


def _value(v):
    return v.as_value() if isinstance(v, ValueCastable) else Value.cast(v)


def flat_ports(component):
    """``{name: (path, flow, value)}`` of every port of ``component``, the path joined by ``_``."""
    return {"_".join(map(str, path)): (path, member.flow, value)
            for path, member, value in component.signature.flatten(component)}


def stream_members(component):
    """``(name, valid, ready, payload, sent)`` for each stream member of ``component``;
    ``sent``: the component drives ``valid`` (it is the stream's source)."""
    ports = {path: (flow, value) for _, (path, flow, value) in flat_ports(component).items()}
    found = []
    for path, (flow, valid) in ports.items():
        if path[-1] != "valid" or path[:-1] + ("ready",) not in ports:
            continue
        stem = path[:-1]
        payload = ports.get(stem + ("payload",), (None, None))[1]
        name = "_".join(map(str, stem))
        found.append((name, valid, ports[stem + ("ready",)][1], payload, flow != In))
    return found


class Harness(Elaboratable):
    """A component under check, with its rules and ``properties``.

    Parameters
    ----------
    dut : wiring.Component
        The design; its ports become the check's inputs and outputs.
    properties : sequence of callables
        Each ``prop(m, dut, live)`` adds statements to the harness module ``m``
        (``live`` is high from the second cycle on).
    hold : sequence of str
        Names of ``dut``'s inputs (flattened with ``_``: ``rd_0_req_valid``) that
        keep one value for the whole run.
    streams : bool
        Add the handshake rules of every stream member.
    ruled_apart : sequence of str
        Stream members (by name: ``issue``, ``rd_0_req``) whose rules a property adds
        itself, with the design's own exception (a run's abort withdraws an offer).
    elaborated : Elaboratable, optional
        What to instantiate instead of ``dut`` itself: its already elaborated
        module, when a property reads a signal inside it.
    clocked : bool
        The harness makes the ``sync`` domain (its clock the input ``clk``, no
        reset); ``False`` for a design that makes its own from its ports (the top).
    """

    def __init__(self, dut, properties=(), *, hold=(), streams=True, ruled_apart=(),
                 elaborated=None, clocked=True):
        self.dut = dut
        self._properties = list(properties)
        self._hold = list(hold)
        self._streams = streams
        self._apart = set(ruled_apart)
        self._elaborated = elaborated
        if elaborated is not None:
            dut._MustUse__silence = True  # used through its elaborated module
        self._cd = ClockDomain("sync") if clocked else None
        inputs = [name for name, (_, flow, _) in flat_ports(dut).items() if flow == In]
        for name in self._hold:
            if name not in inputs:
                self._MustUse__silence = True  # refused, never elaborated
                raise ValueError(f"{type(dut).__name__} has no input {name!r} to hold")

    def ports(self) -> dict:
        """``ports=`` for :func:`amaranth.back.rtlil.convert`."""
        ports = {name: (_value(value), PortDirection.Input if flow == In else PortDirection.Output)
                 for name, (_, flow, value) in flat_ports(self.dut).items()}
        if self._cd is not None:
            ports["clk"] = (self._cd.clk, PortDirection.Input)
        return ports

    def elaborate(self, platform):
        m = Module()
        if self._cd is not None:
            m.domains.sync = self._cd
            m.d.comb += self._cd.rst.eq(0)
        m.submodules.dut = self._elaborated if self._elaborated is not None else self.dut
        live = after_first(m)
        for name, (_, flow, value) in flat_ports(self.dut).items():
            if flow == In and name in self._hold:
                before = past(m, value, name)
                with m.If(live):
                    m.d.comb += Assume(_value(value) == before)
        if self._streams:
            for name, valid, ready, payload, sent in stream_members(self.dut):
                if name in self._apart:
                    continue
                handshake_rules(m, valid, ready, [] if payload is None else payload,
                                assume=not sent, name=name, live=live)
        for prop in self._properties:
            prop(m, self.dut, live)
        return m
