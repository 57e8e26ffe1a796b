"""REOBench probe module (reobench.md §2, §3): training, the corruption-grid test, augmentation, freezing, errors."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from datamodules.corruption_grid import CorruptionGridDataModule
from datamodules.eo_scenes import ProceduralEOScenesDataModule
from modules.reobench import FrozenEncoderProbeModule, flip_rotate


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1, **kw)  # fmt: skip


def test_fit_then_test_over_the_grid(tmp_path):
    pl.seed_everything(0)
    base = ProceduralEOScenesDataModule(size=16, train_per_class=8, val_per_class=2, test_per_class=4, batch_size=16)
    model = FrozenEncoderProbeModule(head_hidden=16)
    _trainer(max_epochs=2).fit(model, datamodule=base)
    grid = CorruptionGridDataModule(base, corruptions=("gaussian_noise", "rotate"), severities=(1, 5), cache_dir=str(tmp_path))
    trainer = _trainer()
    trainer.test(model, datamodule=grid)
    assert list(model.test_results) == ["clean", "gaussian_noise/s1", "gaussian_noise/s5", "rotate/s1", "rotate/s5"]
    assert all(0.0 <= v <= 1.0 for v in model.test_results.values())
    assert "test/acc/rotate/s5" in trainer.callback_metrics
    x, y = grid.test_dataloader()[0].dataset.tensors
    model.eval()
    with torch.no_grad():
        direct = (model(x).argmax(-1) == y).float().mean().item()
    assert model.test_results["clean"] == pytest.approx(direct)


def test_frozen_encoder_trains_the_head_only():
    pl.seed_everything(0)
    model = FrozenEncoderProbeModule(freeze=True, head="linear")
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    _trainer(max_steps=2).fit(model, datamodule=ProceduralEOScenesDataModule(**ProceduralEOScenesDataModule.unit_test_params()))
    assert all(torch.equal(enc[k], v) for k, v in model.encoder.state_dict().items())  # BN statistics too
    assert any(not torch.equal(head[k], v) for k, v in model.head.state_dict().items())


def test_flip_rotate_is_seeded_and_keeps_shape():
    x = torch.rand(4, 3, 16, 16)
    a = flip_rotate(x, torch.Generator().manual_seed(1))
    b = flip_rotate(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)


def test_bad_inputs():
    with pytest.raises(ValueError, match="encoder"):
        FrozenEncoderProbeModule(encoder="resnet")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        FrozenEncoderProbeModule()(torch.rand(2, 1, 16, 16))


def test_sweep_callback_summarises_logs_and_writes_csv(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks.robustness import CorruptionSweepCallback

    pl.seed_everything(0)
    base = ProceduralEOScenesDataModule(size=16, train_per_class=6, val_per_class=2, test_per_class=3, batch_size=16)
    model = FrozenEncoderProbeModule(head_hidden=16)
    _trainer(max_epochs=1).fit(model, datamodule=base)
    grid = CorruptionGridDataModule(base, corruptions=("gaussian_blur", "translate"), severities=(1, 3, 5),
                                    cache_dir=str(tmp_path / "cache"))  # fmt: skip
    cb = CorruptionSweepCallback()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = pl.Trainer(logger=logger, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)  # fmt: skip
    trainer.test(model, datamodule=grid)
    r = model.test_results
    blur = cb.summary["gaussian_blur"]
    mean = (r["gaussian_blur/s1"] + r["gaussian_blur/s3"] + r["gaussian_blur/s5"]) / 3
    assert blur["mean"] == pytest.approx(mean) and blur["abs_drop"] == pytest.approx(r["clean"] - mean)
    assert cb.summary["family/geometric"]["rel_drop"] == pytest.approx(cb.summary["translate"]["rel_drop"])
    rows = (tmp_path / "tb" / "version_0" / "robustness.csv").read_text().splitlines()
    assert rows[0].startswith("corruption,clean,s1,s3,s5,mean") and len(rows) == 3
    ea = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    assert "robust/heatmap" in ea.Tags()["images"] and "robust/rel_drop/gaussian_blur" in ea.Tags()["scalars"]
