"""Run-safety callbacks that ``trainer fit`` adds by default (DESIGN.md, "Runs, checkpoints, resume").

- :class:`NonFiniteLossGuard` stops the run at the first NaN/Inf training loss, *before* the
  optimizer step, with a message naming the step; the last good checkpoint stays untouched.
- :class:`SignalCheckpoint` writes ``last.ckpt`` when the run is interrupted by SIGTERM (a
  cluster pre-emption; Lightning turns it into ``SIGTERMException``) or SIGINT (Ctrl+C), so
  ``--ckpt_path last`` picks it up.
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard", "SignalCheckpoint"]


class NonFiniteLossError(FloatingPointError):
    """Raised by :class:`NonFiniteLossGuard`; the CLI turns it into a short message and exit code 1."""


class NonFiniteLossGuard(pl.Callback):
    """Stop training at the first non-finite loss, naming the step.

    Hooks: ``on_before_backward`` (runs before the backward pass of every micro-batch, hence before
    any optimizer step could write NaNs into the weights). Order does not matter.

    Args:
        check_every_n_steps: check one micro-batch in this many (1 = every one). A check costs one
            device-to-host sync.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._calls = 0

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"check_every_n_steps": 1}

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._calls += 1
        if (self._calls - 1) % self.check_every_n_steps:
            return
        value = float(loss.detach().float().cpu())
        if not math.isfinite(value):
            ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise NonFiniteLossError(
                f"training loss is {value} at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx}); "
                f"the run was stopped before the optimizer step. Last good checkpoint: {ckpt}"
            )


class SignalCheckpoint(pl.Callback):
    """Write ``last.ckpt`` when the run is stopped by SIGTERM or SIGINT.

    Hooks: ``on_exception``. The file goes to the ``ModelCheckpoint`` directory (or
    ``<default_root_dir>/checkpoints``). Other exceptions (a crash, a NaN) save nothing, so the
    last good checkpoint is never replaced by a broken state.

    Args:
        filename: checkpoint file name, ``last.ckpt`` so that ``--ckpt_path last`` finds it.
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename
        self.saved_path: str | None = None

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {}

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        ckpt_cb = trainer.checkpoint_callback
        dirpath = getattr(ckpt_cb, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        path = os.path.join(dirpath, self.filename)
        trainer.save_checkpoint(path)
        self.saved_path = path
        kind = "SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
        rank_zero_info(f"{kind}: checkpoint written to {path} at global step {trainer.global_step}")
