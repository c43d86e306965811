"""Evaluation of a model on a dataset: per-task metrics and a picture of predictions."""

import math
from pathlib import Path

import torch

from moevit.errors import check_finite
from moevit.model.data import batch_of
from moevit.model.datasets import DatasetError
from moevit.model.metrics import IGNORE, TaskMetrics

__all__ = ["evaluate", "predict", "save_prediction_png", "check_metrics_defined"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moevit.model.data import MEAN, STD

    config = model.config
    count = min(count, len(dataset))
    batch = next(_batches(dataset, count))
    mean = torch.tensor(mean or MEAN).view(3, 1, 1)
    std = torch.tensor(std or STD).view(3, 1, 1)
    columns = 1 + 2 * len(config.tasks)
    figure, axes = plt.subplots(count, columns, figsize=(2.2 * columns, 2.2 * count), squeeze=False)
    predictions = {task.name: predict(model, batch["image"], task.name) for task in config.tasks}
    for row in range(count):
        image = (batch["image"][row] * std + mean).clamp(0, 1).permute(1, 2, 0)
        axes[row, 0].imshow(image.numpy())
        axes[row, 0].set_title("image" if row == 0 else "")
        for t, task in enumerate(config.tasks):
            truth = batch[task.name][row]
            pred = predictions[task.name][row]
            if task.kind == "semseg":
                truth = truth.float().masked_fill(truth == IGNORE, float("nan"))
                pred = pred.argmax(0).float()
                style = {"cmap": "tab20", "vmin": 0, "vmax": max(task.classes - 1, 1), "interpolation": "nearest"}
            else:
                truth, pred = truth[0], pred[0]
                valid = truth[truth > 0]
                low, high = (float(valid.min()), float(valid.max())) if valid.numel() else (0, 1)
                truth = truth.masked_fill(truth <= 0, float("nan"))
                style = {"cmap": "viridis_r", "vmin": low, "vmax": high}
            for offset, (label, value) in enumerate(((" truth", truth), (" prediction", pred))):
                axis = axes[row, 1 + 2 * t + offset]
                axis.imshow(value.numpy(), **style)
                axis.set_title(task.name + label if row == 0 else "")
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
