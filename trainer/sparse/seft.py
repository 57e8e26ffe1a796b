"""Sparse deltas over a pruned base and the SEFT drop → grow → adapt cycle (seft.md §3).

A target matrix W (out × in, n entries) of a pruned LLM is held as

- ``W0``: the base weights after pruning (frozen buffer; only ADAPT edits it),
- ``M``: the bool mask of the pruned base (``n_keep = nnz(M)`` is fixed for the run),
- ``I``: int64[k] **row-major flat positions** of the (out, in) weight, unique, ``I ⊆ M``,
- ``v``: float32[k] trainable deltas, aligned slot by slot with ``I`` (``v[j]`` is the delta at
  position ``I[j]``), initialised to 0,

and the forward uses θ = (W0 + scatter(v at I)) ⊙ M; only ``v`` has ``requires_grad``
(:class:`SparseDeltaLinear`). Checkpoints carry ``W0``, ``M``, ``I``, ``v`` (and the optimizer's
per-entry steps of ``v``), so a resumed run continues exactly (seft.md §4, pitfall 3).

What happens to a slot in a cycle (:func:`seft_cycle_`, pure and in place):

1. DROP: the c slots with the smallest |v| lose their position. ``drop_mode: discard`` (SpIEL) loses the
   value (the position falls back to W0); ``fold`` adds it to W0 first. ``v`` there becomes 0 and the
   caller resets the optimizer slots (P2).
2. GROW: the same slots get the c positions with the largest |G| among those not held by the remaining
   slots, including positions pruned in the base (M == 0) when ``allow_reactivation``; those are
   *reactivated*: M becomes 1 there.
3. ADAPT: as many unprotected active positions as were reactivated (protected: every position in I) are
   removed by the smallest sensitivity |θ ⊙ G| (or |θ|): M = 0 and W0 = 0 there, so nnz(M) == n_keep.

The dense gradient G = ∂L/∂θ is captured by :class:`SparseDeltaLinear` only while asked to
(``capture_grad``), on the steps before a cycle, and freed after it (seft.md §4, pitfall 5).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainer.sparse.criteria import topk_indices

__all__ = [
    "DROP_MODES",
    "ADAPT_CRITERIA",
    "ADAPT_GRANULARITIES",
    "ADAPT_TIMINGS",
    "SEFTCycleResult",
    "SparseDeltaLinear",
    "delta_count",
    "seft_cycle_",
    "seft_adapt_",
    "seft_invariants",
    "init_delta_positions",
    "sparse_delta_layers",
]

DROP_MODES: tuple[str, ...] = ("discard", "fold")
ADAPT_CRITERIA: tuple[str, ...] = ("sensitivity", "magnitude")
ADAPT_GRANULARITIES: tuple[str, ...] = ("per_layer", "per_row")
ADAPT_TIMINGS: tuple[str, ...] = ("protect_new", "deferred")


def delta_count(numel: int, rho: float) -> int:
    """k = floor(ρ·n + 0.5), the number of trainable delta slots of a matrix (seft.md §3)."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"delta budget rho must lie in (0, 1], got {rho}")
    return max(int(math.floor(rho * numel + 0.5)), 1)  # seft.md §3: k = floor(ρ·n + 0.5)


class SEFTCycleResult(NamedTuple):
    """What one cycle did to one matrix (positions are row-major flat indices)."""

    slots: torch.Tensor  # slot indices of D (ascending); their optimizer state must be reset
    dropped: torch.Tensor  # positions those slots held before the cycle
    grown: torch.Tensor  # positions they hold now (aligned with ``slots``)
    reactivated: torch.Tensor  # grown positions that were M == 0 (R)
    adapt_removed: torch.Tensor  # positions removed by ADAPT (M = 0, W0 = 0)


