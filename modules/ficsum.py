"""FiCSUM: a prequential stream learner holding a repository of concept states.

Paper: Halstead, Koh, Riddle, Pears, Pechenizkiy, Bifet, *Fingerprinting Concepts in Data Streams with
Supervised and Unsupervised Meta-Information*, ICDE 2021 (arXiv 2603.11094); specification
``../shared/papers/ficsum.md``.

A window of a classification stream becomes a vector of meta-information features; one fingerprint
and one classifier are stored per concept; a drop in similarity to the active fingerprint signals a
drift, and a stored classifier is reused when its fingerprint matches again. This module is the
classifier side: it predicts every observation with the active state's classifier, then trains
(test-then-train) and holds the state repository (:class:`trainer.protocols.ConceptStore`). The
fingerprints, windows and detectors are the drift callback's (``callbacks/drift.py``,
``trainer/drift/engine.py``); without that callback the module is the "one tree" baseline.

Sequential semantics (ficsum.md §2): batches are micro-batches of consecutive observations;
``training_step`` walks them one at a time and a decision after observation t affects the prediction
of t + 1, so ``batch_size: 1`` and ``batch_size: 50`` give identical results. Nothing is optimised by
gradient: ``configure_optimizers`` returns no optimizer and one training step is one micro-batch.
river models are pickled into the module's ``_extra_state`` (a uint8 tensor), so a checkpoint holds the
whole repository and a resumed run continues exactly.

YAML: ``yaml/ficsum/*.yaml``. Deviations: FI is a permutation proxy (ficsum.md §3); a torch MLP may
replace the Hoeffding tree (``learner: torch_mlp``).
"""

from __future__ import annotations

import io
import math
import pickle
import random
from collections import deque
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule

from trainer.drift.learners import learn_rows, make_learner, predict_proba_rows, structure_size
from trainer.metrics.stream import PrequentialAccuracy, StreamKappa

__all__ = ["FiCSUMStreamModule"]

_DIGEST_MOD = 2**61 - 1


