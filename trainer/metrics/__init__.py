"""Metrics that aggregate over data (``torchmetrics.Metric`` subclasses, DDP-correct).

Ensemble metrics (NeuroTrails and any multi-head or multi-model run) live in
:mod:`trainer.metrics.ensemble`.
"""

from trainer.metrics.ensemble import (
    EnsembleDisagreement,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    calibration_bins,
    disagreement_code_variant,
    offdiagonal_mean,
    pairwise_disagreement_matrix,
)

__all__ = [
    "EnsembleDisagreement",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "calibration_bins",
    "disagreement_code_variant",
    "offdiagonal_mean",
    "pairwise_disagreement_matrix",
]
