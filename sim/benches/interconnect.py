"""cocotb bench of the top's memory interconnect (:mod:`moevit.hw.top.interconnect`).

The design (:class:`InterconnectBench`): ``reads`` requesters, each a
:class:`~moevit.hw.top.interconnect.Relocator` before a read mover, on one
:class:`~moevit.hw.top.interconnect.ReadArbiter`, and ``writes`` requesters,
each a relocator before a write mover, on one
:class:`~moevit.hw.top.interconnect.WriteArbiter`; the two arbitrated masters
reach one memory (cocotbext-axi's ``AxiRamRead`` and ``AxiRamWrite`` over one
``Memory``). Every requester's requests (program addresses), write data and
read data run at once, each stream with its own seeded gaps or back-pressure,
the memory's channels with their own pauses.

:func:`run_interconnect` returns the memory image after the run, the bytes each
read port received (per request, checked for ``last`` and ``bytes``), and the
relocators' ``error`` flags; the caller compares them with a model.
"""

import json
import os
from pathlib import Path

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.top.interconnect import (ReadArbiter, Relocator, WriteArbiter, bases_layout,
                                        bounds_layout)
from moevit.hw.top.movers import (ReadMover, WriteMover, axi_members, beat_layout,
                                  connect_flat, request_layout)

__all__ = ["InterconnectBench", "run_interconnect", "TOPLEVEL"]

TOPLEVEL = "moevit_interconnect"


class InterconnectBench(wiring.Component):
    """Requesters ``r<k>`` (``r<k>_req`` in, ``r<k>_data`` out) and ``w<k>`` (``w<k>_req``,
    ``w<k>_data`` in), each relocated and moved, arbitrated onto ``m_axi_rd_*`` and
    ``m_axi_wr_*``; ``bounds``, ``bases`` and ``image`` go to every relocator,
    ``r_error`` / ``w_error`` keep their error flags (until ``clear``), ``busy`` is
    any mover's."""

    def __init__(self, data_width, reads, writes, max_outstanding, buffer_beats=None):
        self._reads = [ReadMover(data_width, max_outstanding=max_outstanding)
                       for _ in range(reads)]
        self._writes = [WriteMover(data_width, max_outstanding=max_outstanding)
                        for _ in range(writes)]
        self._relocators = [Relocator() for _ in range(reads + writes)]
        self._read_arbiter = ReadArbiter(data_width, reads, max_outstanding,
                                         buffer_beats=buffer_beats)
        self._write_arbiter = WriteArbiter(data_width, writes, max_outstanding=max_outstanding)
        members = {"bounds": In(bounds_layout()), "bases": In(bases_layout()), "image": In(16),
                   "clear": In(1),
                   "r_error": Out(reads), "w_error": Out(writes), "busy": Out(1)}
        for k in range(reads):
            members[f"r{k}_req"] = In(stream.Signature(request_layout()))
            members[f"r{k}_data"] = Out(stream.Signature(beat_layout(data_width)))
        for k in range(writes):
            members[f"w{k}_req"] = In(stream.Signature(request_layout()))
            members[f"w{k}_data"] = In(stream.Signature(data_width))
        members.update(axi_members("rd", self._read_arbiter.axi.signature))
        members.update(axi_members("wr", self._write_arbiter.axi.signature))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.read_arbiter = self._read_arbiter
        m.submodules.write_arbiter = self._write_arbiter
        errors = []
        movers = [("r", k, mover, self._read_arbiter) for k, mover in enumerate(self._reads)]
        movers += [("w", k, mover, self._write_arbiter) for k, mover in enumerate(self._writes)]
        for (side, k, mover, arbiter), relocator in zip(movers, self._relocators):
            m.submodules[f"{side}{k}_relocator"] = relocator
            m.submodules[f"{side}{k}_mover"] = mover
            m.d.comb += [relocator.bounds.eq(self.bounds), relocator.bases.eq(self.bases),
                         relocator.image.eq(self.image)]
            wiring.connect(m, wiring.flipped(getattr(self, f"{side}{k}_req")), relocator.i)
            wiring.connect(m, relocator.o, mover.req)
            if side == "r":
                wiring.connect(m, mover.data, wiring.flipped(getattr(self, f"r{k}_data")))
            else:
                wiring.connect(m, wiring.flipped(getattr(self, f"w{k}_data")), mover.data)
            wiring.connect(m, mover.axi, arbiter.ports[k])
            errors.append(relocator.error)
        flags = Signal(len(errors))
        m.d.sync += flags.eq(Mux(self.clear, 0, flags) | Cat(*errors))
        m.d.comb += Cat(self.r_error, self.w_error).eq(flags)
        m.d.comb += [self.busy.eq(Cat(*[mv.busy for mv in self._reads + self._writes]).any())]
        connect_flat(m, self, "rd", self._read_arbiter.axi)
        connect_flat(m, self, "wr", self._write_arbiter.axi)
        return m


