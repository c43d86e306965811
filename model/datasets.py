"""NYUD-v2, PASCAL-Context and Cityscapes in the directory layouts M³ViT reads.

M³ViT (VITA-Group/M3ViT, ``data/nyud.py``, ``data/pascal_context.py``,
``data/cityscapes.py``) inherits its data code from Multi-Task-Learning-PyTorch
(SimonVandenhende/Multi-Task-Learning-PyTorch, ``data/``). The trees it reads:

NYUD-v2 (``NYUD_MT``)
    ``images/<id>.jpg``, ``segmentation/<id>.png`` (0 = unlabelled, 1..40 the
    40 classes; M³ViT shifts them to 0..39 and makes 0 the ignore label),
    ``depth/<id>.npy`` (metres, 0 = no measurement), ``gt_sets/<split>.txt``
    (one id per line).
PASCAL-Context (``PASCAL_MT``)
    ``JPEGImages/<id>.jpg``, ``semseg/VOC12/<id>.png`` or, where that does not
    exist, ``semseg/pascal-context/<id>.png`` (21 classes, 255 = ignore),
    ``ImageSets/Context/<split>.txt``. PASCAL-Context has no depth.
Cityscapes, two layouts
    M³ViT's own (the preprocessed 128x256 set of MTAN, lorenmt/mtan):
    ``<split>/image/<n>.npy`` (H, W, 3 floats in [0, 1]; uint8 0..255 is scaled by 1/255),
    ``<split>/label_<C>/<n>.npy`` (C classes, -1 = ignore),
    ``<split>/depth/<n>.npy`` (H, W, 1, 0 = invalid). The official layout
    (cityscapesScripts): ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png``,
    ``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` (19 classes,
    255 = ignore), ``disparity/<split>/<city>/<stem>_disparity.png`` (uint16
    ``p``: disparity ``(p - 1) / 256`` pixels, 0 = invalid) turned into depth
    with ``camera/<split>/<city>/<stem>_camera.json`` (``baseline * fx /
    disparity``).

Every sample has the form of :mod:`moevit.model.data`'s synthetic set: a dict
with ``"image"`` (float32 (3, H, W), normalised with M³ViT's ImageNet mean and
standard deviation) and one target per task of the config, under the task's
name: ``semseg`` tasks a long (H, W) map with 255 = ignore, ``depth`` tasks a
float32 (1, H, W) map with 0 = invalid. Everything is resized to the config's
image size: the image bilinearly, the targets by nearest neighbour so an
ignored or invalid pixel never blends into a valid one, as M³ViT does
(``utils/config.py`` FLAGVALS; it resizes images bicubically). M³ViT feeds its
preprocessed Cityscapes images unnormalised; moevit normalises every image the
same way, so one model reads every set.

The tree is checked when the dataset is opened: a missing root, split list or
file listed in it is a :class:`DatasetError` naming the path.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from moevit.errors import MoevitError, NonFiniteError, check_finite
from moevit.model.data import MEAN, STD, stack_samples  # M³ViT normalises with ImageNet statistics (utils/common_config.py)
from moevit.model.metrics import IGNORE

__all__ = [
    "DATASETS",
    "DatasetError",
    "DenseDataset",
    "nyud",
    "pascal_context",
    "cityscapes",
    "open_dataset",
]

DATASETS = ("synthetic", "nyud", "pascal-context", "cityscapes")

# Nominal Cityscapes stereo rig, used only where camera/*.json is absent:
# baseline in metres and focal length in pixels from the dataset's camera files.
CITYSCAPES_BASELINE = 0.209313
CITYSCAPES_FX = 2262.52


class DatasetError(MoevitError, ValueError):
    """A dataset tree is missing, incomplete or does not fit the model config."""


@dataclass(frozen=True)
class _Item:
    """One sample on disk: its id, its image and one file per target kind."""

    name: str
    image: Path
    targets: dict


class DenseDataset(torch.utils.data.Dataset):
    """A multi-task dense-prediction dataset read from disk.

    Use :func:`nyud`, :func:`pascal_context`, :func:`cityscapes` or
    :func:`open_dataset` rather than this class.

    Parameters
    ----------
    title : str
        Name used in messages (``"NYUD-v2"``).
    root : Path
        The tree's root, for messages.
    items : list of _Item
        The samples.
    config : ModelConfig
        Gives the output size and the tasks.
    read_image : callable
        ``path -> float32 (H, W, 3) array in [0, 1]``.
    readers : dict
        Target kind -> ``(path -> array)``: an (H, W) label map already in
        0..classes-1 or 255 for ``semseg``, an (H, W) float map with 0 =
        invalid for ``depth``.
    classes : int
        Number of semantic classes of this dataset.

    Attributes
    ----------
    names : list of str
        Sample ids, in order.
    """

    def __init__(self, title, root, items, config, read_image, readers, classes):
        self.title = title
        self.root = Path(root)
        self.config = config
        self.classes = classes
        self._items = items
        self._read_image = read_image
        self._readers = readers
        self.names = [item.name for item in items]

    def __len__(self):
        return len(self._items)

    def __getitem__(self, index):
        item = self._items[index]
        size = self.config.image_size
        image = torch.from_numpy(np.ascontiguousarray(self._read_image(item.image), np.float32))
        image = image.permute(2, 0, 1)[None]
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(MEAN).view(3, 1, 1)
        std = torch.tensor(STD).view(3, 1, 1)
        sample = {"image": ((image[0] - mean) / std).contiguous()}
        for task in self.config.tasks:
            path = item.targets[task.kind]
            target = np.asarray(self._readers[task.kind](path))
            if task.kind == "semseg":
                self._check_labels(target, path)
            target = torch.from_numpy(np.ascontiguousarray(target, np.float32))[None, None]
            target = F.interpolate(target, size=size, mode="nearest-exact")[0]
            sample[task.name] = target[0].long() if task.kind == "semseg" else target
        return sample

    def batch(self, indices):
        """The samples at ``indices`` stacked, as a dict of tensors (as the synthetic set)."""
        return stack_samples([self[int(index)] for index in indices])

    def _check_labels(self, labels, path):
        values = np.unique(labels)
        bad = values[(values != IGNORE) & ((values < 0) | (values >= self.classes))]
        if bad.size:
            raise DatasetError(
                f"Label {int(bad[0])} in {_relative(path, self.root)} is outside "
                f"{self.title}'s 0..{self.classes - 1} ({IGNORE} = ignore)"
            )

    def __repr__(self):
        return f"<{self.title} {self.root} ({len(self)} samples)>"


# Readers -------------------------------------------------------------------
def _read_rgb(path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.float32) / 255.0
    except OSError as error:
        raise DatasetError(f"Cannot read image {path}: {error}") from None


def _read_png(path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except OSError as error:
        raise DatasetError(f"Cannot read {path}: {error}") from None


def _read_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"Cannot read {path}: {error}") from None


def _squeeze_map(array, path):
    """(H, W) from (H, W) or (H, W, 1)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise DatasetError(f"{path} holds an array of shape {array.shape}; expected (H, W)")
    return array


