"""``moevit run``'s bad input: one line ``moevit: error: ...``, exit status 2, before a device
opens (the run itself on the sim backend: ``tests/test_host_sim.py``)."""

import numpy as np
import pytest

from moevit.cli import main


@pytest.fixture(scope="module")
def program_dir(tmp_path_factory):
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.compiler import compile_program
    from moevit.hw.program.program import write_program
    from moevit.sim.units import tiny_quantized

    folder = tmp_path_factory.mktemp("run")
    qmodel, _ = tiny_quantized(trained=False)
    write_program(compile_program(qmodel, DEFAULT_HW["tiny"]), folder / "program")
    np.save(folder / "good.npy", np.zeros((3, 64, 64), np.int8))
    np.save(folder / "float.npy", np.zeros((3, 64, 64), np.float32))
    np.save(folder / "small.npy", np.zeros((3, 32, 64), np.int8))
    (folder / "notes.txt").write_text("not an image")
    from PIL import Image

    Image.new("RGB", (64, 64)).save(folder / "picture.png")
    return folder


@pytest.mark.parametrize("args, message", [
    (["--backend", "gpu"], r"Unknown backend 'gpu'; backends are sim, zynq, alveo"),
    (["--task", "normals"], r"Unknown task 'normals'; the program's tasks are 0 'semseg', 1 'depth'"),
    (["--task", "2"], r"Unknown task 2; the program's tasks are"),
    (["IMAGE=missing.npy"], r"Image .*missing.npy does not exist"),
    (["IMAGE=float.npy"], r"Image .*float.npy holds float32; .npy inputs are int8"),
    (["IMAGE=small.npy"], r"Image .*small.npy has shape \(3, 32, 64\); the program's input is "
                          r"\(3, 64, 64\)"),
    (["IMAGE=notes.txt"], r"Image .*notes.txt: expected .npy \(int8\) or a picture"),
    (["IMAGE=picture.png"], r"Image .*picture.png is a picture: its int8 input needs the integer "
                            r"model's input scale \(--quantized Q\)"),
    (["--program", "nowhere"], r"Program folder nowhere does not exist"),
    (["--option", "bitstream"], r"Backend option 'bitstream' is not KEY=VALUE"),
    (["--backend", "zynq", "--simulator", "icarus"],
     r"--simulator does not apply to the zynq backend: it chooses the sim backend's simulator"),
    (["--timeout", "0"], r"argument --timeout: must be a positive finite number, not '0'"),
])
def test_bad_input_is_one_line_and_exit_2(program_dir, capsys, monkeypatch, args, message):
    import re

    monkeypatch.chdir(program_dir)
    images = [a.split("=", 1)[1] for a in args if a.startswith("IMAGE=")] or ["good.npy"]
    args = [a for a in args if not a.startswith("IMAGE=")]
    base = {"--program": "program", "--task": "depth", "--backend": "sim"}
    for key in base:
        if key in args:
            base[key] = args[args.index(key) + 1]
            del args[args.index(key):args.index(key) + 2]
    argv = ["run", *[x for kv in base.items() for x in kv], *args, *images, "-o", "out"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.match(r"^moevit: error: " + message, err), err
    assert not (program_dir / "out").exists() or not any((program_dir / "out").iterdir())


def test_a_board_backend_that_is_not_there_is_one_line(program_dir, capsys, monkeypatch):
    import sys

    monkeypatch.chdir(program_dir)
    monkeypatch.setitem(sys.modules, "moevit.host.zynq", None)   # as before the board's code
    assert main(["run", "--backend", "zynq", "--program", "program", "--task", "0",
                 "good.npy", "-o", "out"]) == 2
    assert capsys.readouterr().err == ("moevit: error: The zynq backend (moevit.host.zynq) is "
                                       "not part of this moevit\n")
