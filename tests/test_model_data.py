import numpy as np
import pytest
import torch

from moevit.errors import ConfigError
from moevit.model.config import get_config
from moevit.model.data import FAR, NEAR, SyntheticDataset, render_scene

TINY = get_config("tiny")


def test_samples_have_the_config_shapes_and_ranges():
    data = SyntheticDataset(TINY, "train", size=8)
    sample = data[3]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["semseg"].shape == (64, 64) and sample["semseg"].dtype == torch.int64
    assert sample["depth"].shape == (1, 64, 64)
    labels = data.targets["semseg"]
    assert labels.min() == 0 and labels.max() <= 3
    depth = data.targets["depth"]
    assert depth.min() >= NEAR * 0.75 - 1e-6 and depth.max() <= FAR + 1e-6
    # Shapes stand in front of the ground: wherever there is a shape, depth is below the plane.
    rows = torch.arange(64, dtype=torch.float32) / 63
    ground = (FAR + (NEAR - FAR) * rows).view(1, 64, 1).expand(8, 64, 64)
    shape = labels > 0
    assert shape.any() and (depth[:, 0][shape] < ground[shape]).all()
    assert torch.allclose(depth[:, 0][~shape], ground[~shape])


def test_samples_are_deterministic_and_independent_of_the_set_size():
    small = SyntheticDataset(TINY, "train", size=4, seed=5)
    large = SyntheticDataset(TINY, "train", size=10, seed=5)
    assert torch.equal(small.images, large.images[:4])
    assert torch.equal(small.targets["semseg"], large.targets["semseg"][:4])
    other_seed = SyntheticDataset(TINY, "train", size=4, seed=6)
    val = SyntheticDataset(TINY, "val", size=4, seed=5)
    assert not torch.equal(small.images, other_seed.images)
    assert not torch.equal(small.images, val.images)


def test_batch_equals_stacked_samples():
    data = SyntheticDataset(TINY, "val", size=6)
    batch = data.batch([4, 1])
    assert torch.equal(batch["image"][1], data[1]["image"])
    assert torch.equal(batch["depth"][0], data[4]["depth"])


def test_render_scene_classes_follow_the_request():
    image, labels, depth = render_scene(np.random.default_rng(0), 32, 48, 3, max_shapes=6)
    assert image.shape == (32, 48, 3) and labels.shape == depth.shape == (32, 48)
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_other_configs_get_their_sizes_and_classes():
    edge = get_config("edge-moe")
    data = SyntheticDataset(edge, "val", size=2)
    assert data.images.shape == (2, 3, 128, 256)
    assert data.targets["semseg"].max() < 7


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "test"}, r"^Split must be one of \['train', 'val'\], not 'test'$"),
        ({"size": 0}, r"^Dataset size must be a positive integer, not 0$"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticDataset(TINY, **kwargs)
