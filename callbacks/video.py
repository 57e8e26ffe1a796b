"""Evaluation-episode videos for every RL module (rl_core.md §9 "Videos", hasard.md §8 "Images").

``EpisodeVideoCallback`` is the thin adapter around :func:`trainer.heatmap.record_episode`: on rank 0,
every ``every_n_epochs`` train epochs (and at the end of fitting), it plays one evaluation episode in a
fresh env from ``trainer.datamodule.make_eval_env(seed)`` with the live policy (greedy: the argmax of
every head's logits; or sampled through ``act`` with a ``torch.Generator`` seeded from ``(seed, epoch)``),
keeps up to ``max_frames`` ``render()`` frames upscaled ×2 with the running reward and cost printed on
them, and logs them: ``add_video("video/episode", ...)`` when ``moviepy`` is importable, otherwise an
animated GIF ``episode_<global_step>.gif`` written next to the event files (``trainer.log_dir``) plus a
strip of 8 frames as the image ``video/strip``. The scalars ``video/return``, ``video/cost`` and
``video/length`` go to every logger. It talks to the module through
:class:`trainer.protocols.ActorCritic` (``act``), and for greedy actions through the logits of its
policy network (``module.net(obs)``, else ``module(obs)``: ``(list of per-head logits, value,
cost_value)``).

Hooks: ``setup("fit")`` checks the datamodule and the module; ``on_train_epoch_end`` and ``on_train_end``
record. Order does not matter. Under DDP every rank reads ``trainer.log_dir`` (a broadcast) at the same
epochs; only rank 0 plays the episode. The module is put in eval mode under ``torch.no_grad`` and
restored; the env is closed.

State (checkpointed): ``videos_written``, the number of videos (or GIFs) recorded so far (counted on
every rank, so it is the same everywhere).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.heatmap import frame_strip, record_episode, write_gif
from trainer.protocols import ActorCritic
from trainer.rollout import env_actions

__all__ = ["EpisodeVideoCallback"]


def moviepy_available() -> bool:
    """Whether TensorBoard's ``add_video`` can encode (it needs ``moviepy``)."""
    return importlib.util.find_spec("moviepy") is not None


