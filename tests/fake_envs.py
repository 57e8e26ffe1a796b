"""Small scripted gymnasium envs for the subprocess vector-env tests (tests/test_env_workers.py).

Importable by spawned workers; nothing here imports torch (the worker imports it once, to set its
thread count). Every factory is a module-level class, so it pickles by reference.

:class:`ScriptedEnv` has a ``Box(4)`` observation ``[episode, t, noise, last_action]`` (``episode``
counts from 0 at a seeded reset; ``noise`` is drawn from the env's seeded RNG, so it identifies the
seed), ``Discrete(3)`` actions, episodes of a fixed length that end by termination or truncation,
reward ``t + 0.1 * action`` and ``info["cost"] = 1.0`` when the action is 1. Its faults are scripted
by counting the steps since the env was built.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import gymnasium
import numpy as np

__all__ = ["BuildFailFactory", "ScriptedEnv", "ScriptedEnvFactory"]


class ScriptedEnv(gymnasium.Env):
    """A deterministic toy env with optional scripted faults.

    Args:
        episode_len: steps per episode.
        truncate: end episodes by truncation (a time limit) instead of termination.
        fail_at_step: raise ``ValueError`` on this step since construction (``None``: never).
        fail_every: raise on every ``fail_every``-th step since construction (``None``: never; 1: always).
        hang_at_step: sleep ``hang_s`` seconds on this step since construction (``None``: never).
        hang_s: how long a hang lasts.
        fail_reset_seeds: reset raises ``ValueError`` when called with one of these seeds.
        launch_child: start a ``sleep 120`` program (as ViZDoom starts its game), PID in ``child_pid``.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        episode_len: int = 3,
        truncate: bool = False,
        fail_at_step: int | None = None,
        fail_every: int | None = None,
        hang_at_step: int | None = None,
        hang_s: float = 60.0,
        fail_reset_seeds: tuple[int, ...] = (),
        launch_child: bool = False,
    ) -> None:
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(3)
        self.render_mode = "rgb_array"
        self.episode_len = episode_len
        self.truncate = truncate
        self.fail_at_step = fail_at_step
        self.fail_every = fail_every
        self.hang_at_step = hang_at_step
        self.hang_s = hang_s
        self.fail_reset_seeds = tuple(fail_reset_seeds)
        self.total_steps = 0
        self.episode = -1
        self.t = 0
        self.last_action = 0
        self.child = subprocess.Popen(["sleep", "120"]) if launch_child else None
        self.child_pid = None if self.child is None else self.child.pid

    def _obs(self) -> np.ndarray:
        noise = self.np_random.uniform()
        return np.array([self.episode, self.t, noise, self.last_action], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None and seed in self.fail_reset_seeds:
            raise ValueError(f"scripted reset failure for seed {seed}")
        super().reset(seed=seed)
        self.episode = 0 if seed is not None else self.episode + 1  # episodes since the last seeding
        self.t = 0
        self.last_action = 0
        return self._obs(), {"reset_of_episode": self.episode}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.total_steps += 1
        if self.fail_at_step is not None and self.total_steps == self.fail_at_step:
            raise ValueError(f"scripted failure at step {self.total_steps}")
        if self.fail_every is not None and self.total_steps % self.fail_every == 0:
            raise ValueError(f"scripted failure at step {self.total_steps}")
        if self.hang_at_step is not None and self.total_steps == self.hang_at_step:
            time.sleep(self.hang_s)
        action = int(action)
        self.t += 1
        self.last_action = action
        reward = float(self.t) + 0.1 * action
        info: dict[str, Any] = {"positions": [self.t, action]}
        if action == 1:
            info["cost"] = 1.0
        done = self.t >= self.episode_len
        if done:
            info["episode_extras"] = {"scenario_id": 7}
        return self._obs(), reward, done and not self.truncate, done and self.truncate, info

    def close(self) -> None:
        if self.child is not None:
            self.child.kill()
            self.child.wait()

    def render(self) -> np.ndarray:
        return np.full((4, 5, 3), self.t, dtype=np.uint8)

    def get_state(self) -> tuple[int, int, int]:
        """(episode, t, steps since construction)."""
        return self.episode, self.t, self.total_steps

    def add(self, a: int, b: int = 0) -> int:
        return a + b


class ScriptedEnvFactory:
    """A picklable ``env_fn``: ``factory(seed)`` builds a :class:`ScriptedEnv` (the seed is unused by the
    constructor: the vector env seeds the env through ``reset``). Keyword arguments go to the env.

    Args:
        name: the env's human name, returned by ``describe()``.
        **env_kwargs: arguments of :class:`ScriptedEnv`.
    """

    def __init__(self, name: str = "scripted", **env_kwargs: Any) -> None:
        self.name = name
        self.env_kwargs = env_kwargs

    def __call__(self, seed: int) -> ScriptedEnv:
        return ScriptedEnv(**self.env_kwargs)

    def describe(self) -> str:
        return f"ScriptedEnv[{self.name}]"


class BuildFailFactory(ScriptedEnvFactory):
    """A factory whose ``__call__`` raises for the seeds in ``fail_seeds`` (a failing env construction)."""

    def __init__(self, fail_seeds: tuple[int, ...], name: str = "build-fail", **env_kwargs: Any) -> None:
        super().__init__(name, **env_kwargs)
        self.fail_seeds = tuple(fail_seeds)

    def __call__(self, seed: int) -> ScriptedEnv:
        if seed in self.fail_seeds:
            raise RuntimeError(f"scripted construction failure for seed {seed}")
        return super().__call__(seed)
