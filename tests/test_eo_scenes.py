"""Procedural EO-like scenes (reobench.md §5): shapes, range, determinism, separable classes, mosaics."""

from __future__ import annotations

import numpy as np
import pytest

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
