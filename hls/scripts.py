"""Vitis HLS and v++ scripts of the HLS top, and their dry run without AMD tools.

:func:`write_scripts` writes, under ``build/hls/<config>/<board>/``:

* ``parameters.h`` (:mod:`moevit.hls.generate`): the design point;
* ``tb_case/``: the top testbench's case (the config's program, weights,
  the calls of :func:`moevit.hls.csim.top_runs` and the interpreter's
  results), so ``csim_design -argv`` and ``cosim_design -argv`` run a
  self-checking testbench;
* ``moevit_top.tcl``, for ``vitis_hls -f``: ``open_project``, ``set_top
  moevit_top``, the kernel headers, the top and ``parameters.h``, the top's
  C-simulation testbench (``add_files -tb``), ``open_solution`` (flow target
  ``vivado`` on a Zynq board, ``vitis`` on an Alveo card), ``set_part`` from
  the board file, ``create_clock``, then ``csim_design``, ``csynth_design``,
  ``cosim_design`` and, on a Zynq board, ``export_design -format ip_catalog``
  (a Vivado IP for the block design);
* on an Alveo card (a board with a ``vitis_platform``), ``moevit_top.cfg`` and
  ``v++.sh``: ``v++ -c -t hw --platform <platform> -k moevit_top`` to
  ``moevit_top.xo``, the kernel that ``v++ -l`` links.

Checked against AMD's documentation (the ``search`` index of docs.amd.com):
the Tcl commands and their order as UG1399 2023.2 and UG1393 ("Vitis HLS
Script for Creating Kernels") show them, ``open_solution -flow_target
vitis|vivado`` (UG1399, open_solution; vivado is the default), ``export_design
-format ip_catalog`` (UG1399 2023.2, config_export: ``-format ip_catalog | xo
| ...``); ``v++ -c -k <kernel> --platform`` and the ``[hls]`` section of a
``--config`` file with ``clock=<Hz>:<kernel>`` (UG1393 2023.2, "--hls
Options"). The U280 platform name is the board file's
(``boards/u280.json``, UG1120); the index holds no page that lists it, so it
is not confirmed there.

:func:`dry_run` checks the scripts with no AMD tool: every file they name
exists, the top and the part are the board's, and the Tcl runs in a real
``tclsh`` with the Vitis HLS commands defined as recording stubs (so a typo
in a command name, a missing brace or a bad quote fails the dry run).

The top function itself is ``hls/src/top.cpp`` (``moevit_top``, executing the
compiled program) and its testbench ``hls/tb/tb_top.cpp``; the dry run checks
that the source defines the function ``set_top`` names.
"""

import functools
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from moevit.errors import ConfigError, MoevitError, ToolNotFoundError
from moevit.hls.csim import TB_DIR
from moevit.hls.generate import INCLUDE_DIR, PARAMETERS, TOP_SOURCE, check_hls, write_parameters
from moevit.paths import build_dir, output_folder, write_atomically

__all__ = ["TOP", "TOP_SOURCE", "TOP_TESTBENCH", "VITIS_VERSION", "Scripts", "Check",
           "write_scripts", "dry_run", "run_synthesis", "record_calls"]

TOP = "moevit_top"
#: The HLS top's C-simulation testbench (the top itself: ``TOP_SOURCE``, hls/src/top.cpp).
TOP_TESTBENCH = TB_DIR / "tb_top.cpp"
#: The last Vitis/Vivado release with the U280 (shared/DESIGN.md, platform facts).
VITIS_VERSION = "2023.2"
# The kernels' C++ (moevit_types.h uses C++17 only where g++ is; Vitis HLS 2023.2's
# front end takes -std=c++14, its documented default).
CFLAGS = "-std=c++14"
TCL, CFG, VPP_SCRIPT = f"{TOP}.tcl", f"{TOP}.cfg", "v++.sh"
#: The folder of the testbench's case (``csim_design -argv`` and ``cosim_design -argv``).
CASE = "tb_case"
# Vitis HLS commands the scripts may call: the dry run's tclsh defines exactly these.
VITIS_COMMANDS = ("open_project", "set_top", "add_files", "open_solution", "set_part",
                  "create_clock", "csim_design", "csynth_design", "cosim_design",
                  "export_design", "exit")


