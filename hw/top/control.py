"""The control port ``s_axi_control``: an AXI4-Lite slave over the register map.

Two components of one concept each:

:class:`AxiLiteBridge`
    The AXI4-Lite protocol alone. It takes one write address and one write
    datum (each channel on its own, in either order), performs the write when
    it holds both and the response channel is free, and answers OKAY on B; it
    takes a read address when the R channel is free and answers the word the
    register file gives in that cycle, OKAY. One response per request, in
    order; ``bvalid``/``rvalid`` and their payloads hold until taken. Every
    ready comes from a register, never from a valid. Addresses select 32-bit
    words (the two low bits are ignored); ``wstrb`` selects the bytes written.
:class:`Control`
    The register file of :data:`moevit.hw.program.regmap.REGMAP` and the
    ``ap_ctrl_hs`` handshake of an XRT-managed Vitis RTL kernel (the rules and
    their sources are in :mod:`moevit.hw.program.regmap`).

The handshake, with the top on the other side (``start``, ``done``):

* A host write of 1 to ``ap_start`` sets it; when it is set and no run is in
  progress, the run starts: ``start`` pulses for one cycle, ``ap_idle`` falls,
  the arguments are copied to ``args`` (they hold for the whole run, whatever
  the host writes meanwhile) and the counters restart from 0.
* The top pulses ``done`` at the run's end (a ``done`` outside a run is
  ignored): ``ap_done`` and ``ap_ready`` are set (both clear when the host reads
  ``ap_ctrl``), ``ap_idle`` rises, ``isr.done`` / ``isr.ready`` are set where
  ``ier`` enables them, and ``ap_start`` takes the value of ``auto_restart``:
  with auto-restart the next run starts in the next cycle.
* A start written while a run is in progress is ignored (it neither queues
  a run nor disturbs this one) and flagged: ``error.start_while_busy`` reads 1
  until the next run starts. As in Vitis HLS, a host write and an event in the
  same cycle resolve as: the host's start wins over the handshake's clear; an
  event's set wins over a read's clear (``cor``) and over a write's toggle
  (``tow``).
* ``interrupt = gie.enable & (isr != 0)``.
* ``cycles`` counts the cycles of the run (from the one in which ``start``
  is high to the one of its ``done``, both included; ``done`` may come as
  early as with ``start``), ``busy_<unit>`` those of them in
  which the top's ``unit_busy.<unit>`` was high. Read them after ``ap_done``:
  a 64-bit counter read while it moves may tear between its two words.

Unmapped addresses read 0 and ignore writes, answered OKAY, as Vitis HLS's
generated control slaves answer every access (their ``RRESP``/``BRESP`` are
tied to OKAY); an SLVERR on a Zynq's general-purpose port would reach the CPU
as an external abort for a mistyped offset.

The Verilog ports of a top carry the names Vitis expects
(``s_axi_control_awaddr``, ...) when it is converted with :func:`vitis_ports`.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.program.regmap import REGMAP, WORD_BYTES, RegisterMap

__all__ = ["AxiLiteSignature", "AxiLiteBridge", "Control", "vitis_ports", "OKAY"]

OKAY = 0


class AxiLiteSignature(wiring.Signature):
    """An AXI4-Lite port of 32-bit data, as its manager drives it (slaves flip it).

    The members are AXI's signal names in lower case without the prefix
    (``awaddr``, ``awvalid``, ...); the optional ``prot`` signals are left
    out, as in Vitis RTL kernels.
    """

    def __init__(self, address_width: int):
        if not isinstance(address_width, int) or address_width < 3:
            raise TypeError(
                f"Address width must be an integer of at least 3, not {address_width!r}")
        self._address_width = address_width
        super().__init__({
            "awaddr": Out(address_width), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(address_width), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    @property
    def address_width(self) -> int:
        return self._address_width

    def __eq__(self, other):
        return isinstance(other, AxiLiteSignature) and other.address_width == self.address_width

    def __repr__(self):
        return f"AxiLiteSignature({self.address_width})"


def _access_signature(word_width):
    """The register file's side of the bridge: one write and one read per cycle at most."""
    return wiring.Signature({
        "write": Out(1), "write_word": Out(word_width), "write_data": Out(32),
        "write_strb": Out(4),
        "read": Out(1), "read_word": Out(word_width), "read_data": In(32),
    })


