"""Navigation heatmaps and episode videos (trainer/heatmap.py, callbacks/heatmap.py, callbacks/video.py).

hasard.md §8 ("Images") and rl_core.md §9 ("Videos"). The pure functions are checked with exact values;
the callbacks with hand-driven hooks on a stand-in trainer and with a short real fit of ``SafePPO`` on
the lava grid (TensorBoard event file and GIF read back). A 2-rank CPU DDP run is marked ``slow`` and
``ddp``.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import callbacks as callbacks_pkg
from callbacks import EpisodeVideoCallback, NavigationHeatmapCallback
from callbacks import video as video_mod
from datamodules.safety_grid import LavaGridDataModule, LavaGridEnv
from modules.hasard import SafePPO
from tests.toy import ToyDataModule, quiet_trainer
from trainer.heatmap import (
    annotate_frame,
    episodes_histogram,
    frame_strip,
    heatmap_image,
    heatmap_shape,
    position_histogram,
    record_episode,
    write_gif,
)

ROOT = Path(__file__).resolve().parent.parent
BOX7 = (0.0, 0.0, 7.0, 7.0)
RIGHT = 3  # LavaGridEnv action: (d_row, d_col) = (0, 1)


# ----------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------


def test_binning_moved_but_still_importable_from_vizdoom():
    from datamodules import vizdoom

    assert vizdoom.position_histogram is position_histogram
    assert vizdoom.heatmap_shape is heatmap_shape
    assert {"position_histogram", "heatmap_shape"} <= set(vizdoom.__all__)


def test_position_histogram_sums_over_episodes():
    a = np.array([[0.0, 3.0], [1.0, 3.0], [1.5, 3.9]], np.float32)  # cells (row 3, col 0), (3, 1), (3, 1)
    b = np.array([[6.9, 0.1], [7.0, 7.0], [-5.0, 3.0]], np.float32)  # (0, 6), (6, 6) upper limit, (3, 0) clipped
    episodes = [{"return": 1.0, "positions": a}, {"return": 0.0}, {"return": 2.0, "positions": b}]
    total = episodes_histogram(episodes, BOX7, 7)
    assert total.shape == (7, 7) and total.dtype == np.int64
    np.testing.assert_array_equal(total, position_histogram(a, BOX7, 7) + position_histogram(b, BOX7, 7))
    expected = np.zeros((7, 7), np.int64)
    expected[3, 0], expected[3, 1], expected[0, 6], expected[6, 6] = 2, 2, 1, 1
    np.testing.assert_array_equal(total, expected)
    assert total.sum() == len(a) + len(b)
    np.testing.assert_array_equal(episodes_histogram([], BOX7, 7), np.zeros((7, 7), np.int64))
    pp = (0.0, 0.0, 2176.0, 448.0)  # HASARD PrecipicePlunge box: 15 x 75
    assert episodes_histogram([{"positions": np.zeros((4, 2))}], pp, 75).shape == (15, 75)


def test_heatmap_image_is_rgb_and_follows_the_counts():
    counts = np.zeros((7, 7), np.int64)
    blank = heatmap_image(counts, BOX7, title="empty")
    counts[3, 1] = 40
    hot = heatmap_image(counts, BOX7, title="empty")
    for img in (blank, hot):
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert 150 <= img.shape[0] <= 800 and 150 <= img.shape[1] <= 800
    assert blank.shape == hot.shape
    assert np.abs(blank.astype(int) - hot.astype(int)).sum() > 0
    assert hot.std() > 0  # not a flat colour
    wide = heatmap_image(np.ones((15, 75)), (0.0, 0.0, 2176.0, 448.0))
    assert wide.shape[1] > wide.shape[0]  # the wide PP box draws wide
    with pytest.raises(ValueError):
        heatmap_image(np.ones((2, 2)), (0.0, 0.0, 0.0, 1.0))


def test_annotate_frame_upscales_a_copy_and_prints_text():
    frame = np.full((12, 40, 3), 200, np.uint8)
    original = frame.copy()
    out = annotate_frame(frame, "t 3  R 0.50  C 1.00")
    assert out.shape == (24, 80, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(frame, original)
    plain = annotate_frame(frame, "")
    np.testing.assert_array_equal(plain, np.full((24, 80, 3), 200, np.uint8))
    assert (out != plain).any()
    assert annotate_frame(np.zeros((5, 6), np.uint8), "x").shape == (10, 12, 3)  # grayscale frames work too


def test_frame_strip_picks_evenly_spaced_frames():
    frames = [np.full((4, 5, 3), i, np.uint8) for i in range(22)]
    strip = frame_strip(frames, n=8)
    assert strip.shape == (4, 40, 3) and strip.dtype == np.uint8
    picked = [int(strip[0, 5 * j, 0]) for j in range(8)]
    assert picked == [0, 3, 6, 9, 12, 15, 18, 21]
    assert frame_strip(frames[:3], n=8).shape == (4, 15, 3)  # fewer frames than n: all of them
    with pytest.raises(ValueError):
        frame_strip([], n=8)


def test_write_gif_round_trip(tmp_path):
    frames = [np.full((8, 10, 3), 20 * i, np.uint8) for i in range(5)]
    path = write_gif(frames, tmp_path / "sub" / "a.gif", fps=10)
    with Image.open(path) as im:
        assert im.n_frames == 5
        assert im.size == (10, 8)
        assert im.info.get("loop") == 0
        assert im.info.get("duration") == 100


def test_record_episode_on_the_lava_grid():
    env = LavaGridEnv()
    ep = record_episode(env, lambda obs, t: RIGHT, max_frames=50, seed=0)
    # straight right from (3, 0) to the goal (3, 6): 6 steps, 3 of them end on lava
    assert ep["done"] and ep["length"] == 6 and len(ep["frames"]) == 7
    assert ep["cost"] == 3.0 and ep["return"] == pytest.approx(1.0 - 6 * 0.01)
    assert ep["frames"][0].shape == (224, 224, 3) and ep["frames"][0].dtype == np.uint8
    cut = record_episode(env, lambda obs, t: RIGHT, max_frames=4, seed=0)
    assert not cut["done"] and cut["length"] == 3 and len(cut["frames"]) == 4 and cut["cost"] == 2.0
    raw = record_episode(env, lambda obs, t: RIGHT, max_frames=2, seed=0, annotate=False)
    assert raw["frames"][0].shape == (112, 112, 3)


# ----------------------------------------------------------------------------------------------
# callbacks on a stand-in trainer
# ----------------------------------------------------------------------------------------------


class _Experiment:
    def __init__(self) -> None:
        self.images: list[tuple[str, np.ndarray, int, str]] = []
        self.videos: list[tuple[str, torch.Tensor, int, int]] = []

    def add_image(self, tag, img, global_step=None, dataformats="CHW"):
        self.images.append((tag, img, global_step, dataformats))

    def add_video(self, tag, vid, global_step=None, fps=4):
        self.videos.append((tag, vid, global_step, fps))


class _Logger:
    def __init__(self) -> None:
        self.experiment = _Experiment()
        self.metrics: list[tuple[dict, int]] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))


def _fake_trainer(dm, tmp_path=None, epoch=0, step=0):
    return SimpleNamespace(datamodule=dm, loggers=[_Logger()], is_global_zero=True, world_size=1, global_step=step,
                           current_epoch=epoch, log_dir=str(tmp_path) if tmp_path else None,
                           default_root_dir=str(tmp_path) if tmp_path else ".")  # fmt: skip


def test_heatmap_callback_accumulates_logs_and_resets():
    dm = SimpleNamespace(heatmap_box=BOX7, heatmap_bins=7, episodes=[])
    trainer = _fake_trainer(dm)
    exp = trainer.loggers[0].experiment
    cb = NavigationHeatmapCallback(every_n_epochs=2)
    cb.setup(trainer, None, "fit")
    ep1 = {"positions": np.array([[0.0, 3.0], [1.0, 3.0]], np.float32)}
    ep2 = {"positions": np.array([[1.0, 3.0]], np.float32)}
    dm.episodes = [ep1]
    cb.on_train_epoch_end(trainer, None)
    assert cb.epochs_seen == 1 and not exp.images
    np.testing.assert_array_equal(cb.counts.numpy(), position_histogram(ep1["positions"], BOX7, 7))
    dm.episodes, trainer.global_step = [ep2, {"return": 1.0}], 7
    cb.on_train_epoch_end(trainer, None)
    assert cb.epochs_seen == 2 and cb.counts is None  # logged, then reset
    assert len(exp.images) == 1
    tag, img, step, fmt = exp.images[0]
    assert (tag, step, fmt) == ("hasard/heatmap", 7, "HWC") and img.dtype == np.uint8 and img.shape[2] == 3
    # two counts in cell (3, 1) and one in (3, 0): the same picture as heatmap_image draws of that sum
    np.testing.assert_array_equal(img, heatmap_image(episodes_histogram([ep1, ep2], BOX7, 7), BOX7,
                                                     title="visits up to epoch 2 (3 steps)"))  # fmt: skip
    dm.episodes = [ep2]
    cb.on_train_epoch_end(trainer, None)  # epoch 3: accumulated, not yet logged
    assert cb.counts.sum() == 1 and len(exp.images) == 1
    cb.on_train_end(trainer, None)  # fit end logs the remainder
    assert cb.counts is None and len(exp.images) == 2
    cb.on_train_end(trainer, None)  # nothing left: no image
    assert len(exp.images) == 2
    dm.episodes = []
    cb.on_train_epoch_end(trainer, None)  # epoch 4 ends a period without finished episodes: no empty image
    assert len(exp.images) == 2 and cb.counts is None and cb.epochs_seen == 4


def test_heatmap_callback_state_round_trip():
    cb = NavigationHeatmapCallback(every_n_epochs=3)
    cb.counts = torch.arange(49, dtype=torch.int64).reshape(7, 7)
    cb.epochs_seen = 4
    state = cb.state_dict()
    assert set(state) == {"counts", "epochs_seen"}
    fresh = NavigationHeatmapCallback(every_n_epochs=5)  # other hyperparameters: same identity
    assert fresh.state_key == cb.state_key
    fresh.load_state_dict(copy.deepcopy(state))
    assert torch.equal(fresh.counts, cb.counts) and fresh.epochs_seen == 4
    assert fresh.state_key != NavigationHeatmapCallback(name="other").state_key
    with pytest.raises(KeyError):
        fresh.load_state_dict({**state, "unknown": 1})
    with pytest.raises(KeyError):
        fresh.load_state_dict({"counts": None})
    clone = pickle.loads(pickle.dumps(cb))
    assert torch.equal(clone.counts, cb.counts)
    empty = NavigationHeatmapCallback()
    empty.load_state_dict(NavigationHeatmapCallback().state_dict())
    assert empty.counts is None and empty.epochs_seen == 0


def test_callbacks_reject_datamodules_without_what_they_need():
    trainer = _fake_trainer(ToyDataModule())
    with pytest.raises(ValueError, match="heatmap_box"):
        NavigationHeatmapCallback().setup(trainer, None, "fit")
    with pytest.raises(ValueError, match="heatmap_box"):
        NavigationHeatmapCallback().setup(_fake_trainer(None), None, "fit")
    with pytest.raises(ValueError, match="make_eval_env"):
        EpisodeVideoCallback().setup(trainer, SafePPO(**SafePPO.unit_test_params()), "fit")
    NavigationHeatmapCallback().setup(trainer, None, "test")  # other stages are not checked
    with pytest.raises(ValueError):
        NavigationHeatmapCallback(every_n_epochs=0)
    with pytest.raises(ValueError):
        EpisodeVideoCallback(max_frames=0)


def test_callbacks_are_exported_and_have_unit_test_params():
    for cls in (NavigationHeatmapCallback, EpisodeVideoCallback):
        assert cls.__name__ in callbacks_pkg.__all__
        cb = cls(**cls.unit_test_params())
        clone = pickle.loads(pickle.dumps(cb))
        assert clone.state_dict() == cb.state_dict() and clone.state_key == cb.state_key


def _lava_dm() -> LavaGridDataModule:
    return LavaGridDataModule(**LavaGridDataModule.unit_test_params())


def test_video_callback_gif_fallback_and_module_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(video_mod, "moviepy_available", lambda: False)
    module = SafePPO(**SafePPO.unit_test_params())
    module.train()
    trainer = _fake_trainer(_lava_dm(), tmp_path, epoch=1, step=12)
    cb = EpisodeVideoCallback(every_n_epochs=2, max_frames=9, fps=5)
    cb.setup(trainer, module, "fit")
    cb.on_train_epoch_end(trainer, module)  # current_epoch 1 = the 2nd epoch: record
    assert module.training  # restored
    path = tmp_path / "episode_12.gif"
    assert path.is_file() and cb.last_path == str(path) and cb.videos_written == 1
    with Image.open(path) as im:
        assert im.n_frames > 1 and im.size == (224, 224)
    exp, logger = trainer.loggers[0].experiment, trainer.loggers[0]
    assert [(t, s, f) for t, _, s, f in exp.images] == [("video/strip", 12, "HWC")]
    assert exp.images[0][1].shape[0] == 224 and exp.images[0][1].shape[1] == 224 * min(8, 9)
    (metrics, step), = logger.metrics
    assert step == 12 and set(metrics) == {"video/return", "video/cost", "video/length"}
    assert 1 <= metrics["video/length"] <= 8
    cb.on_train_end(trainer, module)  # same step as the last video: not recorded twice
    assert cb.videos_written == 1
    trainer.current_epoch, trainer.global_step = 2, 20
    cb.on_train_epoch_end(trainer, module)  # 3rd epoch: off schedule
    assert cb.videos_written == 1
    module.eval()
    cb.on_train_end(trainer, module)  # fit end at a new step: recorded; eval mode is kept
    assert cb.videos_written == 2 and (tmp_path / "episode_20.gif").is_file() and not module.training
    fresh = EpisodeVideoCallback(name="video")
    fresh.load_state_dict(cb.state_dict())
    assert fresh.videos_written == 2 and fresh.state_key == cb.state_key


def test_video_callback_uses_add_video_when_moviepy_is_there(tmp_path, monkeypatch):
    monkeypatch.setattr(video_mod, "moviepy_available", lambda: True)
    module = SafePPO(**SafePPO.unit_test_params())
    trainer = _fake_trainer(_lava_dm(), tmp_path, epoch=0, step=3)
    cb = EpisodeVideoCallback(every_n_epochs=1, max_frames=6, fps=7)
    cb.on_train_epoch_end(trainer, module)
    exp = trainer.loggers[0].experiment
    (tag, vid, step, fps), = exp.videos
    assert (tag, step, fps) == ("video/episode", 3, 7)
    assert vid.dtype == torch.uint8 and vid.shape[0] == 1 and vid.shape[2:] == (3, 224, 224) and vid.shape[1] > 1
    assert not exp.images and not list(tmp_path.glob("*.gif"))


def test_video_sampled_actions_are_seeded_and_leave_the_global_rng_alone(tmp_path):
    module = SafePPO(**SafePPO.unit_test_params())
    trainer = _fake_trainer(_lava_dm(), tmp_path)
    cb = EpisodeVideoCallback(greedy=False, max_frames=30, seed=3)
    rng = torch.get_rng_state()
    a, b = cb.play(trainer, module, epoch=5), cb.play(trainer, module, epoch=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert len(a["frames"]) == len(b["frames"]) and all(np.array_equal(x, y) for x, y in zip(a["frames"], b["frames"]))
    greedy = EpisodeVideoCallback(greedy=True, max_frames=30).play(trainer, module, epoch=0)
    again = EpisodeVideoCallback(greedy=True, max_frames=30).play(trainer, module, epoch=9)
    assert all(np.array_equal(x, y) for x, y in zip(greedy["frames"], again["frames"]))  # greedy ignores the epoch


def test_video_callback_only_records_on_rank_zero(tmp_path):
    module = SafePPO(**SafePPO.unit_test_params())
    trainer = _fake_trainer(_lava_dm(), tmp_path, epoch=0, step=4)
    trainer.is_global_zero = False
    cb = EpisodeVideoCallback(every_n_epochs=1)
    cb.on_train_epoch_end(trainer, module)
    assert cb.videos_written == 1  # the counter agrees across ranks
    assert not list(tmp_path.glob("*.gif")) and not trainer.loggers[0].metrics


# ----------------------------------------------------------------------------------------------
# a real fit: SafePPO on the lava grid, TensorBoard read back
# ----------------------------------------------------------------------------------------------


def _event_tags(log_dir: str | os.PathLike) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc.Tags()


def test_fit_logs_heatmap_and_gif_to_tensorboard(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    monkeypatch.setattr(video_mod, "moviepy_available", lambda: False)  # the GIF path, even where moviepy exists
    heat = NavigationHeatmapCallback(every_n_epochs=1)
    video = EpisodeVideoCallback(every_n_epochs=1, max_frames=20, fps=5)
    logger = TensorBoardLogger(str(tmp_path))
    trainer = quiet_trainer([heat, video], max_epochs=3, default_root_dir=str(tmp_path), logger=logger)
    # max_steps=10: 16-step rollouts, so episodes finish (and reach the heatmap) within the 3 epochs
    dm = LavaGridDataModule(**{**LavaGridDataModule.unit_test_params(), "max_steps": 10})
    module = SafePPO(**SafePPO.unit_test_params())
    trainer.fit(module, datamodule=dm)

    assert heat.epochs_seen == 3 and heat.counts is None and heat.images_logged == 3
    assert video.videos_written == 3  # one per epoch; the fit end is at the last video's step
    gifs = sorted(Path(logger.log_dir).glob("episode_*.gif"))
    assert len(gifs) == 3 and Path(video.last_path) in gifs  # next to the event files
    with Image.open(video.last_path) as im:
        assert im.n_frames > 1
    tags = _event_tags(logger.log_dir)
    assert {"hasard/heatmap", "video/strip"} <= set(tags["images"])
    assert {"video/return", "video/cost", "video/length"} <= set(tags["scalars"])
    # the callback state survives a checkpoint round trip
    for cb in (heat, video):
        fresh = type(cb)(**type(cb).unit_test_params())
        fresh.load_state_dict(copy.deepcopy(cb.state_dict()))
        assert fresh.state_dict() == cb.state_dict()


# ----------------------------------------------------------------------------------------------
# 2-rank CPU DDP: the collectives line up (reduce of the heatmaps, trainer.log_dir)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_cpu2_heatmap_and_video(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable, "-m", "trainer", "fit",
        "--config", str(ROOT / "yaml" / "hasard" / "smoke.yaml"),
        "--config", str(ROOT / "yaml" / "_base" / "trainer" / "ddp_cpu2.yaml"),
        "--trainer.enable_progress_bar=false", "--trainer.max_epochs=2", "--trainer.max_steps=-1",
        "--data.max_steps=20",
        "--trainer.callbacks+=NavigationHeatmapCallback", "--trainer.callbacks.every_n_epochs=1",
        "--trainer.callbacks+=EpisodeVideoCallback", "--trainer.callbacks.every_n_epochs=1",
        "--trainer.callbacks.max_frames=12",
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gifs = sorted(tmp_path.rglob("episode_*.gif"))
    assert len(gifs) == 2, gifs
    tags = _event_tags(gifs[0].parent)
    assert {"hasard/heatmap", "video/strip"} <= set(tags["images"])
