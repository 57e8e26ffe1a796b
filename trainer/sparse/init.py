"""Exact-count mask initialisation: uniform, ER and ERK (dst_core.md §2).

Pure functions over layer shapes return per-layer densities and exact active counts; :func:`init_masks_`
writes the masks for given counts in place, drawing from the layer generator (dst_core §7), so the
initial topology is a pure function of (run seed, layer index, count).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from trainer.sparse.criteria import topk_indices
from trainer.sparse.rng import layer_generator

__all__ = [
    "INIT_METHODS",
    "raw_scores",
    "erk_densities",
    "exact_counts",
    "uniform_counts",
    "layer_counts",
    "init_mask",
    "init_masks_",
]

INIT_METHODS: tuple[str, ...] = ("uniform", "er", "erk")


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(int(s) for s in shape))


def raw_scores(shapes: Sequence[Sequence[int]], method: str = "erk", power: float = 1.0) -> list[float]:
    """Raw ER/ERK scores r_l (dst_core §2).

    ``erk``: r = (Σ_i shape[i] / Π_i shape[i])^p, so a conv scores (c_out + c_in + k_h + k_w)/(c_out·c_in·k_h·k_w).
    ``er``: only the two channel dimensions enter the numerator, (shape[0] + shape[1]) / Π shape;
    for 2-D weights both are the same (SET's Erdős–Rényi).
    """
    if method not in ("er", "erk"):
        raise ValueError(f"raw_scores: method must be 'er' or 'erk', got {method!r}")
    out = []
    for shape in shapes:
        dims = [int(s) for s in shape]
        if len(dims) < 2:
            raise ValueError(f"ER/ERK needs weights with at least 2 dimensions, got shape {tuple(dims)}")
        num = sum(dims) if method == "erk" else dims[0] + dims[1]
        out.append((num / _numel(dims)) ** power)  # dst_core §2: r_l = (Σ shape / Π shape)^p
    return out


def erk_densities(
    shapes: Sequence[Sequence[int]],
    density: float,
    dense: Iterable[int] = (),
    method: str = "erk",
    power: float = 1.0,
) -> tuple[list[float], frozenset[int]]:
    """Unrounded per-layer densities d_l of ER/ERK and the final forced-dense set Dn (dst_core §2).

    Args:
        shapes: weight shapes of the mask set, in order.
        density: the global density d in (0, 1].
        dense: indices of layers forced dense by YAML.
        method: ``"erk"`` or ``"er"`` (see :func:`raw_scores`).
        power: ``erk_power`` p.

    Raises:
        ValueError: if the forced-dense layers alone exceed d·Σ n_l.
    """
    _check_density(density)
    numels = [_numel(s) for s in shapes]
    r = raw_scores(shapes, method, power)
    dn = set(int(i) for i in dense)
    total = sum(numels)
    budget = density * total
    forced = sum(numels[i] for i in dn)
    if forced > budget:
        raise ValueError(
            f"layers forced dense hold {forced} weights, more than density {density} allows "
            f"({budget:.0f} of {total}); lower the forced-dense set or raise the density"
        )
    eps = 0.0
    while True:
        rest = [i for i in range(len(shapes)) if i not in dn]
        if not rest:
            break
        eps = (budget - sum(numels[i] for i in dn)) / sum(r[i] * numels[i] for i in rest)  # dst_core §2
        r_max = max(r[i] for i in rest)
        if eps * r_max <= 1.0:
            break
        dn.update(i for i in rest if r[i] == r_max)  # dst_core §2: add the layer(s) with the largest r_l
    densities = [1.0 if i in dn else min(eps * r[i], 1.0) for i in range(len(shapes))]  # dst_core §2: eps·r_l
    return densities, frozenset(dn)


def _check_density(density: float) -> None:
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f"density must lie in (0, 1], got {density}")


def exact_counts(numels: Sequence[int], densities: Sequence[float], dense: Iterable[int], density: float) -> list[int]:
    """Exact active counts c_l from unrounded densities (dst_core §2).

    K = floor(d·Σ n_l + 0.5); c_l = n_l on Dn, else floor(d_l·n_l); the K − Σ c_l leftover units go one
    each to the largest fractional parts (ties: earlier layer). Raises ``ValueError`` unless
    Σ c_l == K and 1 <= c_l <= n_l.
    """
    dn = set(int(i) for i in dense)
    total = sum(int(n) for n in numels)
    k_total = math.floor(density * total + 0.5)  # dst_core §2: K
    counts, fracs = [], []
    for i, (n, d) in enumerate(zip(numels, densities)):
        if i in dn:
            counts.append(int(n))
            fracs.append(-1.0)
            continue
        x = d * n
        c = min(math.floor(x), int(n))  # dst_core §2: floor(d_l·n_l)
        counts.append(c)
        fracs.append(x - c if c < n else -1.0)
    leftover = k_total - sum(counts)
    if leftover < 0:
        raise ValueError(f"rounded counts {sum(counts)} exceed K = {k_total}")
    order = sorted((i for i in range(len(counts)) if fracs[i] >= 0.0), key=lambda i: (-fracs[i], i))
    if leftover > len(order):
        raise ValueError(f"cannot place {leftover} leftover units on {len(order)} sparse layers")
    for i in order[:leftover]:  # dst_core §2: largest fractional parts first, ties to the earlier layer
        counts[i] += 1
    _check_counts(numels, counts, k_total)
    return counts


def _check_counts(numels: Sequence[int], counts: Sequence[int], k_total: int | None) -> None:
    if k_total is not None and sum(counts) != k_total:
        raise ValueError(f"Σ c_l = {sum(counts)} != K = {k_total}")
    for i, (n, c) in enumerate(zip(numels, counts)):
        if not 1 <= c <= n:
            raise ValueError(
                f"layer {i}: active count {c} outside [1, {n}]; the density is too low for this layer "
                "(force it dense or raise the density)"
            )


def uniform_counts(numels: Sequence[int], density: float, dense: Iterable[int] = ()) -> list[int]:
    """Uniform counts c_l = floor(d·n_l + 0.5), n_l on forced-dense layers (dst_core §2).

    Forced-dense layers raise the global density above d under this rule (as in RigL's uniform).
    """
    _check_density(density)
    dn = set(int(i) for i in dense)
    counts = [int(n) if i in dn else math.floor(density * n + 0.5) for i, n in enumerate(numels)]  # dst_core §2
    _check_counts(numels, counts, None)
    return counts


def layer_counts(
    shapes: Sequence[Sequence[int]],
    density: float,
    init: str = "erk",
    dense: Iterable[int] = (),
    power: float = 1.0,
) -> list[int]:
    """Exact active counts per layer for ``init`` in :data:`INIT_METHODS` (dst_core §2)."""
    numels = [_numel(s) for s in shapes]
    dense = tuple(dense)
    if init == "uniform":
        return uniform_counts(numels, density, dense)
    if init in ("er", "erk"):
        dens, dn = erk_densities(shapes, density, dense, method=init, power=power)
        return exact_counts(numels, dens, dn, density)
    raise ValueError(f"unknown init {init!r}; valid: {INIT_METHODS}")


def init_mask(numel: int, count: int, seed: int, layer_index: int, tag: str = "init") -> torch.Tensor:
    """Flat CPU bool mask with the top-``count`` of a uniform score from the layer generator (dst_core §2)."""
    gen = layer_generator(seed, tag, 0, layer_index)
    scores = torch.rand(int(numel), generator=gen, dtype=torch.float32)
    flat = torch.zeros(int(numel), dtype=torch.bool)
    flat[topk_indices(scores, int(count))] = True
    return flat


def init_masks_(
    masks: Sequence[torch.Tensor],
    counts: Sequence[int],
    seed: int,
    layer_indices: Sequence[int] | None = None,
    weights: Sequence[torch.Tensor] | None = None,
) -> None:
    """Write exact-count masks in place (and zero ``weights`` at inactive entries, if given).

    Args:
        masks: bool mask tensors of the layers (any device, edited in place).
        counts: active count per layer.
        seed: the run seed.
        layer_indices: the layers' positions in the mask set (default 0, 1, ...), which seed their draws.
        weights: the matching weights; inactive entries are set to exactly 0.
    """
    idx = list(range(len(masks))) if layer_indices is None else list(layer_indices)
    with torch.no_grad():
        for j, (mask, c) in enumerate(zip(masks, counts)):
            flat = init_mask(mask.numel(), c, seed, idx[j])
            mask.copy_(flat.view(mask.shape))
            if weights is not None:
                weights[j].masked_fill_(~mask, 0)
