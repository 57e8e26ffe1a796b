"""EOImageFolderDataModule (reobench.md §2, §4.6, §5): class folders, alias corruption folders, grid order, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.eo_folders import (
    CORRUPTION_ALIASES, EOImageFolderDataModule, canonical_corruption, corruption_folders, load_image,
)  # fmt: skip
from trainer.corruptions import CORRUPTIONS

CLASSES = ("forest", "airport", "beach")  # sorted: airport 0, beach 1, forest 2


def _write(folder: Path, name: str, value: int, size: tuple[int, int] = (20, 14)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(folder / name)


def _tree(tmp_path: Path, n: int = 5, flat: bool = False, cells=(("gaussian_noise_new", 1), ("rotate_new", 2))) -> Path:
    for cls in CLASSES:
        for i in range(n):
            _write(tmp_path / "clean" / cls, f"{cls}_{i}.jpg", 10 * i)
            for folder, s in cells:
                sub = tmp_path / "corrupted" / folder / f"severity_{s}"
                _write(sub if flat else sub / cls, f"{cls}_{i}.png", 200 + s)
    return tmp_path


def test_aliases_map_to_the_canonical_names():
    assert set(CORRUPTION_ALIASES.values()) <= set(CORRUPTIONS)
    assert canonical_corruption("gaps") == "data_gaps" and canonical_corruption("translate_image_new") == "translate"
    assert canonical_corruption("clouds") == "clouds"
    with pytest.raises(ValueError, match="unknown corruption folder 'fog'.*known names: gaussian_noise.*aliases: .*gaps→data_gaps"):
        canonical_corruption("fog")


def test_corruption_folders_rejects_unknown_and_duplicate_names(tmp_path):
    (tmp_path / "gaps").mkdir()
    (tmp_path / "haze_update_new").mkdir()
    assert set(corruption_folders(tmp_path)) == {"data_gaps", "haze"}
    (tmp_path / "data_gaps").mkdir()
    with pytest.raises(ValueError, match="two folders map to corruption 'data_gaps'"):
        corruption_folders(tmp_path)
    (tmp_path / "data_gaps").rmdir()
    (tmp_path / "snow").mkdir()
    with pytest.raises(ValueError, match="unknown corruption folder 'snow'"):
        corruption_folders(tmp_path)
    assert set(corruption_folders(tmp_path, ignore=("snow",))) == {"data_gaps", "haze"}


def test_load_image_resizes_the_shorter_side_and_centre_crops(tmp_path):
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 255  # a white centre band that survives the centre crop
    Image.fromarray(arr).save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png", 10)
    assert x.shape == (3, 10, 10) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))


@pytest.mark.parametrize("flat", [False, True])
def test_grid_order_labels_and_cells(tmp_path, flat):
    root = _tree(tmp_path, flat=flat)
    dm = EOImageFolderDataModule(str(root / "clean"), str(root / "corrupted"), image_size=8,
                                 corruptions=("gaussian_noise", "rotate"), severities=(1, 2), test_fraction=0.4)  # fmt: skip
    with pytest.raises(ValueError, match="missing corrupted folder .*gaussian_noise_new/severity_2"):
        dm.test_dataloader()  # gaussian noise has severity 1 only
    dm = EOImageFolderDataModule(str(root / "clean"), str(root / "corrupted"), image_size=8,
                                 corruptions=("gaussian_noise",), severities=(1,), test_fraction=0.4)  # fmt: skip
    assert dm.class_names == () and dm.num_classes == 3 and dm.class_names == ("airport", "beach", "forest")
    assert dm.grid_index == [("clean", 0), ("gaussian_noise", 1)]
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes["test"] == 6 and sizes["train"] + sizes["val"] == 9  # 2 of 5 per class in the test split
    clean, noisy = dm.test_dataloader()
    (xc, yc), (xn, yn) = next(iter(clean)), next(iter(noisy))
    assert torch.equal(yc, yn) and yc.tolist() == sorted(yc.tolist()) and set(yc.tolist()) == {0, 1, 2}
    assert xc.shape == (6, 3, 8, 8) and torch.allclose(xn, torch.full_like(xn, 201 / 255), atol=1e-6)
    # same split for the same seed, another for another seed
    again = EOImageFolderDataModule(str(root / "clean"), image_size=8, test_fraction=0.4)
    again.setup("fit")
    assert again.splits == dm.splits and again.grid_index == [("clean", 0)]
    other = EOImageFolderDataModule(str(root / "clean"), image_size=8, test_fraction=0.4, split_seed=1)
    other.setup("fit")
    assert other.splits["test"] != dm.splits["test"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 8, 8)


def test_test_files_and_test_root(tmp_path):
    root = _tree(tmp_path, n=3)
    listing = tmp_path / "test.txt"
    listing.write_text("airport/airport_0.jpg\nbeach/beach_2.jpg\n")
    dm = EOImageFolderDataModule(str(root / "clean"), str(root / "corrupted"), image_size=8, test_files=str(listing),
                                 corruptions=("rotate",), severities=(2,), val_fraction=0.0)  # fmt: skip
    dm.setup("test")
    assert [(p.name, y) for p, y in dm.splits["test"]] == [("airport_0.jpg", 0), ("beach_2.jpg", 1)]
    assert [(p.name, y) for p, y in dm.cells[("rotate", 2)]] == [("airport_0.png", 0), ("beach_2.png", 1)]
    assert len(dm.splits["train"]) == 7 and not dm.splits["val"]
    listing.write_text("airport/nope.jpg\n")
    with pytest.raises(ValueError, match="test_files names 1 missing images"):
        EOImageFolderDataModule(str(root / "clean"), test_files=str(listing)).setup("fit")
    for cls in CLASSES:
        _write(tmp_path / "test_clean" / cls, f"{cls}_0.jpg", 5)
    dm = EOImageFolderDataModule(str(root / "clean"), image_size=8, test_root=str(tmp_path / "test_clean"))
    dm.setup("fit")
    assert len(dm.splits["test"]) == 3 and len(dm.splits["train"]) + len(dm.splits["val"]) == 9


def test_missing_paths_are_named(tmp_path):
    root = _tree(tmp_path, n=3)
    with pytest.raises(ValueError, match=f"image folder {tmp_path / 'nope'} does not exist"):
        EOImageFolderDataModule(str(tmp_path / "nope")).setup("fit")
    dm = EOImageFolderDataModule(str(root / "clean"), str(root / "corrupted"), image_size=8, corruptions=("clouds",),
                                 severities=(1,))  # fmt: skip
    with pytest.raises(ValueError, match=r"has no folder for \['clouds'\]"):
        dm.setup("test")
    (root / "corrupted" / "rotate_new" / "severity_2" / "beach" / "beach_1.png").unlink()
    dm = EOImageFolderDataModule(str(root / "clean"), str(root / "corrupted"), image_size=8, corruptions=("rotate",),
                                 severities=(2,), test_fraction=0.99)  # fmt: skip
    with pytest.raises(ValueError, match="1 of 6 test images have no corrupted copy .*beach/beach_1"):
        dm.setup("test")
    with pytest.raises(ValueError, match="unknown corruption folder 'fog'"):
        EOImageFolderDataModule(str(root / "clean"), corruptions=("fog",))


def test_unit_test_params_build_a_working_tree():
    dm = EOImageFolderDataModule(**EOImageFolderDataModule.unit_test_params())
    loaders = dm.test_dataloader()
    assert len(loaders) == len(dm.grid_index) == 3 and dm.num_classes == 2
    assert all(len(dl.dataset) == 2 for dl in loaders)


def test_probe_and_sweep_callback_run_unchanged_over_the_folders(tmp_path):
    from callbacks.robustness import CorruptionSweepCallback
    from modules.reobench import FrozenEncoderProbeModule
    from tests.toy import quiet_trainer

    root = _tree(tmp_path, n=3)
    dm = EOImageFolderDataModule(str(root / "clean"), str(root / "corrupted"), image_size=16,
                                 corruptions=("gaussian_noise", "rotate"), severities=(1,), test_fraction=0.34)  # fmt: skip
    with pytest.raises(ValueError, match="rotate_new/severity_1"):
        dm.setup("test")  # rotate has severity 2 only
    dm = EOImageFolderDataModule(str(root / "clean"), str(root / "corrupted"), image_size=16,
                                 corruptions=("gaussian_noise",), severities=(1,), test_fraction=0.34)  # fmt: skip
    model = FrozenEncoderProbeModule(num_classes=dm.num_classes, head_hidden=8)
    sweep = CorruptionSweepCallback()
    quiet_trainer([sweep], default_root_dir=str(tmp_path)).test(model, datamodule=dm)
    assert set(model.test_results) == {"clean", "gaussian_noise/s1"}
    assert set(sweep.table) == {"gaussian_noise"}


def test_build_directory_once(tmp_path):
    from datamodules.eo_folders import build_directory_once

    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "a.txt").write_text("x")

    target = tmp_path / "tree"
    target.mkdir()
    (target / "stale.txt").write_text("half-written")  # no .complete marker: replaced
    assert build_directory_once(target, build) == target and (target / "a.txt").is_file()
    assert not (target / "stale.txt").exists() and not list(tmp_path.glob("*.tmp"))
    build_directory_once(target, build)
    assert len(calls) == 1  # complete: never rebuilt
