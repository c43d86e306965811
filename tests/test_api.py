"""``import moevit``: the flow's main objects for a notebook user."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import moevit
from moevit.errors import ConfigError
from moevit.model.integer.intops import QuantizationError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_import_is_light_and_names_resolve_on_first_use():
    code = "import sys, moevit; print('torch' in sys.modules, 'numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
    for name in moevit.__all__:
        assert getattr(moevit, name) is not None, name
    assert set(moevit.__all__) <= set(dir(moevit))
    with pytest.raises(AttributeError, match=r"^module 'moevit' has no attribute 'nothing'$"):
        moevit.nothing  # noqa: B018


def test_the_names_are_the_flow_s_objects():
    from moevit.hw.config import HwConfig
    from moevit.model import checkpoint
    from moevit.model.integer import golden, quantize
    from moevit.model.onnx import export as onnx_export

    assert moevit.load_checkpoint is checkpoint.load_checkpoint
    assert moevit.quantize is quantize.quantize
    assert moevit.golden_run is golden.run and moevit.golden_predict is golden.predict
    assert moevit.export_onnx is onnx_export.export_onnx
    assert isinstance(moevit.get_hw_config("tiny"), HwConfig)
    assert moevit.get_config("tiny").name == "tiny"


@pytest.fixture(scope="module")
def quantized():
    from moevit.model.integer.evaluate import signal_model  # weights whose activations carry signal

    config = moevit.get_config("tiny")
    images = moevit.SyntheticDataset(config, "val", size=3).images
    return moevit.quantize(signal_model(config), images), images


@pytest.fixture(scope="module")
def depth_one_by_one(quantized):
    """The depth of each image as the one-image run gives it."""
    qmodel, images = quantized
    return np.stack([moevit.golden_run(qmodel, image.numpy(), "depth", record=False).prediction for image in images])


@pytest.mark.parametrize(
    "task", ["depth", 1, np.int64(1), np.uint8(1), np.array(1), torch.tensor(1), torch.tensor(1, dtype=torch.int8)],
    ids=["name", "int", "numpy-int64", "numpy-uint8", "0d-array", "0d-tensor", "0d-int8-tensor"],
)
def test_golden_model_takes_a_batch_and_any_integer_task(quantized, depth_one_by_one, task):
    qmodel, images = quantized
    predictions = moevit.golden_predict(qmodel, images, task)
    assert predictions.shape == (3, 1, 64, 64) and predictions.dtype == np.float64
    assert np.array_equal(predictions, depth_one_by_one)


def test_golden_model_takes_numpy_images(quantized, depth_one_by_one):
    qmodel, images = quantized
    assert np.array_equal(moevit.golden_predict(qmodel, images.numpy(), "depth"), depth_one_by_one)


def test_golden_model_semseg_batch_and_empty_batch(quantized):
    qmodel, images = quantized
    assert moevit.golden_predict(qmodel, images[:2], 0).shape == (2, 4, 64, 64)
    assert moevit.golden_predict(qmodel, images[:0], "semseg").shape == (0, 4, 64, 64)


@pytest.mark.parametrize(
    "task, message",
    [
        (True, r"^Model 'tiny' has no task True; task ids are 0\.\.1$"),
        (np.array(True), r"^Model 'tiny' has no task array\(True\); task ids are 0\.\.1$"),
        (1.0, r"^Model 'tiny' has no task 1\.0; task ids are 0\.\.1$"),
        (torch.tensor([1]), r"^Model 'tiny' has no task tensor\(\[1\]\); task ids are 0\.\.1$"),
        (np.int64(2), r"^Model 'tiny' has no task np\.int64\(2\); task ids are 0\.\.1$"),
        ("normals", r"^Model 'tiny' has no task 'normals'; its tasks are \['semseg', 'depth'\]$"),
    ],
)
def test_golden_model_rejects_a_task_that_is_not_one(quantized, task, message):
    qmodel, images = quantized
    with pytest.raises(ConfigError, match=message):
        moevit.golden_predict(qmodel, images, task)


def test_golden_model_rejects_bad_images(quantized):
    qmodel, images = quantized
    with pytest.raises(QuantizationError, match=r"^Images of shape \(3, 64, 64\) do not fit model 'tiny'; "
                                                r"expected \(batch, 3, 64, 64\)$"):
        moevit.golden_predict(qmodel, images[0], "depth")
    bad = images.clone()
    bad[1, 2, 3, 4] = float("nan")
    with pytest.raises(moevit.MoevitError, match=r"^Image: found nan at index \(2, 3, 4\)$"):
        moevit.golden_predict(qmodel, bad, "depth")
