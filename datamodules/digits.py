"""scikit-learn's bundled 8×8 digits (1,797 images, 10 classes) as a LightningDataModule.

Offline and tiny: the NeuroTrails miniature (neurotrails.md §5, §7a) and the generic tests use it.
Features are the 64 pixel values divided by 16 (so in [0, 1]); the split is stratified 75/25 with
``random_state=0``.

Validation uses the test split. The miniature runs select nothing on validation (no early stopping,
no best-checkpoint choice; the last epoch is reported), so a third split would only shrink the
1,347 training images; ``val_dataloader`` and ``test_dataloader`` therefore serve the same 450
images.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from trainer.data import seeded_train_loader

__all__ = ["DigitsDataModule"]


class DigitsDataModule(LightningDataModule):
    """sklearn ``load_digits``: X/16 as float32 ``[64]`` (or ``[1, 8, 8]``), stratified 75/25 split.

    The training loader shuffles with the run-seeded sampler of ``trainer.data`` (exact resume,
    DDP-correct); evaluation loaders are in order.

    Args:
        batch_size: training batch size (per process); default 64 (§7a).
        eval_batch_size: batch size of the validation and test loaders; ``None`` (default) = 512.
        test_size: fraction held out for testing (and validation); default 0.25.
        split_seed: ``random_state`` of the stratified split; default 0.
        as_image: yield ``[1, 8, 8]`` images instead of flat ``[64]`` vectors; default False.
        num_workers: DataLoader workers; default 0.
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        test_size: float = 0.25,
        split_seed: int = 0,
        as_image: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.test_size = test_size
        self.split_seed = split_seed
        self.as_image = as_image
        self.num_workers = num_workers
        self.train_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    @classmethod
    def unit_test_params(cls) -> dict:
        """Small batches for the generic tests."""
        return {"batch_size": 32}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=self.test_size, stratify=y, random_state=self.split_seed
        )
        self.train_set = self._tensors(x_tr, y_tr)
        self.test_set = self._tensors(x_te, y_te)

    def _tensors(self, x, y) -> TensorDataset:
        xt = torch.as_tensor(x, dtype=torch.float32) / 16.0
        if self.as_image:
            xt = xt.reshape(-1, 1, 8, 8)
        return TensorDataset(xt, torch.as_tensor(y, dtype=torch.long))

    def train_dataloader(self) -> DataLoader:
        return seeded_train_loader(
            self.train_set, self.batch_size, trainer=self.trainer, num_workers=self.num_workers
        )

    def _eval_loader(self) -> DataLoader:
        bs = 512 if self.eval_batch_size is None else self.eval_batch_size
        return DataLoader(self.test_set, batch_size=bs, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()
