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


# ---------------------------------------------------------------------------------------------- augmentation, scheduler
def test_random_resized_crop_is_seeded_in_range_and_identity_at_full_scale():
    from modules.reobench import augment_batch, random_resized_crop

    x = torch.rand(4, 3, 16, 16)
    a = random_resized_crop(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_resized_crop(x, torch.Generator().manual_seed(3)))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)
    same = random_resized_crop(x, torch.Generator().manual_seed(3), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5)  # a full-image box samples the pixel centres
    b = augment_batch(x, "rrc_flip_rotate", torch.Generator().manual_seed(0))
    assert b.shape == x.shape and torch.equal(augment_batch(x, "none", torch.Generator()), x)


def test_paper_protocol_scheduler_and_augmentation_train():
    from functools import partial

    pl.seed_everything(0)
    model = FrozenEncoderProbeModule(head_hidden=16, augment="rrc_flip_rotate",
                                     scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, T_0=5))  # fmt: skip
    conf = model.configure_optimizers()
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.CosineAnnealingWarmRestarts)
    assert conf["lr_scheduler"]["interval"] == "epoch"
    _trainer(max_steps=2).fit(model, datamodule=ProceduralEOScenesDataModule(**ProceduralEOScenesDataModule.unit_test_params()))


# ---------------------------------------------------------------------------------------------- encoders by name
def _tiny_clip_vision(path, with_processor: bool = True) -> str:
    import json

    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8)  # fmt: skip
    CLIPVisionModel(cfg).save_pretrained(path)
    if with_processor:
        (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}))
    return f"hf:{path}"


def test_hf_clip_vision_encoder_frozen_trains_the_head_only(tmp_path):
    pl.seed_everything(0)
    model = FrozenEncoderProbeModule(encoder=_tiny_clip_vision(tmp_path / "clip"), freeze=True, head_hidden=16)
    assert model.input_size == (32, 32) and model.norm_stats == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    assert model.head[0].in_features == 32
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    # the 16 px scenes are resized to the encoder's 32 px
    _trainer(max_steps=2).fit(model, datamodule=ProceduralEOScenesDataModule(**ProceduralEOScenesDataModule.unit_test_params()))
    assert all(torch.equal(enc[k], v) for k, v in model.encoder.state_dict().items())
    assert all(not torch.equal(head[k], v) for k, v in model.head.state_dict().items())
    explicit = FrozenEncoderProbeModule(encoder=f"hf:{tmp_path / 'clip'}", normalize="imagenet", head="linear")
    assert explicit.norm_stats[0] == (0.485, 0.456, 0.406)  # an explicit normalize wins over the file
    # features are CLIP's pooled (post-layernorm CLS) output
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.encoder.model(pixel_values=(x - model.mean) / model.std).pooler_output
        assert torch.allclose(model.encoder((x - model.mean) / model.std), ref)


def test_hf_encoders_vit_clip_resnet(tmp_path):
    from transformers import CLIPConfig, CLIPModel, ResNetConfig, ResNetModel, ViTConfig, ViTModel

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    ViTModel(ViTConfig(**small)).save_pretrained(tmp_path / "vit")
    CLIPModel(CLIPConfig(vision_config=small, text_config={**{k: small[k] for k in ("hidden_size", "intermediate_size",
              "num_hidden_layers", "num_attention_heads")}, "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1,
              "pad_token_id": 1}, projection_dim=16)).save_pretrained(tmp_path / "clip")  # fmt: skip
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1])).save_pretrained(tmp_path / "resnet")
    x = torch.rand(2, 3, 32, 32)

    vit = FrozenEncoderProbeModule(encoder=f"hf:{tmp_path / 'vit'}", normalize="clip", head="linear").eval()
    assert vit.encoder.model.pooler is None and vit.norm_stats[0][0] == pytest.approx(0.48145466)
    with torch.no_grad():
        cls = vit.encoder.model(pixel_values=x).last_hidden_state[:, 0]
        assert torch.allclose(vit.encoder(x), cls)
    clip = FrozenEncoderProbeModule(encoder=f"hf:{tmp_path / 'clip'}", head="linear")
    assert type(clip.encoder.model).__name__.startswith("CLIPVision") and clip.input_size == (32, 32)
    assert clip.norm_stats is None  # no preprocessor_config.json and normalize="none"
    resnet = FrozenEncoderProbeModule(encoder=f"hf:{tmp_path / 'resnet'}", head="linear")
    assert resnet.input_size is None and resnet.head.in_features == 12
    for m in (vit, clip, resnet):
        assert m.eval()(torch.rand(2, 3, 24, 24)).shape == (2, 6)


def test_hf_encoder_checkpoint_round_trip(tmp_path):
    model = FrozenEncoderProbeModule(encoder=_tiny_clip_vision(tmp_path / "clip", with_processor=False), freeze=True,
                                     normalize="imagenet", head="linear")  # fmt: skip
    trainer = _trainer(max_steps=1)
    trainer.fit(model, datamodule=ProceduralEOScenesDataModule(**ProceduralEOScenesDataModule.unit_test_params()))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = FrozenEncoderProbeModule.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    assert loaded.norm_stats == model.norm_stats
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("spec,package", [("timm:resnet18", "timm"), ("timm:vit_large_patch16_224:satmae.pth", "timm"),
                                          ("open_clip:ViT-B-32:openai", "open_clip")])
def test_timm_and_open_clip_fail_with_one_clear_error(spec, package, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, package, None)  # an import that fails, as it does without torchvision
    with pytest.raises(ImportError, match=r"pip install .*torchvision.*CPU-only torch 2\.13"):
        FrozenEncoderProbeModule(encoder=spec)


