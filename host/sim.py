"""The ``sim`` backend: the co-simulated RTL top as a device, for the same driver code as a board.

:class:`SimBackend` starts the simulator in a child process (cocotb's runner
through :func:`moevit.sim.runner.run_cocotb`, on the Verilog of
:class:`~moevit.hw.top.accelerator.Accelerator` for the HwConfig, with Vitis
port names). The cocotb test of this module (:func:`serve`) powers the top
up, connects back to the parent over a local socket and serves its commands
from a blocking loop run beside the simulator through cocotb's thread bridge
(``cocotb.task.bridge``, and ``cocotb.task.resume`` for each bus access):

=============  =====================================================================
``read32``     ``AxiLiteMaster.read_dword`` on ``s_axi_control``
``write32``    ``AxiLiteMaster.write_dword``
``write``      bytes into the ``AxiRam`` on ``m_axi_gmem`` (a buffer is a range of it)
``read``       bytes from the ``AxiRam``
``sleep``      run the clock N cycles, or until ``interrupt`` rises (a host woken by
               its interrupt)
``reset``      ``ap_rst_n`` low for a few cycles (the RAM keeps its bytes)
``faults``     the memory's SLVERR / DECERR ranges (``FaultyRam.faults``)
``pauses``     the memory's pause pattern from now on (``Host.slow``)
``schedule``   an event (a reset, a second ``ap_start``) at a cycle after the next start
``close``      end the test, and so the simulator
=============  =====================================================================

The simulator stands still while the parent thinks, so the device's time is
simulated time: ``sleep(seconds)`` is ``seconds * clock_hz`` cycles of the
HwConfig's clock. The Verilog is written once per HwConfig and RTL source
(under ``build/sim/_rtl/``) and the simulator's build is cached by
``run_cocotb`` under ``build/sim/_builds/`` (keyed by the Verilog's text), so
the demo, ``moevit run``, the notebook and the tests build a top once.

A simulator that ends or crashes is a :class:`~moevit.errors.DeviceError`
with the tail of its log, never a hang.

Faults, on this backend only (beyond the :class:`~moevit.host.backend.Backend`
contract; the driver never calls them): :meth:`SimBackend.inject` makes the
memory answer SLVERR or DECERR for a range of a buffer, :meth:`SimBackend.pause_memory`
slows it (``"stall"``: stalls of thousands of cycles), :meth:`SimBackend.schedule`
resets the top or writes ``ap_start`` again a number of cycles into the next run.
The reliability tests inject through them what the RTL suite injects
(``tests/test_faults.py``) and check that the driver turns each into a clear error
and recovers.
"""

import hashlib
import itertools
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from moevit.errors import ConfigError, DeviceError
from moevit.host.backend import Backend, Buffer

__all__ = ["SimBackend", "SimBuffer", "top_verilog", "TOPLEVEL"]

TOPLEVEL = "moevit_top"
#: Memory pause patterns: :func:`moevit.sim.streams.pauses`' kinds, and ``"stall"``
#: (:func:`moevit.sim.benches.top.stalls`).
PAUSES = ("none", "fixed", "random", "stall")
RESPONSES = ("SLVERR", "DECERR")
SIDES = (None, "read", "write")
#: What :meth:`SimBackend.schedule` can do in the middle of a run.
EVENTS = ("reset", "start")
#: The first buffer's address, and every buffer's alignment.
BASE_ADDRESS, ALIGN = 0x0010_0000, 4096
_sessions = itertools.count()


def _rtl_key(hw) -> str:
    """A hash of the HwConfig and of every source file of the RTL (``moevit.hw``)."""
    import moevit.hw

    digest = hashlib.sha256(json.dumps(hw.to_dict(), sort_keys=True).encode())
    for path in sorted(Path(moevit.hw.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def top_verilog(hw) -> Path:
    """The Verilog of the whole top for ``hw`` (Vitis ports) and its register map JSON
    beside it, written once per HwConfig and RTL source; the Verilog's path."""
    from moevit.hw.program import regmap
    from moevit.paths import build_dir, write_atomically

    folder = build_dir("sim", "_rtl", f"host-{hw.name}-{_rtl_key(hw)}").resolve()
    source = folder / f"{TOPLEVEL}.v"
    if not source.exists():
        from moevit.hw.generate import to_verilog

        from moevit.hw.top.accelerator import Accelerator
        from moevit.hw.top.control import vitis_ports

        top = Accelerator(hw)
        text = to_verilog(top, TOPLEVEL, vitis_ports(top))
        write_atomically(source, lambda p: p.write_text(text), "Verilog of the top")
        regmap.write(folder)
    return source


class SimBuffer(Buffer):
    """A range of the simulated memory."""

    def __init__(self, backend, name, address, nbytes):
        self.backend, self.name, self.address, self.nbytes = backend, name, address, nbytes

    def _check(self, offset, nbytes):
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise ConfigError(f"Buffer {self.name!r}: bytes {offset}..{offset + nbytes} lie "
                              f"outside its {self.nbytes} bytes")

    def write(self, data, offset=0):
        data = bytes(memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray)
                                else data).cast("B"))
        self._check(offset, len(data))
        self.backend._call("write", self.address + offset, data)

    def read(self, nbytes=None, offset=0):
        nbytes = self.nbytes - offset if nbytes is None else nbytes
        self._check(offset, nbytes)
        return np.frombuffer(self.backend._call("read", self.address + offset, nbytes),
                             np.uint8).copy()


