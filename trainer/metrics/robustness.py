"""Robustness aggregates and task metrics of REOBench (reobench.md §3 "Metrics", §4.4–4.5, §6).

Pure functions (numpy / torch), no Lightning:

- :func:`robustness_summary`: from the clean metric M₀ and the per-severity metrics M_{c,s} of each corruption,
  M̄_c = (1/5) Σ_s M_{c,s}, the absolute drop Δ_c = M₀ − M̄_c, the relative drop ρ_c = 100 (M₀ − M̄_c)/M₀, the
  worst-case drop M₀ − M_{c,5}, and the family means (appearance, geometric, all) of each; the public material
  does not say whether the paper's "drop" is absolute or relative, so both are returned (relative is the headline).
- :func:`corruption_error`: CE_c = Σ_s (1 − M_{c,s}) / Σ_s (1 − M^ref_{c,s}), and its relative form subtracting
  the clean errors (mCE against a reference model, optional).
- :func:`box_iou`: IoU of axis-aligned boxes with continuous areas (default), or the inclusive-pixel convention
  (x₂ − x₁ + 1)(y₂ − y₁ + 1) of the authors' helper as an option (reobench.md §4.5).
- :func:`mean_iou`: mIoU = mean over classes of TP / (TP + FP + FN), excluding classes absent from both the ground
  truth and the prediction.
- :class:`CorruptionGridMetric`: a ``torchmetrics.Metric`` holding one task metric per loader of a corruption grid
  (clean, then (c, s) cells); ``compute()`` gives every cell, the aggregates above and the ranking of corruption
  types by relative drop. The cells aggregate over data (each child syncs under DDP); the aggregates are functions
  of the synced cells.
- :func:`vqa_match`: exact match for yes/no and numbers first, then word-boundary containment (reobench.md §4.4:
  the authors' substring-first order lets "no" match "not sure" and "2" match "12").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

__all__ = ["CorruptionGridMetric", "box_iou", "corruption_error", "mean_iou", "robustness_summary", "vqa_match"]


def robustness_summary(
    clean: float, per_severity: Mapping[str, Sequence[float]], families: Mapping[str, Sequence[str]] | None = None
) -> dict[str, dict[str, float]]:
    """Aggregates per corruption and per family (reobench.md §3 "Metrics").

    Args:
        clean: M₀, the clean metric (higher is better).
        per_severity: corruption name → its metrics at severities 1..S (S ≥ 1, the same S for all).
        families: family name → corruption names (e.g. appearance / geometric); ``all`` is always added.

    Returns:
        ``{"<corruption>": {"mean", "abs_drop", "rel_drop", "worst_drop"}, "family/<name>": {same keys, means}}``.
    """
    if not per_severity:
        raise ValueError("robustness_summary: no corruptions given")
    if not np.isfinite(clean) or clean == 0:
        raise ValueError(f"robustness_summary: the clean metric must be finite and non-zero, got {clean}")
    lengths = {len(v) for v in per_severity.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"robustness_summary: every corruption needs the same number (≥ 1) of severities, got {sorted(lengths)}")
    out: dict[str, dict[str, float]] = {}
    for name, values in per_severity.items():
        m = np.asarray(values, dtype=np.float64)
        mean = float(m.mean())
        out[name] = {
            "mean": mean,
            "abs_drop": float(clean - mean),
            "rel_drop": float(100.0 * (clean - mean) / clean),
            "worst_drop": float(clean - m[-1]),
        }
    groups = dict(families or {})
    groups["all"] = list(per_severity)
    for fam, names in groups.items():
        unknown = [n for n in names if n not in per_severity]
        if unknown:
            raise ValueError(f"robustness_summary: family {fam!r} names unknown corruptions {unknown}")
        if names:
            out[f"family/{fam}"] = {k: float(np.mean([out[n][k] for n in names])) for k in ("mean", "abs_drop", "rel_drop", "worst_drop")}
    return out


def corruption_error(
    per_severity: Sequence[float], reference: Sequence[float], clean: float | None = None, clean_reference: float | None = None
) -> float:
    """CE_c = Σ_s (1 − M_{c,s}) / Σ_s (1 − M^ref_{c,s}); with both clean metrics, the relative CE
    Σ_s (M₀ − M_{c,s}) / Σ_s (M₀^ref − M^ref_{c,s}) (reobench.md §3, optional mCE)."""
    m, r = np.asarray(per_severity, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if m.shape != r.shape or m.size == 0:
        raise ValueError(f"corruption_error: {m.size} severities against {r.size} of the reference")
    if clean is not None and clean_reference is not None:
        num, den = float((clean - m).sum()), float((clean_reference - r).sum())
    else:
        num, den = float((1 - m).sum()), float((1 - r).sum())
    if den == 0:
        raise ValueError("corruption_error: the reference has zero error; the ratio is undefined")
    return num / den


def box_iou(a: Sequence[float], b: Sequence[float], inclusive_pixels: bool = False) -> float:
    """IoU of two boxes ``(x1, y1, x2, y2)``; continuous areas by default (reobench.md §4.5)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != (4,) or b.shape != (4,):
        raise ValueError("box_iou: boxes must be (x1, y1, x2, y2)")
    one = 1.0 if inclusive_pixels else 0.0

    def area(x: np.ndarray) -> float:
        return max(0.0, x[2] - x[0] + one) * max(0.0, x[3] - x[1] + one)

    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + one) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + one)
    union = area(a) + area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """mIoU over classes present in the ground truth or the prediction (reobench.md §3)."""
    p, t = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if p.shape != t.shape:
        raise ValueError(f"mean_iou: prediction has {p.size} pixels, target {t.size}")
    ious = []
    for c in range(int(num_classes)):
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return float(np.mean(ious)) if ious else float("nan")


