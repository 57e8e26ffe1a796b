"""FiCSUM meta-information and fingerprint formulas against hand-computed values (papers/ficsum.md §3, §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import trainer.drift as drift
from trainer.drift import (
    BEHAVIOUR_SOURCES,
    META_FEATURES,
    SUPERVISED_SOURCES,
    MetaInfoLayout,
    Normaliser,
    WelfordFingerprint,
    acceptance,
    dynamic_weights,
    emd_imfs,
    error_distances,
    lag1_mutual_information,
    normalise,
    permutation_entropy,
    permutation_importance,
    series_statistics,
    uniform_weights,
    weighted_cosine_distance,
    window_metainfo,
    z_value,
)

COLUMNS = META_FEATURES[:9]


def col(name: str) -> int:
    return COLUMNS.index(name)


def ar1(phi: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    noise = rng.normal(size=n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return x


def test_all_exports_resolve():
    for name in drift.__all__:
        assert getattr(drift, name) is not None, name


# --------------------------------------------------------------------------- behaviour sources


def test_error_distances_spec_example():
    np.testing.assert_array_equal(error_distances(np.array([1, 0, 1, 1, 0, 0])), [3.0, 1.0])  # spec §6


@pytest.mark.parametrize("correctness", [[1, 1, 1], [1, 0, 1], [], [0]])
def test_error_distances_fewer_than_two_mistakes(correctness):
    out = error_distances(np.array(correctness))
    np.testing.assert_array_equal(out, [0.0])
    assert out.dtype == np.float64


# --------------------------------------------------------------------------- series statistics


def test_turning_point_rate_spec_example():
    assert series_statistics(np.array([1, 3, 2, 4, 3.0]))[0, col("turning_point_rate")] == pytest.approx(3 / 5)


def test_acf_1_of_alternating_series():
    n = 100
    x = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    stats = series_statistics(x)[0]
    assert stats[col("acf_1")] == pytest.approx(-(n - 1) / n)  # ≈ −1 (spec §6)
    assert stats[col("acf_2")] == pytest.approx((n - 2) / n)
    assert stats[col("turning_point_rate")] == pytest.approx((n - 2) / n)


def test_every_statistic_of_a_hand_series():
    # x = [0, 2, 1, 3]: mean 1.5, deviations (−1.5, .5, −.5, 1.5), Σdev² = 5, m2 = 5/4, m3 = 0, m4 = 10.25/4.
    stats = series_statistics(np.array([0, 2, 1, 3.0]))[0]
    rho1, rho2 = -1.75 / 5, 1.5 / 5
    expected = {
        "mean": 1.5,
        "stdev": math.sqrt(5 / 3),
        "skew": 0.0,
        "kurtosis": 2.5625 / 1.25**2 - 3,  # −1.36
        "turning_point_rate": 2 / 4,
        "acf_1": rho1,
        "acf_2": rho2,
        "pacf_1": rho1,
        "pacf_2": (rho2 - rho1**2) / (1 - rho1**2),
    }
    for name, value in expected.items():
        assert stats[col(name)] == pytest.approx(value, abs=1e-14), name


def test_every_statistic_of_a_skewed_hand_series():
    # x = [0, 0, 0, 4]: mean 1, deviations (−1, −1, −1, 3), m2 = 3, m3 = 6, m4 = 21, Σdev² = 12.
    stats = series_statistics(np.array([0, 0, 0, 4.0]))[0]
    expected = {
        "mean": 1.0,
        "stdev": 2.0,
        "skew": 2 / math.sqrt(3),
        "kurtosis": 21 / 9 - 3,
        "turning_point_rate": 0.0,
        "acf_1": -1 / 12,
        "acf_2": -1 / 6,
        "pacf_1": -1 / 12,
        "pacf_2": -25 / 143,  # (−1/6 − 1/144) / (1 − 1/144)
    }
    for name, value in expected.items():
        assert stats[col(name)] == pytest.approx(value, abs=1e-14), name


def test_moments_match_scipy_and_numpy():
    x = np.random.default_rng(0).gamma(2.0, size=(75, 6))
    stats = series_statistics(x)
    np.testing.assert_allclose(stats[:, col("mean")], x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats[:, col("stdev")], x.std(axis=0, ddof=1), rtol=1e-13)
    np.testing.assert_allclose(stats[:, col("skew")], scipy.stats.skew(x, bias=True), rtol=1e-12)
    np.testing.assert_allclose(
        stats[:, col("kurtosis")], scipy.stats.kurtosis(x, bias=True, fisher=True), rtol=1e-12
    )


def test_acf_and_pacf_match_their_definitions():
    x = ar1(0.6, 200, seed=1)
    dev = x - x.mean()
    rho = [np.sum(dev[: -k] * dev[k:]) / np.sum(dev**2) for k in (1, 2)]
    stats = series_statistics(x)[0]
    assert stats[col("acf_1")] == pytest.approx(rho[0], rel=1e-12)
    assert stats[col("acf_2")] == pytest.approx(rho[1], rel=1e-12)
    assert stats[col("pacf_1")] == pytest.approx(rho[0], rel=1e-12)
    assert stats[col("pacf_2")] == pytest.approx((rho[1] - rho[0] ** 2) / (1 - rho[0] ** 2), rel=1e-12)


def test_columns_are_independent_series():
    x = np.random.default_rng(2).normal(size=(40, 5))
    x[:, 3] = 7.0
    together = series_statistics(x)
    for j in range(5):
        np.testing.assert_allclose(together[j], series_statistics(x[:, j])[0], rtol=1e-12, atol=1e-15)
    assert series_statistics(np.arange(4.0)).shape == (1, 9)


@pytest.mark.parametrize("value", [0.1, 3.0, 0.0, -1e6])
def test_constant_series(value):
    stats = series_statistics(np.full(75, value))[0]
    assert stats[col("mean")] == pytest.approx(value)
    np.testing.assert_array_equal(stats[1:5], [0.0, 0.0, 0.0, 0.0])  # std, skew, kurtosis, turning points
    np.testing.assert_array_equal(stats[5:9], [-1.0, -1.0, -1.0, -1.0])  # ρ is NaN -> −1


def test_short_series_get_mean_std_and_zeros():
    np.testing.assert_allclose(series_statistics(np.array([1.0, 3.0]))[0], [2, math.sqrt(2), 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(series_statistics(np.array([5.0]))[0], [5, 0, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(series_statistics(np.zeros((0, 2))), np.zeros((2, 9)))


# --------------------------------------------------------------------------- MI, EMD, permutation entropy


def test_mutual_information_of_ar1_and_noise():
    smooth = lag1_mutual_information(ar1(0.95, 500, seed=3))
    assert smooth > 0.5
    # Gaussian AR(1): I(x_t; x_{t−1}) = −½ ln(1 − φ²) nats.
    assert lag1_mutual_information(ar1(0.9, 2000, seed=4)) == pytest.approx(-0.5 * math.log(1 - 0.81), abs=0.1)
    noise = np.random.default_rng(5).normal(size=2000)
    assert lag1_mutual_information(noise) < 0.05
    assert lag1_mutual_information(noise[:300], seed=1) == lag1_mutual_information(noise[:300], seed=1)


def test_mutual_information_degenerate_inputs():
    assert lag1_mutual_information(np.array([1.0, 2.0, 3.0])) == 0.0
    assert lag1_mutual_information(np.full(50, 2.0)) == 0.0


def test_emd_reconstructs_and_separates_tones():
    t = np.arange(400)
    fast, slow = np.sin(2 * np.pi * t / 8), np.sin(2 * np.pi * t / 80)
    x = fast + slow + 0.01 * t
    imfs, residue = emd_imfs(x, return_residue=True)
    assert imfs.shape == (3, 400)
    np.testing.assert_allclose(imfs.sum(axis=0) + residue, x, atol=1e-12)
    assert np.corrcoef(imfs[0], fast)[0, 1] > 0.99
    assert np.corrcoef(imfs[1], slow)[0, 1] > 0.9


def test_emd_of_monotone_or_short_series_is_zero():
    np.testing.assert_array_equal(emd_imfs(np.linspace(0, 5, 60) ** 2), np.zeros((3, 60)))
    np.testing.assert_array_equal(emd_imfs(np.array([1.0, 2.0]), n_imfs=2), np.zeros((2, 2)))
    x = np.random.default_rng(6).normal(size=75)
    imfs, residue = emd_imfs(x, return_residue=True)
    np.testing.assert_allclose(imfs.sum(axis=0) + residue, x, atol=1e-12)


def test_permutation_entropy_hand_values():
    assert permutation_entropy(np.arange(100.0)) == 0.0
    assert permutation_entropy(-np.arange(100.0)) == 0.0
    assert permutation_entropy(np.full(30, 1.5)) == 0.0
    assert permutation_entropy(np.array([1.0, 2.0])) == 0.0  # too short for two patterns
    # [1, 2, 3, 2, 1]: patterns (0,1,2), (0,2,1), (2,1,0), one each -> ln 3 / ln 3!
    assert permutation_entropy(np.array([1, 2, 3, 2, 1.0])) == pytest.approx(math.log(3) / math.log(6))
    # order 2 on [1, 2, 1, 2]: up, down, up -> H(2/3, 1/3) / ln 2
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(2)
    assert permutation_entropy(np.array([1, 2, 1, 2.0]), order=2) == pytest.approx(h)
    assert permutation_entropy(np.random.default_rng(7).random(5000)) > 0.99


# --------------------------------------------------------------------------- feature importance


def test_permutation_importance_hand_computed_and_single_call():
    X = np.array([[0.0, 7.0], [1.0, 1.0], [2.0, 4.0], [3.0, 2.0], [4.0, 9.0]])
    calls = []

    def proba(a):  # uses only column 0
        calls.append(a.copy())
        p1 = a[:, 0] / 4
        return np.column_stack([1 - p1, p1])

    fi = permutation_importance(proba, X, seed=0)
    assert len(calls) == 1 and calls[0].shape == (3 * 5, 2)
    stacked = calls[0].reshape(3, 5, 2)
    np.testing.assert_array_equal(stacked[0], X)
    for j in range(2):  # copy j: column j is a permutation, the others are untouched
        np.testing.assert_array_equal(np.sort(stacked[j + 1, :, j]), np.sort(X[:, j]))
        np.testing.assert_array_equal(np.delete(stacked[j + 1], j, axis=1), np.delete(X, j, axis=1))
    permuted = stacked[1, :, 0]
    assert fi[0] == pytest.approx(np.mean(np.abs(X[:, 0] - permuted)) / 4)  # 2 classes: |p1 − q1|
    assert fi[1] == 0.0
    np.testing.assert_array_equal(permutation_importance(proba, X, seed=0), fi)  # seeded


def test_permutation_importance_is_total_variation():
    # p(0) = (0, .5, .5), p(1) = (1, 0, 0): TV = ½(1 + .5 + .5) = 1 when the two rows swap, 0 otherwise.
    X = np.array([[0.0], [1.0]])
    seen = []

    def proba(a):
        seen.append(a.copy())
        x = a[:, 0]
        return np.column_stack([x, (1 - x) / 2, (1 - x) / 2])

    for seed in range(6):
        fi = permutation_importance(proba, X, seed=seed)
        swapped = seen[-1][2, 0] == 1.0
        assert fi[0] == (1.0 if swapped else 0.0)


def test_permutation_importance_used_feature_positive():
    rng = np.random.default_rng(8)
    X = rng.random((75, 3))

    def proba(a):
        p1 = 1 / (1 + np.exp(-10 * (a[:, 2] - 0.5)))
        return np.column_stack([1 - p1, p1])

    fi = permutation_importance(proba, X, seed=3)
    assert fi[0] == 0.0 and fi[1] == 0.0 and fi[2] > 0.1
    assert permutation_importance(proba, np.zeros((0, 3)), seed=0).tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("d", [1, 3, 10])
def test_default_layout_has_10_times_d_plus_4_entries(d):
    layout = MetaInfoLayout([f"f{j}" for j in range(d)])
    assert layout.n == 10 * (d + 4) == len(layout.names)  # spec §3
    assert layout.matrix_shape == (d + 4, 10)
    assert layout.features == META_FEATURES[:10]
    assert layout.sources == (*[f"f{j}" for j in range(d)], *BEHAVIOUR_SOURCES)
    assert layout.supervised.sum() == 10 * len(SUPERVISED_SOURCES) + d
    assert layout.performance.sum() == 10 * len(BEHAVIOUR_SOURCES) + d


def test_layout_entries_are_source_major():
    layout = MetaInfoLayout(["a", "b"])
    assert layout.names[:11] == tuple(f"a.{m}" for m in META_FEATURES[:10]) + ("b.mean",)
    assert layout.index("a", "mean") == 0
    assert layout.index("b", "FI") == 19
    assert layout.index("labels", "mean") == 20
    assert layout.names[layout.index("error_distances", "pacf_2")] == "error_distances.pacf_2"
    with pytest.raises(KeyError):
        layout.index("a", "MI")
    assert layout.supervised[layout.index("a", "FI")] and not layout.supervised[layout.index("a", "mean")]
    assert not layout.supervised[layout.index("labels", "mean")]
    assert layout.supervised[layout.index("correctness", "acf_1")]
    assert layout.performance[layout.index("labels", "mean")] and layout.performance[layout.index("b", "FI")]
    assert not layout.performance[layout.index("b", "skew")]


def test_layout_ignores_and_validates():
    full = MetaInfoLayout(["a", "b", "c"], ignore_features=())
    assert full.n == 14 * 7 and full.features == META_FEATURES
    supervised_only = MetaInfoLayout(["a", "b", "c"], ignore_sources=("features",))
    assert supervised_only.sources == BEHAVIOUR_SOURCES and supervised_only.n == 40
    partial = MetaInfoLayout(["a", "b", "c"], ignore_features=("MI", "IMF_0", "IMF_1", "IMF_2", "skew"),
                             ignore_sources=("b", "labels"))
    assert partial.sources == ("a", "c", "predictions", "correctness", "error_distances")
    assert "skew" not in partial.features and partial.n == 5 * 9
    with pytest.raises(ValueError, match="'kurt'.*kurtosis"):
        MetaInfoLayout(["a"], ignore_features=("kurt",))
    with pytest.raises(ValueError, match="'z'.*'a'.*'labels'"):
        MetaInfoLayout(["a"], ignore_sources=("z",))
    with pytest.raises(ValueError, match="duplicate"):
        MetaInfoLayout(["a", "a"])
    with pytest.raises(ValueError, match="clash"):
        MetaInfoLayout(["labels"])


# --------------------------------------------------------------------------- window vectors


def test_window_metainfo_hand_window():
    # One feature a = [0, 2, 1, 3]; y = [0, 0, 0, 1]; ŷ = [0, 1, 0, 0] -> correctness [1, 0, 1, 0],
    # mistakes at 1 and 3 -> error distances [2].
    layout = MetaInfoLayout(["a"])
    v = window_metainfo(layout, np.array([[0.0], [2.0], [1.0], [3.0]]), [0, 0, 0, 1], [0, 1, 0, 0],
                        importance=np.array([0.3]))
    M = v.reshape(layout.matrix_shape)
    r1, r2 = -0.35, 0.3
    expected = np.array([
        # mean, stdev, skew, kurtosis, tpr, acf_1, acf_2, pacf_1, pacf_2, FI
        [1.5, math.sqrt(5 / 3), 0, -1.36, 0.5, r1, r2, r1, (r2 - r1**2) / (1 - r1**2), 0.3],  # a
        [0.25, 0.5, 2 / math.sqrt(3), -2 / 3, 0, -1 / 12, -1 / 6, -1 / 12, -25 / 143, 0],  # labels
        [0.25, 0.5, 2 / math.sqrt(3), -2 / 3, 0.25, -5 / 12, -1 / 6, -5 / 12, -7 / 17, 0],  # predictions
        [0.5, math.sqrt(1 / 3), 0, -2, 0.5, -0.75, 0.5, -0.75, -1 / 7, 0],  # correctness
        [2, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # error_distances: one value -> mean, std 0, zeros
    ])
    np.testing.assert_allclose(M, expected, atol=1e-14)
    assert v.dtype == np.float64 and v.shape == (layout.n,)


def test_window_metainfo_matches_series_statistics():
    rng = np.random.default_rng(9)
    layout = MetaInfoLayout(["a", "b", "c"])
    X, y, y_hat = rng.random((75, 3)), rng.integers(0, 2, 75), rng.integers(0, 2, 75)
    M = window_metainfo(layout, X, y, y_hat).reshape(layout.matrix_shape)
    correct = (y == y_hat).astype(float)
    np.testing.assert_allclose(M[:3, :9], series_statistics(X), atol=1e-13)
    np.testing.assert_allclose(M[3:6, :9], series_statistics(np.column_stack([y, y_hat, correct])), atol=1e-13)
    np.testing.assert_allclose(M[6, :9], series_statistics(error_distances(correct))[0], atol=1e-13)
    np.testing.assert_array_equal(M[:, 9], 0.0)  # importance=None


def test_window_metainfo_mi_and_imf_entries():
    rng = np.random.default_rng(10)
    layout = MetaInfoLayout(["smooth", "ramp"], ignore_features=())
    X = np.column_stack([ar1(0.95, 75, seed=11), np.arange(75.0)])
    y, y_hat = rng.integers(0, 2, 75), rng.integers(0, 2, 75)
    v = window_metainfo(layout, X, y, y_hat, seed=2)
    assert v[layout.index("smooth", "MI")] == pytest.approx(lag1_mutual_information(X[:, 0], seed=2))
    assert v[layout.index("smooth", "MI")] > 0.5
    imfs = emd_imfs(X[:, 0])
    for k in range(3):
        assert v[layout.index("smooth", f"IMF_{k}")] == pytest.approx(permutation_entropy(imfs[k]))
        assert v[layout.index("ramp", f"IMF_{k}")] == 0.0  # a monotone series has no IMF
    gaps = error_distances((y == y_hat).astype(float))
    assert v[layout.index("error_distances", "IMF_0")] == pytest.approx(permutation_entropy(emd_imfs(gaps)[0]))


@pytest.mark.parametrize("ignore_features", [drift.DEFAULT_IGNORED_FEATURES, ()])
def test_rescoring_with_unsupervised_equals_recomputation(ignore_features):
    rng = np.random.default_rng(12)
    layout = MetaInfoLayout(["a", "b", "c"], ignore_features=ignore_features)
    X, y = rng.random((75, 3)), rng.integers(0, 3, 75)
    first = window_metainfo(layout, X, y, rng.integers(0, 3, 75), importance=rng.random(3))
    other_pred, other_fi = rng.integers(0, 3, 75), rng.random(3)
    rescored = window_metainfo(layout, X, y, other_pred, importance=other_fi, unsupervised=first)
    full = window_metainfo(layout, X, y, other_pred, importance=other_fi)
    np.testing.assert_allclose(rescored, full, rtol=0, atol=1e-15)
    assert not np.allclose(rescored[layout.supervised], first[layout.supervised])
    np.testing.assert_array_equal(rescored[~layout.supervised], first[~layout.supervised])


def test_window_metainfo_short_windows_and_ignored_sources():
    layout = MetaInfoLayout(["a", "b"])
    M = window_metainfo(layout, np.array([[1.0, 4.0], [3.0, 4.0]]), [1, 0], [1, 1],
                        importance=np.array([0.5, 0.5])).reshape(layout.matrix_shape)
    np.testing.assert_allclose(M[:, :2], [[2, math.sqrt(2)], [4, 0], [0.5, math.sqrt(0.5)], [1, 0],
                                          [0.5, math.sqrt(0.5)], [0, 0]])
    np.testing.assert_array_equal(M[:, 2:], 0.0)  # < 3 points: zeros, FI included
    empty = window_metainfo(layout, np.zeros((0, 2)), [], [])
    np.testing.assert_array_equal(empty, 0.0)
    partial = MetaInfoLayout(["a", "b", "c"], ignore_sources=("b", "error_distances"))
    X = np.random.default_rng(13).random((20, 3))
    P = window_metainfo(partial, X, np.zeros(20), np.ones(20), importance=np.array([0.1, 0.2, 0.3]))
    P = P.reshape(partial.matrix_shape)
    np.testing.assert_allclose(P[:2, :9], series_statistics(X[:, [0, 2]]), atol=1e-14)
    np.testing.assert_array_equal(P[:2, 9], [0.1, 0.3])
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        window_metainfo(partial, X[:, :2], np.zeros(20), np.ones(20))


# --------------------------------------------------------------------------- normaliser


def test_normalise_spec_rules():
    out = normalise(np.array([2.0, 5.0, np.nan, -np.inf, np.inf, 7.0]),
                    np.array([0.0, 5.0, 0.0, 0.0, 0.0, np.inf]),
                    np.array([4.0, 5.0, 1.0, 1.0, 1.0, -np.inf]))
    np.testing.assert_array_equal(out, [0.5, 0.5, 0.5, 0.0, 1.0, 0.5])  # zero / unset range -> 0.5
    np.testing.assert_array_equal(normalise(np.array([1.0, 3.0]), 1.0, 5.0), [0.0, 0.5])
    assert normalise(3.0, 3.0, 3.0) == 0.5


def test_normaliser_tracks_range_and_round_trips():
    norm = Normaliser(3)
    np.testing.assert_array_equal(norm.transform(np.array([1.0, 2.0, 3.0])), 0.5)
    assert norm.update(np.array([1.0, 2.0, np.nan]))
    assert not norm.update(np.array([1.0, 2.0, np.inf]))  # non-finite values do not widen the range
    assert norm.update(np.array([3.0, 2.0, 0.0]))
    np.testing.assert_array_equal(norm.lo, [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(norm.hi, [3.0, 2.0, 0.0])
    np.testing.assert_array_equal(norm.range, [2.0, 0.0, 0.0])
    np.testing.assert_array_equal(norm.transform(np.array([2.0, 2.0, -np.inf])), [0.5, 0.5, 0.0])
    state = norm.state_dict()
    assert all(t.dtype == torch.float64 for t in state.values())
    fresh = Normaliser(3)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.lo, norm.lo)
    np.testing.assert_array_equal(fresh.hi, norm.hi)
    state["lo"][0] = -5.0  # the state is a copy
    assert norm.lo[0] == 1.0
    with pytest.raises(KeyError):
        fresh.load_state_dict({"lo": state["lo"]})
    with pytest.raises(ValueError):
        Normaliser(2).load_state_dict(norm.state_dict())


# --------------------------------------------------------------------------- fingerprint


def test_welford_matches_numpy():
    data = np.random.default_rng(14).normal(3.0, 2.0, size=(500, 7))
    fp = WelfordFingerprint(7)
    for row in data:
        fp.absorb(row)
    np.testing.assert_allclose(fp.mean, data.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fp.std, data.std(axis=0, ddof=1), rtol=0, atol=1e-12)
    assert fp.n_absorbed == 500 and np.all(fp.count == 500)


def test_welford_small_counts_reset_copy_and_round_trip():
    fp = WelfordFingerprint(2)
    np.testing.assert_array_equal(fp.std, 0.0)
    fp.absorb(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(fp.std, 0.0)  # count < 2
    fp.absorb(np.array([3.0, 2.0]))
    np.testing.assert_allclose(fp.mean, [2.0, 2.0])
    np.testing.assert_allclose(fp.std, [math.sqrt(2.0), 0.0])
    snapshot = fp.copy()
    fp.reset_entries(np.array([True, False]))
    np.testing.assert_allclose(fp.count, [0.1, 2.0])
    np.testing.assert_allclose(fp.mean, [2.0, 2.0])  # the mean is kept
    fp.absorb(np.array([13.0, 2.0]))
    assert fp.mean[0] == pytest.approx((0.1 * 2.0 + 13.0) / 1.1)  # the old mean weighs 0.1 window
    assert fp.std[0] == 0.0  # count 1.1 < 2
    fp.absorb(np.array([13.0, 2.0]))
    # frequency-weighted: values 2 (weight .1), 13, 13 -> M2 = Σ w (x − mean)², std = sqrt(M2 / (2.1 − 1))
    mean = (0.1 * 2 + 26) / 2.1
    m2 = 0.1 * (2 - mean) ** 2 + 2 * (13 - mean) ** 2
    assert fp.mean[0] == pytest.approx(mean) and fp.std[0] == pytest.approx(math.sqrt(m2 / 1.1))
    assert fp.n_absorbed == 4 and snapshot.n_absorbed == 2
    np.testing.assert_allclose(snapshot.mean, [2.0, 2.0])  # the copy is independent
    untouched = WelfordFingerprint(1)
    untouched.reset_entries(np.array([True]))
    assert untouched.count[0] == 0.0  # never absorbed: stays at 0
    state = fp.state_dict()
    assert state["mean"].dtype == torch.float64 and state["n_absorbed"].dtype == torch.int64
    fresh = WelfordFingerprint(2)
    fresh.load_state_dict(state)
    for name in ("count", "mean", "m2"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(fp, name))
    np.testing.assert_array_equal(fresh.std, fp.std)
    assert fresh.n_absorbed == 4
    with pytest.raises(KeyError):
        fresh.load_state_dict({**state, "extra": torch.zeros(2)})


# --------------------------------------------------------------------------- weights


def test_weights_separating_feature_gets_one_and_equal_means_get_zero():
    # entry 0: constant within each concept, different across; entry 1: noisy, equal concept means;
    # entry 2: moderately separated and noisy.
    lo, hi = np.zeros(3), np.ones(3)
    fps = [(np.array([0.1, 0.5, 0.4]), np.array([0.0, 0.2, 0.1])),
           (np.array([0.9, 0.5, 0.6]), np.array([0.0, 0.2, 0.1]))]
    w = dynamic_weights(fps, lo, hi)
    assert w[0] == 1.0
    assert w[1] == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < w[2] < 1.0


def test_weights_hand_computed_two_concepts():
    lo, hi = np.zeros(3), np.array([1.0, 2.0, 0.0])  # r = (1, 2, 0)
    a = (np.array([0.2, 1.0, 0.0]), np.array([0.0, 0.1, 0.0]))
    b = (np.array([0.8, 1.0, 0.0]), np.array([0.04, 0.3, 0.0]))
    # s = (0.02, 0.1, ·), k = (0.5, 0.1, ·); v_a = (0.1, 0.05), v_b = (0.4, 0.05); inter = (0.15, 0).
    w = dynamic_weights([a, b], lo, hi)
    np.testing.assert_allclose(w, [1.0, 0.0, 0.0], atol=1e-15)  # r = 0 -> NaN -> min finite (0)
    # state 0 (fingerprint a) has a non-active fingerprint with mean (0.5, 2.0):
    # scaled [a, na] = (0.1, 0.25) and (0.05, 0.1) -> seg = (0.075, 0.025); w = max -> (0.15, 0.025).
    w = dynamic_weights([a, b], lo, hi, nonactive={0: [np.array([0.5, 2.0, 0.0])]}, state_means={0: a[0]})
    np.testing.assert_allclose(w, [1.0, 1 / 6, 1 / 6], rtol=1e-12)
    # states without their own fingerprint mean, or without non-active fingerprints, do not contribute
    same = dynamic_weights([a, b], lo, hi, nonactive={0: [np.array([0.5, 2.0, 0.0])], 1: [], 2: [a[0]]},
                           state_means={0: a[0], 1: b[0]})
    np.testing.assert_allclose(same, w, rtol=1e-12)
    np.testing.assert_allclose(dynamic_weights([a, b], lo, hi, nonactive={0: [b[0]]}), [1.0, 0.0, 0.0], atol=1e-15)


def test_weights_with_fewer_than_two_fingerprints_and_degenerate_ranges():
    lo, hi = np.zeros(3), np.array([1.0, 1.0, 1.0])
    w = dynamic_weights([(np.zeros(3), np.array([0.0, 0.02, 0.04]))], lo, hi)
    np.testing.assert_allclose(w, [1.0, 0.5, 0.25])  # k = 0.01 / max(s, 0.01)
    np.testing.assert_array_equal(dynamic_weights([], lo, hi), np.ones(3))
    unset = Normaliser(3)
    np.testing.assert_array_equal(dynamic_weights([], unset.lo, unset.hi), np.ones(3))  # none finite -> 1
    same = [(np.full(3, 0.5), np.zeros(3))] * 2
    np.testing.assert_array_equal(dynamic_weights(same, lo, hi), np.ones(3))  # all zero -> uniform
    np.testing.assert_array_equal(uniform_weights(4), np.ones(4))


# --------------------------------------------------------------------------- distance and acceptance


def test_weighted_cosine_distance_spec_cases():
    assert weighted_cosine_distance([1, 0], [1, 1], [1, 0]) == pytest.approx(0.0)
    assert weighted_cosine_distance([0, 0], [0, 0], [1, 1]) == 0.0
    assert weighted_cosine_distance([0, 0], [0, 2], [1, 1]) == 1.0
    assert weighted_cosine_distance([1, 0], [0, 1], [1, 1]) == pytest.approx(1.0)
    assert weighted_cosine_distance([1, 0], [1, 1], [1, 1]) == pytest.approx(1 - 1 / math.sqrt(2))
    rng = np.random.default_rng(15)
    for _ in range(50):  # identical vectors: rounding may leave ±1e-16, never below 0
        a = rng.random(70)
        d = weighted_cosine_distance(a, a, rng.random(70))
        assert 0.0 <= d < 1e-15
    # w = (1, 4): Σwab = 1·1·2 + 4·1·1 = 6; |a|_w = √5, |b|_w = √8
    assert weighted_cosine_distance([1, 1], [2, 1], [1, 4]) == pytest.approx(1 - 6 / math.sqrt(40))


def test_z_value_and_acceptance_hand_values():
    assert z_value(0.2, 0.1, 0.05) == pytest.approx(3.0)
    assert z_value(0.2, 0.1, 0.001) == pytest.approx(11.0)  # σ clipped to 0.01
    assert z_value(0.2, 0.1, 1.0) == pytest.approx(2.0)  # σ clipped to 0.1
    assert z_value(0.2, 0.1, float("nan")) == pytest.approx(2.0)
    accept, score = acceptance(0.2, 0.1, 0.05)
    assert accept and score == pytest.approx(1 - 0.2 * 3)
    accept, score = acceptance(0.2, 0.1, 0.001)
    assert not accept and score == pytest.approx(1 - 0.2 * 11)
    assert acceptance(0.0005, 0.0, 0.0)[0]  # d < 0.001 always accepts
    assert acceptance(0.25, 0.1, 0.05, sim_stdevs=3.0)[0] and not acceptance(0.26, 0.1, 0.05)[0]
