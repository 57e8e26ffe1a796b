"""The corruption grid around any image datamodule (reobench.md §2 ``CorruptionGridDataModule``, §6 "Harness").

:class:`CorruptionGridDataModule` wraps a base datamodule whose test loader yields ``(image [B, 3, H, W] float in
[0, 1], target)``, where ``target`` is a class label ``[B]`` or a mask ``[B, H, W]``. Training and validation are the
base's. ``test_dataloader()`` returns the clean test set followed by one loader per (corruption, severity), in
registry order (corruption-major); ``grid_index[i]`` names loader ``i`` (``("clean", 0)`` first).

Each test image ``i`` under (c, s) is corrupted with the generator seeded by
:func:`trainer.corruptions.sample_seed` ``(seed, i, c, s)``, so a cell is reproducible on its own and identical on
every rank and worker. Geometric corruptions warp masks with the image (nearest neighbour); labels are unchanged.
Corrupted images are quantised to uint8 (as the paper's image folders are) and cached on disk under a key of the
clean test set's fingerprint, the corruption, severity, seed and the corruption's parameter row, so a changed
parameter never reads a stale cell. The clean set is quantised the same way, so every loader sees 8-bit images.
Cells are computed lazily, image by image as the loader reads them (a ``fast_dev_run`` corrupts one batch per
cell), and a cell is written to the cache once all its images have been computed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainer.corruptions import CORRUPTIONS, PARAMS, check_grid, corrupt, sample_seed

__all__ = ["CorruptionGridDataModule"]


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


class CorruptionGridDataModule(LightningDataModule):
    """Clean test set + every corruption × severity as named test loaders (reobench.md §2).

    Args:
        base: the wrapped image datamodule (in YAML: ``class_path`` / ``init_args``).
        corruptions: corruption names in order (None = the 12 of ``trainer.corruptions``, registry order).
        severities: severities evaluated (reobench.md §3: 1..5).
        seed: the global seed of the per-sample corruption seeds.
        cache_dir: where corrupted cells are cached (None = ``$PAPER_TRAINER_CACHE/corruptions``, else the system
            temporary directory).
        eval_batch_size: batch size of the test loaders.
    """

    def __init__(
        self,
        base: LightningDataModule,
        corruptions: tuple[str, ...] | None = None,
        severities: tuple[int, ...] = (1, 2, 3, 4, 5),
        seed: int = 0,
        cache_dir: str | None = None,
        eval_batch_size: int = 256,
    ) -> None:
        super().__init__()
        names, severities = check_grid(CORRUPTIONS if corruptions is None else corruptions, severities)
        self.base, self.names, self.severities = base, names, severities
        self.seed, self.eval_batch_size = int(seed), int(eval_batch_size)
        root = cache_dir or os.environ.get("PAPER_TRAINER_CACHE")
        self.cache_dir = Path(root) / "corruptions" if root else Path(tempfile.gettempdir()) / "paper_trainer_corruptions"
        self._clean: tuple[np.ndarray, torch.Tensor] | None = None
        self._base_ready = False
        self._fingerprint = ""

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        from datamodules.eo_scenes import ProceduralEOScenesDataModule

        base = ProceduralEOScenesDataModule(**ProceduralEOScenesDataModule.unit_test_params())
        return {"base": base, "corruptions": ("gaussian_noise", "rotate"), "severities": (1, 5)}

    @property
    def grid_index(self) -> list[tuple[str, int]]:
        """The name of every test loader: ``("clean", 0)``, then ``(c, s)`` in order."""
        return [("clean", 0)] + [(c, s) for c in self.names for s in self.severities]

    @property
    def num_classes(self) -> int:
        return int(self.base.num_classes)

    # ------------------------------------------------------------------ Lightning
    def prepare_data(self) -> None:
        self.base.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.base.trainer = self.trainer
        self.base.setup(stage)
        self._base_ready = True

    def train_dataloader(self) -> Any:
        return self.base.train_dataloader()

    def val_dataloader(self) -> Any:
        return self.base.val_dataloader()

    def test_dataloader(self) -> list[DataLoader]:
        x, y = self.clean_test_set()
        clean = TensorDataset(torch.as_tensor(x).permute(0, 3, 1, 2).float().div(255.0), y)
        cells = [_CellDataset(self, c, s) for c in self.names for s in self.severities]
        return [DataLoader(d, batch_size=self.eval_batch_size, shuffle=False) for d in [clean, *cells]]

    # ------------------------------------------------------------------ the grid
    def clean_test_set(self) -> tuple[np.ndarray, torch.Tensor]:
        """The base's test set as uint8 ``[N, H, W, 3]`` images and their targets."""
        if self._clean is None:
            if not self._base_ready:
                self.setup("test")
            xs, ys = [], []
            for batch in self.base.test_dataloader():
                x, y = batch[0], batch[1]
                if x.dim() != 4 or x.shape[1] != 3:
                    raise ValueError(f"CorruptionGridDataModule: the base must yield [B, 3, H, W] images, got {tuple(x.shape)}")
                xs.append(x.permute(0, 2, 3, 1).cpu().numpy())
                ys.append(y.cpu())
            images = _quantise(np.concatenate(xs))
            self._clean = (images, torch.cat(ys))
            h = hashlib.sha256(images.tobytes())
            h.update(self._clean[1].numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._clean

    def cache_key(self, name: str, severity: int) -> str:
        """The cache key of a cell: clean fingerprint, corruption, severity, seed and its parameter row."""
        self.clean_test_set()
        text = repr((self._fingerprint, name, int(severity), self.seed, PARAMS[name]))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def cell_path(self, name: str, severity: int) -> Path:
        """Where the cell (``name``, ``severity``) is cached."""
        return self.cache_dir / f"{name}_s{severity}_{self.cache_key(name, severity)}.npz"

    def corrupt_one(self, name: str, severity: int, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Test image ``index`` under (``name``, ``severity``) as uint8 ``[H, W, 3]``, and its warped mask (or None)."""
        images, targets = self.clean_test_set()
        img = images[index].astype(np.float32) / 255.0
        seed = sample_seed(self.seed, index, name, severity)
        if targets.dim() == 3:
            xi, yi = corrupt(img, name, severity, seed=seed, target=targets[index].numpy())
            return _quantise(xi), yi
        return _quantise(corrupt(img, name, severity, seed=seed)), None

    def corrupted(self, name: str, severity: int) -> tuple[np.ndarray, torch.Tensor]:
        """The whole test set under (``name``, ``severity``): uint8 images and (warped) targets, cached on disk."""
        return _CellDataset(self, name, severity).arrays()

    def _save_cell(self, name: str, severity: int, images: np.ndarray, targets: np.ndarray) -> None:
        path = self.cell_path(name, severity)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, targets=targets)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written cell



class _CellDataset(Dataset):
    """One (corruption, severity) cell of the grid: read from the cache, or corrupted image by image on first access.

    Items are computed lazily, so a run that reads one batch per loader (``fast_dev_run``, ``limit_test_batches``)
    corrupts only that batch; once every item of the cell has been computed in this process, the cell is written to
    the cache. ``tensors`` (images ``[N, 3, H, W]`` float in [0, 1], targets) materialises the whole cell.
    """

    def __init__(self, grid: CorruptionGridDataModule, name: str, severity: int) -> None:
        self.grid, self.name, self.severity = grid, name, int(severity)
        images, targets = grid.clean_test_set()
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self._done: np.ndarray | None = None
        self._n = images.shape[0]
        path = grid.cell_path(name, self.severity)
        if path.is_file():
            with np.load(path) as z:
                self._x, self._y = z["images"], z["targets"]

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._x is None or self._done is not None:  # not (yet) a complete cell
            if self._x is None:
                images, targets = self.grid.clean_test_set()
                self._x, self._y = np.empty_like(images), targets.numpy().copy()
                self._done = np.zeros(self._n, dtype=bool)
            if not self._done[i]:
                xi, yi = self.grid.corrupt_one(self.name, self.severity, i)
                self._x[i] = xi
                if yi is not None:
                    self._y[i] = yi
                self._done[i] = True
                if self._done.all():
                    self.grid._save_cell(self.name, self.severity, self._x, self._y)
                    self._done = None
        x = torch.from_numpy(np.ascontiguousarray(self._x[i])).permute(2, 0, 1).float().div(255.0)
        return x, torch.as_tensor(self._y[i])

    def arrays(self) -> tuple[np.ndarray, torch.Tensor]:
        """The whole cell as uint8 ``[N, H, W, 3]`` images and targets (computes the missing items)."""
        if self._done is not None or self._x is None:
            for i in range(self._n):
                self[i]
        return self._x, torch.as_tensor(self._y)

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.arrays()
        return torch.as_tensor(x).permute(0, 3, 1, 2).float().div(255.0), y
