"""Ensemble metrics: pairwise disagreement, expected calibration error, negative log-likelihood.

Each metric keeps only summed states (``dist_reduce_fx="sum"``), so it is exact under DDP and its
memory does not grow with the data. The formulas are small pure functions, tested on hand-made
examples (``tests/test_neurotrails.py``).

Disagreement follows NeuroTrails (arXiv 2505.17909), Sec. 3: dis(i, j) is the fraction of samples
whose argmax differs between members i and j; the reported scalar is the mean over pairs i < j
(the off-diagonal mean). The authors' code averages the whole H×H matrix including its zero
diagonal, which is (H − 1)/H times that value; :func:`disagreement_code_variant` gives it for
comparison (neurotrails.md §4, defect 4).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = [
    "EnsembleDisagreement",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "calibration_bins",
    "disagreement_code_variant",
    "offdiagonal_mean",
    "pairwise_disagreement_matrix",
]


def pairwise_disagreement_matrix(preds: torch.Tensor) -> torch.Tensor:
    """Counts of samples on which members i and j disagree, as an H×H matrix (zero diagonal).

    Args:
        preds: ``[H, N]`` integer predictions, or ``[H, N, C]`` logits/probabilities (argmax taken).

    Returns:
        ``[H, H]`` float tensor of disagreement *counts*; divide by N for fractions.
    """
    if preds.dim() == 3:
        preds = preds.argmax(dim=-1)
    if preds.dim() != 2:
        raise ValueError(f"expected [H, N] predictions or [H, N, C] scores, got shape {tuple(preds.shape)}")
    # Sec. 3: dis(i, j) = fraction of samples whose argmax differs between heads i and j
    return (preds[:, None, :] != preds[None, :, :]).sum(dim=-1).to(torch.float64)


def offdiagonal_mean(matrix: torch.Tensor) -> torch.Tensor:
    """Mean of the off-diagonal entries of a square matrix (the mean over pairs i < j if symmetric).

    Returns 0 for a 1×1 matrix (a single member has no pairs).
    """
    h = matrix.shape[0]
    if h < 2:
        return matrix.new_zeros(())
    # Sec. 3: report the mean over pairs i < j (the diagonal is excluded)
    return (matrix.sum() - matrix.diagonal().sum()) / (h * (h - 1))


def disagreement_code_variant(matrix: torch.Tensor) -> torch.Tensor:
    """The authors' code's value: the mean over the whole H×H matrix, zero diagonal included.

    Equals ``(H - 1) / H * offdiagonal_mean(matrix)`` for a matrix with a zero diagonal.
    """
    return matrix.mean()


def calibration_bins(
    confidence: torch.Tensor, correct: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin (count, Σ confidence, Σ correct) over equal-width confidence bins.

    Bin b covers ``(b/n_bins, (b+1)/n_bins]`` (Guo et al. 2017); a confidence of exactly 0 goes to
    bin 0.

    Args:
        confidence: ``[N]`` top-class probabilities in [0, 1].
        correct: ``[N]`` bool or 0/1, whether the top class is the label.
        n_bins: number of bins.
    """
    conf = confidence.detach().to(torch.float64).reshape(-1)
    hit = correct.detach().to(torch.float64).reshape(-1)
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp_(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, conf)
    hit_sum = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, hit)
    return count, conf_sum, hit_sum


class EnsembleDisagreement(Metric):
    """Pairwise prediction disagreement between the H members of an ensemble, accumulated over batches.

    ``update(preds)`` takes ``[H, B]`` predicted classes or ``[H, B, C]`` scores. ``compute()``
    returns a dict with ``matrix`` (H×H fractions), ``mean`` (off-diagonal mean, the paper's
    definition) and ``code`` (the authors' code's full-matrix mean, ``(H-1)/H × mean``).

    Args:
        num_members: H, the number of ensemble members (heads).
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, num_members: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}")
        self.num_members = num_members
        self.add_state("counts", default=torch.zeros(num_members, num_members, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor) -> None:
        if preds.shape[0] != self.num_members:
            raise ValueError(f"expected {self.num_members} members on dim 0, got {preds.shape[0]}")
        self.counts += pairwise_disagreement_matrix(preds).to(self.counts.device)
        self.total += preds.shape[1]

    def compute(self) -> dict[str, torch.Tensor]:
        matrix = self.counts / self.total.clamp(min=1.0)
        return {"matrix": matrix, "mean": offdiagonal_mean(matrix), "code": disagreement_code_variant(matrix)}


class ExpectedCalibrationError(Metric):
    """Expected calibration error (L1) of a classifier, with equal-width confidence bins.

    ECE = Σ_b |Σ_{i∈b} correct_i − Σ_{i∈b} conf_i| / N, where conf is the top-class probability.
    ``update(scores, target)`` takes ``[B, C]`` logits (``from_logits=True``) or probabilities.

    Args:
        n_bins: number of equal-width bins on [0, 1]; default 15 (the NeuroTrails spec's default,
            the paper does not state it).
        from_logits: whether ``update`` receives logits (softmax applied) or probabilities.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, n_bins: int = 15, from_logits: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.from_logits = from_logits
        for name in ("bin_count", "bin_conf", "bin_correct"):
            self.add_state(name, default=torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        probs = scores.float().softmax(dim=-1) if self.from_logits else scores.float()
        conf, pred = probs.max(dim=-1)
        count, conf_sum, hit_sum = calibration_bins(conf, pred == target, self.n_bins)
        self.bin_count += count.to(self.bin_count.device)
        self.bin_conf += conf_sum.to(self.bin_conf.device)
        self.bin_correct += hit_sum.to(self.bin_correct.device)

    def compute(self) -> torch.Tensor:
        n = self.bin_count.sum().clamp(min=1.0)
        return (self.bin_correct - self.bin_conf).abs().sum() / n


class NegativeLogLikelihood(Metric):
    """Mean negative log-likelihood of the targets, −(1/N) Σ log p(y_i | x_i).

    ``update(scores, target)`` takes ``[B, C]`` logits (``from_logits=True``; log-softmax, stable)
    or probabilities (clamped at 1e-12 before the log).

    Args:
        from_logits: whether ``update`` receives logits or probabilities.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, from_logits: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.from_logits = from_logits
        self.add_state("nll_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        if self.from_logits:
            logp = scores.detach().double().log_softmax(dim=-1)
        else:
            logp = scores.detach().double().clamp(min=1e-12).log()
        self.nll_sum += -logp.gather(-1, target.long().reshape(-1, 1)).sum().to(self.nll_sum.device)
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.nll_sum / self.total.clamp(min=1.0)
