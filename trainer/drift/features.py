"""FiCSUM meta-information: the statistics that turn a window of a stream into one fixed-length vector.

Paper: "Fingerprinting Concepts in Data Streams with Supervised and Unsupervised Meta-Information"
(Halstead, Koh, Riddle, Pears, Pechenizkiy, Bifet; ICDE 2021, arXiv 2603.11094). A window of a
classification stream is described by many *behaviour sources* (each input feature, the labels, the
predictions of the classifier being evaluated, its correctness and the gaps between its mistakes); every
source is summarised by the same *meta-features* (moments, turning-point rate, autocorrelation, partial
autocorrelation, feature importance and, optionally, lag-1 mutual information and the permutation entropy
of EMD intrinsic mode functions). The concatenation is the window's meta-information vector, which the
fingerprints of :mod:`trainer.drift.fingerprint` summarise per concept. Specification:
``papers/ficsum.md`` §3 ("Behaviour sources", "Meta-features"), §4 and §6.

Used by the FiCSUM drift engine and therefore by every ``yaml/ficsum/*.yaml`` run with the ``fingerprint``
detector or re-identifier.

Speed: :func:`window_metainfo` runs every ``sim_gap`` (3) observations, so all sources of a window
are summarised by one vectorised statistics call on an ``(n, S)`` array, ``error_distances`` (whose length
differs) as a zero-padded, masked column of the same array. MI and the IMF entropies are off by default
(spec) and are orders of magnitude slower (a kNN estimator; spline sifting: about 27 ms per window for d=3).

Deviations and choices (all documented where they occur):

- FI is the permutation proxy of ficsum.md §3 (the paper uses Σ|SHAP| of a tree explainer; §4 item 4),
  measured as the total-variation distance between class-probability vectors, which for two classes is
  exactly the spec's |p̂(x) − p̂(x')| of the positive class.
- pacf uses Durbin–Levinson on the same ρ as acf (the authors call statsmodels' Yule–Walker pacf; the spec
  does not require parity).
- A constant series (scipy's rule: m2 ≤ (ε·mean)², so rounding noise counts as constant) has std 0,
  skew 0 and kurtosis 0 (defined here; scipy returns NaN) and acf/pacf −1 (the spec's NaN rule).
- MI needs at least 5 points (4 lag pairs: the 3-nearest-neighbour estimator needs 4 samples), else 0.
- EMD is a deliberately simple sifting procedure of our own (see :func:`emd_imfs`).
- Labels and predictions must be numeric (encode string classes before calling).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.interpolate import CubicSpline

__all__ = [
    "META_FEATURES",
    "DEFAULT_IGNORED_FEATURES",
    "BEHAVIOUR_SOURCES",
    "SUPERVISED_SOURCES",
    "error_distances",
    "series_statistics",
    "lag1_mutual_information",
    "emd_imfs",
    "permutation_entropy",
    "permutation_importance",
    "MetaInfoLayout",
    "window_metainfo",
]

#: Every meta-feature, in vector order (ficsum.md §3 "Meta-features").
META_FEATURES = (
    "mean", "stdev", "skew", "kurtosis", "turning_point_rate", "acf_1", "acf_2",
    "pacf_1", "pacf_2", "FI", "MI", "IMF_0", "IMF_1", "IMF_2",
)
#: The spec's default: MI and the IMF entropies are off (ficsum.md §3, "default" column; §3 Defaults).
DEFAULT_IGNORED_FEATURES = ("MI", "IMF_0", "IMF_1", "IMF_2")
#: Sources other than the input features (ficsum.md §3 "Behaviour sources"); the authors' "errors" source
#: holds correctness and is named for it here (ficsum.md §4 item 3).
BEHAVIOUR_SOURCES = ("labels", "predictions", "correctness", "error_distances")
#: Sources that depend on the classifier being evaluated (recomputed when another state scores a window).
SUPERVISED_SOURCES = ("predictions", "correctness", "error_distances")

#: The columns of :func:`series_statistics`, a prefix of :data:`META_FEATURES`.
_STATISTICS = META_FEATURES[:9]
_EPS = np.finfo(np.float64).resolution  # scipy.stats' tolerance for a constant series


def error_distances(correctness: np.ndarray) -> np.ndarray:
    """Index gaps between successive mistakes of a window (ficsum.md §3 "Behaviour sources").

    Args:
        correctness: 1 where the prediction was right, 0 where it was a mistake.

    Returns:
        ``np.diff`` of the mistake positions as float64, or ``[0.]`` if there are fewer than 2 mistakes.
        Example (spec §6): ``[1, 0, 1, 1, 0, 0] -> [3., 1.]``.
    """
    wrong = np.flatnonzero(np.asarray(correctness) == 0)
    if wrong.size < 2:
        return np.zeros(1)  # ficsum.md §3: "[0] if fewer than 2"
    return np.diff(wrong).astype(np.float64)  # ficsum.md §3: gaps between successive mistakes


def series_statistics(x: np.ndarray) -> np.ndarray:
    """The nine moment/autocorrelation meta-features of every column of ``x`` at once (ficsum.md §3).

    Args:
        x: an ``(n, S)`` array of ``S`` series of equal length ``n`` (a 1-D array is one series).

    Returns:
        ``(S, 9)`` float64, columns ``mean, stdev, skew, kurtosis, turning_point_rate, acf_1, acf_2,
        pacf_1, pacf_2``:

        - stdev is the sample std (ddof 1); skew the biased skewness m3/m2^1.5; kurtosis the biased Fisher
          excess m4/m2² − 3 (scipy.stats ``bias=True, fisher=True``);
        - turning_point_rate = #{t : (x_{t+1} − x_t)(x_t − x_{t−1}) < 0} / n;
        - acf_k = ρ_k = Σ_t (x_t − x̄)(x_{t+k} − x̄) / Σ_t (x_t − x̄)², NaN → −1;
        - pacf by Durbin–Levinson on the same ρ: pacf_1 = ρ_1, pacf_2 = (ρ_2 − ρ_1²)/(1 − ρ_1²); a zero or
          negative denominator (failure) or a NaN ρ gives −1.

        A series with n < 3 gets its mean, its std (0 if n < 2; mean 0 if n = 0) and zeros elsewhere.
        A constant series (m2 ≤ (ε·mean)², scipy's test) gets std 0, skew 0, kurtosis 0 (our definition)
        and acf = pacf = −1 (its ρ is 0/0 = NaN).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return _statistics(x, None)


def _statistics(x: np.ndarray, length: np.ndarray | None) -> np.ndarray:
    """:func:`series_statistics` of zero-padded columns: column j holds a series of ``length[j]`` points.

    ``length=None`` means every column is full. The padding must be zeros; deviations are masked, so the
    padded tail adds nothing to the sums, to ρ (a lag product with a padded point is 0) or to the turning
    points (masked). This lets one call cover the window sources and ``error_distances`` together.
    """
    n, n_series = x.shape
    out = np.zeros((n_series, 9))
    ragged = length is not None
    if ragged:
        size = length.astype(np.float64)
        short = size < 3
        denom_n = np.maximum(size, 1.0)
    else:
        if n == 0:
            return out
        size = denom_n = float(n)
        short = None
    mean = x.sum(axis=0) / denom_n  # ficsum.md §3: mean
    out[:, 0] = mean
    if not ragged and n < 3:  # ficsum.md §3: a window of < 3 points gets mean, std and zeros
        if n == 2:
            dev = x - mean
            out[:, 1] = np.sqrt((dev * dev).sum(axis=0))
        return out
    dev = x - mean
    if ragged:
        mask = np.arange(n)[:, None] < length
        dev *= mask
    dev2 = dev * dev
    ss = dev2.sum(axis=0)
    m2 = ss / denom_n
    flat = m2 <= (_EPS * mean) ** 2  # constant series (rounding noise included), as scipy.stats
    if ragged:
        flat &= ~short
        fix = flat | short
    else:
        fix = flat
    any_fix = bool(fix.any())
    if any_fix:
        ss_raw = ss
        ss = np.where(fix, 1.0, ss)  # placeholders; these columns are overwritten below
        m2 = np.where(fix, 1.0, m2)
    m3 = np.einsum("ij,ij->j", dev2, dev) / denom_n
    m4 = np.einsum("ij,ij->j", dev2, dev2) / denom_n
    out[:, 1] = np.sqrt(ss / np.maximum(size - 1.0, 1.0))  # ficsum.md §3: sample std (ddof 1)
    out[:, 2] = m3 / m2**1.5  # ficsum.md §3: biased skewness
    out[:, 3] = m4 / (m2 * m2) - 3.0  # ficsum.md §3: Fisher excess kurtosis (biased)
    step = x[1:] - x[:-1]
    turns = step[1:] * step[:-1] < 0  # ficsum.md §3: (x_{t+1} − x_t)(x_t − x_{t−1}) < 0
    if ragged:
        turns &= mask[2:]
    out[:, 4] = turns.sum(axis=0) / denom_n  # ficsum.md §3: turning-point rate
    rho1 = np.einsum("ij,ij->j", dev[:-1], dev[1:]) / ss  # ficsum.md §3: ρ_1
    rho2 = np.einsum("ij,ij->j", dev[:-2], dev[2:]) / ss  # ficsum.md §3: ρ_2
    out[:, 5] = rho1
    out[:, 6] = rho2
    out[:, 7] = rho1  # ficsum.md §3: Durbin–Levinson, pacf_1 = ρ_1
    denom = 1.0 - rho1 * rho1
    ok = denom > 0.0
    if ok.all():
        out[:, 8] = (rho2 - rho1 * rho1) / denom  # ficsum.md §3: pacf_2 = (ρ_2 − ρ_1²)/(1 − ρ_1²)
    else:
        out[:, 8] = -1.0  # ficsum.md §3: pacf failure -> −1
        out[ok, 8] = (rho2[ok] - rho1[ok] ** 2) / denom[ok]
    if any_fix:
        out[flat, 1:4] = 0.0  # constant: std, skew and kurtosis are 0 (our definition)
        out[flat, 5:9] = -1.0  # ficsum.md §3: ρ = 0/0 is NaN -> −1, and so are the pacf
        if ragged and short.any():
            out[short, 2:] = 0.0  # ficsum.md §3: < 3 points -> mean, std and zeros
            two = size == 2
            out[two, 1] = np.sqrt(ss_raw[two])  # ddof 1 with n = 2
            out[size < 2, 1] = 0.0
    return out


def lag1_mutual_information(x: np.ndarray, seed: int = 0) -> float:
    """Lag-1 self mutual information of a series, in nats (ficsum.md §3 "MI", off by default).

    The kNN estimator of scikit-learn's ``mutual_info_regression`` of ``x[1:]`` on ``x[:-1]`` with
    ``n_neighbors=3`` and ``random_state=seed`` (it adds seeded jitter of relative size 1e-10).

    Args:
        x: a 1-D series.
        seed: the estimator's ``random_state``.

    Returns:
        The estimate (clipped at 0 by scikit-learn); 0 for a constant series or fewer than 5 points
        (the estimator needs 4 lag pairs for 3 neighbours).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size < 5 or x.min() == x.max():
        return 0.0
    from sklearn.feature_selection import mutual_info_regression  # heavy import, only when MI is on

    mi = mutual_info_regression(x[:-1, None], x[1:], n_neighbors=3, random_state=seed)  # ficsum.md §3: MI
    return float(mi[0])


def _extrema(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interior local maxima and minima of ``h`` (the first point of a plateau counts)."""
    step = h[1:] - h[:-1]
    maxima = np.flatnonzero((step[:-1] > 0) & (step[1:] <= 0)) + 1
    minima = np.flatnonzero((step[:-1] < 0) & (step[1:] >= 0)) + 1
    return maxima, minima


def _envelope(t: np.ndarray, h: np.ndarray, idx: np.ndarray, upper: bool) -> np.ndarray:
    """Cubic spline through the extrema ``idx``, anchored at both ends of the series.

    End rule: each end knot takes the more extreme of the end value and the nearest extremum, so the
    envelope neither dips inside the signal at the boundary nor needs mirrored extrema.
    """
    pick = max if upper else min
    knots = np.concatenate(([0], idx, [h.size - 1]))
    values = h[knots]
    values[0] = pick(h[0], h[idx[0]]) if idx.size else h[0]
    values[-1] = pick(h[-1], h[idx[-1]]) if idx.size else h[-1]
    return CubicSpline(knots, values)(t)


def emd_imfs(x: np.ndarray, n_imfs: int = 3, max_sifts: int = 10, return_residue: bool = False):
    """The first intrinsic mode functions of a simple empirical mode decomposition (ficsum.md §3 "IMF").

    Sifting: the candidate ``h`` (initially the residue) loses the mean of its upper and lower cubic-spline
    envelopes (:class:`scipy.interpolate.CubicSpline` through the local maxima / minima, plus both end
    points, see :func:`_envelope`) until ``max_sifts`` sifts were made or the candidate is an IMF: its
    numbers of extrema and zero crossings differ by at most one and the envelope mean carries less than 5 %
    of its energy. The IMF is then subtracted from the residue. When the residue has fewer than 2 extrema
    (monotone, or too short) the remaining IMFs are zeros. By construction
    ``imfs.sum(0) + residue == x`` up to rounding.

    Args:
        x: a 1-D series.
        n_imfs: how many IMFs to return (3 in the spec).
        max_sifts: the most sifts per IMF.
        return_residue: also return the final residue.

    Returns:
        ``(n_imfs, n)`` float64 (and the ``(n,)`` residue if ``return_residue``).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    imfs = np.zeros((n_imfs, n))
    residue = x.copy()
    t = np.arange(n, dtype=np.float64)
    for i in range(n_imfs):
        maxima, minima = _extrema(residue)
        if maxima.size + minima.size < 2:
            break  # the residue is (nearly) monotone: remaining IMFs stay zero
        h = residue.copy()
        for _ in range(max_sifts):
            maxima, minima = _extrema(h)
            if maxima.size + minima.size < 2:
                break
            env_mean = 0.5 * (_envelope(t, h, maxima, True) + _envelope(t, h, minima, False))
            h = h - env_mean
            maxima, minima = _extrema(h)
            crossings = np.count_nonzero(h[1:] * h[:-1] < 0)
            if abs(maxima.size + minima.size - crossings) <= 1 and env_mean @ env_mean < 0.05 * (h @ h):
                break  # the candidate is an IMF
        imfs[i] = h
        residue = residue - h
    return (imfs, residue) if return_residue else imfs


def permutation_entropy(x: np.ndarray, order: int = 3, delay: int = 1) -> float:
    """Normalised permutation entropy (Bandt–Pompe) of a series, in [0, 1] (ficsum.md §3 "IMF").

    Each embedded vector ``(x_t, x_{t+delay}, …)`` of ``order`` points is replaced by its ordinal pattern
    (ties ranked by position, so a constant run is "increasing"); the Shannon entropy of the pattern
    frequencies is divided by log(order!).

    Args:
        x: a 1-D series.
        order: pattern length.
        delay: lag between the points of a pattern.

    Returns:
        The entropy; 0 for a monotone or constant series and for a series too short to hold 2 patterns.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    span = (order - 1) * delay + 1
    if order < 2 or x.size - span + 1 < 2:
        return 0.0
    emb = sliding_window_view(x, span)[:, ::delay]
    ranks = np.argsort(emb, axis=1, kind="stable")
    codes = ranks @ (order ** np.arange(order))
    counts = np.unique(codes, return_counts=True)[1]
    if counts.size == 1:
        return 0.0
    p = counts / emb.shape[0]
    return float(-(p * np.log(p)).sum() / math.log(math.factorial(order)))


def permutation_importance(
    proba_fn: Callable[[np.ndarray], np.ndarray], X: np.ndarray, seed: int
) -> np.ndarray:
    """Permutation proxy of each feature's importance for a classifier over a window (ficsum.md §3 "FI").

    FI_j = mean_t TV(p̂(x_t), p̂(x_t with x_tj replaced by x_{π_j(t), j})), with π_j a seeded permutation of
    the window and TV(p, q) = ½ Σ_c |p_c − q_c| the total-variation distance; for 2 classes it equals the
    spec's |p̂_1(x) − p̂_1(x')|. This is the documented deviation from the paper's Σ|SHAP| (ficsum.md §4).

    ``proba_fn`` is called **once**, on the window stacked with its ``d`` permuted copies (``(d+1)·n``
    rows: the original rows first, then copy j with column j permuted).

    Args:
        proba_fn: maps an ``(m, d)`` array to ``(m, C)`` class probabilities.
        X: the ``(n, d)`` window.
        seed: seed of ``numpy.random.default_rng`` drawing the ``d`` permutations.

    Returns:
        ``(d,)`` float64 importances in [0, 1]; zeros for an empty window.
    """
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    if n == 0 or d == 0:
        return np.zeros(d)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(np.arange(n), (d, 1)), axis=1)  # ficsum.md §3: seeded permutations
    cols = np.arange(d)[:, None]
    stacked = np.empty((d + 1, n, d))
    stacked[:] = X
    stacked[cols + 1, np.arange(n)[None, :], cols] = X[perms, cols]  # copy j: column j permuted
    proba = np.asarray(proba_fn(stacked.reshape((d + 1) * n, d)), dtype=np.float64).reshape(d + 1, n, -1)
    tv = 0.5 * np.abs(proba[1:] - proba[0]).sum(axis=2)  # ficsum.md §3: |p̂(x) − p̂(x')| (as TV)
    return tv.mean(axis=1)  # ficsum.md §3: mean over the window


