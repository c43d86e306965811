"""Per-task metrics: mIoU for ``semseg``, RMSE for ``depth``, and their chance levels.

Conventions (as M³ViT's evaluation, inherited from Multi-Task-Learning-PyTorch):

- ``semseg``: a confusion matrix over the pixels whose label is not
  :data:`IGNORE` (255); IoU of a class = TP / (TP + FP + FN); mIoU = the mean
  over the classes that occur in the labels or the predictions (a class absent
  from both has no IoU). Pixel accuracy is reported beside it.
- ``depth``: RMSE in the target's unit (metres) over the valid pixels
  (target > 0).

The chance levels (:func:`chance_metrics`) are the best constant predictions
learnt from the training targets: the most frequent class everywhere, and the
mean depth everywhere. A model that learnt something beats both clearly.
"""

import torch

from moevit.model.config import ModelConfig

__all__ = ["IGNORE", "SegmentationMeter", "DepthMeter", "TaskMetrics", "chance_metrics"]

IGNORE = 255


class SegmentationMeter:
    """Accumulates a confusion matrix; ``result()`` gives mIoU and pixel accuracy."""

    def __init__(self, classes: int):
        self.classes = classes
        self.confusion = torch.zeros(classes, classes, dtype=torch.int64)  # [label, prediction]

    def update(self, prediction, labels):
        """``prediction``: logits (B, C, H, W) or class map (B, H, W); ``labels`` (B, H, W)."""
        if prediction.dim() == 4:
            prediction = prediction.argmax(1)
        valid = labels != IGNORE
        index = labels[valid].long() * self.classes + prediction[valid].long()
        self.confusion += torch.bincount(index, minlength=self.classes**2).reshape(
            self.classes, self.classes
        )

    def result(self) -> dict:
        confusion = self.confusion.double()
        tp = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - tp
        present = union > 0
        iou = tp[present] / union[present]
        total = confusion.sum()
        return {
            "miou": float(iou.mean()) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        }


class DepthMeter:
    """Accumulates squared errors over valid pixels; ``result()`` gives the RMSE."""

    def __init__(self):
        self.squared = 0.0
        self.count = 0

    def update(self, prediction, target):
        """``prediction`` and ``target`` (B, 1, H, W); pixels with target <= 0 are not counted."""
        valid = target > 0
        self.squared += float(((prediction.float() - target.float())[valid] ** 2).sum())
        self.count += int(valid.sum())

    def result(self) -> dict:
        rmse = (self.squared / self.count) ** 0.5 if self.count else float("nan")
        return {"rmse": rmse}


class TaskMetrics:
    """One meter per task of a config.

    Examples
    --------
    >>> metrics = TaskMetrics(config)
    >>> metrics.update("semseg", logits, batch["semseg"])
    >>> metrics.results()  # {"semseg": {"miou": ..., "pixel_acc": ...}, "depth": {...}}
    """

    def __init__(self, config: ModelConfig):
        self.config = config
        self.meters = {
            task.name: SegmentationMeter(task.classes) if task.kind == "semseg" else DepthMeter()
            for task in config.tasks
        }

    def update(self, task: str, prediction, target):
        self.meters[task].update(prediction.detach(), target)

    def results(self) -> dict:
        return {name: meter.result() for name, meter in self.meters.items()}


def chance_metrics(config: ModelConfig, train_targets: dict, val_targets: dict) -> dict:
    """Metrics of the best constant prediction, learnt on ``train_targets``.

    Parameters
    ----------
    config : ModelConfig
    train_targets, val_targets : dict
        Task name -> stacked targets ((N, H, W) labels or (N, 1, H, W) depth).

    Returns
    -------
    dict
        As :meth:`TaskMetrics.results`, plus per task ``"constant"``: the
        predicted class or depth.
    """
    metrics = TaskMetrics(config)
    constants = {}
    for task in config.tasks:
        train, val = train_targets[task.name], val_targets[task.name]
        if task.kind == "semseg":
            counts = torch.bincount(train[train != IGNORE].flatten(), minlength=task.classes)
            constant = int(counts.argmax())
            metrics.update(task.name, torch.full_like(val, constant), val)
        else:
            constant = float(train[train > 0].float().mean())
            metrics.update(task.name, torch.full_like(val, constant, dtype=torch.float32), val)
        constants[task.name] = constant
    results = metrics.results()
    for name, constant in constants.items():
        results[name]["constant"] = constant
    return results
