"""Procedural Earth-observation-like scenes for the REOBench miniatures (reobench.md §5 "Offline").

Our own generator, numpy only: top-down RGB scenes of six land-cover classes drawn from simple textures,
with photometric jitter, plus Voronoi mosaics of several classes whose segmentation mask is known by construction.
Every scene is a pure function of ``(class, size, numpy Generator)``, so a dataset is a pure function of its seed.

| class | texture (reobench.md §5) |
|---|---|
| farmland | parallel stripes (period 4–10 px, random orientation, 2–3 green / yellow / brown tones) |
| forest | dense dark-green crown blobs (radius 1.5–3 px) on a darker background |
| water | smooth blue with low-frequency ripples |
| urban | a grid of grey / red roofs (4–10 px) with 1 px shadows, randomly rotated |
| road | 1–3 grey lines (1–3 px wide) on grass or soil, crossing |
| bare_soil | brown fractal (1/f) noise |

Each image gets ±10 % brightness and a small hue shift (a channel mix). Images are float32 H×W×3 in [0, 1].
Datamodules (tensors ``[3, H, W]`` float32 in [0, 1]; the training loader is run-seeded, so resume is exact):

- :class:`ProceduralEOScenesDataModule`: ``task="classification"`` (single-class scenes, 500 / 100 / 100 per
  class for train / val / test by default, reobench.md §5) or ``task="segmentation"`` (Voronoi mosaics and their
  masks). Each split has its own seed, so the splits never share a scene.
- :class:`DigitsImageDataModule`: scikit-learn's bundled digits as a real offline image set (reobench.md §5 "Real"):
  8×8 upsampled bilinearly to 32×32, replicated to 3 channels, a seeded stratified 2/3 : 1/3 split (the test third
  also serves validation).

Annotations for the non-classification analogues (reobench.md §5), pure functions of ``(size, numpy Generator)``:
:func:`urban_scene` (roof boxes, axis-aligned ``(x1, y1, x2, y2)`` continuous pixel coordinates, classes
:data:`ROOF_CLASSES`: the detection analogue), :func:`road_scene` (road count: "How many roads?"),
:func:`described_scene` (a mosaic with :func:`scene_caption`, :func:`scene_qa` and the box of "the largest <class>
area", :func:`largest_region_box`: the caption, VQA and grounding analogues).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from trainer.data import seeded_train_loader

__all__ = [
    "ROOF_CLASSES", "SCENE_CLASSES", "DigitsImageDataModule", "ProceduralEOScenesDataModule", "classification_scenes",
    "described_scene", "largest_region_box", "mosaic_scene", "road_scene", "scene_caption", "scene_image", "scene_qa",
    "urban_scene",
]  # fmt: skip

#: The six classes, in label order (reobench.md §5 table).
SCENE_CLASSES: tuple[str, ...] = ("farmland", "forest", "water", "urban", "road", "bare_soil")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(size: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with a 1/f^exponent spectrum, normalised to [0, 1]."""
    f = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius**exponent
    spectrum[0, 0] = 0.0
    field = np.real(np.fft.ifft2(spectrum))
    return ((field - field.min()) / (np.ptp(field) + 1e-12)).astype(np.float32)


