"""C simulation of the HLS kernels with g++ and the ``ap_types`` headers hls4ml ships.

Each kernel has a testbench, ``hls/tb/tb_<kernel>.cpp``, compiled against the
kernel headers (``hls/include``), the configuration header of a HwConfig
(:mod:`moevit.hls.generate`) and the ``ap_int`` / ``hls_stream`` C-simulation
models of ``hls4ml/templates/vivado/ap_types`` (no AMD tools). Python writes
the cases (:mod:`moevit.hls.cases`) as int64 values into one file, the
testbench writes its outputs into another, and :func:`run_kernel` compares
every output with the golden model's, in full. A testbench that crashes,
reads an empty ``hls::stream`` or leaves data in one (the C-simulation
model prints a warning) fails as a mismatch would.
"""

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moevit.errors import MoevitError, ToolNotFoundError
from moevit.hls.generate import INCLUDE_DIR, write_parameters
from moevit.paths import build_dir

__all__ = ["HlsBuildError", "KernelResult", "TB_DIR", "CXXFLAGS", "compiler", "ap_types_dir",
           "build_testbench", "run_kernel"]

TB_DIR = Path(__file__).resolve().parent / "tb"
CXXFLAGS = ("-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-label")
# What the C-simulation model of hls::stream prints on a read of an empty
# stream or a stream destroyed with data left in it.
_STREAM_WARNING = "WARNING: Hls::stream"


class HlsBuildError(MoevitError):
    """A testbench did not compile."""


@dataclass
class KernelResult:
    """What :func:`run_kernel` found.

    Attributes
    ----------
    kernel : str
    cases : int
    shapes : list of str
        The distinct shapes of the cases, in order.
    mismatches : list of str
        One line per case that differed: its label, the output, how many
        values differ and the first of them. Empty when every output is
        bit-exact.
    seconds : float
        Wall time of the testbench run.
    """

    kernel: str
    cases: int
    shapes: list
    mismatches: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        return not self.mismatches


def compiler() -> str:
    """The C++ compiler (``$CXX``, default ``g++``), or :class:`ToolNotFoundError`."""
    name = os.environ.get("CXX") or "g++"
    path = shutil.which(name)
    if path is None:
        raise ToolNotFoundError(
            f"C++ compiler {name!r} not found: the HLS C simulation needs g++ with C++17 "
            f"(apt-get install g++, or set CXX)")
    return path


def ap_types_dir() -> Path:
    """``hls4ml/templates/vivado/ap_types``: ``ap_int.h`` and the C-simulation ``hls_stream.h``."""
    try:
        import hls4ml
    except ImportError:
        raise ToolNotFoundError(
            "hls4ml is not installed: the HLS C simulation takes the ap_types headers from it "
            "(make install)") from None
    folder = Path(hls4ml.__file__).resolve().parent / "templates" / "vivado" / "ap_types"
    if not (folder / "ap_int.h").is_file():
        raise ToolNotFoundError(f"hls4ml {hls4ml.__version__} has no ap_types headers in {folder}")
    return folder


def build_testbench(kernel, hw, folder=None) -> Path:
    """Compile ``tb_<kernel>`` for ``hw`` into ``folder`` (default ``build/hls/<name>/csim``).

    Writes ``parameters.h`` first, into ``build/hls/<name>/`` (or ``folder``
    when given); compiles again only when a source, the header or the flags
    changed. Returns the executable.

    Raises
    ------
    ConfigError
        When the templates cannot express ``hw``.
    ToolNotFoundError
        Without g++ or hls4ml.
    HlsBuildError
        When the testbench does not compile (the compiler's first lines).
    """
    cxx = compiler()
    ap_types = ap_types_dir()
    if folder is None:
        params = write_parameters(hw)
        folder = build_dir("hls", hw.name, "csim")
    else:
        folder = Path(folder)
        params = write_parameters(hw, folder)
    source = TB_DIR / f"tb_{kernel}.cpp"
    command = [cxx, *CXXFLAGS, "-I", str(INCLUDE_DIR), "-I", str(TB_DIR), "-I", str(params.parent),
               "-isystem", str(ap_types), str(source), "-o", str(folder / f"tb_{kernel}")]
    digest = hashlib.sha256(" ".join(command).encode())
    for path in sorted([*INCLUDE_DIR.glob("*.h"), *TB_DIR.glob("*"), params]):
        digest.update(path.name.encode() + path.read_bytes())
    stamp = folder / f"tb_{kernel}.sha256"
    binary = folder / f"tb_{kernel}"
    if binary.is_file() and stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return binary
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines
        raise HlsBuildError(f"tb_{kernel}.cpp does not compile: {' | '.join(errors[:3])}")
    stamp.write_text(digest.hexdigest())
    return binary


