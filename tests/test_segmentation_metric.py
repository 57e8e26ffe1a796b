"""SegmentationMIoU (reobench.md §3, §6 "mIoU on a 2-class hand mask"): hand values, agreement with mean_iou,
batching / merge invariance, ignore_index, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.metrics.robustness import mean_iou
from trainer.metrics.segmentation import SegmentationMIoU, miou_from_confusion, segmentation_confusion


def test_two_class_hand_mask():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    # class 0: TP 3, FP 1 (pred 0 at a 1), FN 1 → 3/5; class 1: TP 3, FP 1, FN 1 → 3/5
    m = SegmentationMIoU(2)
    m.update(pred, target)
    assert float(m.compute()) == pytest.approx(0.6)
    assert segmentation_confusion(pred, target, 2).tolist() == [[3, 1], [1, 3]]


def test_absent_classes_are_excluded():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 0])
    # class 2 is absent from both and left out; class 0: 2/3, class 1: 1/2
    assert float(miou_from_confusion(segmentation_confusion(pred, target, 3))) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # a class only predicted counts (IoU 0)
    assert float(miou_from_confusion(segmentation_confusion(torch.tensor([2, 2]), torch.tensor([0, 0]), 3))) == 0.0
    assert math.isnan(float(miou_from_confusion(torch.zeros(3, 3))))


def test_equals_mean_iou_and_is_batching_invariant():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(6, 9, 9))
    pred = np.where(rng.random((6, 9, 9)) < 0.6, target, rng.integers(0, 5, size=(6, 9, 9)))
    pred[pred == 4] = 3  # class 4 never predicted
    whole, split = SegmentationMIoU(6), SegmentationMIoU(6)
    whole.update(torch.as_tensor(pred), torch.as_tensor(target))
    for i in range(6):  # one image at a time, as logits
        logits = torch.nn.functional.one_hot(torch.as_tensor(pred[i : i + 1]), 6).permute(0, 3, 1, 2).float()
        split.update(logits, torch.as_tensor(target[i : i + 1]))
    ref = mean_iou(pred, target, 6)
    assert float(whole.compute()) == pytest.approx(ref) and float(split.compute()) == pytest.approx(ref)
    # merging two halves (what DDP's sum reduction does) gives the whole
    a, b = SegmentationMIoU(6), SegmentationMIoU(6)
    a.update(torch.as_tensor(pred[:3]), torch.as_tensor(target[:3]))
    b.update(torch.as_tensor(pred[3:]), torch.as_tensor(target[3:]))
    a.merge_state(b)
    assert torch.equal(a.confmat, whole.confmat)


def test_ignore_index():
    target = torch.tensor([0, 1, 255, 255])
    pred = torch.tensor([0, 1, 0, 1])
    m = SegmentationMIoU(2, ignore_index=255)
    m.update(pred, target)
    assert float(m.compute()) == 1.0
    with pytest.raises(ValueError, match="labels must lie"):
        SegmentationMIoU(2).update(pred, target)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        segmentation_confusion(torch.zeros(2, 3), torch.zeros(3, 2), 2)
    with pytest.raises(ValueError, match="classes"):
        SegmentationMIoU(3).update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMIoU(0)
