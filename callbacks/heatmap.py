"""Navigation heatmaps of the training episodes (hasard.md §8, "Images").

``NavigationHeatmapCallback`` is the thin adapter around :mod:`trainer.heatmap`: after every rollout it
adds the position histograms of the episodes this rank finished (``trainer.datamodule.episodes``, each
with ``positions`` ``[L, 2]``) into an accumulator on the grid of the datamodule's ``heatmap_box`` /
``heatmap_bins``; every ``every_n_epochs`` epochs the accumulators of all ranks are summed, rank 0 logs
``log1p`` of the sum drawn inside the box as the image ``hasard/heatmap``, and the accumulator starts
again. It talks to the datamodule through :class:`trainer.protocols.HasRolloutEpisodes` plus the two
heatmap attributes.

Hooks: ``setup("fit")`` checks the datamodule (no ``heatmap_box`` → ``ValueError``); ``on_train_epoch_end``
accumulates and, on schedule, logs; ``on_train_end`` logs what accumulated since the last image. Order
does not matter (the rollout is collected when the epoch's dataloader is iterated, before any
epoch-end hook). Under DDP every rank calls the sum (``strategy.reduce``) at the same epochs, decided by
the epoch counter, which is identical on every rank.

State (checkpointed): ``counts`` (int64 tensor ``(ny, nx)``, or None right after an image) and
``epochs_seen`` (epochs accumulated since the start of the run).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.heatmap import episodes_histogram, heatmap_image, heatmap_shape

__all__ = ["NavigationHeatmapCallback"]

TAG = "hasard/heatmap"


class NavigationHeatmapCallback(StatefulCallback):
    """Logs the summed, log-scaled position histogram of recent training episodes (hasard.md §8).

    The datamodule must expose ``episodes`` (the episodes finished in the last rollout), ``heatmap_box``
    ``(x_min, y_min, x_max, y_max)`` and ``heatmap_bins`` (bins on the longer axis of the box), as
    ``HasardDataModule`` and ``LavaGridDataModule`` do. The image goes to every logger whose experiment
    has ``add_image`` (TensorBoard).

    Args:
        every_n_epochs: train epochs (rollouts) summed into one image; default 10.
        name: identity of this callback in checkpoints; default "heatmap".
    """

    _state_attrs = ("counts", "epochs_seen")

    def __init__(self, every_n_epochs: int = 10, name: str = "heatmap") -> None:
        super().__init__(name)
        if int(every_n_epochs) < 1:
            raise ValueError(f"NavigationHeatmapCallback: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.counts: torch.Tensor | None = None
        self.epochs_seen = 0
        self.box: tuple[float, float, float, float] | None = None
        self.bins: int | None = None
        self.images_logged = 0  # this process only; not checkpointed

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"every_n_epochs": 1}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        box = getattr(dm, "heatmap_box", None) if dm is not None else None
        if box is None or getattr(dm, "heatmap_bins", None) is None or not hasattr(dm, "episodes"):
            raise ValueError(
                f"NavigationHeatmapCallback needs a datamodule with heatmap_box, heatmap_bins and episodes (a "
                f"navigation RolloutDataModule such as HasardDataModule or LavaGridDataModule), got "
                f"{type(dm).__name__ if dm is not None else None}"
            )
        self.box = tuple(float(v) for v in box)  # type: ignore[assignment]
        self.bins = int(dm.heatmap_bins)
        heatmap_shape(self.box, self.bins)  # a bad box fails here, not after the first rollout

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.box is None:
            return
        hist = torch.from_numpy(episodes_histogram(getattr(trainer.datamodule, "episodes", []), self.box, self.bins))
        if self.counts is not None and self.counts.shape != hist.shape:  # e.g. resumed with another box or bins
            raise ValueError(
                f"NavigationHeatmapCallback: the accumulator has shape {tuple(self.counts.shape)}, but the "
                f"datamodule's box and bins give {tuple(hist.shape)}"
            )
        self.counts = hist if self.counts is None else self.counts + hist
        self.epochs_seen += 1
        if self.epochs_seen % int(self.every_n_epochs) == 0:
            self._flush(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the counter is identical on every rank, so every rank takes this branch (and reduces) together
        if self.box is not None and self.counts is not None and self.epochs_seen % int(self.every_n_epochs):
            self._flush(trainer, pl_module)

    # ------------------------------------------------------------------ logging
    def _flush(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Sum the accumulators over ranks (collective), log the image on rank 0, reset."""
        counts = self.counts
        if counts is None:  # not reached from the hooks (they accumulate first); kept for direct calls
            counts = torch.zeros(heatmap_shape(self.box, self.bins), dtype=torch.int64)
        if trainer.world_size > 1:
            summed = trainer.strategy.reduce(counts.double().to(pl_module.device), reduce_op="sum")
            counts = summed.cpu().round().to(torch.int64)
        self.counts = None
        total = int(counts.sum())
        if not trainer.is_global_zero or total == 0:
            return
        title = f"visits up to epoch {self.epochs_seen} ({total} steps)"
        img = heatmap_image(counts.numpy(), self.box, title=title)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(TAG, img, trainer.global_step, dataformats="HWC")
        self.images_logged += 1
