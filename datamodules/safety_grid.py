"""The lava grid: a CI-sized stand-in for HASARD's safe-RL trade-off (hasard.md §2, §7.1). Our own code.

A ``size × size`` grid (default 7). The agent starts in the middle of the left column and the goal is
the middle of the right column. A block of lava fills rows ``1 … size−2`` of the three middle columns,
so the straight path crosses 3 lava cells (6 moves) while the safe detour along the top or bottom row
takes 12 moves (6 longer). Reward −0.01 per step and +1 on reaching the goal (the episode terminates);
cost 1 for every step that ends on lava; episodes are truncated after ``max_steps`` (50). Moves into
the border leave the agent in place. Observations are the one-hot row followed by the one-hot column
(``2·size`` floats): a factored code, so what the policy learns in one row (head right, step around
lava) carries over to the others.

Expected behaviour (hasard.md §7.1, budget 0.5 lava steps per episode): PPO takes the lava path (cost
≈ 3), PPO-Lagrangian's λ rises until the agent takes the detour (cost ≤ 0.6), PPO-Cost with κ = 1 also
avoids lava.

The env is a plain numpy object, so the datamodule pickles it for bitwise resume (rl_core.md §5).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from trainer.rollout import RolloutDataModule

__all__ = ["LavaGridDataModule", "LavaGridEnv"]

#: where episodes start: the middle of the left column, or any cell of it (exploring starts)
START_MODES = ("middle", "left_column")
#: (d_row, d_col) of actions 0..3 = up, down, left, right
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


class LavaGridEnv(gym.Env):
    """The lava grid (module docstring). ``info["cost"]`` is 1 on a lava step; ``info["position"]`` is
    ``(col, row)``; the step that ends an episode carries ``positions`` ``[L, 2]`` for heatmaps.

    Args:
        size: grid side (≥ 5, odd).
        max_steps: time limit (truncation).
        start: ``middle`` (default: the start of hasard.md §7.1) or ``left_column`` (each episode starts in
            a random row of the left column, drawn from the env's seeded RNG; the rows next to the lava
            block still face the 3-cell short cut, the top and bottom rows start on the safe corridor).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, size: int = 7, max_steps: int = 50, start: str = "middle") -> None:
        if start not in START_MODES:
            raise ValueError(f"start must be one of {START_MODES}, got {start!r}")
        if size < 5 or size % 2 == 0:
            raise ValueError(f"size must be odd and >= 5, got {size}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.size, self.max_steps, self.start_mode = int(size), int(max_steps), start
        mid = self.size // 2
        self.start, self.goal = (mid, 0), (mid, self.size - 1)
        self.lava = np.zeros((self.size, self.size), bool)
        self.lava[1 : self.size - 1, mid - 1 : mid + 2] = True  # hasard.md §7.1: 3 lava cells on the short path
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2 * self.size,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.render_mode = "rgb_array"
        self.pos = self.start
        self.t = 0
        self.trace: list[tuple[int, int]] = []

    def _obs(self) -> np.ndarray:
        o = np.zeros(2 * self.size, np.float32)
        o[self.pos[0]] = 1.0
        o[self.size + self.pos[1]] = 1.0
        return o

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if self.start_mode == "left_column":  # exploring starts: any row of the left column, from the env's RNG
            self.pos = (int(self.np_random.integers(self.size)), 0)
        else:
            self.pos = self.start
        self.t = 0
        self.trace = [(self.pos[1], self.pos[0])]
        return self._obs(), {"position": (float(self.pos[1]), float(self.pos[0]))}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(np.asarray(action).reshape(-1)[0])
        if not 0 <= a < 4:
            raise ValueError(f"action must be in 0..3, got {a}")
        dr, dc = MOVES[a]
        r = min(max(self.pos[0] + dr, 0), self.size - 1)
        c = min(max(self.pos[1] + dc, 0), self.size - 1)
        self.pos = (r, c)
        self.t += 1
        self.trace.append((c, r))
        terminated = self.pos == self.goal
        truncated = not terminated and self.t >= self.max_steps
        reward = -0.01 + (1.0 if terminated else 0.0)
        info: dict[str, Any] = {"cost": float(self.lava[r, c]), "position": (float(c), float(r))}
        if terminated or truncated:
            info["positions"] = np.asarray(self.trace, np.float32)
            info["episode_extras"] = {"reached_goal": float(terminated)}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        img = np.full((self.size, self.size, 3), 235, np.uint8)
        img[self.lava] = (230, 90, 20)
        img[self.goal] = (40, 180, 60)
        img[self.pos] = (40, 90, 230)
        return np.kron(img, np.ones((16, 16, 1), np.uint8))


class _LavaFactory:
    def __init__(self, size: int, max_steps: int, start: str) -> None:
        self.size, self.max_steps, self.start = size, max_steps, start

    def __call__(self, seed: int) -> LavaGridEnv:
        return LavaGridEnv(self.size, self.max_steps, self.start)

    def describe(self) -> str:
        return f"LavaGrid{self.size}x{self.size}"


class LavaGridDataModule(RolloutDataModule):
    """Rollouts on :class:`LavaGridEnv` in this process (exact resume). Rollout arguments as in
    :class:`trainer.rollout.RolloutDataModule`; per-step budget = episode budget / ``max_steps``.

    Args:
        size: grid side (7).
        max_steps: episode time limit (50).
        start: ``middle`` (hasard.md §7.1) or ``left_column`` (exploring starts; see :class:`LavaGridEnv`).
        num_envs: envs per rank (8).
        num_steps: rollout length per env (64).
        update_epochs: passes per rollout (4).
        num_minibatches: minibatches per pass (4).
        total_env_steps: run length in env steps, all ranks (60,000).
        gamma: discount (0.99).
        gae_lambda: GAE λ (0.95).
        seed: env and sampling seed.
        collect_threads: torch threads of the policy during collection (1).
        update_threads: torch threads of the update (``auto``: torch's setting for these in-process envs).
    """

    #: heatmap box [x_min, y_min, x_max, y_max] and bins on the longer axis (NavigationHeatmapCallback)
    heatmap_box = (0.0, 0.0, 7.0, 7.0)
    heatmap_bins = 7

    def __init__(
        self,
        size: int = 7,
        max_steps: int = 50,
        start: str = "middle",
        num_envs: int = 8,
        num_steps: int = 64,
        update_epochs: int = 4,
        num_minibatches: int = 4,
        total_env_steps: int = 60_000,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        seed: int = 0,
        collect_threads: int | None = 1,
        update_threads: int | str | None = "auto",
    ) -> None:
        super().__init__(num_envs, num_steps, update_epochs, num_minibatches, total_env_steps, gamma, gae_lambda, seed,
                         collect_threads=collect_threads, update_threads=update_threads)  # fmt: skip
        LavaGridEnv(size, max_steps, start)  # validate now, not in setup
        self.size, self.max_steps, self.start = int(size), int(max_steps), start
        self.heatmap_box = (0.0, 0.0, float(size), float(size))
        self.heatmap_bins = int(size)

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"num_envs": 2, "num_steps": 16, "update_epochs": 1, "num_minibatches": 2, "total_env_steps": 10_000}

    def env_factory(self, k: int) -> _LavaFactory:
        return _LavaFactory(self.size, self.max_steps, self.start)

    @property
    def max_episode_steps(self) -> int:
        return self.max_steps

    #: episode budget of the miniature: 0.5 lava steps per episode (hasard.md §7.1)
    default_budget = 0.5
    #: PPO-Sauté's reward once the safety state is exhausted (our choice: ten step penalties, −0.1; it
    #: outweighs the −0.01 step reward, so an exhausted budget is worse than any detour, and stays below
    #: the +1 goal reward in size)
    default_unsafe_reward = -0.1

    def make_eval_env(self, seed: int) -> LavaGridEnv:
        env = LavaGridEnv(self.size, self.max_steps, self.start)
        env.reset(seed=seed)
        return env