@dataclass
class Scripts:
    """What :func:`write_scripts` wrote.

    Attributes
    ----------
    folder : Path
    board : moevit.hw.boards.Board
    clock_mhz : float
        The synthesis clock: the HwConfig's target, capped at the board's clock.
    files : list of Path
        The files written (``parameters.h``, the Tcl, and on an Alveo card the
        ``.cfg`` and ``v++.sh``).
    tool : str
        The AMD tool that runs them: ``vitis_hls`` (Zynq) or ``v++`` (Alveo).
    """

    folder: Path
    board: object
    clock_mhz: float
    files: list = field(default_factory=list)
    tool: str = "vitis_hls"

    @property
    def tcl(self) -> Path:
        return self.folder / TCL


@dataclass
class Check:
    """One check of :func:`dry_run`: its name, whether it passed, and what it found."""

    name: str
    ok: bool
    detail: str


def _tcl_word(text) -> str:
    """``text`` as one Tcl word (braced: no substitution inside)."""
    text = str(text)
    if any(c in text for c in "{}\\\n"):
        raise ConfigError(f"Path {text!r} cannot be written into a Tcl script")
    return "{" + text + "}"


def _sources(params: Path) -> list:
    """``(path, testbench)`` of every file the scripts add, the top first."""
    headers = sorted(INCLUDE_DIR.glob("*.h"))
    return ([(TOP_SOURCE, False)] + [(h, False) for h in headers] + [(params, False)]
            + [(TOP_TESTBENCH, True), (TB_DIR / "tb_io.h", True)])


def _tcl(hw, board, clock_mhz, params: Path, case: Path) -> str:
    alveo = board.vitis_platform is not None
    cflags = f"{CFLAGS} -I{INCLUDE_DIR} -I{params.parent}"
    lines = [
        f"# Vitis HLS {VITIS_VERSION} script of the moevit HLS top, HwConfig {hw.name!r}, "
        f"board {board.name}.",
        f"# Written by moevit.hls.scripts; run: vitis_hls -f {TCL}   (in this folder)",
        f"open_project -reset {TOP}_prj",
        f"set_top {TOP}",
    ]
    for path, testbench in _sources(params):
        tb = "-tb " if testbench else ""
        lines.append(f"add_files {tb}{_tcl_word(path)} -cflags {_tcl_word(cflags)}")
    lines += [
        f"open_solution -reset solution1 -flow_target {'vitis' if alveo else 'vivado'}",
        f"set_part {_tcl_word(board.part)}",
        f"create_clock -period {1000.0 / clock_mhz:.3f} -name default",
        f"csim_design -argv {_tcl_word(case)}",
        "csynth_design",
        f"cosim_design -argv {_tcl_word(case)}",
    ]
    if not alveo:  # a Vivado IP for the Zynq block design; the U280 takes v++'s .xo
        lines.append("export_design -format ip_catalog")
    lines.append("exit")
    return "\n".join(lines) + "\n"


def _cfg(board, clock_mhz) -> str:
    return "\n".join([
        f"# v++ -c configuration of {TOP} for {board.name} (Vitis {VITIS_VERSION}); the",
        f"# platform is on the command line ({VPP_SCRIPT}).",
        "[hls]",
        f"clock={round(clock_mhz * 1e6)}:{TOP}",
        "",
    ])


def _vpp(board, params: Path) -> str:
    includes = " ".join(f"-I {shlex.quote(str(p))}" for p in (INCLUDE_DIR, params.parent))
    return "\n".join([
        "#!/bin/sh",
        f"# Compile the moevit HLS top to a Vitis kernel for {board.name} "
        f"(Vitis {VITIS_VERSION}); run in this folder.",
        "set -e",
        f"v++ -c -t hw --platform {board.vitis_platform} -k {TOP} --config {CFG} {includes} "
        f"-o {TOP}.xo {shlex.quote(str(TOP_SOURCE))}",
        "",
    ])


