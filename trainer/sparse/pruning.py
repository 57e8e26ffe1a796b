"""One-shot post-training pruning: magnitude, Wanda, SparseGPT, N:M, and a block-wise driver (dst_core §10).

Methods (each prunes an ``[out, in]`` weight matrix ``W`` of a linear map ``y = W x``):

- **Magnitude**: zero the lowest-``|w|`` fraction ``s``, per output row (``granularity="row"``) or over the
  whole matrix (``granularity="layer"``).
- **Wanda**, "A Simple and Effective Pruning Approach for Large Language Models", Sun, Liu, Bair, Kolter
  (arXiv 2306.11695). With ``norm2_j`` the mean of ``x_j²`` over the calibration tokens, the score is
  ``S_ij = |W_ij| · sqrt(norm2_j)``; unstructured: each output row zeroes its ``floor(s·in)`` lowest scores;
  N:M: each group of ``M`` consecutive inputs of a row keeps its ``N`` highest scores.
- **SparseGPT**, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", Frantar &
  Alistarh (arXiv 2301.00774). With ``H = (2/n) Σ x xᵀ`` (dead columns ``H_jj = 0`` get ``H_jj = 1`` and
  ``W[:, j] = 0``), ``H += damp·mean(diag H)·I`` and ``U`` the upper Cholesky factor of ``H⁻¹``, columns are
  processed in blocks of ``B``: the unstructured mask of a block is the lowest ``s``-fraction of
  ``W_ij² / U_jj²`` over the whole ``rows × B`` block (N:M: per row, in each group of ``M`` columns, chosen
  when the group's first column is reached); each column's pruning error ``(W_:j − q_j) / U_jj`` is
  propagated to the later columns of the block through row ``j`` of ``U``, and to the columns after the
  block by one lazy batch update.

The driver :func:`prune_model_` runs block by block (dst_core §10): calibration inputs pass through block
``b`` with hooks on its targets collecting :class:`CalibrationStats`, block ``b`` is pruned, then its
outputs are recomputed with the pruned weights and fed to block ``b + 1``. It returns explicit bool keep
masks; callers should use them rather than ``W == 0`` (seft §4, pitfall 4).

Conventions and deviations:

- Exact counts use ``floor(s · n)`` as computed in floating point (as Wanda's ``int(in * s)``), so for
  example ``s = 0.29, n = 100`` prunes 28 entries, not 29.
- Ties are broken deterministically by a stable sort: among equal scores the **lower index is kept**
  (flat row-major index for whole-matrix and whole-block selections), as in ``trainer.sparse.criteria``.
- Unstructured SparseGPT selects per block over all rows, so the pruned count of every ``B``-column block
  is exactly ``floor(s · rows · B)``, but per-row counts are *not* equal (unlike Wanda and row magnitude).
- SparseGPT computes in float64 (the Hessian inverse and Cholesky factors are ill-conditioned in float32
  for small damping); the returned weight has the input dtype and masked entries are exactly 0. A dead
  column's kept entries are 0 in the weight but ``True`` in the mask (the mask records the selection).
- N:M with SparseGPT needs ``blocksize % M == 0`` so that no group straddles two blocks.
- Targets outside every block (e.g. ``lm_head``) are pruned last, from stats collected in one full forward
  pass of the model whose blocks are already pruned.
- :class:`CalibrationStats` accumulates in float32 by default (``dtype`` option) as running averages.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import sys
from typing import Any

import torch
from torch import nn

__all__ = [
    "PRUNING_METHODS",
    "GRANULARITIES",
    "check_sparsity",
    "parse_pattern",
    "check_pattern_fits",
    "row_keep_count",
    "topk_row_mask",
    "nm_mask",
    "magnitude_mask",
    "wanda_scores",
    "wanda_mask",
    "sparsegpt_prune",
    "CalibrationStats",
    "prune_weight_",
    "find_blocks",
    "prune_model_",
    "mask_sparsity",
]

PRUNING_METHODS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
GRANULARITIES: tuple[str, ...] = ("row", "layer")

Pattern = tuple[int, int] | None


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------


def check_sparsity(s: float) -> float:
    """Return ``s`` as a float; ValueError unless it is a real number with ``0 <= s < 1``."""
    if isinstance(s, bool) or not isinstance(s, numbers.Real):
        raise ValueError(f"sparsity must be a number in [0, 1), got {s!r} ({type(s).__name__})")
    s = float(s)
    if not (0.0 <= s < 1.0):  # also rejects NaN
        raise ValueError(f"sparsity must satisfy 0 <= sparsity < 1, got {s!r}")
    return s


_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"N:M"`` with ``0 < N < M`` (e.g. ``"2:4"``, ``"4:8"``) -> ``(N, M)``."""
    valid = "valid patterns are 'unstructured' or 'N:M' with integers 0 < N < M (e.g. '2:4', '4:8')"
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string, got {pattern!r}; {valid}")
    if pattern.strip().lower() == "unstructured":
        return None
    match = _NM_RE.match(pattern)
    if match is None:
        raise ValueError(f"unknown sparsity pattern {pattern!r}; {valid}")
    n, m = int(match.group(1)), int(match.group(2))
    if not (0 < n < m):
        raise ValueError(f"bad N:M pattern {pattern!r}: need 0 < N < M; {valid}")
    return n, m


