"""Pareto-front measures and the MGDA min-norm solver (moc.md §2, §3 "Min-norm solver", §6, §8).

Pure numpy functions, no Lightning: ``callbacks/pareto.py`` (``ParetoFrontEvalCallback``) wires the front
measures to the training loop, and ``modules/moc.py`` uses the min-norm solver on its K × K Gram matrix of
output-space gradients. Every objective is **maximised**.

- Front: :func:`non_dominated`, :func:`non_dominated_sort`, :func:`hypervolume` (an exact 2-D sweep; N ≥ 3
  through ``moocore`` when it is installed, else the exact slicing of :func:`hypervolume_slicing`),
  :func:`reference_point` (moc.md §3 "Defaults": the component-wise minimum of the initial policy's normalised
  rewards over the evaluation grid, minus 0.1), :func:`diversity`.
- Controllability: :func:`kendall_tau` (τ-b), :func:`preference_kendall_tau`, :func:`local_order_rate` (our
  definition, moc.md §6: for each pair of adjacent grid preferences where weight moves from objective a to
  objective b, the pair succeeds iff R̄^b strictly rises and R̄^a strictly falls; ties fail).
- Grids: :func:`simplex_grid` (all preferences with coordinates multiples of ``step``), :func:`unseen_grid`
  (the "grid midpoints": the grid of half the step minus the grid itself), :func:`adjacent_pairs`.
- Min-norm (MGDA, Sener & Koltun 2018): :func:`min_norm_2` (two vectors), :func:`min_norm_frank_wolfe` (K
  vectors), :func:`min_norm_weights` (dispatch, with the edge cases of moc.md §4).
- :func:`front_metrics`: every scalar of one evaluation (moc.md §8), :func:`examples_markdown`: its text table.

Bad input (wrong shapes, NaN or inf, a step that does not divide 1) raises ``ValueError``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "adjacent_pairs",
    "diversity",
    "examples_markdown",
    "front_metrics",
    "grid_divisions",
    "grid_order",
    "hypervolume",
    "hypervolume_slicing",
    "kendall_tau",
    "local_order_rate",
    "min_norm_2",
    "min_norm_frank_wolfe",
    "min_norm_weights",
    "non_dominated",
    "non_dominated_sort",
    "preference_kendall_tau",
    "reference_point",
    "simplex_grid",
    "unseen_grid",
]

_DECIMALS = 10  # grid coordinates are rounded to this many decimals
_EPS = 1e-12  # moc.md §4: added to the min-norm denominators


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------


def _array(x: Any, name: str, ndim: int, size: int | None = None) -> np.ndarray:
    """``x`` (numpy or torch) as a finite float64 array with ``ndim`` axes, its last one of length ``size``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array{' [M, N]' if ndim == 2 else ''}, got shape {a.shape}")
    if size is not None and a.shape[-1] != size:
        raise ValueError(f"{name} must have {size} {'columns' if ndim == 2 else 'values'}, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _matrix(x: Any, name: str, n_cols: int | None = None) -> np.ndarray:
    return _array(x, name, 2, n_cols)


def _vector(x: Any, name: str, n: int | None = None) -> np.ndarray:
    return _array(x, name, 1, n)


def grid_divisions(step: float) -> int:
    """The number of steps in [0, 1]; ``step`` must divide 1 (to 1e-9)."""
    step = float(step)
    if not np.isfinite(step) or not 0.0 < step <= 1.0:
        raise ValueError(f"step must lie in (0, 1], got {step}")
    k = round(1.0 / step)
    if abs(k * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1, got {step}")
    return k


# ----------------------------------------------------------------------------------------------
# non-dominated filter and sort (maximisation)
# ----------------------------------------------------------------------------------------------


def _dominated_by_any(points: np.ndarray, among: np.ndarray) -> np.ndarray:
    """For each row of ``points``: is some row of ``among`` ≥ everywhere and > somewhere?"""
    ge = np.all(among[None, :, :] >= points[:, None, :], axis=2)
    gt = np.any(among[None, :, :] > points[:, None, :], axis=2)
    return np.any(ge & gt, axis=1)


def non_dominated(points: Any) -> np.ndarray:
    """Boolean mask ``[M]`` of the non-dominated rows of ``points`` ``[M, N]`` (maximisation).

    A row is dominated when another is at least as good in every objective and better in one; equal rows
    do not dominate each other, so every copy of a non-dominated point is kept.
    """
    p = _matrix(points, "points")
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    return ~_dominated_by_any(p, p)


def non_dominated_sort(points: Any) -> list[np.ndarray]:
    """Index arrays of the successive non-dominated fronts of ``points`` ``[M, N]`` (rank 0 first)."""
    p = _matrix(points, "points")
    remaining = np.arange(len(p))
    fronts = []
    while len(remaining):
        mask = ~_dominated_by_any(p[remaining], p[remaining])
        fronts.append(remaining[mask])
        remaining = remaining[~mask]
    return fronts


# ----------------------------------------------------------------------------------------------
# hypervolume (maximisation)
# ----------------------------------------------------------------------------------------------


def _hv_inputs(points: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated points and reference, keeping only the points strictly better than ``ref`` everywhere."""
    r = _vector(ref, "ref")
    p = np.asarray(points.detach().cpu().numpy() if hasattr(points, "detach") else points, dtype=np.float64)
    if p.size == 0:  # no points (also [] or shape (0,))
        p = p.reshape(0, len(r))
    p = _matrix(p, "points", n_cols=len(r))
    return p[np.all(p > r, axis=1)], r


def _hv_sweep_2d(p: np.ndarray, r: np.ndarray) -> float:
    """Exact 2-D hypervolume: sweep the points by decreasing first objective, adding each new strip."""
    order = np.lexsort((-p[:, 1], -p[:, 0]))  # first objective descending, ties by the second descending
    volume, best_y = 0.0, float(r[1])
    for x, y in p[order]:
        if y > best_y:  # the strip [ref_x, x] × [best_y, y] is not yet covered
            volume += (x - r[0]) * (y - best_y)
            best_y = y
    return float(volume)


def _hv_slices(p: np.ndarray, r: np.ndarray) -> float:
    """Exact hypervolume by slicing along the last objective (``p`` already > ``r`` everywhere)."""
    n = p.shape[1]
    if len(p) == 0:
        return 0.0
    if n == 1:
        return float(p[:, 0].max() - r[0])
    if n == 2:
        return _hv_sweep_2d(p, r)
    p = p[non_dominated(p)]
    p = p[np.argsort(-p[:, -1], kind="stable")]
    z = np.append(p[:, -1], r[-1])
    volume = 0.0
    for k in range(len(p)):  # the slab z[k+1] < z ≤ z[k] is covered by the k+1 highest points
        if z[k] > z[k + 1]:
            volume += _hv_slices(p[: k + 1, :-1], r[:-1]) * (z[k] - z[k + 1])
    return float(volume)


def hypervolume_slicing(points: Any, ref: Any) -> float:
    """Exact hypervolume of ``points`` ``[M, N]`` above ``ref`` ``[N]`` in pure numpy (maximisation).

    Slices along the last objective and recurses down to the 2-D sweep: O(M^(N−1) log M), fine for the small
    sets of an evaluation grid. :func:`hypervolume` falls back on it for N ≥ 3 when ``moocore`` is missing.
    """
    p, r = _hv_inputs(points, ref)
    return _hv_slices(p, r)


def hypervolume(points: Any, ref: Any) -> float:
    """Hypervolume dominated by ``points`` ``[M, N]`` and bounded by the reference point ``ref`` ``[N]``.

    Maximisation. Points not strictly better than ``ref`` in every objective contribute nothing. N = 1 is the
    length ``max − ref``; N = 2 an exact sweep; N ≥ 3 ``moocore.hypervolume`` (which minimises, so points and
    reference are negated), or :func:`hypervolume_slicing` when ``moocore`` is not installed.
    """
    p, r = _hv_inputs(points, ref)
    if len(p) == 0:
        return 0.0
    if len(r) <= 2:
        return _hv_slices(p, r)
    try:
        import moocore
    except ImportError:
        return _hv_slices(p, r)
    return float(moocore.hypervolume(-p, ref=-r))


def reference_point(initial_rewards: Any, margin: float = 0.1) -> np.ndarray:
    """The hypervolume reference point: the component-wise minimum of ``initial_rewards`` ``[M, N]`` minus
    ``margin`` (moc.md §3 "Defaults": the initial policy's normalised rewards over the evaluation grid)."""
    r = _matrix(initial_rewards, "initial_rewards")
    if len(r) == 0:
        raise ValueError("initial_rewards is empty")
    if not np.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    return r.min(axis=0) - float(margin)


def diversity(rewards: Any) -> float:
    """Mean pairwise Euclidean distance between the rows of ``rewards`` ``[M, N]`` (0 for fewer than 2 rows)."""
    r = _matrix(rewards, "rewards")
    m = len(r)
    if m < 2:
        return 0.0
    d = np.sqrt(((r[:, None, :] - r[None, :, :]) ** 2).sum(axis=2))
    return float(d[np.triu_indices(m, k=1)].mean())


# ----------------------------------------------------------------------------------------------
# preference grids
# ----------------------------------------------------------------------------------------------


def _compositions(n_obj: int, k: int) -> np.ndarray:
    """All ``[n_obj]`` non-negative integer vectors summing to ``k``, first coordinate descending (lexicographic)."""
    rows = []
    for cuts in itertools.combinations(range(k + n_obj - 1), n_obj - 1):  # stars and bars
        edges = (-1, *cuts, k + n_obj - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n_obj)])
    c = np.array(rows, dtype=np.int64).reshape(-1, n_obj)
    return c[np.lexsort(tuple(-c[:, i] for i in reversed(range(n_obj))))]


def _check_n_obj(n_obj: int) -> int:
    if isinstance(n_obj, bool) or int(n_obj) != n_obj or n_obj < 1:
        raise ValueError(f"n_obj must be an integer >= 1, got {n_obj}")
    return int(n_obj)


def simplex_grid(n_obj: int, step: float) -> np.ndarray:
    """Every preference on the simplex Δ^{n_obj−1} whose coordinates are multiples of ``step``.

    Rows run lexicographically with the first coordinate descending: for N = 2, (1, 0), (0.9, 0.1), …, (0, 1).
    N = 2 with step 0.1 gives 11 rows, N = 3 gives 66 (moc.md §3 "Defaults": the evaluation grid). ``step`` must
    divide 1. Coordinates are rounded to 10 decimals.
    """
    n = _check_n_obj(n_obj)
    k = grid_divisions(step)
    return np.round(_compositions(n, k) / k, _DECIMALS)


def unseen_grid(n_obj: int, step: float) -> np.ndarray:
    """The "grid midpoints" (moc.md §3 "Defaults"): ``simplex_grid(n_obj, step / 2)`` minus the rows of
    ``simplex_grid(n_obj, step)``, in the order of the finer grid. N = 2 with step 0.2 gives p₁ = .9, .7, .5,
    .3, .1."""
    n = _check_n_obj(n_obj)
    k = grid_divisions(step)
    fine = _compositions(n, 2 * k)
    fine = fine[np.any(fine % 2 == 1, axis=1)]  # a fine row is a coarse one iff all its counts are even
    return np.round(fine / (2 * k), _DECIMALS)


def _key(row: np.ndarray) -> tuple[float, ...]:
    return tuple(np.round(row, 8).tolist())


def grid_order(rows: Any, grid: Any) -> np.ndarray:
    """The index of each row of ``rows`` in ``grid`` (both ``[M, N]``); every row must be in the grid."""
    g = _matrix(grid, "grid")
    r = _matrix(rows, "rows", n_cols=g.shape[1])
    where = {_key(row): i for i, row in enumerate(g)}
    idx = [where.get(_key(row)) for row in r]
    if any(i is None for i in idx):
        raise ValueError("some rows are not points of the grid")
    return np.asarray(idx, dtype=np.int64)


def adjacent_pairs(grid: Any, step: float) -> list[tuple[int, int, int, int]]:
    """Pairs ``(i, j, a, b)`` of grid rows with ``p_j = p_i + step·(e_b − e_a)``, ``a < b``.

    Going from row i to row j moves ``step`` of weight from objective a to objective b; each unordered pair of
    neighbours is listed once, oriented so that a < b. Sorted by (i, a, b).
    """
    g = _matrix(grid, "grid")
    step = float(step)
    if not np.isfinite(step) or step <= 0:
        raise ValueError(f"step must be a positive number, got {step}")
    n = g.shape[1]
    where = {_key(row): i for i, row in enumerate(g)}
    pairs = []
    for i, row in enumerate(g):
        for a, b in itertools.combinations(range(n), 2):
            target = row.copy()
            target[a] -= step
            target[b] += step
            j = where.get(_key(target))
            if j is not None and j != i:
                pairs.append((i, j, a, b))
    return pairs


# ----------------------------------------------------------------------------------------------
# controllability
# ----------------------------------------------------------------------------------------------


def kendall_tau(x: Any, y: Any) -> float:
    """Kendall's τ-b between ``x`` and ``y`` (1-D, equal length); 0.0 when it is undefined (a constant input,
    fewer than 2 values). moc.md §6: p₁ = [0, .25, .5, .75, 1] against [.1, .2, .4, .3, .9] gives 0.8."""
    from scipy.stats import kendalltau

    a = _vector(x, "x")
    b = _vector(y, "y", n=len(a))
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    tau = float(kendalltau(a, b, variant="b").statistic)
    return tau if np.isfinite(tau) else 0.0


def preference_kendall_tau(grid: Any, rewards: Any) -> float:
    """Mean over objectives k of τ-b between the preference weights p_k and the achieved rewards R̄^k."""
    g = _matrix(grid, "grid")
    r = _matrix(rewards, "rewards", n_cols=g.shape[1])
    if len(r) != len(g):
        raise ValueError(f"grid has {len(g)} rows but rewards has {len(r)}")
    return float(np.mean([kendall_tau(g[:, k], r[:, k]) for k in range(g.shape[1])]))


def local_order_rate(grid: Any, rewards: Any, step: float) -> float:
    """Fraction of adjacent grid pairs whose rewards move with the preference (moc.md §6, our definition).

    For each pair of :func:`adjacent_pairs` (weight moves from objective a to objective b), the pair succeeds
    iff R̄^b strictly rises and R̄^a strictly falls; ties fail. A grid without adjacent pairs raises.
    """
    g = _matrix(grid, "grid")
    r = _matrix(rewards, "rewards", n_cols=g.shape[1])
    if len(r) != len(g):
        raise ValueError(f"grid has {len(g)} rows but rewards has {len(r)}")
    pairs = adjacent_pairs(g, step)
    if not pairs:
        raise ValueError(f"the grid has no adjacent pairs at step {step}")
    ok = [r[j, b] > r[i, b] and r[j, a] < r[i, a] for i, j, a, b in pairs]
    return float(np.mean(ok))


# ----------------------------------------------------------------------------------------------
# MGDA min-norm solver (Sener & Koltun 2018; moc.md §3 "Min-norm solver")
# ----------------------------------------------------------------------------------------------


def min_norm_2(v1v1: float, v1v2: float, v2v2: float) -> float:
    """γ of the min-norm point γ v1 + (1 − γ) v2 of two vectors, from their inner products (moc.md §3).

    If v1·v2 ≥ v1·v1 the minimum is (essentially) v1: 0.999; elif v1·v2 ≥ v2·v2 it is v2: 0.001; else
    γ = (v2·v2 − v1·v2) / (v1·v1 + v2·v2 − 2 v1·v2 + 1e-12).
    """
    v11, v12, v22 = float(v1v1), float(v1v2), float(v2v2)
    if not all(np.isfinite(v) for v in (v11, v12, v22)):
        raise ValueError("min_norm_2: inner products must be finite")
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return (v22 - v12) / (v11 + v22 - 2.0 * v12 + _EPS)


def _gram(gram: Any) -> np.ndarray:
    """``gram`` as a finite, square, symmetrised float64 array."""
    g = _matrix(gram, "gram")
    if g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"gram must be a non-empty square K x K matrix, got shape {g.shape}")
    return 0.5 * (g + g.T)


def _pair_norm(g: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """γ of the pair (i, j) and the squared norm of its min-norm combination γ g_i + (1 − γ) g_j."""
    gamma = min_norm_2(g[i, i], g[i, j], g[j, j])
    sq = gamma**2 * g[i, i] + 2 * gamma * (1 - gamma) * g[i, j] + (1 - gamma) ** 2 * g[j, j]
    return gamma, float(sq)


def _polish_on_support(g: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The exact minimum of cᵀGc on the face spanned by the support of ``c``, when it is better than ``c``.

    Solves the KKT system G_SS c_S = λ 1, Σ c_S = 1 on the support S (least squares, so a singular G_SS is
    fine); while some weight comes out negative the most negative vertex leaves S. A result is kept only if it
    lies on the simplex and lowers cᵀGc, so this never makes ``c`` worse.
    """
    support = list(np.flatnonzero(c > 0))
    while support:
        m = len(support)
        kkt = np.zeros((m + 1, m + 1))
        kkt[:m, :m] = g[np.ix_(support, support)]
        kkt[:m, m], kkt[m, :m] = -1.0, 1.0
        rhs = np.zeros(m + 1)
        rhs[m] = 1.0
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:m]
        if np.all(sol >= 0) and sol.sum() > 0:
            new = np.zeros_like(c)
            new[support] = sol / sol.sum()
            return new if new @ g @ new < c @ g @ c else c
        support.pop(int(np.argmin(sol)))
    return c


def min_norm_frank_wolfe(gram: Any, max_iter: int = 250, tol: float = 1e-5, polish: bool = True) -> np.ndarray:
    """c = argmin_{c ∈ simplex} cᵀ G c by Frank–Wolfe from the K × K Gram matrix G (K ≥ 2; moc.md §3).

    Starts from the best pair (the pair whose two-vector min-norm combination has the smallest norm), then
    repeatedly takes t = argmin_j (G c)_j and line-searches between c and e_t with :func:`min_norm_2`
    (v1 = Σ c_k g_k, v2 = g_t: v1·v1 = cᵀGc, v1·v2 = (Gc)_t, v2·v2 = G_tt; c ← γ c + (1 − γ) e_t), until
    Σ|Δc| < ``tol`` or ``max_iter`` iterations. When (Gc)_t ≥ cᵀGc the Frank–Wolfe gap is ≤ 0 and c is already
    the minimum: the loop stops there instead of taking the rule's 0.999 step, which would only circle it.

    Deviation (``polish``, default on): Frank–Wolfe approaches a minimum on a face of the simplex, or of an
    ill-conditioned G, at rate O(1/iterations); a random 4 × 4 Gram matrix can still be 10% above its minimum
    after 250 iterations. The result is therefore polished by an exact solve of the QP's KKT system on the
    support Frank–Wolfe found (see :func:`_polish_on_support`), kept only when it lowers cᵀGc. ``False``
    gives the plain iteration.
    """
    g = _gram(gram)
    k = g.shape[0]
    if k < 2:
        raise ValueError(f"min_norm_frank_wolfe needs K >= 2 vectors, got {k}")
    best = min(itertools.combinations(range(k), 2), key=lambda ij: _pair_norm(g, *ij)[1])
    gamma, _ = _pair_norm(g, *best)
    c = np.zeros(k)
    c[best[0]], c[best[1]] = gamma, 1.0 - gamma
    for _ in range(int(max_iter)):
        gc = g @ c
        t = int(np.argmin(gc))
        v1v1, v1v2, v2v2 = float(c @ gc), float(gc[t]), float(g[t, t])
        if v1v2 >= v1v1:  # the Frank-Wolfe gap c^T G c - min_j (Gc)_j is <= 0: c is the minimum
            break
        gamma = min_norm_2(v1v1, v1v2, v2v2)  # line search between c and e_t (two-vector rule)
        new = gamma * c
        new[t] += 1.0 - gamma
        change = float(np.abs(new - c).sum())
        c = new
        if change < tol:
            break
    return _polish_on_support(g, c) if polish else c


def min_norm_weights(gram: Any) -> np.ndarray:
    """MGDA weights c on the simplex from a K × K Gram matrix G of gradients (torch or numpy; float64 out).

    K = 1 → [1]; all-zero G (trace ≤ 1e-12, moc.md §4) → uniform; K = 2 → the closed form of
    :func:`min_norm_2`; K > 2 → :func:`min_norm_frank_wolfe` with 250 iterations and tolerance 1e-5.
    """
    g = _gram(gram)
    k = g.shape[0]
    if k == 1:
        return np.ones(1)
    if np.trace(g) <= _EPS:
        return np.full(k, 1.0 / k)
    if k == 2:
        gamma = min_norm_2(g[0, 0], g[0, 1], g[1, 1])
        return np.array([gamma, 1.0 - gamma])
    return min_norm_frank_wolfe(g, max_iter=250, tol=1e-5)


# ----------------------------------------------------------------------------------------------
# one evaluation of a front (moc.md §8 scalars)
# ----------------------------------------------------------------------------------------------


def front_metrics(
    seen_grid: Any,
    seen_rewards: Any,
    ref: Any,
    step: float,
    unseen_grid: Any = None,
    unseen_rewards: Any = None,
    shares: Any = None,
) -> dict[str, float]:
    """Every scalar of one evaluation of a preference-conditioned policy (moc.md §7, §8).

    ``seen_grid`` must be ``simplex_grid(N, step)`` (any row order) and ``unseen_grid`` the matching
    :func:`unseen_grid`; rewards are the mean normalised rewards per preference, ``shares`` the mean control
    score s per seen preference (or None). Returns ``hv_seen``, ``kendall_tau`` (:func:`preference_kendall_tau`
    on the seen grid), ``local_order_rate`` (seen grid, ``step``), ``front_size`` (non-dominated count of seen ∪
    unseen), ``diversity`` (of the seen rewards); with the unseen grid also ``hv_unseen`` and
    ``local_order_rate_union`` (seen ∪ unseen at ``step / 2``); with ``shares`` ``ctl_error`` (mean |s − p| over
    seen rows and objectives) and, for N = 2, ``extreme_frac`` (the fraction of seen points with s₁ within 0.1
    of 0 or 1).
    """
    gs = _matrix(seen_grid, "seen_grid")
    n = gs.shape[1]
    rs = _matrix(seen_rewards, "seen_rewards", n_cols=n)
    if len(rs) != len(gs):
        raise ValueError(f"seen_grid has {len(gs)} rows but seen_rewards has {len(rs)}")
    r = _vector(ref, "ref", n=n)
    out = {
        "hv_seen": hypervolume(rs, r),
        "kendall_tau": preference_kendall_tau(gs, rs),
        "local_order_rate": local_order_rate(gs, rs, step),
        "diversity": diversity(rs),
    }
    every = rs
    if unseen_grid is not None:
        gu = _matrix(unseen_grid, "unseen_grid", n_cols=n)
        ru = _matrix(unseen_rewards, "unseen_rewards", n_cols=n)
        if len(ru) != len(gu):
            raise ValueError(f"unseen_grid has {len(gu)} rows but unseen_rewards has {len(ru)}")
        out["hv_unseen"] = hypervolume(ru, r)
        union_grid, union_rewards = np.concatenate([gs, gu]), np.concatenate([rs, ru])
        order = np.argsort(grid_order(union_grid, simplex_grid(n, float(step) / 2)))
        out["local_order_rate_union"] = local_order_rate(union_grid[order], union_rewards[order], float(step) / 2)
        every = union_rewards
    out["front_size"] = float(non_dominated(every).sum())
    if shares is not None:
        s = _matrix(shares, "shares", n_cols=n)
        if len(s) != len(gs):
            raise ValueError(f"seen_grid has {len(gs)} rows but shares has {len(s)}")
        out["ctl_error"] = float(np.abs(s - gs).mean())
        if n == 2:
            out["extreme_frac"] = float(np.mean((s[:, 0] <= 0.1) | (s[:, 0] >= 0.9)))
    return out


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def examples_markdown(examples: Sequence[dict], objective_names: Sequence[str], max_preferences: int = 5) -> str:
    """The text table p | prompt | response | R per objective (moc.md §8 "Text") of ``examples``.

    ``examples`` are the dicts of ``ScoresPreferences.score_preferences`` (``preference``, ``prompt``,
    ``response``, ``rewards``); all the examples of at most ``max_preferences`` distinct preferences, spread
    evenly over those present (in their order), are kept. An empty string when there is nothing to show.
    """
    prefs = list(dict.fromkeys(tuple(round(float(v), 4) for v in e["preference"]) for e in examples))
    if not prefs or max_preferences < 1:
        return ""
    keep_idx = np.unique(np.round(np.linspace(0, len(prefs) - 1, min(max_preferences, len(prefs)))).astype(int))
    keep = {prefs[i] for i in keep_idx}
    names = [str(n) for n in objective_names]
    head = "| p | prompt | response | " + " | ".join(f"R {n}" for n in names) + " |"
    rule = "|---" * (3 + len(names)) + "|"
    rows = []
    for e in examples:
        p = tuple(round(float(v), 4) for v in e["preference"])
        if p in keep:
            rewards = " | ".join(f"{float(v):.3f}" for v in e["rewards"])
            pref = "(" + ", ".join(f"{v:.2f}" for v in p) + ")"
            rows.append(f"| {pref} | {_cell(e['prompt'])} | {_cell(e['response'])} | {rewards} |")
    return "\n".join([head, rule, *rows])
