"""A deterministic synthetic multi-task set: rendered shapes, classes and depth.

Each image is a scene of a few flat shapes (disc, square, triangle, ring,
cross, ...) standing in front of a ground plane that recedes towards the top
of the image. The targets, per task of the config:

``semseg``
    The class of each pixel: 0 for the background, ``1..classes-1`` for the
    shapes. A class fixes the shape's outline and, loosely, its colour (a
    per-class hue with jitter), so it is learnable from local appearance.
``depth``
    Distance in metres: the ground plane goes from 2 m (bottom row) to 10 m
    (top row); a shape is flat, at a depth in front of the ground at its
    centre; where the ground comes nearer than the shape (below it), the
    ground hides it (a z-buffer).
    Depth cues in the image: a shape's size scales with 1/depth, and a haze
    blends every pixel towards grey with distance (more haze = farther).

Nearer shapes hide farther ones (drawn far to near). Sample ``i`` of split
``s`` with seed ``seed`` is rendered from its own generator,
``numpy.random.default_rng([seed, split id, i])``, so a sample never depends
on which others were rendered or in which order, or on the process that did
it. No download, no files: the set is rendered in memory when opened.

Samples have the form of :mod:`moevit.model.datasets`: a dict with
``"image"`` (float32 (3, H, W), normalised with ImageNet's mean and standard
deviation as M³ViT does) and, under each task's name, a long (H, W) map for
``semseg`` or a float32 (1, H, W) map for ``depth``.
"""

import numpy as np
import torch

from moevit.errors import ConfigError
from moevit.model.config import ModelConfig, check_positive

__all__ = ["SyntheticDataset", "render_scene", "batch_of", "stack_samples", "SPLITS", "DEFAULT_SIZES", "NEAR", "FAR"]

SPLITS = ("train", "val")
DEFAULT_SIZES = {"train": 2048, "val": 256}
NEAR, FAR = 2.0, 10.0  # ground plane depth at the bottom and the top row, metres
HAZE = 0.12  # per metre: fraction of the colour that fades to grey, 1 - exp(-HAZE * depth)
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as M³ViT (the real datasets use these too)
STD = (0.229, 0.224, 0.225)
_SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "bar")


def _shape_mask(kind, yy, xx, cy, cx, r):
    """Boolean mask of one shape of half-size ``r`` centred at (cy, cx)."""
    dy, dx = yy - cy, xx - cx
    if kind == "disc":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        return (np.abs(dy) <= 0.8 * r) & (np.abs(dx) <= 0.8 * r)
    if kind == "triangle":  # apex up
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if kind == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == "cross":
        arm = 0.35 * r
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    return (np.abs(dy) <= 0.3 * r) & (np.abs(dx) <= r)  # bar


def _class_colours(classes):
    """A fixed colour per class (index 0, the background, is unused)."""
    hues = (np.arange(classes) * 0.618034) % 1.0  # golden-ratio hues: far apart
    colours = []
    for hue in hues:
        h = hue * 6
        x = 1 - abs(h % 2 - 1)
        rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
        colours.append(0.2 + 0.7 * np.array(rgb))
    return np.array(colours)