def write_scripts(config="tiny", board="zcu102", folder=None) -> Scripts:
    """Write the scripts of ``config``'s default HwConfig for ``board``.

    Parameters
    ----------
    config : str
        A model config name (its default HwConfig).
    board : str
        A board name of :data:`moevit.hw.boards.BOARDS` or a board ``.json``.
    folder : path, optional
        Default ``build/hls/<config>/<board>/``.

    Raises
    ------
    ConfigError
        An unknown config or board, or a HwConfig the templates cannot express.
    OutputPathError
        ``folder`` cannot be written.
    """
    from moevit.hw.boards import get_board
    from moevit.hw.config import get_hw_config

    hw = get_hw_config(config)
    check_hls(hw)
    board = get_board(board)
    if board.vitis_max is not None and board.vitis_max < VITIS_VERSION:
        raise ConfigError(f"Board {board.name} is supported up to Vitis {board.vitis_max}; "
                          f"these scripts are for {VITIS_VERSION}")
    if folder is None:
        folder = build_dir("hls", hw.name, board.name).resolve()
    else:
        folder = output_folder(folder, "HLS script folder").resolve()
    clock_mhz = min(hw.clock_mhz, board.clock_mhz)
    params = write_parameters(hw, folder)
    case = _write_case(config, folder / CASE)
    scripts = Scripts(folder, board, clock_mhz, [params, case / "runs.txt"])
    texts = {TCL: _tcl(hw, board, clock_mhz, params, case)}
    if board.vitis_platform is not None:
        texts[CFG] = _cfg(board, clock_mhz)
        texts[VPP_SCRIPT] = _vpp(board, params)
        scripts.tool = "v++"
    for name, text in texts.items():
        path = write_atomically(folder / name, lambda p, text=text: p.write_text(text),
                                "HLS script")
        scripts.files.append(path)
        if name == VPP_SCRIPT:
            path.chmod(0o755)
    return scripts


@functools.lru_cache(maxsize=4)
def _case_program(config):
    """The compiled program of ``config``'s quantized model (as ``moevit hls csim``
    makes it), the calls of :func:`moevit.hls.csim.top_runs` and what the
    interpreter computes for them."""
    from moevit.hls.cases import quantized_model
    from moevit.hls.csim import top_runs
    from moevit.hw.config import get_hw_config
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden
    from moevit.sim.benches.top import expected_runs

    qmodel, image = quantized_model(config)
    program = compile_program(qmodel, get_hw_config(config))
    runs = top_runs(program, golden.quantize_image(image, qmodel.scale("input")))
    return program, runs, expected_runs(program, runs)


def _write_case(config, folder: Path) -> Path:
    """The top testbench's case for Vitis HLS's C simulation and co-simulation: the
    program, weights and images of :func:`_case_program`, and the interpreter's
    outputs, so that ``tb_top`` checks itself (exit 1 on a difference)."""
    from moevit.hls.csim import write_top_case

    program, runs, expected = _case_program(config)
    write_top_case(program, runs, folder, expected=expected)
    return folder


# The dry run's tclsh harness (shared with moevit.host.bitstream's Vivado scripts): each
# stubbed tool command appends its call to a list and returns its last word (so a getter
# nested in another call, ``[get_bd_pins x/y]``, hands its object on); the calls are
# printed one a line, words separated by the unit separator (\x1f).
_HARNESS = """
set ::calls {}
foreach name {%s} {
    if {$name eq "exit"} { rename exit ::tcl_exit }
    set space [namespace qualifiers $name]
    if {$space ne ""} { namespace eval ::$space {} }
    proc ::$name args "lappend ::calls \\[linsert \\$args 0 $name\\]; return \\[lindex \\$args end\\]"
}
if {[catch {source [lindex $argv 0]} message]} {
    puts stderr "line $::errorInfo"
    ::tcl_exit 3
}
foreach call $::calls { puts [join $call \\x1f] }
"""