def _effective_flat(W0: torch.Tensor, M: torch.Tensor, I: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """θ = (W0 + scatter(v at I)) ⊙ M, flat (seft.md §3, forward)."""
    w = W0.reshape(-1).to(torch.float32).index_add(0, I, v.detach().to(torch.float32))
    return w * M.reshape(-1)


def seft_adapt_(
    W0: torch.Tensor,
    M: torch.Tensor,
    I: torch.Tensor,
    v: torch.Tensor,
    G: torch.Tensor,
    n_keep: int,
    criterion: str = "sensitivity",
    granularity: str = "per_layer",
    row_excess: torch.Tensor | None = None,
) -> torch.Tensor:
    """ADAPT (seft.md §3, step 3): prune back to ``n_keep`` active positions, never touching those in I.

    Scores S = |θ ⊙ G| (``sensitivity``, the paper's criterion) or |θ| (``magnitude``) over the active,
    unprotected positions; the ``nnz(M) − n_keep`` lowest are removed (ties: lower index), per layer or,
    with ``per_row``, as many in each row as that row has in excess (``row_excess``; a row without enough
    candidates gives its remainder to the layer-wide pass). Removed positions get M = 0 and W0 = 0.
    Returns the removed flat positions (ascending).
    """
    if criterion not in ADAPT_CRITERIA:
        raise ValueError(f"unknown adapt criterion {criterion!r}; valid: {ADAPT_CRITERIA}")
    if granularity not in ADAPT_GRANULARITIES:
        raise ValueError(f"unknown adapt granularity {granularity!r}; valid: {ADAPT_GRANULARITIES}")
    m = M.reshape(-1)
    excess = int(m.sum()) - int(n_keep)
    if excess <= 0:
        return torch.empty(0, dtype=torch.long, device=M.device)
    theta = _effective_flat(W0, M, I, v)  # θ recomputed after DROP and GROW (seft.md §3)
    score = theta.abs() if criterion == "magnitude" else (theta * G.reshape(-1).to(theta.dtype)).abs()  # S = |θ ⊙ G|
    candidate = m.clone()
    candidate[I] = False  # protected: every position in I (including those just grown)
    if int(candidate.sum()) < excess:
        raise RuntimeError(
            f"ADAPT: {excess} positions must go but only {int(candidate.sum())} active ones are unprotected; "
            "lower the delta budget rho"
        )
    score = torch.where(candidate, score, torch.full_like(score, float("inf")))
    removed: list[torch.Tensor] = []
    if granularity == "per_row" and row_excess is not None:
        cols = M.shape[-1]
        rows = score.view(-1, cols)
        for r in torch.nonzero(row_excess > 0).flatten().tolist():
            want = int(row_excess[r])
            avail = int(candidate.view(-1, cols)[r].sum())
            take = topk_indices(rows[r], min(want, avail), largest=False)
            if take.numel():
                removed.append(take + r * cols)
        taken = torch.cat(removed) if removed else torch.empty(0, dtype=torch.long, device=M.device)
        score = score.clone()
        score[taken] = float("inf")
        excess -= taken.numel()
    if excess > 0:
        removed.append(topk_indices(score, excess, largest=False))  # the lowest S (seft.md §3)
    out = torch.cat(removed).sort().values if removed else torch.empty(0, dtype=torch.long, device=M.device)
    m[out] = False  # removed positions: M = 0
    W0.reshape(-1)[out] = 0  # and W0 = 0 (seft.md §3)
    return out


@torch.no_grad()
def seft_cycle_(
    W0: torch.Tensor,
    M: torch.Tensor,
    I: torch.Tensor,
    v: torch.Tensor,
    G: torch.Tensor,
    c: int,
    n_keep: int,
    allow_reactivation: bool = True,
    drop_mode: str = "discard",
    adapt_criterion: str = "sensitivity",
    adapt_granularity: str = "per_layer",
    adapt_timing: str = "protect_new",
    sensitivity_grad: torch.Tensor | None = None,
) -> SEFTCycleResult:
    """One drop → grow → adapt cycle on one matrix, in place (seft.md §3).

    Args:
        W0: base weights (out × in); edited by ``fold`` drops and by ADAPT.
        M: bool mask of the base (same shape); grows at reactivated positions, shrinks in ADAPT.
        I: int64[k] row-major flat positions of the delta slots (unique, ⊆ M).
        v: the k deltas aligned with ``I`` (a Parameter's data; dropped/grown slots are set to 0).
        G: the dense gradient ∂L/∂θ (same shape as W0), e.g. the mean over the last A steps.
        c: slots to drop and regrow (c = floor(p_t·k)).
        n_keep: the target nnz(M).
        allow_reactivation: grow may pick positions with M == 0 (default, seft.md §3); false restricts
            growth to M == 1 (N:M bases always).
        drop_mode: ``discard`` (default; the dropped value is lost) or ``fold`` (W0[I_D] += v_D).
        adapt_criterion: ``sensitivity`` (|θ·G|, default) or ``magnitude`` (|θ|).
        adapt_granularity: ``per_layer`` (default) or ``per_row`` (each row removes what it gained).
        adapt_timing: ``protect_new`` (default: ADAPT in this cycle, protecting I) or ``deferred``
            (no ADAPT here; the caller runs :func:`seft_adapt_` at the next cycle and before export).
        sensitivity_grad: the gradient of the ADAPT scores when it differs from ``G`` (``instant``).
    """
    if drop_mode not in DROP_MODES:
        raise ValueError(f"unknown drop_mode {drop_mode!r}; valid: {DROP_MODES}")
    if adapt_timing not in ADAPT_TIMINGS:
        raise ValueError(f"unknown adapt_timing {adapt_timing!r}; valid: {ADAPT_TIMINGS}")
    k = I.numel()
    c = max(0, min(int(c), k))
    empty = torch.empty(0, dtype=torch.long, device=I.device)
    if c == 0:
        return SEFTCycleResult(empty, empty, empty, empty, empty)
    m, w0 = M.reshape(-1), W0.reshape(-1)
    # 1 DROP: the c slots of I with the smallest |v| (ties: lower slot)                 seft.md §3, step 1
    slots = topk_indices(v.detach().abs(), c, largest=False)
    dropped = I[slots].clone()
    if drop_mode == "fold":
        w0.index_add_(0, dropped, v.detach()[slots].to(w0.dtype))  # W0[I_D] += v_D
    v[slots] = 0
    # 2 GROW: top-c |G| among positions not in I \ D                                     seft.md §3, step 2
    allowed = torch.ones_like(m) if allow_reactivation else m.clone()
    keep_slots = torch.ones(k, dtype=torch.bool, device=I.device)
    keep_slots[slots] = False
    allowed[I[keep_slots]] = False
    score = G.reshape(-1).abs().to(torch.float32)
    score = torch.where(allowed, score, torch.full_like(score, float("-inf")))
    grown = topk_indices(score, c, largest=True)
    I[slots] = grown
    reactivated = grown[~m[grown]]  # R = P ∩ {M == 0}
    m[reactivated] = True  # nnz(M) = n_keep + |R|
    # 3 ADAPT: back to n_keep by |θ ⊙ G| over unprotected active positions             seft.md §3, step 3
    removed = empty
    if adapt_timing == "protect_new":
        row_excess = None
        if adapt_granularity == "per_row":
            cols = M.shape[-1]
            row_excess = torch.bincount(reactivated // cols, minlength=M.numel() // cols)
        grad = G if sensitivity_grad is None else sensitivity_grad
        removed = seft_adapt_(W0, M, I, v, grad, n_keep, adapt_criterion, adapt_granularity, row_excess)
    return SEFTCycleResult(slots, dropped, grown, reactivated, removed)


def seft_invariants(W0: torch.Tensor, M: torch.Tensor, I: torch.Tensor, v: torch.Tensor, n_keep: int) -> list[str]:
    """Violations of the seft.md §6 invariants (empty when all hold): nnz(M) == n_keep, I unique and
    ⊆ M, W0 == 0 outside M (so W_final is 0 outside M)."""
    problems = []
    if int(M.sum()) != int(n_keep):
        problems.append(f"nnz(M) = {int(M.sum())} != n_keep = {int(n_keep)}")
    if torch.unique(I).numel() != I.numel():
        problems.append("I has duplicate positions")
    if not bool(M.reshape(-1)[I].all()):
        problems.append("I is not a subset of M")
    if bool((W0.reshape(-1)[~M.reshape(-1)] != 0).any()):
        problems.append("W0 is non-zero outside M")
    if v.numel() != I.numel():
        problems.append("v and I differ in length")
    return problems


def init_delta_positions(
    M: torch.Tensor, k: int, method: str = "random_in_mask", generator: torch.Generator | None = None,
    grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """The initial I (seft.md §3 "initial I"): k positions of M == 1, at random (default, SpIEL) or the
    top-k |grad| (``gradient_in_mask``). Returned ascending."""
    m = M.reshape(-1)
    n_active = int(m.sum())
    if k > n_active:
        raise ValueError(f"delta budget k = {k} exceeds the {n_active} active positions of the pruned base")
    if method == "random_in_mask":
        score = torch.rand(m.numel(), generator=generator).to(M.device)
    elif method == "gradient_in_mask":
        if grad is None:
            raise ValueError("gradient_in_mask needs the accumulated gradient")
        score = grad.reshape(-1).abs().to(torch.float32)
    else:
        raise ValueError(f"unknown initial I method {method!r}; valid: random_in_mask, gradient_in_mask")
    score = torch.where(m, score, torch.full_like(score, float("-inf")))
    return topk_indices(score, k, largest=True)


class SparseDeltaLinear(nn.Module):
    """A linear layer θ = (W0 + scatter(v at I)) ⊙ M over a frozen pruned base (seft.md §3).

    Buffers (persistent, checkpointed): ``W0`` [out, in] (base dtype), ``M`` bool [out, in], ``M0`` (the
    mask right after base pruning, for ``seft/reactivated`` and the Hamming distance), ``I`` int64[k],
    ``n_keep`` (0-d int64). Parameter: ``values`` = v, float32[k]. A bias, if any, is a frozen buffer.

    With ``capture_grad = True`` every backward adds ∂L/∂θ (dense, float32) into ``grad_acc`` and counts
    it in ``grad_count`` (the callback divides and frees them, seft.md §4 pitfall 5).
    """

    def __init__(self, linear: nn.Linear, k: int) -> None:
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("W0", w.clone(), persistent=True)
        self.register_buffer("M", torch.ones_like(w, dtype=torch.bool), persistent=True)
        self.register_buffer("M0", torch.ones_like(w, dtype=torch.bool), persistent=True)
        self.register_buffer("I", torch.arange(k, dtype=torch.long), persistent=True)
        self.register_buffer("n_keep", torch.tensor(w.numel(), dtype=torch.long), persistent=True)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=True)
        self.values = nn.Parameter(torch.zeros(k, dtype=torch.float32, device=w.device))
        self.capture_grad = False
        self.grad_acc: torch.Tensor | None = None
        self.grad_count = 0

    @property
    def weight(self) -> torch.Tensor:
        """θ = (W0 + scatter(v at I)) ⊙ M as a dense [out, in] tensor (differentiable in ``values``)."""
        flat = self.W0.reshape(-1).index_add(0, self.I, self.values.to(self.W0.dtype))  # seft.md §3, forward
        return flat.view_as(self.W0) * self.M

    def _accumulate(self, grad: torch.Tensor) -> None:
        g = grad.detach().to(torch.float32)
        if self.grad_acc is None:
            self.grad_acc = torch.zeros_like(g)
        self.grad_acc.add_(g)
        self.grad_count += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.capture_grad and torch.is_grad_enabled() and w.requires_grad:
            w.register_hook(self._accumulate)  # dense ∂L/∂θ, only on the requested steps
        return F.linear(x, w, self.bias)

    def release_grad(self) -> None:
        """Free the captured dense gradient."""
        self.grad_acc, self.grad_count = None, 0

    @torch.no_grad()
    def export_weight(self) -> torch.Tensor:
        """W_final = (W0 + scatter(v at I)) ⊙ M (seft.md §3, export), in the base dtype."""
        return self.weight.detach().clone()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, k={self.values.numel()}"


def sparse_delta_layers(root: nn.Module) -> dict[str, SparseDeltaLinear]:
    """Every :class:`SparseDeltaLinear` under ``root`` by module path, in module order."""
    return {name: mod for name, mod in root.named_modules() if isinstance(mod, SparseDeltaLinear)}