def run_interconnect(data_width, max_outstanding, memory, relocation, reads, writes, *, test_id,
                     seed=0, simulator=None, pauses="random", probability=0.3,
                     buffer_beats=None, hold_first=False, timeout_cycles=1_000_000):
    """Run the requests on :class:`InterconnectBench` over ``memory`` (a uint8 array).

    ``relocation``: the relocators' inputs, a dict of ``bounds`` and ``bases`` (dicts
    of :func:`bounds_layout` and :func:`bases_layout`) and ``image``;
    ``reads``: per read port a list of ``(addr, length, good)``, ``good`` false for a
    request the relocator drops (no bytes come back); ``writes``: per write port a
    list of ``(addr, length, data)``, ``data`` None for a request the relocator
    drops (no bytes are sent for it). Addresses are the program's. ``buffer_beats``:
    the read arbiter's. ``hold_first``: read port 0 takes no beat before every other
    read port has all of its own (a consumer that waits on another port). Returns ``(memory_after, summary)``; the summary has
    ``received`` (per read port, per request its bytes as a hex string), ``r_error``,
    ``w_error``, ``cycles`` and ``seconds``.
    """
    from moevit.hw.generate import to_verilog

    from moevit.paths import build_dir
    from moevit.sim.runner import run_cocotb, sim_folder
    from moevit.sim.streams import pack

    folder = build_dir("sim", "_rtl", sim_folder(test_id).name)
    source = folder / f"{TOPLEVEL}.v"
    bench = InterconnectBench(data_width, len(reads), len(writes), max_outstanding,
                              buffer_beats)
    source.write_text(to_verilog(bench, TOPLEVEL))
    image = (folder / "memory.bin").resolve()
    np.asarray(memory, np.uint8).tofile(image)
    case = {"data_width": data_width, "memory": str(image), "size": int(len(memory)),
            "bounds": pack(bounds_layout(), relocation["bounds"]),
            "bases": pack(bases_layout(), relocation["bases"]), "image": relocation["image"],
            "reads": [[[int(a), int(n), bool(good)] for a, n, good in port] for port in reads],
            "writes": [[[int(a), int(n), None if d is None else bytes(d).hex()]
                        for a, n, d in port] for port in writes],
            "seed": int(seed), "pauses": pauses, "probability": float(probability),
            "hold_first": bool(hold_first),
            "timeout_cycles": int(timeout_cycles)}
    result = run_cocotb(toplevel=TOPLEVEL, sources=[source], test_module=__name__,
                        test_id=test_id, simulator=simulator,
                        env={"MOEVIT_CASE": json.dumps(case)})
    after = np.fromfile(result.output("memory.bin"), np.uint8)
    summary = result.json("summary.json")
    summary["seconds"] = result.seconds
    return after, summary


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
    from cocotbext.axi import AxiRamRead, AxiRamWrite, AxiReadBus, AxiWriteBus
    from cocotbext.axi.memory import Memory

    from moevit.sim.benches.common import start
    from moevit.sim.streams import StreamSink, StreamSource
    from moevit.sim.streams import pauses as pause_pattern

    def _beats(payload, nbytes):
        beats = -(-len(payload) // nbytes)
        padded = payload + bytes(beats * nbytes - len(payload))
        return [int.from_bytes(padded[k * nbytes:(k + 1) * nbytes], "little")
                for k in range(beats)]

    def _request(addr, length):
        return addr | length << 64

    def _split(beats, lengths, width, where):
        """Per request its bytes, checking ``last`` and ``bytes`` of every beat."""
        nbytes, mask, out, k = width // 8, (1 << width) - 1, [], 0
        for r, length in enumerate(lengths):
            n = -(-length // nbytes)
            mine = beats[k:k + n]
            k += n
            lasts = [(b >> width) & 1 for b in mine]
            assert lasts == [0] * (n - 1) + [1], f"{where} request {r}: last flags {lasts}"
            counts = [b >> (width + 1) for b in mine]
            tail = length - (n - 1) * nbytes
            assert counts == [nbytes] * (n - 1) + [tail], \
                f"{where} request {r}: bytes fields {counts}"
            raw = b"".join((b & mask).to_bytes(nbytes, "little") for b in mine)
            out.append(raw[:length].hex())
        return out

    async def held_until_taken(dut, prefix, names, failures):
        """AXI's rule on the shared master: a valid ``prefix`` beat holds its payload
        until it is taken (the arbiter may not switch ports under it)."""
        valid, ready = getattr(dut, f"{prefix}valid"), getattr(dut, f"{prefix}ready")
        offered = None
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if not int(valid.value):
                # No beat: the payload may be anything, X from a RAM not yet written too.
                if offered is not None:
                    failures.append(f"{prefix}: beat {offered} withdrawn before taken")
                offered = None
                continue
            values = [getattr(dut, f"{prefix}{n}").value for n in names]
            if not all(v.is_resolvable for v in values):
                failures.append(f"{prefix}: a valid beat with X or Z in {values}")
                return
            now = tuple(int(v) for v in values)
            if offered is not None and now != offered:
                failures.append(f"{prefix}: beat {offered} changed to {now} before taken")
            offered = now if not int(ready.value) else None

    @cocotb.test()
    async def interconnect_runs(dut):
        case = json.loads(os.environ["MOEVIT_CASE"])
        out = Path(os.environ["MOEVIT_SIM_OUT"])
        width, seed, p = case["data_width"], case["seed"], case["probability"]
        nbytes = width // 8
        kind = case["pauses"]
        for name in ("bounds", "bases", "image"):
            getattr(dut, name).value = case[name]
        dut.clear.value = 1
        for k in range(len(case["reads"])):
            getattr(dut, f"r{k}_req__valid").value = 0
        for k in range(len(case["writes"])):
            getattr(dut, f"w{k}_req__valid").value = 0
            getattr(dut, f"w{k}_data__valid").value = 0
        await start(dut)
        mem = Memory(size=case["size"])
        mem.write(0, Path(case["memory"]).read_bytes())
        rams = {"m_axi_rd": AxiRamRead(AxiReadBus.from_prefix(dut, "m_axi_rd"), dut.clk,
                                       mem=mem.mem),
                "m_axi_wr": AxiRamWrite(AxiWriteBus.from_prefix(dut, "m_axi_wr"), dut.clk,
                                        mem=mem.mem)}
        if kind != "none":
            for name, ram in rams.items():
                for channel in (("ar", "r") if name == "m_axi_rd" else ("aw", "w", "b")):
                    getattr(ram, f"{channel}_channel").set_pause_generator(pause_pattern(
                        kind, seed=seed, stream=f"{name}.{channel}", probability=p))
        await ClockCycles(dut.clk, 2)
        dut.clear.value = 0

        def gaps(name):
            return pause_pattern(kind, seed=seed, stream=name, probability=p)

        sources, sinks, lengths = [], [], []
        for k, port in enumerate(case["reads"]):
            source = StreamSource(dut, f"r{k}_req", dut.clk, pause=gaps(f"r{k}_req"))
            source.send(_request(a, n) for a, n, _ in port)
            sources.append(source)
            if k == 0 and case["hold_first"]:   # made once the other ports have their beats
                dut.r0_data__ready.value = 0
                sinks.append(None)
            else:
                sinks.append(StreamSink(dut, f"r{k}_data", dut.clk,
                                        pause=None if kind == "none" else gaps(f"r{k}_data")))
            lengths.append([n for _, n, good in port if good])
        for k, port in enumerate(case["writes"]):
            source = StreamSource(dut, f"w{k}_req", dut.clk, pause=gaps(f"w{k}_req"))
            source.send(_request(a, n) for a, n, _ in port)
            data = StreamSource(dut, f"w{k}_data", dut.clk, pause=gaps(f"w{k}_data"))
            data.send(beat for _, _, d in port if d is not None
                      for beat in _beats(bytes.fromhex(d), nbytes))
            sources += [source, data]

        protocol = []
        watchers = [cocotb.start_soon(held_until_taken(dut, prefix, names, protocol))
                    for prefix, names in (("m_axi_rd_ar", ("addr", "len")),
                                          ("m_axi_wr_aw", ("addr", "len")),
                                          ("m_axi_wr_w", ("data", "strb", "last")))]
        cycles = 0

        async def count():
            nonlocal cycles
            while True:
                await RisingEdge(dut.clk)
                cycles += 1
                assert cycles < case["timeout_cycles"], \
                    f"no end after {cycles} cycles (a deadlock?)"
        counter = cocotb.start_soon(count())
        beats = [sum(-(-n // nbytes) for n in port) for port in lengths]
        if case["hold_first"]:
            for k in range(1, len(sinks)):
                await sinks[k].receive(beats[k])
            sinks[0] = StreamSink(dut, "r0_data", dut.clk, pause=None)
        for k, sink in enumerate(sinks):
            await sink.receive(beats[k])
        for source in sources:
            await source.wait()
        await RisingEdge(dut.clk)
        while int(dut.busy.value):
            await RisingEdge(dut.clk)
        await ClockCycles(dut.clk, 4)
        counter.cancel()
        for watcher in watchers:
            watcher.cancel()
        assert not protocol, "; ".join(protocol[:3])
        received = [_split(sink.beats, lengths[k], width, f"read port {k}")
                    for k, sink in enumerate(sinks)]
        for k, sink in enumerate(sinks):
            assert len(sink.beats) == sum(-(-n // nbytes) for n in lengths[k]), \
                f"read port {k}: {len(sink.beats)} beats, more than requested"
        (out / "memory.bin").write_bytes(mem.read(0, case["size"]))
        (out / "summary.json").write_text(json.dumps({
            "received": received, "cycles": cycles,
            "r_error": [int(dut.r_error.value) >> k & 1 for k in range(len(sinks))],
            "w_error": [int(dut.w_error.value) >> k & 1 for k in range(len(case["writes"]))]}))