def _nyud_semseg(path):
    # 0 is "unlabelled": M³ViT maps it to the ignore label and 1..40 to 0..39.
    labels = _squeeze_map(_read_png(path), path).astype(np.int64)
    return np.where(labels == 0, IGNORE, labels - 1)


def _plain_semseg(path):
    return _squeeze_map(_read_png(path), path).astype(np.int64)


def _finite(array, path):
    """``array``, or a DatasetError naming the first NaN or infinity in file ``path``."""
    try:
        check_finite(str(path), array)
    except NonFiniteError as error:
        raise DatasetError(str(error)) from None
    return array


def _npy_depth(path):
    return _finite(_squeeze_map(_read_npy(path), path).astype(np.float32), path)


def _npy_image(path):
    """An (H, W, 3) image in [0, 1]: floats as they are, uint8 scaled by 1/255."""
    image = _read_npy(path)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DatasetError(f"{path} holds an array of shape {image.shape}; expected (H, W, 3)")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise DatasetError(f"{path} holds {image.dtype} pixels; expected floats in [0, 1] or uint8 in 0..255")
    image = _finite(image.astype(np.float32), path)
    if image.size and (image.min() < 0 or image.max() > 1):
        raise DatasetError(
            f"{path} holds float pixels in {image.min():g}..{image.max():g}; expected [0, 1] "
            "(scale a 0..255 image by 1/255, or store it as uint8)"
        )
    return image


def _npy_semseg(path):
    labels = _squeeze_map(_read_npy(path), path).astype(np.int64)
    return np.where(labels < 0, IGNORE, labels)