class SimBackend(Backend):
    """The accelerator top for ``hw`` in a co-simulation (a child process).

    Parameters
    ----------
    hw : HwConfig or str, optional
        The design (a HwConfig or its name); default the ``program``'s.
    program : Program or path, optional
        A compiled program (or its folder) whose HwConfig to build.
    simulator : str
        ``"verilator"`` (default: fast on a whole model) or ``"icarus"``.
    memory_pauses : str
        One of :data:`PAUSES`: the memory's pause pattern on every channel
        (:meth:`pause_memory`), with ``seed`` and ``probability``.
    memory_bytes : int
        Size of the simulated memory.
    start_timeout : float
        Wall seconds allowed to build and start the simulator.
    progress : bool
        A progress line while the simulator builds and starts.

    Raises
    ------
    ConfigError
        Neither ``hw`` nor ``program``, or an unknown simulator.
    DeviceError
        The simulator did not start (its log's tail in the message).
    """

    name = "sim"

    def __init__(self, hw=None, *, program=None, simulator: str = "verilator",
                 memory_pauses: str = "none", seed: int = 0, probability: float = 0.3,
                 memory_bytes: int = 1 << 26, start_timeout: float = 3600.0,
                 progress: bool = True):
        from moevit.hw.config import HwConfig, get_hw_config
        from moevit.sim.runner import SIMULATORS

        if simulator not in SIMULATORS:
            raise ConfigError(f"Simulator must be one of {SIMULATORS}, not {simulator!r}")
        if memory_pauses not in PAUSES:
            raise ConfigError(f"Memory pauses must be one of {PAUSES}, not {memory_pauses!r}")
        if program is not None and not hasattr(program, "hw"):
            from moevit.hw.program.program import read_program

            program = read_program(program)
        if hw is None:
            if program is None:
                raise ConfigError("The sim backend needs a HwConfig (hw=) or a program (program=)")
            hw = program.hw
        self.hw = hw if isinstance(hw, HwConfig) else get_hw_config(hw)
        self.clock_hz = self.hw.clock_mhz * 1e6
        self.memory_bytes, self._next = int(memory_bytes), BASE_ADDRESS
        self._conn = self._process = None
        self._faults = []
        self.verilog = top_verilog(self.hw)
        self.regmap_path = self.verilog.parent / "moevit_control.json"
        self._start(simulator, {"memory_bytes": self.memory_bytes}, start_timeout, progress)
        if memory_pauses != "none":
            self.pause_memory(memory_pauses, seed=seed, probability=probability)

    # The child process ----------------------------------------------------------------
    def _start(self, simulator, case, timeout, progress):
        from moevit.paths import build_dir
        from moevit.sim.runner import sim_folder

        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(1.0)
        token = secrets.token_hex(16)
        test_id = f"host-sim-{os.getpid()}-{next(_sessions)}"
        self.log = build_dir("sim", "_host").resolve() / f"{test_id}.log"
        self._sim_log = sim_folder(test_id) / "sim.log"
        job = {"verilog": str(self.verilog), "simulator": simulator, "test_id": test_id,
               "case": dict(case, port=listener.getsockname()[1], token=token)}
        with open(self.log, "w") as log:
            self._process = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(job)],
                                             stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc=f"starting the simulated top ({simulator}; the first build takes "
                            f"minutes)", unit="s", leave=False)
        began = time.monotonic()
        try:
            while True:
                try:
                    sock, _ = listener.accept()
                    break
                except socket.timeout:
                    if bar is not None:
                        bar.update(1)
                    if self._process.poll() is not None:
                        raise DeviceError(f"The simulator ended before it served "
                                          f"(exit code {self._process.returncode}): "
                                          f"{self._log_tail()}") from None
                    if time.monotonic() - began > timeout:
                        self._kill()
                        raise DeviceError(f"The simulator did not start within {timeout:g} s; "
                                          f"log {self.log}") from None
        finally:
            listener.close()
            if bar is not None:
                bar.close()
        sock.setblocking(True)
        self._conn = Connection(sock.detach())
        if self._receive() != token:
            self._kill()
            raise DeviceError("Another process answered the simulator's socket")

    def _log_tail(self, lines=15) -> str:
        """The end of the simulation's log (or of the child's, when it never simulated)."""
        log = self._sim_log if self._sim_log.exists() else self.log
        text = log.read_text(errors="replace") if log.exists() else ""
        return f"log {log}, ending:\n" + "\n".join(text.splitlines()[-lines:])

    def _receive(self):
        """The child's next message; a DeviceError if it died (never a hang)."""
        while not self._conn.poll(1.0):
            if self._process.poll() is not None:
                self._conn = None
                raise DeviceError(f"The simulator ended unexpectedly (exit code "
                                  f"{self._process.returncode}); {self._log_tail()}")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._conn = None
            self._process.wait(timeout=30)
            raise DeviceError(f"The simulator closed its connection; {self._log_tail()}") from None

    def _call(self, command, *args):
        if self._conn is None:
            raise DeviceError("The simulator is closed")
        try:
            self._conn.send((command, *args))
        except OSError:
            self._conn = None
            raise DeviceError(f"The simulator is gone; {self._log_tail()}") from None
        status, value = self._receive()
        if status != "ok":
            raise DeviceError(f"The simulated device failed on {command}: {value}")
        return value

    def _kill(self):
        import signal

        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    # The contract ----------------------------------------------------------------------
    def read32(self, offset):
        return self._call("read32", int(offset))

    def write32(self, offset, value):
        self._call("write32", int(offset), int(value) & 0xFFFFFFFF)

    def allocate(self, name, nbytes):
        nbytes = int(nbytes)
        if self._next + nbytes > self.memory_bytes:
            raise ConfigError(f"Buffer {name!r} of {nbytes} bytes does not fit the simulated "
                              f"memory of {self.memory_bytes} bytes (memory_bytes=)")
        buffer = SimBuffer(self, name, self._next, nbytes)
        self._next += -(-nbytes // ALIGN) * ALIGN
        return buffer

    def sleep(self, seconds):
        """Run the clock ``seconds`` of the HwConfig's clock, or until the interrupt rises."""
        self._call("sleep", max(1, int(np.ceil(seconds * self.clock_hz))))

    def reset(self):
        self._call("reset")

    def close(self):
        """End the simulation (the child exits; killed if it does not within 30 s)."""
        if self._conn is not None:
            try:
                self._call("close")
            except DeviceError:
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None:
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill()
            if self._process.returncode == 0:   # a clean end: its logs say nothing
                import shutil

                shutil.rmtree(self._sim_log.parent, ignore_errors=True)
                self.log.unlink(missing_ok=True)

    # Faults (this backend only) -------------------------------------------------------------
    def inject(self, response, buffer, *, offset=0, nbytes=None, side=None):
        """From now until :meth:`clear_faults`, the memory answers ``response`` (``"SLVERR"`` or
        ``"DECERR"``) to every burst that touches bytes ``[offset, offset + nbytes)`` of
        ``buffer`` (default: all of it), on ``side`` (``"read"``, ``"write"``; None: both).
        Faults add up."""
        if response not in RESPONSES:
            raise ConfigError(f"A memory fault's response must be one of {RESPONSES}, "
                              f"not {response!r}")
        if side not in SIDES:
            raise ConfigError(f"A memory fault's side must be one of {SIDES}, not {side!r}")
        if not isinstance(buffer, SimBuffer) or buffer.backend is not self:
            raise ConfigError(f"A memory fault needs a buffer of this device, not {buffer!r}")
        nbytes = buffer.nbytes - offset if nbytes is None else nbytes
        buffer._check(offset, nbytes)
        start = buffer.address + offset
        self._faults.append((start, start + nbytes, response, *([side] if side else [])))
        self._call("faults", self._faults)

    def clear_faults(self):
        """The memory answers OKAY again everywhere."""
        self._faults = []
        self._call("faults", self._faults)

    def pause_memory(self, kind, *, seed=0, probability=0.3, **stalls):
        """From now on, pause the memory's five channels on the pattern ``kind`` (one of
        :data:`PAUSES`, from ``seed``; ``probability`` for ``"random"``; ``stalls``: the
        keywords of :func:`moevit.sim.benches.top.stalls` for ``"stall"``)."""
        if kind not in PAUSES:
            raise ConfigError(f"Memory pauses must be one of {PAUSES}, not {kind!r}")
        if stalls and kind != "stall":
            raise ConfigError(f"Stall options {sorted(stalls)} need memory pauses 'stall', "
                              f"not {kind!r}")
        self._call("pauses", kind, int(seed), float(probability), stalls)

    def schedule(self, event, cycles):
        """``event`` (one of :data:`EVENTS`: ``"reset"`` pulses ``ap_rst_n``, ``"start"``
        writes ``ap_start`` again) ``cycles`` after the next write of ``ap_start``, if the
        run is still going then (it happens while the driver sleeps)."""
        if event not in EVENTS:
            raise ConfigError(f"A scheduled event must be one of {EVENTS}, not {event!r}")
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise ConfigError(f"Cycles must be a positive integer, not {cycles!r}")
        self._call("schedule", event, cycles)

    def __del__(self):
        if getattr(self, "_process", None) is not None and self._process.poll() is None:
            self._kill()


def _simulate(job):
    """The child process: build (or reuse) the top and run :func:`serve` on it."""
    from moevit.sim.runner import run_cocotb

    result = run_cocotb(toplevel=TOPLEVEL, sources=[job["verilog"]], test_module="moevit.host.sim",
                        test_id=job["test_id"], simulator=job["simulator"],
                        env={"MOEVIT_DEVICE": json.dumps(job["case"])}, check=False)
    return 0 if result.tests and not result.failed else 1


try:
    import cocotb
except ImportError:  # the driver's side needs no cocotb
    cocotb = None

if cocotb is not None:
    from cocotb.task import bridge, resume
    from cocotb.triggers import First, RisingEdge, Timer
    from cocotb.utils import get_sim_steps, get_sim_time

    from moevit.hw.program.regmap import REGMAP
    from moevit.sim.benches.common import CLOCK_NS

    @cocotb.test()
    async def serve(dut):
        """Power the top up, connect to the parent and serve its commands until ``close``."""
        from moevit.sim.benches.top import power_up, reset

        case = json.loads(os.environ["MOEVIT_DEVICE"])
        host = await power_up(dut, case)
        sock = socket.create_connection(("127.0.0.1", case["port"]))
        conn = Connection(sock.detach())
        conn.send(case["token"])

        ap_ctrl, ap_start = REGMAP["ap_ctrl"].offset, REGMAP["ap_ctrl"].field("ap_start").mask
        armed, due = [], []   # (event, cycles) for the next start; (step, event) of this run

        def steps(cycles):   # simulator steps: integers, so Timers land exactly
            return get_sim_steps(cycles * CLOCK_NS, "ns")

        async def write32(offset, value):
            await host.regs.write_dword(offset, value)
            if offset == ap_ctrl and value & ap_start:
                now = int(get_sim_time())
                due[:] = sorted((now + steps(cycles), event) for event, cycles in armed)
                armed.clear()

        async def sleep(cycles):
            # A Timer, not ClockCycles (which wakes Python at every edge): the simulator
            # runs free until the time is up, the interrupt rises or an event is due. Events
            # happen here, never inside a bus access.
            end = int(get_sim_time()) + steps(cycles)
            while not int(dut.interrupt.value) and (now := int(get_sim_time())) < end:
                until = min([at for at, _ in due if at < end] + [end])
                if until > now:
                    await First(Timer(until - now, unit="step"), RisingEdge(dut.interrupt))
                while due and due[0][0] <= int(get_sim_time()) and not int(dut.interrupt.value):
                    _, event = due.pop(0)
                    if event == "reset":
                        await reset(dut)
                    else:
                        await host.regs.write_dword(ap_ctrl, ap_start)

        def faults(ranges):
            host.ram.faults = [tuple(r) for r in ranges]

        async def pauses(kind, seed, probability, stalls):   # starts cocotb tasks: resumed
            host.slow(kind, seed, probability, stalls)

        commands = {
            "read32": resume(host.regs.read_dword),
            "write32": resume(write32),
            "write": host.ram.write,
            "read": host.ram.read,
            "sleep": resume(sleep),
            "reset": resume(lambda: reset(dut)),
            "faults": faults,
            "pauses": resume(pauses),
            "schedule": lambda event, cycles: armed.append((event, cycles)),
        }

        @bridge
        def loop():
            while True:
                try:
                    command, *args = conn.recv()
                except EOFError:   # the parent is gone
                    return
                if command == "close":
                    conn.send(("ok", None))
                    return
                try:
                    value = commands[command](*args)
                except Exception as error:   # reported to the parent, the device lives on
                    conn.send(("error", f"{type(error).__name__}: {error}"))
                else:
                    conn.send(("ok", bytes(value) if command == "read" else value))

        await loop()
        conn.close()


if __name__ == "__main__":
    sys.exit(_simulate(json.loads(sys.argv[1])))
