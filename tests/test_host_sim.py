"""The driver on the ``sim`` backend: the co-simulated RTL top of ``tiny`` (Verilator, its build
cached and shared), bit for bit with the golden model — every task, a task switch, two images
from one start, an error run and a hung run each followed by a good run, a simulator that
dies — and ``moevit run`` and the flow object on the same top.

Driver-level faults: through :meth:`Accelerator.predict`, each fault the RTL suite injects
(``tests/test_faults.py``), armed in the simulated device (:meth:`SimBackend.inject`,
``pause_memory``, ``schedule``): SLVERR and DECERR on reads (program, weights, input,
scratch) and on writes (scratch, output), a reset in the middle of a run (the driver's
timeout, or from outside), ``ap_start`` written while busy. Each raises a
:class:`DeviceError` of one line naming the cause, with the register dump, and the next
``predict`` is bit-exact with the golden model; under a memory that stalls for thousands of
cycles a run completes bit-exact, slower. A few in ``make test``, all in the slow set; the
counts go to ``build/reliability/`` (``moevit bench reliability``).
"""

import json
import os
import re
import signal

import numpy as np
import pytest

from moevit.errors import DeviceError
from moevit.host.driver import Accelerator
from moevit.host.sim import SimBackend
from moevit.hw.program.program import HEADER_WORDS
from moevit.sim.benches.engines import replay_seed
from moevit.sim.reliability import record


@pytest.fixture(scope="module")
def tiny():
    from moevit.sim.units import tiny_compiled

    return tiny_compiled(2, seed=3)


def golden_maps(qmodel, images, task):
    from moevit.model.integer import golden

    return np.stack([golden.run(qmodel, image, task, record=False).output for image in images])


def with_opcode(program, index, opcode):
    """``program.bin`` with instruction ``index``'s opcode (the low byte of its first word)
    replaced."""
    data = bytearray(program.encode())
    data[4 * (HEADER_WORDS + sum(d.words() for d in program.instructions[:index]))] = opcode
    return bytes(data)


def test_sim_backend_recovers_and_runs_tiny_bit_for_bit(tiny):
    """The fast case of ``make test`` (one whole image; the first build of the top takes
    minutes, then it is reused): a bad opcode stops a run with its code; the driver-level
    faults that end a run early (:data:`FEW`: a run cut short by the timeout and reset by
    the driver, SLVERR on a read, SLVERR on a write, a reset from outside) each raise their
    one-line error; then a whole image is bit-exact with the golden model; a task switch
    sends no byte; a killed simulator is a DeviceError, not a hang."""
    qmodel, program, images = tiny
    with SimBackend(program=program, progress=False) as device:
        acc = Accelerator(device, program, device.regmap_path).load()
        acc.buffers["program"].write(with_opcode(program, 1, 0x7F))
        with pytest.raises(DeviceError, match=r"^The accelerator stopped with error 1 \(opcode: "
                                              r"an instruction with an unknown opcode\) at "
                                              r"instruction 1 of image 0 \[ap_ctrl=.*error=0x1"):
            acc.predict(images[:1])
        acc.buffers["program"].write(program.encode())
        with record("faults-driver-sim-few", "faults", "driver-level faults, sim backend") \
                as counts:
            for name, arm in FEW:    # each run after a fault meets the next fault, or the good run
                expect_fault(acc, device, images[:1], name, arm, SHORT_RUN)
            sent = acc.bytes_written
            acc.task = "semseg"
            acc.task = "depth"                        # switches: a register each, no byte
            assert acc.bytes_written == sent
            got = acc.predict(images[:1])
            assert np.array_equal(got, golden_maps(qmodel, images[:1], "depth"))
            counts.update(injected=len(FEW), survived=len(FEW),
                          detail=f"faults that end a run early, back to back, then a good run "
                                 f"(tiny, {acc.cycles} cycles)")
        print(f"depth: {acc.cycles} cycles an image, busy {acc.busy}")
        assert 0 < acc.busy["linear"] < acc.cycles

        os.killpg(device._process.pid, signal.SIGKILL)
        with pytest.raises(DeviceError, match=r"^The simulator (ended unexpectedly|closed its "
                                              r"connection|is gone)"):
            acc.predict(images[:1])


