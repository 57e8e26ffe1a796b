"""The corruption-grid harness (reobench.md §6 "Harness"): loader order, grid index, seeding, masks, cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.corruption_grid import CorruptionGridDataModule
from datamodules.eo_scenes import ProceduralEOScenesDataModule
from trainer.corruptions import CORRUPTIONS, PARAMS, corrupt, sample_seed


def _base(task="classification"):
    return ProceduralEOScenesDataModule(**{**ProceduralEOScenesDataModule.unit_test_params(), "task": task})


def test_full_grid_order_and_length(tmp_path):
    dm = CorruptionGridDataModule(_base(), cache_dir=str(tmp_path))
    assert len(dm.grid_index) == 1 + 12 * 5 and dm.grid_index[0] == ("clean", 0)
    assert dm.grid_index[1:6] == [(next(iter(CORRUPTIONS)), s) for s in range(1, 6)]
    assert [c for c, _ in dm.grid_index[1::5]] == list(CORRUPTIONS)


def test_cells_are_seeded_cached_and_keyed(tmp_path, monkeypatch):
    dm = CorruptionGridDataModule(_base(), corruptions=("gaussian_noise",), severities=(3,), cache_dir=str(tmp_path))
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == 2
    clean_u8, labels = dm.clean_test_set()
    x, y = loaders[1].dataset.tensors
    assert torch.equal(y, labels)
    expected = corrupt(clean_u8[4].astype(np.float32) / 255.0, "gaussian_noise", 3, seed=sample_seed(0, 4, "gaussian_noise", 3))
    assert np.abs(x[4].permute(1, 2, 0).numpy() - expected).max() <= 0.5 / 255 + 1e-6  # uint8 quantisation only
    assert len(list(tmp_path.rglob("*.npz"))) == 1
    again = CorruptionGridDataModule(_base(), corruptions=("gaussian_noise",), severities=(3,), cache_dir=str(tmp_path))
    again.setup("test")
    assert torch.equal(again.test_dataloader()[1].dataset.tensors[0], x)  # read back from the cache
    key = again.cache_key("gaussian_noise", 3)
    assert CorruptionGridDataModule(_base(), seed=1, cache_dir=str(tmp_path)).cache_key("gaussian_noise", 3) != key
    monkeypatch.setitem(PARAMS, "gaussian_noise", tuple(v * 2 for v in PARAMS["gaussian_noise"]))
    assert again.cache_key("gaussian_noise", 3) != key  # a changed parameter never reads a stale cell


def test_geometric_cells_warp_masks(tmp_path):
    dm = CorruptionGridDataModule(_base("segmentation"), corruptions=("rotate", "gaussian_blur"), severities=(5,),
                                  cache_dir=str(tmp_path))  # fmt: skip
    dm.setup("test")
    clean, rot, blur = dm.test_dataloader()
    m0, mr, mb = (loader.dataset.tensors[1] for loader in (clean, rot, blur))
    assert torch.equal(mb, m0) and not torch.equal(mr, m0) and mr.shape == m0.shape


def test_bad_grid_arguments():
    with pytest.raises(ValueError, match="unknown corruptions"):
        CorruptionGridDataModule(_base(), corruptions=("fog",))
    with pytest.raises(ValueError, match="1..5"):
        CorruptionGridDataModule(_base(), severities=(0, 6))
