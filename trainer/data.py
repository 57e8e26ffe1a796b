"""Data-loading helpers shared by every datamodule.

Resume is bitwise exact only if the training order is reproducible (ENVIRONMENT.md §5):
``shuffle=True`` draws from the global RNG, which Lightning does not checkpoint. We therefore
always shuffle with a ``DistributedSampler`` seeded by the run seed; Lightning calls its
``set_epoch`` at the start of every epoch, so epoch e's order is a pure function of (seed, e),
on one process and on N ranks alike (Lightning keeps an existing ``DistributedSampler``).
"""

from __future__ import annotations

import os
import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableLoader", "accumulation_steps", "run_seed", "seeded_train_loader", "world_and_rank"]


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
    loader_class: type[DataLoader] = DataLoader,
    **loader_kwargs: Any,
) -> DataLoader:
    """A shuffled training ``DataLoader`` whose order depends only on (seed, epoch, rank).

    ``loader_class=ResumableLoader`` also makes a mid-epoch checkpoint resume exactly.
    """
    world, rank = world_and_rank(trainer)
    sampler = DistributedSampler(
        dataset,
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=run_seed() if seed is None else seed,
        drop_last=drop_last,
    )
    return loader_class(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_kwargs)


class _ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch after its first ``start`` indices (on resume)."""

    start: int = 0

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a seeded ``DistributedSampler`` that resumes in the middle of an epoch.

    Lightning saves the ``state_dict`` of a training loader that has one (with the loop state) and
    calls ``load_state_dict`` before it iterates again; the state is (epoch, batches served in it). A
    resumed loader serves the rest of that epoch's order, so the batches equal those of an
    uninterrupted run. Lightning does not prefetch from a loader with a length, so "served" is
    "trained on". Build it with ``seeded_train_loader(..., loader_class=ResumableLoader)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, DistributedSampler):
            raise TypeError("ResumableLoader needs a DistributedSampler (use seeded_train_loader)")
        self.sampler.__class__ = _ResumableSampler  # same state, a start offset added
        self._served = 0
        self._epoch = None
        self._pending: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        epoch, served = int(sampler.epoch), 0
        if self._pending is not None and self._pending[0] == epoch:
            served = self._pending[1]
            sampler.start = served * int(self.batch_size)
        self._pending = None
        self._epoch, self._served = epoch, served
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batches": n}``: n batches of epoch e have been served."""
        epoch = int(self.sampler.epoch) if self._epoch is None else self._epoch
        return {"epoch": epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration over epoch ``state["epoch"]`` skips its first ``batches`` batches."""
        self._pending = (int(state["epoch"]), int(state["batches"]))


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