class AxiLiteBridge(wiring.Component):
    """AXI4-Lite slave protocol to single-cycle register accesses (see the module).

    Parameters
    ----------
    address_width : int

    Attributes
    ----------
    bus : In(AxiLiteSignature)
    access : Out(...)
        ``write`` pulses with ``write_word``, ``write_data``, ``write_strb``;
        ``read`` pulses with ``read_word``, and ``read_data`` is taken in the
        same cycle.
    """

    def __init__(self, address_width: int):
        self._address_width = address_width
        super().__init__({
            "bus": In(AxiLiteSignature(address_width)),
            "access": Out(_access_signature(address_width - 2)),
        })

    def elaborate(self, platform):
        m = Module()
        bus, access = self.bus, self.access

        aw_held, aw_word = Signal(), Signal(self._address_width - 2)
        w_held, w_data, w_strb = Signal(), Signal(32), Signal(4)
        bvalid, rvalid, rdata = Signal(), Signal(), Signal(32)
        m.d.comb += [bus.awready.eq(~aw_held), bus.wready.eq(~w_held),
                     bus.bvalid.eq(bvalid), bus.bresp.eq(OKAY),
                     bus.arready.eq(~rvalid), bus.rvalid.eq(rvalid), bus.rdata.eq(rdata),
                     bus.rresp.eq(OKAY)]

        with m.If(bus.awvalid & ~aw_held):
            m.d.sync += [aw_held.eq(1), aw_word.eq(bus.awaddr[2:])]
        with m.If(bus.wvalid & ~w_held):
            m.d.sync += [w_held.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(bvalid & bus.bready):
            m.d.sync += bvalid.eq(0)
        # The write happens once address and data are both held and B is free.
        m.d.comb += [access.write.eq(aw_held & w_held & ~bvalid), access.write_word.eq(aw_word),
                     access.write_data.eq(w_data), access.write_strb.eq(w_strb)]
        with m.If(access.write):
            m.d.sync += [aw_held.eq(0), w_held.eq(0), bvalid.eq(1)]

        m.d.comb += [access.read.eq(bus.arvalid & ~rvalid), access.read_word.eq(bus.araddr[2:])]
        with m.If(rvalid & bus.rready):
            m.d.sync += rvalid.eq(0)
        with m.If(access.read):
            m.d.sync += [rvalid.eq(1), rdata.eq(access.read_data)]
        return m


class Control(wiring.Component):
    """The ``s_axi_control`` register file with the ``ap_ctrl_hs`` handshake (see the module).

    Parameters
    ----------
    regmap : RegisterMap
        The register map (default :data:`~moevit.hw.program.regmap.REGMAP`).

    Attributes
    ----------
    s_axi_control : In(AxiLiteSignature)
        The host's port.
    interrupt : Out(1)
    start : Out(1)
        One cycle at the start of each run.
    done : In(1)
        One cycle from the top at the end of the run.
    args : Out(StructLayout)
        The argument registers (``args.program``, ``args.task``...) as they were
        at the run's start.
    report : In(StructLayout)
        The fields the top drives, by register (``report.status.instruction``,
        ``report.error.code``).
    unit_busy : In(StructLayout)
        One bit per counted unit (``unit_busy.linear``...).
    running : Out(1)
        A run is in progress (not ``ap_idle``).
    """

    def __init__(self, regmap: RegisterMap = REGMAP):
        if not isinstance(regmap, RegisterMap):
            self._MustUse__silence = True
            raise TypeError(f"Register map must be a RegisterMap, not {regmap!r}")
        self._regmap = regmap
        report = {reg.name: {f.name: f.width for f in reg.fields if f.source == "top"}
                  for reg in regmap}
        report = {name: data.StructLayout(fields) for name, fields in report.items() if fields}
        super().__init__({
            "s_axi_control": In(AxiLiteSignature(regmap.address_width)),
            "interrupt": Out(1),
            "start": Out(1),
            "done": In(1),
            "running": Out(1),
            "args": Out(data.StructLayout({reg.name: reg.bits for reg in regmap.arguments})),
            "report": In(data.StructLayout(report)),
            "unit_busy": In(data.StructLayout({unit: 1 for unit in regmap.units})),
        })

    @classmethod
    def from_config(cls, hw=None):
        """The control port of any hardware instance (the map does not depend on it)."""
        return cls()

    @property
    def regmap(self) -> RegisterMap:
        return self._regmap

    def elaborate(self, platform):
        m = Module()
        regmap = self._regmap
        m.submodules.bridge = bridge = AxiLiteBridge(regmap.address_width)
        wiring.connect(m, wiring.flipped(self.s_axi_control), bridge.bus)
        access = bridge.access

        # Storage of every field the host or an event writes; values of the others.
        value, stored = {}, {}
        for reg in regmap:
            for f in reg.fields:
                key = (reg.name, f.name)
                if f.source == "top":
                    value[key] = self.report[reg.name][f.name]
                elif f.access == "ro":
                    value[key] = Signal(f.width, name=f"{reg.name}_{f.name}")
                else:
                    value[key] = stored[key] = Signal(f.width, name=f"{reg.name}_{f.name}")

        def v(reg, name):
            return value[(reg, name)]

        running = Signal()
        start_now = Signal()
        done = Signal()
        m.d.comb += [start_now.eq(v("ap_ctrl", "ap_start") & ~running),
                     done.eq(self.done & running), self.running.eq(running),
                     v("ap_ctrl", "ap_idle").eq(~running)]
        isr = Cat(f for (r, _), f in stored.items() if r == "isr")
        m.d.comb += [self.interrupt.eq(v("gie", "enable") & isr.any()),
                     v("ap_ctrl", "interrupt").eq(self.interrupt)]

        # Reads: the word of the register file in the cycle the address is taken.
        with m.Switch(access.read_word):
            for reg in regmap:
                image = Signal(reg.bits, name=f"{reg.name}_image")
                m.d.comb += [image[f.bit:f.bit + f.width].eq(value[(reg.name, f.name)])
                             for f in reg.fields]
                for k in range(reg.words):
                    with m.Case(reg.offset // WORD_BYTES + k):
                        m.d.comb += access.read_data.eq(image[32 * k:32 * (k + 1)])
            with m.Default():
                m.d.comb += access.read_data.eq(0)

        # Host writes, field by field (in this order: events below win).
        bit_mask = Cat(b.replicate(8) for b in access.write_strb)
        for reg in regmap:
            for k in range(reg.words):
                hit = access.write & (access.write_word == reg.offset // WORD_BYTES + k)
                for f in reg.fields:
                    key = (reg.name, f.name)
                    low, high = max(f.bit, 32 * k), min(f.bit + f.width, 32 * (k + 1))
                    if key not in stored or low >= high:
                        continue
                    bits = stored[key][low - f.bit:high - f.bit]
                    wdata = access.write_data[low - 32 * k:high - 32 * k]
                    mask = bit_mask[low - 32 * k:high - 32 * k]
                    with m.If(hit):
                        if f.access == "rw":
                            m.d.sync += bits.eq((bits & ~mask) | (wdata & mask))
                        elif f.access == "tow":
                            m.d.sync += bits.eq(bits ^ (wdata & mask))
                        elif f.access == "coh":
                            with m.If(wdata & mask):
                                m.d.sync += bits.eq(1)

        # Reads clear the cor fields of the register read.
        for reg in regmap:
            for f in reg.fields:
                if f.access == "cor":
                    words = range(reg.offset // WORD_BYTES + f.bit // 32,
                                  reg.offset // WORD_BYTES + (f.bit + f.width - 1) // 32 + 1)
                    with m.If(access.read & Cat(access.read_word == w for w in words).any()):
                        m.d.sync += stored[(reg.name, f.name)].eq(0)

        # The handshake: start, done, auto-restart.
        ctrl = regmap["ap_ctrl"]
        host_start = (access.write & (access.write_word == ctrl.offset // WORD_BYTES)
                      & access.write_strb[0] & access.write_data[ctrl.field("ap_start").bit])
        m.d.sync += self.start.eq(start_now)
        with m.If(start_now):
            m.d.sync += [running.eq(1), v("error", "start_while_busy").eq(0),
                         self.args.eq(Cat(v(r.name, r.name) for r in regmap.arguments))]
        with m.If(host_start & running & ~done):
            m.d.sync += v("error", "start_while_busy").eq(1)
        with m.If(done):
            m.d.sync += [running.eq(0), v("ap_ctrl", "ap_done").eq(1),
                         v("ap_ctrl", "ap_ready").eq(1)]
            with m.If(~host_start):  # a start written in this very cycle wins
                m.d.sync += v("ap_ctrl", "ap_start").eq(v("ap_ctrl", "auto_restart"))
            for name in ("done", "ready"):
                with m.If(v("ier", name)):
                    m.d.sync += v("isr", name).eq(1)

        # Counters: from 0 at the start, then each cycle of the run.
        counters = [(v("cycles", "cycles"), Const(1))]
        counters += [(v(f"busy_{unit}", "cycles"), self.unit_busy[unit]) for unit in regmap.units]
        for counter, step in counters:
            with m.If(start_now):
                m.d.sync += counter.eq(0)
            with m.Elif(running):
                m.d.sync += counter.eq(counter + step)
        return m


def vitis_ports(component) -> dict:
    """``ports=`` for ``amaranth.back.verilog.convert``: each member path joined by ``_``,
    so that ``s_axi_control.awaddr`` becomes the ``s_axi_control_awaddr`` Vitis expects."""
    from amaranth.hdl import ValueCastable
    from amaranth.hdl._ir import PortDirection

    ports = {}
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        direction = PortDirection.Input if member.flow == In else PortDirection.Output
        ports["_".join(map(str, path))] = (value, direction)
    return ports
