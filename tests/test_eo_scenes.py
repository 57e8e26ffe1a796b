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


# ----------------------------------------------------------------------------- annotations (reobench.md §5)

from datamodules.eo_scenes import (  # noqa: E402
    ROOF_CLASSES, _urban_layout, described_scene, largest_region_box, road_scene, scene_caption, scene_qa, urban_scene,
)  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_urban_boxes_lie_in_the_image_and_cover_roof_pixels(seed):
    img, boxes, labels = urban_scene(48, np.random.default_rng(seed))
    assert np.array_equal(img, scene_image("urban", 48, np.random.default_rng(seed)))  # same draws as the class scene
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) == len(labels) >= 4
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert set(labels.tolist()) <= set(range(len(ROOF_CLASSES)))
    _, ids, is_red = _urban_layout(48, np.random.default_rng(seed))
    covered = np.zeros((48, 48), dtype=bool)
    for (x1, y1, x2, y2), lab in zip(boxes.astype(int), labels):
        inside = ids[y1:y2, x1:x2]
        roof_ids = np.unique(inside[inside >= 0])
        assert len(roof_ids) >= 1
        covered[y1:y2, x1:x2] |= ids[y1:y2, x1:x2] >= 0
        # every box is tight on one roof of its label: that roof touches all four box edges
        k = [r for r in roof_ids if (ids == r).sum() == (inside == r).sum() and is_red[r] == (lab == 0)]
        ys, xs = np.nonzero(ids == k[0])
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
    small = [r for r in range(len(is_red)) if (ids == r).sum() < 4]
    assert covered[(ids >= 0) & ~np.isin(ids, small)].all()  # all roof pixels of kept roofs are boxed


def test_road_count_matches_the_road_mask():
    for seed in range(6):
        img, roads, n = road_scene(40, np.random.default_rng(seed))
        assert np.array_equal(img, scene_image("road", 40, np.random.default_rng(seed)))
        assert 1 <= n <= 3 and n == len(np.unique(roads[roads >= 0]))


def test_caption_and_qa_are_consistent_with_the_mask():
    mask = np.zeros((10, 10), dtype=np.int64)  # farmland 60, water 30, forest 10
    mask[:3] = SCENE_CLASSES.index("water")
    mask[3, :] = SCENE_CLASSES.index("forest")
    assert scene_caption(mask) == "an aerial image of farmland with water and forest"
    assert scene_caption(np.zeros((4, 4), dtype=np.int64)) == "an aerial image of farmland"
    assert scene_qa(mask, "urban") == [("Is there water?", "yes"), ("Is there urban?", "no"),
                                       ("How many land-cover types are there?", "3")]  # fmt: skip
    assert scene_qa(np.zeros((4, 4), dtype=np.int64), "water") == [
        ("Is there water?", "no"), ("How many land-cover types are there?", "1")]  # fmt: skip
    for seed in range(5):
        scene = described_scene(32, np.random.default_rng(seed))
        present = {SCENE_CLASSES[c].replace("_", " ") for c in np.unique(scene["mask"])}
        for q, a in scene["qa"]:
            if q.startswith("Is there"):
                assert a == ("yes" if q[9:-1] in present else "no")
            else:
                assert a == str(len(present))
        name = scene["phrase"].removeprefix("the largest ").removesuffix(" area").replace(" ", "_")
        x1, y1, x2, y2 = scene["box"].astype(int)
        assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32
        assert (scene["mask"][y1:y2, x1:x2] == SCENE_CLASSES.index(name)).any()
        assert all(w.replace(" ", "_") in SCENE_CLASSES for w in present) and scene["caption"].startswith("an aerial")


def test_largest_region_box():
    mask = np.zeros((8, 8), dtype=np.int64)
    mask[1:3, 1:2] = 2  # 2 px
    mask[4:7, 3:8] = 2  # 15 px
    assert largest_region_box(mask, 2).tolist() == [3.0, 4.0, 8.0, 7.0]
    with pytest.raises(ValueError, match="absent"):
        largest_region_box(mask, 5)
