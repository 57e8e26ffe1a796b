"""FiCSUM fingerprints: normaliser, Welford fingerprint, dynamic weights, weighted cosine distance, acceptance.

Paper: "Fingerprinting Concepts in Data Streams with Supervised and Unsupervised Meta-Information"
(Halstead, Koh, Riddle, Pears, Pechenizkiy, Bifet; ICDE 2021, arXiv 2603.11094). Each concept keeps a
fingerprint, the running mean and std of the (normalised) meta-information vectors of its windows
(:mod:`trainer.drift.features`). A window is compared with a fingerprint by a cosine distance whose
per-entry weights favour meta-features that are stable within a concept and differ between concepts
(dynamic weights); drift is a rise of that distance, and a stored concept is re-identified when its
distance lies within a few standard deviations of its usual ("normal") distances. Specification:
``papers/ficsum.md`` §3 ("Normaliser", "Fingerprint", "Dynamic weights", "Distance", "Detection",
"Re-identification") and §6.

Used by the FiCSUM drift engine and therefore by every ``yaml/ficsum/*.yaml`` run with the ``fingerprint``
detector or re-identifier. Pure numpy (float64); state dicts hold ``torch.float64`` tensors so that they
travel inside Lightning checkpoints.

Choices the spec leaves open (documented where they occur):

- :class:`Normaliser` ignores non-finite values when tracking the range (one ±inf would pin it forever);
  :func:`normalise` does not clip values outside the range.
- :class:`WelfordFingerprint` counts are floats so that :meth:`~WelfordFingerprint.reset_entries` can give
  the kept mean the weight ``seen`` = 0.1 of one window (spec "Evolution"); its std is the
  frequency-weighted sample std ``sqrt(M2 / (count − 1))`` where ``count ≥ 2``, else 0.
- :func:`dynamic_weights` uses the population std (ddof 0) for "std over c" and "std(scaled values)".
  If every weight is 0 (nothing separates the concepts) it returns uniform weights.
- :func:`weighted_cosine_distance` clips rounding below 0 to 0.
- A non-finite ``sigma`` is clipped to the upper bound of ``clip`` (an unknown noise level is not read as
  no noise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "normalise",
    "Normaliser",
    "WelfordFingerprint",
    "dynamic_weights",
    "uniform_weights",
    "weighted_cosine_distance",
    "z_value",
    "acceptance",
]


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64, copy=True))


def _array(t, n: int, key: str) -> np.ndarray:
    a = torch.as_tensor(t).detach().cpu().to(torch.float64).numpy().copy()
    if a.shape != (n,):
        raise ValueError(f"state entry {key!r} has shape {a.shape}, expected ({n},)")
    return a


def _check_keys(state: Mapping, expected: set[str], owner: str) -> None:
    missing, unknown = expected - set(state), set(state) - expected
    if missing or unknown:
        raise KeyError(f"{owner} state: missing {sorted(missing)}, unknown {sorted(unknown)}")


def normalise(v, lo, hi) -> np.ndarray:
    """Min–max normalisation with the spec's edge rules (ficsum.md §3 "Normaliser", §6).

    x' = (v − lo)/(hi − lo); a non-finite result (range 0 or NaN, an unset range, a NaN value) is 0.5;
    then v = −inf gives 0 and v = +inf gives 1. Values outside [lo, hi] are not clipped.

    Args:
        v: values; lo, hi: the range (broadcast together).

    Returns:
        float64 array of the broadcast shape.
    """
    v = np.asarray(v, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray((v - lo) / (hi - lo))  # ficsum.md §3: x' = (x − lo)/(hi − lo)
    bad = ~np.isfinite(out)
    if bad.any():
        out = out.copy()
        out[bad] = 0.5  # ficsum.md §3: range 0 or NaN -> 0.5
        out[np.broadcast_to(v == -np.inf, out.shape)] = 0.0  # ficsum.md §3: −inf -> 0
        out[np.broadcast_to(v == np.inf, out.shape)] = 1.0  # ficsum.md §3: +inf -> 1
    return out


class Normaliser:
    """Running min and max of every meta-information entry over all windows evaluated (ficsum.md §3).

    Args:
        n: the vector length (``MetaInfoLayout.n``).

    Attributes:
        lo, hi: the running minimum and maximum (start at +inf and −inf; non-finite values are ignored).
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.lo = np.full(self.n, np.inf)
        self.hi = np.full(self.n, -np.inf)

    @property
    def range(self) -> np.ndarray:
        """``hi − lo`` (−inf for an entry that has seen no finite value)."""
        return self.hi - self.lo

    def update(self, v) -> bool:
        """Widen the range to include ``v``; ``True`` if any ``lo`` or ``hi`` changed."""
        v = np.asarray(v, dtype=np.float64)
        finite = np.isfinite(v)
        low = finite & (v < self.lo)  # ficsum.md §3: running min
        high = finite & (v > self.hi)  # ficsum.md §3: running max
        changed = False
        if low.any():
            self.lo[low] = v[low]
            changed = True
        if high.any():
            self.hi[high] = v[high]
            changed = True
        return changed

    def transform(self, v) -> np.ndarray:
        """:func:`normalise` ``v`` with the current range."""
        return normalise(v, self.lo, self.hi)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"lo", "hi"}`` as ``torch.float64`` tensors."""
        return {"lo": _tensor(self.lo), "hi": _tensor(self.hi)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`; raises on missing or unknown keys and on a wrong length."""
        _check_keys(state, {"lo", "hi"}, "Normaliser")
        self.lo = _array(state["lo"], self.n, "lo")
        self.hi = _array(state["hi"], self.n, "hi")