class MetaInfoLayout:
    """The fixed layout of a meta-information vector: which (source, meta-feature) sits where.

    Entries are source-major: for each kept source (the kept input features in ``feature_names`` order,
    then the kept :data:`BEHAVIOUR_SOURCES`), each kept meta-feature in :data:`META_FEATURES` order.
    With the defaults there are 10·(d+4) entries (ficsum.md §3).

    Args:
        feature_names: names of the input features, in the column order of the windows ``X`` given to
            :func:`window_metainfo`. No default.
        ignore_features: meta-features to leave out (default :data:`DEFAULT_IGNORED_FEATURES`, the spec's
            MI and IMF off).
        ignore_sources: sources to leave out: feature names, behaviour-source names, or ``"features"`` for
            every input feature (the supervised-only ablation). Default none.

    Raises:
        ValueError: an unknown meta-feature or source (the message names it and the valid ones), a
            duplicated feature name or one that clashes with a behaviour source, or nothing left.

    Attributes:
        sources, features, names: the kept sources, the kept meta-features and the ``"source.feature"``
            entry names (tuples).
        n: the vector length.
        supervised: bool mask of entries that depend on the evaluated classifier
            (:data:`SUPERVISED_SOURCES` entries and the FI entries of feature sources).
        performance: bool mask of the performance-dependent entries that drop at evolution
            (labels, predictions, correctness, error_distances and every FI entry; ficsum.md §3).
        matrix_shape: ``(len(sources), len(features))``; ``vector.reshape(matrix_shape)`` is a heatmap.
        feature_names: the given feature names (all ``d`` columns of ``X``).
        feature_columns: the columns of ``X`` of the kept feature sources.
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        ignore_features: Sequence[str] = DEFAULT_IGNORED_FEATURES,
        ignore_sources: Sequence[str] = (),
    ) -> None:
        self.feature_names = tuple(str(f) for f in feature_names)
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"duplicate feature names in {self.feature_names}")
        clash = set(self.feature_names) & (set(BEHAVIOUR_SOURCES) | {"features"})
        if clash:
            raise ValueError(f"feature names {sorted(clash)} clash with behaviour sources {BEHAVIOUR_SOURCES}")
        for name in ignore_features:
            if name not in META_FEATURES:
                raise ValueError(f"unknown meta-feature {name!r} in ignore_features; valid: {META_FEATURES}")
        valid_sources = (*self.feature_names, *BEHAVIOUR_SOURCES, "features")
        for name in ignore_sources:
            if name not in valid_sources:
                raise ValueError(f"unknown source {name!r} in ignore_sources; valid: {valid_sources}")
        drop = set(ignore_sources)
        if "features" in drop:
            drop |= set(self.feature_names)
        self.feature_columns = np.array(
            [j for j, f in enumerate(self.feature_names) if f not in drop], dtype=np.intp
        )
        self.feature_sources = tuple(self.feature_names[j] for j in self.feature_columns)
        self.behaviour_sources = tuple(s for s in BEHAVIOUR_SOURCES if s not in drop)
        self.sources = self.feature_sources + self.behaviour_sources  # ficsum.md §3: behaviour sources
        self.features = tuple(m for m in META_FEATURES if m not in set(ignore_features))
        if not self.sources or not self.features:
            raise ValueError("the layout keeps no source or no meta-feature")
        self.matrix_shape = (len(self.sources), len(self.features))
        self.n = self.matrix_shape[0] * self.matrix_shape[1]
        self.names = tuple(f"{s}.{m}" for s in self.sources for m in self.features)
        self._index = {(s, m): i for i, (s, m) in enumerate(itertools.product(self.sources, self.features))}
        src = np.repeat(np.array(self.sources, dtype=object), len(self.features))
        feat = np.tile(np.array(self.features, dtype=object), len(self.sources))
        is_feature_src = np.isin(src, np.array(self.feature_sources, dtype=object))
        self.supervised = np.isin(src, np.array(SUPERVISED_SOURCES, dtype=object)) | (is_feature_src & (feat == "FI"))
        self.performance = ~is_feature_src | (feat == "FI")  # ficsum.md §3 "Evolution"

        # Precomputed placement (scaffolding for window_metainfo).
        self._stat_cols = np.array([i for i, m in enumerate(_STATISTICS) if m in self.features], dtype=np.intp)
        self._stat_pos = np.array([self.features.index(m) for m in _STATISTICS if m in self.features], dtype=np.intp)
        self._all_stats = self._stat_cols.size == 9 and bool((self._stat_pos == np.arange(9)).all())
        self._fi_pos = self.features.index("FI") if "FI" in self.features else None
        self._mi_pos = self.features.index("MI") if "MI" in self.features else None
        self._imf_pos = [(int(m[4:]), self.features.index(m)) for m in self.features if m.startswith("IMF_")]
        row = {s: i for i, s in enumerate(self.sources)}
        self._has_error_distances = int("error_distances" in row)
        self._full_sources = tuple(s for s in self.behaviour_sources if s != "error_distances")
        self._supervised_sources = tuple(s for s in ("predictions", "correctness") if s in row)
        tail = [row["error_distances"]] if self._has_error_distances else []
        nf = self.feature_columns.size
        self._full_rows = np.array([*range(nf), *(row[s] for s in self._full_sources), *tail], dtype=np.intp)
        self._supervised_rows = np.array([*(row[s] for s in self._supervised_sources), *tail], dtype=np.intp)

    def index(self, source: str, feature: str) -> int:
        """Position of the ``(source, feature)`` entry in the vector; ``KeyError`` if it is not kept."""
        try:
            return self._index[(source, feature)]
        except KeyError:
            raise KeyError(f"no entry {source}.{feature}; sources {self.sources}, features {self.features}") from None

    def __repr__(self) -> str:
        return f"MetaInfoLayout(sources={self.sources}, features={self.features})"


def _fill_rows(
    layout: MetaInfoLayout, M: np.ndarray, rows: np.ndarray, series: np.ndarray, length: np.ndarray | None, seed: int
) -> None:
    """Write the meta-features of the (zero-padded) columns of ``series`` into rows ``rows`` of ``M``."""
    stats = _statistics(series, length)
    if layout._all_stats:
        M[rows, :9] = stats
    elif layout._stat_cols.size:
        M[np.ix_(rows, layout._stat_pos)] = stats[:, layout._stat_cols]
    if layout._mi_pos is None and not layout._imf_pos:
        return
    # MI and IMF entries are written for every row (0 for short series), so a re-scored row never keeps
    # a value of another classifier.
    need = max((k for k, _ in layout._imf_pos), default=-1) + 1
    for j, r in enumerate(rows):
        col = series[: series.shape[0] if length is None else length[j], j]
        if layout._mi_pos is not None:
            M[r, layout._mi_pos] = lag1_mutual_information(col, seed)  # ficsum.md §3: MI
        if need:
            imfs = emd_imfs(col, n_imfs=need)
            for k, pos in layout._imf_pos:
                M[r, pos] = permutation_entropy(imfs[k])  # ficsum.md §3: PE of the EMD IMFs


def window_metainfo(
    layout: MetaInfoLayout,
    X: np.ndarray,
    y: np.ndarray,
    y_hat: np.ndarray,
    importance: np.ndarray | None = None,
    seed: int = 0,
    unsupervised: np.ndarray | None = None,
) -> np.ndarray:
    """The meta-information vector of one window (ficsum.md §3).

    All sources, ``error_distances`` included (zero-padded), are summarised by one vectorised statistics
    call.

    Args:
        layout: the vector layout.
        X: ``(n, d)`` window features, one column per ``layout.feature_names`` entry (ignored sources'
            columns are skipped).
        y: the ``n`` labels (numeric).
        y_hat: the ``n`` predictions of the classifier being evaluated; correctness = ``(y_hat == y)``.
        importance: ``(d,)`` FI of each feature for that classifier (e.g. :func:`permutation_importance`);
            ``None`` gives zeros. FI of a non-feature source is always 0 (spec).
        seed: ``random_state`` of the MI estimator (only used when MI is kept).
        unsupervised: a previous vector of this same window (any classifier): its non-supervised entries
            are copied and only the ``layout.supervised`` ones are computed (scoring a window with another
            state's classifier; ficsum.md §3 "Fingerprint").

    Returns:
        ``(layout.n,)`` float64. A window of fewer than 3 points gets each source's mean and std and zeros
        elsewhere, FI included.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(layout.feature_names):
        raise ValueError(f"X must be (n, {len(layout.feature_names)}), got {X.shape}")
    n = X.shape[0]
    y = np.asarray(y, dtype=np.float64).ravel()
    y_hat = np.asarray(y_hat, dtype=np.float64).ravel()
    correct = (y_hat == y).astype(np.float64)  # ficsum.md §3: correctness (1 if ŷ = y)
    if unsupervised is None:
        M = np.zeros(layout.matrix_shape)
        window_sources, rows, nf = layout._full_sources, layout._full_rows, layout.feature_columns.size
    else:
        unsupervised = np.asarray(unsupervised, dtype=np.float64)
        if unsupervised.shape != (layout.n,):
            raise ValueError(f"unsupervised must have shape ({layout.n},), got {unsupervised.shape}")
        M = unsupervised.reshape(layout.matrix_shape).copy()
        window_sources, rows, nf = layout._supervised_sources, layout._supervised_rows, 0
    n_cols = nf + len(window_sources) + layout._has_error_distances
    if n_cols:
        columns = {"labels": y, "predictions": y_hat, "correctness": correct}
        if layout._has_error_distances:
            gaps = error_distances(correct)
            series = np.zeros((max(n, gaps.size), n_cols))
            series[: gaps.size, -1] = gaps
            length = np.full(n_cols, n)
            length[-1] = gaps.size
        else:
            series = np.empty((n, n_cols))
            length = None
        if nf:
            series[:n, :nf] = X if nf == X.shape[1] else X[:, layout.feature_columns]
        for i, s in enumerate(window_sources):
            series[:n, nf + i] = columns[s]
        _fill_rows(layout, M, rows, series, length, seed)
    if layout._fi_pos is not None and layout.feature_columns.size:
        if importance is None or n < 3:
            M[: layout.feature_columns.size, layout._fi_pos] = 0.0  # ficsum.md §3: < 3 points -> zeros
        else:
            M[: layout.feature_columns.size, layout._fi_pos] = np.asarray(importance, dtype=np.float64)[
                layout.feature_columns
            ]  # ficsum.md §3: FI of feature j
    return M.ravel()
