"""Derive gradient accumulation from a total batch size (smet.md §4, defect 2 of the authors' code).

The paper states the batch as a total (512 sequences ≈ 131k tokens per optimizer step); the micro batch
and the number of GPUs vary with the machine. ``GlobalBatchSize`` sets
``trainer.accumulate_grad_batches`` = total / (micro batch × world size) in ``setup`` and stops with one
line when that is not a positive integer, or when the trainer was given a different accumulation.

Hooks: ``setup("fit")`` only (before the fit loop reads the accumulation). Order does not matter.
No checkpointed state.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.data import accumulation_steps

__all__ = ["GlobalBatchSize"]


class GlobalBatchSize(StatefulCallback):
    """Sets the accumulation so that one optimizer step sees ``total_batch_size`` samples.

    Args:
        total_batch_size: samples (sequences) per optimizer step over all ranks; the SMET and
            NeuroTrails LM scripts use 512.
        name: identity in checkpoints. Default ``global_batch_size``.
    """

    def __init__(self, total_batch_size: int, name: str = "global_batch_size") -> None:
        super().__init__(name)
        if int(total_batch_size) < 1:
            raise ValueError(f"GlobalBatchSize: total_batch_size must be positive, got {total_batch_size}")
        self.total_batch_size = total_batch_size
        self.accumulation: int | None = None  # derived in setup

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        """Tiny settings for the generic tests."""
        return {"total_batch_size": 8}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        micro = getattr(source, "batch_size", None)
        if micro is None:
            raise TypeError(f"GlobalBatchSize needs a batch_size attribute on {type(source).__name__}")
        acc = accumulation_steps(int(self.total_batch_size), int(micro), trainer.world_size)
        given = trainer.accumulate_grad_batches
        if given not in (1, acc):
            raise ValueError(
                f"GlobalBatchSize: trainer.accumulate_grad_batches is {given}, but total batch {self.total_batch_size} "
                f"/ (micro batch {micro} × world size {trainer.world_size}) needs {acc}; remove one of the two"
            )
        trainer.accumulate_grad_batches = acc
        self.accumulation = acc
