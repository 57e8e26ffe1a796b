"""Data-stream metrics: prequential accuracy, the κ family, C-F1 and drift-detection statistics.

FiCSUM (Halstead et al., *Fingerprinting Concepts in Data Streams with Supervised and Unsupervised
Meta-Information*, ICDE 2021, arXiv 2603.11094) and any other concept-drift run report these
(ficsum.md §3, "Metrics"). The formulas are small numpy functions with exact hand-checked values
(``tests/test_stream_metrics.py``); the ``torchmetrics.Metric`` classes below accumulate a stream
over ``update()`` calls and hand the accumulated data to those functions in ``compute()``.

Two defects of the authors' code are avoided (ficsum.md §4): the expected agreement p_e of
Cohen's κ uses the real predictions (defect 1: their log writes the label into the prediction
column, so p_e used the label marginal twice) and runs over the *union* of label and prediction
classes, each marginal divided by the full stream length (defect 2).

Degenerate denominators. Every κ is ``(score - baseline) / (1 - baseline)``
(:func:`chance_corrected`). When the baseline is perfect (``baseline == 1``) the ratio is
undefined; we return ``1.0`` if the score is perfect too and ``0.0`` otherwise (no better than the
baseline). For Cohen's κ, p_e = 1 forces p_o = 1, so that case is always ``1.0``. An empty stream
gives ``nan``.

Distributed runs. A stream is not sharded: every rank sees the same stream (ficsum.md §2). Summed
states of identical streams are the single-rank states times the world size, which leaves every
ratio unchanged; concatenated states repeat the same stream, which scales every count of the
contingency table uniformly (C-F1 unchanged) and duplicates the drift and detection indices
(removed with ``np.unique``). The few "carry" states (the previous label, the last valid ids, the
stream position) are identical on every rank and are reduced with ``max``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "ConceptF1",
    "DriftDetections",
    "PrequentialAccuracy",
    "StreamKappa",
    "chance_corrected",
    "cohen_kappa",
    "concept_contingency",
    "concept_f1",
    "detection_stats",
    "drift_window_accuracy",
    "forward_fill",
    "kappa_from_confusion",
    "kappa_m",
    "kappa_m_from_confusion",
    "kappa_t",
    "kappa_t_from_counts",
    "label_confusion",
    "model_f1",
]


# ----------------------------------------------------------------------------------------------
# Pure functions (numpy, exact)
# ----------------------------------------------------------------------------------------------


def _as_1d(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _pair(y: Any, y_hat: Any) -> tuple[np.ndarray, np.ndarray]:
    y, y_hat = _as_1d(y, "y"), _as_1d(y_hat, "y_hat")
    if y.shape != y_hat.shape:
        raise ValueError(f"y and y_hat differ in length: {y.shape[0]} vs {y_hat.shape[0]}")
    return y, y_hat


def chance_corrected(score: float, baseline: float) -> float:
    """``(score - baseline) / (1 - baseline)``, the common form of κ, κ_m and κ_t.

    When ``baseline == 1`` the ratio is undefined: returns ``1.0`` if ``score == 1`` (both perfect)
    and ``0.0`` otherwise. ``nan`` inputs give ``nan``.
    """
    if math.isnan(score) or math.isnan(baseline):
        return math.nan
    if baseline >= 1.0:
        return 1.0 if score >= 1.0 else 0.0
    return float((score - baseline) / (1.0 - baseline))  # ficsum.md §3


def label_confusion(y: Any, y_hat: Any) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix over the union of label and prediction classes.

    Args:
        y: true labels, 1-D.
        y_hat: predictions, 1-D, same length.

    Returns:
        ``(classes, counts)``: the sorted union of classes and the ``[K, K]`` int64 matrix with
        ``counts[i, j] = |{t: y_t = classes[i], ŷ_t = classes[j]}|``.
    """
    y, y_hat = _pair(y, y_hat)
    # ficsum.md §3 (and §4, defect 2): classes are the union of labels and predictions
    classes, inverse = np.unique(np.concatenate([y, y_hat]), return_inverse=True)
    k, n = len(classes), len(y)
    flat = inverse[:n] * k + inverse[n:]
    counts = np.bincount(flat, minlength=k * k).reshape(k, k).astype(np.int64)
    return classes, counts


