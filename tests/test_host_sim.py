"""The driver on the ``sim`` backend: the co-simulated RTL top of ``tiny`` (Verilator, its build
cached and shared), bit for bit with the golden model — every task, a task switch, two images
from one start, an error run and a hung run each followed by a good run, a simulator that
dies — and ``moevit run`` and the flow object on the same top."""

import json
import os
import signal

import numpy as np
import pytest

from moevit.errors import DeviceError
from moevit.host.driver import Accelerator
from moevit.host.sim import SimBackend
from moevit.hw.program.program import HEADER_WORDS
from moevit.sim.benches.engines import replay_seed


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
    minutes, then it is reused): a bad opcode stops a run with its code, a run cut short
    by the timeout is reset by the driver, then a whole image is bit-exact with the golden
    model; a task switch sends no byte; a killed simulator is a DeviceError, not a hang."""
    qmodel, program, images = tiny
    with SimBackend(program=program, progress=False) as device:
        acc = Accelerator(device, program, device.regmap_path).load()
        acc.buffers["program"].write(with_opcode(program, 1, 0x7F))
        with pytest.raises(DeviceError, match=r"^The accelerator stopped with error 1 \(opcode: "
                                              r"an instruction with an unknown opcode\) at "
                                              r"instruction 1 of image 0 \[ap_ctrl=.*error=0x1"):
            acc.predict(images[:1])
        acc.buffers["program"].write(program.encode())
        acc.timeout = 2e-6                        # 500 cycles: the run is cut short
        with pytest.raises(DeviceError, match=r"^The accelerator did not finish within 2e-06 s "
                                              r"of device time; it was reset \[ap_ctrl=0x1"):
            acc.predict(images[:1], "depth")
        acc.timeout = 1.0
        sent = acc.bytes_written
        acc.task = "semseg"
        acc.task = "depth"                        # switches: a register each, no byte
        assert acc.bytes_written == sent
        got = acc.predict(images[:1])
        assert np.array_equal(got, golden_maps(qmodel, images[:1], "depth"))
        print(f"depth: {acc.cycles} cycles an image, busy {acc.busy}")
        assert 0 < acc.busy["linear"] < acc.cycles

        os.killpg(device._process.pid, signal.SIGKILL)
        with pytest.raises(DeviceError, match=r"^The simulator (ended unexpectedly|closed its "
                                              r"connection|is gone)"):
            acc.predict(images[:1])


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
                                               r"'fixed', 'random'\), not 'often'$"),
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
