import math

import pytest
import torch

from moevit.model.config import get_config
from moevit.model.metrics import DepthMeter, SegmentationMeter, TaskMetrics, chance_metrics


def test_miou_by_hand():
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    prediction = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    meter = SegmentationMeter(4)
    meter.update(prediction, labels)
    # class 0: TP 1, FP 1 (pixel 5), FN 1 (pixel 1) -> 1/3; class 1: TP 2, FP 1 -> 2/3;
    # class 2: TP 1, FN 1 -> 1/2; class 3 absent from labels and predictions.
    result = meter.result()
    assert result["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert result["pixel_acc"] == pytest.approx(4 / 6)


def test_miou_from_logits_equals_from_classes():
    logits = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (2, 5, 5), generator=torch.Generator().manual_seed(1))
    a, b = SegmentationMeter(3), SegmentationMeter(3)
    a.update(logits, labels)
    b.update(logits.argmax(1), labels)
    assert a.result() == b.result()


def test_depth_rmse_skips_invalid_pixels():
    meter = DepthMeter()
    target = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])
    prediction = torch.tensor([[[[2.0, 2.0], [9.0, 1.0]]]])
    meter.update(prediction, target)
    assert meter.result()["rmse"] == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    assert math.isnan(DepthMeter().result()["rmse"])


def test_chance_levels_are_the_best_constants():
    config = get_config("tiny")
    train = {"semseg": torch.tensor([[[0, 0, 0, 1]]]), "depth": torch.tensor([[[[2.0, 4.0]]]])}
    val = {"semseg": torch.tensor([[[0, 1, 1, 1]]]), "depth": torch.tensor([[[[1.0, 5.0]]]])}
    chance = chance_metrics(config, train, val)
    assert chance["semseg"]["constant"] == 0 and chance["semseg"]["miou"] == pytest.approx(0.25 / 2)
    assert chance["depth"]["constant"] == 3.0 and chance["depth"]["rmse"] == pytest.approx(2.0)
    metrics = TaskMetrics(config)
    assert set(metrics.results()) == {"semseg", "depth"}