class WelfordFingerprint:
    """Per-entry running mean and std of the absorbed window vectors: a concept fingerprint (ficsum.md §3).

    The class does not care whether the vectors are raw or normalised; :func:`dynamic_weights` needs to be
    told which (see its docstring).

    Welford's update with float counts: ``count += 1; δ = v − mean; mean += δ/count; M2 += δ(v − mean)``.
    After :meth:`reset_entries` an entry's count is fractional (the kept mean weighs ``seen`` windows), so
    ``std = sqrt(M2/(count − 1))`` is the frequency-weighted sample std; it is 0 where ``count < 2``.

    Args:
        n: the vector length (``MetaInfoLayout.n``).

    Attributes:
        mean, count: per-entry running mean and (float) count.
        n_absorbed: number of windows absorbed (int, not reduced by resets).
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.count = np.zeros(self.n)
        self.mean = np.zeros(self.n)
        self.m2 = np.zeros(self.n)
        self.n_absorbed = 0

    def absorb(self, v) -> None:
        """Fold one window's vector into the fingerprint (ficsum.md §3 "Fingerprint")."""
        v = np.asarray(v, dtype=np.float64)
        self.count += 1.0
        delta = v - self.mean
        self.mean += delta / self.count  # Welford mean
        self.m2 += delta * (v - self.mean)  # Welford sum of squared deviations
        self.n_absorbed += 1

    @property
    def std(self) -> np.ndarray:
        """Sample std (ddof 1) per entry; 0 where ``count < 2``."""
        out = np.zeros(self.n)
        ok = self.count >= 2.0
        out[ok] = np.sqrt(np.maximum(self.m2[ok], 0.0) / (self.count[ok] - 1.0))
        return out

    def reset_entries(self, mask, seen: float = 0.1) -> None:
        """Evolution (ficsum.md §3): masked entries keep their mean but weigh only ``seen`` windows.

        Their count becomes ``min(count, seen)`` (an entry never absorbed stays at 0) and their spread is
        forgotten (M2 = 0), so the next clean windows re-initialise them.
        """
        mask = np.asarray(mask, dtype=bool)
        self.count[mask] = np.minimum(self.count[mask], seen)  # ficsum.md §3: weight seen = 0.1
        self.m2[mask] = 0.0

    def copy(self) -> WelfordFingerprint:
        """An independent copy (the fingerprint cache of ficsum.md §3)."""
        other = WelfordFingerprint(self.n)
        other.count, other.mean, other.m2 = self.count.copy(), self.mean.copy(), self.m2.copy()
        other.n_absorbed = self.n_absorbed
        return other

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``count``, ``mean``, ``m2`` (``torch.float64``) and ``n_absorbed`` (``torch.int64`` scalar)."""
        return {
            "count": _tensor(self.count),
            "mean": _tensor(self.mean),
            "m2": _tensor(self.m2),
            "n_absorbed": torch.tensor(self.n_absorbed, dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`; raises on missing or unknown keys and on a wrong length."""
        _check_keys(state, {"count", "mean", "m2", "n_absorbed"}, "WelfordFingerprint")
        self.count = _array(state["count"], self.n, "count")
        self.mean = _array(state["mean"], self.n, "mean")
        self.m2 = _array(state["m2"], self.n, "m2")
        self.n_absorbed = int(state["n_absorbed"])


