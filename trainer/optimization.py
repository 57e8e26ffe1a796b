"""Building an injected optimizer and scheduler over a module's param groups (STYLE.md).

Modules take ``optimizer: OptimizerCallable`` and ``scheduler: LRSchedulerCallable | None`` plus
``scheduler_interval`` as ``__init__`` arguments and return ``configure_optimization(...)`` from
``configure_optimizers``. The lr multiplier of dst_core.md §5 is applied to the chosen groups
*before* the scheduler is built, so the scheduler captures the scaled base lr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["configure_optimization", "split_decay_groups"]


def split_decay_groups(module: torch.nn.Module, sparse_names: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Param groups: sparse weights, other weights (≥2-D), and no-decay tensors (biases, norms).

    Empty groups are dropped. Each group carries ``name`` and ``sparse`` so a lr multiplier can
    target the sparse groups only.
    """
    sparse_names = set(sparse_names)
    sparse, dense, no_decay = [], [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if name in sparse_names:
            sparse.append(p)
        elif p.dim() >= 2:
            dense.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": sparse, "name": "sparse", "sparse": True},
        {"params": dense, "name": "dense", "sparse": False},
        {"params": no_decay, "name": "no_decay", "sparse": False, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def configure_optimization(
    param_groups: list[dict[str, Any]],
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., Any] | None = None,
    interval: str = "epoch",
    lr_multiplier: float = 1.0,
    lr_scaling_groups: str = "all",
) -> Any:
    """Return what ``LightningModule.configure_optimizers`` returns.

    Args:
        param_groups: groups as from :func:`split_decay_groups`.
        optimizer: the injected ``OptimizerCallable``.
        scheduler: the injected ``LRSchedulerCallable`` or ``None``.
        interval: ``"step"`` or ``"epoch"``, when the scheduler steps.
        lr_multiplier: multiplies the lr of ``lr_scaling_groups`` (dst_core.md §5, density-aware LR).
        lr_scaling_groups: ``"all"`` or ``"sparse_only"``.
    """
    if interval not in ("step", "epoch"):
        raise ValueError(f"scheduler interval must be 'step' or 'epoch', got {interval!r}")
    if lr_scaling_groups not in ("all", "sparse_only"):
        raise ValueError(f"lr_scaling_groups must be 'all' or 'sparse_only', got {lr_scaling_groups!r}")
    # Lightning optimizers reject unknown keys only at step time; ours are plain metadata.
    opt = optimizer(param_groups)
    if lr_multiplier != 1.0:
        for group in opt.param_groups:
            if lr_scaling_groups == "all" or group.get("sparse", False):
                group["lr"] = group["lr"] * lr_multiplier
                group["initial_lr"] = group["lr"]
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt), "interval": interval}}