def _disparity_depth(path, camera):
    raw = _squeeze_map(_read_png(path), path).astype(np.float32)
    disparity = (raw - 1.0) / 256.0
    baseline, fx = CITYSCAPES_BASELINE, CITYSCAPES_FX
    if camera is not None:
        try:
            params = json.loads(Path(camera).read_text())
            baseline, fx = params["extrinsic"]["baseline"], params["intrinsic"]["fx"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"Cannot read camera parameters from {camera}: {error}") from None
    valid = raw > 1  # 0 = no measurement; 1 would be disparity 0 (infinitely far)
    return np.where(valid, baseline * fx / np.where(valid, disparity, 1.0), 0.0).astype(np.float32)


# Tree checks ---------------------------------------------------------------
def _relative(path, root):
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _root(title, root):
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{title} root {root} does not exist")
    return root


def _need(title, root, path, why=""):
    if not path.exists():
        raise DatasetError(f"{title} tree at {root} has no {_relative(path, root)}{why}")
    return path


def _split_ids(title, root, split_file):
    _need(title, root, split_file)
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{title} split list {_relative(split_file, root)} names no images")
    return ids


def _check_tasks(title, config, provides, classes):
    """Each task of the config must be one this dataset has, with its class count."""
    for task in config.tasks:
        if task.kind not in provides:
            raise DatasetError(
                f"{title} has no {task.kind} ground truth for task {task.name!r} of config "
                f"{config.name!r}; it provides {', '.join(provides)}"
            )
        if task.kind == "semseg" and task.classes != classes:
            raise DatasetError(
                f"{title} has {classes} semseg classes; task {task.name!r} of config "
                f"{config.name!r} has {task.classes}"
            )


def _kinds(config):
    return {task.kind for task in config.tasks}


# The datasets --------------------------------------------------------------
def nyud(root, config, split="train"):
    """NYUD-v2 as M³ViT reads it (``NYUD_MT``): 40 classes and depth.

    Parameters
    ----------
    root : str or Path
        The ``NYUD_MT`` folder.
    config : ModelConfig
        Output size and tasks (``semseg`` with 40 classes and/or ``depth``).
    split : str
        Name of a list in ``gt_sets/`` (``train`` or ``val``).

    Raises
    ------
    DatasetError
        The root, the split list or a file it names is missing, or the config
        asks for a task NYUD-v2 does not have.
    """
    title, classes = "NYUD-v2", 40
    root = _root(title, root)
    _check_tasks(title, config, ("semseg", "depth"), classes)
    folders = {"semseg": ("segmentation", ".png"), "depth": ("depth", ".npy")}
    split_file = root / "gt_sets" / f"{split}.txt"
    items = []
    for name in _split_ids(title, root, split_file):
        why = f" (listed in {_relative(split_file, root)})"
        image = _need(title, root, root / "images" / f"{name}.jpg", why)
        targets = {}
        for kind in _kinds(config):
            folder, suffix = folders[kind]
            targets[kind] = _need(title, root, root / folder / f"{name}{suffix}", why)
        items.append(_Item(name, image, targets))
    readers = {"semseg": _nyud_semseg, "depth": _npy_depth}
    return DenseDataset(title, root, items, config, _read_rgb, readers, classes)


def pascal_context(root, config, split="train"):
    """PASCAL-Context as M³ViT reads it (``PASCAL_MT``): 21 classes, no depth.

    Parameters
    ----------
    root : str or Path
        The ``PASCAL_MT`` folder.
    config : ModelConfig
        Output size and tasks (only ``semseg`` tasks, with 21 classes).
    split : str
        Name of a list in ``ImageSets/Context/`` (``train`` or ``val``).

    Raises
    ------
    DatasetError
        As :func:`nyud`; a ``depth`` task is an error since PASCAL-Context has
        no depth ground truth.
    """
    title, classes = "PASCAL-Context", 21
    root = _root(title, root)
    _check_tasks(title, config, ("semseg",), classes)
    split_file = root / "ImageSets" / "Context" / f"{split}.txt"
    items = []
    for name in _split_ids(title, root, split_file):
        why = f" (listed in {_relative(split_file, root)})"
        image = _need(title, root, root / "JPEGImages" / f"{name}.jpg", why)
        # M³ViT prefers the VOC12 annotation where one exists.
        semseg = root / "semseg" / "VOC12" / f"{name}.png"
        if not semseg.exists():
            semseg = _need(title, root, root / "semseg" / "pascal-context" / f"{name}.png", why)
        items.append(_Item(name, image, {"semseg": semseg}))
    return DenseDataset(title, root, items, config, _read_rgb, {"semseg": _plain_semseg}, classes)


