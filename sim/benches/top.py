"""The whole accelerator in co-simulation, driven by registers only, as a host drives a board.

:func:`run_top` builds :class:`~moevit.hw.top.accelerator.Accelerator` for the
program's HwConfig (Vitis port names) and runs a list of *runs* on it: each
run writes the task and the image count, writes the images into the input
buffer and sets ``ap_start`` through cocotbext-axi's ``AxiLiteMaster`` on
``s_axi_control``, waits for the ``interrupt`` (no Python wakes on the way:
the simulator runs free until it), clears it, and reads back the status,
error and cycle registers, the output buffer and the activation scratch.
The memory is cocotbext-axi's ``AxiRam``, one on each of the top's memory
ports (``m_axi_gmem``, ``m_axi_gmem1`` ... for ``hw.memory_ports``), all views
onto the same bytes (or, with ``memory="verilog"``, :data:`SIM_MEMORY` in the
simulator: the same rates and latency, no Python on the way, for long
runs); the host's buffers lie at addresses unlike the
program's own (so every address goes through the top's relocation), and the
memory can be slowed by a pause pattern on each port's channels, each port
its own (``memory_pauses``; ``"stall"``: long stalls of thousands of cycles,
:func:`stalls`), and limited to ``bandwidth`` bytes a cycle per port, its
reads and writes together, and to ``memory_bandwidth`` bytes a cycle for all
ports together (:class:`Throttle`: a board's HP ports each at their rate, all
of them behind one DDR controller).

Faults a run may meet (for the reliability suites): SLVERR or DECERR from
the memory on reads, writes or both; a reset pulsed in the middle of the
run; a start while busy; another program. With ``guard`` the memory around
every host buffer holds a known pattern (:data:`GUARD_BYTES` either side),
and after each run the bench reports every byte the run changed outside its
output and scratch buffers (``outside``): the guards, the program, the
weights and the input must be as the host left them, and no byte anywhere
else may be written. Faults and guards see every port.

Register offsets come from the register map (:data:`~moevit.hw.program.regmap.REGMAP`),
never typed here.
"""

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["run_top", "expected_runs", "output_bytes", "stalls", "guard_pattern", "BUFFERS",
           "host_buffers",
           "TOPLEVEL", "GUARD_BYTES", "port_stream", "SIM_MEMORY", "SIM_TOPLEVEL",
           "sim_top_verilog"]

TOPLEVEL = "moevit_top"

#: Where the bench's host places each buffer (physical byte addresses).
BUFFERS = {"program": 0x0010_0000, "weights": 0x0040_0000, "input": 0x0100_0000,
           "output": 0x0140_0000, "scratch": 0x0200_0000}
#: Bytes of guard pattern before and after each host buffer (``guard=True``).
GUARD_BYTES = 4096
#: The simulated memory's bytes, unless the buffers need more.
MEMORY_BYTES = 1 << 26


