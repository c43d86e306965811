"""cocotb bench of the memory movers (``moevit.hw.top.movers.MemoryPort``).

The design is a read and a write mover on one AXI4 port ``m_axi_mem_*``;
the memory is cocotbext-axi's ``AxiRam`` (:class:`FaultyRam`: it answers
SLVERR or DECERR for the address ranges a run names), with pause generators
on its five channels to limit its bandwidth. The case (``$MOEVIT_CASE``,
JSON) holds the design point and the *runs*, simulated one after the other
without a reset between them. A run (see :func:`run_spec`) is

* ``reads`` and ``writes``: lists of ``[addr, length]`` requests, sent back to
  back (reads and writes at the same time, on disjoint regions), with seeded
  gaps on the request and write-data streams and back-pressure on the read
  data, or
* ``serial`` true: each request alone, the mover idle before the next one, so
  that what a failing request left behind is checked request by request.

Before a run every region (each request's bytes and a guard of ``GUARD``
bytes either side) is filled with a seeded pattern. After it the bench checks,
in full: every beat read equals the memory's bytes (ragged tail lanes 0),
``last`` exactly on each request's final beat; every byte of a write
region is the written data and every guard byte is the pattern; a monitor of
the AR and AW channels checks every burst (INCR, the full width, at most 256
beats, aligned, never across 4 KiB, inside a request) and of the W channel
that no strobe falls outside its request; ``failures`` and ``error`` are what
the run's faults imply; ``busy`` is low at the end. ``summary.json`` gets per
run the cycles (first request taken to last read beat, to the write mover's
last B) and the bursts seen.
"""

import json
import os
import random
from pathlib import Path

__all__ = ["GUARD", "AXIRAM_LATENCY", "TOPLEVEL", "run_spec", "fault_of", "run_movers"]

GUARD = 64   # bytes of pattern checked either side of each request
# cocotbext-axi's AxiRam with no pauses: the first R beat 2 cycles after its AR,
# a B 2 cycles after the burst's last W beat (the cost models' ``latency``).
AXIRAM_LATENCY = 2


def run_spec(*, reads=(), writes=(), serial=False, seed=0, gaps="none", stall="none",
             memory="none", probability=0.3, faults=()):
    """One run of the bench as JSON data.

    Parameters
    ----------
    reads, writes : list of (addr, length)
    serial : bool
        One request at a time, reads then writes (for failing requests).
    seed : int
        Seeds the data, the patterns and the pauses.
    gaps, stall, memory : str
        Pause kinds (:data:`moevit.sim.streams.PAUSE_KINDS`) of the request and
        write-data streams, of the read data, of the memory's channels.
    probability : float
        Of a pause, for the random kinds.
    faults : list of (start, end, resp)
        Byte ranges ``[start, end)`` the memory answers with ``resp``
        (``"SLVERR"`` or ``"DECERR"``).
    """
    return {"reads": [list(map(int, r)) for r in reads],
            "writes": [list(map(int, w)) for w in writes], "serial": bool(serial),
            "seed": int(seed), "gaps": gaps, "stall": stall, "memory": memory,
            "probability": float(probability),
            "faults": [[int(a), int(b), str(kind)] for a, b, kind in faults]}


