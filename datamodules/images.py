"""Image classification data (CIFAR-100, Tiny-ImageNet, ImageNet) from an image folder or the Hub.

Two sources, chosen by which argument is set:

- ``root``: a local image folder with a ``train/`` and a ``val/`` (or ``valid/``, ``validation/``,
  ``test/``) subfolder, each holding one subfolder per class (sorted names → labels 0..C−1), read
  with PIL;
- ``dataset_name``: a Hugging Face dataset (``uoft-cs/cifar100``, ``zh-plus/tiny-imagenet``,
  ``ILSVRC/imagenet-1k``) loaded by ``datasets.load_dataset`` in ``setup`` (never in the
  constructor; this needs the Hub or a local cache).

Transforms are our own (no torchvision), on [0, 1] CHW tensors:

- ``augment: cifar``: train = zero-pad ``crop_padding`` + random ``image_size`` crop + horizontal
  flip; eval = as is (resized to ``image_size`` if needed);
- ``augment: imagenet``: train = random resized crop (scale 0.08–1, ratio 3/4–4/3) + flip;
  eval = resize the short side to ``image_size / 0.875`` and centre crop;
- ``augment: none``: resize only.

then per-channel normalisation. Augmentation draws come from a generator seeded by (run seed,
epoch, sample index), so an epoch's batches are a pure function of the seed: resume is exact and
every DataLoader worker agrees.

Offline tiny mode: ``make_digits_folder: true`` writes scikit-learn's 8×8 digits, upscaled to
``image_size`` and replicated to RGB, as PNGs under ``root`` (once; atomically) before reading it
back like any folder. ``unit_test_params()`` uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from trainer.data import run_seed, seeded_train_loader

__all__ = ["ImageClassificationDataModule"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".JPEG")
VAL_FOLDERS = ("val", "valid", "validation", "test")
AUGMENTS = ("cifar", "imagenet", "none")
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"img:{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _to_tensor(img: Any) -> torch.Tensor:
    """PIL image → float [3, H, W] in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _resize(img: Any, size: tuple[int, int]) -> Any:
    from PIL import Image

    return img if img.size == size else img.resize(size, Image.BILINEAR)