def eval_generator(seed: int, epoch: int) -> torch.Generator:
    """The action-sampling generator of the video recorded after ``epoch`` (no global RNG is touched)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))


class EpisodeVideoCallback(StatefulCallback):
    """Records one evaluation episode as a video (or a GIF and a frame strip) every few epochs (rl_core.md §9).

    The datamodule must offer ``make_eval_env(seed)``: a fresh single env, already reset, whose ``render()``
    returns an RGB HWC uint8 frame; the module must follow :class:`trainer.protocols.ActorCritic`.

    Args:
        every_n_epochs: train epochs (rollouts) between two videos; default 50.
        max_frames: most frames kept, the reset frame included (the episode is cut there); default 300.
        fps: frames per second of the video / GIF; default 15.
        greedy: act with the argmax of each head's logits (True, default) or sample from the policy.
        seed: reset seed of the evaluation env and base seed of sampled actions; default 0.
        at_fit_end: also record when fitting ends (unless a video was just recorded at that step); default True.
        name: identity of this callback in checkpoints; default "video".
    """

    _state_attrs = ("videos_written",)

    def __init__(
        self,
        every_n_epochs: int = 50,
        max_frames: int = 300,
        fps: int = 15,
        greedy: bool = True,
        seed: int = 0,
        at_fit_end: bool = True,
        name: str = "video",
    ) -> None:
        super().__init__(name)
        for arg, value in (("every_n_epochs", every_n_epochs), ("max_frames", max_frames), ("fps", fps)):
            if int(value) < 1:
                raise ValueError(f"EpisodeVideoCallback: {arg} must be >= 1, got {value}")
        self.every_n_epochs = every_n_epochs
        self.max_frames = max_frames
        self.fps = fps
        self.greedy = greedy
        self.seed = seed
        self.at_fit_end = at_fit_end
        self.videos_written = 0
        self.last_path: str | None = None  # the last GIF written (this process; not checkpointed)
        self.last_episode: dict[str, float] = {}
        self._last_step: int | None = None

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"every_n_epochs": 1, "max_frames": 10, "fps": 5}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if dm is None or not callable(getattr(dm, "make_eval_env", None)):
            raise ValueError(
                f"EpisodeVideoCallback needs a datamodule with make_eval_env(seed) (a RolloutDataModule such as "
                f"HasardDataModule or LavaGridDataModule), got {type(dm).__name__ if dm is not None else None}"
            )
        if not isinstance(pl_module, ActorCritic):
            raise TypeError(f"EpisodeVideoCallback needs an ActorCritic module (act, values), got "
                            f"{type(pl_module).__name__}")  # fmt: skip

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs finished, this one included
        if epoch % int(self.every_n_epochs) == 0:
            self._record(trainer, pl_module, epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_end and trainer.global_step != self._last_step:
            self._record(trainer, pl_module, trainer.current_epoch)

    # ------------------------------------------------------------------ recording
    def _select_action(self, pl_module: LightningModule, env: Any, generator: torch.Generator | None) -> Any:
        space = getattr(env, "action_space", None)

        def select(obs: Any, t: int) -> Any:
            x = torch.as_tensor(np.asarray(obs)).unsqueeze(0).to(pl_module.device)
            if generator is None and hasattr(pl_module, "greedy_action"):
                action = pl_module.greedy_action(x)  # the initial policy state (GRU zeros, z = 1) at every step
            elif generator is None:
                logits = getattr(pl_module, "net", pl_module)(x)[0]
                action = torch.stack([lg.argmax(dim=-1) for lg in logits], dim=-1)
            else:
                action = pl_module.act(x, generator)["action"]
            a = env_actions(space, action.detach().cpu().numpy())[0]  # Discrete: a scalar; Tuple: (heads, box)
            return a if isinstance(a, tuple) or np.ndim(a) else int(a)

        return select

    def play(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> dict[str, Any]:
        """One evaluation episode with the current policy (module in eval mode, no grad, restored after)."""
        env = trainer.datamodule.make_eval_env(int(self.seed))
        was_training = pl_module.training
        pl_module.eval()
        try:
            generator = None if self.greedy else eval_generator(self.seed, epoch)
            with torch.no_grad():
                return record_episode(env, self._select_action(pl_module, env, generator), int(self.max_frames),
                                      seed=int(self.seed))  # fmt: skip
        finally:
            pl_module.train(was_training)
            env.close()

    def _record(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        log_dir = trainer.log_dir  # a collective call under DDP: every rank asks, before branching on rank 0
        self._last_step = trainer.global_step
        self.videos_written += 1  # counted on every rank, so the state agrees across ranks
        if not trainer.is_global_zero:
            return
        episode = self.play(trainer, pl_module, epoch)
        frames, step = episode["frames"], trainer.global_step
        experiments = [lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_image")]
        if moviepy_available() and experiments:
            video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).unsqueeze(0).contiguous()  # [1, T, C, H, W]
            for exp in experiments:
                if hasattr(exp, "add_video"):
                    exp.add_video("video/episode", video, step, fps=int(self.fps))
        else:
            out_dir = log_dir or trainer.default_root_dir
            self.last_path = write_gif(frames, os.path.join(out_dir, f"episode_{step}.gif"), int(self.fps))
            strip = frame_strip(frames, 8)
            for exp in experiments:
                exp.add_image("video/strip", strip, step, dataformats="HWC")
        self.last_episode = {"video/return": float(episode["return"]), "video/cost": float(episode["cost"]),
                             "video/length": float(episode["length"])}  # fmt: skip
        for logger in trainer.loggers:
            logger.log_metrics(dict(self.last_episode), step=step)