def cityscapes(root, config, split="train"):
    """Cityscapes in M³ViT's preprocessed layout or the official one.

    Parameters
    ----------
    root : str or Path
        A folder holding either ``<split>/image/`` (M³ViT / MTAN's
        preprocessed ``.npy`` set; the semseg classes select ``label_<C>``)
        or ``leftImg8bit/`` (official layout, 19 train-id classes, depth from
        ``disparity/`` and ``camera/``).
    config : ModelConfig
        Output size and tasks.
    split : str
        ``train``, ``val`` (or ``test`` in the official layout).

    Raises
    ------
    DatasetError
        Neither layout is there, or a folder or file it needs is missing.
    """
    title = "Cityscapes"
    root = _root(title, root)
    if (root / "leftImg8bit").is_dir():
        return _cityscapes_official(title, root, config, split)
    if (root / split / "image").is_dir():
        return _cityscapes_npy(title, root, config, split)
    raise DatasetError(
        f"{title} tree at {root} has neither leftImg8bit/ (official layout) nor "
        f"{split}/image/ (M³ViT's preprocessed layout)"
    )


def _cityscapes_npy(title, root, config, split):
    base = root / split
    semseg = [task for task in config.tasks if task.kind == "semseg"]
    classes = semseg[0].classes if semseg else 0
    label_dir = base / f"label_{classes}"
    if semseg and not label_dir.is_dir():
        found = sorted(path.name for path in base.glob("label_*"))
        raise DatasetError(
            f"{title} tree at {root} has no {_relative(label_dir, root)}/ for the "
            f"{classes}-class task {semseg[0].name!r}; it has {', '.join(found) or 'no label_* folder'}"
        )
    _check_tasks(title, config, ("semseg", "depth"), classes)
    folders = {"semseg": label_dir, "depth": base / "depth"}
    images = sorted((base / "image").glob("*.npy"), key=lambda path: (len(path.stem), path.stem))
    if not images:
        raise DatasetError(f"{title} tree at {root} has no {split}/image/*.npy")
    items = []
    for image in images:
        targets = {kind: _need(title, root, folders[kind] / image.name) for kind in _kinds(config)}
        items.append(_Item(image.stem, image, targets))
    readers = {"semseg": _npy_semseg, "depth": _npy_depth}
    return DenseDataset(title, root, items, config, _npy_image, readers, classes)


def _cityscapes_official(title, root, config, split):
    classes = 19
    _check_tasks(title, config, ("semseg", "depth"), classes)
    image_dir = _need(title, root, root / "leftImg8bit" / split)
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"{title} tree at {root} has no leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    has_camera = (root / "camera" / split).is_dir()
    if "depth" in _kinds(config) and not has_camera:
        warnings.warn(
            f"{title} tree at {root} has no camera/{split}/: depth uses the nominal baseline "
            f"{CITYSCAPES_BASELINE} m and focal length {CITYSCAPES_FX} px",
            stacklevel=3,
        )
    items, cameras = [], {}
    for image in images:
        city = image.parent.name
        stem = image.name[: -len("_leftImg8bit.png")]
        targets = {}
        if "semseg" in _kinds(config):
            targets["semseg"] = _need(title, root, root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
        if "depth" in _kinds(config):
            targets["depth"] = _need(title, root, root / "disparity" / split / city / f"{stem}_disparity.png")
            if has_camera:
                cameras[targets["depth"]] = _need(title, root, root / "camera" / split / city / f"{stem}_camera.json")
        items.append(_Item(stem, image, targets))
    readers = {
        "semseg": _plain_semseg,
        "depth": lambda path: _disparity_depth(path, cameras.get(path)),
    }
    return DenseDataset(title, root, items, config, _read_rgb, readers, classes)


_OPENERS = {"nyud": nyud, "pascal-context": pascal_context, "cityscapes": cityscapes}


def open_dataset(name, root, config, split="train", **synthetic_options):
    """The dataset named on the command line (``--data NAME --data-root DIR``).

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    root : str or Path or None
        The tree's root; not used (and may be None) for ``synthetic``.
    config : ModelConfig
        Output size and tasks.
    split : str
        ``train`` or ``val``.
    **synthetic_options
        Passed to the synthetic set (its size, seed).

    Raises
    ------
    DatasetError
        An unknown name, a real dataset without a root, or a bad tree.
    """
    if name == "synthetic":
        from moevit.model import data

        return data.SyntheticDataset(config, split=split, **synthetic_options)
    if name not in _OPENERS:
        raise DatasetError(f"Unknown dataset {name!r}; known datasets are {list(DATASETS)}")
    if root is None:
        raise DatasetError(f"Dataset {name!r} needs a root folder (--data-root DIR)")
    return _OPENERS[name](root, config, split)
