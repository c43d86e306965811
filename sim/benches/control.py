"""cocotb bench of the control port (``moevit.hw.top.control.Control``).

The host is cocotbext-axi's ``AxiLiteMaster`` on ``s_axi_control``, with a
seeded pause generator on each of the five channels; the bench plays the
top: it pulses ``done`` a random number of cycles after each ``start`` (and
now and then outside a run), and drives random ``report`` and ``unit_busy``
values.

The checker is :class:`ControlModel`, a cycle-level model of the register
file built from the register map's JSON (as the driver reads it) and the
rules of :mod:`moevit.hw.top.control`. A monitor samples every channel and
port once a cycle and steps the model through each clock edge: a read is
taken at its AR handshake and its word is due on R, in order; a write takes
effect at the edge its B response appears, with the oldest address and data
taken. The monitor fails on the first difference: a read word, ``interrupt``,
``start``, ``running`` or ``args`` other than the model's, a response other
than OKAY, a response without a request, or a B/R payload that changed while
it waited.

Cases (``$MOEVIT_CASE``, JSON): ``regmap`` (path of the map's JSON),
``seed``, ``ops`` (random operations), ``pause`` (``"fixed"``: each channel
its own pattern, :func:`moevit.sim.streams.fixed_pattern`; else the
probability of a pause per channel and cycle, 0 for none). The bench writes ``summary.json``: the
counts of reads, writes, runs, interrupts and cycles.
"""

import itertools
import json
import os
import random
from collections import deque
from pathlib import Path

from moevit.hw.program.regmap import ARGUMENTS_OFFSET, WORD_BYTES, RegisterMap, load

__all__ = ["ControlModel", "CHANNELS", "run_control"]

CHANNELS = ("aw", "w", "b", "ar", "r")


