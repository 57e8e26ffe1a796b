"""FiCSUM concept drift (papers/ficsum.md): meta-information features and concept fingerprints.

``trainer.drift.features`` turns a window of a stream into a meta-information vector;
``trainer.drift.fingerprint`` normalises such vectors, summarises them per concept and compares them;
``trainer.drift.engine`` is FiCSUM's per-observation state machine (windows, detection, re-identification)
and its baselines, driving a ``ConceptStore``; ``trainer.drift.learners`` are the base learners (river or a
small torch MLP); ``trainer.drift.report`` computes the end-of-run numbers and draws the pictures.
Nothing here imports ``modules``, ``datamodules`` or ``callbacks``.
"""

from trainer.drift.features import (
    BEHAVIOUR_SOURCES,
    DEFAULT_IGNORED_FEATURES,
    META_FEATURES,
    SUPERVISED_SOURCES,
    MetaInfoLayout,
    emd_imfs,
    error_distances,
    lag1_mutual_information,
    permutation_entropy,
    permutation_importance,
    series_statistics,
    window_metainfo,
)
from trainer.drift.fingerprint import (
    Normaliser,
    WelfordFingerprint,
    acceptance,
    dynamic_weights,
    normalise,
    uniform_weights,
    weighted_cosine_distance,
    z_value,
)
from trainer.drift.engine import DETECTORS, REIDENTIFY, DriftConfig, DriftEngine, make_error_detector
from trainer.drift.learners import HOEFFDING_TREE_DEFAULTS, LEARNER_NAMES, TorchOnlineMLP, make_learner
from trainer.drift.report import drift_summary, timeline_figure, weights_figure

__all__ = [
    # features
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
    # fingerprint
    "normalise",
    "Normaliser",
    "WelfordFingerprint",
    "dynamic_weights",
    "uniform_weights",
    "weighted_cosine_distance",
    "z_value",
    "acceptance",
    # engine, learners, report
    "DETECTORS",
    "REIDENTIFY",
    "DriftConfig",
    "DriftEngine",
    "make_error_detector",
    "HOEFFDING_TREE_DEFAULTS",
    "LEARNER_NAMES",
    "TorchOnlineMLP",
    "make_learner",
    "drift_summary",
    "timeline_figure",
    "weights_figure",
]
