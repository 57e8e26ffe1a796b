"""Data-loading helpers shared by every datamodule.

Resume is bitwise exact only if the training order is reproducible (ENVIRONMENT.md §5):
``shuffle=True`` draws from the global RNG, which Lightning does not checkpoint. We therefore
always shuffle with a ``DistributedSampler`` seeded by the run seed; Lightning calls its
``set_epoch`` at the start of every epoch, so epoch e's order is a pure function of (seed, e),
on one process and on N ranks alike (Lightning keeps an existing ``DistributedSampler``).
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["accumulation_steps", "run_seed", "seeded_train_loader", "world_and_rank"]


def run_seed(default: int = 0) -> int:
    """The run seed set by ``seed_everything`` (``PL_GLOBAL_SEED``), else ``default``."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value not in (None, "") else default


def world_and_rank(trainer: Any | None) -> tuple[int, int]:
    """(world size, global rank) of ``trainer``, or (1, 0) outside a trainer."""
    if trainer is None:
        return 1, 0
    return int(getattr(trainer, "world_size", 1) or 1), int(getattr(trainer, "global_rank", 0) or 0)


def seeded_train_loader(
    dataset: Dataset,
    batch_size: int,
    trainer: Any | None = None,
    seed: int | None = None,
    drop_last: bool = False,
    **loader_kwargs: Any,
) -> DataLoader:
    """A shuffled training ``DataLoader`` whose order depends only on (seed, epoch, rank)."""
    world, rank = world_and_rank(trainer)
    sampler = DistributedSampler(
        dataset,
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=run_seed() if seed is None else seed,
        drop_last=drop_last,
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_kwargs)


def accumulation_steps(total_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Gradient-accumulation steps = total batch / (micro batch × world size) (smet.md §4, defect 2).

    ValueError, in one line, when the result is not a positive integer (the SMET scripts silently got 0).
    """
    per_step = int(micro_batch_size) * int(world_size)
    if total_batch_size < 1 or per_step < 1:
        raise ValueError(f"total batch {total_batch_size}, micro batch {micro_batch_size} and world size {world_size} must be positive")
    if total_batch_size % per_step:
        raise ValueError(
            f"total batch {total_batch_size} is not a multiple of micro batch {micro_batch_size} × world size {world_size} "
            f"= {per_step}; accumulation would be {total_batch_size / per_step:g}"
        )
    return total_batch_size // per_step