class ControlModel:
    """The register file, one clock edge at a time (the reference of the RTL).

    Parameters
    ----------
    regmap : RegisterMap
    """

    def __init__(self, regmap: RegisterMap):
        self.regmap = regmap
        self.state = {(r.name, f.name): 0 for r in regmap for f in r.fields if f.source != "top"}
        self.words = {r.offset // WORD_BYTES + k: (r, k) for r in regmap for k in range(r.words)}
        self.running = 0
        self.start = 0
        self.args = {a.name: 0 for a in regmap.arguments}

    def field(self, reg, name):
        return self.state[(reg, name)]

    @property
    def interrupt(self) -> int:
        isr = any(self.state[("isr", f.name)] for f in self.regmap["isr"].fields)
        return int(bool(self.field("gie", "enable")) and isr)

    def _value(self, reg, f, report):
        if f.source == "top":
            return report[reg.name][f.name]
        if (reg.name, f.name) == ("ap_ctrl", "ap_idle"):
            return 1 - self.running
        if (reg.name, f.name) == ("ap_ctrl", "interrupt"):
            return self.interrupt
        return self.state[(reg.name, f.name)]

    def read(self, word: int, report: dict) -> int:
        """The word the host reads at ``word`` (a word address) now."""
        if word not in self.words:
            return 0
        reg, k = self.words[word]
        image = sum(self._value(reg, f, report) << f.bit for f in reg.fields)
        return (image >> (32 * k)) & 0xFFFFFFFF

    def edge(self, *, write=None, read=None, done=0, busy=None):
        """One rising edge: a host ``write`` ``(word, data, strb)``, a ``read`` of a
        word, the top's ``done`` and ``unit_busy`` (dict) in the cycle before it."""
        old, new = self.state, dict(self.state)
        running = self.running
        start_now = old[("ap_ctrl", "ap_start")] and not running
        done = done and running
        host_start = False
        if write is not None and write[0] in self.words:
            word, data, strb = write
            reg, k = self.words[word]
            mask = sum(0xFF << (8 * b) for b in range(4) if strb >> b & 1)
            data, mask = data << (32 * k), mask << (32 * k)
            for f in reg.fields:
                ones = (1 << f.width) - 1
                d, m = (data >> f.bit) & ones, (mask >> f.bit) & ones
                key = (reg.name, f.name)
                if f.access == "rw":
                    new[key] = (old[key] & ~m) | (d & m)
                elif f.access == "tow":
                    new[key] = old[key] ^ (d & m)
                elif f.access == "coh" and d & m:
                    new[key] = 1
                    host_start = True
        if read is not None and read in self.words:
            reg, k = self.words[read]
            for f in reg.fields:
                if f.access == "cor" and f.bit // 32 <= k <= (f.bit + f.width - 1) // 32:
                    new[(reg.name, f.name)] = 0
        if start_now:
            self.running = 1
            self.args = {a.name: old[(a.name, a.name)] for a in self.regmap.arguments}
            new[("error", "start_while_busy")] = 0
        if host_start and running and not done:
            new[("error", "start_while_busy")] = 1
        if done:
            self.running = 0
            new[("ap_ctrl", "ap_done")] = new[("ap_ctrl", "ap_ready")] = 1
            if not host_start:
                new[("ap_ctrl", "ap_start")] = old[("ap_ctrl", "auto_restart")]
            for name in ("done", "ready"):
                if old[("ier", name)]:
                    new[("isr", name)] = 1
        counters = [("cycles", 1)] + [(f"busy_{u}", (busy or {}).get(u, 0))
                                      for u in self.regmap.units]
        for reg, step in counters:
            if start_now:
                new[(reg, "cycles")] = 0
            elif running:
                new[(reg, "cycles")] = (old[(reg, "cycles")] + step) % 2**64
        self.start = int(start_now)
        self.state = new


def run_control(test_id, *, testcase=None, seed=0, ops=300, pause=0.3, simulator=None):
    """Simulate the control port: its Verilog and the map's JSON written under ``build/``.

    Returns the :class:`~moevit.sim.runner.SimResult` (``summary.json``: the counts).
    """
    from moevit.hw.generate import to_verilog

    from moevit.hw.program import regmap
    from moevit.hw.top.control import Control, vitis_ports
    from moevit.paths import build_dir
    from moevit.sim.runner import run_cocotb, sim_folder

    folder = build_dir("sim", "_rtl", sim_folder(test_id).name)
    control = Control()
    source = folder / "moevit_control.v"
    source.write_text(to_verilog(control, "moevit_control", vitis_ports(control)))
    json_path, _ = regmap.write(folder, control.regmap)
    case = {"regmap": str(json_path.resolve()), "seed": seed, "ops": ops, "pause": pause}
    return run_cocotb(toplevel="moevit_control", sources=[source],
                      test_module="moevit.sim.benches.control", test_id=test_id,
                      simulator=simulator, env={"MOEVIT_CASE": json.dumps(case)},
                      testcase=testcase, seed=seed)


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
    from cocotbext.axi import AxiLiteBus, AxiLiteMaster

    from moevit.sim.benches.common import start as start_clock
    from moevit.sim.streams import fixed_pattern, pack, pauses, unpack

    class Bench:
        """The design, the host, the top's side, the monitor and the model."""

        def __init__(self, dut, case):
            self.dut = dut
            self.case = case
            self.regmap = load(case["regmap"])
            self.model = ControlModel(self.regmap)
            self.rng = random.Random(case["seed"])
            self.host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.clk,
                                      dut.rst)
            self.report_layout = _report_layout(self.regmap)
            self.counts = {"reads": 0, "writes": 0, "runs": 0, "interrupt cycles": 0,
                           "ignored dones": 0, "cycles": 0}
            self.done_delay = (0, 40)
            self.auto_done = True
            self.failure = None
            self.pending = ()

        def pause(self, kind):
            """Pauses on every channel: ``"fixed"`` (each channel its own pattern) or a
            probability per cycle (seeded per channel; 0: none)."""
            for channel in CHANNELS:
                source = (self.host.write_if if channel in ("aw", "w", "b") else self.host.read_if)
                if kind == "fixed":
                    gen = itertools.cycle(fixed_pattern(f"s_axi_control_{channel}"))
                elif kind:
                    gen = pauses("random", seed=self.case["seed"], probability=kind,
                                 stream=f"s_axi_control_{channel}")
                else:
                    gen = None
                getattr(source, f"{channel}_channel").set_pause_generator(gen)

        # The top's side -------------------------------------------------------
        def drive_report(self, values=None):
            if values is None:
                values = {reg: {f: self.rng.getrandbits(width) for f, width in fields.items()}
                          for reg, fields in _report_fields(self.regmap).items()}
            self.dut.report.value = pack(self.report_layout, values)

        async def top(self):
            """Answers each start with done after a random delay; stray dones and inputs."""
            dut, rng = self.dut, self.rng
            units = self.regmap.units
            pending = None
            while True:
                await ReadOnly()
                started = int(dut.start.value)
                await RisingEdge(dut.clk)
                dut.unit_busy.value = rng.getrandbits(len(units))
                if not self.auto_done:
                    continue  # the test drives done and the report
                if rng.random() < 0.05:
                    self.drive_report()
                dut.done.value = 0
                if started:
                    pending = rng.randint(*self.done_delay)
                if pending is not None:
                    if pending == 0:
                        dut.done.value, pending = 1, None
                    else:
                        pending -= 1
                elif rng.random() < 0.01:
                    dut.done.value = 1  # outside a run: ignored

        # Monitor and checker ---------------------------------------------------
        def sample(self):
            dut = self.dut
            s = {name: _int(getattr(dut, f"s_axi_control_{name}"), name) for name in (
                "awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready", "bresp",
                "bvalid", "bready", "araddr", "arvalid", "arready", "rdata", "rresp", "rvalid",
                "rready")}
            for name in ("done", "start", "interrupt", "running"):
                s[name] = int(getattr(dut, name).value)
            s["report"] = unpack(self.report_layout, dut.report.value)
            s["busy"] = dict(zip(self.regmap.units, (
                int(dut.unit_busy.value) >> k & 1 for k in range(len(self.regmap.units)))))
            s["args"] = int(dut.args.value)
            return s

        def fail(self, message):
            if self.failure is None:
                self.failure = message
            raise AssertionError(message)

        async def monitor(self):
            model = self.model
            aws, ws, reads = self.pending = deque(), deque(), deque()
            args_layout = _args_layout(self.regmap)
            prev = None
            while True:
                await ReadOnly()
                s = self.sample()
                if prev is not None:
                    self.counts["cycles"] += 1
                    if prev["awvalid"] and prev["awready"]:
                        aws.append(prev["awaddr"])
                    if prev["wvalid"] and prev["wready"]:
                        ws.append((prev["wdata"], prev["wstrb"]))
                    write = read = None
                    if s["bvalid"] and not (prev["bvalid"] and not prev["bready"]):
                        if not aws or not ws:
                            self.fail("a write response without its address and data")
                        address = aws.popleft()
                        data, strb = ws.popleft()
                        write = (address // WORD_BYTES, data, strb)
                        self.counts["writes"] += 1
                    elif prev["bvalid"] and not prev["bready"] and not s["bvalid"]:
                        self.fail("bvalid fell before the response was taken")
                    elif prev["bvalid"] and not prev["bready"] and s["bresp"] != prev["bresp"]:
                        self.fail("bresp changed while it waited")
                    if prev["arvalid"] and prev["arready"]:
                        read = prev["araddr"] // WORD_BYTES
                        reads.append((prev["araddr"], model.read(read, prev["report"])))
                    if prev["rvalid"] and not prev["rready"] and (
                            not s["rvalid"] or s["rdata"] != prev["rdata"]
                            or s["rresp"] != prev["rresp"]):
                        self.fail("the read response changed or fell before it was taken")
                    if prev["done"] and not model.running:
                        self.counts["ignored dones"] += 1
                    model.edge(write=write, read=read, done=prev["done"], busy=prev["busy"])
                    self.counts["runs"] += model.start
                    for name in ("interrupt", "start", "running"):
                        if s[name] != getattr(model, name):
                            self.fail(f"{name} is {s[name]}, the model's {getattr(model, name)} "
                                      f"(cycle {self.counts['cycles']})")
                    expected = pack(args_layout, model.args)
                    if s["args"] != expected:
                        self.fail(f"args are {unpack(args_layout, s['args'])}, the model's "
                                  f"{model.args}")
                    self.counts["interrupt cycles"] += s["interrupt"]
                if s["bvalid"] and s["bready"] and s["bresp"] != 0:
                    self.fail(f"write response {s['bresp']}, not OKAY")
                if s["rvalid"] and s["rready"]:
                    if not reads:
                        self.fail("a read response without its address")
                    address, expected = reads.popleft()
                    if s["rresp"] != 0 or s["rdata"] != expected:
                        self.fail(f"read of 0x{address:03x} gave 0x{s['rdata']:08x} "
                                  f"(resp {s['rresp']}), the model's 0x{expected:08x} OKAY")
                    self.counts["reads"] += 1
                prev = s
                await RisingEdge(self.dut.clk)

        async def begin(self):
            self.dut.done.value = 0
            self.dut.unit_busy.value = 0
            self.drive_report()
            await start_clock(self.dut)
            await RisingEdge(self.dut.clk)
            cocotb.start_soon(self.top())
            self.watch = cocotb.start_soon(self.monitor())

        async def finish(self):
            await ClockCycles(self.dut.clk, 4)
            await ReadOnly()
            assert self.failure is None, self.failure
            left = dict(zip(("write addresses", "write data", "reads"), map(len, self.pending)))
            assert not any(left.values()), f"requests left without a response: {left}"
            out = Path(os.environ["MOEVIT_SIM_OUT"])
            (out / "summary.json").write_text(json.dumps(self.counts))

        # Host helpers ------------------------------------------------------------
        async def read(self, name, word=0):
            return await self.host.read_dword(self.regmap[name].offset + 4 * word)

        async def write(self, name, value, word=0):
            await self.host.write_dword(self.regmap[name].offset + 4 * word, value)

    def _int(signal, name):
        """A port's value; an undriven payload (the host's before its first beat) reads 0."""
        value = signal.value
        if value.is_resolvable:
            return int(value)
        assert not name.endswith(("valid", "ready")), f"{name} is {value}"
        return 0

    def _report_fields(regmap):
        return {r.name: {f.name: f.width for f in r.fields if f.source == "top"}
                for r in regmap if any(f.source == "top" for f in r.fields)}

    def _report_layout(regmap):
        from amaranth.lib import data

        return data.StructLayout({reg: data.StructLayout(fields)
                                  for reg, fields in _report_fields(regmap).items()})

    def _args_layout(regmap):
        from amaranth.lib import data

        return data.StructLayout({a.name: a.bits for a in regmap.arguments})

    def _case():
        return json.loads(os.environ["MOEVIT_CASE"])

    async def _until(dut, signal, cycles=200):
        for _ in range(cycles):
            await RisingEdge(dut.clk)
            await ReadOnly()
            if int(signal.value):
                return
        raise AssertionError(f"{signal._name} did not rise in {cycles} cycles")

    @cocotb.test()
    async def handshake(dut):
        """ap_ctrl_hs step by step, each value as the Vitis rules say (and the model agrees)."""
        bench = Bench(dut, _case())
        bench.auto_done = False
        bench.pause(bench.case["pause"])
        await bench.begin()
        ctrl = {f.name: 1 << f.bit for f in bench.regmap["ap_ctrl"].fields}
        idle, done, ready = ctrl["ap_idle"], ctrl["ap_done"], ctrl["ap_ready"]
        irq, start = ctrl["interrupt"], ctrl["ap_start"]
        assert await bench.read("ap_ctrl") == idle
        await bench.write("program", 0x89ABCDEF, 0)
        await bench.write("program", 0x01234567, 1)
        await bench.write("task", 2)
        await bench.write("gie", 1)
        await bench.write("ier", 1)      # ap_done only
        assert (await bench.read("program", 0), await bench.read("program", 1)) == (
            0x89ABCDEF, 0x01234567)
        await bench.write("ap_ctrl", start)
        await _until(dut, dut.running)
        args = unpack(_args_layout(bench.regmap), dut.args.value)
        assert args["program"] == 0x0123456789ABCDEF and args["task"] == 2
        await RisingEdge(dut.clk)
        assert await bench.read("ap_ctrl") == start
        await bench.write("task", 5)                 # during the run: not the run's argument
        await bench.write("ap_ctrl", start)          # a start while busy: ignored, flagged
        assert await bench.read("error") >> 8 & 1 == 1
        await RisingEdge(dut.clk)
        assert unpack(_args_layout(bench.regmap), dut.args.value)["task"] == 2
        # Unmapped and read-only words: 0 and unchanged, answered OKAY.
        await bench.host.write_dword(0x800, 0xFFFFFFFF)
        assert await bench.host.read_dword(0x800) == 0
        await bench.write("cycles", 0xFFFFFFFF)
        bench.drive_report({"status": {"instruction": 7, "image": 1}, "error": {"code": 3}})
        await RisingEdge(dut.clk)
        dut.done.value = 1
        await RisingEdge(dut.clk)
        dut.done.value = 0
        await ReadOnly()
        assert int(dut.interrupt.value) == 1 and int(dut.running.value) == 0
        await RisingEdge(dut.clk)
        assert await bench.read("ap_ctrl") == done | idle | ready | irq
        assert await bench.read("ap_ctrl") == idle | irq           # done, ready: clear on read
        assert await bench.read("isr") == 1                        # ier.ready was off
        assert await bench.read("status") == 7 | 1 << 16
        assert await bench.read("error") == 3 | 1 << 8
        cycles = await bench.read("cycles")
        assert cycles > 0 and await bench.read("cycles", 1) == 0
        await bench.write("isr", 1)                                # toggle: cleared
        assert await bench.read("isr") == 0 and await bench.read("ap_ctrl") == idle
        await ReadOnly()
        assert int(dut.interrupt.value) == 0
        await bench.write("isr", 3)                                # toggle: set by the host
        assert await bench.read("isr") == 3
        await bench.write("isr", 3)
        # A done outside a run is ignored.
        await RisingEdge(dut.clk)
        dut.done.value = 1
        await RisingEdge(dut.clk)
        dut.done.value = 0
        assert await bench.read("ap_ctrl") == idle
        # Auto-restart: a second run starts by itself; clearing it lets the run end.
        await bench.write("ier", 3)
        await bench.write("ap_ctrl", start | ctrl["auto_restart"])
        await _until(dut, dut.running)
        assert await bench.read("error") == 3                      # the new run cleared the flag
        for _ in range(2):
            await RisingEdge(dut.clk)
            dut.done.value = 1
            await RisingEdge(dut.clk)
            dut.done.value = 0
            await _until(dut, dut.start, 3)
        await bench.write("ap_ctrl", 0)                            # auto_restart off; start stays
        await RisingEdge(dut.clk)
        dut.done.value = 1
        await RisingEdge(dut.clk)
        dut.done.value = 0
        await ClockCycles(dut.clk, 3)
        assert await bench.read("ap_ctrl") == done | idle | ready | irq
        assert await bench.read("isr") == 3
        assert bench.counts["runs"] == 4
        await bench.finish()

    @cocotb.test()
    async def random_traffic(dut):
        """Random reads and writes from concurrent hosts with random pauses on every channel."""
        case = _case()
        bench = Bench(dut, case)
        bench.pause(case["pause"])
        await bench.begin()
        regmap, rng = bench.regmap, bench.rng
        words = sorted(bench.model.words)
        block = [w for w in words if w * WORD_BYTES < ARGUMENTS_OFFSET]
        top = 1 << regmap.address_width

        async def worker(ops, seed):
            rng = random.Random(seed)
            for _ in range(ops):
                kind = rng.random()
                where = rng.random()
                if where < 0.4:  # the handshake and interrupt registers, often
                    address = rng.choice(block) * WORD_BYTES
                elif where < 0.9:
                    address = rng.choice(words) * WORD_BYTES
                else:
                    address = rng.randrange(top) & ~3
                if kind < 0.45:
                    await bench.host.read_dword(address)
                elif kind < 0.9:
                    value = rng.getrandbits(32)
                    if address == regmap["ap_ctrl"].offset and rng.random() < 0.7:
                        value &= ~(1 << regmap["ap_ctrl"].field("auto_restart").bit)
                    await bench.host.write_dword(address, value)
                else:  # a partial write: some byte lanes only
                    offset = rng.randrange(4)
                    length = rng.randint(1, 4 - offset)
                    await bench.host.write(address + offset, rng.randbytes(length))
                if rng.random() < 0.3:
                    await ClockCycles(dut.clk, rng.randint(1, 8))

        workers = [cocotb.start_soon(worker(case["ops"] // 3, f"{case['seed']}-{k}"))
                   for k in range(3)]
        for task in workers:
            await task
        await bench.finish()