def dynamic_weights(
    fingerprints: Sequence[tuple[np.ndarray, np.ndarray]],
    lo,
    hi,
    nonactive: Mapping[int, Sequence[np.ndarray]] | None = None,
    state_means: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Per-entry weights of the distance: stable within a concept, different between concepts (ficsum.md §3).

    The pseudo-code of ficsum.md §3 "Dynamic weights", entry-wise, with r = hi − lo:

    - r = 0 (or an unset, non-finite range) → NaN;
    - s = mean over the stored fingerprints of std/r; k = 0.01 / max(s, 0.01);
    - fewer than 2 fingerprints → w = k;
    - else v_c = (mean_c − lo)/r · k, inter = std over c of v_c, and
      seg = mean over the states k with a ``state_means`` entry and at least one ``nonactive`` entry of
      std((u − lo)/r · k for u in [state_means[k], *nonactive[k]]) — our reading of "scaled values": the
      same scaling as v_c; w = max(inter, seg) (seg = 0 without non-active fingerprints);
    - NaN weights → the minimum finite weight (1 if none is finite); w ← w / max(w) (uniform if max is 0).

    Both stds are population stds (ddof 0). Because a std is shift-invariant, ``lo`` only matters through
    r. The formulas divide the fingerprint stds and means by r, so ``fingerprints``, ``nonactive`` and
    ``state_means`` must be in the same space as ``lo``/``hi``: raw meta-information with the normaliser's
    range, or — for fingerprints of normalised windows — ``lo = 0`` and ``hi = (normaliser range > 0)``
    (r = 1, keeping the NaN rule for a zero range).

    Args:
        fingerprints: ``(mean, std)`` of every stored concept fingerprint.
        lo, hi: the range of every entry (normaliser low and high).
        nonactive: for state k, the means of its non-active fingerprints (its classifier on other concepts).
        state_means: for state k, the mean of its own fingerprint; a state of ``nonactive`` without one is
            skipped.

    Returns:
        ``(n,)`` float64 weights in [0, 1] with maximum 1.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    r = hi - lo
    valid = np.isfinite(r) & (r > 0)  # ficsum.md §3: if r_m == 0: w_m = NaN
    safe_r = np.where(valid, r, 1.0)
    fps = list(fingerprints)
    if fps:
        s = (np.stack([np.asarray(std, dtype=np.float64) for _, std in fps]) / safe_r).mean(axis=0)  # s_m
    else:
        s = np.zeros_like(r)
    k = 0.01 / np.maximum(s, 0.01)  # ficsum.md §3: k_m = 0.01 / max(s_m, 0.01)
    if len(fps) < 2:
        w = k.copy()  # ficsum.md §3: fewer than 2 fingerprints -> w_m = k_m
    else:
        means = np.stack([np.asarray(m, dtype=np.float64) for m, _ in fps])
        inter = ((means - lo) / safe_r * k).std(axis=0)  # ficsum.md §3: inter = std over c of v_c
        per_state = []
        for key, others in (nonactive or {}).items():
            others = list(others)
            if not others:
                continue
            if state_means is None or key not in state_means:
                continue  # no own fingerprint (fp_k) to compare with: the state does not contribute
            values = np.stack([np.asarray(state_means[key], dtype=np.float64), *others])
            per_state.append(((values - lo) / safe_r * k).std(axis=0))  # std of the scaled values
        seg = np.mean(per_state, axis=0) if per_state else np.zeros_like(r)  # ficsum.md §3: seg
        w = np.maximum(inter, seg)  # ficsum.md §3: w_m = max(inter, seg)
    w = np.where(valid & np.isfinite(w), w, np.nan)
    finite = np.isfinite(w)
    w[~finite] = w[finite].min() if finite.any() else 1.0  # ficsum.md §3: NaN -> min finite (1 if none)
    top = w.max()
    return w / top if top > 0 else np.ones_like(w)  # ficsum.md §3: w <- w / max(w)


def uniform_weights(n: int) -> np.ndarray:
    """All-ones weights: the ``uniform`` ablation of the dynamic weights (ficsum.md §3)."""
    return np.ones(int(n))


def weighted_cosine_distance(a, b, w) -> float:
    """d(a, b; w) = 1 − Σ w a b / (√Σ w a² · √Σ w b²) (ficsum.md §3 "Distance"; smaller = more similar).

    Undefined (a zero weighted norm or a non-finite value) → 0 if both vectors are all zeros, else 1.
    Rounding below 0 is clipped to 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    wa = w * a
    den = np.sqrt(wa @ a) * np.sqrt((w * b) @ b)
    num = wa @ b
    if not (den > 0 and np.isfinite(den) and np.isfinite(num)):
        return 0.0 if not (a.any() or b.any()) else 1.0  # ficsum.md §3: undefined -> 0 or 1
    return max(float(1.0 - num / den), 0.0)  # ficsum.md §3: weighted cosine distance


def _clip_sigma(sigma: float, clip: tuple[float, float]) -> float:
    sigma = float(sigma)
    if not np.isfinite(sigma):
        return float(clip[1])
    return min(max(sigma, float(clip[0])), float(clip[1]))  # ficsum.md §3: clip(sigma, 0.01, 0.1)


def z_value(d: float, mu: float, sigma: float, clip: tuple[float, float] = (0.01, 0.1)) -> float:
    """z = 1 + |d − μ| / clip(σ) (ficsum.md §3 "Detection"), the value fed to the ADWIN detectors."""
    return 1.0 + abs(float(d) - float(mu)) / _clip_sigma(sigma, clip)  # ficsum.md §3: z


def acceptance(
    d: float, mu: float, sigma: float, sim_stdevs: float = 3.0, clip: tuple[float, float] = (0.01, 0.1)
) -> tuple[bool, float]:
    """Whether a state accepts a window at distance ``d``, and its score (ficsum.md §3 "Re-identification").

    With s = clip(σ): accept = (d − μ) ≤ sim_stdevs · s or d < 0.001; score = 1 − d (1 + |d − μ| / s).

    Args:
        d: the window's distance to the state's fingerprint.
        mu, sigma: mean and std of the state's normal distances.
        sim_stdevs: tolerance in clipped stds (3 in the spec).
        clip: bounds of σ ((0.01, 0.1) in the spec).
    """
    d, mu = float(d), float(mu)
    s = _clip_sigma(sigma, clip)
    accept = (d - mu) <= sim_stdevs * s or d < 0.001  # ficsum.md §3: accept_k
    score = 1.0 - d * (1.0 + abs(d - mu) / s)  # ficsum.md §3: score_k
    return bool(accept), float(score)