def kappa_from_confusion(confusion: Any) -> float:
    """Cohen's κ from a square confusion matrix (rows: labels, columns: predictions).

    p_o = trace / n; p_e = Σ_c (row_c / n)(col_c / n). The row marginal comes from the labels and the
    column marginal from the predictions, both divided by the full count n. ``nan`` if n = 0.
    """
    c = np.asarray(confusion, dtype=np.float64)
    n = c.sum()
    if n == 0:
        return math.nan
    p_o = np.trace(c) / n  # ficsum.md §3: observed agreement
    p_e = float(c.sum(axis=1) @ c.sum(axis=0)) / (n * n)  # ficsum.md §3 (§4, defects 1, 2): Σ_c P(y=c) P(ŷ=c)
    return chance_corrected(float(p_o), p_e)


def kappa_m_from_confusion(confusion: Any) -> float:
    """κ_m from a square confusion matrix: accuracy against the majority-label share.

    acc_maj = max_c row_c / n, the share of the most frequent label. ``nan`` if n = 0.
    """
    c = np.asarray(confusion, dtype=np.float64)
    n = c.sum()
    if n == 0:
        return math.nan
    acc = np.trace(c) / n
    acc_maj = c.sum(axis=1).max() / n  # ficsum.md §3: share of the most frequent label
    return chance_corrected(float(acc), float(acc_maj))


def kappa_t_from_counts(n_correct: float, n_same_as_previous: float, n: float) -> float:
    """κ_t from counts: acc = n_correct / n, acc_nc = n_same_as_previous / n. ``nan`` if n = 0.

    ``n_same_as_previous`` is ``|{t: y_t = y_{t-1}}|`` with ``y_{-1} := 0`` (the no-change
    classifier's hits).
    """
    if n == 0:
        return math.nan
    acc = n_correct / n
    acc_nc = n_same_as_previous / n  # ficsum.md §3: mean 1[y_t = y_{t-1}]
    return chance_corrected(float(acc), float(acc_nc))


def cohen_kappa(y: Any, y_hat: Any) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e), p_e over the union of label and prediction classes.

    p_e = Σ_c P(y=c)·P(ŷ=c) with P(ŷ=c) from the real predictions (ficsum.md §4, defects 1 and 2).
    If p_e = 1 (labels and predictions are one and the same class) κ is ``1.0``; an empty stream
    gives ``nan``.
    """
    return kappa_from_confusion(label_confusion(y, y_hat)[1])


def kappa_m(y: Any, y_hat: Any) -> float:
    """κ_m = (acc − acc_maj) / (1 − acc_maj), acc_maj = the share of the most frequent label.

    If all labels are one class (acc_maj = 1): ``1.0`` for a perfect classifier, else ``0.0``.
    """
    return kappa_m_from_confusion(label_confusion(y, y_hat)[1])


def kappa_t(y: Any, y_hat: Any) -> float:
    """κ_t = (acc − acc_nc) / (1 − acc_nc), acc_nc = mean 1[y_t = y_{t−1}] with y_{−1} := 0.

    acc_nc is the accuracy of the no-change classifier (predict the previous label). Labels are
    numeric (y_{−1} is the number 0). If acc_nc = 1: ``1.0`` for a perfect classifier, else ``0.0``.
    """
    y, y_hat = _pair(y, y_hat)
    previous = np.concatenate([np.zeros(1, dtype=y.dtype), y])[: y.size]  # ficsum.md §3: y_{-1} := 0
    return kappa_t_from_counts(int((y == y_hat).sum()), int((y == previous).sum()), len(y))


def forward_fill(ids: Any, missing: int = -1) -> np.ndarray:
    """Replace each ``missing`` entry by the last valid id before it.

    Leading missing entries (before the first valid id) stay ``missing``. Returns a new array; the
    input is not modified.

    Args:
        ids: 1-D id sequence.
        missing: the value marking an unknown id (compared by equality); default -1.
    """
    a = _as_1d(ids, "ids")
    if a.size == 0:
        return a.copy()
    valid = a != missing
    last = np.maximum.accumulate(np.where(valid, np.arange(a.size), 0))
    # a leading missing entry maps to index 0, which is itself missing, so it stays missing
    return a[last].copy()


def concept_contingency(G: Any, S: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table of ground-truth concepts against active states.

    Args:
        G: ground-truth concept id per observation, 1-D.
        S: active state id per observation, 1-D, same length.

    Returns:
        ``(g_ids, s_ids, counts)``: sorted distinct concept ids, sorted distinct state ids and the
        int64 ``[len(g_ids), len(s_ids)]`` table ``counts[i, j] = |{t: G_t = g_i, S_t = s_j}|``.
    """
    g, s = _as_1d(G, "G"), _as_1d(S, "S")
    if g.shape != s.shape:
        raise ValueError(f"G and S differ in length: {g.shape[0]} vs {s.shape[0]}")
    g_ids, g_inv = np.unique(g, return_inverse=True)
    s_ids, s_inv = np.unique(s, return_inverse=True)
    flat = g_inv * len(s_ids) + s_inv
    counts = np.bincount(flat, minlength=len(g_ids) * len(s_ids)).reshape(len(g_ids), len(s_ids))
    return g_ids, s_ids, counts.astype(np.int64)