def record_calls(tcl: Path, commands=VITIS_COMMANDS) -> list:
    """The tool ``commands`` ``tcl`` calls, in order, each a list of words, as a real
    ``tclsh`` sources it with those commands stubbed (default: Vitis HLS's).

    Raises :class:`ToolNotFoundError` without ``tclsh``, :class:`MoevitError`
    when the script does not run (the Tcl error's first line).
    """
    tclsh = shutil.which("tclsh")
    if tclsh is None:
        raise ToolNotFoundError("tclsh not found: the scripts' dry run parses the Tcl in a "
                                "real tclsh (apt-get install tcl, or make sysdeps)")
    harness = _HARNESS % " ".join(commands)
    done = subprocess.run([tclsh, "/dev/stdin", str(tcl)], input=harness, capture_output=True,
                          text=True)
    if done.returncode:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise MoevitError(f"The Tcl script {tcl} does not run in tclsh: {first}")
    return [line.split("\x1f") for line in done.stdout.splitlines()]


def _option(call, name, default=None):
    """The value after option ``name`` in ``call``."""
    return call[call.index(name) + 1] if name in call[:-1] else default


def _named_files(scripts: Scripts, calls) -> list:
    """Every file the scripts name: the Tcl's ``add_files`` and the ``v++`` sources."""
    files = [Path(call[2] if call[1] == "-tb" else call[1]) for call in calls
             if call[0] == "add_files"]
    vpp = scripts.folder / VPP_SCRIPT
    if vpp.exists():
        for line in vpp.read_text().splitlines():
            words = shlex.split(line) if line.startswith("v++") else []
            files += [Path(w) for w in words if w.endswith(".cpp")]
            files += [scripts.folder / w for w in words if w.endswith(".cfg")]
    return files


def dry_run(scripts: Scripts) -> list:
    """The checks of the scripts written by :func:`write_scripts` (a list of :class:`Check`).

    Every check runs; the caller fails when one is not ``ok``.
    """
    board = scripts.board
    calls = record_calls(scripts.tcl)
    names = [call[0] for call in calls]
    checks = [Check("tcl parses in tclsh", True, f"{len(calls)} Vitis HLS commands recorded")]

    named = _named_files(scripts, calls)
    added = {(Path(c[2]), True) if c[1] == "-tb" else (Path(c[1]), False)
             for c in calls if c[0] == "add_files"}
    expected = _sources(scripts.folder / PARAMETERS)
    unnamed = [p for p, tb in expected if (p, tb) not in added]
    checks.append(Check("every source is added", not unnamed,
                        f"{len(expected)} files: the top, the kernel headers, {PARAMETERS}, "
                        f"the testbench (-tb)" if not unnamed else
                        "not added (or -tb wrong): " + ", ".join(p.name for p in unnamed)))
    missing = [p for p in dict.fromkeys(named) if not p.is_file()]
    checks.append(Check("every named file exists", not missing,
                        f"{len(set(named))} files named" if not missing
                        else "missing: " + ", ".join(map(str, missing))))
    defined = TOP_SOURCE.is_file() and re.search(rf"^void {TOP}\(", TOP_SOURCE.read_text(), re.M)
    checks.append(Check("the top function is defined", bool(defined),
                        f"void {TOP}(...) in {TOP_SOURCE.name}" if defined
                        else f"{TOP_SOURCE} defines no function {TOP}"))

    case = scripts.folder / CASE
    argv = [_option(c, "-argv") for c in calls if c[0] in ("csim_design", "cosim_design")]
    written = [case / name for name in ("runs.txt", "weights.bin", "program.bin",
                                        "run0-expected-output.bin", "run0-expected-scratch.bin")]
    lacking = [p.name for p in written if not p.is_file()]
    checks.append(Check("the testbench's case", argv == [str(case)] * 2 and not lacking,
                        f"csim_design and cosim_design -argv {argv}"
                        + (f"; {case} lacks {', '.join(lacking)}" if lacking else "")))
    tops = [call[1:] for call in calls if call[0] == "set_top"]
    checks.append(Check("set_top", tops == [[TOP]], f"set_top {tops}"))
    parts = [call[1:] for call in calls if call[0] == "set_part"]
    checks.append(Check("set_part is the board's", parts == [[board.part]],
                        f"{parts} (board {board.name}: {board.part})"))
    solutions = [c for c in calls if c[0] == "open_solution"]
    target = "vitis" if board.vitis_platform else "vivado"
    got = [_option(c, "-flow_target") for c in solutions]
    checks.append(Check("flow target", got == [target], f"{got} (expected {target})"))
    clocks = [c for c in calls if c[0] == "create_clock"]
    period = 1000.0 / scripts.clock_mhz
    got = [float(_option(c, "-period", "nan")) for c in clocks]
    checks.append(Check("clock", len(got) == 1 and abs(got[0] - period) < 1e-3,
                        f"period {got} ns (expected {period:.3f} ns, {scripts.clock_mhz:g} MHz)"))
    flow = ["open_project", "set_top", "open_solution", "set_part", "create_clock",
            "csim_design", "csynth_design", "cosim_design"]
    exports = [c for c in calls if c[0] == "export_design"]
    if board.vitis_platform is None:
        flow.append("export_design")
        ok = [_option(c, "-format") for c in exports] == ["ip_catalog"]
        checks.append(Check("export_design -format ip_catalog", ok, f"{exports}"))
    else:
        checks.append(Check("no Vivado IP export on an Alveo card", not exports, f"{exports}"))
        checks.append(_check_vpp(scripts))
    order = [n for n in names if n in flow]
    checks.append(Check("flow order", order == flow, " -> ".join(order)))
    return checks


