"""Data-stream metrics: κ family, C-F1, drift windows and detection statistics (ficsum.md §3, §4, §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.metrics import (
    ConceptF1,
    DriftDetections,
    PrequentialAccuracy,
    StreamKappa,
    chance_corrected,
    cohen_kappa,
    concept_contingency,
    concept_f1,
    detection_stats,
    drift_window_accuracy,
    forward_fill,
    kappa_from_confusion,
    kappa_m,
    kappa_t,
    label_confusion,
    model_f1,
)


def _segments(order: list[int], length: int) -> np.ndarray:
    """Concatenated equal-length segments with the given ids."""
    return np.repeat(np.asarray(order), length)


# ---------------------------------------------------------------------------------------------
# C-F1 (ficsum.md §6)
# ---------------------------------------------------------------------------------------------


def test_concept_contingency_hand_case():
    G = [0, 0, 1, 1, 1, 2]
    S = [5, 7, 7, 7, 5, 5]
    g_ids, s_ids, counts = concept_contingency(G, S)
    assert g_ids.tolist() == [0, 1, 2]
    assert s_ids.tolist() == [5, 7]
    assert counts.tolist() == [[1, 1], [1, 2], [1, 0]]
    assert counts.dtype == np.int64


def test_concept_f1_hand_case():
    # g=0: F1 with s=5 is 2*1/(2+3) = 0.4, with s=7 2*1/(2+3) = 0.4; g=1: s=7 gives 2*2/(3+3) = 2/3;
    # g=2: s=5 gives 2*1/(1+3) = 0.5
    G = [0, 0, 1, 1, 1, 2]
    S = [5, 7, 7, 7, 5, 5]
    assert concept_f1(G, S) == pytest.approx((0.4 + 2 / 3 + 0.5) / 3, abs=1e-15)
    # states: s=5 (share 1/2) max(0.4, 1/3, 0.5) = 0.5; s=7 (share 1/2) max(0.4, 2/3, 0) = 2/3
    assert model_f1(G, S) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3, abs=1e-15)


def test_concept_f1_perfect_system_is_one_also_with_permuted_state_ids():
    G = _segments([0, 1, 2] * 3, 40)
    assert concept_f1(G, G) == 1.0
    assert model_f1(G, G) == 1.0
    relabel = {0: 17, 1: 3, 2: 9}
    S = np.array([relabel[g] for g in G])
    assert concept_f1(G, S) == 1.0
    assert model_f1(G, S) == 1.0


@pytest.mark.parametrize(("repeats", "expected"), [(3, 0.5), (6, 2 / 7), (1, 1.0)])
def test_reset_at_every_true_boundary_gives_two_over_r_plus_one(repeats, expected):
    n_concepts, length = 4, 25
    G = _segments(list(range(n_concepts)) * repeats, length)
    S = _segments(list(range(n_concepts * repeats)), length)  # a fresh state for every segment
    assert concept_f1(G, S) == pytest.approx(expected, abs=1e-15)
    assert concept_f1(G, S) == pytest.approx(2 / (repeats + 1), abs=1e-15)
    assert model_f1(G, S) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("n_concepts", [2, 3, 5])
def test_single_state_gives_two_over_g_plus_one(n_concepts):
    G = _segments(list(range(n_concepts)) * 3, 30)
    S = np.zeros_like(G)
    assert concept_f1(G, S) == pytest.approx(2 / (n_concepts + 1), abs=1e-15)
    assert model_f1(G, S) == pytest.approx(2 / (n_concepts + 1), abs=1e-15)


def test_concept_f1_empty_is_nan_and_lengths_checked():
    assert math.isnan(concept_f1([], []))
    assert math.isnan(model_f1([], []))
    with pytest.raises(ValueError):
        concept_f1([0, 1], [0])


def test_concept_f1_unchanged_when_the_stream_repeats():
    """What a DDP ``cat`` gather of identical streams does: every count doubles, F1 is unchanged."""
    rng = np.random.default_rng(0)
    G = _segments([0, 1, 2, 0, 1], 20)
    S = rng.integers(0, 4, G.size)
    assert concept_f1(np.tile(G, 2), np.tile(S, 2)) == pytest.approx(concept_f1(G, S), abs=1e-15)
    assert model_f1(np.tile(G, 2), np.tile(S, 2)) == pytest.approx(model_f1(G, S), abs=1e-15)


# ---------------------------------------------------------------------------------------------
# forward_fill
# ---------------------------------------------------------------------------------------------


def test_forward_fill():
    ids = np.array([-1, -1, 3, -1, -1, 5, 4, -1])
    out = forward_fill(ids)
    assert out.tolist() == [-1, -1, 3, 3, 3, 5, 4, 4]
    assert ids.tolist() == [-1, -1, 3, -1, -1, 5, 4, -1]  # input untouched
    assert forward_fill([2, 0, 0, 7], missing=0).tolist() == [2, 2, 2, 7]
    assert forward_fill([1, 2, 3]).tolist() == [1, 2, 3]
    assert forward_fill([-1, -1]).tolist() == [-1, -1]
    assert forward_fill([]).size == 0


# ---------------------------------------------------------------------------------------------
# κ family (ficsum.md §3, §4 defects 1-2, §6)
# ---------------------------------------------------------------------------------------------


def test_kappa_spec_case():
    y, y_hat = [0, 0, 1, 1], [0, 1, 1, 1]
    _, confusion = label_confusion(y, y_hat)
    n = confusion.sum()
    assert np.trace(confusion) / n == 0.75  # p_o
    assert float(confusion.sum(1) @ confusion.sum(0)) / n**2 == 0.5  # p_e
    assert cohen_kappa(y, y_hat) == 0.5


def test_kappa_t_spec_case_and_more():
    # acc = 0.75; acc_nc: y_{-1}=0 -> [1, 1, 0, 1] -> 0.75; κ_t = 0
    assert kappa_t([0, 0, 1, 1], [0, 1, 1, 1]) == 0.0
    # perfect classifier, acc_nc = mean([0 vs 1, 1 vs 1, 1 vs 0, 0 vs 0]) = 0.5 -> κ_t = 1
    assert kappa_t([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0
    # alternating labels: the no-change classifier is always wrong, κ_t = acc = 0.75
    assert kappa_t([1, 0, 1, 0], [1, 0, 1, 1]) == 0.75
    # acc 0.5 against acc_nc 0.75: (0.5 - 0.75) / 0.25 = -1
    assert kappa_t([0, 0, 1, 1], [1, 0, 0, 1]) == -1.0


def test_kappa_uses_the_real_predictions_not_the_labels_twice():
    """Defect 1: with the label written into the prediction column p_e would be 0.625 and κ 1/3."""
    y, y_hat = [0, 0, 0, 1], [0, 0, 1, 1]
    # p_o = 0.75; P(y) = (0.75, 0.25), P(ŷ) = (0.5, 0.5): p_e = 0.5, κ = 0.5
    assert cohen_kappa(y, y_hat) == 0.5
    assert cohen_kappa(y, y_hat) != pytest.approx((0.75 - 0.625) / 0.375)


def test_kappa_union_of_classes_with_a_class_only_in_predictions():
    """Defect 2: class 2 appears only in ŷ; P(ŷ=c) is divided by all n predictions.

    p_o = 0.75; P(y) = (0.5, 0.5, 0), P(ŷ) = (0.25, 0.5, 0.25): p_e = 0.375, κ = 0.375 / 0.625 = 0.6.
    Restricting ŷ to the label classes (0, 1) and renormalising would give P(ŷ) = (1/3, 2/3), p_e = 0.5
    and κ = 0.5.
    """
    y, y_hat = [0, 0, 1, 1], [0, 2, 1, 1]
    classes, confusion = label_confusion(y, y_hat)
    assert classes.tolist() == [0, 1, 2]
    assert confusion.tolist() == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert cohen_kappa(y, y_hat) == pytest.approx(0.6, abs=1e-15)


def test_kappa_with_a_class_only_in_labels():
    # class 2 is never predicted. p_o = 0.75; P(y) = (0.5, 0.25, 0.25), P(ŷ) = (0.75, 0.25, 0):
    # p_e = 0.375 + 0.0625 = 0.4375, κ = 0.3125 / 0.5625 = 5/9
    assert cohen_kappa([0, 0, 1, 2], [0, 0, 1, 0]) == pytest.approx((0.75 - 0.4375) / (1 - 0.4375), abs=1e-15)


def test_kappa_matches_sklearn_on_random_labels():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 3, 200)
        y_hat = rng.integers(0, 5, 200)  # classes 3 and 4 only in the predictions
        assert cohen_kappa(y, y_hat) == pytest.approx(sklearn_metrics.cohen_kappa_score(y, y_hat), abs=1e-12)


def test_kappa_m_hand_cases():
    # acc = 0.8, majority share 0.6: (0.8 - 0.6) / 0.4 = 0.5
    assert kappa_m([0, 0, 0, 1, 1], [0, 0, 0, 1, 0]) == pytest.approx(0.5, abs=1e-15)
    # acc = 0.75 equals the majority share 0.75: 0
    assert kappa_m([0, 0, 0, 1], [0, 0, 1, 1]) == 0.0
    # predictions only matter through accuracy: acc 0.25 < 0.75 -> (0.25 - 0.75) / 0.25 = -2
    assert kappa_m([0, 0, 0, 1], [1, 1, 0, 0]) == -2.0


def test_degenerate_denominators_and_empty_streams():
    # one class everywhere and perfect: p_e = acc_maj = acc_nc = 1 -> 1.0
    assert cohen_kappa([0, 0, 0], [0, 0, 0]) == 1.0
    assert kappa_m([0, 0, 0], [0, 0, 0]) == 1.0
    assert kappa_t([0, 0, 0], [0, 0, 0]) == 1.0
    # one label class, an imperfect classifier: κ_m and κ_t fall back to 0.0; κ itself is defined
    assert kappa_m([0, 0, 0, 0], [0, 1, 0, 0]) == 0.0
    assert kappa_t([0, 0, 0, 0], [0, 1, 0, 0]) == 0.0
    assert cohen_kappa([0, 0, 0, 0], [0, 1, 0, 0]) == 0.0  # p_o = p_e = 0.75
    assert chance_corrected(0.3, 1.0) == 0.0 and chance_corrected(1.0, 1.0) == 1.0
    for fn in (cohen_kappa, kappa_m, kappa_t):
        assert math.isnan(fn([], []))
    with pytest.raises(ValueError):
        cohen_kappa([0, 1], [0])


def test_kappa_ratios_unchanged_by_a_sum_reduce_of_identical_streams():
    rng = np.random.default_rng(2)
    _, confusion = label_confusion(rng.integers(0, 3, 100), rng.integers(0, 3, 100))
    assert kappa_from_confusion(2 * confusion) == pytest.approx(kappa_from_confusion(confusion), abs=1e-15)


# ---------------------------------------------------------------------------------------------
# drift_δ accuracy and detection statistics
# ---------------------------------------------------------------------------------------------


def test_drift_window_accuracy_hand_case():
    correct = np.zeros(30, dtype=int)
    correct[10:13] = [1, 1, 0]  # window after the drift at 10 (delta 3)
    correct[20:23] = [1, 1, 1]  # window after the drift at 20
    correct[0:3] = 1  # the stream start is excluded
    assert drift_window_accuracy(correct, [0, 10, 20], 3) == pytest.approx(5 / 6, abs=1e-15)
    assert drift_window_accuracy(correct, [10], 3) == pytest.approx(2 / 3, abs=1e-15)
    # the window is cut at the stream end: [28, 30)
    assert drift_window_accuracy(correct, [28], 5) == 0.0
    # overlapping windows count each observation once: [10, 15) ∪ [12, 17) = [10, 17)
    assert drift_window_accuracy(correct, [10, 12], 5) == pytest.approx(2 / 7, abs=1e-15)
    assert math.isnan(drift_window_accuracy(correct, [0], 50))
    assert math.isnan(drift_window_accuracy(correct, [], 50))


def test_detection_stats_hand_case():
    # drifts at 2000, 4000 and 7000 (0 is the stream start); n = 9000, window 1000
    # 2007: detects the drift at 2000 with delay 7; 2500: a second hit inside the window, not a false alarm;
    # 3500: 1,500 after the drift at 2000 -> false alarm; the drift at 4000 is missed (nothing in [4000, 5000));
    # 5200: 1,200 after 4000 -> false alarm and no delay; 7040: delay 40; 100: before any drift -> false alarm
    stats = detection_stats([0, 2000, 4000, 7000], [100, 2007, 2500, 3500, 5200, 7040], n=9000, window=1000)
    assert stats == {
        "delays": [7, 40],
        "delay_mean": 23.5,
        "detected": 2,
        "missed": 1,
        "false_alarms": 3,
        "n_detections": 6,
    }


def test_detection_stats_window_next_drift_duplicates_and_no_detections():
    # a detection after the next drift belongs to the next drift
    stats = detection_stats([100, 150], [160], n=1000, window=1000)
    assert stats["delays"] == [10] and stats["missed"] == 1 and stats["false_alarms"] == 0
    # smaller window: 1,000 after the drift is outside a window of 1000, 999 inside
    assert detection_stats([1000], [2000], n=3000)["false_alarms"] == 1
    assert detection_stats([1000], [1999], n=3000)["delays"] == [999]
    # duplicated indices (what a DDP cat gather of identical streams produces) change nothing
    once = detection_stats([0, 2000, 4000], [2007, 3500], n=6000)
    twice = detection_stats([0, 2000, 4000] * 2, [2007, 3500] * 2, n=6000)
    assert once == twice
    none = detection_stats([500], [], n=1000)
    assert math.isnan(none["delay_mean"]) and none["missed"] == 1 and none["n_detections"] == 0
    assert detection_stats([], [10], n=100)["false_alarms"] == 1
    with pytest.raises(ValueError):
        detection_stats([50], [100], n=100)


# ---------------------------------------------------------------------------------------------
# torchmetrics adapters: chunk invariance, equality with the pure functions, reset
# ---------------------------------------------------------------------------------------------


def _stream(n: int = 230, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    concept = _segments([0, 1, 2, 0, 1], n // 5 + 1)[:n]
    y = rng.integers(0, 3, n)
    y_hat = np.where(rng.random(n) < 0.7, y, rng.integers(0, 3, n))
    state = concept * 10 + (np.arange(n) // 37)  # a noisy tracker
    state[rng.random(n) < 0.2] = -1  # unknown ids, forward-filled
    state[:3] = -1  # leading unknown ids are left out
    concept_ids = concept.copy()
    concept_ids[rng.random(n) < 0.05] = -1
    true_drift = np.zeros(n, dtype=bool)
    true_drift[np.flatnonzero(np.diff(concept)) + 1] = True
    true_drift[0] = True
    detection = rng.random(n) < 0.03
    changes = np.flatnonzero(true_drift[1:]) + 1
    detection[changes[0] + 5] = detection[changes[2] + 3] = True  # two detected drifts (delays 5 and 3)
    return {
        k: torch.as_tensor(v)
        for k, v in dict(
            y=y, y_hat=y_hat, concept=concept_ids, state=state, true_drift=true_drift, detection=detection
        ).items()
    }


def _feed(metric, args: tuple[torch.Tensor, ...], chunk: int | None, use_forward: bool = False):
    n = args[0].numel()
    step = chunk or n
    for start in range(0, n, step):
        part = tuple(a[start : start + step] for a in args)
        if use_forward:
            metric(*part)
        else:
            metric.update(*part)
    return metric.compute()


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all()))


def _metric_cases(s):
    return [
        (lambda: PrequentialAccuracy(), (s["y_hat"], s["y"])),
        (lambda: StreamKappa(num_classes=3), (s["y_hat"], s["y"])),
        (lambda: ConceptF1(), (s["concept"], s["state"])),
        (lambda: DriftDetections(window=20), (s["true_drift"], s["detection"])),
    ]


@pytest.mark.parametrize("case", range(4), ids=["accuracy", "kappa", "concept_f1", "detections"])
def test_metric_chunking_does_not_change_the_result(case):
    s = _stream()
    make, args = _metric_cases(s)[case]
    whole = _feed(make(), args, None)
    for chunk in (1, 7):
        assert _same(_feed(make(), args, chunk), whole), chunk
    assert _same(_feed(make(), args, 7, use_forward=True), whole)


@pytest.mark.parametrize("case", range(4), ids=["accuracy", "kappa", "concept_f1", "detections"])
def test_metric_reset(case):
    s = _stream()
    make, args = _metric_cases(s)[case]
    other = _stream(seed=5)
    _, other_args = _metric_cases(other)[case]
    metric = make()
    _feed(metric, other_args, 11)
    metric.reset()
    assert _same(_feed(metric, args, 7), _feed(make(), args, None))


def test_metrics_equal_the_pure_functions():
    s = _stream()
    y, y_hat = s["y"].numpy(), s["y_hat"].numpy()
    assert float(_feed(PrequentialAccuracy(), (s["y_hat"], s["y"]), 7)) == pytest.approx(np.mean(y == y_hat), abs=1e-15)

    kappas = _feed(StreamKappa(num_classes=3), (s["y_hat"], s["y"]), 7)
    assert float(kappas["kappa"]) == cohen_kappa(y, y_hat)
    assert float(kappas["kappa_m"]) == kappa_m(y, y_hat)
    assert float(kappas["kappa_t"]) == kappa_t(y, y_hat)
    assert all(v.dtype == torch.float64 and v.dim() == 0 for v in kappas.values())

    f1 = _feed(ConceptF1(), (s["concept"], s["state"]), 7)
    G, S = forward_fill(s["concept"].numpy()), forward_fill(s["state"].numpy())
    keep = (G != -1) & (S != -1)
    assert keep.sum() == s["y"].numel() - 3
    assert float(f1["c_f1"]) == concept_f1(G[keep], S[keep])
    assert float(f1["model_f1"]) == model_f1(G[keep], S[keep])
    assert float(f1["n_states"]) == np.unique(S[keep]).size

    det = _feed(DriftDetections(window=20), (s["true_drift"], s["detection"]), 7)
    ref = detection_stats(
        np.flatnonzero(s["true_drift"].numpy()), np.flatnonzero(s["detection"].numpy()), s["y"].numel(), window=20
    )
    assert set(det) == {"delay_mean", "detected", "missed", "false_alarms", "n_detections"}
    for key, value in det.items():
        assert float(value) == pytest.approx(ref[key], nan_ok=True, abs=0), key
    assert ref["detected"] + ref["missed"] == 4  # drifts at the four concept changes; index 0 is the start
    assert ref["detected"] >= 2 and ref["false_alarms"] >= 1


def test_stream_kappa_carries_the_previous_label_across_chunks():
    metric = StreamKappa(num_classes=2)
    metric.update(torch.tensor([0, 0]), torch.tensor([0, 1]))
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    out = metric.compute()
    # y = [0, 1, 1, 1] against y_{t-1} = [0 (y_{-1}), 0, 1 (carried across chunks), 1]: 3 the same
    assert int(metric.n_same_as_previous) == 3
    assert float(out["kappa_t"]) == kappa_t([0, 1, 1, 1], [0, 0, 1, 1])


def test_stream_kappa_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        StreamKappa(num_classes=2).update(torch.tensor([0, 2]), torch.tensor([0, 1]))


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_metrics_before_any_update_are_nan():
    assert math.isnan(float(PrequentialAccuracy().compute()))
    assert all(math.isnan(float(v)) for v in StreamKappa(num_classes=2).compute().values())
    f1 = ConceptF1().compute()
    assert math.isnan(float(f1["c_f1"])) and float(f1["n_states"]) == 0
    assert math.isnan(float(DriftDetections().compute()["delay_mean"]))
