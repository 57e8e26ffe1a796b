"""Concept drift detection and recurring-concept reuse for any streaming module (ficsum.md).

``ConceptDriftCallback`` is the thin adapter around :class:`trainer.drift.engine.DriftEngine`: FiCSUM's
fingerprints, dynamic weights, ADWIN on the similarity signal and the concept repository, or a river
detector on the error stream, the oracle, or nothing (``detector`` × ``reidentify``; the paper's arms:
FiCSUM = (fingerprint, fingerprint), "lower" = (adwin, never), "upper" = (oracle, oracle), one tree =
(none, never)). It talks to the module only through :class:`trainer.protocols.ConceptStore`.

Hooks: ``setup("fit")`` builds the engine (feature names from the datamodule; a window longer than the
stream is refused before anything runs) and installs it on the module, which calls it after every
prediction; ``on_train_batch_end`` logs ``drift/{distance,z,detected,n_detections}`` and
``concept/true_id`` and, every ``figure_every`` observations, the drift timeline; ``on_train_end`` logs
``concepts/{c_f1,model_f1,n_states}``, ``drift/{delay_mean,false_alarms,missed,switches}``,
``stream/acc_drift{50,250,500}``, the timeline, the weight heatmap, the similarity-to-states picture and
the concept × state table, and writes ``drift_summary.json`` next to the logs. Order does not matter.

State (checkpointed): the whole engine (windows, delay buffer, normaliser, fingerprints, non-active
fingerprints, weights, normal-distance records, detectors, the per-observation history); the classifiers
of the repository are the module's.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.data import run_seed
from trainer.drift.engine import DriftConfig, DriftEngine
from trainer.drift.features import DEFAULT_IGNORED_FEATURES
from trainer.drift.report import confusion_markdown, drift_summary, similarity_figure, timeline_figure, weights_figure
from trainer.plots import log_figure
from trainer.protocols import ConceptStore

__all__ = ["ConceptDriftCallback"]


class ConceptDriftCallback(StatefulCallback):
    """Drift detection and concept re-identification (FiCSUM and its baselines) for a ``ConceptStore``.

    Defaults are the authors' CLI defaults (ficsum.md §3 "Defaults"); the class defaults of their code
    differ (window 150, sim_gap 10, fp_gap 10, na_fp_gap 50): every YAML states its values.

    Args:
        detector: ``fingerprint`` (FiCSUM), ``adwin``, ``kswin``, ``page_hinkley``, ``ddm`` (river detectors
            on the error stream), ``oracle`` (true change points) or ``none``; default ``fingerprint``.
        reidentify: on a drift, ``fingerprint`` (reuse the best accepted state, else a new one), ``never``
            (always a new state: "reset") or ``oracle`` (the true concept's state); default ``fingerprint``.
        window: w, the head and buffered window length; default 75.
        sim_gap: observations between similarity checks; default 3.
        fp_gap: observations between fingerprint updates; default 50.
        na_fp_gap: observations between non-active fingerprint updates; default 100.
        buffer_ratio: delay buffer length as a share of the observations since the last switch; 0.25.
        min_window: buffered observations needed before measuring; default 50.
        sim_stdevs: acceptance threshold in clipped standard deviations; default 3.
        adwin_delta: delta of the drift ADWIN on the z signal; default 0.05 (river's default is 0.002).
        adwin_warning_delta: delta of the warning ADWIN; default 0.10.
        adwin_clock: ADWIN ``clock`` (defect 6: it delays detection); default 32.
        weights: ``dynamic`` (the paper) or ``uniform`` (ablation); default ``dynamic``.
        ignore_features: meta-features left out; default MI and IMF_0..2 (the authors' default).
        ignore_sources: behaviour sources left out; ``features`` = every input feature (supervised-only
            ablation); default none.
        detector_kwargs: arguments of the river error-stream detector (e.g. ``{delta: 0.002}``); default None.
        oracle_delay: observations after a true drift at which the oracle switches; None = w + 10.
        debounce: detections closer than this to the previous one are ignored; None = w.
        nonactive_importance: recompute FI with each non-active state's classifier at non-active updates
            (True, the paper's reading) or reuse its last FI (faster); default True.
        detection_window: a detection counts for a true drift within this many observations; 1000.
        figure_every: observations between drift-timeline pictures; default 5000 (0 = only at the end).
        seed: seed of the permutation FI and KSWIN; None = the run seed.
        name: identity of this callback in checkpoints; default "drift".
    """

    _state_attrs = ("engine_state", "next_figure_at", "logged_detections")

    def __init__(
        self,
        detector: str = "fingerprint",
        reidentify: str = "fingerprint",
        window: int = 75,
        sim_gap: int = 3,
        fp_gap: int = 50,
        na_fp_gap: int = 100,
        buffer_ratio: float = 0.25,
        min_window: int = 50,
        sim_stdevs: float = 3.0,
        adwin_delta: float = 0.05,
        adwin_warning_delta: float = 0.10,
        adwin_clock: int = 32,
        weights: str = "dynamic",
        ignore_features: tuple[str, ...] = DEFAULT_IGNORED_FEATURES,
        ignore_sources: tuple[str, ...] = (),
        detector_kwargs: dict[str, Any] | None = None,
        oracle_delay: int | None = None,
        debounce: int | None = None,
        nonactive_importance: bool = True,
        detection_window: int = 1000,
        figure_every: int = 5000,
        seed: int | None = None,
        name: str = "drift",
    ) -> None:
        super().__init__(name)
        self.detector = detector
        self.reidentify = reidentify
        self.detection_window = int(detection_window)
        self.figure_every = int(figure_every)
        self.seed = seed
        self._config_kwargs = dict(
            detector=detector, reidentify=reidentify, window=int(window), sim_gap=int(sim_gap), fp_gap=int(fp_gap),
            na_fp_gap=int(na_fp_gap), buffer_ratio=float(buffer_ratio), min_window=int(min_window),
            sim_stdevs=float(sim_stdevs), adwin_delta=float(adwin_delta),
            adwin_warning_delta=float(adwin_warning_delta), adwin_clock=int(adwin_clock), weights=weights,
            ignore_features=tuple(ignore_features), ignore_sources=tuple(ignore_sources),
            detector_kwargs=dict(detector_kwargs or {}), oracle_delay=oracle_delay, debounce=debounce,
            nonactive_importance=bool(nonactive_importance),
        )  # fmt: skip
        DriftConfig(**self._config_kwargs)  # validate now: a bad setting fails at parse time, not mid-run
        self.engine: DriftEngine | None = None
        self._pending: dict[str, Any] | None = None
        self.next_figure_at = self.figure_every
        self.logged_detections = 0
        self.summary: dict[str, float] = {}
        self.true_drifts: list[int] = []

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"window": 20, "min_window": 10, "fp_gap": 10, "na_fp_gap": 20, "figure_every": 0}

    # ------------------------------------------------------------------ state
    @property
    def engine_state(self) -> dict[str, Any] | None:
        """The engine's whole state (or the state waiting for the engine to be built at ``setup``)."""
        return self.engine.state_dict() if self.engine is not None else self._pending

    @engine_state.setter
    def engine_state(self, value: dict[str, Any] | None) -> None:
        if self.engine is not None and value is not None:
            self.engine.load_state_dict(value)
        else:
            self._pending = value

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, ConceptStore):
            raise TypeError(f"ConceptDriftCallback needs a ConceptStore module (e.g. FiCSUMStreamModule), got "
                            f"{type(pl_module).__name__}")  # fmt: skip
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "feature_names"):
            raise TypeError("ConceptDriftCallback needs a stream datamodule exposing feature_names and n_observations")
        if hasattr(dm, "stream"):
            dm.stream()
        n_obs = int(dm.n_observations)
        window = self._config_kwargs["window"]
        if window > n_obs:
            raise ValueError(
                f"ConceptDriftCallback: window {window} is larger than the stream ({n_obs} observations); "
                "use a smaller window or a longer stream"
            )
        config = DriftConfig(**self._config_kwargs, seed=run_seed(0) if self.seed is None else int(self.seed))
        self.engine = DriftEngine(config, tuple(dm.feature_names), getattr(pl_module, "sample_weight", 1.0))
        if self._pending is not None:
            self.engine.load_state_dict(self._pending)
            self._pending = None
        self.true_drifts = [int(t) for t in getattr(dm, "true_drifts", [])]
        pl_module.set_drift_engine(self.engine)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(pl_module, ConceptStore):
            pl_module.set_drift_engine(None)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        engine = self.engine
        if engine is None:
            return
        new = len(engine.detections) - self.logged_detections
        self.logged_detections = len(engine.detections)
        metrics = {"drift/detected": float(new), "drift/n_detections": float(len(engine.detections)),
                   "concept/true_id": float(engine.hist_concept[-1]) if engine.hist_concept else -1.0}  # fmt: skip
        if engine.sims:
            metrics["drift/distance"] = float(engine.last_distance)
            metrics["drift/z"] = float(engine.last_z)
        for k, v in metrics.items():
            pl_module.log(k, v)
        n = len(engine.hist_concept)
        if self.figure_every and n >= self.next_figure_at:
            self.next_figure_at = (n // self.figure_every + 1) * self.figure_every
            log_figure(trainer, "drift/timeline", self._timeline(n))

    def _timeline(self, n: int) -> Any:
        e = self.engine
        return timeline_figure(e.hist_concept, e.hist_state, e.hist_correct, e.detections,
                               [t for t in self.true_drifts if t < n], title=f"{self.detector} / {self.reidentify}")  # fmt: skip

    def compute_summary(self) -> dict[str, float]:
        """The end-of-run numbers (C-F1, detections, drift_δ accuracy ...) over what has been seen."""
        e = self.engine
        if e is None:
            return {}
        self.summary = drift_summary(e.hist_concept, e.hist_state, e.hist_correct, e.detections, self.true_drifts,
                                     self.detection_window, n_switches=len(e.switches))  # fmt: skip
        return self.summary

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        e = self.engine
        if e is None or not e.hist_concept:
            return
        s = self.compute_summary()
        names = {"c_f1": "concepts/c_f1", "model_f1": "concepts/model_f1", "n_states": "concepts/n_states",
                 "delay_mean": "drift/delay_mean", "false_alarms": "drift/false_alarms", "missed": "drift/missed",
                 "switches": "drift/switches", "acc_drift50": "stream/acc_drift50",
                 "acc_drift250": "stream/acc_drift250", "acc_drift500": "stream/acc_drift500"}  # fmt: skip
        for logger in trainer.loggers:
            logger.log_metrics({tag: s[k] for k, tag in names.items() if k in s}, step=trainer.global_step)
        log_figure(trainer, "drift/timeline", self._timeline(len(e.hist_concept)))
        if e.config.uses_fingerprints:
            log_figure(trainer, "drift/weights", weights_figure(e.weights, e.layout.sources, e.layout.features))
            log_figure(trainer, "drift/similarity", similarity_figure(e.state_sims, e.sims))
        log_dir = trainer.log_dir if trainer.loggers else None  # a collective call: every rank asks
        if trainer.is_global_zero:
            from lightning.pytorch.loggers import TensorBoardLogger

            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    table = confusion_markdown(e.hist_concept, e.hist_state)
                    logger.experiment.add_text("drift/concept_state_table", table, global_step=trainer.global_step)
            if log_dir:
                os.makedirs(log_dir, exist_ok=True)
                with open(os.path.join(log_dir, "drift_summary.json"), "w") as fh:
                    json.dump({"detector": self.detector, "reidentify": self.reidentify, **s}, fh, indent=1)
