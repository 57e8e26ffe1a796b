"""Mask buffers on a module: the dense layout of dst_core.md §1.

A module calls :func:`attach_masks` once in ``__init__`` (after building its layers). Every
maskable layer gets a persistent bool buffer ``weight_mask`` of its weight's shape, all ``True``
(dense). Which of them are actually sparse, and how they are initialised, is decided by the
``SparseTopology`` callback (its ``include``/``exclude`` regexes and ``init``), which edits the
buffers in place; parameters and param groups are never added or removed.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from trainer.protocols import MaskEntry
from trainer.sparse.compact import CompactSparseLinear, compact_layers

__all__ = ["MASKABLE_TYPES", "attach_masks", "collect_mask_set", "mask_set_density", "MaskedModuleMixin"]

MASKABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
MASK_BUFFER = "weight_mask"


def attach_masks(root: nn.Module, types: tuple[type[nn.Module], ...] = MASKABLE_TYPES) -> int:
    """Register an all-True ``weight_mask`` buffer on every layer of ``types`` under ``root``.

    Returns the number of layers that received a mask. Idempotent.
    """
    n = 0
    for mod in root.modules():
        if isinstance(mod, types) and getattr(mod, "weight", None) is not None:
            if not hasattr(mod, MASK_BUFFER):
                mod.register_buffer(MASK_BUFFER, torch.ones_like(mod.weight, dtype=torch.bool), persistent=True)
            n += 1
    return n


def collect_mask_set(root: nn.Module) -> dict[str, MaskEntry]:
    """Ordered mask set of ``root`` (dst_core §1), in module order.

    ``"<module path>.weight" -> MaskEntry(weight, mask, "dense")`` for every layer carrying a
    ``weight_mask``, and ``"<module path>.values" -> MaskEntry(values, index, "compact")`` for every
    :class:`trainer.sparse.compact.CompactSparseLinear`.
    """
    out: dict[str, MaskEntry] = {}
    for name, mod in root.named_modules():
        if isinstance(mod, CompactSparseLinear):
            out[f"{name}.values" if name else "values"] = MaskEntry(mod.values, mod.index, "compact")
            continue
        mask = getattr(mod, MASK_BUFFER, None)
        if isinstance(mask, torch.Tensor):
            key = f"{name}.weight" if name else "weight"
            out[key] = MaskEntry(mod.weight, mask, "dense")
    return out


def mask_set_density(module: Any, include: tuple[str, ...] = (".*",), exclude: tuple[str, ...] = ()) -> float:
    """d = Σc_l / Σn_l over the selected sparse entries of ``module``'s mask set (dst_core §1).

    Compact entries count len(index) of their layer's dense numel; dense entries count their mask's
    True entries, and only when the mask is not all True. 1.0 when nothing is sparse.
    """
    by_values = compact_layers(module)
    active = numel = 0
    for name, e in module.mask_set().items():
        if not any(re.search(p, name) for p in include) or any(re.search(p, name) for p in exclude):
            continue
        if e.layout == "compact":
            active += e.mask.numel()
            numel += by_values[id(e.weight)].dense_numel
        elif not bool(e.mask.all()):
            active += int(e.mask.sum())
            numel += e.mask.numel()
    return active / numel if numel else 1.0


class MaskedModuleMixin:
    """Gives a ``LightningModule`` the :class:`trainer.protocols.HasMasks` protocol."""

    def mask_set(self) -> dict[str, MaskEntry]:
        return collect_mask_set(self)  # type: ignore[arg-type]
