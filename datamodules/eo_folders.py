"""AID / REOBench image folders: a clean class-folder set and its pre-corrupted copies (reobench.md §2, §4.6, §5).

Layouts read by :class:`EOImageFolderDataModule`:

- clean: ``root/<class>/*.{jpg,jpeg,png,tif,tiff}``; labels are the sorted class-folder index. The test split is
  a seeded fraction of it, or the files named in ``test_files`` (one ``<class>/<file>`` per line), or a separate
  ``test_root/<class>/*`` (the authors' scripts read a separate AID ``test`` folder);
- corrupted: ``corrupted_root/<corruption>/severity_<s>/<class>/*`` (class folders), or the same without the class
  level, ``.../severity_<s>/*`` (flat; a file's label is that of the clean test file with the same stem). The
  severity folder may also be named by the bare number, ``<corruption>/<s>/``, as the authors' DIOR evaluation
  configs read it (``DIOR_corrupted/clouds/1/``). Which of these the HF dataset ``xiang709/REOBench`` uses could
  not be checked from here (reobench.md §5 gives ``<corruption>/severity_<1..5>``); all are accepted. Folder names
  may be any of the aliases of reobench.md §4.6 (:data:`CORRUPTION_ALIASES`), mapped to the 12 canonical names
  of :data:`trainer.corruptions.CORRUPTIONS`; an unknown folder name is an error listing the known names.

Every corrupted cell must hold a counterpart (same class and stem) of every clean test image, so all loaders
cover the same images; a missing folder or image is one error naming the path. Images are loaded with PIL,
resized (shorter side to ``image_size``, bilinear) and centre-cropped to ``image_size`` — the protocol's test
transform (reobench.md §3: Resize + CenterCrop 224). Training augmentation (RandomResizedCrop, flips, rotation)
is the module's business; the training images get the same resize + crop. Tensors are ``[3, S, S]`` float32
in [0, 1].
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from trainer.corruptions import CORRUPTIONS, check_grid
from trainer.data import seeded_train_loader

__all__ = [
    "CORRUPTION_ALIASES", "IMAGE_EXTENSIONS", "EOImageFolderDataModule", "build_directory_once", "canonical_corruption",
    "corruption_folders", "load_image", "severity_path",
]  # fmt: skip

#: Corruption folder names of the authors' scripts → canonical names (reobench.md §4.6).
CORRUPTION_ALIASES: dict[str, str] = {
    "gaussian_noise_new": "gaussian_noise",
    "gaps": "data_gaps",
    "scale_image": "scale",
    "translate_image": "translate",
    "translate_image_new": "translate",
    "haze_update_new": "haze",
    "rotate_new": "rotate",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def canonical_corruption(name: str) -> str:
    """The canonical name of a corruption folder name or alias (reobench.md §4.6)."""
    if name in CORRUPTIONS:
        return name
    if name in CORRUPTION_ALIASES:
        return CORRUPTION_ALIASES[name]
    raise ValueError(
        f"unknown corruption folder {name!r}; known names: {', '.join(CORRUPTIONS)}; "
        f"aliases: {', '.join(f'{a}→{c}' for a, c in CORRUPTION_ALIASES.items())}"
    )


def corruption_folders(root: str | Path, ignore: tuple[str, ...] = ()) -> dict[str, Path]:
    """Canonical corruption name → its folder under ``root`` (aliases mapped; names in ``ignore`` skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"corrupted folder {root} does not exist")
    found: dict[str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name in ignore:
            continue
        name = canonical_corruption(sub.name)
        if name in found:
            raise ValueError(f"two folders map to corruption {name!r}: {found[name]} and {sub}; keep one")
        found[name] = sub
    return found


def severity_path(corruption_dir: Path, severity: int, suffix: str = "") -> Path | None:
    """``<dir>/severity_<s><suffix>`` or ``<dir>/<s><suffix>``, whichever exists (None if neither)."""
    for stem in (f"severity_{int(severity)}", str(int(severity))):
        path = corruption_dir / f"{stem}{suffix}"
        if path.exists():
            return path
    return None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """An RGB image as ``[3, S, S]`` float32 in [0, 1]: shorter side resized to ``S`` (bilinear), centre crop ``S``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class _FileDataset(Dataset):
    """``(image [3, S, S], label)`` of a list of ``(path, label)``, loaded on access."""

    def __init__(self, items: list[tuple[Path, int]], image_size: int) -> None:
        self.items, self.image_size = items, image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return load_image(path, self.image_size), label


def build_directory_once(path: Path, build: Callable[[Path], None]) -> Path:
    """``path``, built by ``build(tmp)`` into a private temporary sibling and renamed into place atomically, unless a
    complete one exists (concurrent builders: one wins, the others' copies are dropped; a reader never sees a
    half-written tree)."""
    if (path / ".complete").is_file():
        return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / ".complete").write_text("ok")
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race (or a stale incomplete tree is in the way)
        if not (path / ".complete").is_file():
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _write_unit_test_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for top, sub in (("clean", ""), ("corrupted", "gaussian_noise_new/severity_1"), ("corrupted", "rotate_new/1")):
        for c, cls in enumerate(("farmland", "water")):
            folder = root / top / sub / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(3):
                px = (rng.uniform(0, 255, (12, 16, 3)) * 0.3 + 120 * c).astype(np.uint8)
                Image.fromarray(px).save(folder / f"{cls}_{i}.png")


def _unit_test_tree() -> Path:
    """A tiny clean + corrupted folder tree (2 classes × 3 PNGs, alias folder names) for the generic tests."""
    return build_directory_once(Path(tempfile.gettempdir()) / "paper_trainer_eo_folders_unit_v1", _write_unit_test_tree)


class EOImageFolderDataModule(LightningDataModule):
    """AID-style clean class folders plus REOBench's pre-corrupted severity folders (reobench.md §2, §5).

    ``test_dataloader()`` returns the clean test loader, then one loader per (corruption, severity) in registry
    order; ``grid_index`` names them exactly like ``CorruptionGridDataModule.grid_index``, so
    ``FrozenEncoderProbeModule`` and ``CorruptionSweepCallback`` work unchanged.

    Args:
        root: the clean folder ``root/<class>/*`` (no default: a data path).
        corrupted_root: the corrupted folder ``corrupted_root/<corruption>/severity_<s>/...``; None = clean test only.
        image_size: side after resize + centre crop (reobench.md §3: CenterCrop 224).
        corruptions: canonical corruption names in order (None = the 12 of ``trainer.corruptions``, registry order).
        severities: severities evaluated (reobench.md §3: 1..5).
        test_root: a separate clean test folder ``test_root/<class>/*``; then ``root`` gives train and val only.
        test_files: a text file of ``<class>/<file>`` lines (relative to ``root``) forming the test split.
        val_fraction: fraction of the non-test images held out for validation (ours: 0.1; 0 = validate on the
            test split).
        test_fraction: fraction of the clean images in the seeded test split when neither ``test_root`` nor
            ``test_files`` is given (ours: 0.2).
        split_seed: seed of the train / val / test split (stratified per class).
        batch_size: training batch size per process (reobench.md §3: 16).
        eval_batch_size: batch size of the validation and test loaders.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        root: str,
        corrupted_root: str | None = None,
        image_size: int = 224,
        corruptions: tuple[str, ...] | None = None,
        severities: tuple[int, ...] = (1, 2, 3, 4, 5),
        test_root: str | None = None,
        test_files: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        names = tuple(CORRUPTIONS) if corruptions is None else tuple(canonical_corruption(c) for c in corruptions)
        names, severities = check_grid(names, severities)
        if image_size < 8 or batch_size < 1 or eval_batch_size < 1:
            raise ValueError("image_size must be ≥ 8 and batch sizes ≥ 1")
        if not (0 <= val_fraction < 1 and 0 < test_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1) and test_fraction in (0, 1), got {val_fraction}, {test_fraction}")
        if test_root is not None and test_files is not None:
            raise ValueError("give test_root or test_files, not both")
        self.root, self.corrupted_root, self.test_root, self.test_files = root, corrupted_root, test_root, test_files
        self.image_size, self.names, self.severities = int(image_size), names, severities
        self.val_fraction, self.test_fraction, self.split_seed = float(val_fraction), float(test_fraction), int(split_seed)
        self.batch_size, self.eval_batch_size, self.num_workers = int(batch_size), int(eval_batch_size), int(num_workers)
        self.class_names: tuple[str, ...] = ()
        self.splits: dict[str, list[tuple[Path, int]]] | None = None
        self.cells: dict[tuple[str, int], list[tuple[Path, int]]] = {}

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        root = _unit_test_tree()
        return {"root": str(root / "clean"), "corrupted_root": str(root / "corrupted"), "image_size": 8,
                "corruptions": ("gaussian_noise", "rotate"), "severities": (1,), "test_fraction": 0.34,
                "batch_size": 2}  # fmt: skip

    # ------------------------------------------------------------------ properties
    @property
    def num_classes(self) -> int:
        self._scan()
        return len(self.class_names)

    @property
    def grid_index(self) -> list[tuple[str, int]]:
        """The name of every test loader: ``("clean", 0)``, then ``(c, s)`` in order (none without corrupted_root)."""
        if self.corrupted_root is None:
            return [("clean", 0)]
        return [("clean", 0)] + [(c, s) for c in self.names for s in self.severities]

    # ------------------------------------------------------------------ scanning
    def _class_files(self, root: Path) -> dict[str, list[Path]]:
        if not root.is_dir():
            raise ValueError(f"image folder {root} does not exist")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValueError(f"image folder {root} has no class folders (expected {root}/<class>/*.jpg)")
        files = {c: _images(root / c) for c in classes}
        empty = [c for c, f in files.items() if not f]
        if empty:
            raise ValueError(f"class folders without images under {root}: {empty}")
        return files

    def _split(self, files: dict[str, list[Path]], fraction: float, offset: int) -> tuple[list, list]:
        """Stratified seeded split: per class, ``round(fraction · n)`` (≥ 1 when fraction > 0) files go to the second part."""
        first, second = [], []
        for label, c in enumerate(self.class_names):
            paths = files.get(c, [])
            order = np.random.default_rng([self.split_seed, offset, label]).permutation(len(paths))
            k = min(len(paths) - 1, max(1, round(fraction * len(paths)))) if fraction > 0 and len(paths) > 1 else 0
            second += [(paths[i], label) for i in sorted(order[:k])]
            first += [(paths[i], label) for i in sorted(order[k:])]
        return first, second

    def _scan(self) -> None:
        if self.splits is not None:
            return
        root = Path(self.root)
        files = self._class_files(root)
        self.class_names = tuple(files)
        if self.test_root is not None:
            test_files = self._class_files(Path(self.test_root))
            unknown = sorted(set(test_files) - set(files))
            if unknown:
                raise ValueError(f"test_root {self.test_root} has classes not in root: {unknown}")
            rest = files
            test = [(p, self.class_names.index(c)) for c, ps in test_files.items() for p in ps]
        elif self.test_files is not None:
            listed = [ln.strip() for ln in Path(self.test_files).read_text().splitlines() if ln.strip()]
            chosen = {root / ln for ln in listed}
            absent = [str(p) for p in chosen if not p.is_file()]
            if absent:
                raise ValueError(f"test_files names {len(absent)} missing images, e.g. {absent[0]}")
            test = [(p, self.class_names.index(p.parent.name)) for p in sorted(chosen)]
            rest = {c: [p for p in ps if p not in chosen] for c, ps in files.items()}
        else:
            rest_items, test = self._split(files, self.test_fraction, 0)
            rest = {c: [p for p, lab in rest_items if lab == i] for i, c in enumerate(self.class_names)}
        train, val = self._split(rest, self.val_fraction, 1)
        self.splits = {"train": train, "val": val, "test": test}

    def _cell(self, folder: Path, c: str, s: int) -> list[tuple[Path, int]]:
        """The corrupted copies of the clean test images in one cell, in the clean test order."""
        path = severity_path(folder, s)
        if path is None:
            raise ValueError(f"missing corrupted folder {folder}/severity_{s} (or {folder}/{s}) for {c} severity {s}")
        subdirs = [p for p in path.iterdir() if p.is_dir()]
        if subdirs:  # class folders
            by_key = {(p.parent.name, p.stem): p for d in subdirs for p in _images(d)}
            key = lambda item: (self.class_names[item[1]], item[0].stem)  # noqa: E731
        else:  # flat: matched by file stem
            by_key = {p.stem: p for p in _images(path)}
            key = lambda item: item[0].stem  # noqa: E731
        test = self.splits["test"]
        missing = [str(path / (f"{k[0]}/{k[1]}" if isinstance(k, tuple) else k)) for k in map(key, test) if k not in by_key]
        if missing:
            raise ValueError(f"{len(missing)} of {len(test)} test images have no corrupted copy in {path}, e.g. {missing[0]}")
        return [(by_key[key(item)], item[1]) for item in test]

    # ------------------------------------------------------------------ Lightning
    def setup(self, stage: str | None = None) -> None:
        self._scan()
        if stage in (None, "test") and self.corrupted_root is not None and not self.cells:
            folders = corruption_folders(self.corrupted_root, ignore=("clean",))
            absent = [c for c in self.names if c not in folders]
            if absent:
                raise ValueError(f"corrupted folder {self.corrupted_root} has no folder for {absent}")
            self.cells = {(c, s): self._cell(folders[c], c, s) for c in self.names for s in self.severities}

    def _loader(self, items: list[tuple[Path, int]]) -> DataLoader:
        return DataLoader(_FileDataset(items, self.image_size), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        self._scan()
        return seeded_train_loader(_FileDataset(self.splits["train"], self.image_size), self.batch_size,
                                   trainer=self.trainer, num_workers=self.num_workers)  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        self._scan()
        return self._loader(self.splits["val"] or self.splits["test"])

    def test_dataloader(self) -> list[DataLoader]:
        self.setup("test")
        return [self._loader(self.splits["test"])] + [self._loader(self.cells[key]) for key in self.grid_index[1:]]
