"""The compact sparse layout of dst_core.md §1 (SMET): only the active entries are parameters.

A :class:`CompactSparseLinear` holds a 1-D ``nn.Parameter`` ``values`` (length c) and a persistent
integer buffer ``index`` of unique flat positions into the ``(out_features, in_features)`` weight. The forward
scatters ``values`` into a transient zero matrix and applies ``F.linear``, so ``values.grad`` is already
compact (c floats) and the optimizer state is 1-D, aligned slot-for-slot with ``index``. A topology
update rewrites ``index[j]``, ``values[j]`` and slot j of the optimizer state in place; no parameter or
param group is ever added or removed.

Its mask-set entry (:func:`trainer.sparse.masks.collect_mask_set`) is ``MaskEntry(values, index,
"compact")``. Gradient criteria (dst_core §6): while ``keep_dense_grad`` is true (set by
``SparseTopology`` on the micro-batches of update steps only) the layer sums the gradient of its
materialised dense weight over micro-batches into ``dense_grad``; the callback all-reduces it once.

``index`` is int32 whenever the dense weight has fewer than 2**31 entries (every LLaMA projection up to
1B: the largest is 2048×5461), int64 otherwise. dst_core §1 names an int64 buffer; int32 halves the index
overhead, which issue 3's memory target (state of a 10%-dense layer ≤ 0.15 of dense AdamW, index
included) needs. The forward uses ``index_put``, which takes int32 indices without a conversion.

The initial index is exact-count and deterministic: the top-c of a uniform score drawn from
``layer_generator(seed, "init", 0, layer_index)`` (dst_core §2, §7), i.e. the same positions as the dense
layout's :func:`trainer.sparse.init.init_mask` for the same seed and layer position.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.sparse.init import init_mask

__all__ = ["CompactSparseLinear", "compact_count", "index_dtype", "compact_from_linear", "compactify_linears", "compact_layers"]

# LLaMA projections made sparse by SMET (smet.md §3: q, k, v, o, gate, up, down)
LLAMA_SPARSE_PATTERNS: tuple[str, ...] = (r"(^|\.)(q|k|v|o|gate|up|down)(_proj)?$",)


def index_dtype(numel: int) -> torch.dtype:
    """The dtype of a compact ``index`` into ``numel`` positions: int32 below 2**31, else int64."""
    return torch.int32 if numel < 2**31 else torch.long


def compact_count(numel: int, density: float) -> int:
    """c = floor(d·n + 0.5), clamped to [1, n] (dst_core §2, uniform)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1], got {density}")
    return min(max(math.floor(density * numel + 0.5), 1), int(numel))


class CompactSparseLinear(nn.Module):
    """A linear layer whose weight is stored as ``values`` at flat positions ``index`` (dst_core §1).

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether to learn an additive (dense) bias. Default true.
        density: fraction d of active weight entries; c = floor(d·n + 0.5). Give this or ``count``.
        count: exact active count c (overrides ``density``).
        seed: run seed of the initial index draw (dst_core §7). Default 0.
        layer_index: position of the layer in the mask set, keys the index draw. Default 0.
        weight: optional dense ``(out, in)`` weight whose entries at the index become ``values``; by
            default ``values`` are drawn like ``nn.Linear``'s weight (Kaiming uniform, bound 1/sqrt(in)).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        density: float | None = None,
        count: int | None = None,
        seed: int = 0,
        layer_index: int = 0,
        weight: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        n = self.in_features * self.out_features
        if count is None:
            if density is None:
                raise ValueError("CompactSparseLinear needs density or count")
            count = compact_count(n, density)
        if not 1 <= int(count) <= n:
            raise ValueError(f"count must lie in [1, {n}], got {count}")
        self.seed = int(seed)
        self.layer_index = int(layer_index)
        index = init_mask(n, int(count), seed, layer_index).nonzero().squeeze(1)  # dst_core §2: exact count
        self.register_buffer("index", index.to(device=device, dtype=index_dtype(n)), persistent=True)
        if weight is None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            vals = torch.empty(int(count), device=device, dtype=dtype).uniform_(-bound, bound)
        else:
            if tuple(weight.shape) != (self.out_features, self.in_features):
                raise ValueError(f"weight shape {tuple(weight.shape)} != {(self.out_features, self.in_features)}")
            vals = weight.detach().reshape(-1)[index.to(weight.device)].to(device=device, dtype=dtype or weight.dtype)
        self.values = nn.Parameter(vals.clone())
        if bias:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=vals.dtype).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        self.keep_dense_grad = False
        self.dense_grad: torch.Tensor | None = None

    @property
    def weight_shape(self) -> tuple[int, int]:
        """The shape of the materialised dense weight, ``(out_features, in_features)``."""
        return (self.out_features, self.in_features)

    @property
    def dense_numel(self) -> int:
        """n, the number of entries of the dense weight."""
        return self.out_features * self.in_features

    def initial_mask(self) -> torch.Tensor:
        """The flat bool mask of the initial index (recomputed from ``seed`` and ``layer_index``)."""
        return init_mask(self.dense_numel, self.index.numel(), self.seed, self.layer_index)

    def dense_weight(self) -> torch.Tensor:
        """The dense weight: ``values`` scattered into zeros at ``index`` (differentiable, transient)."""
        flat = self.values.new_zeros(self.dense_numel)
        return flat.index_put((self.index,), self.values).view(self.weight_shape)

    def _accumulate(self, grad: torch.Tensor) -> None:
        if self.dense_grad is None:
            self.dense_grad = grad.detach().clone()
        else:
            self.dense_grad.add_(grad.detach())  # dst_core §6: summed over micro-batches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dense_weight()
        if self.keep_dense_grad and w.requires_grad:
            w.register_hook(self._accumulate)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        c = self.index.numel()
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"count={c}, density={c / max(self.dense_numel, 1):.4f}"
        )


def compact_from_linear(
    linear: nn.Linear, density: float | None = None, count: int | None = None, seed: int = 0, layer_index: int = 0
) -> CompactSparseLinear:
    """A :class:`CompactSparseLinear` keeping ``linear``'s weight at the initial index and its bias."""
    layer = CompactSparseLinear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        density=density,
        count=count,
        seed=seed,
        layer_index=layer_index,
        weight=linear.weight,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    if linear.bias is not None:
        with torch.no_grad():
            layer.bias.copy_(linear.bias)
    return layer


def compactify_linears(
    root: nn.Module,
    density: float,
    include: Iterable[str] = LLAMA_SPARSE_PATTERNS,
    exclude: Iterable[str] = (),
    seed: int = 0,
) -> list[str]:
    """Replace every ``nn.Linear`` under ``root`` whose module path matches ``include`` (``re.search``)
    and no ``exclude`` pattern by a :class:`CompactSparseLinear` of density ``density``, in place.

    For LLaMA stacks the default ``include`` picks q/k/v/o/gate/up/down projections. Layer indices are
    the positions in traversal order, so the initial index matches the dense layout's for the same seed.
    Returns the replaced module paths.
    """
    include, exclude = tuple(include), tuple(exclude)
    targets = [
        name
        for name, mod in root.named_modules()
        if type(mod) is nn.Linear
        and any(re.search(p, name) for p in include)
        and not any(re.search(p, name) for p in exclude)
    ]
    for i, name in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, compact_from_linear(getattr(parent, child), density=density, seed=seed, layer_index=i))
    return targets


def compact_layers(root: nn.Module) -> dict[int, CompactSparseLinear]:
    """``{id(layer.values): layer}`` for every compact layer under ``root``."""
    return {id(m.values): m for m in root.modules() if isinstance(m, CompactSparseLinear)}