_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def _norm(text: str) -> str:
    return re.sub(r"[^\w\s.+-]", "", str(text).strip().lower()).strip(" .")


def vqa_match(truth: str, prediction: str) -> bool:
    """The rule chain of reobench.md §4.4: exact match for yes/no and numbers, else word-boundary containment.

    A judge (an LLM) may follow for the cases this returns ``False``; that step is not here.
    """
    t, p = _norm(truth), _norm(prediction)
    if t in ("yes", "no") or _NUMBER.match(t):
        return p == t
    return bool(t) and re.search(r"\b" + re.escape(t) + r"\b", p) is not None


def cell_name(corruption: str, severity: int) -> str:
    """The loader name of a grid cell: ``"clean"`` or ``"<corruption>/s<severity>"`` (HasCorruptionResults)."""
    return "clean" if corruption == "clean" else f"{corruption}/s{int(severity)}"


class CorruptionGridMetric(Metric):
    """One task metric per loader of a corruption grid, and the robustness aggregates over them (reobench.md §3).

    Args:
        grid_index: the loaders in order, ``("clean", 0)`` first, then ``(corruption, severity)``.
        make_metric: builds one task metric (higher is better), e.g. ``lambda: MulticlassAccuracy(6, average="micro")``.
        families: family → corruption names for the family means (None: none besides ``all``).

    ``update(cell, *args)`` updates the metric of loader ``cell`` (an index into ``grid_index``). ``compute()``
    returns ``{"cells": {name: value}, "summary": robustness_summary(...), "ranking": [corruptions, largest relative
    drop first]}``; the summary and ranking are empty when the grid has no corrupted cell.
    """

    full_state_update = False

    def __init__(
        self,
        grid_index: Sequence[tuple[str, int]],
        make_metric: Callable[[], Metric],
        families: Mapping[str, Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        index = [(str(c), int(s)) for c, s in grid_index]
        if not index or index[0][0] != "clean":
            raise ValueError(f"CorruptionGridMetric: grid_index must start with ('clean', 0), got {index[:1]}")
        self.grid_index = index
        self.names = [cell_name(c, s) for c, s in index]
        self.cells = torch.nn.ModuleList(make_metric() for _ in index)
        self.families = {f: list(v) for f, v in (families or {}).items()}

    def update(self, cell: int, *args: Any, **kwargs: Any) -> None:
        self.cells[int(cell)].update(*args, **kwargs)

    def compute(self) -> dict[str, Any]:
        values = {n: float(m.compute()) for n, m in zip(self.names, self.cells) if m.update_called}
        table: dict[str, dict[int, float]] = {}
        for (c, s), n in zip(self.grid_index, self.names):
            if c != "clean" and n in values:
                table.setdefault(c, {})[s] = values[n]
        if "clean" not in values or not table:
            return {"cells": values, "summary": {}, "ranking": []}
        per_sev = {c: [v[s] for s in sorted(v)] for c, v in table.items()}
        fams = {f: [c for c in cs if c in per_sev] for f, cs in self.families.items() if f != "all"}
        summary = robustness_summary(values["clean"], per_sev, fams)
        ranking = sorted(per_sev, key=lambda c: -summary[c]["rel_drop"])
        return {"cells": values, "summary": summary, "ranking": ranking}

    def reset(self) -> None:
        super().reset()
        for m in self.cells:
            m.reset()