def host_buffers(sizes) -> dict:
    """Where the host places buffers of ``sizes`` (bytes by the names of :data:`BUFFERS`):
    at :data:`BUFFERS` when each fits before the next with its guards (every program of
    the small configs, so their fault addresses stay put), else one after the other in
    that order, each on a 1 MiB boundary past the one before and its guards (a large
    model's weights would otherwise run into its input and output buffers)."""
    names = list(BUFFERS)
    fixed = all(BUFFERS[a] + sizes[a] + GUARD_BYTES <= BUFFERS[b] - GUARD_BYTES
                for a, b in zip(names, names[1:]))
    if fixed:
        return dict(BUFFERS)
    placed, at = {}, BUFFERS[names[0]]
    for name in names:
        placed[name] = at
        at = -(-(at + sizes[name] + 2 * GUARD_BYTES) // (1 << 20)) * (1 << 20)
    return placed


def guard_pattern(start, end) -> bytes:
    """The guard's bytes at addresses ``[start, end)``: a function of the address of a prime
    period, so a shifted or repeated copy of it does not pass for it."""
    return bytes((a % 251) ^ 0xA5 for a in range(start, end))


def stalls(seed, *, stream="", shortest=1000, longest=4000, flowing=(200, 2000)):
    """A pause pattern of long stalls: a channel flows for a random ``flowing`` stretch of
    cycles, then stalls for ``shortest`` to ``longest`` cycles, again and again."""
    import itertools
    import random
    import zlib

    rng = random.Random(seed * 1_000_003 + zlib.crc32(stream.encode()))
    for _ in itertools.count():
        yield from itertools.repeat(False, rng.randint(*flowing))
        yield from itertools.repeat(True, rng.randint(shortest, longest))


def port_stream(port, channel):
    """The name that seeds a port's pause pattern on ``channel``: ``gmem.ar`` for port 0 (as
    the one-port top always had, so its seeds replay), ``gmem1.ar`` ... for the others."""
    return f"gmem.{channel}" if port == 0 else f"gmem{port}.{channel}"


_VERILOG = {}


def _verilog(hw, engines):
    """The top's Verilog for ``hw`` and ``engines``, converted once per process (a top of
    two engines takes 20 s to convert; the reliability suites run many cases on one)."""
    from moevit.hw.generate import to_verilog
    from moevit.hw.program.program import hw_hash
    from moevit.hw.top.accelerator import Accelerator
    from moevit.hw.top.control import vitis_ports

    key = (hw_hash(hw), None if engines is None else tuple(engines))
    if key not in _VERILOG:
        top = Accelerator(hw, engines)
        _VERILOG[key] = to_verilog(top, TOPLEVEL, vitis_ports(top))
    return _VERILOG[key]


def run_top(program, runs, *, test_id, simulator=None, memory_pauses="none", seed=0,
            probability=0.3, timeout_us=200_000, engines=None, waves=False, guard=False,
            bandwidth=None, memory_bandwidth=None, timeline=False, latency=0,
            memory="python"):
    """Run ``runs`` on the co-simulated top loaded with ``program``.

    ``runs`` is a list of ``(task, images)``, ``images`` int8 arrays of the
    program's input shape (one run may take several), or of dicts with those
    keys and, for the faults a run may meet: ``program`` (other bytes in the
    program buffer for this run), ``faults`` (``(start, end, "SLVERR" |
    "DECERR"[, "read" | "write"])`` ranges of physical addresses the memory
    answers with that response during this run, on reads, writes or both),
    ``restart`` (``ap_start`` written again while the run is in progress),
    ``reset`` (``ap_rst_n`` pulsed that many cycles after the start; the host
    then writes its arguments again and does not wait for the run; the row's
    ``reset_idle`` and ``reset_instruction`` say where the run was),
    ``memory_pauses``, ``seed`` and ``probability`` (this run's memory pauses
    instead of the case's; ``stalls``: the keywords of :func:`stalls`) and
    ``timeout_us``. Returns one dict per run:
    ``error`` (the error code), ``done`` and ``idle`` (``ap_ctrl`` after the
    run), ``status``, ``cycles``, ``busy`` (cycles per counted unit),
    ``bytes_read`` (and ``port_bytes_read``, per memory port),
    ``outputs`` (uint8 bytes of each image's output region), ``scratch`` (the
    scratch after the run), ``outside`` (with ``guard``: the number of bytes
    the run changed outside its output and scratch buffers, and the first
    addresses), ``seconds`` (wall time of the whole simulation).
    ``engines``: build only these (``Accelerator``). ``bandwidth``: bytes a cycle each
    memory port serves at most, its reads and writes together (:class:`Throttle`; default:
    a bus word a cycle on each of its read and write channels); ``memory_bandwidth``: bytes
    a cycle all the ports together serve at most (default: no limit beyond the ports').
    ``latency``: cycles from a burst's AR or AW to the memory serving it (its R beats, its
    W beats taken), bursts overlapping as they come (default 0: at once).
    ``memory``: ``"python"`` (cocotbext-axi's RAM, every beat through Python: faults, pauses
    and the guard) or ``"verilog"`` (:data:`SIM_MEMORY`, every beat in the simulator: the
    same bandwidths and latency, none of the rest, for long runs).
    ``timeline``: each run's row also has ``issued``, ``[instruction, cycle, *stalls]`` for
    every instruction the sequencer issued, the cycle counted from ``ap_start`` as the
    ``cycles`` register counts, ``stalls`` the linear kernel's stall counters then (what
    held it: :data:`~moevit.hw.units.linear.STALL_CAUSES`; none on a top without the
    linear engine), ``finished``, ``[lanes, cycle, *stalls]`` for every cycle an issued
    instruction finished (``lanes``: a bit a lane, bit 0 main; on one lane 1), and
    ``stalls_at_end`` (the counters at the run's end): the cost model's per-instruction
    figures, :func:`moevit.hw.cost.report.instruction_rows`.
    """
    from moevit.paths import build_dir
    from moevit.sim.runner import run_cocotb, sim_folder

    if memory not in ("python", "verilog"):
        raise ValueError(f"memory {memory!r}: 'python' or 'verilog'")
    folder = build_dir("sim", "_rtl", sim_folder(test_id).name).resolve()
    layout = program.layout
    bounds = layout.boundaries()
    (folder / "program.bin").write_bytes(program.encode())
    (folder / "weights.bin").write_bytes(program.weights)
    images = []
    for k, run in enumerate(runs):
        run = run if isinstance(run, dict) else {"task": run[0], "images": run[1]}
        batch = [np.ascontiguousarray(b, np.int8) for b in run["images"]]
        name = "program.bin"
        if run.get("program") is not None:
            name = f"run{k}-program.bin"
            (folder / name).write_bytes(bytes(run["program"]))
        images.append({"task": int(run["task"]), "count": len(batch), "program": name,
                       "faults": [[int(f[0]), int(f[1]), *map(str, f[2:])]
                                  for f in run.get("faults", ())],
                       "restart": bool(run.get("restart", False)),
                       "reset": int(run.get("reset", 0)),
                       "memory_pauses": run.get("memory_pauses", memory_pauses),
                       "seed": int(run.get("seed", seed)),
                       "probability": float(run.get("probability", probability)),
                       "stalls": dict(run.get("stalls", {})),
                       "timeout_us": run.get("timeout_us", timeout_us)})
        for n, image in enumerate(batch):
            image.tofile(folder / f"run{k}-image{n}.bin")
    pitches = {"input": bounds["output_at"] - bounds["input_at"],
               "output": bounds["output_end"] - bounds["output_at"]}
    most = max(image["count"] for image in images)
    sizes = {"program": max((folder / image["program"]).stat().st_size for image in images),
             "weights": len(program.weights), "input": most * pitches["input"],
             "output": most * pitches["output"],
             "scratch": bounds["input_at"] - bounds["scratch_at"]}
    buffers = host_buffers(sizes)
    end = buffers["scratch"] + sizes["scratch"] + GUARD_BYTES
    case = {"folder": str(folder), "runs": images, "buffers": buffers,
            "memory_bytes": max(MEMORY_BYTES, 1 << (end - 1).bit_length()),
            "input_pitch": pitches["input"], "output_pitch": pitches["output"],
            "scratch_bytes": sizes["scratch"],
            "weights_bytes": len(program.weights), "guard": bool(guard),
            "bus_bytes": program.hw.bus_width // 8,
            "bandwidth": None if bandwidth is None else float(bandwidth),
            "memory_bandwidth": None if memory_bandwidth is None else float(memory_bandwidth),
            "timeline": bool(timeline), "latency": int(latency), "memory": memory}
    if memory == "verilog":
        unsupported = [name for name, used in (
            ("guard", guard), ("faults", any(run["faults"] for run in images)),
            ("memory pauses", any(run["memory_pauses"] != "none" for run in images)),
            ("resets", any(run["reset"] for run in images)),
            ("other programs", any(run["program"] != "program.bin" for run in images)))
            if used]
        if unsupported:
            raise ValueError(f"the Verilog memory has no {', '.join(unsupported)}: "
                             "memory='python' for them")
    source = folder / f"{TOPLEVEL}.v"
    source.write_text(_verilog(program.hw, engines))
    sources, toplevel = [source], TOPLEVEL
    if memory == "verilog":
        wrapper = folder / f"{SIM_TOPLEVEL}.v"
        wrapper.write_text(sim_top_verilog(source.read_text(), program.hw, case["memory_bytes"]))
        sources, toplevel = [source, SIM_MEMORY, wrapper], SIM_TOPLEVEL
    result = run_cocotb(toplevel=toplevel, sources=sources, test_module=__name__,
                        test_id=test_id, simulator=simulator, waves=waves,
                        env={"MOEVIT_CASE": json.dumps(case)})
    summary = result.json("summary.json")
    for k, run in enumerate(summary):
        run["outputs"] = [np.fromfile(result.output(f"run{k}-output{n}.bin"), np.uint8)
                          for n in range(images[k]["count"])]
        run["scratch"] = np.fromfile(result.output(f"run{k}-scratch.bin"), np.uint8)
        run["seconds"] = result.seconds
    return summary


#: The memory that serves every beat in the simulator (``run_top(memory="verilog")``).
SIM_MEMORY = Path(__file__).resolve().parent.parent / "verilog" / "moevit_sim_memory.v"
#: The toplevel of that run: the top and :data:`SIM_MEMORY` on its ports.
SIM_TOPLEVEL = "moevit_sim_top"
_AXI_SIGNALS = ("arvalid", "arready", "araddr", "arlen", "arsize", "arburst", "arid",
                "rvalid", "rready", "rdata", "rlast", "rresp", "rid",
                "awvalid", "awready", "awaddr", "awlen", "awsize", "awburst", "awid",
                "wvalid", "wready", "wdata", "wstrb", "wlast", "bvalid", "bready", "bresp", "bid")


def sim_top_verilog(top_verilog, hw, memory_bytes) -> str:
    """:data:`SIM_TOPLEVEL`: the top (``top_verilog``, :data:`TOPLEVEL`) with its control
    port, clock, reset and interrupt outside and :data:`SIM_MEMORY` on its memory ports,
    the memory's controls (``memory_*``) outside for the bench."""
    import re

    from moevit.hw.top.memory_ports import port_name

    body = top_verilog[top_verilog.index(f"module {TOPLEVEL}("):]
    body = body[:body.index("endmodule")]
    ports = re.findall(r"^\s*(input|output)\s+(?:(\[\d+:0\])\s+)?(\w+);", body, re.M)
    outside = [(d, w, n) for d, w, n in ports if not n.startswith("m_axi_")]
    inside = [(w, n) for d, w, n in ports if n.startswith("m_axi_")]
    names = [f"m_axi_{port_name(k)}" for k in range(hw.memory_ports)]
    controls = [("input", "", "memory_load"), ("input", "", "memory_dump"),
                ("input", "[31:0]", "memory_dump_from"), ("input", "[31:0]", "memory_dump_to"),
                ("input", "[31:0]", "memory_latency"), ("input", "[31:0]", "memory_port_rate"),
                ("input", "[31:0]", "memory_rate"),
                ("output", f"[{64 * len(names) - 1}:0]", "memory_bytes_read"),
                ("output", "", "memory_unsupported")]
    lines = [f"// The top on {SIM_MEMORY.name}: written by moevit.sim.benches.top.",
             f"module {SIM_TOPLEVEL}({', '.join(n for _, _, n in outside + controls)});"]
    lines += [f"  {d} {w + ' ' if w else ''}{n};" for d, w, n in outside + controls]
    lines += [f"  wire {w + ' ' if w else ''}{n};" for w, n in inside]
    lines.append(f"  {TOPLEVEL} top(" + ", ".join(
        f".{n}({n})" for _, _, n in ports) + ");")
    connections = {"clk": "ap_clk", "load": "memory_load", "dump": "memory_dump",
                   "dump_from": "memory_dump_from", "dump_to": "memory_dump_to",
                   "latency": "memory_latency", "port_rate": "memory_port_rate",
                   "memory_rate": "memory_rate", "bytes_read": "memory_bytes_read",
                   "unsupported": "memory_unsupported"}
    for signal in _AXI_SIGNALS:     # port 0 in the low bits
        connections[signal] = "{" + ", ".join(f"{name}_{signal}" for name in names[::-1]) + "}"
    lines.append(f"  moevit_sim_memory #(.PORTS({len(names)}), .DATA_WIDTH({hw.bus_width}), "
                 f".WORDS({memory_bytes // (hw.bus_width // 8)})) memory("
                 + ", ".join(f".{k}({v})" for k, v in connections.items()) + ");")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def output_bytes(program, task) -> int:
    """Bytes of ``task``'s output (its head's int8 rows: of every image of a batched
    program, :func:`moevit.hw.program.interpreter.image_output`) at the start of the
    output region; the rest of the region is another task's."""
    return program.layout["output"].shape[0] * program.tasks[task]["output_shape"][1]


def expected_runs(program, runs):
    """What the instruction-level interpreter computes for the same ``runs`` on one memory
    that lives on from run to run, as the device's does: per run, each image's output
    region and the scratch after the run."""
    from moevit.hw.program.interpreter import execute

    layout = program.layout
    memory = program.memory_image()
    inp = layout["input"]
    bounds = layout.boundaries()
    results = []
    for task, images in runs:
        outputs = []
        for image in images:
            memory[inp.offset:inp.end] = np.ascontiguousarray(image, np.int8).view(np.uint8).ravel()
            stats = execute(memory, program.hw, task, layout["program"].offset)
            outputs.append(memory[bounds["output_at"]:bounds["output_end"]].copy())
        results.append({"outputs": outputs, "stats": stats,
                        "scratch": memory[bounds["scratch_at"]:bounds["input_at"]].copy()})
    return results


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, RisingEdge, Timer, ValueChange, with_timeout
    from cocotb.utils import get_sim_time
    from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster

    from moevit.hw.program.regmap import REGMAP
    from moevit.hw.units.linear import STALL_CAUSES
    from moevit.sim.benches.common import CLOCK_NS
    from moevit.sim.benches.movers import FaultyRam
    from moevit.sim.streams import pauses

    class Bucket:
        """``rate`` bytes a cycle: a level that fills by ``rate`` each cycle, up to one
        ``beat`` and one cycle's refill (so that no refill is lost while a beat waits for
        its turn), and empties by a beat for each beat taken; a beat may be taken in a cycle
        that starts with a beat in it. (Beats taken in one cycle may take it below zero:
        the takers then wait until it has refilled, so the rate holds over any stretch.)"""

        def __init__(self, rate, beat):
            self.rate, self.beat, self.level = rate, beat, float(beat)
            self.time = None

        def refill(self, time):
            """Once a cycle (the first call at a new simulation ``time``)."""
            if time != self.time:
                self.time = time
                self.level = min(self.level + self.rate, self.beat + self.rate)

        @property
        def next_empty(self):
            """No beat in the next cycle, after its refill."""
            return self.level + self.rate < self.beat

    class Throttle:
        """One port's R and W beats together at ``rate`` bytes a cycle (its own
        :class:`Bucket`; None: a beat a cycle on each) and, with ``shared``, within the
        :class:`Bucket` of all the ports (the memory behind them); a channel pauses in a
        cycle that a bucket starts with less than a beat. ``now``: the simulation time (a
        bucket refills once per time step it is asked at)."""

        def __init__(self, dut, name, rate, beat, shared=None, now=None):
            from cocotb.utils import get_sim_time

            self.own = None if rate is None else Bucket(rate, beat)
            self.shared, self.now = shared, now or get_sim_time
            self.handshakes = {c: (getattr(dut, f"{name}_{c}valid"),
                                   getattr(dut, f"{name}_{c}ready")) for c in "rw"}

        def gate(self, channel):
            """The pause generator of ``channel`` (``"r"`` or ``"w"``), stepped once a cycle
            after its edge."""
            valid, ready = self.handshakes[channel]
            buckets = [b for b in (self.own, self.shared) if b is not None]
            while True:
                time = self.now()
                for bucket in buckets:
                    bucket.refill(time)
                if str(valid.value) == "1" and str(ready.value) == "1":  # a beat at this edge
                    for bucket in buckets:
                        bucket.level -= bucket.beat
                yield any(bucket.next_empty for bucket in buckets)

    def memory_ports(dut) -> list:
        """The top's memory ports, ``m_axi_gmem``, ``m_axi_gmem1`` ... (as many as it has)."""
        from moevit.hw.top.memory_ports import port_name

        names = [f"m_axi_{port_name(0)}"]
        while hasattr(dut, f"m_axi_{port_name(len(names))}_arvalid"):
            names.append(f"m_axi_{port_name(len(names))}")
        return names

    class Host:
        """The host side: registers through ``AxiLiteMaster``, buffers in the memory; one
        ``AxiRam`` per memory port (``rams``), all onto port 0's (``ram``) bytes."""

        def __init__(self, dut, case):
            self.dut, self.case = dut, case
            import logging

            names = memory_ports(dut)
            for name in ("s_axi_control", *names):     # a line per burst: too many
                logging.getLogger(f"cocotb.{dut._name}.{name}").setLevel(logging.WARNING)
            self.regs = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk,
                                      dut.ap_rst_n, reset_active_level=False)
            self.rams = []
            if case.get("memory") == "verilog":
                self.ram = SimMemory(dut, case)
                self.pausing, self.throttles = ("none", None, None, None), None
                return
            for name in names:
                shared = self.rams[0].mem if self.rams else None
                self.rams.append(FaultyRam(AxiBus.from_prefix(dut, name), dut.ap_clk,
                                           dut.ap_rst_n, reset_active_level=False,
                                           size=case["memory_bytes"], mem=shared))
            self.ram = self.rams[0]
            self.throttles = None
            rate, total = case.get("bandwidth"), case.get("memory_bandwidth")
            if rate is not None or total is not None:
                beat = case["bus_bytes"]      # the cases that limit the memory give it
                shared = None if total is None else Bucket(total, beat)
                self.throttles = [Throttle(dut, name, rate, beat, shared) for name in names]
            self.pausing = ("none", None, None, None)
            if case.get("memory_pauses", "none") != "none" or self.throttles:
                self.slow(case.get("memory_pauses", "none"), case.get("seed"),
                          case.get("probability"), None)
            self.port_bytes_read = [0] * len(self.rams)
            for k, ram in enumerate(self.rams):
                self._count(k, ram)
                if case.get("latency"):
                    for side, name in ((ram.read_if, "ar_channel"), (ram.write_if, "aw_channel")):
                        delay(getattr(side, name), case["latency"] * CLOCK_NS)
                    # A memory controller queues the bursts as they come (cocotbext-axi's
                    # RAM takes two at a time: under a latency that, not the top, would bind).
                    ram.write_if.w_channel.queue_occupancy_limit = -1

        @property
        def bytes_read(self):
            return sum(self.port_bytes_read)

        def run_starts(self):
            """Count the memory ports' bytes read from here."""
            if isinstance(self.ram, SimMemory):
                self.ram.mark()
            else:
                self.port_bytes_read = [0] * len(self.rams)

        def run_ended(self):
            if isinstance(self.ram, SimMemory):
                self.port_bytes_read = self.ram.bytes_read()

        def _count(self, port, ram):
            read = ram.read_if._read

            async def counted(address, length):   # every beat the memory serves
                self.port_bytes_read[port] += length
                return await read(address, length)

            ram.read_if._read = counted

        @property
        def faults(self):
            return self.ram.faults

        @faults.setter
        def faults(self, faults):
            """The same fault ranges on every port."""
            for ram in self.rams:
                ram.faults = list(faults)

        async def write(self, name, value):
            reg = REGMAP[name]
            for k in range(reg.words):
                await self.regs.write_dword(reg.offset + 4 * k, (value >> (32 * k)) & 0xFFFFFFFF)

        async def read(self, name):
            reg = REGMAP[name]
            value = 0
            for k in range(reg.words):
                value |= await self.regs.read_dword(reg.offset + 4 * k) << (32 * k)
            return value

        def slow(self, kind, seed, probability, options):
            """Pause every port's five channels on ``kind``'s pattern, each port and
            channel its own (``"stall"``: :func:`stalls` with ``options``), R and W
            besides held to the port's :class:`Throttle` if there is one; patterns
            already running go on undisturbed."""
            if self.pausing == (kind, seed, probability, options):
                return
            self.pausing = (kind, seed, probability, options)
            for port, ram in enumerate(self.rams):
                for name in ("ar", "r", "aw", "w", "b"):
                    side = ram.read_if if name in ("ar", "r") else ram.write_if
                    channel, stream = getattr(side, f"{name}_channel"), port_stream(port, name)
                    if kind == "none":
                        pattern = None
                    elif kind == "stall":
                        pattern = stalls(seed, stream=stream, **options)
                    else:
                        pattern = pauses(kind, seed=seed, stream=stream, probability=probability)
                    if self.throttles and name in ("r", "w"):
                        gate = self.throttles[port].gate(name)
                        pattern = gate if pattern is None else \
                            (a | b for a, b in zip(gate, pattern))
                    if pattern is None:
                        channel.clear_pause_generator()
                        channel.pause = False   # it may have stopped in a pause
                    else:
                        channel.set_pause_generator(pattern)

        async def arguments(self):
            """The buffers' addresses and the interrupt enables (again after a reset)."""
            for name, address in self.case["buffers"].items():
                await self.write(name, address)
            await self.write("gie", 1)
            await self.write("ier", 1)

        def field(self, register, name, value):
            f = REGMAP[register].field(name)
            return (value & f.mask) >> f.bit

    class SimMemory:
        """The bench's side of :data:`SIM_MEMORY`: the host's writes kept in a copy of its
        bytes and loaded by one ``$readmemh`` before a run (:meth:`load`), reads through
        ``$writememh``; the bandwidths and the latency set once, the bytes read per port
        counted in the simulator. Its files lie in the simulation's working folder."""

        def __init__(self, dut, case):
            self.dut, self.beat = dut, case["bus_bytes"]
            self.host = np.zeros(case["memory_bytes"], np.uint8)
            self.dirty = []          # word ranges written since the last load
            self.ports = len(dut.memory_bytes_read.value) // 64
            self.start = [0] * self.ports
            for name in ("memory_load", "memory_dump", "memory_dump_from", "memory_dump_to"):
                getattr(dut, name).value = 0
            dut.memory_latency.value = int(case.get("latency") or 0)
            for name, rate in (("memory_port_rate", case.get("bandwidth")),
                               ("memory_rate", case.get("memory_bandwidth"))):
                # 1/1024 byte a cycle (0: no limit), as the Verilog's buckets count.
                getattr(dut, name).value = 0 if rate is None else max(1, round(rate * 1024))

        def write(self, address, data):
            data = np.frombuffer(bytes(data), np.uint8)
            self.host[address:address + len(data)] = data
            self.dirty.append((address // self.beat, -(-(address + len(data)) // self.beat)))

        async def pulse(self, signal):
            signal.value = 1
            await RisingEdge(self.dut.ap_clk)
            signal.value = 0
            await RisingEdge(self.dut.ap_clk)     # the edge's $readmemh / $writememh done

        async def load(self):
            """Every word written since the last load, into the simulated memory."""
            if not self.dirty:
                return
            digits, lines = 2 * self.beat, []
            for first, end in sorted(self.dirty):
                words = self.host[first * self.beat:end * self.beat].reshape(-1, self.beat)
                text = words[:, ::-1].tobytes().hex()     # a word's first byte: its low bits
                lines.append(f"@{first:x}")
                lines += [text[k:k + digits] for k in range(0, len(text), digits)]
            Path("memory.hex").write_text("\n".join(lines) + "\n")
            self.dirty = []
            await self.pulse(self.dut.memory_load)

        async def read(self, address, length) -> bytes:
            if length <= 0:          # (a scratch wholly on chip)
                return b""
            first, end = address // self.beat, -(-(address + length) // self.beat)
            self.dut.memory_dump_from.value = first
            self.dut.memory_dump_to.value = end - 1
            await self.pulse(self.dut.memory_dump)
            words = [line.strip() for line in Path("dump.hex").read_text().splitlines()
                     if line.strip() and not line.lstrip().startswith(("@", "//"))]
            raw = np.frombuffer(bytes.fromhex("".join(words)), np.uint8)
            raw = raw.reshape(-1, self.beat)[:, ::-1].ravel()
            at = address - first * self.beat
            return raw[at:at + length].tobytes()

        def counters(self) -> list:
            value = int(self.dut.memory_bytes_read.value)
            return [(value >> (64 * k)) & ((1 << 64) - 1) for k in range(self.ports)]

        def mark(self):
            self.start = self.counters()

        def bytes_read(self) -> list:
            if int(self.dut.memory_unsupported.value):
                raise AssertionError("the top issued a burst the Verilog memory does not "
                                     "model (not INCR, or not whole aligned bus words)")
            return [now - then for now, then in zip(self.counters(), self.start)]

    def delay(channel, latency_ns):
        """``channel`` (a memory's AR or AW) hands each burst on no sooner than
        ``latency_ns`` after its handshake: the memory serves it that much later, the
        bursts behind it waiting their own time, not its."""
        put, recv, arrived = channel.queue.put_nowait, channel.recv, {}
        channel.queue_occupancy_limit = -1

        def stamped(item):
            arrived[id(item)] = get_sim_time("ns")
            put(item)

        async def delayed():
            item = await recv()
            wait = arrived.pop(id(item)) + latency_ns - get_sim_time("ns")
            if wait > 0:
                await Timer(wait, "ns")
            return item

        channel.queue.put_nowait, channel.recv = stamped, delayed

    async def reset(dut, cycles=4):
        """Hold ``ap_rst_n`` low for ``cycles``, then let the top run (two cycles on)."""
        dut.ap_rst_n.value = 0
        await ClockCycles(dut.ap_clk, cycles)
        dut.ap_rst_n.value = 1
        await ClockCycles(dut.ap_clk, 2)

    async def power_up(dut, case) -> Host:
        """Start the clock, make the :class:`Host` (``case``: its memory pauses) and reset."""
        cocotb.start_soon(Clock(dut.ap_clk, CLOCK_NS, unit="ns").start())
        dut.ap_rst_n.value = 0
        host = Host(dut, case)
        await reset(dut)
        return host

    class Guard:
        """The memory as the host left it before a run, to find what the run changed outside
        the buffers it may write. The memory is cocotbext-axi's ``SparseMemory`` (4 KiB
        segments made on a first write): a segment that appears during a run and holds no
        writable byte was written outside every buffer, whatever it holds."""

        SEGMENT = 4096

        def __init__(self, memory):
            self.memory, self.before = memory, {}

        def fill(self, extents):
            """The guard pattern either side of each ``[start, end)`` extent."""
            for start, end in extents:
                for a, b in ((max(0, start - GUARD_BYTES), start), (end, end + GUARD_BYTES)):
                    self.memory.write(a, guard_pattern(a, b))

        def snapshot(self):
            self.before = {at: bytes(block) for at, block in self.memory.segs.items()}

        def changed(self, writable):
            """The addresses changed since the snapshot outside the ``writable`` ranges."""
            bad = []
            for at, block in sorted(self.memory.segs.items()):
                now = np.frombuffer(bytes(block), np.uint8)
                old = self.before.get(at)
                mask = now != (0 if old is None else np.frombuffer(old, np.uint8))
                inside = np.zeros(self.SEGMENT, bool)
                for start, end in writable:
                    inside[max(start - at, 0):max(min(end - at, self.SEGMENT), 0)] = True
                if old is None and not inside.any():
                    mask[:] = True   # a segment made by a write outside every buffer
                bad.extend(at + np.flatnonzero(mask & ~inside))
            return [int(a) for a in bad]

    def kernel_stalls(dut) -> list:
        """The linear kernel's ``stalls`` counters (:data:`~moevit.hw.units.linear.
        STALL_CAUSES`, 32 bits each, in one register), or none on a top without it."""
        try:
            register = dut.linear.kernel.stalls
        except AttributeError:
            return []
        value = int(register.value)
        return [value >> (32 * k) & 0xFFFF_FFFF for k in range(len(STALL_CAUSES))]

    async def watch_issues(dut, issued):
        """Append ``[instruction, simulation time in ns, *kernel_stalls]`` whenever the
        sequencer issues one: its ``instruction`` register is written on each issue (the
        first of a run, 0, comes with ``ap_start``: no change to see; :func:`issue_cycles`
        places it)."""
        signal = dut.sequencer.instruction
        while True:
            await ValueChange(signal)
            issued.append([int(signal.value), get_sim_time("ns"), *kernel_stalls(dut)])

    async def watch_finishes(dut, finished):
        """Append ``[lanes, simulation time in ns, *kernel_stalls]`` whenever an issued
        instruction finishes: the sequencer's ``finished`` is a one-cycle pulse, a bit a
        lane (bit 0 main, bit 1 side; both in one cycle: 3)."""
        signal = dut.sequencer.finished
        while True:
            await ValueChange(signal)
            lanes = int(signal.value)
            if lanes:
                finished.append([lanes, get_sim_time("ns"), *kernel_stalls(dut)])

    def run_cycles(events, end_ns, cycles):
        """``events`` (``[what, time in ns, *rest]``) with the time as the cycle counted
        from ``ap_start``, anchored at the run's end: ``end_ns``, when it had run ``cycles``
        (the cycle counter's value)."""
        return [[what, cycles - round((end_ns - t) / CLOCK_NS), *rest]
                for what, t, *rest in events]

    def issue_cycles(issued, end_ns, cycles, stalls):
        """``issued`` (from :func:`watch_issues`) as ``[instruction, cycle, *kernel_stalls]``
        counted from ``ap_start``, anchored at the run's end: ``end_ns``, when it had run
        ``cycles`` (the cycle counter's value); instruction 0 at cycle 0 with the counters
        ``stalls`` at the start (the register's return to 0 at the start, after a run that
        ended elsewhere, is that issue)."""
        if issued and issued[0][0] == 0:
            issued = issued[1:]
        return [[0, 0, *stalls]] + run_cycles(issued, end_ns, cycles)

    def handshakes(handle, path="", depth=4):
        """``path value`` of every valid, ready, busy and FSM state signal below ``handle``:
        where a hung run waits."""
        lines = []
        for child in handle:
            name = f"{path}.{child._name}" if path else child._name
            if hasattr(child, "value") and not hasattr(child, "__iter__") or \
                    type(child).__name__.endswith("ObjectHandle") and hasattr(child, "value"):
                if any(key in child._name for key in ("valid", "ready", "busy", "fsm_state",
                                                      "done", "error")):
                    try:
                        lines.append(f"{name} {child.value}")
                    except Exception:   # a handle without a value
                        pass
            elif depth:
                try:
                    lines += handshakes(child, name, depth - 1)
                except TypeError:
                    pass
        return lines

    @cocotb.test()
    async def top_runs(dut):
        case = json.loads(os.environ["MOEVIT_CASE"])
        out = Path(os.environ["MOEVIT_SIM_OUT"])
        folder = Path(case["folder"])
        host = await power_up(dut, case)
        buffers = case["buffers"]
        runs = case["runs"]
        guard = Guard(host.ram.mem) if case["guard"] else None
        if case["guard"]:
            most = max(run["count"] for run in runs)
            program_bytes = max((folder / run["program"]).stat().st_size for run in runs)
            sizes = {"program": program_bytes, "weights": case["weights_bytes"],
                     "input": most * case["input_pitch"], "output": most * case["output_pitch"],
                     "scratch": case["scratch_bytes"]}
            guard.fill([(buffers[name], buffers[name] + size) for name, size in sizes.items()])
        host.ram.write(buffers["weights"], (folder / "weights.bin").read_bytes())
        fast = isinstance(host.ram, SimMemory)
        core = dut.top if fast else dut       # the accelerator itself

        async def read(address, length):
            return await host.ram.read(address, length) if fast else \
                host.ram.read(address, length)

        await host.arguments()
        summary = []
        for k, run in enumerate(runs):
            for n in range(run["count"]):
                host.ram.write(buffers["input"] + n * case["input_pitch"],
                               (folder / f"run{k}-image{n}.bin").read_bytes())
            host.ram.write(buffers["program"], (folder / run["program"]).read_bytes())
            if fast:
                await host.ram.load()
            host.slow(run["memory_pauses"], run["seed"], run["probability"], run["stalls"])
            if case["guard"]:
                guard.snapshot()
            if not fast:
                host.faults = [tuple(f) for f in run["faults"]]
            host.run_starts()
            await host.write("task", run["task"])
            await host.write("images", run["count"])
            issued, finished, watches, stalls = [], [], [], kernel_stalls(core)
            if case["timeline"]:
                watches = [cocotb.start_soon(watch_issues(core, issued)),
                           cocotb.start_soon(watch_finishes(core, finished))]
            await host.write("ap_ctrl", 1)
            if run["restart"]:
                await ClockCycles(dut.ap_clk, 50)
                await host.write("ap_ctrl", 1)
            during = {}
            if run["reset"]:
                await ClockCycles(dut.ap_clk, run["reset"])
                # Where the run was when the reset came (ap_ctrl's ap_done is lost with it).
                ctrl, status = await host.read("ap_ctrl"), await host.read("status")
                during = {"reset_idle": host.field("ap_ctrl", "ap_idle", ctrl),
                          "reset_instruction": host.field("status", "instruction", status)}
                await reset(dut)
                await host.arguments()
            else:
                try:
                    if not int(dut.interrupt.value):   # it may already be up (a short run)
                        await with_timeout(RisingEdge(dut.interrupt), run["timeout_us"], "us")
                except cocotb.triggers.SimTimeoutError:
                    (out / "hang.txt").write_text("\n".join(handshakes(dut)))
                    status = await host.read("status")
                    raise AssertionError(
                        f"run {k}: no interrupt after {run['timeout_us']} us, at instruction "
                        f"{host.field('status', 'instruction', status)} of image "
                        f"{host.field('status', 'image', status)}"
                        + (f" (the last issued, [index, cycle]: {issued[-3:]})" if issued
                           else "") + f"; the handshakes then: {out / 'hang.txt'}") from None
            if not fast:
                host.faults = []
            host.run_ended()
            end_ns = get_sim_time("ns")
            for watch in watches:
                watch.cancel()
            await host.write("isr", await host.read("isr"))   # toggle-on-write: clears it
            ctrl = await host.read("ap_ctrl")
            status, error = await host.read("status"), await host.read("error")
            row = {"task": run["task"], "images": run["count"],
                   "done": host.field("ap_ctrl", "ap_done", ctrl),
                   "idle": host.field("ap_ctrl", "ap_idle", ctrl),
                   "error": host.field("error", "code", error),
                   "start_while_busy": host.field("error", "start_while_busy", error),
                   "instruction": host.field("status", "instruction", status),
                   "image": host.field("status", "image", status),
                   "cycles": await host.read("cycles"), "bytes_read": host.bytes_read,
                   "port_bytes_read": list(host.port_bytes_read),
                   "busy": {unit: await host.read(f"busy_{unit}") for unit in REGMAP.units},
                   **during}
            if watches:
                row["issued"] = issue_cycles(issued, end_ns, row["cycles"], stalls)
                row["finished"] = run_cycles(finished, end_ns, row["cycles"])
                row["stalls_at_end"] = kernel_stalls(core)
            if case["guard"]:
                writable = [(buffers["output"],
                             buffers["output"] + run["count"] * case["output_pitch"]),
                            (buffers["scratch"], buffers["scratch"] + case["scratch_bytes"])]
                changed = guard.changed(writable)
                row.update(outside=len(changed), outside_at=changed[:8])
            summary.append(row)
            for n in range(run["count"]):
                (out / f"run{k}-output{n}.bin").write_bytes(await read(
                    buffers["output"] + n * case["output_pitch"], case["output_pitch"]))
            (out / f"run{k}-scratch.bin").write_bytes(
                await read(buffers["scratch"], case["scratch_bytes"]))
            # After every run: a long simulation stopped part way keeps the runs it finished.
            (out / "summary.json").write_text(json.dumps(summary))
