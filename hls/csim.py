"""C simulation of the HLS kernels and of the HLS top with g++ and the ``ap_types`` headers
hls4ml ships.

Each kernel has a testbench, ``hls/tb/tb_<kernel>.cpp``, compiled against the
kernel headers (``hls/include``), the configuration header of a HwConfig
(:mod:`moevit.hls.generate`) and the ``ap_int`` / ``hls_stream`` C-simulation
models of ``hls4ml/templates/vivado/ap_types`` (no AMD tools). Python writes
the cases (:mod:`moevit.hls.cases`) as int64 values into one file, the
testbench writes its outputs into another, and :func:`run_kernel` compares
every output with the golden model's, in full. A testbench that crashes,
reads an empty ``hls::stream`` or leaves data in one (the C-simulation
model prints a warning) fails as a mismatch would.

The HLS top (``hls/src/top.cpp``) runs the compiled program through its
testbench ``tb_top.cpp`` as a host runs the device (:func:`run_top`): one
memory that lives on from call to call, the buffers at addresses unlike the
program's own and in another order (so every access goes through the top's
relocation, and one that misses its buffer writes a guard page, which the
testbench counts), the task and image count as arguments. :func:`check_top`
compares each image's output and the whole activation scratch, bit for bit, with the instruction-level interpreter on the same runs
(:func:`moevit.sim.benches.top.expected_runs`, itself equal to the golden model).
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
from moevit.hls.generate import INCLUDE_DIR, TOP_SOURCE, write_parameters
from moevit.paths import build_dir

__all__ = ["HlsBuildError", "KernelResult", "TopRun", "TB_DIR", "CXXFLAGS", "TOP", "compiler",
           "ap_types_dir", "build_testbench", "run_kernel", "write_top_case", "run_top", "check_top",
           "top_runs",
           "run_suite"]

TB_DIR = Path(__file__).resolve().parent / "tb"
CXXFLAGS = ("-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-label")
# What the C-simulation model of hls::stream prints on a read of an empty
# stream or a stream destroyed with data left in it.
_STREAM_WARNING = "WARNING: Hls::stream"
#: The pseudo-kernel name of the HLS top in the suite's rows and ``--kernel``.
TOP = "top"


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
    sources = [TB_DIR / f"tb_{kernel}.cpp"] + ([TOP_SOURCE] if kernel == "top" else [])
    command = [cxx, *CXXFLAGS, "-I", str(INCLUDE_DIR), "-I", str(TB_DIR), "-I", str(params.parent),
               "-isystem", str(ap_types), *map(str, sources), "-o", str(folder / f"tb_{kernel}")]
    digest = hashlib.sha256(" ".join(command).encode())
    for path in sorted([*INCLUDE_DIR.glob("*.h"), *TB_DIR.glob("*"), *sources, params]):
        digest.update(path.name.encode() + path.read_bytes())
    stamp = folder / f"tb_{kernel}.sha256"
    binary = folder / f"tb_{kernel}"
    if binary.is_file() and stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return binary
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines
        raise HlsBuildError(f"{' + '.join(p.name for p in sources)} does not compile: "
                            f"{' | '.join(errors[:3])}")
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


@dataclass
class TopRun:
    """One call of ``moevit_top`` in C simulation (:func:`run_top`).

    Attributes
    ----------
    task, images : int
        The call's arguments.
    error : int
        The error code it returned (:data:`~moevit.hw.program.regmap.ERROR_CODES`).
    instruction, image : int
        Its status: where the run ended.
    outputs : list of numpy.ndarray
        Each image's output region (uint8) after the call.
    scratch : numpy.ndarray
        The activation scratch (uint8) after the call.
    stray : int
        Bytes of the host memory the call changed outside the output and scratch buffers.
    weights_changed : int
        Of them, bytes of the weights buffer.
    seconds : float
        Wall time of the call.
    """

    task: int
    images: int
    error: int
    instruction: int
    image: int
    outputs: list
    scratch: np.ndarray
    stray: int
    weights_changed: int
    seconds: float


_PAGE = 4096


def _placement(program, images: int) -> dict:
    """The host's buffer addresses in the testbench's memory, and its size: weights, input,
    output, scratch, in that order (not the program's), each on a page of its own after a
    guard page, so no program address equals its host address and a stray write shows."""
    bounds = program.layout.boundaries()
    sizes = {"weights": len(program.weights),
             "input": images * (bounds["output_at"] - bounds["input_at"]),
             "output": images * (bounds["output_end"] - bounds["output_at"]),
             "scratch": bounds["input_at"] - bounds["scratch_at"]}
    place, at = {}, _PAGE
    for name, size in sizes.items():
        place[name] = at
        at += -(-size // _PAGE) * _PAGE + _PAGE
    return place | {"bytes": at}


def write_top_case(program, runs, folder, *, expected=None) -> list:
    """Write the files ``tb_top`` reads for ``runs`` (see :func:`run_top`) into ``folder``.

    With ``expected`` (what :func:`moevit.sim.benches.top.expected_runs` returns for
    ``runs``), also each call's expected outputs (each image's task output, the start
    of its region) and scratch: the testbench
    then checks itself and exits 1 on a difference, as Vitis HLS's ``csim_design``
    and ``cosim_design`` need. Returns ``runs`` as dicts.
    """
    from moevit.sim.benches.top import output_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("run*"):
        stale.unlink()
    runs = [run if isinstance(run, dict) else {"task": run[0], "images": run[1]} for run in runs]
    bounds = program.layout.boundaries()
    pitches = (bounds["output_at"] - bounds["input_at"], bounds["output_end"] - bounds["output_at"])
    place = _placement(program, max(len(run["images"]) for run in runs))
    (folder / "weights.bin").write_bytes(program.weights)
    (folder / "program.bin").write_bytes(program.encode())
    lines = [" ".join(str(v) for v in (place["weights"], place["input"], place["output"],
                                        place["scratch"], bounds["input_at"] - bounds["scratch_at"],
                                        *pitches, place["bytes"]))]
    for k, run in enumerate(runs):
        name = "program.bin"
        if run.get("program") is not None:
            name = f"run{k}-program.bin"
            (folder / name).write_bytes(bytes(run["program"]))
        for n, image in enumerate(run["images"]):
            np.ascontiguousarray(image, np.int8).tofile(folder / f"run{k}-image{n}.bin")
        lines.append(f"{int(run['task'])} {len(run['images'])} {name}")
    (folder / "runs.txt").write_text("\n".join(lines) + "\n")
    for k, (run, want) in enumerate(zip(runs, expected or ())):
        size = output_bytes(program, run["task"])
        np.concatenate([out[:size] for out in want["outputs"]]).tofile(
            folder / f"run{k}-expected-output.bin")
        want["scratch"].tofile(folder / f"run{k}-expected-scratch.bin")
    return runs


def run_top(program, runs, *, folder=None) -> list:
    """Run ``runs`` through the HLS top's testbench on one host memory; a :class:`TopRun` each.

    ``runs`` as :func:`moevit.sim.benches.top.run_top` takes them: ``(task,
    images)`` pairs, ``images`` int8 arrays of the program's input shape, or
    dicts with ``task``, ``images`` and optionally ``program`` (other bytes of
    the program buffer for that call: a bad program). ``folder``: where the
    files go (default ``build/hls/<hw name>/csim/top``).
    """
    binary = build_testbench(TOP, program.hw)
    folder = Path(folder) if folder is not None else binary.parent / "top"
    runs = write_top_case(program, runs, folder)
    bounds = program.layout.boundaries()
    pitches = (bounds["output_at"] - bounds["input_at"], bounds["output_end"] - bounds["output_at"])
    done = subprocess.run([str(binary), str(folder)], capture_output=True, text=True)
    if done.returncode or _STREAM_WARNING in done.stdout:
        what = (done.stderr + done.stdout).strip().splitlines()
        raise HlsBuildError(f"tb_top exit {done.returncode}: {what[0] if what else 'no message'}")
    results = []
    for k, run in enumerate(runs):
        error, status, stray, changed, seconds = (folder / f"run{k}.txt").read_text().split()
        output = np.fromfile(folder / f"run{k}-output.bin", np.uint8)
        count = len(run["images"])
        results.append(TopRun(
            int(run["task"]), count, int(error), int(status) & 0xFFFF, int(status) >> 16,
            [output[n * pitches[1]:(n + 1) * pitches[1]] for n in range(count)],
            np.fromfile(folder / f"run{k}-scratch.bin", np.uint8), int(stray), int(changed),
            float(seconds)))
    return results


def check_top(program, runs, *, folder=None) -> list:
    """Run ``runs`` (``(task, images)`` pairs) through the HLS top and compare every image's
    output (the task's head output, at the start of the image's output region; the rest of
    the region holds another task's) and the whole scratch after each call, bit for bit,
    with the interpreter on the same runs; also that the call ended without error and
    wrote nothing outside the output and scratch buffers.

    Returns one row per call: ``task``, ``images``, ``instructions`` (run, all images),
    ``bytes_compared``, ``bit_exact``, ``mismatches`` (one line each), ``seconds``.
    """
    from moevit.sim.benches.engines import compare_images
    from moevit.sim.benches.top import expected_runs, output_bytes

    got = run_top(program, runs, folder=folder)
    want = expected_runs(program, runs)
    scratch_at = program.layout.boundaries()["scratch_at"]
    rows = []
    for k, (run, expected) in enumerate(zip(got, want)):
        mismatches = []
        if run.error or run.stray:
            mismatches.append(f"call {k}: error code {run.error}, {run.stray} bytes written "
                              f"outside the output and scratch buffers")
        size = output_bytes(program, run.task)  # the rest of the region: another task's
        pairs = [(f"call {k} image {n} output", out[:size], ref[:size], None)
                 for n, (out, ref) in enumerate(zip(run.outputs, expected["outputs"]))]
        pairs.append((f"call {k} scratch", run.scratch, expected["scratch"], scratch_at))
        for what, out, ref, base in pairs:
            try:
                compare_images(out, ref, what, program.layout if base is not None else None,
                               base or 0)
            except AssertionError as error:
                mismatches.append(str(error))
        rows.append({"task": run.task, "images": run.images,
                     "instructions": run.images * len(program.instructions),
                     "bytes_compared": sum(ref.size for _, _, ref, _ in pairs),
                     "bit_exact": not mismatches, "mismatches": mismatches,
                     "seconds": round(run.seconds, 3)})
    return rows


def top_runs(program, image, seed=0) -> list:
    """The calls the suite makes: every task on ``image`` (int8), one after the other
    (a task switch between calls), then the first task on a random image and ``image``
    in one call (two images)."""
    rng = np.random.default_rng(seed)
    other = rng.integers(-128, 128, np.shape(image), dtype=np.int8)
    return [(task, [image]) for task in range(len(program.tasks))] + [(0, [other, image])]


def run_suite(config="tiny", *, seed=0, random_count=20, kernels=None, max_tokens=None,
              progress=False) -> list:
    """The C simulations of a model config on its default HwConfig: every kernel, then
    the whole model through the HLS top.

    Every kernel runs the cases of the config's quantized model, every task
    (:func:`moevit.hls.cases.model_cases`), then ``random_count`` random cases
    drawn from ``seed`` (:func:`moevit.hls.cases.random_cases`). The top
    (``kernels`` naming :data:`TOP`, or by default) runs the compiled program
    on the calls of :func:`top_runs` (:func:`check_top`). The HwConfig, the
    configuration header and the compiler are checked before any work.

    Returns
    -------
    list of dict
        One row per kernel and set of cases: ``kernel``, ``set`` ("model" or
        "random"), ``shape``, ``cases``, ``bit_exact``, ``mismatches``,
        ``seconds``, ``seed``; per call of the top, those and ``task``,
        ``images``, ``instructions``, ``bytes_compared`` (``cases``: the
        instructions).
    """
    from tqdm import tqdm

    from moevit.hls import cases as C
    from moevit.hls.generate import check_hls
    from moevit.hw.config import get_hw_config

    hw = get_hw_config(config)
    check_hls(hw)
    compiler()
    ap_types_dir()
    kernels = list(kernels or (*C.KERNELS, TOP))
    qmodel, image = C.quantized_model(config)
    model = C.model_cases(qmodel, image, [k for k in kernels if k != TOP])
    rows = []
    for kernel in tqdm(kernels, desc="hls csim", unit="kernel", disable=not progress,
                       dynamic_ncols=True):
        if kernel == TOP:
            rows += _top_rows(config, hw, qmodel, image, seed)
            continue
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


def _top_rows(config, hw, qmodel, image, seed) -> list:
    """The suite's rows of the HLS top: the config's program on :func:`top_runs`."""
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden

    program = compile_program(qmodel, hw)
    image = golden.quantize_image(image, qmodel.scale("input"))
    rows = []
    for row in check_top(program, top_runs(program, image, seed)):
        name = program.tasks[row["task"]]["name"]
        rows.append(dict(row, kernel=TOP, set=f"{config} program",
                         shape=f"task {row['task']} ({name}), {row['images']} image(s)",
                         cases=row["instructions"], seed=seed))
    return rows