def _f1_table(counts: np.ndarray) -> np.ndarray:
    """F1(g, s) for every cell: 2 n_gs / (n_g + n_s), the harmonic mean of recall and precision."""
    n_g = counts.sum(axis=1, keepdims=True).astype(np.float64)  # ficsum.md §3: |{t: G_t = g}|
    n_s = counts.sum(axis=0, keepdims=True).astype(np.float64)  # ficsum.md §3: |{t: S_t = s}|
    # ficsum.md §3: recall = n_gs / n_g, precision = n_gs / n_s, F1 = 2 p r / (p + r) = 2 n_gs / (n_g + n_s)
    return 2.0 * counts / (n_g + n_s)


def concept_f1(G: Any, S: Any) -> float:
    """C-F1: mean over ground-truth concepts g of max over states s of F1(g, s).

    recall(g, s) = |{t: G_t=g, S_t=s}| / |{t: G_t=g}|, precision(g, s) = the same / |{t: S_t=s}|.
    Pass forward-filled sequences (:func:`forward_fill`); every value is taken as an id. ``nan`` for
    an empty stream.
    """
    _, _, counts = concept_contingency(G, S)
    if counts.size == 0:
        return math.nan
    return float(_f1_table(counts).max(axis=1).mean())  # ficsum.md §3: mean_g max_s F1(g, s)


def model_f1(G: Any, S: Any) -> float:
    """Model F1: C-F1 from the state side, Σ_s (n_s / n) · max_g F1(g, s).

    Each state is weighted by its share of the stream. ``nan`` for an empty stream.
    """
    _, _, counts = concept_contingency(G, S)
    if counts.size == 0:
        return math.nan
    share = counts.sum(axis=0) / counts.sum()
    return float(share @ _f1_table(counts).max(axis=0))  # ficsum.md §3: weighted by each state's share


def drift_window_accuracy(correct: Any, true_drifts: Any, delta: int) -> float:
    """drift_δ accuracy: accuracy over the ``delta`` observations after each true drift.

    The window of a drift at index d is ``[d, d + delta)`` (cut at the stream end). Overlapping
    windows count each observation once. A drift at index 0 (the stream start) is excluded.
    Returns ``nan`` if no observation falls in a window.

    Args:
        correct: per-observation correctness (bool or 0/1), 1-D.
        true_drifts: indices of the first observation of each new concept.
        delta: window length δ (the paper uses 50, 250 and 500).
    """
    c = _as_1d(correct, "correct").astype(np.float64)
    if delta < 1:
        raise ValueError(f"delta must be >= 1, got {delta}")
    mask = np.zeros(c.size, dtype=bool)
    for d in np.unique(_as_1d(true_drifts, "true_drifts").astype(np.int64)):
        if 0 < d < c.size:  # ficsum.md §3: the stream start is excluded
            mask[d : d + delta] = True  # ficsum.md §3: the δ observations after each true drift
    if not mask.any():
        return math.nan
    return float(c[mask].mean())


