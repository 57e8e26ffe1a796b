"""The drift engine: FiCSUM's windows, fingerprints, detection and concept re-identification (ficsum.md §3).

One :class:`DriftEngine` serves every arm of the paper's comparisons, chosen by two settings:

* ``detector``: what signals a drift. ``fingerprint`` = FiCSUM (ADWIN on the z-scored distance between
  the head window's meta-information and the active fingerprint); ``adwin`` / ``kswin`` /
  ``page_hinkley`` / ``ddm`` = a river detector on the error stream (the "lower" baselines);
  ``oracle`` = the true change points, ``oracle_delay`` observations late (the "upper" bound); ``none``.
* ``reidentify``: what happens on a drift. ``fingerprint`` = score every stored state against its
  fingerprint and reuse the best accepted one, else a new state (FiCSUM); ``never`` = a new state at
  every detection ("reset"); ``oracle`` = the state of the true concept.

The engine talks to the streaming module only through :class:`trainer.protocols.ConceptStore`: the
module predicts observation t with its active state, then calls :meth:`DriftEngine.observe`, and any
decision taken there affects the prediction of t + 1 (sequential semantics, ficsum.md §2). Every
decision is a deterministic function of the stream and the seed, so all DDP ranks agree without
communication.

Deviation (documented, configurable): for the "lower"/"upper"/"one tree" arms the delay buffer is kept
as well (``buffer_ratio``), so every arm trains on the same schedule; ``buffer_ratio: 0`` trains at once.
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from trainer.drift.features import DEFAULT_IGNORED_FEATURES, MetaInfoLayout, permutation_importance, window_metainfo
from trainer.drift.fingerprint import (
    Normaliser,
    WelfordFingerprint,
    acceptance,
    dynamic_weights,
    uniform_weights,
    weighted_cosine_distance,
    z_value,
)
from trainer.protocols import ConceptStore

__all__ = ["DETECTORS", "REIDENTIFY", "DriftConfig", "DriftEngine", "make_error_detector"]

DETECTORS = ("fingerprint", "adwin", "kswin", "page_hinkley", "ddm", "oracle", "none")
REIDENTIFY = ("fingerprint", "never", "oracle")
ERROR_DETECTORS = ("adwin", "kswin", "page_hinkley", "ddm")


@dataclass(frozen=True)
class DriftConfig:
    """Every setting of the engine; defaults are the authors' CLI defaults (ficsum.md §3 "Defaults")."""

    detector: str = "fingerprint"
    reidentify: str = "fingerprint"
    window: int = 75
    sim_gap: int = 3
    fp_gap: int = 50
    na_fp_gap: int = 100
    buffer_ratio: float = 0.25
    min_window: int = 50
    sim_stdevs: float = 3.0
    std_clip: tuple[float, float] = (0.01, 0.1)
    adwin_delta: float = 0.05
    adwin_warning_delta: float = 0.10
    adwin_clock: int = 32
    weights: str = "dynamic"
    ignore_features: tuple[str, ...] = DEFAULT_IGNORED_FEATURES
    ignore_sources: tuple[str, ...] = ()
    normal_records: int = 50
    fingerprint_cache: int = 5
    min_absorbed: int = 5
    shadow_size: int = 50
    oracle_delay: int | None = None
    debounce: int | None = None
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    nonactive_importance: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector {self.detector!r} is not one of {DETECTORS}")
        if self.reidentify not in REIDENTIFY:
            raise ValueError(f"reidentify {self.reidentify!r} is not one of {REIDENTIFY}")
        if self.weights not in ("dynamic", "uniform"):
            raise ValueError(f"weights {self.weights!r} is not 'dynamic' or 'uniform'")
        for name in ("window", "sim_gap", "fp_gap", "na_fp_gap", "min_window", "normal_records", "shadow_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_window > self.window:
            raise ValueError(f"min_window ({self.min_window}) cannot exceed window ({self.window})")
        if not 0.0 <= self.buffer_ratio < 1.0:
            raise ValueError(f"buffer_ratio must be in [0, 1), got {self.buffer_ratio}")

    @property
    def uses_fingerprints(self) -> bool:
        return self.detector == "fingerprint" or self.reidentify == "fingerprint"

    @property
    def debounce_gap(self) -> int:
        return self.window if self.debounce is None else int(self.debounce)

    @property
    def oracle_lag(self) -> int:
        return self.window + 10 if self.oracle_delay is None else int(self.oracle_delay)  # §3 "Oracle"


def make_error_detector(name: str, kwargs: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """A river detector for the error stream (river's own defaults unless ``kwargs`` say otherwise)."""
    from river import drift

    kwargs = dict(kwargs or {})
    if name == "adwin":
        return drift.ADWIN(**kwargs)
    if name == "kswin":
        return drift.KSWIN(**{"seed": seed, **kwargs})
    if name == "page_hinkley":
        return drift.PageHinkley(**kwargs)
    if name == "ddm":
        return drift.binary.DDM(**kwargs)
    raise ValueError(f"unknown error-stream detector {name!r}; valid: {ERROR_DETECTORS}")


class _Window:
    """The last ``size`` observations (features, label, prediction) in a ring of twice the size."""

    def __init__(self, size: int, n_features: int) -> None:
        self.size = size
        self.X = np.zeros((2 * size, n_features))
        self.y = np.zeros(2 * size, dtype=np.int64)
        self.p = np.zeros(2 * size, dtype=np.int64)
        self.end = 0

    def __len__(self) -> int:
        return min(self.end, self.size)

    def push(self, x: np.ndarray, y: int, p: int) -> None:
        if self.end == 2 * self.size:  # slide: keep the newest `size` rows at the front
            s = self.size
            self.X[:s], self.y[:s], self.p[:s] = self.X[s:], self.y[s:], self.p[s:]
            self.end = s
        self.X[self.end], self.y[self.end], self.p[self.end] = x, y, p
        self.end += 1

    def view(self, last: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self) if last is None else min(last, len(self))
        a = self.end - n
        return self.X[a : self.end], self.y[a : self.end], self.p[a : self.end]

    def clear(self) -> None:
        self.end = 0

    def state(self) -> dict[str, Any]:
        X, y, p = self.view()
        return {"X": X.copy(), "y": y.copy(), "p": p.copy()}

    def load(self, state: dict[str, Any]) -> None:
        self.clear()
        for x, y, p in zip(state["X"], state["y"], state["p"]):
            self.push(x, int(y), int(p))


class _StateRecord:
    """What the engine keeps about one concept state: its fingerprint, cached fingerprints (evolution),
    its "normal" distances with the raw windows they came from, non-active fingerprints, last FI."""

    def __init__(self, n: int, n_features: int, normal_records: int) -> None:
        self.fp = WelfordFingerprint(n)
        self.cache: list[WelfordFingerprint] = []
        self.normal: deque[tuple[float, np.ndarray]] = deque(maxlen=normal_records)
        self.nonactive: dict[int, WelfordFingerprint] = {}
        self.importance = np.zeros(n_features)
        self.from_shadow = False

    def normal_stats(self) -> tuple[float, float]:
        """(mu, sigma) of the recorded normal distances (§3 "Detection"); (0, 0) without records."""
        if not self.normal:
            return 0.0, 0.0
        d = np.array([r[0] for r in self.normal])
        return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0

    def state(self) -> dict[str, Any]:
        return {
            "fp": self.fp.state_dict(),
            "cache": [c.state_dict() for c in self.cache],
            "normal_d": [r[0] for r in self.normal],
            "normal_v": [r[1].copy() for r in self.normal],
            "nonactive": {int(k): v.state_dict() for k, v in self.nonactive.items()},
            "importance": self.importance.copy(),
            "from_shadow": self.from_shadow,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.fp.load_state_dict(state["fp"])
        self.cache = []
        for c in state["cache"]:
            fp = WelfordFingerprint(self.fp.mean.shape[0])
            fp.load_state_dict(c)
            self.cache.append(fp)
        self.normal.clear()
        self.normal.extend((float(d), np.asarray(v)) for d, v in zip(state["normal_d"], state["normal_v"]))
        self.nonactive = {}
        for k, s in state["nonactive"].items():
            fp = WelfordFingerprint(self.fp.mean.shape[0])
            fp.load_state_dict(s)
            self.nonactive[int(k)] = fp
        self.importance = np.asarray(state["importance"], dtype=np.float64)
        self.from_shadow = bool(state["from_shadow"])


def _to_tensors(obj: Any) -> Any:
    """numpy arrays -> torch tensors, recursively (checkpoint state compares exactly, loads with torch)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, dict):
        return {k: _to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_tensors(v) for v in obj]
    return obj


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy().copy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_numpy(v) for v in obj]
    return obj


class DriftEngine:
    """FiCSUM (or a baseline) over one stream, driving a :class:`~trainer.protocols.ConceptStore`.

    Args:
        config: the :class:`DriftConfig`.
        feature_names: the stream's feature names, in column order.
        sample_weight: learning weight of each buffered observation (the authors' constant 6, ficsum.md §3).
    """

    _counters = (
        "t", "n_since_switch", "since_fp", "since_sim", "since_na", "buffered_since_switch", "last_detection",
        "recheck_pending", "oracle_due", "evolution_hold", "last_distance", "last_z", "weights_version",
    )  # fmt: skip

    def __init__(self, config: DriftConfig, feature_names: Sequence[str], sample_weight: float = 6.0) -> None:
        self.config = config
        self.feature_names = tuple(feature_names)
        self.d = len(self.feature_names)
        self.sample_weight = float(sample_weight)
        self.layout = MetaInfoLayout(self.feature_names, config.ignore_features, config.ignore_sources)
        n = self.layout.n
        self.normaliser = Normaliser(n)
        self.records: dict[int, _StateRecord] = {}
        self.weights = np.ones(n)
        self.head = _Window(config.window, self.d)
        self.buffered = _Window(config.window, self.d)
        self.delay: deque[tuple[np.ndarray, int, int]] = deque()
        self.detector = self._fresh_detectors()
        self.oracle_map: dict[int, int] = {}
        # counters
        self.t = -1
        self.n_since_switch = 0
        self.since_fp = self.since_sim = self.since_na = 0
        self.buffered_since_switch = 0
        self.last_detection = -(10**12)
        self.recheck_pending = False
        self.oracle_due = -1
        self.evolution_hold = -1
        self.last_distance = float("nan")
        self.last_z = float("nan")
        self.weights_version = 0
        # history (per observation, and per event)
        self.hist_concept: list[int] = []
        self.hist_state: list[int] = []
        self.hist_correct: list[int] = []
        self.detections: list[int] = []
        self.switches: list[tuple[int, int, int]] = []  # (t, from, to)
        self.sims: list[tuple[int, float, float]] = []  # (t, distance, z)
        self.state_sims: list[tuple[int, int, float]] = []  # (t, state, distance to its fingerprint)
        self.weight_snapshots: list[tuple[int, np.ndarray]] = []

    # ------------------------------------------------------------------ detectors
    def _fresh_detectors(self) -> dict[str, Any]:
        from river import drift

        c = self.config
        out: dict[str, Any] = {}
        if c.detector == "fingerprint":  # ADWIN delta 0.05 / 0.10 on z (§3 "Detection"; river's default is 0.002)
            out["drift"] = drift.ADWIN(delta=c.adwin_delta, clock=c.adwin_clock)
            out["warn"] = drift.ADWIN(delta=c.adwin_warning_delta, clock=c.adwin_clock)
        elif c.detector in ERROR_DETECTORS:
            out["error"] = make_error_detector(c.detector, c.detector_kwargs, c.seed)
        return out

    # ------------------------------------------------------------------ helpers
    def _record(self, state_id: int) -> _StateRecord:
        if state_id not in self.records:
            self.records[state_id] = _StateRecord(self.layout.n, self.d, self.config.normal_records)
        return self.records[state_id]

    def _seed(self, *parts: int) -> int:
        h = int(self.config.seed)
        for p in parts:
            h = (h * 1_000_003 + int(p)) % (2**31 - 1)
        return h

    def _importance(self, store: ConceptStore, state_id: int, X: np.ndarray) -> np.ndarray:
        if "FI" not in self.layout.features or not any(s in self.feature_names for s in self.layout.sources):
            return np.zeros(self.d)
        return permutation_importance(lambda A: store.proba_with(state_id, A), X, self._seed(self.t, state_id))

    def _metainfo(self, X, y, p, importance, unsupervised=None) -> np.ndarray:
        return window_metainfo(self.layout, X, y, p, importance, seed=self._seed(self.t), unsupervised=unsupervised)

    def _norm(self, v: np.ndarray) -> np.ndarray:
        return self.normaliser.transform(v)

    def _distance_to(self, rec: _StateRecord, v_norm: np.ndarray) -> float:
        """Distance to a state: the minimum over its fingerprint and its cached ones (§3 "Distance")."""
        best = weighted_cosine_distance(v_norm, self._norm(rec.fp.mean), self.weights)
        for fp in rec.cache:
            best = min(best, weighted_cosine_distance(v_norm, self._norm(fp.mean), self.weights))
        return float(best)

    def _observe_window(self, v: np.ndarray, state_id: int | None = None) -> None:
        """Every evaluated window updates the normaliser; on a change, rescale the active state's normal
        distances (§3: recompute every 5th record, multiply by the mean new/old ratio capped at 1)."""
        if not self.normaliser.update(v) or state_id is None:
            return
        rec = self.records.get(state_id)
        if rec is None or not rec.normal or rec.fp.n_absorbed == 0:
            return
        ratios = []
        for i in range(0, len(rec.normal), 5):
            old, raw = rec.normal[i]
            if old > 0:
                ratios.append(self._distance_to(rec, self._norm(raw)) / old)
        if ratios:
            r = min(1.0, float(np.mean(ratios)))
            rec.normal = deque(((d * r, raw) for d, raw in rec.normal), maxlen=rec.normal.maxlen)

    def _update_weights(self) -> None:
        if self.config.weights == "uniform":
            self.weights = uniform_weights(self.layout.n)
            return
        fps = [(r.fp.mean, r.fp.std) for r in self.records.values() if r.fp.n_absorbed > 0]
        nonactive = {k: [fp.mean for fp in r.nonactive.values() if fp.n_absorbed > 0] for k, r in self.records.items()}
        means = {k: r.fp.mean for k, r in self.records.items() if r.fp.n_absorbed > 0}
        self.weights = dynamic_weights(fps, self.normaliser.lo, self.normaliser.hi, nonactive, means)  # §3 weights
        self.weights_version += 1

    # ------------------------------------------------------------------ the per-observation step
    def observe(self, store: ConceptStore, x: np.ndarray, y: int, y_hat: int, concept: int, index: int) -> None:
        """Process observation ``index`` after the store predicted ``y_hat`` for it (test-then-train)."""
        c = self.config
        self.t = int(index)
        self.hist_concept.append(int(concept))
        self.hist_state.append(int(store.active_id))
        correct = int(y_hat == y)
        self.hist_correct.append(correct)
        self.n_since_switch += 1
        self.head.push(x, y, y_hat)

        # Delay FIFO of length floor(buffer_ratio * observations since the last switch) (§3 "Windows")
        self.delay.append((x, int(y), int(y_hat)))
        keep = int(math.floor(c.buffer_ratio * self.n_since_switch))
        while len(self.delay) > keep:
            bx, by, bp = self.delay.popleft()
            self.buffered.push(bx, by, bp)
            self.buffered_since_switch += 1
            split = store.learn(bx[None, :], np.array([by]), self.sample_weight)  # only buffered items train
            if split and c.uses_fingerprints:
                self._evolve(store)

        if c.uses_fingerprints and len(self.buffered) >= c.min_window:
            self.since_fp += 1
            self.since_na += 1
            self.since_sim += 1
            if self.since_fp >= c.fp_gap:
                self.since_fp = 0
                self._fingerprint_update(store)
            if self.since_na >= c.na_fp_gap:
                self.since_na = 0
                self._nonactive_update(store)
            if c.detector == "fingerprint" and self.since_sim >= c.sim_gap:
                self.since_sim = 0
                if self._similarity_check(store):
                    self._on_detection(store, concept)
                    return
        if self.recheck_pending and self.buffered_since_switch >= c.window + 1:
            self.recheck_pending = False
            self._reidentify(store, concept, recheck=True)
            return

        if c.detector in ERROR_DETECTORS:
            det = self.detector["error"]
            det.update(1 - correct)
            if det.drift_detected:
                self._on_detection(store, concept)
                return
        if c.detector == "oracle":
            if concept >= 0 and self.hist_concept[-2:-1] and concept != self.hist_concept[-2]:
                self.oracle_due = self.t + c.oracle_lag
            if self.oracle_due == self.t:
                self._on_detection(store, concept)

    # ------------------------------------------------------------------ FiCSUM pieces
    def _fingerprint_update(self, store: ConceptStore) -> None:
        """The active fingerprint absorbs the buffered window; record its normal distance first (§3)."""
        active = store.active_id
        rec = self._record(active)
        X, y, p = self.buffered.view()
        rec.importance = self._importance(store, active, X)  # FI only at fingerprint updates (§3)
        v = self._metainfo(X, y, p, rec.importance)
        self._observe_window(v, active)
        if rec.fp.n_absorbed > 0:
            rec.normal.append((self._distance_to(rec, self._norm(v)), v))
        if self.t < self.evolution_hold:  # after a split, performance entries wait for a clean window
            keep = rec.fp.mean.copy(), rec.fp.count.copy(), rec.fp.m2.copy()
            rec.fp.absorb(v)
            mask = self.layout.performance
            rec.fp.mean[mask], rec.fp.count[mask], rec.fp.m2[mask] = keep[0][mask], keep[1][mask], keep[2][mask]
        else:
            rec.fp.absorb(v)
        self._update_weights()

    def _nonactive_update(self, store: ConceptStore) -> None:
        """Every other state re-predicts the buffered window; its supervised entries, recomputed, fold into
        "the non-active fingerprint of state k on the current concept" (used by the weights, §3)."""
        active = store.active_id
        X, y, p = self.buffered.view()
        base = self._metainfo(X, y, p, self._record(active).importance)
        for k in store.state_ids():
            if k == active or k not in self.records or self.records[k].fp.n_absorbed == 0:
                continue
            rec = self.records[k]
            imp = self._importance(store, k, X) if self.config.nonactive_importance else rec.importance
            v = self._metainfo(X, y, store.predict_with(k, X), imp, unsupervised=base)
            self._observe_window(v)
            rec.nonactive.setdefault(active, WelfordFingerprint(self.layout.n)).absorb(v)
            self.state_sims.append((self.t, k, self._distance_to(rec, self._norm(v))))
        if self.records.get(active) and self.records[active].fp.n_absorbed > 0:
            self.state_sims.append((self.t, active, self._distance_to(self.records[active], self._norm(base))))

    def _similarity_check(self, store: ConceptStore) -> bool:
        """z of the head window's distance to the active fingerprint into ADWIN; drift = ADWIN fired and the
        distance got worse than normal (§3 "Detection")."""
        c = self.config
        rec = self.records.get(store.active_id)
        if rec is None or rec.fp.n_absorbed <= c.min_absorbed or len(self.head) < c.min_window:
            return False
        X, y, p = self.head.view()
        v = self._metainfo(X, y, p, rec.importance)
        self._observe_window(v, store.active_id)
        d = self._distance_to(rec, self._norm(v))
        mu, sigma = rec.normal_stats()
        z = z_value(d, mu, sigma, c.std_clip)
        self.last_distance, self.last_z = d, z
        self.sims.append((self.t, d, z))
        self.detector["drift"].update(z)
        self.detector["warn"].update(z)
        return bool(self.detector["drift"].drift_detected) and d > mu

    def _evolve(self, store: ConceptStore) -> None:
        """The active tree split: cache its fingerprint (keep ``fingerprint_cache``), re-predict the buffered
        window, and let performance-dependent entries restart from weight 0.1 (§3 "Evolution")."""
        rec = self._record(store.active_id)
        if rec.fp.n_absorbed == 0:
            return
        rec.cache = (rec.cache + [rec.fp.copy()])[-self.config.fingerprint_cache :]
        X, y, _ = self.buffered.view()
        if len(X):
            self.buffered.p[self.buffered.end - len(X) : self.buffered.end] = store.predict_with(store.active_id, X)
        rec.fp.reset_entries(self.layout.performance, seen=0.1)
        self.evolution_hold = self.t + self.config.window + 1

    # ------------------------------------------------------------------ decisions
    def _on_detection(self, store: ConceptStore, concept: int) -> None:
        c = self.config
        if self.t - self.last_detection < c.debounce_gap:  # debounce (defect 6: back-to-back duplicates)
            return
        self.last_detection = self.t
        self.detections.append(self.t)
        if c.reidentify == "fingerprint":
            self._reidentify(store, concept, recheck=False)
        elif c.reidentify == "oracle":
            self._oracle_switch(store, concept)
        else:
            old = store.active_id
            self._switch(store, store.new_state(), old)
        if c.detector in ERROR_DETECTORS:
            self.detector = self._fresh_detectors()

    def _oracle_switch(self, store: ConceptStore, concept: int) -> None:
        if not self.oracle_map:
            self.oracle_map[int(self.hist_concept[0])] = int(self.hist_state[0])
        target = self.oracle_map.get(int(concept))
        before = store.active_id
        if target is None:
            target = store.new_state()
            self.oracle_map[int(concept)] = target
        elif target != before:
            store.switch(target)
        if target != before:
            self._switch(store, target, before)

    def _reidentify(self, store: ConceptStore, concept: int, recheck: bool) -> None:
        """Score every stored state on the head window; reuse the best accepted one, else a new state from
        a shadow model trained on the most recent head observations (§3 "Re-identification")."""
        c = self.config
        X, y, p = self.head.view()
        if not len(X):
            return
        active = store.active_id
        base = self._metainfo(X, y, p, self._record(active).importance)
        best, best_score = None, -math.inf
        for k in store.state_ids():
            rec = self.records.get(k)
            if rec is None or rec.fp.n_absorbed == 0 or store.state_n_seen(k) < 2 * c.window:
                continue
            imp = self._importance(store, k, X)
            v = self._metainfo(X, y, store.predict_with(k, X), imp, unsupervised=base)
            self._observe_window(v)
            d = self._distance_to(rec, self._norm(v))
            mu, sigma = rec.normal_stats()
            ok, score = acceptance(d, mu, sigma, c.sim_stdevs, c.std_clip)
            self.state_sims.append((self.t, k, d))
            if ok and score > best_score:
                best, best_score = k, score
        if best is not None:
            if best == active:  # a false alarm: nothing changes
                return
            store.switch(best)
            self._switch(store, best, active)
            return
        if recheck and self._record(active).from_shadow:  # a shadow may not replace a shadow
            return
        n = min(c.shadow_size, len(X))
        shadow = store.train_model(X[-n:], y[-n:], self.sample_weight)
        new = store.new_state(from_model=shadow)
        self._record(new).from_shadow = True
        self._switch(store, new, active)

    def _switch(self, store: ConceptStore, new: int, old: int) -> None:
        """After a real switch: reset detectors, buffer, windows and caches; re-check after w + 1 (§3)."""
        self.switches.append((self.t, int(old), int(new)))
        self._record(new)
        self.detector = self._fresh_detectors()
        self.delay.clear()
        self.head.clear()
        self.buffered.clear()
        self.n_since_switch = 0
        self.buffered_since_switch = 0
        self.since_fp = self.since_sim = self.since_na = 0
        self.evolution_hold = -1
        self.recheck_pending = self.config.reidentify == "fingerprint"
        if self.config.uses_fingerprints:
            self._update_weights()

    # ------------------------------------------------------------------ reporting
    def snapshot_weights(self) -> None:
        self.weight_snapshots.append((self.t, self.weights.copy()))

    def weight_matrix(self) -> np.ndarray:
        """The current weights as a (source × meta-feature) matrix for the heatmap."""
        return self.weights.reshape(self.layout.matrix_shape)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The whole engine state: windows, buffer, normaliser, fingerprints, detectors, records, history."""
        state: dict[str, Any] = {name: getattr(self, name) for name in self._counters}
        state.update(
            config=asdict(self.config),
            normaliser=self.normaliser.state_dict(),
            records={int(k): r.state() for k, r in self.records.items()},
            weights=self.weights.copy(),
            head=self.head.state(),
            buffered=self.buffered.state(),
            delay=[[x.copy(), y, p] for x, y, p in self.delay],
            detector=pickle.dumps(self.detector),
            oracle_map=dict(self.oracle_map),
            hist_concept=np.asarray(self.hist_concept, dtype=np.int64),
            hist_state=np.asarray(self.hist_state, dtype=np.int64),
            hist_correct=np.asarray(self.hist_correct, dtype=np.int8),
            detections=list(self.detections),
            switches=[list(s) for s in self.switches],
            sims=np.asarray(self.sims, dtype=np.float64).reshape(-1, 3),
            state_sims=np.asarray(self.state_sims, dtype=np.float64).reshape(-1, 3),
            weight_snapshots=[[t, w.copy()] for t, w in self.weight_snapshots],
        )
        return _to_tensors(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = _to_numpy(state)
        saved = s["config"]
        mine = asdict(self.config)
        changed = sorted(k for k in mine if k in saved and _differs(saved[k], mine[k]))
        if changed:
            raise ValueError(
                "the checkpoint's drift engine was configured differently "
                f"({', '.join(f'{k}: {saved[k]!r} -> {mine[k]!r}' for k in changed)}); resume with the same settings"
            )
        for name in self._counters:
            setattr(self, name, type(getattr(self, name))(s[name]))
        self.normaliser.load_state_dict(_to_tensors(s["normaliser"]))
        self.records = {}
        for k, r in s["records"].items():
            rec = self._record(int(k))
            rec.load(_rec_tensors(r))
        self.weights = np.asarray(s["weights"], dtype=np.float64)
        self.head.load(s["head"])
        self.buffered.load(s["buffered"])
        self.delay = deque((np.asarray(x), int(y), int(p)) for x, y, p in s["delay"])
        self.detector = pickle.loads(state["detector"])
        self.oracle_map = {int(k): int(v) for k, v in s["oracle_map"].items()}
        self.hist_concept = [int(v) for v in s["hist_concept"]]
        self.hist_state = [int(v) for v in s["hist_state"]]
        self.hist_correct = [int(v) for v in s["hist_correct"]]
        self.detections = [int(v) for v in s["detections"]]
        self.switches = [tuple(int(v) for v in sw) for sw in s["switches"]]
        self.sims = [(int(a), float(b), float(c)) for a, b, c in s["sims"]]
        self.state_sims = [(int(a), int(b), float(c)) for a, b, c in s["state_sims"]]
        self.weight_snapshots = [(int(t), np.asarray(w)) for t, w in s["weight_snapshots"]]


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    return a != b


def _rec_tensors(r: dict[str, Any]) -> dict[str, Any]:
    """A record's state with the fingerprint parts back as tensors (their ``load_state_dict`` takes tensors)."""
    out = dict(r)
    out["fp"] = _to_tensors(r["fp"])
    out["cache"] = [_to_tensors(c) for c in r["cache"]]
    out["nonactive"] = {k: _to_tensors(v) for k, v in r["nonactive"].items()}
    return out
