"""Drop and grow criteria of the drop/grow step (dst_core.md §3).

Drop criteria score the *active* entries of one layer; the lowest ``k`` form the dropped set ``D``
(``set_signed`` is a selection rule rather than a score). Grow criteria score *candidate* positions;
the highest ``k`` form the grown set ``R``. Ties always break to the lower flat index. Random draws
come from the caller's layer generator (dst_core §7) and are made on the CPU, then moved to the
weight's device, so every rank and device type draws the same numbers.
"""

from __future__ import annotations

import torch

__all__ = [
    "DROP_CRITERIA",
    "GROW_CRITERIA",
    "GRADIENT_CRITERIA",
    "MAGNITUDE_NOISE_STD",
    "topk_indices",
    "drop_scores",
    "select_drop",
    "grow_scores",
    "select_grow",
]

DROP_CRITERIA: tuple[str, ...] = (
    "magnitude",
    "magnitude_noise",
    "set_signed",
    "soft_magnitude",
    "random",
    "sensitivity",
)
GROW_CRITERIA: tuple[str, ...] = ("random", "gradient")
GRADIENT_CRITERIA: frozenset[str] = frozenset({"sensitivity", "gradient"})
MAGNITUDE_NOISE_STD = 1e-5  # dst_core §3: |w| + N(0, 1e-5²) (RigL)


def _empty(device: torch.device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.long, device=device)


def topk_indices(scores: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Indices (ascending) of the ``k`` largest (or smallest) entries of 1-D ``scores``.

    Ties at the threshold go to the lower index (dst_core §3). NaN scores are never selected
    before finite ones. Runs in O(n) apart from one ``topk``.
    """
    n = scores.numel()
    if k <= 0:
        return _empty(scores.device)
    if k >= n:
        return torch.arange(n, device=scores.device)
    s = scores.reshape(-1)
    s = s if largest else -s
    s = torch.nan_to_num(s, nan=float("-inf"))
    kth = torch.topk(s, k, sorted=False).values.min()
    above = (s > kth).nonzero().squeeze(1)
    need = k - above.numel()
    ties = (s == kth).nonzero().squeeze(1)[:need]
    return torch.cat([above, ties]).sort().values


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        raise ValueError("a random criterion needs the layer generator (dst_core §7)")
    return torch.rand(n, generator=generator, dtype=torch.float32).to(device)


def _need_grad(criterion: str, grad: torch.Tensor | None) -> torch.Tensor:
    if grad is None:
        raise ValueError(f"criterion {criterion!r} needs the dense gradient; none was stashed")
    return grad


def drop_scores(
    criterion: str,
    weight: torch.Tensor,
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 3.0,
) -> torch.Tensor:
    """Drop scores (float32) of the given active entries; the lowest ``k`` are dropped (dst_core §3).

    Args:
        criterion: one of :data:`DROP_CRITERIA` except ``set_signed`` (use :func:`select_drop`).
        weight: the active weights, 1-D, ordered by flat index.
        grad: their dense gradients (``sensitivity`` only).
        generator: the layer generator (``magnitude_noise``, ``soft_magnitude``, ``random``).
        temperature: T of ``soft_magnitude``.
    """
    w = weight.reshape(-1).float()
    if criterion == "magnitude":
        return w.abs()  # dst_core §3: |w|
    if criterion == "magnitude_noise":
        if generator is None:
            raise ValueError("magnitude_noise needs the layer generator (dst_core §7)")
        noise = torch.randn(w.numel(), generator=generator, dtype=torch.float32).to(w.device)
        return w.abs() + MAGNITUDE_NOISE_STD * noise  # dst_core §3: |w| + N(0, 1e-5²)
    if criterion == "soft_magnitude":
        if generator is None:
            raise ValueError("soft_magnitude needs the layer generator (dst_core §7)")
        gumbel = -torch.empty(w.numel(), dtype=torch.float32).exponential_(generator=generator).log()
        # dst_core §3: keep the top c−k of T·log|w| + Gumbel, i.e. sample ∝ |w|^T without replacement
        return float(temperature) * w.abs().log() + gumbel.to(w.device)
    if criterion == "random":
        return _uniform(w.numel(), generator, w.device)
    if criterion == "sensitivity":
        g = _need_grad(criterion, grad).reshape(-1).float()
        return (w * g).abs()  # dst_core §3: |w·G| (SEFT)
    if criterion == "set_signed":
        raise ValueError("set_signed is a selection rule, not a score: use select_drop")
    raise ValueError(f"unknown drop criterion {criterion!r}; valid: {DROP_CRITERIA}")


def _select_set_signed(w: torch.Tensor, k: int) -> torch.Tensor:
    """floor(k/2) smallest non-negative weights, the rest the negatives closest to 0 (dst_core §3, SET).

    Zeros count as positive (the smallest ones). If one sign runs short the other makes up the rest.
    """
    pos = (w >= 0).nonzero().squeeze(1)
    neg = (w < 0).nonzero().squeeze(1)
    k_pos = min(k // 2, pos.numel())  # dst_core §3: floor(k/2) smallest positive
    k_neg = k - k_pos
    if k_neg > neg.numel():
        k_neg = neg.numel()
        k_pos = k - k_neg
    d_pos = pos[topk_indices(w[pos], k_pos, largest=False)]
    d_neg = neg[topk_indices(w[neg], k_neg, largest=True)]  # negative w closest to 0
    return torch.cat([d_pos, d_neg]).sort().values


def select_drop(
    criterion: str,
    weight: torch.Tensor,
    k: int,
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 3.0,
) -> torch.Tensor:
    """Positions (ascending, into the 1-D active ``weight``) of the ``k`` dropped entries (dst_core §3)."""
    w = weight.reshape(-1)
    k = min(int(k), w.numel())
    if k <= 0:
        return _empty(w.device)
    if criterion == "set_signed":
        return _select_set_signed(w.float(), k)
    scores = drop_scores(criterion, w, grad, generator, temperature)
    return topk_indices(scores, k, largest=False)  # the lowest k form D


def grow_scores(
    criterion: str,
    numel: int,
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Grow scores (float32) of every flat position of a layer; the highest candidates grow (dst_core §3).

    ``random`` draws one uniform number per position (not per candidate), so the draw does not
    depend on the candidate set.
    """
    if criterion == "random":
        return _uniform(numel, generator, torch.device(device))  # dst_core §3: uniform score
    if criterion == "gradient":
        return _need_grad(criterion, grad).reshape(-1).float().abs()  # dst_core §3: |G|
    raise ValueError(f"unknown grow criterion {criterion!r}; valid: {GROW_CRITERIA}")


def select_grow(
    criterion: str,
    candidates: torch.Tensor,
    k: int,
    numel: int,
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Flat positions (ascending) of the ``k`` grown entries among ascending ``candidates`` (dst_core §3)."""
    k = min(int(k), candidates.numel())
    if k <= 0:
        return _empty(candidates.device)
    scores = grow_scores(criterion, numel, grad, generator, candidates.device)[candidates]
    return candidates[topk_indices(scores, k, largest=True)]