class _FolderImages(Dataset):
    """(PIL image, label) pairs of a class-per-subfolder directory."""

    def __init__(self, folder: Path, classes: list[str]) -> None:
        self.samples = [
            (p, label)
            for label, cls in enumerate(classes)
            for p in sorted((folder / cls).iterdir())
            if p.suffix in IMAGE_SUFFIXES
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as img:
            return img.convert("RGB"), label


class _HubImages(Dataset):
    """(PIL image, label) pairs of a Hugging Face ``datasets`` split."""

    def __init__(self, ds: Any, image_key: str, label_key: str) -> None:
        self.ds, self.image_key, self.label_key = ds, image_key, label_key

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        row = self.ds[int(i)]
        return row[self.image_key].convert("RGB"), int(row[self.label_key])


class _Transformed(Dataset):
    """Applies the train or eval transform; train draws come from a (seed, epoch, index) generator."""

    def __init__(self, base: Dataset, dm: "ImageClassificationDataModule", train: bool) -> None:
        self.base, self.dm, self.train = base, dm, train
        self.seed = 0
        self.epoch_source: Any = None  # the DistributedSampler of the training loader (has .epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[i]
        gen = None
        if self.train:
            epoch = int(getattr(self.epoch_source, "epoch", 0))
            gen = torch.Generator().manual_seed(_sample_seed(self.seed, epoch, int(i)))
        return self.dm.transform(img, gen), label


class ImageClassificationDataModule(LightningDataModule):
    """Image classification from a local image folder or a Hugging Face dataset (CIFAR, ImageNet).

    Exactly one of ``root`` and ``dataset_name`` must be set. ``num_classes`` is known after
    ``setup``.

    Args:
        root: image-folder root with ``train/`` and a validation subfolder (``val``, ``valid``,
            ``validation`` or ``test``), one subfolder per class; no default.
        dataset_name: Hugging Face dataset name, e.g. ``uoft-cs/cifar100``; no default.
        dataset_config: the dataset's configuration name, if it has several; default ``None``.
        image_key: image column; ``None`` (default) = ``img`` if present, else ``image``.
        label_key: label column; ``None`` (default) = ``fine_label`` if present (CIFAR-100), else ``label``.
        train_split: training split name; default ``"train"``.
        val_split: validation split (Hub) or subfolder (folder); ``None`` (default) = ``test`` for
            CIFAR, ``valid`` for Tiny-ImageNet, ``validation`` otherwise (Hub), the first existing of
            val/valid/validation/test (folder).
        test_split: test split or subfolder; ``None`` (default) = the validation split.
        augment: ``"cifar"`` (default), ``"imagenet"`` or ``"none"`` (see the module docstring).
        image_size: side of the (square) network input; default 32.
        crop_padding: zero padding of the CIFAR random crop; default 4.
        mean: per-channel normalisation mean; ``None`` (default) = CIFAR-100 statistics for
            ``augment: cifar``, ImageNet statistics for ``imagenet``, 0.5 for ``none``.
        std: per-channel normalisation std; ``None`` (default) as for ``mean``.
        batch_size: training batch size per process; default 128.
        eval_batch_size: validation/test batch size; ``None`` (default) = ``batch_size``.
        num_workers: DataLoader workers; default 0.
        make_digits_folder: create ``root`` from scikit-learn's digits if it does not exist (offline
            tiny mode); default False.
        digits_per_class: with ``make_digits_folder``, at most this many images per class and split;
            ``None`` (default) = all.
    """

    def __init__(
        self,
        root: str | None = None,
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        image_key: str | None = None,
        label_key: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        augment: str = "cifar",
        image_size: int = 32,
        crop_padding: int = 4,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        make_digits_folder: bool = False,
        digits_per_class: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if (root is None) == (dataset_name is None):
            raise ValueError("set exactly one of `root` (image folder) and `dataset_name` (Hugging Face)")
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.root = root
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.image_key = image_key
        self.label_key = label_key
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.augment = augment
        self.image_size = image_size
        self.crop_padding = crop_padding
        default_mean, default_std = {
            "cifar": (CIFAR100_MEAN, CIFAR100_STD),
            "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
            "none": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        }[augment]
        self.norm_mean = torch.tensor(default_mean if mean is None else mean, dtype=torch.float32).view(-1, 1, 1)
        self.norm_std = torch.tensor(default_std if std is None else std, dtype=torch.float32).view(-1, 1, 1)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.make_digits_folder = make_digits_folder
        self.digits_per_class = digits_per_class
        self.num_classes: int | None = None
        self.train_set: _Transformed | None = None
        self.val_set: _Transformed | None = None
        self.test_set: _Transformed | None = None

    @classmethod
    def unit_test_params(cls) -> dict:
        """A tiny RGB 16×16 digits folder in the temp directory (created on first use)."""
        return {
            "root": os.path.join(tempfile.gettempdir(), "paper_trainer_digits_rgb16"),
            "make_digits_folder": True,
            "digits_per_class": 6,
            "image_size": 16,
            "crop_padding": 2,
            "batch_size": 16,
        }

    # ------------------------------------------------------------------ transforms

    def transform(self, img: Any, gen: torch.Generator | None) -> torch.Tensor:
        """Train transform when ``gen`` is given (random draws from it), else the eval transform."""
        s = self.image_size
        if self.augment == "imagenet":
            x = _to_tensor(self._random_resized_crop(img, gen) if gen is not None else self._center_crop(img))
        else:
            x = _to_tensor(_resize(img, (s, s)))
            if gen is not None and self.augment == "cifar":
                p = self.crop_padding
                x = torch.nn.functional.pad(x, (p, p, p, p))
                i, j = (int(v) for v in torch.randint(0, 2 * p + 1, (2,), generator=gen))
                x = x[:, i : i + s, j : j + s]
        if gen is not None and self.augment != "none" and bool(torch.rand((), generator=gen) < 0.5):
            x = x.flip(-1)
        return (x - self.norm_mean) / self.norm_std

    def _random_resized_crop(self, img: Any, gen: torch.Generator) -> Any:
        import math

        w, h = img.size
        area = w * h
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(0.08, 1.0, generator=gen))
            log_r = float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen))
            cw = int(round(math.sqrt(target * math.exp(log_r))))
            ch = int(round(math.sqrt(target / math.exp(log_r))))
            if 0 < cw <= w and 0 < ch <= h:
                x0 = int(torch.randint(0, w - cw + 1, (), generator=gen))
                y0 = int(torch.randint(0, h - ch + 1, (), generator=gen))
                return _resize(img.crop((x0, y0, x0 + cw, y0 + ch)), (self.image_size, self.image_size))
        return self._center_crop(img)

    def _center_crop(self, img: Any) -> Any:
        from PIL import Image

        s = self.image_size
        short = max(s, int(round(s / 0.875)))
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize((max(s, int(round(w * scale))), max(s, int(round(h * scale)))), Image.BILINEAR)
        w, h = img.size
        x0, y0 = (w - s) // 2, (h - s) // 2
        return img.crop((x0, y0, x0 + s, y0 + s))

    # ------------------------------------------------------------------ data

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.root is not None:
            train, val, test = self._folder_splits()
        else:
            train, val, test = self._hub_splits()
        self.train_set = _Transformed(train, self, train=True)
        self.val_set = _Transformed(val, self, train=False)
        self.test_set = _Transformed(test, self, train=False)

    def _folder_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        root = Path(self.root)
        if self.make_digits_folder and not (root / "train").is_dir():
            write_digits_folder(root, self.image_size, self.digits_per_class)
        train_dir = root / self.train_split
        if not train_dir.is_dir():
            raise FileNotFoundError(f"no training folder {train_dir} (expected <root>/{self.train_split}/<class>/*)")
        val_name = self.val_split or next((n for n in VAL_FOLDERS if (root / n).is_dir()), None)
        if val_name is None or not (root / val_name).is_dir():
            raise FileNotFoundError(f"no validation folder under {root} (tried {self.val_split or VAL_FOLDERS})")
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        self.num_classes = len(classes)
        test_name = self.test_split or val_name
        val = _FolderImages(root / val_name, classes)
        test = val if test_name == val_name else _FolderImages(root / test_name, classes)
        return _FolderImages(train_dir, classes), val, test

    def _hub_splits(self) -> tuple[Dataset, Dataset, Dataset]:
        import datasets

        name = self.dataset_name
        val_name = self.val_split
        if val_name is None:
            val_name = "test" if "cifar" in name.lower() else "valid" if "tiny-imagenet" in name.lower() else "validation"
        test_name = self.test_split or val_name
        loaded = {}
        for split in dict.fromkeys((self.train_split, val_name, test_name)):
            loaded[split] = datasets.load_dataset(name, self.dataset_config, split=split)
        train = loaded[self.train_split]
        cols = set(train.column_names)
        image_key = self.image_key or ("img" if "img" in cols else "image")
        label_key = self.label_key or ("fine_label" if "fine_label" in cols else "label")
        feature = train.features[label_key]
        self.num_classes = int(getattr(feature, "num_classes", 0) or (max(train[label_key]) + 1))
        wrap = {k: _HubImages(v, image_key, label_key) for k, v in loaded.items()}
        return wrap[self.train_split], wrap[val_name], wrap[test_name]

    def train_dataloader(self) -> DataLoader:
        loader = seeded_train_loader(
            self.train_set, self.batch_size, trainer=self.trainer, num_workers=self.num_workers,
            persistent_workers=False,
        )
        self.train_set.seed = run_seed()
        self.train_set.epoch_source = loader.sampler
        return loader

    def _eval_loader(self, ds: Dataset) -> DataLoader:
        bs = self.batch_size if self.eval_batch_size is None else self.eval_batch_size
        return DataLoader(ds, batch_size=bs, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


def write_digits_folder(root: Path, image_size: int, per_class: int | None = None) -> None:
    """Write sklearn's digits as RGB PNGs ``root/{train,val}/<digit>/<i>.png`` (stratified 75/25, seed 0).

    Written into a temporary sibling directory and renamed into place, so concurrent callers are safe.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    splits = {"train": (x_tr, y_tr), "val": (x_te, y_te)}
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
    try:
        for split, (xs, ys) in splits.items():
            counts: dict[int, int] = {}
            for i, (img, label) in enumerate(zip(xs, ys)):
                label = int(label)
                if per_class is not None and counts.get(label, 0) >= per_class:
                    continue
                counts[label] = counts.get(label, 0) + 1
                folder = tmp / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                gray = Image.fromarray((np.asarray(img).reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8), "L")
                gray.resize((image_size, image_size), Image.BILINEAR).convert("RGB").save(folder / f"{i}.png")
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "train").is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
