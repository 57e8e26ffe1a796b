"""The sparse data-constrained scaling law: prediction, staged fit, analyses, runs CSV and the law CLI.

Paper: "When Data Is Scarce: Scaling Sparse Language Models with Repeated Training" (Wu, Xiao, Okanovic,
Sternal, van Keulen, Pechenizkiy, Mocanu, Hoefler, Mocanu; arXiv 2606.01155, ICML 2026). The paper extends
the data-constrained law of Muennighoff et al. (2023) to dynamically sparse LLaMA models: a density factor
g(d) multiplies the parameter term, the Chinchilla-optimal ratio G(d) decides how many parameters the unique
data can support, and the two repetition "half-lives" R_N*, R_D* become quadratics in the sparsity S = 1 − d.
Sparsity delays data saturation (R_D*(S) > R_D*), the loss-optimal sparsity with fixed data is moderate and
the compute-optimal sparsity is higher. Specification: ``papers/sparse_scaling.md`` §3 (formulas, fitting
recipe, analyses), §6 (properties), §8 (TensorBoard).

Pure math and I/O: this file imports nothing from ``modules/``, ``datamodules/`` or ``callbacks/``.

YAML files: ``yaml/sparse_scaling/law_published.yaml`` (``trainer predict-law``) and
``yaml/sparse_scaling/law_roundtrip.yaml`` (``trainer fit-law``); a law YAML has a single top-level
``law:`` mapping, validated by :func:`load_law_config`.

Deviations from the authors' notebooks (all documented where they occur):

- the fit works on explicit numeric columns (``n_total``, ``density``, ``unique_tokens``, ``total_tokens``)
  instead of sizes parsed from run names (sparse_scaling.md §4);
- stages 3 and 4 fit log R* (the spec's recipe) where the notebook fits R* directly;
- :func:`synthetic_rows` draws the one-epoch points inside the regime where the one-epoch fitting form of
  stages 1–2 equals the full law (N_a ≤ U_N); see its docstring for why.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "LawCoefficients",
    "PUBLISHED",
    "PUBLISHED_STAGE4_REFIT",
    "MUENNIGHOFF_C4",
    "SparseDCScalingLaw",
    "FitSettings",
    "StageResult",
    "FitResult",
    "LawConfig",
    "LawConfigError",
    "resolve_grid",
    "DEFAULT_GRID",
    "REDUCED_GRID",
    "STAGE_FREE_PARAMETERS",
    "density_factor",
    "optimal_ratio",
    "optimal_params",
    "optimal_tokens",
    "flops_for_tokens",
    "unique_params",
    "excess_params",
    "repetitions",
    "sparse_half_life",
    "effective_count",
    "law_loss",
    "llama_n_total",
    "training_flops",
    "stage_of",
    "stage_mask",
    "r2_score",
    "read_runs_csv",
    "write_runs_csv",
    "synthetic_rows",
    "load_law_config",
    "fit_law_main",
    "predict_law_main",
]

# --------------------------------------------------------------------------------------------------
# Coefficients
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LawCoefficients:
    """The 13 coefficients of the law, named by role (sparse_scaling.md §3, §4 item 5).

    Args:
        a, b, e: natural logs of A, B, E (the parameter term, the data term, the irreducible loss).
        alpha: the exponent of both the parameter and the data term (the law ties β = α).
        epsilon, mu, c: the density factor g(d) = d^ε + c·(1 − d)^μ (authors' ``epsion``, ``mu``, "P").
        rn_star, rd_star: the dense repetition half-lives R_N* (excess parameters) and R_D* (repeated data).
        lambda1, sigma1: R_D*(S) = R_D*·(1 + λ1·S + σ1·S²) (authors' c12 and −c22).
        lambda2, sigma2: R_N*(S) = R_N*·(1 + λ2·S + σ2·S²) (authors' c11 and −c21).
    """

    a: float
    b: float
    e: float
    alpha: float
    epsilon: float
    mu: float
    c: float
    rn_star: float
    rd_star: float
    lambda1: float
    sigma1: float
    lambda2: float
    sigma2: float

    @property
    def beta(self) -> float:
        """The data exponent β, tied to α (sparse_scaling.md §3, "α = β")."""
        return self.alpha

    def to_dict(self) -> dict[str, float]:
        """The coefficients as a plain ``{name: float}`` mapping (JSON-ready)."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "coefficients") -> LawCoefficients:
        """Build from a mapping with exactly the 13 names; a missing or unknown name raises one line."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            near = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"{source}: unknown coefficient '{unknown[0]}'{hint}")
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"{source}: missing coefficient '{missing[0]}'")
        try:
            return cls(**{n: float(values[n]) for n in names})
        except (TypeError, ValueError):
            bad = next(n for n in names if not _is_number(values[n]))
            raise ValueError(f"{source}: coefficient '{bad}' is not a number: {values[bad]!r}") from None

    def to_json(self, path: str | Path) -> None:
        """Write the coefficients as a JSON object."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> LawCoefficients:
        """Read a JSON object written by :meth:`to_json` (or a ``fit-law`` output, under ``coefficients``)."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise ValueError(f"{path}: cannot read coefficients ({err.strerror})") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err.msg}, line {err.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("coefficients"), dict):
            data = data["coefficients"]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of coefficients")
        return cls.from_dict(data, source=str(path))


# sparse_scaling.md §3 "Published coefficients" (authors' fitting and figure notebooks); σ = −c2x in their code.
PUBLISHED = LawCoefficients(
    a=5.24073718, b=6.10303089, e=0.85355013, alpha=0.32682177,
    epsilon=-0.00968044, mu=0.84661793, c=-0.27288932,
    rn_star=11.08763712, rd_star=4.40474882,
    lambda1=1.82159486, sigma1=-1.36557887, lambda2=1.90420893, sigma2=-2.79936732,
)  # fmt: skip
# The stage-4 refit printed in the authors' fitting notebook (c11 1.90395629, c12 1.82138122, c21 2.79909313,
# c22 1.36530917), which produced their held-out predictions; it differs from PUBLISHED in the 4th digit (§3).
PUBLISHED_STAGE4_REFIT = dataclasses.replace(
    PUBLISHED, lambda2=1.9039562899771467, lambda1=1.8213812238803706,
    sigma2=-2.79909312658146, sigma1=-1.3653091691735397,
)  # fmt: skip
# sparse_scaling.md §3 "Reference dense law" (Muennighoff et al., C4): g ≡ 1 (ε = 0, c = 0), λ = σ = 0.
MUENNIGHOFF_C4 = LawCoefficients(
    a=6.255414, b=7.3049974, e=0.6254804, alpha=0.3526596,
    epsilon=0.0, mu=1.0, c=0.0,
    rn_star=5.309743, rd_star=15.387756,
    lambda1=0.0, sigma1=0.0, lambda2=0.0, sigma2=0.0,
)  # fmt: skip
NAMED_COEFFICIENTS = {"published": PUBLISHED, "published_stage4_refit": PUBLISHED_STAGE4_REFIT,
                      "muennighoff_c4": MUENNIGHOFF_C4}  # fmt: skip

# --------------------------------------------------------------------------------------------------
# The law, piece by piece (sparse_scaling.md §3). Every function works on floats, numpy arrays and torch
# tensors alike (numpy in float64; torch in the tensors' dtype).
# --------------------------------------------------------------------------------------------------


def _is_torch(*xs: Any) -> bool:
    return any(isinstance(x, torch.Tensor) for x in xs)


def _exp(x: Any) -> Any:
    return torch.exp(x) if _is_torch(x) else np.exp(x)


def _log(x: Any) -> Any:
    return torch.log(x) if _is_torch(x) else np.log(x)


def _pair(a: Any, b: Any) -> tuple[Any, Any]:
    if _is_torch(a, b):
        ref = a if isinstance(a, torch.Tensor) else b
        return torch.as_tensor(a, dtype=ref.dtype), torch.as_tensor(b, dtype=ref.dtype)
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


def _minimum(a: Any, b: Any) -> Any:
    a, b = _pair(a, b)
    return torch.minimum(a, b) if isinstance(a, torch.Tensor) else np.minimum(a, b)


def _maximum(a: Any, b: Any) -> Any:
    a, b = _pair(a, b)
    return torch.maximum(a, b) if isinstance(a, torch.Tensor) else np.maximum(a, b)


def density_factor(density: Any, epsilon: Any, c: Any, mu: Any) -> Any:
    """g(d) = d^ε + c·(1 − d)^μ, with the sparsity term exactly 0 at d = 1 (so g(1) = 1 for any μ and the
    gradient in μ stays finite there). sparse_scaling.md §3."""
    sparsity = 1 - density
    if _is_torch(density, epsilon, c, mu):
        density, sparsity = _pair(density, sparsity)
        safe = torch.where(sparsity > 0, sparsity, torch.ones_like(sparsity))
        sparse_term = torch.where(sparsity > 0, c * safe**mu, torch.zeros_like(safe))
        return density**epsilon + sparse_term  # Eq. g(d), §3
    density = np.asarray(density, dtype=np.float64)
    sparsity = 1.0 - density
    safe = np.where(sparsity > 0, sparsity, 1.0)
    return density**epsilon + np.where(sparsity > 0, c * safe**mu, 0.0)  # Eq. g(d), §3


def optimal_ratio(g: Any, A: Any, B: Any, alpha: Any, beta: Any) -> Any:
    """G(d) = [α·A·g(d) / (β·B)]^(1/(α+β)) (sparse_scaling.md §3)."""
    return (alpha * A * g / (beta * B)) ** (1 / (alpha + beta))  # Eq. G(d), §3


def optimal_params(flops: Any, G: Any, alpha: Any, beta: Any) -> Any:
    """N_opt(C) = G(d)·(C/6)^(β/(α+β)) — active parameters (sparse_scaling.md §3)."""
    return G * (flops / 6) ** (beta / (alpha + beta))  # Eq. N_opt(C), §3


def optimal_tokens(flops: Any, G: Any, alpha: Any, beta: Any) -> Any:
    """D_opt(C) = (C/6)^(α/(α+β)) / G(d) (sparse_scaling.md §3)."""
    return (flops / 6) ** (alpha / (alpha + beta)) / G  # Eq. D_opt(C), §3


def flops_for_tokens(tokens: Any, G: Any, alpha: Any, beta: Any) -> Any:
    """C(D) = 6·(G(d)·D)^((α+β)/α): the budget whose optimal token count is D (sparse_scaling.md §3)."""
    return 6 * (G * tokens) ** ((alpha + beta) / alpha)  # Eq. C(D), §3


def unique_params(n_active: Any, unique_tokens: Any, G: Any, alpha: Any, beta: Any) -> Any:
    """U_N = min(N_a, N_opt(C(U))) = min(N_a, G·(G·U)^(β/α)): the parameters the unique data can support
    (sparse_scaling.md §3)."""
    return _minimum(n_active, G * (G * unique_tokens) ** (beta / alpha))  # Eq. U_N, §3


def excess_params(n_active: Any, u_n: Any) -> Any:
    """R_N = max(N_a/U_N − 1, 0) (sparse_scaling.md §3)."""
    return _maximum(n_active / u_n - 1, 0.0)  # Eq. R_N, §3


def repetitions(total_tokens: Any, unique_tokens: Any) -> Any:
    """R_D = max(D/U − 1, 0): repeated epochs beyond the first (sparse_scaling.md §3)."""
    return _maximum(total_tokens / unique_tokens - 1, 0.0)  # Eq. R_D, §3


def sparse_half_life(base: Any, lam: Any, sig: Any, sparsity: Any) -> Any:
    """R*(S) = R*·(1 + λ·S + σ·S²), for R_N*(S) (λ2, σ2) and R_D*(S) (λ1, σ1) (sparse_scaling.md §3)."""
    return base * (1 + lam * sparsity + sig * sparsity**2)  # Eq. R_N*(S), R_D*(S), §3


def effective_count(unique: Any, excess: Any, half_life: Any) -> Any:
    """X' = U_X + U_X·R*·(1 − exp(−R/R*)): effective parameters N' or tokens D' (sparse_scaling.md §3)."""
    return unique + unique * half_life * (1 - _exp(-excess / half_life))  # Eq. N', D', §3


def law_loss(E: Any, A: Any, B: Any, g: Any, n_eff: Any, d_eff: Any, alpha: Any, beta: Any) -> Any:
    """L = E + A·g(d)/N'^α + B/D'^β (sparse_scaling.md §3)."""
    return E + A * g / n_eff**alpha + B / d_eff**beta  # Eq. L, §3


def r2_score(observed: Any, predicted: Any) -> float:
    """Coefficient of determination 1 − SS_res/SS_tot (NaN for fewer than two points)."""
    y, p = np.asarray(observed, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if y.size < 2:
        return float("nan")
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - p) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


# --------------------------------------------------------------------------------------------------
# Counting (sparse_scaling.md §3 "Parameter counting")
# --------------------------------------------------------------------------------------------------


def llama_n_total(
    hidden_size: int,
    num_hidden_layers: int,
    intermediate_size: int,
    vocab_size: int,
    num_key_value_heads: int | None = None,
    num_attention_heads: int | None = None,
) -> int:
    """Nominal total parameters N of a LLaMA: per block q, k, v, o, gate, up, down and both RMSNorm weights,
    plus **one** vocabulary matrix (vocab × h) although embedding and head are untied (sparse_scaling.md §3).
    With grouped-query attention (both head counts given) k and v have width h·kv/heads. The final norm is
    not counted. N_a = d·N."""
    h, ff = int(hidden_size), int(intermediate_size)
    kv_width = h
    if num_key_value_heads is not None and num_attention_heads is not None:
        kv_width = h * int(num_key_value_heads) // int(num_attention_heads)
    block = 2 * h * h + 2 * h * kv_width + 3 * h * ff + 2 * h  # q, o; k, v; gate, up, down; 2 RMSNorm (§3)
    return int(num_hidden_layers) * block + int(vocab_size) * h  # one vocabulary matrix (§3)


def training_flops(n_active: Any, total_tokens: Any) -> Any:
    """C = 6·N_a·D (sparse_scaling.md §3)."""
    return 6 * n_active * total_tokens  # FLOPs, §3


# --------------------------------------------------------------------------------------------------
# Stage selection (sparse_scaling.md §3 stage table, §6 "Stage selection")
# --------------------------------------------------------------------------------------------------

ROW_COLUMNS = ("run_id", "n_total", "density", "unique_tokens", "total_tokens", "loss", "split")
NUMERIC_COLUMNS = ("n_total", "density", "unique_tokens", "total_tokens", "loss")
SPLITS = ("fit", "heldout")
STAGE_FREE_PARAMETERS = {
    1: ("a", "b", "e", "alpha"),
    2: ("a", "b", "e", "alpha", "epsilon", "mu", "c"),
    3: ("rn_star", "rd_star"),
    4: ("lambda1", "sigma1", "lambda2", "sigma2"),
}
STAGE_ROWS = {1: "dense, 1 epoch", 2: "all 1-epoch", 3: "dense multi-epoch", 4: "sparse multi-epoch"}


def stage_of(density: float, unique_tokens: float, total_tokens: float) -> int:
    """The stage whose fit uses a run of its own kind, by (density == 1, total == unique): 1 dense one-epoch,
    2 sparse one-epoch (stage 2 also refits on the dense one-epoch runs), 3 dense multi-epoch, 4 sparse
    multi-epoch (sparse_scaling.md §3 stage table, §6)."""
    dense, one_epoch = density == 1.0, total_tokens == unique_tokens
    return {(True, True): 1, (False, True): 2, (True, False): 3, (False, False): 4}[(dense, one_epoch)]


def stage_mask(density: Any, unique_tokens: Any, total_tokens: Any, stage: int) -> np.ndarray:
    """Boolean mask of the rows a stage fits on: 1 dense one-epoch; 2 all one-epoch; 3 dense multi-epoch;
    4 sparse multi-epoch (sparse_scaling.md §3 stage table)."""
    d = np.asarray(density, dtype=np.float64)
    one_epoch = np.asarray(total_tokens, dtype=np.float64) == np.asarray(unique_tokens, dtype=np.float64)
    dense = d == 1.0
    if stage == 1:
        return dense & one_epoch
    if stage == 2:
        return one_epoch
    if stage == 3:
        return dense & ~one_epoch
    if stage == 4:
        return ~dense & ~one_epoch
    raise ValueError(f"stage must be 1, 2, 3 or 4, got {stage!r}")


# --------------------------------------------------------------------------------------------------
# Fitting (sparse_scaling.md §3 "Fitting recipe")
# --------------------------------------------------------------------------------------------------

# sparse_scaling.md §3 "Default grids": stage 1 the Chinchilla grid; stages 2–4 as listed.
DEFAULT_GRID: dict[int, dict[str, tuple[float, ...]]] = {
    1: {"a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        "e": (-1.0, -0.5, 0.0, 0.5, 1.0), "alpha": (0.0, 0.5, 1.0, 1.5, 2.0)},
    2: {"epsilon": (-0.1, 0.0, 0.1), "mu": (0.5, 1.0, 1.5), "c": (-0.5, 0.0, 0.5)},
    3: {"log_rn_star": (0.0, 1.0, 2.0, 3.0), "log_rd_star": (0.0, 1.0, 2.0, 3.0)},
    4: {"lambda1": (-3.0, -1.0, 0.0, 1.0, 3.0), "sigma1": (-3.0, -1.0, 0.0, 1.0, 3.0),
        "lambda2": (-3.0, -1.0, 0.0, 1.0, 3.0), "sigma2": (-3.0, -1.0, 0.0, 1.0, 3.0)},
}  # fmt: skip
# A reduced grid for tests and the round trip (seconds on 2 cores): a few points of each default axis.
REDUCED_GRID: dict[int, dict[str, tuple[float, ...]]] = {
    1: {"a": (5.0,), "b": (5.0,), "e": (0.5,), "alpha": (0.5,)},
    2: {"epsilon": (0.0,), "mu": (1.0,), "c": (-0.5, 0.0)},
    3: {"log_rn_star": (1.0, 2.0), "log_rd_star": (1.0, 2.0)},
    4: {"lambda1": (1.0,), "sigma1": (-1.0,), "lambda2": (1.0,), "sigma2": (-1.0,)},
}  # fmt: skip
NAMED_GRIDS = {"default": DEFAULT_GRID, "reduced": REDUCED_GRID}


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """LBFGS settings of the staged fit (sparse_scaling.md §3 "Fitting recipe", the authors' notebook).

    Args:
        lr: LBFGS learning rate (default 0.1).
        history_size: LBFGS history (default 10).
        max_iter: LBFGS iterations per ``step`` (default 20).
        outer_steps: ``step`` calls per grid start (default 50).
        huber_delta: δ of the Huber loss on log L̂ − log L (default 1e-3).
        tolerance_grad: LBFGS ``tolerance_grad`` (default 1e-7, torch's, as in the authors' notebook).
        tolerance_change: LBFGS ``tolerance_change`` (default 1e-9, torch's). The objective is small
            (≈ 1e-5 on clean data), so this default stops LBFGS early in the flat a–b–α valley; the round
            trip sets it to 0 so that the 50 outer steps alone bound the work.
    """

    lr: float = 0.1
    history_size: int = 10
    max_iter: int = 20
    outer_steps: int = 50
    huber_delta: float = 1e-3
    tolerance_grad: float = 1e-7
    tolerance_change: float = 1e-9


@dataclasses.dataclass(frozen=True)
class StageResult:
    """One stage of the fit: rows used, free parameters, lowest objective, R² of L (not log L), starts."""

    stage: int
    rows: int
    free: tuple[str, ...]
    objective: float
    r2: float
    starts: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class FitResult:
    """The fitted coefficients and the per-stage results, in stage order."""

    coefficients: LawCoefficients
    stages: tuple[StageResult, ...]


def _as_float_tensor(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=torch.float64)


def _stage_log_prediction(stage: int, th: dict[str, torch.Tensor], data: dict[str, torch.Tensor]) -> torch.Tensor:
    """log L̂ of a stage's form as logsumexp(e, a + log g − α log N', b − β log D') (sparse_scaling.md §3)."""
    alpha = th["alpha"]
    if stage == 1:  # L = E + A/N^α + B/D^β on dense one-epoch runs (stage table, §3)
        log_n, log_d, log_g = torch.log(data["n_active"]), torch.log(data["total"]), torch.zeros_like(data["total"])
    elif stage == 2:  # L = E + A·g(d)/N_a^α + B/D^β on all one-epoch runs (stage table, §3)
        g = density_factor(data["density"], th["epsilon"], th["c"], th["mu"]).clamp_min(1e-12)
        log_n, log_d, log_g = torch.log(data["n_active"]), torch.log(data["total"]), torch.log(g)
    else:  # the full form (§3), with a, b, e, α, ε, μ, c frozen from stages 1–2
        A, B = torch.exp(th["a"]), torch.exp(th["b"])
        g = density_factor(data["density"], th["epsilon"], th["c"], th["mu"]).clamp_min(1e-12)
        G = optimal_ratio(g, A, B, alpha, alpha)  # Eq. G(d)
        u_n = unique_params(data["n_active"], data["unique"], G, alpha, alpha)  # Eq. U_N
        r_n = excess_params(data["n_active"], u_n)  # Eq. R_N
        r_d = repetitions(data["total"], data["unique"])  # Eq. R_D
        s = 1 - data["density"]
        rn_s = sparse_half_life(th["rn_star"], th["lambda2"], th["sigma2"], s).clamp_min(1e-8)  # Eq. R_N*(S)
        rd_s = sparse_half_life(th["rd_star"], th["lambda1"], th["sigma1"], s).clamp_min(1e-8)  # Eq. R_D*(S)
        n_eff = effective_count(u_n, r_n, rn_s)  # Eq. N'
        d_eff = effective_count(data["unique"], r_d, rd_s)  # Eq. D'
        log_n, log_d, log_g = torch.log(n_eff), torch.log(d_eff), torch.log(g)
    terms = torch.stack(
        [th["e"].expand_as(log_n), th["a"] + log_g - alpha * log_n, th["b"] - alpha * log_d]
    )  # logsumexp(e, a + log g − α log N', b − β log D'), §3 fitting recipe
    return torch.logsumexp(terms, dim=0)


def _theta_from(coef: LawCoefficients) -> dict[str, float]:
    out = coef.to_dict()
    out["log_rn_star"] = math.log(coef.rn_star) if coef.rn_star > 0 else 0.0
    out["log_rd_star"] = math.log(coef.rd_star) if coef.rd_star > 0 else 0.0
    return out


# the optimised variable names per stage (log R* in stage 3: "fitted in log space where positive", §3)
_STAGE_VARIABLES = {
    1: ("a", "b", "e", "alpha"),
    2: ("a", "b", "e", "alpha", "epsilon", "mu", "c"),
    3: ("log_rn_star", "log_rd_star"),
    4: ("lambda1", "sigma1", "lambda2", "sigma2"),
}


# the variables a ``free`` override may choose per stage (the ones the stage's form contains)
_FREE_CHOICES = {1: _STAGE_VARIABLES[1], 2: _STAGE_VARIABLES[2], 3: _STAGE_VARIABLES[3] + _STAGE_VARIABLES[4],
                 4: _STAGE_VARIABLES[3] + _STAGE_VARIABLES[4]}  # fmt: skip


class SparseDCScalingLaw:
    """The sparse data-constrained scaling law with fixed coefficients (sparse_scaling.md §3).

    Args:
        coefficients: the law's coefficients (:data:`PUBLISHED` by default).
    """

    def __init__(self, coefficients: LawCoefficients = PUBLISHED) -> None:
        self.coefficients = coefficients

    # -- prediction ---------------------------------------------------------------------------------

    def predict(self, n_total: Any, density: Any, unique_tokens: Any, total_tokens: Any) -> Any:
        """Predicted loss L(N, d, U, D) with the full form for every point (one-epoch points included),
        sparse_scaling.md §3. N is the nominal total parameter count (N_a = d·N). Float64 numpy for floats
        and arrays (broadcast), torch in the tensors' dtype for tensors; a float for scalar input."""
        k = self.coefficients
        scalar = all(np.ndim(x) == 0 and not _is_torch(x) for x in (n_total, density, unique_tokens, total_tokens))
        if not _is_torch(n_total, density, unique_tokens, total_tokens):
            n_total, density, unique_tokens, total_tokens = (
                np.asarray(x, dtype=np.float64) for x in (n_total, density, unique_tokens, total_tokens)
            )
        A, B, E = math.exp(k.a), math.exp(k.b), math.exp(k.e)
        n_active = density * n_total  # N_a = d·N, §3
        sparsity = 1 - density  # S = 1 − d, §3
        g = density_factor(density, k.epsilon, k.c, k.mu)  # Eq. g(d)
        G = optimal_ratio(g, A, B, k.alpha, k.beta)  # Eq. G(d)
        u_n = unique_params(n_active, unique_tokens, G, k.alpha, k.beta)  # Eq. U_N
        r_n = excess_params(n_active, u_n)  # Eq. R_N
        r_d = repetitions(total_tokens, unique_tokens)  # Eq. R_D
        rn_s = sparse_half_life(k.rn_star, k.lambda2, k.sigma2, sparsity)  # Eq. R_N*(S)
        rd_s = sparse_half_life(k.rd_star, k.lambda1, k.sigma1, sparsity)  # Eq. R_D*(S)
        n_eff = effective_count(u_n, r_n, rn_s)  # Eq. N'
        d_eff = effective_count(unique_tokens, r_d, rd_s)  # Eq. D'
        loss = law_loss(E, A, B, g, n_eff, d_eff, k.alpha, k.beta)  # Eq. L
        return float(loss) if scalar else loss

    def density_factor(self, density: Any) -> Any:
        """g(d) with these coefficients (sparse_scaling.md §3)."""
        k = self.coefficients
        return density_factor(density, k.epsilon, k.c, k.mu)

    def G(self, density: Any) -> Any:
        """The Chinchilla-optimal ratio G(d) with these coefficients (sparse_scaling.md §3)."""
        k = self.coefficients
        return optimal_ratio(self.density_factor(density), math.exp(k.a), math.exp(k.b), k.alpha, k.beta)

    def half_lives(self, sparsity: Any) -> tuple[Any, Any]:
        """(R_N*(S), R_D*(S)) with these coefficients (sparse_scaling.md §3)."""
        k = self.coefficients
        return (sparse_half_life(k.rn_star, k.lambda2, k.sigma2, sparsity),
                sparse_half_life(k.rd_star, k.lambda1, k.sigma1, sparsity))  # fmt: skip

    # -- analyses (sparse_scaling.md §3 "Analyses") ----------------------------------------------

    def loss_optimal_density(
        self,
        unique_tokens: float,
        n_grid: Sequence[float] | None = None,
        epochs_grid: Sequence[float] = (1, 2, 4, 8, 16, 32, 64),
        density_grid: Sequence[float] | None = None,
    ) -> dict[str, float]:
        """The (d, N, epochs) of lowest predicted loss for a unique budget U: a grid search over
        N ∈ logspace(1e7, 1e11, 81) (nominal total), epochs ∈ {1, 2, 4, …, 64}, d ∈ linspace(0.05, 1, 96)
        (sparse_scaling.md §3 "Analyses"). Returns density, sparsity, n_total, n_active, epochs,
        total_tokens, flops and loss."""
        n = np.logspace(7, 11, 81) if n_grid is None else np.asarray(n_grid, dtype=np.float64)
        d = np.linspace(0.05, 1.0, 96) if density_grid is None else np.asarray(density_grid, dtype=np.float64)
        ep = np.asarray(epochs_grid, dtype=np.float64)
        nn, ee, dd = np.meshgrid(n, ep, d, indexing="ij")
        loss = self.predict(nn, dd, unique_tokens, ee * unique_tokens)
        i = np.unravel_index(int(np.nanargmin(loss)), loss.shape)
        best_n, best_ep, best_d = float(nn[i]), float(ee[i]), float(dd[i])
        return {
            "unique_tokens": float(unique_tokens), "density": best_d, "sparsity": 1.0 - best_d,
            "n_total": best_n, "n_active": best_d * best_n, "epochs": best_ep,
            "total_tokens": best_ep * unique_tokens,
            "flops": float(training_flops(best_d * best_n, best_ep * unique_tokens)), "loss": float(loss[i]),
        }  # fmt: skip

    def compute_optimal_curve(
        self,
        flops: float,
        u_budget: float,
        density_grid: Sequence[float] | None = None,
        ratios: Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """For each density, the lowest loss at FLOPs F: N_a = N_opt(F)/r, D = D_opt(F)·r for
        r ∈ linspace(1.0001, 10, 400), U = min(U_budget, D), N = N_a/d; minimised over r (the authors'
        ``optimal_sparsity`` notebook; sparse_scaling.md §3 "Analyses"). Arrays keyed density, loss, ratio,
        n_total, n_active, total_tokens, unique_tokens."""
        k = self.coefficients
        d = np.linspace(0.05, 1.0, 96) if density_grid is None else np.asarray(density_grid, dtype=np.float64)
        r = np.linspace(1.0001, 10.0, 400) if ratios is None else np.asarray(ratios, dtype=np.float64)
        dd, rr = np.meshgrid(d, r, indexing="ij")
        G = self.G(dd)  # Eq. G(d)
        n_active = optimal_params(flops, G, k.alpha, k.beta) / rr  # N_a = N_opt(F)/r, §3 Analyses
        tokens = optimal_tokens(flops, G, k.alpha, k.beta) * rr  # D = D_opt(F)·r, §3 Analyses
        unique = np.minimum(u_budget, tokens)  # U = min(U_budget, D), §3 Analyses
        loss = self.predict(n_active / dd, dd, unique, tokens)  # N = N_a/d, §3 Analyses
        j = np.nanargmin(loss, axis=1)
        rows = np.arange(d.size)
        return {
            "density": d, "loss": loss[rows, j], "ratio": rr[rows, j], "n_active": n_active[rows, j],
            "n_total": n_active[rows, j] / d, "total_tokens": tokens[rows, j], "unique_tokens": unique[rows, j],
        }  # fmt: skip

    def compute_optimal_density(
        self,
        flops: float,
        u_budget: float,
        density_grid: Sequence[float] | None = None,
        ratios: Sequence[float] | None = None,
    ) -> dict[str, float]:
        """The density of lowest loss at FLOPs F and unique budget U_budget: minimise over r, then over d
        (see :meth:`compute_optimal_curve`; sparse_scaling.md §3 "Analyses"). Returns flops, u_budget,
        density, sparsity, ratio r, n_total, n_active, total_tokens (D), unique_tokens, epochs and loss."""
        curve = self.compute_optimal_curve(flops, u_budget, density_grid, ratios)
        i = int(np.nanargmin(curve["loss"]))
        out = {key: float(v[i]) for key, v in curve.items()}
        out.update(flops=float(flops), u_budget=float(u_budget), sparsity=1.0 - out["density"],
                   epochs=out["total_tokens"] / out["unique_tokens"])  # fmt: skip
        return out

    # -- fitting (sparse_scaling.md §3 "Fitting recipe") --------------------------------------------

    def fit(
        self,
        rows: Sequence[Mapping[str, Any]],
        stages: Sequence[int] = (1, 2, 3, 4),
        grid: Mapping[int, Mapping[str, Sequence[float]]] | str = "default",
        settings: FitSettings = FitSettings(),
        progress: Callable[[str], None] | None = None,
        free: Mapping[int, Sequence[str]] | None = None,
    ) -> FitResult:
        """Fit the law stage by stage on the ``split == "fit"`` rows (sparse_scaling.md §3).

        Each stage minimises Σ Huber_δ(log L̂ − log L) over its free parameters with ``torch.optim.LBFGS``
        (strong-Wolfe line search), ``outer_steps`` steps from every start of its grid, keeping the lowest
        objective. Stage 1 fits a, b, e, α (β = α) on dense one-epoch runs; stage 2 fits a, b, e, α, ε, μ, c on
        all one-epoch runs, starting a, b, e, α from stage 1; stage 3 fits log R_N*, log R_D* on dense
        multi-epoch runs; stage 4 fits λ1, σ1, λ2, σ2 on sparse multi-epoch runs; the parameters of earlier
        stages are frozen. A stage not listed keeps this law's coefficients (the start values).

        Args:
            rows: run dicts as from :func:`read_runs_csv`; held-out rows are ignored.
            stages: the stages to run, a subset of (1, 2, 3, 4), run in increasing order.
            grid: ``"default"``, ``"reduced"`` or ``{stage: {variable: values}}`` laid over the default
                grid (stage-3 variables are ``log_rn_star`` and ``log_rd_star``).
            settings: LBFGS settings (the paper's by default).
            progress: called with a short status line after each start (e.g. ``print``).
            free: ``{stage: variables}`` replacing a stage's free variables by a subset of those its form
                has (stages 1–2: a, b, e, alpha, epsilon, mu, c; stages 3–4: log_rn_star, log_rd_star,
                lambda1, sigma1, lambda2, sigma2), the others frozen at their current values: for data
                that cannot identify every coefficient (the miniature grid has one N and one U). ``None``
                (default) = the paper's stages.

        Returns:
            The fitted coefficients and, per stage, the rows, free parameters, lowest objective and the
            R² **of L (not log L)** of the stage's own form on its rows.
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: intra-op threads only add contention
        try:
            return self._fit(rows, stages, grid, settings, progress, free or {})
        finally:
            torch.set_num_threads(threads)

    def _fit(
        self,
        rows: Sequence[Mapping[str, Any]],
        stages: Sequence[int],
        grid: Mapping[int, Mapping[str, Sequence[float]]] | str,
        settings: FitSettings,
        progress: Callable[[str], None] | None,
        free: Mapping[int, Sequence[str]],
    ) -> FitResult:
        grid = resolve_grid(grid)
        for stage, names in free.items():
            allowed = _FREE_CHOICES.get(int(stage), ())
            bad = [v for v in names if v not in allowed]
            if bad or not names:
                raise ValueError(f"free: stage {stage}: {bad or 'no variables'} not among {allowed}")
        data_all = _rows_to_arrays(rows)
        fit_rows = data_all["split_fit"]
        stages = tuple(sorted(set(int(s) for s in stages)))
        for s in stages:
            if s not in STAGE_FREE_PARAMETERS:
                raise ValueError(f"stages: {s!r} is not one of 1, 2, 3, 4")
        theta = _theta_from(self.coefficients)
        results = []
        for stage in stages:
            mask = fit_rows & stage_mask(data_all["density"], data_all["unique"], data_all["total"], stage)
            n_rows = int(mask.sum())
            if n_rows == 0:
                raise ValueError(f"stage {stage}: no fit rows ({STAGE_ROWS[stage]} runs needed)")
            data = {key: _as_float_tensor(data_all[key][mask]) for key in ("n_active", "density", "unique", "total")}
            log_loss = torch.log(_as_float_tensor(data_all["loss"][mask]))
            t0 = time.perf_counter()
            variables = tuple(free.get(stage, _STAGE_VARIABLES[stage]))
            theta, objective, starts = self._fit_stage(stage, theta, data, log_loss, grid[stage], settings, progress,
                                                       variables)  # fmt: skip
            th = {k: torch.tensor(v, dtype=torch.float64) for k, v in _full_theta(theta).items()}
            with torch.no_grad():
                pred = torch.exp(_stage_log_prediction(stage, th, data)).numpy()
            r2 = r2_score(np.exp(log_loss.numpy()), pred)
            shown = STAGE_FREE_PARAMETERS[stage] if stage not in free else variables
            results.append(StageResult(stage, n_rows, tuple(shown), objective, r2, starts,
                                       time.perf_counter() - t0))  # fmt: skip
        coef = LawCoefficients(**{f.name: _full_theta(theta)[f.name] for f in dataclasses.fields(LawCoefficients)})
        return FitResult(coef, tuple(results))

    @staticmethod
    def _fit_stage(
        stage: int,
        theta: dict[str, float],
        data: dict[str, torch.Tensor],
        log_loss: torch.Tensor,
        stage_grid: Mapping[str, Sequence[float]],
        settings: FitSettings,
        progress: Callable[[str], None] | None,
        variables: tuple[str, ...],
    ) -> tuple[dict[str, float], float, int]:
        axes = [tuple(stage_grid[v]) for v in variables if v in stage_grid]
        names = [v for v in variables if v in stage_grid]
        starts = list(itertools.product(*axes))
        best_obj, best_vec = math.inf, None
        for i, start in enumerate(starts, 1):
            init = dict(theta)
            init.update(zip(names, start))
            vec = torch.tensor([init[v] for v in variables], dtype=torch.float64, requires_grad=True)
            frozen = {k: torch.tensor(v, dtype=torch.float64) for k, v in _full_theta(init).items()}
            opt = torch.optim.LBFGS(
                [vec], lr=settings.lr, history_size=settings.history_size, max_iter=settings.max_iter,
                line_search_fn="strong_wolfe", tolerance_grad=settings.tolerance_grad,
                tolerance_change=settings.tolerance_change,
            )  # fmt: skip  # LBFGS lr 0.1, history 10, max_iter 20, strong Wolfe (§3 fitting recipe)

            def objective() -> torch.Tensor:
                th = dict(frozen)
                th.update({v: vec[j] for j, v in enumerate(variables)})
                if stage >= 3:  # R* are optimised in log space (§3 fitting recipe)
                    th["rn_star"], th["rd_star"] = torch.exp(th["log_rn_star"]), torch.exp(th["log_rd_star"])
                pred = _stage_log_prediction(stage, th, data)
                # Σ Huber_δ(log L̂ − log L), δ = 1e-3 (§3 fitting recipe)
                return torch.nn.functional.huber_loss(pred, log_loss, delta=settings.huber_delta, reduction="sum")

            def closure() -> torch.Tensor:
                opt.zero_grad()
                value = objective()
                value.backward()
                return value

            for _ in range(settings.outer_steps):  # 50 outer steps per start (§3 fitting recipe)
                opt.step(closure)
            with torch.no_grad():
                final = float(objective())
            if math.isfinite(final) and final < best_obj:  # keep the lowest objective (§3)
                best_obj, best_vec = final, vec.detach().clone()
            if progress is not None:
                progress(f"stage {stage}: start {i}/{len(starts)}  objective {final:.4e}  best {best_obj:.4e}")
        if best_vec is None:
            raise ValueError(f"stage {stage}: every start diverged (objective not finite)")
        out = dict(theta)
        out.update({v: float(best_vec[j]) for j, v in enumerate(variables)})
        if stage >= 3:
            out["rn_star"], out["rd_star"] = math.exp(out["log_rn_star"]), math.exp(out["log_rd_star"])
        return out, best_obj, len(starts)


def _full_theta(theta: Mapping[str, float]) -> dict[str, float]:
    out = dict(theta)
    out.setdefault("log_rn_star", math.log(max(out["rn_star"], 1e-300)))
    out.setdefault("log_rd_star", math.log(max(out["rd_star"], 1e-300)))
    return out


def resolve_grid(grid: Mapping[int, Mapping[str, Sequence[float]]] | str) -> dict[int, dict[str, tuple]]:
    """A full per-stage grid from ``"default"``, ``"reduced"`` or a ``{stage: {variable: values}}`` mapping
    laid over the default grid (omitted stages and variables keep the default values)."""
    if isinstance(grid, str):
        if grid not in NAMED_GRIDS:
            near = difflib.get_close_matches(grid, list(NAMED_GRIDS), n=1)
            raise ValueError(f"grid: unknown grid '{grid}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
        return {s: dict(v) for s, v in NAMED_GRIDS[grid].items()}
    out = {s: dict(v) for s, v in DEFAULT_GRID.items()}
    for stage, axes in grid.items():
        try:
            stage_i = int(stage)
        except (TypeError, ValueError):
            raise ValueError(f"grid: stage {stage!r} is not one of 1, 2, 3, 4") from None
        if stage_i not in out:
            raise ValueError(f"grid: stage {stage!r} is not one of 1, 2, 3, 4")
        if not isinstance(axes, Mapping):
            raise ValueError(f"grid.{stage}: expected a mapping of variable: [values]")
        for name, values in axes.items():
            if name not in _STAGE_VARIABLES[stage_i]:
                near = difflib.get_close_matches(str(name), _STAGE_VARIABLES[stage_i], n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                raise ValueError(f"grid.{stage}: unknown variable '{name}'{hint}")
            vals = values if isinstance(values, (list, tuple)) else [values]
            if not vals or not all(_is_number(v) for v in vals):
                raise ValueError(f"grid.{stage}.{name}: expected a non-empty list of numbers")
            out[stage_i][name] = tuple(float(v) for v in vals)
    return out


def _rows_to_arrays(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    if len(rows) == 0:
        raise ValueError("no runs to fit")
    try:
        cols = {c: np.array([float(r[c]) for r in rows], dtype=np.float64) for c in NUMERIC_COLUMNS}
    except KeyError as err:
        raise ValueError(f"runs: missing column {err.args[0]!r}") from None
    return {
        "n_active": cols["density"] * cols["n_total"],  # N_a = d·N (§3)
        "n_total": cols["n_total"], "density": cols["density"], "unique": cols["unique_tokens"],
        "total": cols["total_tokens"], "loss": cols["loss"],
        "split_fit": np.array([str(r.get("split", "fit")) == "fit" for r in rows]),
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Runs CSV (sparse_scaling.md §2, §4 items 1–3)
# --------------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _validate_row(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One checked run dict; ``where`` prefixes every error ("file: row k")."""
    out: dict[str, Any] = {"run_id": str(row.get("run_id", "")).strip()}
    for col in NUMERIC_COLUMNS:
        raw = row.get(col)
        if not _is_number(raw):
            raise ValueError(f"{where}: column '{col}': not a number: {raw!r}")
        out[col] = float(raw)
    for col in ("n_total", "unique_tokens", "total_tokens", "loss"):
        if out[col] <= 0:
            raise ValueError(f"{where}: column '{col}': must be positive, got {row.get(col)!r}")
    if not 0 < out["density"] <= 1:
        raise ValueError(f"{where}: column 'density': must be in (0, 1], got {row.get('density')!r}")
    if out["total_tokens"] < out["unique_tokens"]:
        raise ValueError(f"{where}: column 'total_tokens': {row.get('total_tokens')!r} is below unique_tokens "
                         f"{row.get('unique_tokens')!r}")  # fmt: skip
    split = str(row.get("split", "")).strip()
    if split not in SPLITS:
        raise ValueError(f"{where}: column 'split': must be 'fit' or 'heldout', got {row.get('split')!r}")
    out["split"] = split
    return out


def read_runs_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a runs CSV: one row per run with columns ``run_id, n_total, density, unique_tokens,
    total_tokens, loss, split`` (``fit`` or ``heldout``); extra columns are ignored (sparse_scaling.md §2).
    N is the nominal total parameter count (counting rule of §3), stored explicitly per run. Every error is
    one line naming the file, the row (1 = first data row) and the column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"{path}: cannot read runs CSV ({err.strerror})") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ROW_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column '{missing[0]}' (header: {', '.join(header) or 'empty'})")
    reader.fieldnames = header
    rows = []
    for k, raw in enumerate(reader, 1):
        if raw is None or all((v or "").strip() == "" for v in raw.values() if isinstance(v, str)):
            continue
        rows.append(_validate_row({c: (raw.get(c) or "").strip() for c in ROW_COLUMNS}, f"{path}: row {k}"))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def write_runs_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write run dicts as a runs CSV with the schema of :func:`read_runs_csv` (floats at full precision)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ROW_COLUMNS)
        for r in rows:
            w.writerow([r["run_id"]] + [repr(float(r[c])) for c in NUMERIC_COLUMNS] + [r.get("split", "fit")])


# --------------------------------------------------------------------------------------------------
# Synthetic runs for the round trip (sparse_scaling.md §6 "Round trip")
# --------------------------------------------------------------------------------------------------

SYNTHETIC_GROUPS = (
    # (name, count, densities, epochs) — sparse_scaling.md §6 "Round trip"
    ("dense_1ep", 30, (1.0,), (1,)),
    ("sparse_1ep", 60, (0.5, 0.25, 0.125, 0.0625), (1,)),
    ("dense_multi", 30, (1.0,), (2, 4, 8, 16)),
    ("sparse_multi", 60, (0.5, 0.25, 0.125, 0.0625), (2, 4, 8, 16)),
)


def synthetic_rows(
    coefficients: LawCoefficients = PUBLISHED,
    seed: int = 0,
    noise: float = 0.005,
    one_epoch_within_supported: bool = True,
) -> list[dict[str, Any]]:
    """180 synthetic runs with losses from the full law (sparse_scaling.md §6 "Round trip").

    Groups: 30 dense one-epoch, 60 sparse one-epoch, 30 dense multi-epoch, 60 sparse multi-epoch. N is
    log-uniform in [1e7, 2e9], U log-uniform in [1e8, 3e9], sparse densities cycle through
    {0.5, 0.25, 0.125, 0.0625}, epochs through {2, 4, 8, 16} (D = epochs·U); the loss is the law's
    prediction times (1 + noise·z), z standard normal; ``numpy.random.default_rng(seed)``.

    With ``one_epoch_within_supported`` (default) each one-epoch point is redrawn until N_a ≤ U_N, i.e. the
    unique data supports the active parameters (D ≥ N_a/G(d)², Chinchilla-like token counts, as in the
    paper's one-epoch runs). Stages 1–2 fit the one-epoch form E + A·g/N_a^α + B/D^β, which equals the full
    law only there; independent draws would put most one-epoch points in the excess-parameter regime, where
    the full law's N' < N_a and the stage-1/2 form cannot recover α. Multi-epoch points are not constrained.
    """
    law = SparseDCScalingLaw(coefficients)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for name, count, densities, epochs in SYNTHETIC_GROUPS:
        for i in range(count):
            d, ep = float(densities[i % len(densities)]), int(epochs[i % len(epochs)])
            while True:
                n = float(math.exp(rng.uniform(math.log(1e7), math.log(2e9))))  # N log-uniform [1e7, 2e9]
                u = float(math.exp(rng.uniform(math.log(1e8), math.log(3e9))))  # U log-uniform [1e8, 3e9]
                if ep > 1 or not one_epoch_within_supported:
                    break
                k = coefficients
                if d * n <= float(unique_params(d * n, u, law.G(d), k.alpha, k.beta)) * (1 + 1e-12):
                    break
            loss = law.predict(n, d, u, ep * u) * (1.0 + noise * float(rng.standard_normal()))
            rows.append({"run_id": f"{name}_{i:02d}", "n_total": n, "density": d, "unique_tokens": u,
                         "total_tokens": ep * u, "loss": loss, "split": "fit"})  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------
# Law YAML (``law:`` section) and the fit-law / predict-law commands
# --------------------------------------------------------------------------------------------------

LAW_KEYS = ("runs", "tensorboard", "synthetic", "coefficients", "stages", "grid", "optimizer", "output",
            "unique_budgets", "flop_budgets", "u_budget", "points", "figure_point")  # fmt: skip
SYNTHETIC_KEYS = ("seed", "noise")
POINT_KEYS = ("run_id", "n_total", "density", "unique_tokens", "total_tokens", "loss")
FIGURE_POINT_KEYS = ("n_total", "unique_tokens")


@dataclasses.dataclass(frozen=True)
class LawConfig:
    """A validated ``law:`` section (see :func:`load_law_config` for the keys and defaults)."""

    path: str
    runs: str | None = None
    tensorboard: str | None = None
    synthetic: tuple[int, float] | None = None
    coefficients: LawCoefficients = PUBLISHED
    coefficients_name: str = "published"
    stages: tuple[int, ...] = (1, 2, 3, 4)
    grid: Any = "default"
    optimizer: FitSettings = FitSettings()
    output: str = ""
    unique_budgets: tuple[float, ...] = (1.3e9, 1.3e10, 1.3e11)
    flop_budgets: tuple[float, ...] = (1e19, 1e20, 1e21)
    u_budget: float = 2.6e9
    points: tuple[dict[str, Any], ...] = ()
    figure_point: tuple[float, float] = (2.68e8, 2.6e9)


class LawConfigError(ValueError):
    """A bad law YAML: the message is one line naming the file and the key."""


def _unknown_key(source: str, key: str, valid: Sequence[str]) -> LawConfigError:
    near = difflib.get_close_matches(str(key), list(valid), n=1)
    return LawConfigError(f"{source}: unknown key '{key}'" + (f" (did you mean '{near[0]}'?)" if near else ""))


def _number(source: str, key: str, value: Any, positive: bool = True) -> float:
    if not _is_number(value):
        raise LawConfigError(f"{source}: key '{key}': expected a number, got {value!r}")
    v = float(value)
    if positive and v <= 0:
        raise LawConfigError(f"{source}: key '{key}': must be positive, got {value!r}")
    return v


def _numbers(source: str, key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise LawConfigError(f"{source}: key '{key}': expected a non-empty list of numbers")
    return tuple(_number(source, f"{key}[{i}]", v) for i, v in enumerate(value))


def load_law_config(path: str | Path) -> LawConfig:
    """Read and validate a law YAML whose top level is a single ``law:`` mapping. No data is read.

    Keys of ``law:`` (all optional):

    - at most one data source for ``fit-law``: ``runs:`` (a runs CSV; relative paths resolve against the
      current directory), ``tensorboard:`` (a folder of training runs, read by
      ``trainer.sweep.collect_tensorboard_rows``) or ``synthetic: {seed: 0, noise: 0.005}`` (the §6 round trip
      with losses from ``coefficients``);
    - ``coefficients:`` ``published`` (default), ``published_stage4_refit``, ``muennighoff_c4`` or a JSON
      path: the start values, the frozen values of stages not run, and what ``predict-law`` uses;
    - ``stages:`` a list from 1–4 (default all); ``grid:`` ``default`` | ``reduced`` |
      ``{stage: {variable: [values]}}``; ``optimizer:`` ``{lr, history_size, max_iter, outer_steps,
      huber_delta}``;
    - ``output:`` folder for ``coefficients.json``/``predictions.json``, ``table.txt`` and TensorBoard events
      (default ``runs/sparse_scaling/<yaml stem>``);
    - ``predict-law``: ``unique_budgets`` (default [1.3e9, 1.3e10, 1.3e11]), ``flop_budgets`` (default
      [1e19, 1e20, 1e21]), ``u_budget`` (default 2.6e9), ``points:`` a list of ``{n_total, density,
      unique_tokens, total_tokens[, run_id, loss]}``; ``figure_point: {n_total, unique_tokens}`` is the fixed
      (N, U) of the loss-against-epochs figure (default 2.68e8, 2.6e9).

    Raises:
        LawConfigError: one line naming the file and the key (with the nearest valid key for a typo).
    """
    import yaml as pyyaml

    from trainer.paths import resolve_config_path

    src = str(path)
    path = resolve_config_path(path)  # as given, else under the project root (like --config)
    try:
        doc = pyyaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise LawConfigError(f"{src}: cannot read ({err.strerror})") from None
    except pyyaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise LawConfigError(f"{src}: not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    if not isinstance(doc, dict) or "law" not in doc:
        raise LawConfigError(f"{src}: expected a top-level 'law:' mapping")
    extra = [k for k in doc if k != "law"]
    if extra:
        raise LawConfigError(f"{src}: unknown top-level key '{extra[0]}' (a law YAML has only 'law:')")
    law = doc["law"] or {}
    if not isinstance(law, dict):
        raise LawConfigError(f"{src}: key 'law': expected a mapping")
    for key in law:
        if key not in LAW_KEYS:
            raise _unknown_key(src, f"law.{key}", [f"law.{k}" for k in LAW_KEYS])
    kw: dict[str, Any] = {"path": src}
    sources = [k for k in ("runs", "tensorboard", "synthetic") if law.get(k) is not None]
    if len(sources) > 1:
        raise LawConfigError(f"{src}: keys 'law.{sources[0]}' and 'law.{sources[1]}': give one data source")
    for key in ("runs", "tensorboard"):
        if law.get(key) is not None:
            if not isinstance(law[key], str) or not law[key]:
                raise LawConfigError(f"{src}: key 'law.{key}': expected a path")
            kw[key] = law[key]
    if law.get("synthetic") is not None:
        syn = law["synthetic"]
        if syn is True:
            syn = {}
        if not isinstance(syn, dict):
            raise LawConfigError(f"{src}: key 'law.synthetic': expected a mapping {{seed, noise}}")
        for k in syn:
            if k not in SYNTHETIC_KEYS:
                raise _unknown_key(src, f"law.synthetic.{k}", [f"law.synthetic.{s}" for s in SYNTHETIC_KEYS])
        seed = syn.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LawConfigError(f"{src}: key 'law.synthetic.seed': expected an integer, got {seed!r}")
        noise = _number(src, "law.synthetic.noise", syn.get("noise", 0.005), positive=False)
        if noise < 0:
            raise LawConfigError(f"{src}: key 'law.synthetic.noise': must be ≥ 0, got {noise!r}")
        kw["synthetic"] = (seed, noise)
    if "coefficients" in law:
        name = law["coefficients"]
        if not isinstance(name, str) or not name:
            raise LawConfigError(f"{src}: key 'law.coefficients': expected a name or a JSON path")
        if name in NAMED_COEFFICIENTS:
            kw["coefficients"] = NAMED_COEFFICIENTS[name]
        elif name.endswith(".json"):
            try:
                kw["coefficients"] = LawCoefficients.from_json(name)
            except ValueError as err:
                raise LawConfigError(f"{src}: key 'law.coefficients': {err}") from None
        else:
            near = difflib.get_close_matches(name, list(NAMED_COEFFICIENTS), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else " (or a .json path)"
            raise LawConfigError(f"{src}: key 'law.coefficients': unknown coefficients '{name}'{hint}")
        kw["coefficients_name"] = name
    if "stages" in law:
        st = law["stages"]
        if not isinstance(st, list) or not st or not all(isinstance(s, int) and s in (1, 2, 3, 4) for s in st):
            raise LawConfigError(f"{src}: key 'law.stages': expected a list from 1, 2, 3, 4, got {st!r}")
        kw["stages"] = tuple(sorted(set(st)))
    if "grid" in law:
        try:
            resolve_grid(law["grid"])
        except ValueError as err:
            raise LawConfigError(f"{src}: key 'law.grid': {str(err).removeprefix('grid: ')}") from None
        kw["grid"] = law["grid"]
    if "optimizer" in law:
        opt = law["optimizer"]
        if not isinstance(opt, dict):
            raise LawConfigError(f"{src}: key 'law.optimizer': expected a mapping")
        fields = [f.name for f in dataclasses.fields(FitSettings)]
        vals = {}
        for k, v in opt.items():
            if k not in fields:
                raise _unknown_key(src, f"law.optimizer.{k}", [f"law.optimizer.{f}" for f in fields])
            x = _number(src, f"law.optimizer.{k}", v, positive=not k.startswith("tolerance"))
            if x < 0:
                raise LawConfigError(f"{src}: key 'law.optimizer.{k}': must be ≥ 0, got {v!r}")
            if k in ("history_size", "max_iter", "outer_steps"):
                if float(x) != int(x):
                    raise LawConfigError(f"{src}: key 'law.optimizer.{k}': expected an integer, got {v!r}")
                x = int(x)
            vals[k] = x
        kw["optimizer"] = FitSettings(**vals)
    if "output" in law:
        if not isinstance(law["output"], str) or not law["output"]:
            raise LawConfigError(f"{src}: key 'law.output': expected a folder path")
        kw["output"] = law["output"]
    else:
        kw["output"] = str(Path("runs") / "sparse_scaling" / Path(src).stem)
    for key in ("unique_budgets", "flop_budgets"):
        if key in law:
            kw[key] = _numbers(src, f"law.{key}", law[key])
    if "u_budget" in law:
        kw["u_budget"] = _number(src, "law.u_budget", law["u_budget"])
    if "points" in law:
        pts = law["points"]
        if not isinstance(pts, list):
            raise LawConfigError(f"{src}: key 'law.points': expected a list of mappings")
        checked = []
        for i, p in enumerate(pts):
            where = f"law.points[{i}]"
            if not isinstance(p, dict):
                raise LawConfigError(f"{src}: key '{where}': expected a mapping")
            for k in p:
                if k not in POINT_KEYS:
                    raise _unknown_key(src, f"{where}.{k}", [f"{where}.{c}" for c in POINT_KEYS])
            row = {"run_id": str(p.get("run_id", f"point_{i}"))}
            for k in ("n_total", "density", "unique_tokens", "total_tokens"):
                if k not in p:
                    raise LawConfigError(f"{src}: key '{where}.{k}': missing")
                row[k] = _number(src, f"{where}.{k}", p[k])
            if row["density"] > 1:
                raise LawConfigError(f"{src}: key '{where}.density': must be in (0, 1], got {p['density']!r}")
            if row["total_tokens"] < row["unique_tokens"]:
                raise LawConfigError(f"{src}: key '{where}.total_tokens': below unique_tokens")
            if "loss" in p:
                row["loss"] = _number(src, f"{where}.loss", p["loss"])
            checked.append(row)
        kw["points"] = tuple(checked)
    if "figure_point" in law:
        fp = law["figure_point"]
        if not isinstance(fp, dict):
            raise LawConfigError(f"{src}: key 'law.figure_point': expected a mapping {{n_total, unique_tokens}}")
        for k in fp:
            if k not in FIGURE_POINT_KEYS:
                raise _unknown_key(src, f"law.figure_point.{k}", [f"law.figure_point.{c}" for c in FIGURE_POINT_KEYS])
        kw["figure_point"] = (
            _number(src, "law.figure_point.n_total", fp.get("n_total", 2.68e8)),
            _number(src, "law.figure_point.unique_tokens", fp.get("unique_tokens", 2.6e9)),
        )
    return LawConfig(**kw)


def _parse_argv(prog: str, argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"trainer {prog}", add_help=True)
    parser.add_argument("--config", required=True, help="a law YAML (top-level 'law:')")
    parser.add_argument("--output", default=None, help="override law.output")
    parser.add_argument("--runs", default=None, help="override the data source with a runs CSV")

    def error(message: str) -> None:  # one line, exit code 2, no usage dump
        raise LawConfigError(f"trainer {prog}: {message}")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(list(argv))


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.4f}"


def coefficient_table(fitted: LawCoefficients, reference: LawCoefficients = PUBLISHED) -> str:
    """A plain-text table: coefficient, fitted value, reference value, relative difference."""
    lines = [f"{'coefficient':<12}{'fitted':>14}{'published':>14}{'rel. diff':>11}"]
    for name, v in fitted.to_dict().items():
        ref = getattr(reference, name)
        rel = abs(v - ref) / abs(ref) if ref != 0 else float("nan")
        lines.append(f"{name:<12}{v:>14.6f}{ref:>14.6f}{rel:>11.2%}")
    return "\n".join(lines)


def prediction_tables(law: SparseDCScalingLaw, cfg: LawConfig) -> tuple[str, dict[str, Any]]:
    """The loss-optimal and compute-optimal density tables and the ``points:`` predictions (text, JSON)."""
    out: dict[str, Any] = {"loss_optimal": [], "compute_optimal": [], "points": []}
    lines = ["loss-optimal (sparse_scaling.md §3 Analyses): grid over N, epochs, d at fixed unique budget U",
             f"{'U':>10}{'d':>8}{'S':>8}{'N total':>11}{'N active':>11}{'epochs':>8}{'loss':>9}"]  # fmt: skip
    for u in cfg.unique_budgets:
        r = law.loss_optimal_density(u)
        out["loss_optimal"].append(r)
        lines.append(f"{u:>10.3g}{r['density']:>8.3f}{r['sparsity']:>8.3f}{r['n_total']:>11.3g}"
                     f"{r['n_active']:>11.3g}{r['epochs']:>8.0f}{r['loss']:>9.4f}")  # fmt: skip
    lines += ["", f"compute-optimal (sparse_scaling.md §3 Analyses) at U_budget = {cfg.u_budget:.3g}",
              f"{'FLOPs':>10}{'d':>8}{'S':>8}{'r':>7}{'N total':>11}{'N active':>11}{'D':>11}{'epochs':>8}"
              f"{'loss':>9}"]  # fmt: skip
    for f in cfg.flop_budgets:
        r = law.compute_optimal_density(f, cfg.u_budget)
        out["compute_optimal"].append(r)
        lines.append(f"{f:>10.3g}{r['density']:>8.3f}{r['sparsity']:>8.3f}{r['ratio']:>7.2f}"
                     f"{r['n_total']:>11.3g}{r['n_active']:>11.3g}{r['total_tokens']:>11.3g}"
                     f"{r['epochs']:>8.2f}{r['loss']:>9.4f}")  # fmt: skip
    if cfg.points:
        lines += ["", f"{'run_id':<24}{'N total':>11}{'d':>8}{'U':>10}{'D':>10}{'predicted':>11}{'observed':>10}"]
        for p in cfg.points:
            pred = law.predict(p["n_total"], p["density"], p["unique_tokens"], p["total_tokens"])
            out["points"].append({**p, "predicted": pred})
            obs = f"{p['loss']:>10.4f}" if "loss" in p else f"{'–':>10}"
            lines.append(f"{p['run_id']:<24}{p['n_total']:>11.3g}{p['density']:>8.4f}{p['unique_tokens']:>10.3g}"
                         f"{p['total_tokens']:>10.3g}{pred:>11.4f}{obs}")  # fmt: skip
    return "\n".join(lines), out


# -- figures (sparse_scaling.md §8 "fit-law runs") ------------------------------------------------


def _figures(law: SparseDCScalingLaw, cfg: LawConfig, observed: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    if observed:
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        lo, hi = math.inf, -math.inf
        for split, color in (("fit", "tab:blue"), ("heldout", "tab:red")):
            pts = [r for r in observed if r.get("split", "fit") == split]
            if not pts:
                continue
            y = np.array([r["loss"] for r in pts])
            p = np.array([law.predict(r["n_total"], r["density"], r["unique_tokens"], r["total_tokens"]) for r in pts])
            ax.scatter(y, p, s=12, color=color, label=f"{split} (R² {r2_score(y, p):.3f})")
            lo, hi = min(lo, y.min(), p.min()), max(hi, y.max(), p.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlabel("observed loss")
        ax.set_ylabel("predicted loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        figs["law/predicted_vs_observed"] = fig

    n_fix, u_fix = cfg.figure_point
    epochs = np.logspace(0, math.log10(64), 60)
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for d in (1.0, 0.5, 0.25):
        ax.plot(epochs, law.predict(n_fix, d, u_fix, epochs * u_fix), label=f"d = {d:g}")
    ax.set_xscale("log")
    ax.set_xlabel("epochs D/U")
    ax.set_ylabel("predicted loss")
    ax.set_title(f"N = {n_fix:.3g}, U = {u_fix:.3g}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs["law/loss_vs_epochs"] = fig

    s = np.linspace(0.0, 0.95, 96)
    rn_s, rd_s = law.half_lives(s)
    k = law.coefficients
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.plot(s, rn_s, color="tab:blue", label="R_N*(S)")
    ax.plot(s, rd_s, color="tab:orange", label="R_D*(S)")
    ax.axhline(k.rn_star, color="tab:blue", ls=":", lw=1, label="R_N* (dense)")
    ax.axhline(k.rd_star, color="tab:orange", ls=":", lw=1, label="R_D* (dense)")
    ax.set_xlabel("sparsity S")
    ax.set_ylabel("repetition half-life")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs["law/half_lives"] = fig

    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for i, f in enumerate(cfg.flop_budgets):
        curve = law.compute_optimal_curve(f, cfg.u_budget)
        j = int(np.nanargmin(curve["loss"]))
        color = plt.get_cmap("viridis")(i / max(len(cfg.flop_budgets) - 1, 1))
        ax.plot(1 - curve["density"], curve["loss"], color=color, label=f"F = {f:.0e}")
        ax.scatter([1 - curve["density"][j]], [curve["loss"][j]], marker="*", s=90, color=color, edgecolors="k")
    ax.set_xlabel("sparsity S")
    ax.set_ylabel("best predicted loss")
    ax.set_title(f"iso-FLOP, U_budget = {cfg.u_budget:.3g} (★ optimum)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs["law/isoflop"] = fig
    return figs


def _log_tensorboard(
    output: Path, scalars: Mapping[str, float], text: Mapping[str, str], figs: Mapping[str, Any]
) -> None:
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(output))
    try:
        for tag, value in scalars.items():
            if math.isfinite(value):
                writer.add_scalar(tag, value, 0)
        for tag, body in text.items():
            writer.add_text(tag, body, 0)
        for tag, fig in figs.items():
            writer.add_figure(tag, fig, 0)
    finally:
        writer.close()
        for fig in figs.values():
            plt.close(fig)


def _markdown_coefficients(fitted: LawCoefficients, reference: LawCoefficients = PUBLISHED) -> str:
    rows = ["| coefficient | value | published |", "|---|---|---|"]
    rows += [f"| {n} | {v:.6g} | {getattr(reference, n):.6g} |" for n, v in fitted.to_dict().items()]
    return "\n".join(rows)


def _load_rows(cfg: LawConfig, runs_override: str | None) -> list[dict[str, Any]]:
    if runs_override is not None:
        return read_runs_csv(runs_override)
    if cfg.runs is not None:
        return read_runs_csv(cfg.runs)
    if cfg.tensorboard is not None:
        from trainer.sweep import collect_tensorboard_rows  # the training side's collector

        rows = collect_tensorboard_rows(cfg.tensorboard)
        return [_validate_row(r, f"{cfg.tensorboard}: run {r.get('run_id', i)}") for i, r in enumerate(rows, 1)]
    if cfg.synthetic is not None:
        seed, noise = cfg.synthetic
        return synthetic_rows(cfg.coefficients, seed=seed, noise=noise)
    raise LawConfigError(f"{cfg.path}: key 'law.runs': fit-law needs a data source (runs, tensorboard or synthetic)")


def fit_law_main(argv: Sequence[str]) -> int:
    """``trainer fit-law --config LAW.yaml [--output DIR] [--runs CSV]``: fit the law stage by stage, print a
    table (per stage: rows, free parameters, objective, R² of L; then the coefficients against PUBLISHED),
    write ``coefficients.json`` and ``table.txt`` and log to TensorBoard under the output folder. Returns 0,
    or 2 after one line on stderr for bad input."""
    try:
        args = _parse_argv("fit-law", argv)
        cfg = load_law_config(args.config)
        rows = _load_rows(cfg, args.runs)
        output = Path(args.output or cfg.output)
        law = SparseDCScalingLaw(cfg.coefficients)
        t0 = time.perf_counter()

        def progress(line: str) -> None:
            print(f"\r{line:<78}", end="", file=sys.stderr, flush=True)

        result = law.fit(rows, stages=cfg.stages, grid=cfg.grid, settings=cfg.optimizer, progress=progress)
        print(file=sys.stderr)
    except ValueError as err:  # LawConfigError, CSV and fit errors: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    fitted = SparseDCScalingLaw(result.coefficients)
    lines = [f"fit-law: {len(rows)} runs ({sum(r['split'] == 'fit' for r in rows)} fit), stages {list(cfg.stages)}, "
             f"{time.perf_counter() - t0:.1f} s",
             f"{'stage':<7}{'rows':>6}{'starts':>8}{'objective':>12}{'R² (L)':>9}  free parameters"]  # fmt: skip
    scalars: dict[str, float] = {}
    for s in result.stages:
        lines.append(f"{s.stage:<7}{s.rows:>6}{s.starts:>8}{s.objective:>12.4e}{s.r2:>9.4f}  {', '.join(s.free)}")
        scalars[f"law/r2_stage{s.stage}"] = s.r2
        scalars[f"law/objective_stage{s.stage}"] = s.objective
    summary: dict[str, float] = {}
    for split in SPLITS:
        pts = [r for r in rows if r["split"] == split]
        if pts:
            y = np.array([r["loss"] for r in pts])
            cols = (np.array([r[c] for r in pts]) for c in ("n_total", "density", "unique_tokens", "total_tokens"))
            p = fitted.predict(*cols)
            summary[split] = r2_score(y, p)
            scalars[f"law/r2_{split}"] = summary[split]
    lines.append("full-form R² of L: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    lines += ["", coefficient_table(result.coefficients)]
    table = "\n".join(lines)
    print(table)
    output.mkdir(parents=True, exist_ok=True)
    payload = {
        "coefficients": result.coefficients.to_dict(),
        "stages": [dataclasses.asdict(s) for s in result.stages],
        "r2": summary,
        "published": PUBLISHED.to_dict(),
        "config": str(args.config),
    }
    (output / "coefficients.json").write_text(json.dumps(payload, indent=2) + "\n")
    (output / "table.txt").write_text(table + "\n")
    _log_tensorboard(output, scalars, {"law/coefficients": _markdown_coefficients(result.coefficients)},
                     _figures(fitted, cfg, rows))  # fmt: skip
    print(f"wrote {output / 'coefficients.json'}, {output / 'table.txt'} and TensorBoard events in {output}")
    return 0


def predict_law_main(argv: Sequence[str]) -> int:
    """``trainer predict-law --config LAW.yaml [--output DIR]``: with the configured coefficients print the
    loss-optimal (d, N, epochs) table for ``unique_budgets``, the compute-optimal density table for
    ``flop_budgets`` at ``u_budget`` and the ``points:`` predictions; write ``predictions.json`` and
    ``table.txt`` and log the figures to TensorBoard. Returns 0, or 2 after one line on stderr."""
    try:
        args = _parse_argv("predict-law", argv)
        cfg = load_law_config(args.config)
        if args.runs is not None:
            extra = read_runs_csv(args.runs)
            cfg = dataclasses.replace(cfg, points=cfg.points + tuple(extra))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    law = SparseDCScalingLaw(cfg.coefficients)
    table, payload = prediction_tables(law, cfg)
    table = f"predict-law: coefficients '{cfg.coefficients_name}'\n\n" + table
    print(table)
    output = Path(args.output or cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    payload["coefficients"] = cfg.coefficients.to_dict()
    (output / "predictions.json").write_text(json.dumps(payload, indent=2) + "\n")
    (output / "table.txt").write_text(table + "\n")
    observed = [dict(p, split=p.get("split", "heldout")) for p in cfg.points if "loss" in p]
    _log_tensorboard(output, {}, {"law/coefficients": _markdown_coefficients(cfg.coefficients)},
                     _figures(law, cfg, observed))  # fmt: skip
    print(f"wrote {output / 'predictions.json'}, {output / 'table.txt'} and TensorBoard events in {output}")
    return 0
