"""REOBench aggregates and task metrics against the worked numbers of reobench.md §6."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics.robustness import box_iou, corruption_error, mean_iou, robustness_summary, vqa_match


def test_summary_worked_example():
    out = robustness_summary(0.90, {"gaussian_noise": [0.85, 0.80, 0.75, 0.70, 0.60], "rotate": [0.9] * 5},
                             families={"appearance": ["gaussian_noise"], "geometric": ["rotate"]})  # fmt: skip
    g = out["gaussian_noise"]
    assert g["mean"] == pytest.approx(0.74) and g["abs_drop"] == pytest.approx(0.16)
    assert g["rel_drop"] == pytest.approx(17.777, abs=1e-3) and g["worst_drop"] == pytest.approx(0.30)
    assert out["family/geometric"]["rel_drop"] == pytest.approx(0.0, abs=1e-9)
    assert out["family/all"]["rel_drop"] == pytest.approx(17.777 / 2, abs=1e-3)
    with pytest.raises(ValueError, match="same number"):
        robustness_summary(0.9, {"a": [0.1, 0.2], "b": [0.1]})
    with pytest.raises(ValueError, match="unknown corruptions"):
        robustness_summary(0.9, {"a": [0.1]}, families={"x": ["b"]})


def test_corruption_error():
    assert corruption_error([0.8, 0.6], [0.6, 0.4]) == pytest.approx(0.6 / 1.0)
    assert corruption_error([0.8, 0.6], [0.6, 0.4], clean=0.9, clean_reference=0.8) == pytest.approx(0.4 / 0.6)


def test_box_iou_conventions():
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15], inclusive_pixels=True) == pytest.approx(36 / (121 + 121 - 36))
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


def test_mean_iou_two_classes():
    target = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 1], [1, 1]])
    # class 0: TP 1, FN 1 → 1/2; class 1: TP 2, FP 1 → 2/3; class 2 absent from both → excluded
    assert mean_iou(pred, target, num_classes=3) == pytest.approx((1 / 2 + 2 / 3) / 2)


@pytest.mark.parametrize(
    "truth, pred, ok",
    [("no", "not sure", False), ("2", "12", False), ("yes", "Yes.", True), ("3", "3", True),
     ("harbor", "a small harbor with boats", True), ("car", "a cart", False)],
)  # fmt: skip
def test_vqa_rules(truth, pred, ok):
    assert vqa_match(truth, pred) is ok


def test_corruption_grid_metric_cells_summary_and_ranking():
    import torch
    from torchmetrics.classification import MulticlassAccuracy

    from trainer.metrics.robustness import CorruptionGridMetric

    index = [("clean", 0), ("noise", 1), ("noise", 2), ("blur", 1), ("blur", 2)]
    m = CorruptionGridMetric(index, lambda: MulticlassAccuracy(2, average="micro"), families={"appearance": ["noise"]})
    y = torch.tensor([0, 1, 0, 1])
    hits = {0: 4, 1: 3, 2: 1, 3: 4, 4: 3}  # correct predictions per cell out of 4
    for cell, k in hits.items():
        pred = y.clone()
        pred[k:] = 1 - pred[k:]
        m.update(cell, pred[:2], y[:2])  # two batches per cell
        m.update(cell, pred[2:], y[2:])
    out = m.compute()
    assert out["cells"] == {"clean": 1.0, "noise/s1": 0.75, "noise/s2": 0.25, "blur/s1": 1.0, "blur/s2": 0.75}
    assert out["summary"]["noise"]["rel_drop"] == pytest.approx(50.0)
    assert out["summary"]["blur"]["abs_drop"] == pytest.approx(0.125)
    assert out["summary"]["family/appearance"]["mean"] == pytest.approx(0.5)
    assert out["ranking"] == ["noise", "blur"]
    m.reset()
    assert m.compute()["cells"] == {}
    with pytest.raises(ValueError, match="clean"):
        CorruptionGridMetric([("noise", 1)], lambda: MulticlassAccuracy(2))