def render_scene(rng, height, width, classes, *, max_shapes=4):
    """Render one scene.

    Parameters
    ----------
    rng : numpy.random.Generator
    height, width : int
    classes : int
        Semantic classes including the background (>= 2).
    max_shapes : int

    Returns
    -------
    image : float32 (height, width, 3) in [0, 1]
    labels : int64 (height, width) in 0..classes-1
    depth : float32 (height, width), metres
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rows = yy / max(height - 1, 1)
    depth = (FAR + (NEAR - FAR) * rows).astype(np.float32)  # ground: far at the top
    # Ground texture: soft stripes across the plane, a random tint.
    tint = rng.uniform(0.35, 0.65, size=3)
    stripes = 0.08 * np.sin(2 * np.pi * (xx / width * rng.uniform(2, 5) + rng.uniform()))
    image = np.clip(tint[None, None, :] + stripes[..., None], 0, 1)
    labels = np.zeros((height, width), np.int64)
    colours = _class_colours(classes)
    scale = min(height, width)
    count = rng.integers(1, max_shapes + 1)
    shapes = []
    for _ in range(count):
        cls = int(rng.integers(1, classes))
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.1, 0.9) * width
        ground = FAR + (NEAR - FAR) * cy / max(height - 1, 1)
        z = rng.uniform(NEAR * 0.75, ground * 0.9)
        r = scale * 0.55 / z * rng.uniform(0.85, 1.15)
        shapes.append((z, cls, cy, cx, r))
    for z, cls, cy, cx, r in sorted(shapes, reverse=True):  # far to near: near ones cover
        mask = _shape_mask(_SHAPES[(cls - 1) % len(_SHAPES)], yy, xx, cy, cx, r)
        mask &= z < depth  # z-buffer: the ground nearer than the shape's foot hides it
        colour = np.clip(colours[cls] + rng.normal(0, 0.06, size=3), 0, 1)
        image[mask] = colour
        labels[mask] = cls
        depth[mask] = z
    haze = 1 - np.exp(-HAZE * depth)[..., None]
    image = image * (1 - haze) + 0.75 * haze
    image = image + rng.normal(0, 0.02, size=image.shape)  # sensor noise
    return np.clip(image, 0, 1).astype(np.float32), labels, depth.astype(np.float32)


class SyntheticDataset(torch.utils.data.Dataset):
    """The synthetic set for a model config (see the module doc).

    Parameters
    ----------
    config : ModelConfig
        Gives the image size and the tasks (every ``semseg`` task gets the
        scene's labels, needing ``classes >= 2``; every ``depth`` task its depth).
    split : str
        ``"train"`` or ``"val"``: disjoint scenes.
    size : int, optional
        Number of samples; default ``DEFAULT_SIZES[split]``.
    seed : int
        Seed of the whole set.

    Attributes
    ----------
    images : Tensor (size, 3, H, W)
        Normalised images.
    targets : dict
        Task name -> Tensor (size, H, W) long or (size, 1, H, W) float.
    """

    def __init__(self, config: ModelConfig, split: str = "train", size=None, seed: int = 0):
        if split not in SPLITS:
            raise ConfigError(f"Split must be one of {list(SPLITS)}, not {split!r}")
        if size is None:
            size = DEFAULT_SIZES[split]
        check_positive("Dataset size", size)
        if config.in_chans != 3:
            raise ConfigError(f"The synthetic set has 3 input channels, not {config.in_chans}")
        classes = [task.classes for task in config.tasks if task.kind == "semseg"]
        if any(c < 2 for c in classes):
            raise ConfigError(f"A synthetic semseg task needs at least 2 classes, not {min(classes)}")
        self.config = config
        self.split = split
        self.seed = seed
        height, width = config.image_size
        n_classes = max(classes, default=4)
        images = np.empty((size, height, width, 3), np.float32)
        labels = np.empty((size, height, width), np.int64)
        depths = np.empty((size, height, width), np.float32)
        split_id = SPLITS.index(split)
        for i in range(size):
            rng = np.random.default_rng([seed, split_id, i])
            images[i], labels[i], depths[i] = render_scene(rng, height, width, n_classes)
        image = torch.from_numpy(images).permute(0, 3, 1, 2)
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        self.images = ((image - mean) / std).contiguous()
        self.targets = {}
        for task in config.tasks:
            if task.kind == "semseg":
                # A task with fewer classes than the scene folds the extra shape classes.
                folded = np.where(labels > 0, 1 + (labels - 1) % (task.classes - 1), 0)
                self.targets[task.name] = torch.from_numpy(folded)
            else:
                self.targets[task.name] = torch.from_numpy(depths)[:, None]

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        sample = {"image": self.images[index]}
        sample.update({name: target[index] for name, target in self.targets.items()})
        return sample

    def batch(self, indices):
        """The samples at ``indices`` stacked, as a dict of tensors (fast path)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        batch = {"image": self.images[indices]}
        batch.update({name: target[indices] for name, target in self.targets.items()})
        return batch

    def __repr__(self):
        return f"<SyntheticDataset {self.split} ({len(self)} samples, seed {self.seed})>"


def stack_samples(samples) -> dict:
    """Samples (dicts of tensors with the same keys) stacked into one dict of tensors."""
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


def batch_of(dataset, indices) -> dict:
    """The samples of ``dataset`` at ``indices``, stacked: through ``dataset.batch``
    where it has one (the synthetic and real sets do), else one sample at a time."""
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)
    return stack_samples([dataset[int(index)] for index in indices])