def run_kernel(kernel, hw, cases, *, folder=None, tag=None) -> KernelResult:
    """Run ``cases`` (of :mod:`moevit.hls.cases`) through ``tb_<kernel>`` and compare
    every output in full.

    ``tag`` names the case files (default: the kernel), so runs with
    different cases keep their files apart under ``build/hls/<name>/csim``.
    """
    binary = build_testbench(kernel, hw, folder)
    base = binary.parent / (tag or kernel)
    infile, outfile = base.with_suffix(".in"), base.with_suffix(".out")
    values = [np.array([len(cases)], np.int64)] + [case.values() for case in cases]
    np.concatenate(values).astype("<i8").tofile(infile)
    outfile.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run([str(binary), str(infile), str(outfile)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shapes = list(dict.fromkeys(case.shape for case in cases))
    result = KernelResult(kernel, len(cases), shapes, seconds=seconds)
    if done.returncode or _STREAM_WARNING in done.stdout:
        what = (done.stderr + done.stdout).strip().splitlines()
        result.mismatches.append(
            f"tb_{kernel} exit {done.returncode}: {what[0] if what else 'no message'}")
        return result
    got = np.fromfile(outfile, "<i8")
    expected_size = sum(case.output_size for case in cases)
    if got.size != expected_size:
        result.mismatches.append(
            f"tb_{kernel} wrote {got.size} values; the cases expect {expected_size}")
        return result
    offset = 0
    for case in cases:
        for name, expected in case.expected:
            expected = np.asarray(expected, np.int64)
            value = got[offset:offset + expected.size].reshape(expected.shape)
            offset += expected.size
            if not np.array_equal(value, expected):
                bad = np.argwhere(value != expected)
                first = tuple(int(i) for i in bad[0])
                result.mismatches.append(
                    f"{case.label} ({case.shape}) {name}: {len(bad)} of {expected.size} values "
                    f"differ; first at {first}: {int(value[first])}, expected "
                    f"{int(expected[first])}")
    return result


#: What the C simulation does not cover yet, said wherever its results are shown.
NOT_YET = ("The whole model through the HLS top is not run: the HLS top (which executes the "
           "compiled program) comes with the RTL top's program (issue 13, part 2); these are "
           "the per-kernel C simulations.")


def run_suite(config="tiny", *, seed=0, random_count=20, kernels=None, max_tokens=None,
              progress=False) -> list:
    """The per-kernel C simulations of a model config on its default HwConfig.

    Every kernel runs the cases of the config's quantized model, every task
    (:func:`moevit.hls.cases.model_cases`), then ``random_count`` random cases
    drawn from ``seed`` (:func:`moevit.hls.cases.random_cases`). The HwConfig,
    the configuration header and the compiler are checked before any work.

    Returns
    -------
    list of dict
        One row per kernel and set of cases: ``kernel``, ``set`` ("model" or
        "random"), ``shape``, ``cases``, ``bit_exact``, ``mismatches``,
        ``seconds``, ``seed``.
    """
    from tqdm import tqdm

    from moevit.hls import cases as C
    from moevit.hls.generate import check_hls
    from moevit.hw.config import get_hw_config

    hw = get_hw_config(config)
    check_hls(hw)
    compiler()
    ap_types_dir()
    kernels = list(kernels or C.KERNELS)
    qmodel, image = C.quantized_model(config)
    model = C.model_cases(qmodel, image, kernels)
    rows = []
    for kernel in tqdm(kernels, desc="hls csim", unit="kernel", disable=not progress,
                       dynamic_ncols=True):
        sets = {"model": model[kernel],
                "random": C.random_cases(kernel, hw, seed, random_count, max_tokens=max_tokens)}
        for name, cases in sets.items():
            if not cases:
                continue
            result = run_kernel(kernel, hw, cases, tag=f"{kernel}-{name}")
            more = f" (+{len(result.shapes) - 1} more)" if len(result.shapes) > 1 else ""
            rows.append({"kernel": kernel, "set": f"{config} model" if name == "model" else
                         f"random seed {seed}", "shape": result.shapes[0] + more,
                         "cases": result.cases, "bit_exact": result.exact,
                         "mismatches": result.mismatches, "seconds": round(result.seconds, 3),
                         "seed": seed})
    return rows