def test_checkpoint_file_loads_loosely(tmp_path):
    from modules.reobench import TinyCNN, _load_checkpoint_loosely

    src, dst = TinyCNN(), TinyCNN()
    with torch.no_grad():
        src.features[0].weight.normal_()
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith("features.13")}
    torch.save({"model": {**state, "decoder.weight": torch.zeros(3)}}, tmp_path / "mae.pth")  # MAE-style extras
    with pytest.warns(UserWarning, match="not loaded"):
        _load_checkpoint_loosely(dst, str(tmp_path / "mae.pth"))
    assert torch.equal(dst.features[0].weight, src.features[0].weight)
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="no tensor matches"):
        _load_checkpoint_loosely(dst, str(tmp_path / "bad.pth"))


def test_encoder_spec_errors():
    for spec in ("resnet", "hf:", "timm:", "open_clip:ViT-B-32", "open_clip:"):
        with pytest.raises(ValueError, match="encoder must be one of"):
            FrozenEncoderProbeModule(encoder=spec)
    with pytest.raises(ValueError, match="normalize"):
        FrozenEncoderProbeModule(normalize="openai")


# ---------------------------------------------------------------------------------------------- segmentation
def test_seg_net_shapes_and_size():
    from modules.reobench import TinySegNet

    net = TinySegNet(6)
    assert 80_000 < sum(p.numel() for p in net.parameters()) < 120_000  # ≈ 100 k (reobench.md §7 arm S)
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 6, 64, 64)
    assert net(torch.rand(1, 3, 30, 30)).shape == (1, 6, 30, 30)  # odd intermediate sizes


def test_segmentation_fit_then_test_over_the_grid_with_tensorboard(tmp_path):
    import numpy as np
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks.robustness import CorruptionSweepCallback
    from modules.reobench import SceneSegmentationModule
    from trainer.metrics.robustness import mean_iou

    pl.seed_everything(0)
    base = ProceduralEOScenesDataModule(task="segmentation", size=16, train_per_class=4, val_per_class=1,
                                        test_per_class=1, batch_size=8)  # fmt: skip
    model = SceneSegmentationModule(widths=(8, 16), grid_images=2)
    fit = _trainer(max_epochs=2)
    fit.fit(model, datamodule=base)
    assert 0.0 <= float(fit.callback_metrics["val/miou"]) <= 1.0
    grid = CorruptionGridDataModule(base, corruptions=("gaussian_noise", "rotate"), severities=(1, 2, 5),
                                    cache_dir=str(tmp_path / "cache"))  # fmt: skip
    cb = CorruptionSweepCallback(metric="miou")
    trainer = pl.Trainer(logger=TensorBoardLogger(str(tmp_path), name="tb"), callbacks=[cb], enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
    trainer.test(model, datamodule=grid)
    assert list(model.test_results)[:3] == ["clean", "gaussian_noise/s1", "gaussian_noise/s2"]
    assert len(model.test_results) == 7 and "test/miou/rotate/s5" in trainer.callback_metrics
    assert "gaussian_noise" in cb.summary
    x, y = grid.test_dataloader()[0].dataset.tensors
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert model.test_results["clean"] == pytest.approx(mean_iou(pred.numpy(), y.numpy(), 6), abs=1e-6)
    # the mask grid: clean and the middle severity (2 of 1, 2, 5) of each corruption
    assert model._shown_loaders() == [0, 2, 5]
    ea = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    ea.Reload()
    assert "test/seg_grid" in ea.Tags()["images"]
    assert np.isfinite(list(model.test_results.values())).all()


def test_segmentation_learns_the_mosaics():
    from modules.reobench import SceneSegmentationModule

    pl.seed_everything(0)
    dm = ProceduralEOScenesDataModule(task="segmentation", size=16, train_per_class=16, val_per_class=2,
                                      test_per_class=1, batch_size=8)  # fmt: skip
    model = SceneSegmentationModule(widths=(8, 16), grid_images=0)
    trainer = _trainer(max_epochs=6, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    # 6 classes: chance mIoU is ≈ 0.1; 72 steps already separate most textures
    assert float(trainer.callback_metrics["val/miou"]) > 0.5


def test_segmentation_labels_and_bad_inputs():
    from modules.reobench import SceneSegmentationModule

    m = SceneSegmentationModule(widths=(8, 16))
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(m._masks(x, torch.tensor([1, 4]))[1], torch.full((8, 8), 4))  # single-class scenes
    with pytest.raises(ValueError, match=r"masks must be \[B, H, W\]"):
        m._masks(x, torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        m(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        SceneSegmentationModule(num_classes=1)
    with pytest.raises(ValueError, match="TinySegNet needs"):
        SceneSegmentationModule(widths=(8,))


def test_average_batchnorm_stats_uses_the_strategy_and_skips_eval_layers():
    from types import SimpleNamespace

    from modules.reobench import TinyCNN, average_batchnorm_stats

    net = TinyCNN()
    net.features[1].eval()  # a frozen (eval-mode) layer keeps its statistics
    before = net.features[1].running_mean.clone()
    calls = []
    fake = SimpleNamespace(world_size=2, reduce=lambda t, reduce_op: calls.append(reduce_op) or torch.full_like(t, 0.5))
    average_batchnorm_stats(net, fake)
    assert calls == ["mean"] and torch.equal(net.features[1].running_mean, before)
    assert torch.all(net.features[5].running_mean == 0.5) and torch.all(net.features[5].running_var == 0.5)
    average_batchnorm_stats(net, SimpleNamespace(world_size=1))  # single process: nothing to do
