"""Multi-objective toy MDPs for MOC's sanity checks (moc.md §2, §5, §7.2).

:class:`FishwoodDataModule`: the project's Fishwood MDP (:mod:`trainer.fishwood`; two locations, fish with
probability 0.1 per step at the river, wood with probability 0.9 in the woods, horizon 50, reward vector
(fish, wood)) for an ``mlp`` MOC policy that sees the observation and the preference. A rollout plays one
episode per sampled preference; every rollout starts fresh episodes (all have the same length), so no env state
outlives a rollout and resume is exact. Evaluation plays ``eval_episodes`` seeded episodes per preference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from datamodules.preference_prompts import PreferenceRolloutDataModule, _seed
from trainer.fishwood import FISHWOOD_OBJECTIVES, FishwoodVec, fishwood_front

__all__ = ["FishwoodDataModule"]


class FishwoodDataModule(PreferenceRolloutDataModule):
    """Fishwood episodes × preferences (moc.md §5 "Fishwood"; §7.2).

    Args:
        horizon: steps per episode (moc.md §5: 50).
        fish_prob: probability of a fish per step at the river (fishwood-v0: 0.1).
        wood_prob: probability of wood per step in the woods (fishwood-v0: 0.9).
        start: start location, ``woods``, ``river`` or ``random``.
        eval_episodes: seeded evaluation episodes per preference.
        eval_greedy: evaluate with the most likely action instead of sampling.
        eval_seed: seed of the evaluation episodes and their action sampling.
        rollout_size: see :class:`datamodules.preference_prompts.PreferenceRolloutDataModule`.
        update_epochs: see :class:`datamodules.preference_prompts.PreferenceRolloutDataModule`.
        num_minibatches: see :class:`datamodules.preference_prompts.PreferenceRolloutDataModule`.
        train_preferences: see :class:`datamodules.preference_prompts.PreferenceRolloutDataModule`.
        dirichlet_alpha: see :class:`datamodules.preference_prompts.PreferenceRolloutDataModule`.
        train_grid_step: see :class:`datamodules.preference_prompts.PreferenceRolloutDataModule`.
        seed: see :class:`datamodules.preference_prompts.PreferenceRolloutDataModule`.
    """

    is_mdp = True

    def __init__(
        self,
        horizon: int = 50,
        fish_prob: float = 0.1,
        wood_prob: float = 0.9,
        start: str = "woods",
        eval_episodes: int = 32,
        eval_greedy: bool = False,
        eval_seed: int = 1234,
        rollout_size: int = 64,
        update_epochs: int = 4,
        num_minibatches: int = 4,
        train_preferences: str = "dirichlet",
        dirichlet_alpha: float = 1.0,
        train_grid_step: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(rollout_size, update_epochs, num_minibatches, train_preferences, dirichlet_alpha,
                         train_grid_step, seed)  # fmt: skip
        FishwoodVec(1, horizon, fish_prob, wood_prob, start)  # validates the settings now
        if eval_episodes < 1:
            raise ValueError(f"eval_episodes must be ≥ 1, got {eval_episodes}")
        self.horizon, self.fish_prob, self.wood_prob, self.start = int(horizon), float(fish_prob), float(wood_prob), start
        self.eval_episodes, self.eval_greedy, self.eval_seed = int(eval_episodes), bool(eval_greedy), int(eval_seed)

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"horizon": 6, "rollout_size": 4, "update_epochs": 1, "num_minibatches": 2, "eval_episodes": 2}

    @property
    def objective_labels(self) -> tuple[str, ...]:
        return FISHWOOD_OBJECTIVES

    def front(self) -> np.ndarray:
        """The analytic expected-return front (:func:`trainer.fishwood.fishwood_front`)."""
        return fishwood_front(self.horizon, self.fish_prob, self.wood_prob, self.start)

    def _play(self, module: Any, prefs: Tensor, seed: int, greedy: bool) -> dict[str, Any]:
        env = FishwoodVec(prefs.shape[0], self.horizon, self.fish_prob, self.wood_prob, self.start, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        obs = env.reset()
        all_obs, actions, rewards = [], [], []
        for _ in range(self.horizon):
            o = torch.as_tensor(obs)
            a = module.act(o, prefs, gen, greedy=greedy)
            obs, r, _ = env.step(a.numpy())
            all_obs.append(o)
            actions.append(a)
            rewards.append(torch.as_tensor(r))
        return {
            "obs": torch.stack(all_obs, 1), "actions": torch.stack(actions, 1).long(), "prefs": prefs,
            "mask": torch.ones(prefs.shape[0], self.horizon), "step_rewards": torch.stack(rewards, 1),
        }  # fmt: skip

    def rollout(self, module: Any, prefs: Tensor, seed: int) -> dict[str, Any]:
        return self._play(module, prefs, seed, greedy=False)

    def evaluate_preferences(self, module: Any, prefs: Tensor) -> dict[str, Any]:
        self.ensure_reward_stats(module)
        e = self.eval_episodes
        out = self._play(module, prefs.repeat_interleave(e, 0), _seed(self.eval_seed), greedy=self.eval_greedy)
        result = self.summarise(module, prefs, out["step_rewards"].sum(1), e)
        result["examples"] = []
        return result