# Driver-level faults ----------------------------------------------------------------------
MEMORY = (r"^The accelerator stopped with error 3 \(memory: the memory answered SLVERR or "
          r"DECERR\) at instruction \d+ of image 0 \[ap_ctrl=0x[0-9a-f]+, .*error=0x3, ")
#: The cycles the fast case takes for a run (its faults come within the first few thousand).
SHORT_RUN = 4000


def memory_fault(response, buffer, side):
    """``(name, arm)``: the memory answers ``response`` on ``side`` for all of ``buffer``."""
    def arm(acc, device, cycles):
        device.inject(response, acc.buffers[buffer], side=side)
        return MEMORY
    return f"{response} on the {buffer} {side}", arm


def timeout_reset(acc, device, cycles):
    """The driver's own timeout at a quarter of a run's ``cycles``: a reset mid-run."""
    acc.timeout = cycles / 4 / device.clock_hz
    return (r"^The accelerator did not finish within \S+ s of device time; it was reset "
            r"\[ap_ctrl=0x1")


def outside_reset(acc, device, cycles):
    """``ap_rst_n`` pulsed from outside (a PL reset, a watchdog) half way through."""
    device.schedule("reset", cycles // 2)
    return (r"^The accelerator went idle without finishing the run \(reset in the middle of "
            r"it\); it was reset \[ap_ctrl=0x4, ")


def start_while_busy(acc, device, cycles):
    """Another host writes ``ap_start`` a third of the way through."""
    device.schedule("start", cycles // 3)
    return (r"^ap_start was written again while the run was busy \(start_while_busy\): another "
            r"host drives this accelerator; the run's result is not returned \[.*error=0x100, ")


TIMEOUT = ("a timeout that resets in the middle of the run", timeout_reset)
OUTSIDE = ("a reset from outside in the middle of the run", outside_reset)
ALL = [memory_fault("SLVERR", "program", "read"), memory_fault("DECERR", "input", "read"),
       memory_fault("SLVERR", "weights", "read"), memory_fault("DECERR", "scratch", "read"),
       memory_fault("SLVERR", "scratch", "write"), OUTSIDE, TIMEOUT,
       ("a start while busy", start_while_busy), memory_fault("DECERR", "output", "write")]
FEW = [TIMEOUT, memory_fault("SLVERR", "weights", "read"),
       memory_fault("SLVERR", "scratch", "write"), OUTSIDE]


def expect_fault(acc, device, images, name, arm, cycles):
    """Arm the fault ``name`` (``cycles``: a run's), run ``images``: a one-line
    :class:`DeviceError` naming the cause, with the register dump; then disarm it."""
    message = arm(acc, device, cycles)
    with pytest.raises(DeviceError) as caught:
        acc.predict(images)
    text, dump = str(caught.value), caught.value.registers
    print(f"{name}: {text[:160]}...")
    assert re.match(message, text) and "\n" not in text, f"{name}: {text}"
    assert {"ap_ctrl", "status", "error", "cycles", "program"} <= set(dump), name
    device.clear_faults()
    acc.timeout = 1.0
    return caught.value


@pytest.mark.slow
def test_driver_turns_every_fault_into_a_clear_error_and_recovers(tiny):
    """Every fault of :data:`ALL`, each followed by a run bit-exact with the golden model in
    the same cycles as before it; then a memory that stalls 2,000 to 4,000 cycles at a time:
    the run completes bit-exact, slower."""
    qmodel, program, images = tiny
    with SimBackend(program=program, progress=False) as device:
        acc = Accelerator(device, program, device.regmap_path).load()
        want = golden_maps(qmodel, images[:1], acc.task)
        assert np.array_equal(acc.predict(images[:1]), want)
        good = acc.cycles
        with record("faults-driver-sim-all", "faults", "driver-level faults, sim backend") \
                as counts:
            counts.update(injected=len(ALL) + 1, survived=0)
            for name, arm in ALL:
                error = expect_fault(acc, device, images[:1], name, arm, good)
                if arm is timeout_reset:   # the dump says where: past the first instruction
                    assert acc._field("status", "instruction", error.registers["status"]) > 0
                assert np.array_equal(acc.predict(images[:1]), want), f"after {name}"
                assert acc.cycles == good, f"after {name}: {acc.cycles} cycles, not {good}"
                counts["survived"] += 1
            device.pause_memory("stall", seed=replay_seed(), shortest=2000, longest=4000)
            assert np.array_equal(acc.predict(images[:1]), want), "under a stalling memory"
            stalled = acc.cycles
            print(f"a stalling memory: {stalled} cycles, a good run {good}")
            assert stalled > good + 1000, f"the stalls cost {stalled - good} cycles only"
            device.pause_memory("none")
            assert np.array_equal(acc.predict(images[:1]), want) and acc.cycles == good
            counts["survived"] += 1
            counts["detail"] = (f"each fault followed by a bit-exact run (tiny, {good} cycles); "
                                f"the stalled run {stalled} cycles")


def test_bad_faults_are_refused():
    """The fault methods check their arguments before anything reaches the simulator."""
    from moevit.errors import ConfigError
    from moevit.host.sim import SimBuffer

    device = SimBackend.__new__(SimBackend)      # no simulator: every check comes first
    device._faults = []
    buffer = SimBuffer(device, "weights", 0x10_0000, 64)
    cases = [(lambda: device.inject("OKAY", buffer),
              r"^A memory fault's response must be one of \('SLVERR', 'DECERR'\), not 'OKAY'$"),
             (lambda: device.inject("SLVERR", buffer, side="both"),
              r"^A memory fault's side must be one of \(None, 'read', 'write'\), not 'both'$"),
             (lambda: device.inject("SLVERR", b"weights"),
              r"^A memory fault needs a buffer of this device, not b'weights'$"),
             (lambda: device.inject("SLVERR", buffer, offset=60, nbytes=8),
              r"^Buffer 'weights': bytes 60\.\.68 lie outside its 64 bytes$"),
             (lambda: device.pause_memory("often"),
              r"^Memory pauses must be one of \('none', 'fixed', 'random', 'stall'\), not "
              r"'often'$"),
             (lambda: device.pause_memory("random", shortest=5),
              r"^Stall options \['shortest'\] need memory pauses 'stall', not 'random'$"),
             (lambda: device.schedule("stop", 10),
              r"^A scheduled event must be one of \('reset', 'start'\), not 'stop'$"),
             (lambda: device.schedule("reset", 0), r"^Cycles must be a positive integer, not 0$")]
    for call, message in cases:
        with pytest.raises(ConfigError, match=message):
            call()


@pytest.mark.slow
def test_sim_backend_every_task_a_switch_and_two_images_from_one_start(tiny):
    """Each task bit-exact, two images from one start, and a task's cycles the same after
    the other task as after itself (the switch costs nothing)."""
    qmodel, program, images = tiny
    with SimBackend(program=program, progress=False) as device:
        acc = Accelerator(device, program, batch=2).load()
        cycles = {}
        for task in ("depth", "semseg", "semseg", "depth"):
            got = acc.predict(images[:1], task)
            assert np.array_equal(got, golden_maps(qmodel, images[:1], task)), task
            cycles.setdefault(task, []).append(acc.cycles)
        print(f"cycles an image: {cycles}")
        assert cycles["depth"][0] == cycles["depth"][1]
        assert cycles["semseg"][0] == cycles["semseg"][1]
        got = acc.predict(images, "semseg")      # two images from one start
        assert np.array_equal(got, golden_maps(qmodel, images, "semseg"))


@pytest.mark.slow
def test_sim_backend_under_a_slow_memory_with_random_batches(tiny):
    """Random tasks and batch sizes back to back, the memory pausing at random on every
    channel; each result bit-exact, and a task's cycles do not depend on the task before."""
    qmodel, program, images = tiny
    seed = replay_seed()
    rng = np.random.default_rng(seed)
    with SimBackend(program=program, memory_pauses="random", seed=seed, progress=False) as device:
        acc = Accelerator(device, program, batch=2).load()
        for _ in range(3):
            task = int(rng.integers(2))
            batch = images[rng.permutation(2)[:int(rng.integers(1, 3))]]
            got = acc.predict(batch, task)
            assert np.array_equal(got, golden_maps(qmodel, batch, task)), f"seed {seed}"


@pytest.mark.slow
def test_moevit_run_on_the_sim_backend(tiny, tmp_path, capsys):
    """``moevit run --backend sim``: .npy input, the maps equal the golden model's, the PNG
    and the timings written."""
    from moevit.cli import main
    from moevit.hw.program.program import write_program

    qmodel, program, images = tiny
    write_program(program, tmp_path / "program")
    np.save(tmp_path / "a.npy", images[0])
    out = tmp_path / "out"
    assert main(["run", "--program", str(tmp_path / "program"), "--task", "depth",
                 str(tmp_path / "a.npy"), "-o", str(out)]) == 0
    print(capsys.readouterr().out)
    assert np.array_equal(np.load(out / "depth-0.npy"), golden_maps(qmodel, images[:1], 1)[0])
    timings = json.loads((out / "timings.json").read_text())
    assert timings["images"] == 1 and timings["cycles"] > 0 and timings["task"] == "depth"
    assert (out / "depth-predictions.png").stat().st_size > 1000


@pytest.mark.slow
def test_flow_predicts_the_same_on_golden_and_sim(tiny):
    from moevit.flow import Flow

    qmodel, _, images = tiny
    with Flow(qmodel=qmodel) as flow:
        flow.compile("tiny")
        for task in ("semseg", "depth"):
            assert np.array_equal(flow.predict(images, task, backend="sim"),
                                  flow.predict(images, task))
        print(flow.summary())
        assert flow.figures["predict sim"]["cycles_per_image"] > 0


@pytest.mark.parametrize("options, message", [
    ({}, r"^The sim backend needs a HwConfig \(hw=\) or a program \(program=\)$"),
    ({"hw": "tiny", "simulator": "xsim"}, r"^Simulator must be one of \('icarus', 'verilator'\), "
                                          r"not 'xsim'$"),
    ({"hw": "tiny", "memory_pauses": "often"}, r"^Memory pauses must be one of \('none', "
                                               r"'fixed', 'random', 'stall'\), not 'often'$"),
    ({"hw": "huge"}, r"huge"),
])
def test_bad_sim_options_are_refused_before_the_simulator_starts(options, message):
    from moevit.errors import MoevitError
    from moevit.host.backend import open_backend

    with pytest.raises(MoevitError, match=message):
        open_backend("sim", **options)


@pytest.mark.slow
def test_the_demo_step_runs_every_task_bit_exact(tiny, tmp_path):
    """``make demo``'s last step on a quantized file: a bit-exact line per task, the
    accelerator's prediction PNG."""
    from argparse import Namespace

    from moevit.host.commands import demo_accelerator
    from moevit.model.commands import DemoState
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.quantize import save_quantized

    qmodel, _, _ = tiny
    state = DemoState(Namespace(quiet=True, no_accelerator=False), config=qmodel.config,
                      val=SyntheticDataset(qmodel.config, "val", size=1, seed=2), out=tmp_path,
                      report={"integer": {"file": str(save_quantized(tmp_path / "q.npz", qmodel))}})
    lines = demo_accelerator(state)
    print("\n".join(lines))
    assert [line.split()[0] for line in lines[1:3]] == ["semseg", "depth"]
    assert all(" bit-exact vs the golden model" in line for line in lines[1:3])
    assert all(row["bit_exact"] and row["cycles_per_image"] > 0
               for row in state.report["accelerator"]["rows"])
    assert (tmp_path / "accelerator-predictions.png").stat().st_size > 1000
