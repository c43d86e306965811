"""Evaluation of a model on a dataset: per-task metrics and a picture of predictions."""

import math
from pathlib import Path

import numpy as np
import torch

from moevit.errors import check_finite
from moevit.model.data import batch_of
from moevit.model.datasets import DatasetError
from moevit.model.metrics import IGNORE, TaskMetrics

__all__ = ["evaluate", "predict", "save_prediction_png", "prediction_figure", "check_metrics_defined"]


@torch.no_grad()
def predict(model, images, task):
    """Eval-mode prediction of ``task`` for a batch of images (no gradients)."""
    check_finite("Images", images)
    was_training = model.training
    model.eval()
    try:
        return model(images.to(model.pos_embed.dtype), task).float()
    finally:
        model.train(was_training)


def _batches(dataset, batch_size):
    for start in range(0, len(dataset), batch_size):
        yield batch_of(dataset, list(range(start, min(start + batch_size, len(dataset)))))


def evaluate(model, dataset, *, batch_size=64, tasks=None, progress=False) -> dict:
    """Metrics of every task (or of ``tasks``) over the whole dataset.

    Returns
    -------
    dict
        Task name -> ``{"miou", "pixel_acc"}`` or ``{"rmse"}`` (see :mod:`moevit.model.metrics`).
    """
    from tqdm import tqdm

    config = model.config
    names = list(tasks or config.task_names)
    for name in names:
        config.task_index(name)  # a clear error for an unknown task
    metrics = TaskMetrics(config)
    total = (len(dataset) + batch_size - 1) // batch_size
    for batch in tqdm(_batches(dataset, batch_size), total=total, desc="eval", disable=not progress):
        for name in names:
            metrics.update(name, predict(model, batch["image"], name), batch[name])
    results = metrics.results()
    results = {name: results[name] for name in names}
    check_metrics_defined(results, config, dataset)
    return results


def check_metrics_defined(results, config, dataset):
    """A clear error where a task's metric is undefined: no pixel to score it on."""
    for name, values in results.items():
        if any(math.isnan(value) for value in values.values()):
            task = config.tasks[config.task_index(name)]
            why = f"every label is {IGNORE} (ignore)" if task.kind == "semseg" else "every depth is 0 (invalid)"
            raise DatasetError(
                f"Task {name!r} has no valid pixel in the {len(dataset)} samples of {dataset!r} "
                f"({why}): its metrics are undefined"
            )


def save_prediction_png(model, dataset, path, *, count=4, mean=None, std=None) -> Path:
    """A PNG with, per row, one sample: the image, then for each task the ground
    truth beside the prediction.

    ``mean`` and ``std`` undo the image normalisation (default: the synthetic
    set's ImageNet statistics).
    """
    config = model.config
    count = min(count, len(dataset))
    batch = next(_batches(dataset, count))
    predictions = {task.name: predict(model, batch["image"], task.name) for task in config.tasks}
    truths = {task.name: batch[task.name] for task in config.tasks}
    return prediction_figure(config, batch["image"], predictions, path, truths=truths,
                             mean=mean, std=std)


def prediction_figure(config, images, predictions, path, *, truths=None, mean=None,
                      std=None) -> Path:
    """The PNG of :func:`save_prediction_png` from given predictions: per row, the image,
    then for each task in ``predictions`` its ground truth (when ``truths`` has it) and
    the prediction.

    ``images``: (N, C, H, W) normalised; ``predictions`` and ``truths``: task name ->
    (N, classes, H, W) scores or depth, and (N, H, W) labels or (N, 1, H, W) depth
    (tensors or arrays; any device backend's maps, the golden model's included).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moevit.model.data import MEAN, STD

    images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    truths = truths or {}
    count = len(images)
    mean = torch.tensor(mean or MEAN).view(3, 1, 1)
    std = torch.tensor(std or STD).view(3, 1, 1)
    tasks = [config.tasks[config.task_index(name)] for name in predictions]
    columns = 1 + sum(2 if task.name in truths else 1 for task in tasks)
    figure, axes = plt.subplots(count, columns, figsize=(2.2 * columns, 2.2 * count), squeeze=False)
    for row in range(count):
        image = (images[row].float() * std + mean).clamp(0, 1).permute(1, 2, 0)
        axes[row, 0].imshow(image.numpy())
        axes[row, 0].set_title("image" if row == 0 else "")
        column = 1
        for task in tasks:
            truth = truths.get(task.name)
            truth = None if truth is None else torch.as_tensor(np.asarray(truth[row]))
            pred = torch.as_tensor(np.asarray(predictions[task.name][row], np.float32))
            if task.kind == "semseg":
                if truth is not None:
                    truth = truth.float().masked_fill(truth == IGNORE, float("nan"))
                pred = pred.argmax(0).float()
                style = {"cmap": "tab20", "vmin": 0, "vmax": max(task.classes - 1, 1), "interpolation": "nearest"}
            else:
                pred = pred[0]
                if truth is not None:
                    truth = truth[0]
                    valid = truth[truth > 0]
                    truth = truth.masked_fill(truth <= 0, float("nan"))
                else:
                    valid = pred
                low, high = (float(valid.min()), float(valid.max())) if valid.numel() else (0, 1)
                style = {"cmap": "viridis_r", "vmin": low, "vmax": high}
            shown = (((" truth", truth),) if truth is not None else ()) + ((" prediction", pred),)
            for label, value in shown:
                axis = axes[row, column]
                axis.imshow(value.numpy(), **style)
                axis.set_title(task.name + label if row == 0 else "")
                column += 1
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