def _farmland(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(4, 10)
    tones = np.array([[0.35, 0.55, 0.2], [0.75, 0.7, 0.3], [0.5, 0.35, 0.2]], dtype=np.float32)
    k = int(rng.integers(2, 4))
    palette = tones[rng.permutation(3)[:k]]
    phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
    band = np.floor(phase).astype(np.int64) % k
    return palette[band]


def _forest(size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.array([0.06, 0.18, 0.06], dtype=np.float32)
    yy, xx = _grid(size)
    n = int(size * size / 12)
    for cy, cx, r, g in zip(rng.uniform(0, size, n), rng.uniform(0, size, n), rng.uniform(1.5, 3, n), rng.uniform(0.25, 0.4, n)):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[inside] = (0.08, g, 0.08)
    return img


def _water(size: int, rng: np.random.Generator) -> np.ndarray:
    ripple = _smooth_noise(size, rng, exponent=2.5)
    base = np.array([0.1, 0.25, 0.55], dtype=np.float32)
    return base + 0.08 * (ripple[..., None] - 0.5)


def _urban_layout(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The urban texture, the id of the roof under each pixel (−1 = none) and whether each roof id is red."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = (0.55, 0.55, 0.52)  # pavement
    yy, xx = _grid(size)
    theta = rng.uniform(0, math.pi / 2)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    cell = rng.uniform(6, 12)
    roof = rng.uniform(4, min(10, cell - 1))
    iu, iv = np.floor(u / cell), np.floor(v / cell)
    fu, fv = u - iu * cell, v - iv * cell
    on_roof = (fu < roof) & (fv < roof)
    shadow = ((fu >= roof) & (fu < roof + 1) & (fv < roof + 1)) | ((fv >= roof) & (fv < roof + 1) & (fu < roof + 1))
    red = ((iu * 7 + iv * 13).astype(np.int64) + int(rng.integers(0, 2))) % 2 == 0
    img[on_roof & red] = (0.65, 0.25, 0.2)
    img[on_roof & ~red] = (0.45, 0.45, 0.48)
    img[shadow] = (0.2, 0.2, 0.22)
    # roof ids: one per (iu, iv) grid cell that has roof pixels
    keys = (iu.astype(np.int64) - int(iu.min())) * 100_003 + (iv.astype(np.int64) - int(iv.min()))
    ids = np.full((size, size), -1, dtype=np.int64)
    uniq, inverse = np.unique(keys[on_roof], return_inverse=True)
    ids[on_roof] = inverse
    is_red = np.zeros(len(uniq), dtype=bool)
    is_red[inverse] = red[on_roof]
    return img, ids, is_red


def _urban(size: int, rng: np.random.Generator) -> np.ndarray:
    return _urban_layout(size, rng)[0]


def _road_layout(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The road texture and the index of the road under each pixel (−1 = none; a later road paints over)."""
    ground = np.array([0.35, 0.5, 0.25] if rng.random() < 0.5 else [0.5, 0.4, 0.28], dtype=np.float32)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = ground
    img += 0.04 * (_smooth_noise(size, rng, exponent=1.5)[..., None] - 0.5)
    yy, xx = _grid(size)
    angles = rng.uniform(0, math.pi, int(rng.integers(1, 4)))
    if len(angles) > 1:
        angles[1] = angles[0] + rng.uniform(math.pi / 4, 3 * math.pi / 4)  # crossings
    roads = np.full((size, size), -1, dtype=np.int64)
    for k, a in enumerate(angles):
        c = rng.uniform(0.3, 0.7) * size
        dist = np.abs((xx - c) * math.sin(a) - (yy - c) * math.cos(a))
        on = dist <= rng.uniform(0.5, 1.5)
        img[on] = (0.42, 0.42, 0.42)
        roads[on] = k
    return img, roads


def _road(size: int, rng: np.random.Generator) -> np.ndarray:
    return _road_layout(size, rng)[0]


def _bare_soil(size: int, rng: np.random.Generator) -> np.ndarray:
    noise = _smooth_noise(size, rng, exponent=1.0)
    base = np.array([0.5, 0.36, 0.22], dtype=np.float32)
    return base * (0.75 + 0.5 * noise[..., None])


_TEXTURES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "farmland": _farmland, "forest": _forest, "water": _water, "urban": _urban, "road": _road, "bare_soil": _bare_soil,
}  # fmt: skip


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """±10 % brightness and a small hue shift: a channel mix close to the identity (reobench.md §5)."""
    mix = np.eye(3, dtype=np.float32) + rng.uniform(-0.05, 0.05, size=(3, 3)).astype(np.float32)
    out = img @ mix.T * np.float32(rng.uniform(0.9, 1.1))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def scene_image(name: str, size: int, rng: np.random.Generator, jitter: bool = True) -> np.ndarray:
    """One ``size`` × ``size`` scene of class ``name`` (float32 H×W×3 in [0, 1])."""
    if name not in _TEXTURES:
        raise ValueError(f"unknown scene class {name!r}; known: {list(SCENE_CLASSES)}")
    if int(size) < 8:
        raise ValueError(f"scene size must be ≥ 8 px, got {size}")
    img = np.clip(_TEXTURES[name](int(size), rng), 0.0, 1.0).astype(np.float32)
    return _jitter(img, rng) if jitter else img


def classification_scenes(n_per_class: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` single-class scenes of every class: images ``[N, size, size, 3]`` float32 and labels ``[N]``.

    Scene ``i`` of class ``c`` is drawn from its own generator seeded by ``(seed, c, i)``, so a dataset's first
    scenes do not depend on how many are drawn.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be ≥ 1, got {n_per_class}")
    images, labels = [], []
    for c, name in enumerate(SCENE_CLASSES):
        for i in range(n_per_class):
            rng = np.random.default_rng([int(seed), c, i])
            images.append(scene_image(name, size, rng))
            labels.append(c)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def mosaic_scene(size: int, rng: np.random.Generator, cells: tuple[int, int] = (3, 6)) -> tuple[np.ndarray, np.ndarray]:
    """A Voronoi mosaic of 3–6 cells, each a scene of a random class; returns the image and its class mask ``[H, W]``."""
    n = int(rng.integers(cells[0], cells[1] + 1))
    centres = rng.uniform(0, size, size=(n, 2))
    classes = rng.integers(0, len(SCENE_CLASSES), size=n)
    yy, xx = _grid(size)
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    cell = d.argmin(-1)
    mask = classes[cell].astype(np.int64)
    img = np.zeros((size, size, 3), dtype=np.float32)
    for k in range(n):
        inside = cell == k
        img[inside] = scene_image(SCENE_CLASSES[int(classes[k])], size, rng, jitter=False)[inside]
    return _jitter(img, rng), mask


def segmentation_scenes(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Voronoi mosaics (images ``[n, size, size, 3]``) and their class masks ``[n, size, size]``."""
    pairs = [mosaic_scene(size, np.random.default_rng([int(seed), 99, i])) for i in range(int(n))]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# ----------------------------------------------------------------------------- annotations (reobench.md §5)

#: Classes of the roof boxes of :func:`urban_scene` (the detection analogue), in label order.
ROOF_CLASSES: tuple[str, ...] = ("red_roof", "grey_roof")


def _enclosing_boxes(ids: np.ndarray, min_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned boxes ``[K, 4]`` (x1, y1, x2, y2; pixel i spans [i, i + 1]) of each id ≥ 0 with at least
    ``min_pixels`` pixels, and those ids."""
    from scipy import ndimage

    counts = np.bincount(ids[ids >= 0].ravel(), minlength=int(ids.max()) + 1 if ids.max() >= 0 else 0)
    boxes, kept = [], []
    for k, sl in enumerate(ndimage.find_objects(ids + 1)):
        if sl is None or counts[k] < min_pixels:
            continue
        boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
        kept.append(k)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(kept, dtype=np.int64)


def urban_scene(
    size: int, rng: np.random.Generator, jitter: bool = True, min_pixels: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An urban scene and its roof boxes: the detection analogue (reobench.md §5 "Urban roofs provide boxes").

    Returns the image (float32 H×W×3), boxes ``[K, 4]`` float64 ``(x1, y1, x2, y2)`` in continuous pixel
    coordinates (pixel i spans [i, i + 1], as :func:`trainer.corruptions.transform_boxes` assumes), the enclosing
    axis-aligned box of every roof with at least ``min_pixels`` visible pixels (roofs are rotated, so a box also
    covers some pavement), and labels ``[K]`` int64 indexing :data:`ROOF_CLASSES`. The image equals
    ``scene_image("urban", size, rng)`` for the same generator state.
    """
    if int(size) < 8:
        raise ValueError(f"scene size must be ≥ 8 px, got {size}")
    img, ids, is_red = _urban_layout(int(size), rng)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    boxes, kept = _enclosing_boxes(ids, int(min_pixels))
    labels = np.where(is_red[kept], 0, 1).astype(np.int64)
    return (_jitter(img, rng) if jitter else img), boxes, labels


def road_scene(size: int, rng: np.random.Generator, jitter: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """A road scene, the index of the road under each pixel ``[H, W]`` (−1 = none) and the number of roads
    visible (the answer to "How many roads?", reobench.md §5). The image equals ``scene_image("road", ...)``."""
    if int(size) < 8:
        raise ValueError(f"scene size must be ≥ 8 px, got {size}")
    img, roads = _road_layout(int(size), rng)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    n_roads = int(len(np.unique(roads[roads >= 0])))
    return (_jitter(img, rng) if jitter else img), roads, n_roads


def _words(name: str) -> str:
    return name.replace("_", " ")


def scene_caption(mask: np.ndarray) -> str:
    """Template caption of a class mask: the classes by decreasing area (reobench.md §5), e.g.
    ``"an aerial image of farmland with water and forest"``."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=len(SCENE_CLASSES))
    order = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    names = [_words(SCENE_CLASSES[c]) for c in order]
    text = f"an aerial image of {names[0]}"
    if len(names) > 1:
        text += " with " + (", ".join(names[1:-1]) + " and " if len(names) > 2 else "") + names[-1]
    return text


def scene_qa(mask: np.ndarray, ask: str = "forest") -> list[tuple[str, str]]:
    """Question–answer pairs of a class mask (reobench.md §5): "Is there water?", "Is there <ask>?" (yes / no:
    whether any pixel has that class) and "How many land-cover types are there?" (the distinct classes)."""
    if ask not in SCENE_CLASSES:
        raise ValueError(f"unknown scene class {ask!r}; known: {list(SCENE_CLASSES)}")
    present = set(np.unique(np.asarray(mask)).tolist())
    qa = [(f"Is there {_words(name)}?", "yes" if SCENE_CLASSES.index(name) in present else "no")
          for name in dict.fromkeys(("water", ask))]  # fmt: skip
    qa.append(("How many land-cover types are there?", str(len(present))))
    return qa


def largest_region_box(mask: np.ndarray, cls: int) -> np.ndarray:
    """Enclosing box ``(x1, y1, x2, y2)`` of the largest 4-connected region of class ``cls`` (the grounding
    target "the largest <class> area", reobench.md §5)."""
    from scipy import ndimage

    regions, n = ndimage.label(np.asarray(mask) == cls)
    if n == 0:
        raise ValueError(f"class {cls} is absent from the mask")
    largest = int(np.argmax(np.bincount(regions.ravel())[1:])) + 1
    return _enclosing_boxes(np.where(regions == largest, 0, -1), 1)[0][0]


def described_scene(size: int, rng: np.random.Generator) -> dict:
    """A Voronoi mosaic with its caption, QA pairs and one grounding target (reobench.md §5 analogues).

    Returns ``{"image", "mask", "caption", "qa": [(question, answer)], "phrase", "box"}``: the mosaic and its class
    mask (:func:`mosaic_scene`), :func:`scene_caption`, :func:`scene_qa` (the second class asked about drawn from
    ``rng``), and the phrase ``"the largest <class> area"`` of a present class drawn from ``rng`` with its
    :func:`largest_region_box`.
    """
    img, mask = mosaic_scene(int(size), rng)
    present = np.unique(mask)
    ask = SCENE_CLASSES[int(rng.integers(0, len(SCENE_CLASSES)))]
    target = int(present[int(rng.integers(0, len(present)))])
    return {
        "image": img, "mask": mask, "caption": scene_caption(mask), "qa": scene_qa(mask, ask),
        "phrase": f"the largest {_words(SCENE_CLASSES[target])} area", "box": largest_region_box(mask, target),
    }  # fmt: skip


def _chw(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), dtype=torch.float32)


class _ImageSplits(LightningDataModule):
    """Train / val / test ``TensorDataset`` s of ``[3, H, W]`` images; subclasses fill ``_build``."""

    def __init__(self, batch_size: int, eval_batch_size: int) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("batch_size and eval_batch_size must be ≥ 1")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.splits: dict[str, TensorDataset] | None = None

    def _build(self) -> dict[str, TensorDataset]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self._build()

    def train_dataloader(self) -> DataLoader:
        return seeded_train_loader(self.splits["train"], self.batch_size, trainer=self.trainer)

    def _eval(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval("test")


class ProceduralEOScenesDataModule(_ImageSplits):
    """Procedural EO-like scenes (reobench.md §5): six land-cover classes, or Voronoi mosaics with masks.

    Args:
        task: ``classification`` (labels ``[N]``) or ``segmentation`` (masks ``[N, H, W]``).
        size: image side in pixels (reobench.md §5: 64).
        train_per_class: training scenes per class (reobench.md §5: 500); for segmentation, 6 × this many mosaics.
        val_per_class: validation scenes per class (reobench.md §5: 100).
        test_per_class: test scenes per class (reobench.md §5: 100).
        batch_size: training batch size per process.
        eval_batch_size: batch size of the validation and test loaders.
        seed: seeds the scenes (each split from its own stream).
    """

    def __init__(
        self,
        task: str = "classification",
        size: int = 64,
        train_per_class: int = 500,
        val_per_class: int = 100,
        test_per_class: int = 100,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size)
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
        if min(train_per_class, val_per_class, test_per_class) < 1 or size < 8:
            raise ValueError("scene counts must be ≥ 1 and size ≥ 8")
        self.task, self.size, self.seed = task, int(size), int(seed)
        self.counts = {"train": int(train_per_class), "val": int(val_per_class), "test": int(test_per_class)}

    @classmethod
    def unit_test_params(cls) -> dict:
        return {"size": 16, "train_per_class": 4, "val_per_class": 2, "test_per_class": 2, "batch_size": 8}

    @property
    def num_classes(self) -> int:
        return len(SCENE_CLASSES)

    def _build(self) -> dict[str, TensorDataset]:
        out = {}
        for k, (split, n) in enumerate(self.counts.items()):
            split_seed = self.seed * 1000 + k
            if self.task == "classification":
                x, y = classification_scenes(n, self.size, split_seed)
                out[split] = TensorDataset(_chw(x), torch.as_tensor(y))
            else:
                x, m = segmentation_scenes(n * len(SCENE_CLASSES), self.size, split_seed)
                out[split] = TensorDataset(_chw(x), torch.as_tensor(m))
        return out


class DigitsImageDataModule(_ImageSplits):
    """scikit-learn digits as 32×32 RGB images in [0, 1] (reobench.md §5 "Real").

    Args:
        size: side after bilinear upsampling (reobench.md §5: 32).
        batch_size: training batch size per process.
        eval_batch_size: batch size of the validation and test loaders.
        split_seed: ``random_state`` of the stratified 2/3 : 1/3 split.
    """

    def __init__(self, size: int = 32, batch_size: int = 64, eval_batch_size: int = 256, split_seed: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size)
        if size < 8:
            raise ValueError(f"size must be ≥ 8, got {size}")
        self.size, self.split_seed = int(size), int(split_seed)

    @classmethod
    def unit_test_params(cls) -> dict:
        return {"size": 16, "batch_size": 32}

    @property
    def num_classes(self) -> int:
        return 10

    def _build(self) -> dict[str, TensorDataset]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        img = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        img = torch.nn.functional.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False)
        img = img.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
        idx = np.arange(len(y))
        tr, te = train_test_split(idx, test_size=1 / 3, stratify=y, random_state=self.split_seed)
        labels = torch.as_tensor(y, dtype=torch.long)
        test = TensorDataset(img[te], labels[te])
        return {"train": TensorDataset(img[tr], labels[tr]), "val": test, "test": test}