class _CanonicalPickler(pickle.Pickler):
    """Pickler of :func:`canonical_pickle`: no memo, and ``random.Random`` objects stored re-seeded."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is random.Random:
            return random.Random, (0,)
        return NotImplemented


def canonical_pickle(obj: Any) -> bytes:
    """Pickle bytes that depend only on the object's values, so a resumed run's checkpoint equals an
    uninterrupted one bit for bit.

    * No memo: which sub-objects happen to be shared in memory (a restored tree shares strings differently
      from one grown in place) does not change the bytes. The object graph must be acyclic (river's trees
      and torch modules are).
    * river's Gaussian estimators (inside every Hoeffding-tree leaf) carry an unseeded ``random.Random``,
      seeded from OS entropy and used only by ``Gaussian.sample``, never by the tree; it is stored as
      ``random.Random(0)``.
    """
    buf = io.BytesIO()
    pickler = _CanonicalPickler(buf, protocol=4)
    pickler.fast = True  # no memo
    pickler.dump(obj)
    return buf.getvalue()


class FiCSUMStreamModule(LightningModule):
    """Prequential classifier over a stream with a repository of concept states (``ConceptStore``).

    Logged each micro-batch: ``train/loss`` (prequential log loss), ``train/error``, ``stream/acc``
    (prequential accuracy so far), ``stream/acc_rolling500``, ``stream/kappa``, ``drift/n_states``,
    ``drift/active_state``; at the end ``stream/kappa_m`` and ``stream/kappa_t``.

    Args:
        learner: the base learner of every state: ``hoeffding_tree`` (default, the paper's, with the
            authors' settings grace_period 200, delta 1e-7, tau 0.05, leaf_prediction "nba"),
            ``naive_bayes``, ``torch_mlp`` (a small torch MLP trained online), or the dotted class path
            of any river classifier (``river.linear_model.LogisticRegression``).
        learner_kwargs: overrides of the learner's settings; default None (the paper's).
        sample_weight: learning weight of each observation; default 6.0 (the authors' constant
            "poisson" weight, ficsum.md §3 "Defaults").
        rolling_window: length of the rolling accuracy; default 500 (``stream/acc_rolling500``).
        seed: seed of torch learners' initialisation (river trees are deterministic); default 0.
    """

    unit_test_datamodule = "RecurringConceptStreamDataModule"

    def __init__(
        self,
        learner: str = "hoeffding_tree",
        learner_kwargs: dict[str, Any] | None = None,
        sample_weight: float = 6.0,
        rolling_window: int = 500,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if rolling_window < 1:
            raise ValueError(f"rolling_window must be >= 1, got {rolling_window}")
        self.learner = learner
        self.learner_kwargs = learner_kwargs
        self.sample_weight = float(sample_weight)
        self.rolling_window = int(rolling_window)
        self.seed = int(seed)
        make_learner(learner, learner_kwargs, 1, (0, 1), seed)  # fail now on a bad learner name
        # buffers: what the rank-consistency check compares (identical state sequences on every rank)
        self.register_buffer("observations_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("sequence_digest", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_states", torch.zeros((), dtype=torch.long))
        self.feature_names: tuple[str, ...] = ()
        self.classes: tuple[int, ...] = ()
        self.models: dict[int, Any] = {}
        self.state_seen: dict[int, int] = {}
        self.active_id = 0
        self._next_id = 0
        self._engine: Any = None
        self._rolling: deque[int] = deque(maxlen=self.rolling_window)
        self._log_loss_sum = 0.0
        self.accuracy = PrequentialAccuracy()
        self.kappa: StreamKappa | None = None

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"learner": "hoeffding_tree", "learner_kwargs": {"grace_period": 20}}

    # ------------------------------------------------------------------ the stream
    def configure_stream(self, feature_names: tuple[str, ...], n_classes: int) -> None:
        """Bind the stream's feature names and classes and create the first state (called at ``setup``)."""
        if n_classes < 2:
            raise ValueError(f"a classification stream needs at least 2 classes, got {n_classes}")
        self.feature_names = tuple(feature_names)
        self.classes = tuple(range(int(n_classes)))
        self.kappa = StreamKappa(len(self.classes))
        if not self.models:
            self.new_state()

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "feature_names"):
            raise TypeError(
                "FiCSUMStreamModule needs a stream datamodule exposing feature_names and n_classes "
                "(RecurringConceptStreamDataModule, ContextTableStreamDataModule, TableStreamDataModule)"
            )
        if not self.feature_names:
            if hasattr(dm, "stream"):
                dm.stream()
            self.configure_stream(tuple(dm.feature_names), int(dm.n_classes))

    def configure_optimizers(self) -> None:
        """No optimizer: the learners train themselves online (Lightning's placeholder counts steps)."""
        return None

    # ------------------------------------------------------------------ ConceptStore
    def state_ids(self) -> list[int]:
        return sorted(self.models)

    def _fresh(self) -> Any:
        return make_learner(self.learner, self.learner_kwargs, len(self.feature_names), self.classes,
                            self.seed * 7919 + self._next_id)  # fmt: skip

    def proba_with(self, state_id: int, X: np.ndarray) -> np.ndarray:
        return predict_proba_rows(self.models[state_id], X, self.feature_names, self.classes)

    def predict_with(self, state_id: int, X: np.ndarray) -> np.ndarray:
        return np.argmax(self.proba_with(state_id, X), axis=1).astype(np.int64)

    def learn(self, X: np.ndarray, y: np.ndarray, w: float | None = None) -> bool:
        model = self.models[self.active_id]
        before = structure_size(model)
        learn_rows(model, X, y, self.feature_names, self.sample_weight if w is None else w)
        self.state_seen[self.active_id] += len(y)
        return structure_size(model) != before

    def train_model(self, X: np.ndarray, y: np.ndarray, w: float | None = None) -> Any:
        model = self._fresh()
        learn_rows(model, X, y, self.feature_names, self.sample_weight if w is None else w)
        model._shadow_seen = len(y)
        return model

    def new_state(self, from_model: Any | None = None) -> int:
        state_id = self._next_id
        self._next_id += 1
        self.models[state_id] = self._fresh() if from_model is None else from_model
        self.state_seen[state_id] = int(getattr(from_model, "_shadow_seen", 0)) if from_model is not None else 0
        self.active_id = state_id
        self.n_states.fill_(len(self.models))
        return state_id

    def switch(self, state_id: int) -> None:
        if state_id not in self.models:
            raise KeyError(f"no concept state {state_id}; states: {self.state_ids()}")
        self.active_id = int(state_id)

    def state_n_seen(self, state_id: int) -> int:
        return int(self.state_seen[state_id])

    def set_drift_engine(self, engine: Any | None) -> None:
        self._engine = engine

    # ------------------------------------------------------------------ prequential step
    def _predict_one(self, x: dict[str, float]) -> tuple[int, float]:
        p = self.models[self.active_id].predict_proba_one(x)
        if not p:
            return 0, 1.0 / len(self.classes)
        y_hat = max(p, key=p.get)  # ties: the first class river lists
        return int(y_hat), p

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        X = batch["x"].double().numpy()
        ys = batch["y"].tolist()
        concepts = batch["concept"].tolist()
        indices = batch["index"].tolist()
        names = self.feature_names
        engine = self._engine
        digest = int(self.sequence_digest)
        preds, log_loss, errors = [], 0.0, 0
        for i, row in enumerate(X.tolist()):
            x = dict(zip(names, row))
            y = int(ys[i])
            y_hat, p = self._predict_one(x)  # test ...
            p_y = p.get(y, 0.0) if isinstance(p, dict) else p
            log_loss -= math.log(min(max(float(p_y), 1e-7), 1.0))
            correct = int(y_hat == y)
            errors += 1 - correct
            self._rolling.append(correct)
            preds.append(y_hat)
            digest = (digest * 1_000_003 + self.active_id * 65_537 + y_hat + 1) % _DIGEST_MOD
            if engine is not None:  # ... then train: the engine decides what is learned and which state is next
                engine.observe(self, X[i], y, y_hat, int(concepts[i]), int(indices[i]))
            else:
                model = self.models[self.active_id]
                model.learn_one(x, y, w=self.sample_weight)
                self.state_seen[self.active_id] += 1
        n = len(ys)
        self.sequence_digest.fill_(digest)
        self.observations_seen += n
        self._log_loss_sum += log_loss
        y_t, p_t = batch["y"].long(), torch.tensor(preds, dtype=torch.long)
        self.accuracy.update(p_t, y_t)
        self.kappa.update(p_t, y_t)
        self.optimizers().step()  # the placeholder optimizer: counts one micro-batch as one global step
        loss = torch.tensor(log_loss / max(n, 1))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/error", torch.tensor(errors / max(n, 1)))
        self.log("stream/acc", self.accuracy.compute().float(), prog_bar=True)
        self.log("stream/acc_rolling500", torch.tensor(sum(self._rolling) / len(self._rolling)))
        self.log("stream/kappa", self.kappa.compute()["kappa"].float())
        self.log("drift/n_states", torch.tensor(float(len(self.models))))
        self.log("drift/active_state", torch.tensor(float(self.active_id)))
        return loss

    def on_train_end(self) -> None:
        if self.kappa is None or self.logger is None:
            return
        k = self.kappa.compute()
        metrics = {"stream/kappa_m": float(k["kappa_m"]), "stream/kappa_t": float(k["kappa_t"]),
                   "stream/acc_final": float(self.accuracy.compute())}  # fmt: skip
        self.logger.log_metrics(metrics, step=self.global_step)

    def stream_summary(self) -> dict[str, float]:
        """Prequential accuracy, κ, κ_m, κ_t and mean log loss over everything seen so far."""
        k = self.kappa.compute() if self.kappa is not None else {}
        n = max(int(self.observations_seen), 1)
        out = {"acc": float(self.accuracy.compute()), "log_loss": self._log_loss_sum / n,
               "observations": int(self.observations_seen), "states": len(self.models)}  # fmt: skip
        out.update({key: float(v) for key, v in k.items()})
        return out

    # ------------------------------------------------------------------ checkpoint: the repository
    def _extra(self) -> dict[str, Any]:
        return {
            "models": {k: canonical_pickle(m) for k, m in self.models.items()},
            "state_seen": dict(self.state_seen),
            "active_id": self.active_id,
            "next_id": self._next_id,
            "feature_names": self.feature_names,
            "classes": self.classes,
            "rolling": list(self._rolling),
            "log_loss_sum": self._log_loss_sum,
            "accuracy": [int(self.accuracy.correct), int(self.accuracy.total)],
            "kappa": None if self.kappa is None else [
                self.kappa.confusion.tolist(), int(self.kappa.n_same_as_previous), int(self.kappa.last_label)],
        }  # fmt: skip

    def get_extra_state(self) -> torch.Tensor:
        """The repository (pickled river models), counters and metric states as a uint8 tensor."""
        return torch.frombuffer(bytearray(canonical_pickle(self._extra())), dtype=torch.uint8).clone()

    def set_extra_state(self, state: torch.Tensor) -> None:
        extra = pickle.loads(state.numpy().tobytes())
        if extra["feature_names"] and not self.feature_names:
            self.feature_names, self.classes = tuple(extra["feature_names"]), tuple(extra["classes"])
            self.kappa = StreamKappa(len(self.classes))
        if self.feature_names and tuple(extra["feature_names"]) not in ((), self.feature_names):
            raise ValueError(
                f"checkpoint stream has features {extra['feature_names']}, this stream {self.feature_names}"
            )
        self._restore(extra)

    def _restore(self, extra: dict[str, Any]) -> None:
        if extra["feature_names"]:  # the very string objects the restored trees hold as keys: pickles of a
            self.feature_names = tuple(extra["feature_names"])  # resumed run then equal those of a straight one
        self.models = {int(k): pickle.loads(b) for k, b in extra["models"].items()}
        self.state_seen = dict(extra["state_seen"])
        self.active_id = int(extra["active_id"])
        self._next_id = int(extra["next_id"])
        self._rolling = deque(extra["rolling"], maxlen=self.rolling_window)
        self._log_loss_sum = float(extra["log_loss_sum"])
        self.accuracy.correct.fill_(extra["accuracy"][0])
        self.accuracy.total.fill_(extra["accuracy"][1])
        if extra["kappa"] is not None and self.kappa is not None:
            self.kappa.confusion.copy_(torch.tensor(extra["kappa"][0]))
            self.kappa.n_same_as_previous.fill_(extra["kappa"][1])
            self.kappa.last_label.fill_(extra["kappa"][2])
