"""Building an injected optimizer and scheduler over a module's param groups (STYLE.md).

Modules take ``optimizer: OptimizerCallable`` and ``scheduler: LRSchedulerCallable | None`` plus
``scheduler_interval`` as ``__init__`` arguments and return ``configure_optimization(...)`` from
``configure_optimizers``. The lr multiplier of dst_core.md §5 is applied to the chosen groups
*before* the scheduler is built, so the scheduler captures the scaled base lr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import inspect
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "WarmupCosineLR",
    "allow_in_weights_only_checkpoints",
    "configure_optimization",
    "fill_total_steps",
    "planned_optimizer_steps",
    "split_decay_groups",
    "warmup_cosine_factor",
]


def allow_in_weights_only_checkpoints(*factories: object) -> None:
    """Let ``load_from_checkpoint`` (``torch.load(weights_only=True)``) read hparams naming these classes.

    Plain optimizer/scheduler classes (``torch.optim.Adam``) are pickled by reference in the saved
    hyperparameters; torch ≥ 2.6 refuses unknown globals by default. Under ``TrainerCLI`` the
    hparams hold the parsed config instead, and this is not needed.
    """
    safe = [f for f in factories if inspect.isclass(f) and "<locals>" not in f.__qualname__]
    if safe:
        torch.serialization.add_safe_globals(safe)


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

    A scheduler built without its length (``WarmupCosineLR(total_steps: null)``) gets it from
    :func:`fill_total_steps` in the module's ``on_train_start``.
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


def planned_optimizer_steps(trainer: Any) -> int | float:
    """T of a run's schedules: the datamodule's planned optimizer steps when it has them
    (``trainer.protocols.HasPlannedSteps``), else ``trainer.estimated_stepping_batches``. Call it once the
    training loader exists (``on_train_start``)."""
    from trainer.protocols import HasPlannedSteps

    dm = getattr(trainer, "datamodule", None)
    if isinstance(dm, HasPlannedSteps) and not getattr(trainer, "fast_dev_run", False):
        return dm.planned_optimizer_steps(trainer)
    return trainer.estimated_stepping_batches


def fill_total_steps(trainer: Any) -> None:
    """Give every scheduler built with ``total_steps: null`` the run's optimizer steps
    (:func:`planned_optimizer_steps`).

    Call it from ``on_train_start``, not ``configure_optimizers``: asking for
    ``trainer.estimated_stepping_batches`` there builds the training loader before a checkpoint is
    restored, and Lightning then never restores a resumable loader's state (a mid-epoch resume would
    repeat the epoch's first batches). A restored scheduler already has its length.
    """
    for cfg in getattr(trainer, "lr_scheduler_configs", []):
        sched = cfg.scheduler
        if hasattr(sched, "set_total_steps") and sched.total_steps is None:
            total = planned_optimizer_steps(trainer)
            if not math.isfinite(total) or total < 1:
                raise ValueError(
                    f"{type(sched).__name__}: total_steps is null, so it needs the trainer's optimizer steps, but they "
                    f"are unknown ({total}); set total_steps, max_steps or max_epochs"
                )
            sched.set_total_steps(int(total))


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """lr / peak at ``step``: linear from 0 to 1 over ``warmup_steps``, then cosine from 1 to ``min_ratio``
    at ``total_steps`` (held there after). smet.md §3: "linear warm-up over 5% of steps, then cosine to
    0.1×peak" (the GaLore/SMET code's schedule)."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LambdaLR):
    """Linear warm-up, then cosine decay to ``min_ratio`` × the base lr (:func:`warmup_cosine_factor`).

    Step it every optimizer step (``scheduler_interval: step``).

    Args:
        optimizer: the optimizer (injected by ``LRSchedulerCallable``).
        total_steps: T, the optimizer steps of the run; ``None`` (default) takes the planned run's
            (:func:`planned_optimizer_steps`, filled in by :func:`fill_total_steps` at train start), so a
            sweep over epochs needs no arithmetic in YAML.
        warmup_fraction: warm-up steps as a fraction of T (SMET: 0.05). Default 0.05.
        min_ratio: the final lr as a fraction of the peak (SMET: 0.1). Default 0.1.
        warmup_steps: explicit warm-up steps, overriding ``warmup_fraction``; ``None`` (default) derives them.
        last_epoch: as for every torch scheduler. Default -1.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int | None = None,
        warmup_fraction: float = 0.05,
        min_ratio: float = 0.1,
        warmup_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"WarmupCosineLR: total_steps must be positive, got {total_steps}")
        if not 0.0 <= warmup_fraction < 1.0 or not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"WarmupCosineLR: warmup_fraction in [0, 1) and min_ratio in [0, 1] ({warmup_fraction}, {min_ratio})")
        self.total_steps: int | None = None
        self.warmup_fraction = float(warmup_fraction)
        self._warmup_steps_arg = warmup_steps
        self.warmup_steps = 0
        self.min_ratio = float(min_ratio)
        if total_steps is not None:
            self._set_steps(int(total_steps))
        super().__init__(optimizer, self._factor, last_epoch)

    def _set_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)
        w = self._warmup_steps_arg
        self.warmup_steps = int(round(self.warmup_fraction * total_steps)) if w is None else int(w)

    def set_total_steps(self, total_steps: int) -> None:
        """Fix T when it was ``None`` at construction (before the first step) and re-apply the step-0 lr."""
        if self.last_epoch > 0:
            raise RuntimeError("WarmupCosineLR.set_total_steps: the schedule has already stepped")
        self._set_steps(total_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self._factor(0)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _factor(self, step: int) -> float:
        if self.total_steps is None:
            return 1.0  # until set_total_steps (fill_total_steps, before the first step)
        return warmup_cosine_factor(step, self.total_steps, self.warmup_steps, self.min_ratio)
