"""Metrics that aggregate over data (``torchmetrics.Metric`` subclasses, DDP-correct).

Ensemble metrics (NeuroTrails and any multi-head or multi-model run) live in
:mod:`trainer.metrics.ensemble`; data-stream metrics (prequential accuracy, the κ family, C-F1 and
drift-detection statistics, FiCSUM and any concept-drift run) in :mod:`trainer.metrics.stream`; corruption-robustness
aggregates in :mod:`trainer.metrics.robustness`, REOBench's task metrics (VQA, grounding, captions, detection AP) in
:mod:`trainer.metrics.eo_tasks` and segmentation mIoU in :mod:`trainer.metrics.segmentation` (REOBench and any
robustness run).
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
from trainer.metrics.eo_tasks import CaptionSimilarity, DetectionAP, GroundingAccuracy, VQAAccuracy
from trainer.metrics.robustness import CorruptionGridMetric
from trainer.metrics.segmentation import SegmentationMIoU
from trainer.metrics.stream import (
    ConceptF1,
    DriftDetections,
    PrequentialAccuracy,
    StreamKappa,
    chance_corrected,
    cohen_kappa,
    concept_contingency,
    concept_f1,
    detection_stats,
    drift_window_accuracy,
    forward_fill,
    kappa_from_confusion,
    kappa_m,
    kappa_m_from_confusion,
    kappa_t,
    kappa_t_from_counts,
    label_confusion,
    model_f1,
)

__all__ = [
    "CaptionSimilarity",
    "ConceptF1",
    "CorruptionGridMetric",
    "DetectionAP",
    "GroundingAccuracy",
    "SegmentationMIoU",
    "VQAAccuracy",
    "DriftDetections",
    "EnsembleDisagreement",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "PrequentialAccuracy",
    "StreamKappa",
    "calibration_bins",
    "chance_corrected",
    "cohen_kappa",
    "concept_contingency",
    "concept_f1",
    "detection_stats",
    "disagreement_code_variant",
    "drift_window_accuracy",
    "forward_fill",
    "kappa_from_confusion",
    "kappa_m",
    "kappa_m_from_confusion",
    "kappa_t",
    "kappa_t_from_counts",
    "label_confusion",
    "model_f1",
    "offdiagonal_mean",
    "pairwise_disagreement_matrix",
]
