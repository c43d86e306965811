"""The flow object: steps, figures and errors, on the golden backend (the sim backend's run of the
same object: ``tests/test_host_sim.py``)."""

import sys

import numpy as np
import pytest

import moevit
from moevit.errors import ConfigError, ToolNotFoundError


@pytest.fixture(scope="module")
def flow():
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.evaluate import signal_model

    config = moevit.get_config("tiny")
    flow = moevit.Flow(signal_model(config))
    flow.quantize(SyntheticDataset(config, "val", size=4, seed=1).images)
    flow.compile("tiny")
    return flow


def test_the_flow_object_is_exported():
    assert moevit.Flow is moevit.flow.Flow


def test_predict_takes_float_or_int8_images_and_gives_the_golden_maps(flow):
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer import golden

    images = SyntheticDataset(flow.config, "val", size=2, seed=9).images
    maps = flow.predict(images, "semseg")
    int8 = flow.quantize_images(images)
    assert maps.dtype == np.int8 and maps.shape == (2, flow.config.tasks[0].classes, 64, 64)
    for image, got in zip(int8, maps):
        assert np.array_equal(got, golden.run(flow.qmodel, image, 0, record=False).output)
    assert np.array_equal(flow.predict(int8, 0), maps)
    assert flow.figures["predict golden"]["images"] == 2


def test_figures_and_summary(flow):
    assert flow.figures["quantize"]["calibration_images"] == 4
    compiled = flow.figures["compile"]
    assert compiled["hw"] == "tiny" and compiled["instructions"] == len(flow.program.instructions)
    assert compiled["weights_bytes"] == len(flow.program.weights)
    text = flow.summary()
    assert text.splitlines()[0].startswith("quantize: calibration_images 4, seconds ")
    assert "compile: hw tiny, instructions " in text


def test_compile_for_a_board_is_for_what_its_bitstream_synthesises(flow):
    from moevit.hw.boards import get_board
    from moevit.hw.config import get_hw_config

    board = get_board("zcu102")
    program = flow.compile(board="zcu102")
    assert program.hw == get_hw_config("tiny")
    assert flow.figures["compile"]["board"] == "zcu102"
    assert flow.figures["compile"]["clock_mhz"] == min(program.hw.clock_mhz, board.clock_mhz)


def test_build_calls_the_bitstream_module(flow, monkeypatch, tmp_path):
    """``build`` hands the board, the model config and the folder to the bitstream module's
    ``write_inputs``, then its ``dry_run`` (a stand-in here, recording the calls, with the
    names and signatures of ``moevit.host.bitstream``)."""
    import types

    calls = []
    inputs = types.SimpleNamespace(board=types.SimpleNamespace(name="zcu102"),
                                   folder=tmp_path, files=[tmp_path / "a.tcl"])
    stand_in = types.ModuleType("moevit.host.bitstream")
    stand_in.write_inputs = lambda board, config, folder=None: calls.append(
        ("write_inputs", board, config, folder)) or inputs
    stand_in.dry_run = lambda build: calls.append(("dry_run", build)) or [
        types.SimpleNamespace(ok=True), types.SimpleNamespace(ok=False)]
    stand_in.run_build = lambda build: calls.append(("run_build", build)) or {"lut": 1}
    monkeypatch.setitem(sys.modules, "moevit.host.bitstream", stand_in)
    import moevit.host

    monkeypatch.setattr(moevit.host, "bitstream", stand_in, raising=False)
    checks = flow.build("zcu102", dry_run=True, folder=tmp_path)
    assert calls == [("write_inputs", "zcu102", "tiny", tmp_path), ("dry_run", inputs)]
    assert len(checks) == 2 and flow.figures["build"]["checks_passed"] == "1 of 2"
    assert flow.build("zcu102") == {"lut": 1} and calls[-1] == ("run_build", inputs)
    import dataclasses

    flow.compile(dataclasses.replace(flow.program.hw, name="other", rows=2))
    with pytest.raises(ConfigError, match=r"^The bitstream build synthesises the default "
                                          r"HwConfig of 'tiny'; this flow's program is for "
                                          r"'other': compile\(board=...\) first$"):
        flow.build("zcu102")
    flow.compile("tiny")


@pytest.mark.parametrize("call, message", [
    (lambda f: f.predict(np.zeros((1, 3, 64, 64), np.int8), 0, backend="gpu"),
     r"^Unknown backend 'gpu'; backends are golden, sim, zynq, alveo$"),
    (lambda f: f.predict(np.zeros((1, 3, 64, 64), np.int8), "normals"), r"normals"),
    (lambda f: f.predict(np.full((1, 3, 64, 64), np.nan, np.float32), 0),
     r"^Images: found nan at index \(0, 0, 0, 0\)$"),
    (lambda f: f.compile("tiny", board="zcu102"), r"^Compile for a HwConfig or for a board, not both$"),
])
def test_bad_input(flow, call, message):
    with pytest.raises(moevit.MoevitError, match=message):
        call(flow)


def test_a_quantized_flow_cannot_quantize_again(flow):
    with pytest.raises(ConfigError, match=r"^This flow holds no float model to quantize"):
        moevit.Flow(qmodel=flow.qmodel).quantize(np.zeros((1, 3, 64, 64), np.float32))


def test_build_without_the_tools_is_a_clear_error(flow, monkeypatch, tmp_path):
    """The real build module: its inputs are written, then Vivado (off the PATH) is named."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFoundError, match=r"^vivado not found: the zcu102 bitstream needs "):
        flow.build("zcu102")
