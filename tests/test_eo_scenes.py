"""Procedural EO-like scenes (reobench.md §5): shapes, range, determinism, separable classes, mosaics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.eo_scenes import SCENE_CLASSES, classification_scenes, mosaic_scene, scene_image


def test_scene_shapes_range_and_determinism():
    x, y = classification_scenes(3, size=32, seed=5)
    assert x.shape == (18, 32, 32, 3) and x.dtype == np.float32 and y.tolist() == sorted(y.tolist())
    assert 0.0 <= x.min() and x.max() <= 1.0
    x2, _ = classification_scenes(5, size=32, seed=5)
    assert np.array_equal(x[:3], x2[:3])  # a scene does not depend on how many are drawn
    assert not np.array_equal(x, classification_scenes(3, size=32, seed=6)[0])


def _features(x: np.ndarray) -> np.ndarray:
    grad = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3))[:, None]
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)), grad], axis=1)


def test_classes_are_distinguishable_by_simple_statistics():
    xtr, ytr = classification_scenes(20, size=32, seed=0)
    xte, yte = classification_scenes(20, size=32, seed=1)
    ftr, fte = _features(xtr), _features(xte)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    centroids = np.stack([((ftr - mu) / sd)[ytr == c].mean(0) for c in range(len(SCENE_CLASSES))])
    pred = (((fte - mu) / sd)[:, None, :] - centroids[None]).__pow__(2).sum(-1).argmin(1)
    assert (pred == yte).mean() > 0.8


def test_mosaic_mask_matches_cells():
    img, mask = mosaic_scene(48, np.random.default_rng(0))
    assert img.shape == (48, 48, 3) and mask.shape == (48, 48) and mask.dtype == np.int64
    assert 1 <= len(np.unique(mask)) <= 6 and set(np.unique(mask)) <= set(range(len(SCENE_CLASSES)))
    img2, mask2 = mosaic_scene(48, np.random.default_rng(0))
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)


def test_bad_scene_arguments():
    with pytest.raises(ValueError, match="unknown scene class"):
        scene_image("glacier", 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="≥ 8"):
        scene_image("water", 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_per_class"):
        classification_scenes(0)


def test_scene_datamodules():
    from datamodules.eo_scenes import DigitsImageDataModule, ProceduralEOScenesDataModule

    dm = ProceduralEOScenesDataModule(**ProceduralEOScenesDataModule.unit_test_params())
    dm.setup("fit")
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert len(dm.splits["train"]) == 24 and len(dm.splits["test"]) == 12 and dm.num_classes == 6
    assert not torch.equal(dm.splits["train"].tensors[0][:2], dm.splits["test"].tensors[0][:2])  # splits differ
    seg = ProceduralEOScenesDataModule(**{**ProceduralEOScenesDataModule.unit_test_params(), "task": "segmentation"})
    seg.setup("fit")
    xs, ms = seg.splits["val"].tensors
    assert ms.shape == (12, 16, 16) and ms.dtype == torch.int64 and xs.shape == (12, 3, 16, 16)
    digits = DigitsImageDataModule(**DigitsImageDataModule.unit_test_params())
    digits.setup("fit")
    xd, yd = digits.splits["train"].tensors
    assert xd.shape == (1198, 3, 16, 16) and torch.equal(xd[:, 0], xd[:, 2]) and set(yd.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="task"):
        ProceduralEOScenesDataModule(task="detection")