def _as_nm(pattern: str | tuple[int, int] | None) -> Pattern:
    """Accept a pattern string, an ``(N, M)`` tuple or None (unstructured)."""
    if pattern is None:
        return None
    if isinstance(pattern, str):
        return parse_pattern(pattern)
    if isinstance(pattern, tuple) and len(pattern) == 2:
        return parse_pattern(f"{pattern[0]}:{pattern[1]}")
    raise ValueError(f"pattern must be 'unstructured', 'N:M' or an (N, M) tuple, got {pattern!r}")


def check_pattern_fits(in_features: int, pattern: str | tuple[int, int] | None, name: str = "layer") -> None:
    """ValueError if an N:M ``pattern``'s M does not divide ``in_features`` (no-op when unstructured)."""
    nm = _as_nm(pattern)
    if nm is not None and in_features % nm[1] != 0:
        raise ValueError(f"N:M pattern {nm[0]}:{nm[1]} does not divide layer {name} with {in_features} inputs")


def _check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return granularity


def _check_2d(weight: torch.Tensor, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a 2-D [out, in] tensor, got {shape}")


# ----------------------------------------------------------------------------------------------------------
# masks from scores (pure)
# ----------------------------------------------------------------------------------------------------------


def row_keep_count(in_features: int, s: float) -> int:
    """Entries kept per output row: ``in − floor(s·in)`` (Wanda's per-row count)."""
    return int(in_features) - math.floor(check_sparsity(s) * in_features)  # dst_core §10


def _keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask keeping the ``n_keep`` highest scores along the last dim; ties keep the lower index."""
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if n_keep <= 0:
        return keep
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :n_keep]
    return keep.scatter_(-1, order, True)


def topk_row_mask(scores: torch.Tensor, s: float) -> torch.Tensor:
    """Keep mask zeroing the ``floor(s·in)`` lowest scores of every row of ``scores`` [out, in].

    Every row keeps exactly :func:`row_keep_count` entries; among equal scores the lower index is kept.
    """
    _check_2d(scores, "scores")
    return _keep_top(scores, row_keep_count(scores.shape[1], s))  # dst_core §10 (unstructured, per row)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask with the ``n`` highest scores in each group of ``m`` consecutive inputs of each row."""
    _check_2d(scores, "scores")
    _as_nm((n, m))
    check_pattern_fits(scores.shape[1], (n, m), "scores")
    out, inp = scores.shape
    groups = scores.reshape(out, inp // m, m)
    return _keep_top(groups, n).reshape(out, inp)  # dst_core §10 (N:M)


def _layer_mask(scores: torch.Tensor, s: float) -> torch.Tensor:
    """Keep mask zeroing the ``floor(s·numel)`` lowest scores of the whole matrix."""
    flat = scores.reshape(-1)
    n_keep = flat.numel() - math.floor(check_sparsity(s) * flat.numel())
    return _keep_top(flat, n_keep).reshape(scores.shape)


def _mask_from_scores(scores: torch.Tensor, s: float, pattern: Any, granularity: str = "row") -> torch.Tensor:
    nm = _as_nm(pattern)
    if nm is not None:
        return nm_mask(scores, *nm)
    if _check_granularity(granularity) == "layer":
        return _layer_mask(scores, s)
    return topk_row_mask(scores, s)


def magnitude_mask(
    weight: torch.Tensor,
    s: float,
    pattern: str | tuple[int, int] | None = "unstructured",
    granularity: str = "row",
) -> torch.Tensor:
    """Keep mask of magnitude pruning: the lowest ``|w|`` fraction ``s`` per row or per layer, or N:M.

    ``granularity`` ("row" or "layer") applies to unstructured pruning only; N:M is always per row group.
    """
    _check_2d(weight)
    check_sparsity(s)
    return _mask_from_scores(weight.detach().abs(), s, pattern, granularity)  # dst_core §10 (Magnitude)


def wanda_scores(weight: torch.Tensor, norm2: torch.Tensor) -> torch.Tensor:
    """Wanda scores ``S_ij = |W_ij| · sqrt(norm2_j)`` (float32 or wider); ``norm2`` [in] is the mean of x²."""
    _check_2d(weight)
    if norm2.dim() != 1 or norm2.numel() != weight.shape[1]:
        raise ValueError(f"norm2 must have shape [{weight.shape[1]}], got {tuple(norm2.shape)}")
    dtype = torch.promote_types(torch.promote_types(weight.dtype, norm2.dtype), torch.float32)
    w = weight.detach().to(dtype).abs()
    return w * norm2.detach().to(device=w.device, dtype=dtype).sqrt().unsqueeze(0)  # dst_core §10: S_ij


def wanda_mask(
    weight: torch.Tensor,
    norm2: torch.Tensor,
    s: float,
    pattern: str | tuple[int, int] | None = "unstructured",
) -> torch.Tensor:
    """Wanda keep mask: per row, zero the ``floor(s·in)`` lowest scores; or N:M on the scores."""
    check_sparsity(s)
    return _mask_from_scores(wanda_scores(weight, norm2), s, pattern, "row")  # dst_core §10 (Wanda)


# ----------------------------------------------------------------------------------------------------------
# SparseGPT (pure)
# ----------------------------------------------------------------------------------------------------------


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    s: float,
    pattern: str | tuple[int, int] | None = "unstructured",
    blocksize: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT of one ``[out, in]`` weight given ``H = (2/n) Σ x xᵀ`` [in, in]; returns ``(new_weight, keep)``.

    Computes in float64; ``new_weight`` has ``weight``'s dtype and device, with masked entries exactly 0.
    Unstructured masks are chosen per block of ``blocksize`` columns over all rows (exact count per block,
    unequal per row). Inputs are not modified.
    """
    _check_2d(weight)
    s = check_sparsity(s)
    nm = _as_nm(pattern)
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must have shape [{cols}, {cols}], got {tuple(hessian.shape)}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if isinstance(damp, bool) or not (isinstance(damp, numbers.Real) and damp >= 0):
        raise ValueError(f"damp must be a non-negative number, got {damp!r}")
    if nm is not None:
        check_pattern_fits(cols, nm, "weight")
        if blocksize % nm[1] != 0:
            raise ValueError(f"blocksize {blocksize} must be a multiple of M={nm[1]} for N:M SparseGPT")

    W = weight.detach().to(torch.float64).clone()
    H = hessian.detach().to(device=W.device, dtype=torch.float64).clone()

    dead = torch.diag(H) == 0
    dead_idx = torch.nonzero(dead).flatten()
    H[dead_idx, dead_idx] = 1.0  # dst_core §10: where H_jj == 0: H_jj = 1
    W[:, dead] = 0.0  # dst_core §10: W[:, j] = 0
    idx = torch.arange(cols, device=W.device)
    H[idx, idx] += damp * torch.mean(torch.diag(H))  # dst_core §10: H += 0.01·mean(diag H)·I
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    U = torch.linalg.cholesky(Hinv, upper=True)  # dst_core §10: U = upper Cholesky factor of H⁻¹
    diag_u = torch.diag(U)

    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    for j0 in range(0, cols, blocksize):
        j1 = min(j0 + blocksize, cols)
        bw = j1 - j0
        E = torch.zeros(rows, bw, dtype=torch.float64, device=W.device)
        if nm is None:
            # dst_core §10: the lowest s-fraction of W²/U_jj² over the whole rows × B block
            score = W[:, j0:j1] ** 2 / diag_u[j0:j1].unsqueeze(0) ** 2
            n_keep = score.numel() - math.floor(s * score.numel())
            keep[:, j0:j1] = _keep_top(score.reshape(-1), n_keep).reshape(rows, bw)
        for j in range(j0, j1):
            if nm is not None and j % nm[1] == 0:
                # dst_core §10: N:M, when j ≡ 0 mod M, keep the N highest W²/U_jj² per row in j..j+M−1
                m = nm[1]
                score = W[:, j : j + m] ** 2 / diag_u[j : j + m].unsqueeze(0) ** 2
                keep[:, j : j + m] = nm_mask(score, nm[0], m)
            w = W[:, j]
            q = torch.where(keep[:, j], w, torch.zeros_like(w))  # dst_core §10: q = W[:, j], masked 0
            err = (w - q) / U[j, j]  # dst_core §10: err = (W[:, j] − q)/U_jj
            W[:, j + 1 : j1] -= torch.outer(err, U[j, j + 1 : j1])  # dst_core §10: in-block propagation
            W[:, j] = q
            E[:, j - j0] = err
        W[:, j1:] -= E @ U[j0:j1, j1:]  # dst_core §10: lazy batch update

    new_weight = W.masked_fill(~keep, 0.0).to(device=weight.device, dtype=weight.dtype)
    return new_weight, keep.to(weight.device)


# ----------------------------------------------------------------------------------------------------------
# calibration statistics
# ----------------------------------------------------------------------------------------------------------


class CalibrationStats:
    """Running input statistics of one linear map ``y = W x`` over calibration tokens.

    ``norm2[j]`` is the running mean of ``x_j²`` over tokens (Wanda); with ``hessian=True`` also
    ``H = (2/n) Σ x xᵀ`` as a running average (SparseGPT). Every leading dim of ``x`` [..., in] counts as
    tokens. Both are exact running means: after ``add`` of batches with ``b_1, b_2, ...`` tokens they equal
    the statistics of the concatenated batches.

    Args:
        hessian: also accumulate ``H``. Default False.
        dtype: accumulation dtype. Default float32.
    """

    def __init__(self, hessian: bool = False, dtype: torch.dtype = torch.float32) -> None:
        self.hessian = bool(hessian)
        self.dtype = dtype
        self.n_tokens = 0
        self.norm2: torch.Tensor | None = None
        self.H: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Fold a batch of inputs ``x`` [..., in] into the running statistics."""
        x = x.detach()
        if x.dim() == 0:
            raise ValueError("calibration input must have at least one dimension [..., in]")
        x = x.reshape(-1, x.shape[-1]).to(self.dtype)
        b = x.shape[0]
        if b == 0:
            return
        if self.norm2 is not None and self.norm2.numel() != x.shape[1]:
            raise ValueError(f"input width changed from {self.norm2.numel()} to {x.shape[1]}")
        n = self.n_tokens
        total = n + b
        if self.norm2 is None:
            self.norm2 = torch.zeros(x.shape[1], dtype=self.dtype, device=x.device)
        # dst_core §10: norm2_j = mean over tokens of x_j² (running average)
        self.norm2.mul_(n / total).add_(x.pow(2).sum(0), alpha=1.0 / total)
        if self.hessian:
            if self.H is None:
                self.H = torch.zeros(x.shape[1], x.shape[1], dtype=self.dtype, device=x.device)
            # dst_core §10: H = (2/n) Σ x xᵀ (running average)
            self.H.mul_(n / total).add_(x.t() @ x, alpha=2.0 / total)
        self.n_tokens = total


# ----------------------------------------------------------------------------------------------------------
# one weight, in place
# ----------------------------------------------------------------------------------------------------------


def prune_weight_(
    weight: torch.Tensor,
    stats: CalibrationStats | None,
    method: str,
    s: float,
    pattern: str | tuple[int, int] | None = "unstructured",
    blocksize: int = 128,
    damp: float = 0.01,
    granularity: str = "row",
) -> torch.Tensor:
    """Prune ``weight`` [out, in] in place with ``method`` and return its bool keep mask.

    ``stats`` may be None for magnitude; Wanda needs ``stats.norm2``, SparseGPT ``stats.H``.
    ``granularity`` applies to magnitude only (Wanda is per row, SparseGPT per block).
    """
    _check_2d(weight)
    s = check_sparsity(s)
    if method not in PRUNING_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {PRUNING_METHODS}")
    _check_granularity(granularity)
    if method != "magnitude" and (stats is None or stats.n_tokens == 0):
        raise ValueError(f"{method} needs calibration statistics with at least one token")
    with torch.no_grad():
        if method == "magnitude":
            keep = magnitude_mask(weight, s, pattern, granularity)
            weight.masked_fill_(~keep, 0)
        elif method == "wanda":
            keep = wanda_mask(weight, stats.norm2, s, pattern)
            weight.masked_fill_(~keep, 0)
        else:
            if stats.H is None:
                raise ValueError("sparsegpt needs CalibrationStats(hessian=True)")
            new_weight, keep = sparsegpt_prune(weight, stats.H, s, pattern, blocksize, damp)
            weight.copy_(new_weight)
    return keep


# ----------------------------------------------------------------------------------------------------------
# the model driver
# ----------------------------------------------------------------------------------------------------------

_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "layers", "blocks")


def find_blocks(model: nn.Module, targets: dict[str, nn.Module] | None = None) -> nn.ModuleList | None:
    """The list of decoder blocks of ``model``, or None.

    Known paths first (``model.layers`` of HF Llama-style models, ``transformer.h``, ...); then, when
    ``targets`` are given, the first ``nn.ModuleList`` (module order) whose children contain a target;
    otherwise the ``nn.ModuleList`` with the most children (first on ties).
    """
    for path in _BLOCK_PATHS:
        try:
            found = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if targets:
        wanted = {id(t) for t in targets.values()}
        for lst in lists:
            if any(id(sub) in wanted for sub in lst.modules() if sub is not lst):
                return lst
    if not lists:
        return None
    return max(lists, key=len)  # max returns the first of equal lengths


class _StopForward(Exception):
    """Raised by the block-0 pre-hook to end the model forward once its inputs are captured."""


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError("could not find the input tensor of a target module")


def _call_model(model: nn.Module, input_ids: torch.Tensor) -> None:
    params = inspect.signature(model.forward).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {"use_cache": False} if ("use_cache" in params or var_kw) else {}
    if "input_ids" in params or var_kw:
        model(input_ids=input_ids, **kwargs)
    else:
        model(input_ids, **kwargs)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    raise RuntimeError("block 0 was called without a positional input or a 'hidden_states' keyword")


def _collect(model_call: Any, modules: dict[str, nn.Module], hessian: bool) -> dict[str, CalibrationStats]:
    """Run ``model_call()`` with pre-hooks on ``modules`` gathering their input statistics."""
    stats = {name: CalibrationStats(hessian=hessian) for name in modules}
    handles = []
    for name, mod in modules.items():

        def hook(_mod, args, kwargs, _stats=stats[name]):
            _stats.add(_first_input(args, kwargs))

        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model_call()
    finally:
        for h in handles:
            h.remove()
    return stats


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[pruning] {msg}", file=sys.stderr)


def prune_model_(
    model: nn.Module,
    calibration: list[torch.Tensor],
    targets: dict[str, nn.Module],
    method: str,
    sparsity: float,
    pattern: str = "unstructured",
    weight_attr: str = "weight",
    blocksize: int = 128,
    damp: float = 0.01,
    granularity: str = "row",
    sequential: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Prune ``getattr(targets[path], weight_attr)`` in place for every target; return ``{path: keep mask}``.

    ``calibration`` is a list of int64 ``input_ids`` [b, T] (may be empty for magnitude). Everything is
    validated before any work. Sequential mode (dst_core §10) captures the inputs of block 0, then for each
    block collects stats of its targets, prunes them, and recomputes the block's outputs with the pruned
    weights as the next block's inputs; targets outside the blocks are pruned last from one full forward.
    Without blocks or with ``sequential=False`` one forward pass collects all stats, then all are pruned.
    Runs under ``torch.no_grad()`` in eval mode; each module's training flag is restored afterwards.
    """
    # ---- validate everything before any work
    if method not in PRUNING_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {PRUNING_METHODS}")
    s = check_sparsity(sparsity)
    nm = _as_nm(pattern)
    _check_granularity(granularity)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if not (isinstance(damp, numbers.Real) and not isinstance(damp, bool) and damp >= 0):
        raise ValueError(f"damp must be a non-negative number, got {damp!r}")
    if method == "sparsegpt" and nm is not None and blocksize % nm[1] != 0:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M={nm[1]} for N:M SparseGPT")
    if not targets:
        raise ValueError("targets is empty: nothing to prune")
    for path, mod in targets.items():
        try:
            found = model.get_submodule(path)
        except AttributeError:
            found = None
        if found is not mod:
            raise ValueError(f"target {path!r} is not the module at that path in the model")
        weight = getattr(mod, weight_attr, None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"target {path!r} has no 2-D [out, in] tensor attribute {weight_attr!r}")
        check_pattern_fits(weight.shape[1], nm, path)
    calibration = list(calibration)
    if method != "magnitude" and not calibration:
        raise ValueError(f"{method} needs a non-empty calibration list of input_ids tensors")
    for i, ids in enumerate(calibration):
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.dim() != 2:
            raise ValueError(f"calibration[{i}] must be an int64 input_ids tensor [b, T]")

    def prune(names: list[str], stats: dict[str, CalibrationStats] | None) -> None:
        for name in names:
            w = getattr(targets[name], weight_attr)
            st = None if stats is None else stats[name]
            masks[name] = prune_weight_(w, st, method, s, nm, blocksize, damp, granularity).detach()

    masks: dict[str, torch.Tensor] = {}
    modes = {mod: mod.training for mod in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            # ---- magnitude needs no data
            if method == "magnitude":
                prune(list(targets), None)
                _log(progress, f"magnitude: pruned {len(targets)} targets at s={s}")
                return {name: masks[name] for name in targets}

            device = _model_device(model)
            batches = [ids.to(device) for ids in calibration]
            hessian = method == "sparsegpt"

            def full_pass() -> None:
                for ids in batches:
                    _call_model(model, ids)

            blocks = find_blocks(model, targets) if sequential else None
            owner: dict[str, int] = {}
            if blocks is not None:
                for b, block in enumerate(blocks):
                    inside = {id(m) for m in block.modules()}
                    for name, mod in targets.items():
                        if name not in owner and id(mod) in inside:
                            owner[name] = b
            if blocks is None or not owner:
                # ---- one pass: all stats from the dense model, then prune everything
                stats = _collect(full_pass, targets, hessian)
                prune(list(targets), stats)
                _log(progress, f"{method}: one pass, pruned {len(targets)} targets at s={s}")
                return {name: masks[name] for name in targets}

            # ---- sequential: capture the inputs to block 0 (dst_core §10)
            captured: list[tuple[tuple, dict]] = []

            def capture(_mod, args, kwargs):
                captured.append((tuple(args), dict(kwargs)))
                raise _StopForward

            handle = blocks[0].register_forward_pre_hook(capture, with_kwargs=True)
            try:
                for ids in batches:
                    try:
                        _call_model(model, ids)
                    except _StopForward:
                        pass
            finally:
                handle.remove()
            if len(captured) != len(batches):
                raise RuntimeError("block 0 was not called by the model forward; cannot run sequentially")

            inputs = captured
            last = max(owner.values())
            for b in range(last + 1):
                block = blocks[b]
                names = [n for n in targets if owner.get(n) == b]
                if names:
                    # 1. calibration inputs pass through block b, hooks collect stats
                    def run_block(block=block) -> None:
                        for args, kwargs in inputs:
                            block(*args, **kwargs)

                    stats = _collect(run_block, {n: targets[n] for n in names}, hessian)
                    # 2. block b is pruned
                    prune(names, stats)
                    _log(progress, f"{method}: block {b + 1}/{len(blocks)}, pruned {len(names)} targets at s={s}")
                if b < last:
                    # 3. outputs recomputed with the pruned weights feed block b+1
                    inputs = [
                        _with_hidden(args, kwargs, _block_output(block(*args, **kwargs))) for args, kwargs in inputs
                    ]
            del inputs, captured

            # ---- targets outside every block: one full forward of the block-pruned model
            rest = [n for n in targets if n not in owner]
            if rest:
                stats = _collect(full_pass, {n: targets[n] for n in rest}, hessian)
                prune(rest, stats)
                _log(progress, f"{method}: pruned {len(rest)} targets outside the blocks at s={s}")
            return {name: masks[name] for name in targets}
    finally:
        for mod, mode in modes.items():
            mod.training = mode


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of ``False`` (pruned) entries over all masks; ValueError if there are none."""
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        raise ValueError("mask_sparsity needs at least one non-empty mask")
    zeros = sum(int((~m.bool()).sum()) for m in masks.values())
    return zeros / total