def detection_stats(true_drifts: Any, detections: Any, n: int, window: int = 1000) -> dict[str, Any]:
    """Detection delay, missed drifts and false alarms of a drift detector against the true drifts.

    A true drift at d is detected by the first detection t with ``d <= t < min(next drift,
    d + window)``; its delay is ``t - d``. A detection is a false alarm if no true drift d has
    ``d <= t < d + window`` (ficsum.md §3: the authors' 1,000-observation window). A drift at index 0
    (the stream start) is not a drift. Duplicate indices are removed.

    Args:
        true_drifts: indices of the first observation of each new concept, in ``[0, n)``.
        detections: indices of the observations at which a drift was signalled, in ``[0, n)``.
        n: stream length.
        window: observations after a drift within which a detection counts; default 1000.

    Returns:
        dict with ``delays`` (list of int, one per detected drift), ``delay_mean`` (float, ``nan`` if
        none), ``detected``, ``missed``, ``false_alarms`` and ``n_detections`` (int).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    drifts = np.unique(_as_1d(true_drifts, "true_drifts").astype(np.int64))
    dets = np.unique(_as_1d(detections, "detections").astype(np.int64))
    for name, a in (("true_drifts", drifts), ("detections", dets)):
        if a.size and (a[0] < 0 or a[-1] >= n):
            raise ValueError(f"{name} must lie in [0, {n}), got range [{a[0]}, {a[-1]}]")
    drifts = drifts[drifts > 0]  # the stream start is not a drift

    delays: list[int] = []
    for i, d in enumerate(drifts):
        end = min(int(drifts[i + 1]) if i + 1 < drifts.size else n, int(d) + window)
        k = np.searchsorted(dets, d, side="left")
        if k < dets.size and dets[k] < end:
            delays.append(int(dets[k] - d))  # ficsum.md §3: first detection after the drift minus its index

    near = np.zeros(dets.size, dtype=bool)
    if drifts.size:
        latest = np.searchsorted(drifts, dets, side="right") - 1  # the last true drift at or before each detection
        near = (latest >= 0) & (dets - drifts[np.clip(latest, 0, None)] < window)
    return {
        "delays": delays,
        "delay_mean": float(np.mean(delays)) if delays else math.nan,
        "detected": len(delays),
        "missed": int(drifts.size - len(delays)),
        "false_alarms": int((~near).sum()),  # ficsum.md §3: not within `window` after a true drift
        "n_detections": int(dets.size),
    }


# ----------------------------------------------------------------------------------------------
# torchmetrics adapters: accumulate a stream over update() calls
# ----------------------------------------------------------------------------------------------


def _flat_long(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(x.shape)}")
    return x.detach().long()


def _f64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


class PrequentialAccuracy(Metric):
    """Prequential (test-then-train) accuracy of a stream: correct predictions / observations.

    ``update(preds, target)`` takes 1-D predicted and true labels; ``compute()`` returns a float64
    scalar (``nan`` before any observation). Summed states only, exact under DDP.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a chunk of observations (1-D predictions and labels of equal length)."""
        preds, target = _flat_long(preds, "preds"), _flat_long(target, "target")
        if preds.shape != target.shape:
            raise ValueError(f"preds and target differ in shape: {tuple(preds.shape)} vs {tuple(target.shape)}")
        self.correct += (preds == target).sum().to(self.correct.device)
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        """Accuracy over every observation seen, as a float64 scalar."""
        if int(self.total) == 0:
            return _f64(math.nan)
        return self.correct.double() / self.total.double()


class StreamKappa(Metric):
    """Cohen's κ, κ_m and κ_t of a stream (ficsum.md §3), accumulated over chunks.

    ``update(preds, target)`` takes 1-D integer labels in ``[0, num_classes)``; ``compute()`` returns
    a dict of float64 scalars ``kappa``, ``kappa_m`` and ``kappa_t`` (see :func:`cohen_kappa`,
    :func:`kappa_m`, :func:`kappa_t`; ``nan`` before any observation).

    States: a summed ``[C, C]`` confusion matrix (rows: labels), the summed count
    ``n_same_as_previous`` of ``y_t = y_{t−1}`` and ``last_label``, the label that ends the previous
    chunk (``y_{−1} := 0``), so chunking does not change κ_t. Under DDP every rank sees the same
    stream: the sum reduce multiplies every count by the world size and leaves the ratios
    unchanged; ``last_label`` is identical on all ranks (``max`` reduce). ``forward()`` updates the
    global state correctly (``full_state_update``); its per-chunk value starts from ``y_{−1} := 0``.

    Args:
        num_classes: number of classes C; labels and predictions must lie in ``[0, C)``.
    """

    full_state_update = True
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.add_state("confusion", default=confusion, dist_reduce_fx="sum")
        self.add_state("n_same_as_previous", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("last_label", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="max")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a chunk of consecutive observations (1-D predictions and labels of equal length)."""
        preds, target = _flat_long(preds, "preds"), _flat_long(target, "target")
        if preds.shape != target.shape:
            raise ValueError(f"preds and target differ in shape: {tuple(preds.shape)} vs {tuple(target.shape)}")
        if target.numel() == 0:
            return
        c = self.num_classes
        for name, x in (("preds", preds), ("target", target)):
            if int(x.min()) < 0 or int(x.max()) >= c:
                raise ValueError(f"{name} must lie in [0, {c}), got range [{int(x.min())}, {int(x.max())}]")
        device = self.confusion.device
        preds, target = preds.to(device), target.to(device)
        self.confusion += torch.bincount(target * c + preds, minlength=c * c).reshape(c, c)
        previous = torch.cat([self.last_label.reshape(1), target[:-1]])  # y_{t-1}, carried across chunks
        self.n_same_as_previous += (target == previous).sum()
        self.last_label = target[-1].clone()

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"kappa", "kappa_m", "kappa_t"}`` over every observation seen, float64 scalars."""
        confusion = self.confusion.cpu().numpy()
        n = int(confusion.sum())
        return {
            "kappa": _f64(kappa_from_confusion(confusion)),
            "kappa_m": _f64(kappa_m_from_confusion(confusion)),
            "kappa_t": _f64(kappa_t_from_counts(int(np.trace(confusion)), int(self.n_same_as_previous), n)),
        }


class ConceptF1(Metric):
    """C-F1 and model F1 of a concept-tracking system against the ground-truth concepts (ficsum.md §3).

    ``update(concept_ids, state_ids)`` takes the 1-D ground-truth concept id and active state id of
    consecutive observations; ``missing`` entries are forward-filled from the last valid id, also
    across chunks (``last_concept`` and ``last_state`` carry it). Observations that are still
    missing (before the first valid id) are left out. ``compute()`` returns float64 scalars
    ``c_f1`` (:func:`concept_f1`), ``model_f1`` (:func:`model_f1`) and ``n_states`` (the number of
    distinct states); ``nan`` for the F1s before any valid observation.

    The filled sequences are kept as concatenated states (memory grows with the stream; 67,500
    observations at paper scale). Under DDP the gathered sequences repeat the same stream once per
    rank, which scales the contingency table uniformly and leaves every value unchanged.

    Args:
        missing: the id that marks an unknown concept or state; default -1.
    """

    full_state_update = True
    higher_is_better = True
    is_differentiable = False

    def __init__(self, missing: int = -1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.missing = missing
        self.add_state("concept_ids", default=[], dist_reduce_fx="cat")
        self.add_state("state_ids", default=[], dist_reduce_fx="cat")
        self.add_state("last_concept", default=torch.tensor(missing, dtype=torch.long), dist_reduce_fx="max")
        self.add_state("last_state", default=torch.tensor(missing, dtype=torch.long), dist_reduce_fx="max")

    def _fill(self, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Forward-fill ``ids`` starting from the carried ``last`` valid id (same as :func:`forward_fill`)."""
        filled = forward_fill(torch.cat([last.reshape(1).cpu(), ids.cpu()]).numpy(), self.missing)[1:]
        return torch.from_numpy(filled).to(last.device)

    def update(self, concept_ids: torch.Tensor, state_ids: torch.Tensor) -> None:
        """Add a chunk of consecutive observations (1-D concept ids and state ids of equal length)."""
        g, s = _flat_long(concept_ids, "concept_ids"), _flat_long(state_ids, "state_ids")
        if g.shape != s.shape:
            raise ValueError(f"concept_ids and state_ids differ in shape: {tuple(g.shape)} vs {tuple(s.shape)}")
        if g.numel() == 0:
            return
        g = self._fill(g, self.last_concept)  # ficsum.md §3: both sequences are forward-filled
        s = self._fill(s, self.last_state)
        self.concept_ids.append(g)
        self.state_ids.append(s)
        self.last_concept = g[-1].clone()
        self.last_state = s[-1].clone()

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"c_f1", "model_f1", "n_states"}`` over every observation seen, float64 scalars."""
        g = _cat_numpy(self.concept_ids)
        s = _cat_numpy(self.state_ids)
        keep = (g != self.missing) & (s != self.missing)
        g, s = g[keep], s[keep]
        return {
            "c_f1": _f64(concept_f1(g, s)),
            "model_f1": _f64(model_f1(g, s)),
            "n_states": _f64(float(np.unique(s).size)),
        }


def _cat_numpy(state: Any) -> np.ndarray:
    """A ``cat`` state (list of tensors, or one tensor after a sync) as one int64 numpy array."""
    if isinstance(state, list) and not state:
        return np.zeros(0, dtype=np.int64)
    return dim_zero_cat(state).cpu().numpy().astype(np.int64)


class DriftDetections(Metric):
    """Drift-detection statistics of a stream: delay, missed drifts, false alarms (ficsum.md §3).

    ``update(is_true_drift, is_detection)`` takes two 1-D bool (or 0/1) tensors over the same
    consecutive observations: whether the observation starts a new true concept, and whether the
    detector signalled a drift at it. The stream position is carried in ``n_seen``, so chunking does
    not matter. ``compute()`` returns :func:`detection_stats` as float64 scalars ``delay_mean``
    (``nan`` if no drift was detected), ``detected``, ``missed``, ``false_alarms`` and
    ``n_detections`` (the per-drift ``delays`` list is left out: it is not a scalar).

    Under DDP the gathered index lists repeat the same stream once per rank; duplicates are removed
    and ``n_seen`` is identical on every rank (``max`` reduce), so the values are unchanged.

    Args:
        window: observations after a true drift within which a detection counts (for the delay and
            the false alarms); default 1000, the window the authors use for detection accuracy.
    """

    full_state_update = True
    higher_is_better = None
    is_differentiable = False

    def __init__(self, window: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.add_state("drift_idx", default=[], dist_reduce_fx="cat")
        self.add_state("detection_idx", default=[], dist_reduce_fx="cat")
        self.add_state("n_seen", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="max")

    def update(self, is_true_drift: torch.Tensor, is_detection: torch.Tensor) -> None:
        """Add a chunk of consecutive observations (two 1-D flags of equal length)."""
        drift, det = _flat_long(is_true_drift, "is_true_drift"), _flat_long(is_detection, "is_detection")
        if drift.shape != det.shape:
            raise ValueError(
                f"is_true_drift and is_detection differ in shape: {tuple(drift.shape)} vs {tuple(det.shape)}"
            )
        offset = self.n_seen.to(drift.device)
        self.drift_idx.append((torch.nonzero(drift != 0).reshape(-1) + offset).to(self.n_seen.device))
        self.detection_idx.append((torch.nonzero(det != 0).reshape(-1) + offset).to(self.n_seen.device))
        self.n_seen += drift.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"delay_mean", "detected", "missed", "false_alarms", "n_detections"}``, float64 scalars."""
        stats = detection_stats(
            _cat_numpy(self.drift_idx), _cat_numpy(self.detection_idx), int(self.n_seen), self.window
        )
        keys = ("delay_mean", "detected", "missed", "false_alarms", "n_detections")
        return {k: _f64(float(stats[k])) for k in keys}
