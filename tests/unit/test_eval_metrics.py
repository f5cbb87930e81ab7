"""Relative score and grouped accuracy on hand-made numbers."""

import math

import pytest
import torch

from llava_lite.evaluation.metrics import GroupedAccuracy, GroupedRelativeScore, RelativeScore


def test_relative_score_is_ratio_of_means():
    metric = RelativeScore()
    metric.update(torch.tensor([8.0, 6.0]), torch.tensor([4.0, 3.0]))
    metric.update(10.0, 8.0)
    out = metric.compute()
    assert out["reference_mean"].item() == pytest.approx(8.0)
    assert out["model_mean"].item() == pytest.approx(5.0)
    assert out["relative"].item() == pytest.approx(62.5)
    assert int(out["count"]) == 3


def test_relative_score_shape_mismatch_and_empty():
    metric = RelativeScore()
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0]))
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(RelativeScore().compute()["relative"].item())


def test_grouped_relative_score_by_category_and_overall():
    metric = GroupedRelativeScore()
    for ref, mod, cat in [(8, 8, "conversation"), (8, 4, "detail"), (6, 3, "detail"), (10, 5, "complex")]:
        metric.update(ref, mod, [cat])
    out = metric.compute()
    assert list(out) == ["complex", "conversation", "detail", "all"]
    assert out["conversation"]["relative"] == pytest.approx(100.0)
    assert out["detail"]["relative"] == pytest.approx(100 * 3.5 / 7)
    assert out["detail"]["count"] == 2
    assert out["all"]["relative"] == pytest.approx(100 * 20 / 32)
    assert out["all"]["model_mean"] == pytest.approx(5.0)


def test_grouped_accuracy_counts_each_group():
    metric = GroupedAccuracy()
    metric.update(True, ["NAT", "IMG"])
    metric.update(False, ["NAT", "TXT"])
    metric.update(True, ["SOC", "TXT"])
    metric.update(True, ["SOC"])
    out = metric.compute()
    assert out["all"] == {"accuracy": 75.0, "correct": 3, "count": 4}
    assert out["NAT"] == {"accuracy": 50.0, "correct": 1, "count": 2}
    assert out["TXT"]["accuracy"] == 50.0 and out["SOC"]["accuracy"] == 100.0
    assert list(out)[-1] == "all"