def _check_vpp(scripts: Scripts) -> Check:
    """The ``v++ -c`` command and its ``.cfg``: target, platform, kernel, output, clock."""
    board = scripts.board
    lines = [line for line in (scripts.folder / VPP_SCRIPT).read_text().splitlines()
             if line.startswith("v++")]
    words = shlex.split(lines[0]) if len(lines) == 1 else []
    cfg = (scripts.folder / CFG).read_text().splitlines()
    want = {"-t": "hw", "--platform": board.vitis_platform, "-k": TOP, "-o": f"{TOP}.xo",
            "--config": CFG}
    wrong = [f"{k} {_option(words, k)!r} (expected {v!r})" for k, v in want.items()
             if _option(words, k) != v]
    if "-c" not in words:
        wrong.append("no -c")
    clock = f"clock={round(scripts.clock_mhz * 1e6)}:{TOP}"
    for line in ("[hls]", clock):
        if line not in cfg:
            wrong.append(f"{CFG} lacks {line!r}")
    return Check("v++ -c to an .xo", not wrong and bool(words),
                 "; ".join(wrong) or f"v++ -c -t hw --platform {board.vitis_platform} -k {TOP}")


def run_synthesis(scripts: Scripts) -> None:
    """Run the AMD tool on the scripts; :class:`ToolNotFoundError` when it is missing.

    The tool is checked before the top: without Vitis nothing else can be learnt here.
    """
    tool = shutil.which(scripts.tool)
    if tool is None:
        raise ToolNotFoundError(
            f"{scripts.tool} not found: the HLS synthesis needs AMD Vitis {VITIS_VERSION} "
            f"(source its settings64.sh); the scripts are written in {scripts.folder}")
    command = ([tool, "-f", TCL] if scripts.tool == "vitis_hls"
               else ["sh", VPP_SCRIPT])
    done = subprocess.run(command, cwd=scripts.folder)
    if done.returncode:
        raise MoevitError(f"{' '.join(command)} failed (exit {done.returncode}) in "
                          f"{scripts.folder}")
