"""A tiny module and datamodule for testing the CLI machinery itself (not part of the project's plug-ins)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.utils.data import DataLoader, TensorDataset

from trainer.data import seeded_train_loader
from trainer.optimization import configure_optimization, split_decay_groups


class ToyRegressor(LightningModule):
    """Linear regression with one hidden layer.

    Args:
        hidden: hidden width.
        optimizer: injected optimizer.
        scheduler: injected scheduler.
        scheduler_interval: when the scheduler steps.
        nan_at_step: make the loss NaN at this global step (tests of the NaN guard); -1 = never.
    """

    def __init__(
        self,
        hidden: int = 8,
        optimizer: OptimizerCallable = torch.optim.SGD,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        nan_at_step: int = -1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.optimizer = optimizer
        self.scheduler = scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.global_step == self.hparams.nan_at_step:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return configure_optimization(
            split_decay_groups(self), self.optimizer, self.scheduler, self.hparams.scheduler_interval
        )


class ToyDataModule(LightningDataModule):
    """Noisy linear data, 4 features.

    Args:
        n: number of samples.
        batch_size: batch size.
    """

    def __init__(self, n: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(123)
        x = torch.randn(self.hparams.n, 4, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(self.hparams.n, 1, generator=g)
        self.ds = TensorDataset(x, y)

    def train_dataloader(self):
        return seeded_train_loader(self.ds, self.hparams.batch_size, self.trainer)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=self.hparams.batch_size)


def quiet_trainer(callbacks: Any = (), **overrides: Any) -> Trainer:
    """A one-CPU ``Trainer`` for in-process tests: no logger, checkpoints, progress bar, summary or sanity check."""
    opts: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    opts.update(overrides)
    return Trainer(callbacks=list(callbacks), **opts)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test's own gloo process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