def fault_of(request, faults, data_width):
    """The response a request meets: that of the first fault range one of its bursts
    touches (whole beats are read or written), or None."""
    nbytes = data_width // 8
    addr, length = request
    end = addr + -(-length // nbytes) * nbytes
    for start, stop, kind in faults:
        if start < end and addr < stop:
            return kind
    return None


TOPLEVEL = "moevit_mover"


def run_movers(data_width, max_outstanding, runs, *, test_id, simulator=None):
    """Simulate ``runs`` (:func:`run_spec`) on a :class:`~moevit.hw.top.movers.MemoryPort`
    of ``data_width`` bits and ``max_outstanding`` bursts; returns ``(summary, SimResult)``,
    the summary a list with one entry per run (cycles and bursts, or outcomes)."""
    from moevit.hw.generate import to_verilog

    from moevit.hw.top.movers import MemoryPort
    from moevit.paths import build_dir
    from moevit.sim.runner import run_cocotb, sim_folder

    folder = build_dir("sim", "_rtl", sim_folder(test_id).name)
    source = folder / f"{TOPLEVEL}.v"
    port = MemoryPort("mem", data_width, max_outstanding=max_outstanding)
    source.write_text(to_verilog(port, TOPLEVEL))
    case = {"data_width": data_width, "max_outstanding": max_outstanding, "runs": list(runs)}
    result = run_cocotb(toplevel=TOPLEVEL, sources=[source], test_module=__name__,
                        test_id=test_id, simulator=simulator,
                        env={"MOEVIT_CASE": json.dumps(case)})
    return result.json("summary.json"), result


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.triggers import ClockCycles, RisingEdge, with_timeout
    from cocotb.utils import get_sim_time
    from cocotbext.axi import AxiBus, AxiRam
    from cocotbext.axi.axi_channels import AxiARMonitor, AxiAWMonitor, AxiWMonitor
    from cocotbext.axi.constants import AxiResp as Resp

    from moevit.hw.top.movers import MAX_BURST, PAGE_BYTES, MoverError
    from moevit.sim.benches.common import CLOCK_NS, start
    from moevit.sim.streams import StreamSink, StreamSource, pauses

    class FaultyRam(AxiRam):
        """``AxiRam`` that answers SLVERR or DECERR for the byte ranges in ``faults``,
        ``(start, end, kind)`` or ``(start, end, kind, "read" | "write")`` for one side
        only: the read or write of a beat there raises, which the model answers SLVERR;
        the channel's ``send`` turns it into the range's response."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.faults = []
            for side, channel in ((self.read_if, "r_channel"), (self.write_if, "b_channel")):
                self._hook(side, channel)

        def _hook(self, side, channel):
            port = getattr(side, channel)
            send = port.send
            pending = []
            ram = self

            direction = "read" if channel == "r_channel" else "write"

            def hit(addr, length):
                for start, stop, kind, *only in ram.faults:
                    if start < addr + length and addr < stop and only in ([], [direction]):
                        return kind
                return None

            access = side._read if channel == "r_channel" else side._write

            async def checked(address, data_or_length):
                length = data_or_length if isinstance(data_or_length, int) \
                    else len(data_or_length)
                kind = hit(address, length)
                if kind:
                    pending.append(kind)
                    raise IOError(f"fault {kind} at {address:#x}")
                return await access(address, data_or_length)

            async def answer(item):
                resp = getattr(item, "rresp" if channel == "r_channel" else "bresp")
                if int(resp) == Resp.SLVERR and pending:
                    kind = pending[-1]
                    pending.clear()
                    if channel == "r_channel":
                        item.rresp = Resp[kind]
                    else:
                        item.bresp = Resp[kind]
                else:
                    pending.clear()
                await send(item)

            if channel == "r_channel":
                side._read = checked
            else:
                side._write = checked
            port.send = answer

    class Monitor:
        """Checks every AR/AW burst and W strobe against the requests in order."""

        def __init__(self, dut, bus, nbytes):
            self.nbytes = nbytes
            self.size = (nbytes - 1).bit_length()
            self.ar = AxiARMonitor(bus.read.ar, dut.clk)
            self.aw = AxiAWMonitor(bus.write.aw, dut.clk)
            self.w = AxiWMonitor(bus.write.w, dut.clk)
            self.bursts = {"read": 0, "write": 0}
            self.errors = []
            self.writes = []     # the write requests the mover takes, in order
            self._tasks = [cocotb.start_soon(self._bursts("read", self.ar, "ar")),
                           cocotb.start_soon(self._bursts("write", self.aw, "aw")),
                           cocotb.start_soon(self._strobes())]
            self._aw_seen = []   # (addr, beats) of AW bursts, for the W check
            self._aw_event = cocotb.triggers.Event()
            self.expect = {"read": [], "write": []}   # requests whose bursts come next

        def fail(self, text):
            self.errors.append(text)

        def _owner(self, kind, addr, end):
            """The request the burst [addr, end) continues: it must start where the
            head request's bursts so far end, and stay inside it (whole beats)."""
            queue = self.expect[kind]
            if not queue:
                return None
            start, length, covered = queue[0]
            stop = start + -(-length // self.nbytes) * self.nbytes
            if addr != covered or end > stop:
                return None
            if end == stop:
                queue.pop(0)
            else:
                queue[0] = (start, length, end)
            return (start, length)

        async def _bursts(self, kind, monitor, p):
            while True:
                burst = await monitor.recv()
                addr = int(getattr(burst, f"{p}addr"))
                beats = int(getattr(burst, f"{p}len")) + 1
                end = addr + beats * self.nbytes
                self.bursts[kind] += 1
                what = f"{kind} burst {addr:#x}+{beats} beats"
                if int(getattr(burst, f"{p}size")) != self.size:
                    self.fail(f"{what}: size {int(getattr(burst, f'{p}size'))} != {self.size}")
                if int(getattr(burst, f"{p}burst")) != 1:
                    self.fail(f"{what}: not INCR")
                if beats > MAX_BURST:
                    self.fail(f"{what}: more than {MAX_BURST} beats")
                if addr % self.nbytes:
                    self.fail(f"{what}: not aligned")
                if addr // PAGE_BYTES != (end - 1) // PAGE_BYTES:
                    self.fail(f"{what}: crosses a 4 KiB boundary")
                owner = self._owner(kind, addr, end)
                if owner is None:
                    self.fail(f"{what}: outside the pending requests {self.expect[kind][:2]}")
                if kind == "write":
                    self._aw_seen.append((addr, beats, owner))
                    self._aw_event.set()

        async def _strobes(self):
            while True:
                while not self._aw_seen:
                    self._aw_event.clear()
                    await self._aw_event.wait()
                addr, beats, owner = self._aw_seen.pop(0)
                for k in range(beats):
                    w = await self.w.recv()
                    strb = int(w.wstrb)
                    if int(w.wlast) != (k == beats - 1):
                        self.fail(f"write burst {addr:#x}: wlast on beat {k} of {beats}")
                    if owner is None:
                        continue
                    base = addr + k * self.nbytes
                    for lane in range(self.nbytes):
                        byte = base + lane
                        inside = owner[0] <= byte < owner[0] + owner[1]
                        if (strb >> lane) & 1 and not inside:
                            self.fail(f"write strobe at {byte:#x} outside the request "
                                      f"{owner[0]:#x}+{owner[1]}")
                        if inside and not (strb >> lane) & 1:
                            self.fail(f"write strobe missing at {byte:#x} of the request "
                                      f"{owner[0]:#x}+{owner[1]}")

        def stop(self):
            for task in self._tasks:
                task.cancel()

    def _pattern(rng, n):
        return bytes(rng.getrandbits(8) for _ in range(n))

    def _beats(payload, nbytes):
        """A request's bytes as data beats (the last one zero-padded)."""
        beats = -(-len(payload) // nbytes)
        padded = payload + bytes(beats * nbytes - len(payload))
        return [int.from_bytes(padded[k * nbytes:(k + 1) * nbytes], "little")
                for k in range(beats)]

    def _good(request, nbytes):
        addr, length = request
        return addr % nbytes == 0 and length > 0 and addr + length <= 2**64

    class Bench:
        def __init__(self, dut, case):
            self.dut = dut
            self.width = case["data_width"]
            self.nbytes = self.width // 8
            bus = AxiBus.from_prefix(dut, "m_axi_mem")
            # Made after the reset: no reset handle, the models start at once. Its
            # size must fit a Python index: it wraps addresses modulo 2**62 (the
            # monitor sees the 64 address bits the mover drives).
            self.ram = FaultyRam(bus, dut.clk, size=2**62)
            self.monitor = Monitor(dut, bus, self.nbytes)
            self.failures = {"rd": 0, "wr": 0}

        def _channels(self):
            ram = self.ram
            return {"ar": ram.read_if.ar_channel, "r": ram.read_if.r_channel,
                    "aw": ram.write_if.aw_channel, "w": ram.write_if.w_channel,
                    "b": ram.write_if.b_channel}

        def _limit_memory(self, run):
            for name, channel in self._channels().items():
                if run["memory"] == "none":
                    channel.set_pause_generator(None)
                    channel.pause = False   # the generator may have stopped in a pause
                else:
                    channel.set_pause_generator(pauses(
                        run["memory"], seed=run["seed"], stream=f"mem.{name}",
                        probability=run["probability"]))

        def _fill(self, run, rng):
            """The pattern over every region and its guards; returns the expected image."""
            image = {}
            for addr, length in run["reads"] + run["writes"]:
                lo = max(0, addr - GUARD)
                hi = min(2**64, addr + max(length, 0) + self.nbytes + GUARD)
                block = _pattern(rng, hi - lo)
                self.ram.write(lo % self.ram.size, block)
                image[lo] = bytearray(block)
            return image

        def _check_image(self, image, where):
            for lo, block in image.items():
                got = self.ram.read(lo % self.ram.size, len(block))
                if got != bytes(block):
                    k = next(i for i in range(len(block)) if got[i] != block[i])
                    raise AssertionError(
                        f"{where}: memory at {lo + k:#x} is {got[k]:#04x}, expected "
                        f"{block[k]:#04x} ({sum(a != b for a, b in zip(got, block))} bytes "
                        f"differ in the region {lo:#x}+{len(block)})")

        def _expected_read(self, image, request):
            addr, length = request
            for lo, block in image.items():
                if lo <= addr and addr + length <= lo + len(block):
                    return bytes(block[addr - lo:addr - lo + length])
            raise AssertionError(f"read {addr:#x}+{length} outside the filled regions")

        async def _wait_idle(self, name, limit):
            dut = self.dut
            busy = getattr(dut, f"{name}_busy")
            for _ in range(limit):
                await RisingEdge(dut.clk)
                if not int(busy.value):
                    return get_sim_time(unit="ns")
            raise AssertionError(f"{name} mover still busy after {limit} cycles")

        async def _write_end(self, sources, limit):
            """When the write mover falls idle after its last request and beat."""
            for name in ("wr_req", "wr_data"):
                await sources[name].wait()
            return await self._wait_idle("wr", limit)

        def _expect_failures(self, name, count, codes, where):
            dut = self.dut
            self.failures[name] = (self.failures[name] + count) % 2**16
            got = int(getattr(dut, f"{name}_failures").value)
            assert got == self.failures[name], (
                f"{where}: {name} failures counter {got}, expected {self.failures[name]}")
            if codes is not None:
                code = int(getattr(dut, f"{name}_error").value)
                assert code in [c.value for c in codes], (
                    f"{where}: {name} error {MoverError(code).name}, expected one of "
                    f"{[c.name for c in codes]}")

        def _streams(self, run):
            dut, seed, p = self.dut, run["seed"], run["probability"]
            gap = {name: pauses(run["gaps"], seed=seed, stream=name, probability=p)
                   for name in ("rd_req", "wr_req", "wr_data")}
            sources = {name: StreamSource(dut, name, dut.clk, pause=gap[name],
                                          record_times=name.endswith("req"))
                       for name in gap}
            stall = None if run["stall"] == "none" else pauses(
                run["stall"], seed=seed, stream="rd_data", probability=p)
            sink = StreamSink(dut, "rd_data", dut.clk, pause=stall)
            return sources, sink

        def _split(self, beats, requests, where):
            """Per request its beats (``last`` only on the final one) as bytes."""
            out, k, mask = [], 0, (1 << self.width) - 1
            for r, (addr, length) in enumerate(requests):
                n = -(-length // self.nbytes)
                mine = beats[k:k + n]
                k += n
                lasts = [(b >> self.width) & 1 for b in mine]
                assert lasts == [0] * (n - 1) + [1], (
                    f"{where} read {r} ({addr:#x}+{length}): last flags {lasts}")
                counts = [b >> (self.width + 1) for b in mine]
                tail = length - (n - 1) * self.nbytes
                assert counts == [self.nbytes] * (n - 1) + [tail], (
                    f"{where} read {r} ({addr:#x}+{length}): bytes fields {counts}")
                raw = b"".join((b & mask).to_bytes(self.nbytes, "little") for b in mine)
                assert raw[length:] == bytes(len(raw) - length), (
                    f"{where} read {r}: lanes past the end are not 0")
                out.append(raw[:length])
            return out

        def _compare(self, got, want, where):
            if got != want:
                k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                         min(len(got), len(want)))
                raise AssertionError(f"{where}: {len(got)} bytes, expected {len(want)}; first "
                                     f"difference at byte {k}")

        async def run_parallel(self, run, r):
            """Reads and writes back to back at once; returns the run's summary."""
            dut, rng = self.dut, random.Random(run["seed"])
            where = f"run {r} (seed {run['seed']})"
            image = self._fill(run, rng)
            self._limit_memory(run)
            self.ram.faults = []
            reads, writes = run["reads"], run["writes"]
            payloads = [_pattern(rng, length) for _, length in writes]
            sources, sink = self._streams(run)
            self.monitor.expect["read"] = [(a, n, a) for a, n in reads]
            self.monitor.expect["write"] = [(a, n, a) for a, n in writes]
            before = dict(self.monitor.bursts)
            sources["rd_req"].send(addr | length << 64 for addr, length in reads)
            sources["wr_req"].send(addr | length << 64 for addr, length in writes)
            for data in payloads:
                sources["wr_data"].send(_beats(data, self.nbytes))
            total = sum(-(-length // self.nbytes) for _, length in reads)
            limit = 200 * (total + sum(-(-n // self.nbytes) for _, n in writes)) + 5_000
            summary = {"read_cycles": None, "write_cycles": None}
            write_end = cocotb.start_soon(self._write_end(sources, limit)) if writes else None
            if reads:
                await with_timeout(sink.receive(total), limit * CLOCK_NS, "ns")
                end = get_sim_time(unit="ns")
                summary["read_cycles"] = round((end - sources["rd_req"].times[0]) / CLOCK_NS)
            for source in sources.values():
                await source.wait()
            if writes:
                end = await write_end
                summary["write_cycles"] = round((end - sources["wr_req"].times[0]) / CLOCK_NS)
            await self._wait_idle("rd", limit)
            await ClockCycles(dut.clk, 8)
            assert len(sink.beats) == total, f"{where}: {len(sink.beats) - total} extra beats"
            for source in sources.values():
                source.stop()
            sink.stop()
            got = self._split(sink.beats, reads, where)
            for k, request in enumerate(reads):
                self._compare(got[k], self._expected_read(image, request),
                              f"{where} read {k} {request[0]:#x}+{request[1]}")
            for (addr, length), data in zip(writes, payloads):
                for lo, block in image.items():
                    if lo <= addr < lo + len(block):
                        block[addr - lo:addr - lo + length] = data
            self._check_image(image, where)
            self._expect_failures("rd", 0, None, where)
            self._expect_failures("wr", 0, None, where)
            assert not self.monitor.errors, f"{where}: {self.monitor.errors[:3]}"
            summary["bursts"] = {k: self.monitor.bursts[k] - before[k] for k in before}
            return summary

        async def run_serial(self, run, r):
            """Each request alone (failing ones included); checks what each left."""
            dut, rng = self.dut, random.Random(run["seed"])
            image = self._fill(run, rng)
            self._limit_memory(run)
            self.ram.faults = [tuple(f) for f in run["faults"]]
            sources, sink = self._streams(run)
            outcome = {"read": [], "write": []}
            for k, request in enumerate(run["reads"]):
                where = f"run {r} (seed {run['seed']}) read {k} {request[0]:#x}+{request[1]}"
                self.monitor.expect["read"] = [(*request, request[0])]
                count = len(sink.beats)
                sources["rd_req"].send([request[0] | request[1] << 64])
                await sources["rd_req"].wait()
                await self._wait_idle("rd", 200 * request[1] // self.nbytes + 5_000)
                # `busy` is a true idle indication: nothing follows its fall.
                beats = sink.beats[count:]
                await ClockCycles(dut.clk, 4)
                assert len(sink.beats) == count + len(beats), f"{where}: beats after busy fell"
                kind = fault_of(request, run["faults"], self.width) \
                    if _good(request, self.nbytes) else None
                if not _good(request, self.nbytes):
                    assert not beats, f"{where}: a rejected request produced {len(beats)} beats"
                    code = MoverError.MISALIGNED if request[1] and request[0] % self.nbytes \
                        and request[0] + request[1] <= 2**64 else MoverError.LENGTH
                    self._expect_failures("rd", 1, [code], where)
                    outcome["read"].append(code.name)
                elif kind:
                    # Bytes forwarded before the failure are the memory's; no last.
                    want = self._expected_read(image, request)
                    mask = (1 << self.width) - 1
                    raw = b"".join((b & mask).to_bytes(self.nbytes, "little") for b in beats)
                    assert all((b >> self.width) & 1 == 0 for b in beats), f"{where}: a last beat"
                    self._compare(raw, want[:len(raw)], where)
                    self._expect_failures("rd", 1, [MoverError[kind]], where)
                    outcome["read"].append(kind)
                else:
                    self._compare(self._split(beats, [request], where)[0],
                                  self._expected_read(image, request), where)
                    self._expect_failures("rd", 0, [MoverError.NONE], where)
                    outcome["read"].append("OKAY")
            for k, request in enumerate(run["writes"]):
                where = f"run {r} (seed {run['seed']}) write {k} {request[0]:#x}+{request[1]}"
                self.monitor.expect["write"] = [(*request, request[0])]
                addr, length = request
                good = _good(request, self.nbytes)
                data = _pattern(rng, length) if good else b""
                sources["wr_req"].send([addr | length << 64])
                if good:
                    sources["wr_data"].send(_beats(data, self.nbytes))
                for name in ("wr_req", "wr_data"):
                    await sources[name].wait()
                await self._wait_idle("wr", 200 * length // self.nbytes + 5_000)
                # Checked as `busy` falls: every byte already in memory.
                kind = fault_of(request, run["faults"], self.width) if good else None
                if not good:
                    code = MoverError.MISALIGNED if length and addr % self.nbytes \
                        and addr + length <= 2**64 else MoverError.LENGTH
                    self._expect_failures("wr", 1, [code], where)
                    outcome["write"].append(code.name)
                    continue
                # Every byte outside the fault ranges is written; inside, untouched.
                for lo, block in image.items():
                    if lo <= addr < lo + len(block):
                        for i in range(length):
                            byte = addr + i
                            if not any(a <= byte < b for a, b, _ in run["faults"]):
                                block[addr - lo + i] = data[i]
                self._check_image(image, where)
                self._expect_failures("wr", 1 if kind else 0,
                                      [MoverError[kind]] if kind else [MoverError.NONE], where)
                outcome["write"].append(kind or "OKAY")
            for source in sources.values():
                source.stop()
            sink.stop()
            assert not self.monitor.errors, f"run {r}: {self.monitor.errors[:3]}"
            return outcome

    @cocotb.test()
    async def mover_runs(dut):
        case = json.loads(os.environ["MOEVIT_CASE"])
        out = Path(os.environ["MOEVIT_SIM_OUT"])
        for name in ("rd_req__valid", "wr_req__valid", "wr_data__valid", "rd_data__ready"):
            getattr(dut, name).value = 0   # driven before the first run: never X on Icarus
        await start(dut)
        bench = Bench(dut, case)
        await ClockCycles(dut.clk, 2)
        summary = []
        for r, run in enumerate(case["runs"]):
            if run["serial"]:
                summary.append(await bench.run_serial(run, r))
            else:
                summary.append(await bench.run_parallel(run, r))
        bench.monitor.stop()
        (out / "summary.json").write_text(json.dumps(summary))
