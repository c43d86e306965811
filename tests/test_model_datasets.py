"""The NYUD-v2, PASCAL-Context and Cityscapes loaders, on small trees made here."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from moevit.model import datasets
from moevit.model.config import TaskSpec, get_config
from moevit.model.datasets import DatasetError, cityscapes, nyud, open_dataset, pascal_context

# Small output size: the fake images below are 12x16, so every target is
# enlarged exactly twice and nearest-neighbour keeps each label block intact.
SIZE = (24, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def config_with(*tasks):
    return get_config("tiny").replace(image_size=SIZE, tasks=tasks)


NYUD_CONFIG = config_with(TaskSpec("semseg", "semseg", 40), TaskSpec("depth", "depth"))
PASCAL_CONFIG = config_with(TaskSpec("seg", "semseg", 21))
CITY7_CONFIG = config_with(TaskSpec("semseg", "semseg", 7), TaskSpec("depth", "depth"))
CITY19_CONFIG = config_with(TaskSpec("semseg", "semseg", 19), TaskSpec("depth", "depth"))

COLOUR = (200, 40, 120)


def write_rgb(path, suffix_colour=COLOUR):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), suffix_colour, np.uint8)).save(path)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def halves(left, right, dtype=np.uint8):
    """A 12x16 map: ``left`` in columns 0..7, ``right`` in 8..15."""
    array = np.empty((12, 16), dtype)
    array[:, :8], array[:, 8:] = left, right
    return array


def make_nyud(root, ids=("0001", "0002"), split="val"):
    (root / "gt_sets").mkdir(parents=True)
    (root / "gt_sets" / f"{split}.txt").write_text("".join(f"{name}\n" for name in ids))
    for name in ids:
        write_rgb(root / "images" / f"{name}.jpg")
        write_png(root / "segmentation" / f"{name}.png", halves(0, 5))  # raw 0 = unlabelled
        (root / "depth").mkdir(exist_ok=True)
        np.save(root / "depth" / f"{name}.npy", halves(0.0, 2.5, np.float32))
    return root


def make_pascal(root, ids=("2008_000002", "2008_000003")):
    (root / "ImageSets" / "Context").mkdir(parents=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("\n".join(ids) + "\n")
    for name in ids:
        write_rgb(root / "JPEGImages" / f"{name}.jpg")
        write_png(root / "semseg" / "pascal-context" / f"{name}.png", halves(3, 255))
    return root


def expected_image():
    mean, std = torch.tensor(datasets.MEAN), torch.tensor(datasets.STD)
    return ((torch.tensor(COLOUR) / 255.0 - mean) / std).view(3, 1, 1).expand(3, *SIZE)


def test_nyud_sample_form_and_label_conventions(tmp_path):
    data = nyud(make_nyud(tmp_path / "NYUD_MT"), NYUD_CONFIG, "val")
    assert len(data) == 2 and data.names == ["0001", "0002"]
    sample = data[1]
    assert set(sample) == {"image", "semseg", "depth"}
    image, semseg, depth = sample["image"], sample["semseg"], sample["depth"]
    assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
    # A flat colour survives JPEG to within a couple of grey levels.
    assert torch.allclose(image, expected_image(), atol=3 / 255 / min(datasets.STD))
    assert semseg.dtype == torch.long and semseg.shape == SIZE
    # NYUD's 0 (unlabelled) is ignored, 1..40 become 0..39.
    assert torch.equal(semseg, torch.from_numpy(halves(255, 4, np.int64)).repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert depth.dtype == torch.float32 and depth.shape == (1, *SIZE)
    assert torch.equal(depth[0, :, :16], torch.zeros(24, 16))  # invalid stays 0, unblended
    assert torch.equal(depth[0, :, 16:], torch.full((24, 16), 2.5))
    batch = data.batch([1, 0])  # the synthetic set's fast path, same form
    assert batch["image"].shape == (2, 3, *SIZE) and torch.equal(batch["semseg"][0], semseg)
    assert batch["depth"].shape == (2, 1, *SIZE)


def test_nyud_depth_only_config_does_not_need_segmentation(tmp_path):
    root = make_nyud(tmp_path / "NYUD_MT", ids=("a",))
    (root / "segmentation" / "a.png").unlink()
    sample = nyud(root, config_with(TaskSpec("d", "depth")), "val")[0]
    assert set(sample) == {"image", "d"}


def test_pascal_prefers_voc12_annotation(tmp_path):
    root = make_pascal(tmp_path / "PASCAL_MT")
    write_png(root / "semseg" / "VOC12" / "2008_000003.png", halves(20, 1))
    data = pascal_context(root, PASCAL_CONFIG, "train")
    assert len(data) == 2
    first, second = data[0]["seg"], data[1]["seg"]
    assert first[0, 0] == 3 and first[0, -1] == 255  # pascal-context annotation
    assert second[0, 0] == 20 and second[0, -1] == 1  # VOC12 annotation wins


def test_cityscapes_m3vit_npy_layout(tmp_path):
    root = tmp_path / "cityscapes"
    for folder in ("image", "label_7", "depth"):
        (root / "val" / folder).mkdir(parents=True)
    for n in range(11):  # sorted numerically: 0, 1, ..., 10
        np.save(root / "val" / "image" / f"{n}.npy", np.full((12, 16, 3), n / 10, np.float32))
        np.save(root / "val" / "label_7" / f"{n}.npy", halves(-1, 6, np.float32))
        np.save(root / "val" / "depth" / f"{n}.npy", halves(0.0, 0.25, np.float32)[:, :, None])
    data = cityscapes(root, CITY7_CONFIG, "val")
    assert data.names == [str(n) for n in range(11)]
    sample = data[10]
    red = (1.0 - datasets.MEAN[0]) / datasets.STD[0]
    assert torch.allclose(sample["image"][0], torch.full(SIZE, red))
    assert sample["semseg"][0, 0] == 255 and sample["semseg"][0, -1] == 6
    assert sample["depth"].shape == (1, *SIZE) and sample["depth"][0, 0, -1] == 0.25


def make_cityscapes_official(root, camera=True):
    stem = "aachen_000000_000019"
    write_rgb(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png")
    write_png(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelTrainIds.png", halves(18, 255))
    # Disparity PNGs are uint16: p = 256 * d + 1, 0 = invalid.
    write_png(root / "disparity" / "train" / "aachen" / f"{stem}_disparity.png", halves(0, 256 * 8 + 1, np.uint16))
    if camera:
        path = root / "camera" / "train" / "aachen" / f"{stem}_camera.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"extrinsic": {"baseline": 0.25}, "intrinsic": {"fx": 2000.0}}))
    return root


def test_cityscapes_official_layout_turns_disparity_into_depth(tmp_path):
    data = cityscapes(make_cityscapes_official(tmp_path / "cs"), CITY19_CONFIG, "train")
    assert data.names == ["aachen_000000_000019"]
    sample = data[0]
    assert sample["semseg"][0, 0] == 18 and sample["semseg"][0, -1] == 255
    assert sample["depth"][0, 0, 0] == 0  # no measurement
    assert sample["depth"][0, 0, -1] == pytest.approx(0.25 * 2000.0 / 8)  # baseline * fx / disparity


def test_cityscapes_without_camera_files_warns_and_uses_nominal_rig(tmp_path):
    root = make_cityscapes_official(tmp_path / "cs", camera=False)
    with pytest.warns(UserWarning, match=r"^Cityscapes tree at .* has no camera/train/: depth uses the nominal"):
        data = cityscapes(root, CITY19_CONFIG, "train")
    nominal = datasets.CITYSCAPES_BASELINE * datasets.CITYSCAPES_FX / 8
    assert data[0]["depth"][0, 0, -1] == pytest.approx(nominal)


def test_open_dataset_dispatches_by_name(tmp_path):
    data = open_dataset("pascal-context", make_pascal(tmp_path / "p"), PASCAL_CONFIG, "train")
    assert isinstance(data, datasets.DenseDataset) and data.title == "PASCAL-Context"


# Bad input: one test per message ----------------------------------------------
def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"^NYUD-v2 root .*nowhere does not exist$"):
        nyud(tmp_path / "nowhere", NYUD_CONFIG)


def test_missing_split_list(tmp_path):
    root = make_nyud(tmp_path / "n", split="val")
    with pytest.raises(DatasetError, match=r"^NYUD-v2 tree at .* has no gt_sets/train\.txt$"):
        nyud(root, NYUD_CONFIG, "train")


def test_missing_listed_file(tmp_path):
    root = make_nyud(tmp_path / "n")
    (root / "depth" / "0002.npy").unlink()
    with pytest.raises(DatasetError, match=r"^NYUD-v2 tree at .* has no depth/0002\.npy \(listed in gt_sets/val\.txt\)$"):
        nyud(root, NYUD_CONFIG, "val")


def test_empty_split_list(tmp_path):
    root = make_pascal(tmp_path / "p")
    (root / "ImageSets" / "Context" / "train.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"^PASCAL-Context split list ImageSets/Context/train\.txt names no images$"):
        pascal_context(root, PASCAL_CONFIG, "train")


def test_task_the_dataset_lacks(tmp_path):
    config = config_with(TaskSpec("seg", "semseg", 21), TaskSpec("depth", "depth"))
    with pytest.raises(
        DatasetError,
        match=r"^PASCAL-Context has no depth ground truth for task 'depth' of config 'tiny'; it provides semseg$",
    ):
        pascal_context(make_pascal(tmp_path / "p"), config)


def test_class_count_mismatch(tmp_path):
    with pytest.raises(DatasetError, match=r"^NYUD-v2 has 40 semseg classes; task 'semseg' of config 'tiny' has 4$"):
        nyud(make_nyud(tmp_path / "n"), get_config("tiny"), "val")


def test_label_outside_the_classes(tmp_path):
    root = make_pascal(tmp_path / "p", ids=("x",))
    write_png(root / "semseg" / "pascal-context" / "x.png", halves(3, 40))
    data = pascal_context(root, PASCAL_CONFIG)
    with pytest.raises(
        DatasetError, match=r"^Label 40 in semseg/pascal-context/x\.png is outside PASCAL-Context's 0\.\.20 \(255 = ignore\)$"
    ):
        data[0]


def test_corrupt_image(tmp_path):
    root = make_pascal(tmp_path / "p", ids=("x",))
    (root / "JPEGImages" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"^Cannot read image .*JPEGImages/x\.jpg: "):
        pascal_context(root, PASCAL_CONFIG)[0]


def test_depth_array_of_the_wrong_shape(tmp_path):
    root = make_nyud(tmp_path / "n", ids=("a",))
    np.save(root / "depth" / "a.npy", np.zeros((12, 16, 3), np.float32))
    with pytest.raises(DatasetError, match=r"^.*depth/a\.npy holds an array of shape \(12, 16, 3\); expected \(H, W\)$"):
        nyud(root, NYUD_CONFIG, "val")[0]


def test_cityscapes_in_neither_layout(tmp_path):
    (tmp_path / "cs").mkdir()
    with pytest.raises(
        DatasetError,
        match=r"^Cityscapes tree at .* has neither leftImg8bit/ \(official layout\) nor val/image/ \(M³ViT's preprocessed layout\)$",
    ):
        cityscapes(tmp_path / "cs", CITY7_CONFIG, "val")


def test_cityscapes_npy_without_labels_for_the_class_count(tmp_path):
    root = tmp_path / "cs"
    (root / "val" / "image").mkdir(parents=True)
    (root / "val" / "label_7").mkdir()
    with pytest.raises(
        DatasetError,
        match=r"^Cityscapes tree at .* has no val/label_19/ for the 19-class task 'semseg'; it has label_7$",
    ):
        cityscapes(root, CITY19_CONFIG, "val")


def test_unknown_dataset_name():
    with pytest.raises(
        DatasetError,
        match="^"
        + re.escape("Unknown dataset 'coco'; known datasets are ['synthetic', 'nyud', 'pascal-context', 'cityscapes']")
        + "$",
    ):
        open_dataset("coco", "/x", NYUD_CONFIG)


def test_real_dataset_without_root():
    with pytest.raises(DatasetError, match=r"^Dataset 'nyud' needs a root folder \(--data-root DIR\)$"):
        open_dataset("nyud", None, NYUD_CONFIG)
