"""Semantic-segmentation mIoU aggregated over data (reobench.md §3 "Task metrics", semantic segmentation).

:class:`SegmentationMIoU` accumulates a ``num_classes`` × ``num_classes`` confusion matrix (rows: ground truth,
columns: prediction) as a sum-reduced state, so it is exact under DDP and over any batching; ``compute()`` is

    mIoU = mean over classes c of TP_c / (TP_c + FP_c + FN_c)                                  (reobench.md §3)

taken over the classes present in the ground truth or the prediction (a class absent from both has
TP + FP + FN = 0 and is left out), which equals :func:`trainer.metrics.robustness.mean_iou` on the same pixels.
Pixels whose target is ``ignore_index`` are dropped before counting.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["SegmentationMIoU", "miou_from_confusion", "segmentation_confusion"]


def segmentation_confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """The ``[C, C]`` int64 confusion matrix of label maps ``pred`` and ``target`` (same shape; rows = target)."""
    if pred.shape != target.shape:
        raise ValueError(f"segmentation_confusion: prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}")
    p, t = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if p.numel() and (min(int(p.min()), int(t.min())) < 0 or max(int(p.max()), int(t.max())) >= num_classes):
        raise ValueError(f"segmentation_confusion: labels must lie in [0, {num_classes}) (or be ignore_index)")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def miou_from_confusion(confmat: Tensor) -> Tensor:
    """mIoU of a confusion matrix over the classes with TP + FP + FN > 0 (reobench.md §3); NaN when there are none."""
    cm = confmat.double()
    tp = cm.diagonal()
    denom = cm.sum(0) + cm.sum(1) - tp  # TP + FP + FN
    present = denom > 0
    if not bool(present.any()):
        return torch.tensor(float("nan"), dtype=torch.float64)
    return (tp[present] / denom[present]).mean()


class SegmentationMIoU(Metric):
    """Mean intersection over union of semantic label maps (reobench.md §3), DDP-correct.

    Args:
        num_classes: number of classes C; labels lie in ``0..C-1``.
        ignore_index: target value whose pixels are not counted (None = count every pixel).

    ``update(preds, target)`` takes ``target`` ``[B, H, W]`` (any shape) and ``preds`` either label maps of the
    same shape or logits ``[B, C, H, W]`` (argmax over dim 1).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"SegmentationMIoU: num_classes must be ≥ 1, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.add_state("confmat", default=torch.zeros(self.num_classes, self.num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")  # fmt: skip

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.dim() == target.dim() + 1:
            if preds.shape[1] != self.num_classes:
                raise ValueError(f"SegmentationMIoU: logits have {preds.shape[1]} classes, expected {self.num_classes}")
            preds = preds.argmax(1)
        self.confmat += segmentation_confusion(preds, target, self.num_classes, self.ignore_index).to(self.confmat)

    def compute(self) -> Tensor:
        return miou_from_confusion(self.confmat).float()
