"""Rollout machinery of on-policy RL inside Lightning (rl_core.md §2–§6): env-agnostic.

* :class:`InProcessVecEnv`: N environments stepped in this process, **same-step autoreset** (when an
  episode ends, the returned observation is already the next episode's first one; the true last one is
  in ``infos[k]["final_obs"]``), per-episode statistics, and exact state capture (pickle of the envs) for
  bitwise resume. :class:`trainer.env_workers.SubprocVecEnv` follows the same protocol with one
  supervised subprocess per env (restarts, rl_core.md §4).
* :class:`RolloutBuffer`: ``[T, N, ...]`` tensors of one rollout; :meth:`RolloutBuffer.advantages`
  runs :func:`trainer.rl.gae` for the reward and the cost streams.
* :class:`RolloutDataset`: an ``IterableDataset`` whose every ``__iter__`` collects one fresh rollout
  with the live policy (``trainer.lightning_module``) and yields ``update_epochs × num_minibatches``
  minibatches (dicts of CPU tensors), shuffled with permutations seeded by
  ``(seed, rank, rollout_idx, epoch)``. One Lightning epoch = one rollout plus its update passes.
* :class:`RolloutDataModule`: the base class a paper's environment datamodule subclasses. It owns the
  environments (seed of env ``k`` on rank ``r``: ``seed + 10_000·r + k``), the action-sampling
  ``torch.Generator`` (seeded from ``(seed, rank)``), the env-step counter and the episode statistics,
  and checkpoints all of them (``state_dict``).

The policy protocol (:class:`trainer.protocols.ActorCritic`): ``module.act(obs, generator)`` returns
``{"action": [N, H] long, "logp": [N], "value": [N], "cost_value": [N]}`` and
``module.values(obs)`` returns ``(value [N], cost_value [N])``; observations reach the module as the
float32 / uint8 tensors the envs emit, stacked ``[N, ...]``.

Stateful policies (optional, :class:`trainer.ppo.PPOBase` implements it): a module with
``initial_policy_state(n)`` gets a per-env state dict (CPU tensors ``[N, ...]``: the GRU state ``hidden``,
PPO-Sauté's safety state ``safety``, ...) as a third argument of ``act`` and second of ``values``; after
each env step ``module.advance(state, out, reward, cost, done)`` returns the reward GAE sees and the next
state, and the rows whose episode ended are reset to ``initial_policy_state`` (same-step autoreset: the
new episode's first observation is seen with the fresh state). The state entering each step is stored in
the buffer and reaches the minibatches under its own name; the keys the module lists in
``chunk_state_keys`` are kept only at the start of every ``module.recurrence``-long chunk, and then the
minibatches are whole chunks (shuffled by chunk, never by step; rl_core.md §2). The state is part of the
datamodule's checkpoint with in-process envs, so resume stays exact. Actions of a
``Tuple(MultiDiscrete, Box)`` space are ``[N, heads + box]`` floats; the env gets the head indices and
the Box part clipped to the space's bounds (:func:`env_actions`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from trainer.data import world_and_rank
from trainer.rl import gae

__all__ = [
    "InProcessVecEnv",
    "RolloutBuffer",
    "RolloutDataModule",
    "RolloutDataset",
    "env_actions",
    "env_seed",
    "minibatch_permutation",
]


def env_seed(seed: int, rank: int, k: int) -> int:
    """First reset seed of env ``k`` on global rank ``rank`` (rl_core.md §5)."""
    return int(seed) + 10_000 * int(rank) + int(k)


def minibatch_permutation(n: int, seed: int, rank: int, rollout_idx: int, epoch: int) -> torch.Tensor:
    """The permutation of update epoch ``epoch`` of rollout ``rollout_idx``: reproducible without RNG state
    (rl_core.md §5)."""
    digest = hashlib.sha256(f"{seed}/{rank}/{rollout_idx}/{epoch}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randperm(n, generator=g)


def env_actions(space: Any, actions: np.ndarray) -> Any:
    """The env-side actions of ``actions`` ``[N, columns]`` for an env with action space ``space``: a scalar
    per env for ``Discrete``, the head indices for ``MultiDiscrete``, and for ``Tuple(MultiDiscrete, Box)``
    one ``(head indices int64, Box values clipped to the space's bounds float32)`` pair per env."""
    spaces = getattr(space, "spaces", None)
    if isinstance(spaces, tuple) and len(spaces) == 2 and hasattr(spaces[1], "low"):
        nd = len(np.asarray(spaces[0].nvec).ravel())
        low, high = np.asarray(spaces[1].low, np.float32), np.asarray(spaces[1].high, np.float32)
        return [(np.asarray(a[:nd]).astype(np.int64), np.clip(np.asarray(a[nd:], np.float32), low, high))
                for a in actions]  # fmt: skip
    if hasattr(space, "n") and not hasattr(space, "nvec"):
        return actions[:, 0]
    return actions


# ----------------------------------------------------------------------------------------------
# in-process vector env
# ----------------------------------------------------------------------------------------------


class InProcessVecEnv:
    """``N`` gymnasium envs stepped in this process with same-step autoreset (rl_core.md §3).

    ``step`` returns ``obs [N, ...]``, ``reward float32 [N]``, ``terminated``/``truncated`` bool ``[N]``
    and one info dict per env: ``cost`` (0.0 if the env gives none); on the step an episode ends
    ``final_obs`` and ``episode`` = ``{"return", "cost", "length", **info["episode_extras"]}`` plus the
    env's other info keys. ``restarts`` is always 0 here (nothing to supervise).

    Args:
        env_fns: ``env_fns[k](seed)`` builds env ``k``.
        seeds: first reset seed of each env.
    """

    def __init__(self, env_fns: Sequence[Callable[[int], Any]], seeds: Sequence[int]) -> None:
        if len(env_fns) != len(seeds) or not env_fns:
            raise ValueError(f"need one seed per env and at least one env, got {len(env_fns)} envs, {len(seeds)} seeds")
        self.seeds = [int(s) for s in seeds]
        self.envs = [fn(s) for fn, s in zip(env_fns, self.seeds)]
        self.num_envs = len(self.envs)
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.restarts = 0
        self.restarts_per_env = [0] * self.num_envs
        self._acc = [[0.0, 0.0, 0] for _ in self.envs]

    def reset(self) -> tuple[np.ndarray, list[dict]]:
        out = [env.reset(seed=s) for env, s in zip(self.envs, self.seeds)]
        self._acc = [[0.0, 0.0, 0] for _ in self.envs]
        return np.stack([o for o, _ in out]), [dict(i) for _, i in out]

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        obs, rew = [], np.zeros(self.num_envs, np.float32)
        term, trunc = np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool)
        infos = []
        for k, env in enumerate(self.envs):
            o, r, te, tr, info = env.step(actions[k])
            info = dict(info)
            info["cost"] = float(info.get("cost", 0.0))
            acc = self._acc[k]
            acc[0] += float(r)
            acc[1] += info["cost"]
            acc[2] += 1
            if te or tr:  # same-step autoreset: keep the true last observation, return the next first one
                info["final_obs"] = o
                info["episode"] = {"return": acc[0], "cost": acc[1], "length": acc[2], **info.pop("episode_extras", {})}
                self._acc[k] = [0.0, 0.0, 0]
                o, _ = env.reset()
            obs.append(o)
            rew[k], term[k], trunc[k] = r, te, tr
            infos.append(info)
        return np.stack(obs), rew, term, trunc, infos

    def render(self, k: int = 0) -> Any:
        return self.envs[k].render()

    def call(self, k: int, name: str, *args: Any) -> Any:
        return getattr(self.envs[k], name)(*args)

    def get_state(self) -> bytes:
        """Every env (its RNG and episode position included) and the episode accumulators, pickled."""
        return pickle.dumps((self.envs, self._acc))

    def set_state(self, blob: bytes) -> None:
        self.envs, self._acc = pickle.loads(blob)

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ----------------------------------------------------------------------------------------------
# rollout buffer
# ----------------------------------------------------------------------------------------------


class RolloutBuffer:
    """One rollout of ``T`` steps × ``N`` envs as CPU tensors (rl_core.md §2).

    ``final_values``/``final_cost_values`` hold ``V(final_obs)`` at truncated steps (0 elsewhere), so
    :func:`trainer.rl.gae` bootstraps time limits and never terminations.
    """

    KEYS = ("actions", "logp", "values", "cost_values", "rewards", "costs", "terminated", "truncated",
            "final_values", "final_cost_values")  # fmt: skip

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        obs_shape: Sequence[int],
        obs_dtype: torch.dtype,
        n_heads: int,
        action_dtype: torch.dtype = torch.long,
    ):
        T, N = int(num_steps), int(num_envs)
        self.T, self.N = T, N
        self.obs = torch.zeros((T, N, *obs_shape), dtype=obs_dtype)
        self.actions = torch.zeros((T, N, n_heads), dtype=action_dtype)
        self.inputs: dict[str, torch.Tensor] = {}  # the policy state entering each step, [T, N, ...]
        for name in self.KEYS[1:]:
            setattr(self, name, torch.zeros((T, N)))
        self.bootstrap = torch.zeros(N)
        self.cost_bootstrap = torch.zeros(N)

    def advantages(self, gamma: float, lam: float, bootstrap_on_truncation: bool = True) -> dict[str, torch.Tensor]:
        """Reward and cost advantages/returns by GAE (rl_core.md §7); with ``bootstrap_on_truncation``
        false a time limit counts as terminal."""
        term = self.terminated.bool()
        trunc = self.truncated.bool()
        if not bootstrap_on_truncation:
            term = term | trunc
        adv, ret = gae(self.rewards, self.values, term, trunc, self.final_values, self.bootstrap, gamma, lam)
        cadv, cret = gae(self.costs, self.cost_values, term, trunc, self.final_cost_values, self.cost_bootstrap, gamma, lam)
        return {"advantages": adv, "returns": ret, "cost_advantages": cadv, "cost_returns": cret}

    def store_inputs(self, t: int, envs: Sequence[int] | slice, state: dict[str, torch.Tensor]) -> None:
        """Record the policy state ``state`` (rows = ``envs``) that entered step ``t``."""
        for name, v in state.items():
            if name not in self.inputs:
                self.inputs[name] = torch.zeros((self.T, self.N, *v.shape[1:]), dtype=v.dtype)
            self.inputs[name][t, envs] = v

    def flat(
        self, extra: dict[str, torch.Tensor], chunk_len: int = 1, chunk_keys: Sequence[str] = ()
    ) -> dict[str, torch.Tensor]:
        """``[T·N, ...]`` tensors of every stored field, of the stored policy inputs and of ``extra``, ordered
        chunk by chunk: row ``(c·L + i)`` is step ``i`` of chunk ``c = (t // L)·N + env`` (``L = chunk_len``;
        with ``L = 1`` the plain ``t·N + env`` order). Inputs named in ``chunk_keys`` keep only each chunk's
        first step: ``[T·N / L, ...]``."""
        T, N, L = self.T, self.N, int(chunk_len)
        if T % L:
            raise ValueError(f"num_steps = {T} is not divisible by the recurrence chunk length {L}")

        def chunked(t: torch.Tensor) -> torch.Tensor:
            rest = t.shape[2:]
            if L == 1:
                return t.reshape(T * N, *rest)
            return t.reshape(T // L, L, N, *rest).transpose(1, 2).reshape(T * N, *rest)

        out = {"obs": chunked(self.obs)}
        for name in self.KEYS:
            out[name] = chunked(getattr(self, name))
        for name, t in self.inputs.items():
            out[name] = t[::L].reshape(T // L * N, *t.shape[2:]) if name in chunk_keys else chunked(t)
        for name, t in extra.items():
            out[name] = chunked(t)
        return out


# ----------------------------------------------------------------------------------------------
# dataset and datamodule
# ----------------------------------------------------------------------------------------------


class RolloutDataset(IterableDataset):
    """Each ``iter()`` collects one rollout with the live policy, then yields its minibatches.

    ``len()`` is ``update_epochs · num_minibatches`` (the progress bar and logging intervals work); an
    early stop on KL (the module sets ``stop_updates``, all-reduced across ranks) ends the iteration.
    """

    def __init__(self, datamodule: RolloutDataModule) -> None:
        self.dm = datamodule

    def __len__(self) -> int:
        return self.dm.update_epochs * self.dm.num_minibatches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        dm = self.dm
        module = dm.trainer.lightning_module
        threads_before = torch.get_num_threads()
        _set_threads(dm.threads_for("collect"))
        # the trainer's precision (bf16-mixed: autocast) for the policy's forward passes too, so that the stored
        # log-probabilities come from the same arithmetic as the update's
        precision = getattr(dm.trainer, "precision", None)
        if hasattr(module, "rollout_precision"):
            ctx = module.rollout_precision(precision)
        else:
            plugin = getattr(dm.trainer, "precision_plugin", None)
            ctx = plugin.forward_context() if plugin is not None else nullcontext()
        with ctx:
            flat = dm.collect_rollout(module)
        if hasattr(module, "observe_rollout"):  # running normalisers take the rollout in after its update passes
            module.observe_rollout(flat)
        update_threads = dm.threads_for("update")  # the games wait during the update passes: give torch the cores
        _set_threads(threads_before if update_threads is None else update_threads)
        L, chunk_keys = int(getattr(dm, "chunk_len", 1)), tuple(getattr(dm, "chunk_keys", ()))
        n = flat["obs"].shape[0] // L  # units: steps (feed-forward) or chunks of L steps (recurrent)
        size = n // dm.num_minibatches
        _, rank = world_and_rank(dm.trainer)
        module.stop_updates = False
        for epoch in range(dm.update_epochs):
            perm = minibatch_permutation(n, dm.seed, rank, dm.rollout_idx, epoch)
            for j in range(dm.num_minibatches):
                if getattr(module, "stop_updates", False):
                    return
                idx = perm[j * size : (j + 1) * size]
                rows = idx if L == 1 else (idx[:, None] * L + torch.arange(L)).reshape(-1)  # whole chunks
                yield {k: v[idx] if k in chunk_keys else v[rows] for k, v in flat.items()}


class RolloutDataModule(pl.LightningDataModule):
    """Base datamodule of an RL environment family: owns the envs, collects rollouts (rl_core.md §2).

    Subclasses implement :meth:`env_factory` (``k -> callable(seed) -> env``) and may override
    :meth:`per_step_budget`, ``vector_backend`` (``"inprocess"`` or ``"subprocess"``) and
    :meth:`episode_extras_keys`. The module side is :class:`trainer.protocols.ActorCritic`.

    Run length: ``total_env_steps`` (summed over envs and ranks); after the rollout that reaches it the
    module stops the trainer (:meth:`budget_reached`). ``total_updates`` gives LR schedules their horizon.

    Args:
        num_envs: environments per rank.
        num_steps: rollout length per env.
        update_epochs: passes over each rollout.
        num_minibatches: minibatches per pass (``num_envs·num_steps`` must be divisible by it).
        total_env_steps: env steps of the whole run (all ranks).
        gamma: discount.
        gae_lambda: GAE λ.
        seed: base seed of the envs and of action sampling.
        bootstrap_on_truncation: bootstrap time limits with ``V(final_obs)`` (rl_core.md §3).
        step_timeout_s: subprocess backend: a step slower than this counts as a failure.
        max_consecutive_restarts: subprocess backend: failures of one env in a row before the run stops.
        collect_threads: torch intra-op threads of the policy's forward passes during collection (the games own
            the cores then; 1 = no contention with them); None = leave torch's setting alone.
        update_threads: torch threads of the update passes, when the env workers are idle; ``"auto"`` = the
            cores this process may use divided by the ranks on this machine with the subprocess backend (its
            games wait during the update), torch's setting otherwise; an int sets it; None = leave it alone.
    """

    vector_backend: str = "inprocess"
    #: with an asynchronous backend (subprocess), step two halves of the envs in turn so that the policy's
    #: forward pass for one half overlaps the other half's env step
    overlap_groups: bool = True

    def __init__(
        self,
        num_envs: int = 4,
        num_steps: int = 128,
        update_epochs: int = 4,
        num_minibatches: int = 4,
        total_env_steps: int = 100_000,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        seed: int = 0,
        bootstrap_on_truncation: bool = True,
        step_timeout_s: float = 60.0,
        max_consecutive_restarts: int = 5,
        collect_threads: int | None = 1,
        update_threads: int | str | None = "auto",
    ) -> None:
        super().__init__()
        if collect_threads is not None and (isinstance(collect_threads, bool) or not isinstance(collect_threads, int)
                                            or collect_threads < 1):
            raise ValueError(f"collect_threads must be a positive int or None, got {collect_threads!r}")
        if update_threads is not None and update_threads != "auto" and (
            isinstance(update_threads, bool) or not isinstance(update_threads, int) or update_threads < 1
        ):
            raise ValueError(f"update_threads must be a positive int, 'auto' or None, got {update_threads!r}")
        self.collect_threads, self.update_threads = collect_threads, update_threads
        for name, v in (("num_envs", num_envs), ("num_steps", num_steps), ("update_epochs", update_epochs),
                        ("num_minibatches", num_minibatches), ("total_env_steps", total_env_steps)):  # fmt: skip
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if (int(num_envs) * int(num_steps)) % int(num_minibatches):
            raise ValueError(
                f"num_envs*num_steps = {num_envs * num_steps} is not divisible by num_minibatches = {num_minibatches}"
            )
        if not (0 < gamma <= 1 and 0 <= gae_lambda <= 1):
            raise ValueError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {gamma}, {gae_lambda}")
        self.num_envs, self.num_steps = int(num_envs), int(num_steps)
        self.update_epochs, self.num_minibatches = int(update_epochs), int(num_minibatches)
        self.total_env_steps = int(total_env_steps)
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.seed = int(seed)
        self.bootstrap_on_truncation = bool(bootstrap_on_truncation)
        self.step_timeout_s = float(step_timeout_s)
        self.max_consecutive_restarts = int(max_consecutive_restarts)
        self.vec_env: Any = None
        self.obs: np.ndarray | None = None
        self.rollout_idx = 0
        self.env_steps = 0  # this rank's env steps
        self.generator = torch.Generator()
        self.episodes: list[dict[str, Any]] = []  # episodes finished in the last rollout (this rank)
        self.rollout_stats: dict[str, float] = {}
        self.exact_resume = True
        self._world, self._rank = 1, 0
        self.policy_state: dict[str, torch.Tensor] | None = None  # per-env state of a stateful policy (CPU)
        self.chunk_len = 1  # steps per minibatch unit of the last rollout (the module's recurrence, or 1)
        self.chunk_keys: tuple[str, ...] = ()  # flat keys holding one row per chunk

    # ---------------------------------------------------------------- subclass interface
    def env_factory(self, k: int) -> Callable[[int], Any]:
        """A picklable ``callable(seed) -> env`` for env ``k`` (of this rank)."""
        raise NotImplementedError

    def per_step_budget(self, episode_budget: float) -> float:
        """The per-step cost bound matching an episode budget (default: budget / episode horizon)."""
        return float(episode_budget) / float(self.max_episode_steps)

    @property
    def max_episode_steps(self) -> int:
        raise NotImplementedError

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return tuple(self._probe_env().observation_space.shape)

    @property
    def action_heads(self) -> tuple[int, ...]:
        """Options per discrete head (a ``Discrete(n)`` space is one head of ``n``; a
        ``Tuple(MultiDiscrete, Box)`` space gives its MultiDiscrete heads)."""
        space = self._probe_env().action_space
        spaces = getattr(space, "spaces", None)
        if isinstance(spaces, tuple) and len(spaces) == 2 and hasattr(spaces[0], "nvec"):
            space = spaces[0]
        if hasattr(space, "nvec"):
            return tuple(int(n) for n in np.asarray(space.nvec).ravel())
        if hasattr(space, "n"):
            return (int(space.n),)
        raise ValueError(f"unsupported action space {space} (Discrete, MultiDiscrete or Tuple(MultiDiscrete, Box) "
                         f"expected)")  # fmt: skip

    @property
    def action_box_dims(self) -> int:
        """Continuous action dimensions: the Box of a ``Tuple(MultiDiscrete, Box)`` space, else 0."""
        spaces = getattr(self._probe_env().action_space, "spaces", None)
        if isinstance(spaces, tuple) and len(spaces) == 2 and hasattr(spaces[1], "low"):
            return int(np.prod(spaces[1].shape))
        return 0

    def _probe_env(self) -> Any:
        if self.vec_env is not None:
            return _SpaceView(self.vec_env.single_observation_space, self.vec_env.single_action_space)
        if not hasattr(self, "_probe"):
            env = self.env_factory(0)(self.seed)
            self._probe = _SpaceView(env.observation_space, env.action_space)
            env.close()
        return self._probe

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str) -> None:
        if self.vec_env is not None:
            return
        self._world, self._rank = world_and_rank(self.trainer) if self.trainer is not None else (1, 0)
        seeds = [env_seed(self.seed, self._rank, k) for k in range(self.num_envs)]
        self.vec_env = self._make_vec_env(seeds)
        self.obs, _ = self.vec_env.reset()
        self.generator.manual_seed(self.seed * 1_000_003 + self._rank)
        self.policy_state = None

    def restart_envs(self) -> None:
        """Close the envs and start fresh ones on new episodes, seeded ``seed + 10_000·r + k + 1_000_003·rollout_idx``
        (rl_core.md §5; used on a resume of external envs and by a curriculum switch)."""
        seeds = [env_seed(self.seed, self._rank, k) + 1_000_003 * self.rollout_idx for k in range(self.num_envs)]
        self.vec_env.close()
        self.vec_env = self._make_vec_env(seeds)
        self.obs, _ = self.vec_env.reset()
        self.policy_state = None  # fresh episodes start from the initial policy state

    def _make_vec_env(self, seeds: Sequence[int]) -> Any:
        fns = [self.env_factory(k) for k in range(self.num_envs)]
        if self.vector_backend == "subprocess":
            from trainer.env_workers import SubprocVecEnv

            return SubprocVecEnv(fns, seeds, step_timeout_s=self.step_timeout_s,
                                 max_consecutive_restarts=self.max_consecutive_restarts)  # fmt: skip
        return InProcessVecEnv(fns, seeds)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RolloutDataset(self), batch_size=None, num_workers=0)

    def teardown(self, stage: str) -> None:
        if self.vec_env is not None:
            self.vec_env.close()
            self.vec_env = None

    @property
    def total_updates(self) -> int:
        """Optimizer steps of the whole run (the horizon of an LR schedule)."""
        per_rollout = self._world * self.num_envs * self.num_steps
        rollouts = -(-self.total_env_steps // per_rollout)
        return rollouts * self.update_epochs * self.num_minibatches

    def budget_reached(self) -> bool:
        return self.env_steps * self._world >= self.total_env_steps

    def threads_for(self, phase: str) -> int | None:
        """torch intra-op threads for ``phase`` (``"collect"`` or ``"update"``); None = torch's setting (for the
        update: the one before collection)."""
        if phase == "collect":
            return self.collect_threads
        if self.update_threads != "auto":
            return self.update_threads
        if self.vector_backend != "subprocess":
            return None
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or _local_ranks(self.trainer) or 1
        return max(1, cores // local)

    # ---------------------------------------------------------------- collection
    @torch.no_grad()
    def collect_rollout(self, module: Any) -> dict[str, torch.Tensor]:
        """One rollout with ``module``'s current policy; returns the flat minibatch source (rl_core.md §2)."""
        if self.vec_env is None:
            raise RuntimeError("collect_rollout before setup(): the environments do not exist yet")
        was_training = module.training
        module.eval()
        device = module.device
        T, N = self.num_steps, self.num_envs
        # a stateful policy (GRU state, PPO-Sauté's z): its per-env state persists across steps and rollouts
        stateful = hasattr(module, "initial_policy_state")
        state: dict[str, torch.Tensor] = {}
        if stateful:
            fresh = module.initial_policy_state(N)
            if self.policy_state is None or set(self.policy_state) != set(fresh) or any(
                self.policy_state[k].shape != v.shape for k, v in fresh.items()
            ):
                self.policy_state = fresh
            state = {k: v.clone() for k, v in self.policy_state.items()}
        L = int(getattr(module, "recurrence", 0) or 0) or 1
        if T % L:
            raise ValueError(f"num_steps = {T} is not divisible by recurrence = {L}")
        if (T // L * N) % self.num_minibatches:
            raise ValueError(f"{T // L * N} chunks of {L} steps are not divisible by num_minibatches = "
                             f"{self.num_minibatches}")  # fmt: skip
        space = self.vec_env.single_action_space
        box = self.action_box_dims
        obs_t = torch.as_tensor(self.obs)
        buf = RolloutBuffer(T, N, obs_t.shape[1:], obs_t.dtype, len(self.action_heads) + box,
                            torch.float32 if box else torch.long)  # fmt: skip
        episodes: list[dict[str, Any]] = []
        restarts0 = self.vec_env.restarts
        t0 = time.perf_counter()
        # Two env groups alternate when the backend steps asynchronously: the policy computes one group's
        # actions while the other group's games step (the same policy throughout the rollout).
        overlap = self.overlap_groups and hasattr(self.vec_env, "step_async") and N >= 2
        groups = [list(range(N // 2)), list(range(N // 2, N))] if overlap else [list(range(N))]
        slices = [slice(g[0], g[-1] + 1) for g in groups]  # groups are contiguous: basic slicing, no gathers
        buf.obs[0] = obs_t  # the observation entering step t is buf.obs[t]; the last step's successor is `last`
        last = torch.empty_like(buf.obs[0])

        def rows(st: dict[str, torch.Tensor], sl: slice) -> dict[str, torch.Tensor]:
            return {k: v[sl] for k, v in st.items()}

        def act(t: int, gi: int) -> dict[str, torch.Tensor]:
            g, sl = groups[gi], slices[gi]
            x = buf.obs[t, sl].to(device)
            out = module.act(x, self.generator, rows(state, sl)) if stateful else module.act(x, self.generator)
            out["action"] = out["action"].cpu()
            a = env_actions(space, out["action"].numpy())
            if overlap:
                self.vec_env.step_async(a, g)
            else:
                out["result"] = self.vec_env.step(a)
            return out

        outs = [act(0, gi) for gi in range(len(groups))] if overlap else [None]
        for t in range(T):
            for gi, (g, sl) in enumerate(zip(groups, slices)):
                out = outs[gi] if overlap else act(t, gi)
                nxt, rew, term, trunc, infos = self.vec_env.step_wait(g) if overlap else out.pop("result")
                buf.actions[t, sl] = out["action"].to(buf.actions.dtype)
                buf.logp[t, sl] = out["logp"]
                buf.values[t, sl] = out["value"]
                buf.cost_values[t, sl] = out["cost_value"]
                cost = torch.tensor([i["cost"] for i in infos], dtype=torch.float32)
                reward = torch.from_numpy(np.asarray(rew, dtype=np.float32))
                done = torch.from_numpy(np.logical_or(term, trunc))
                nxt_state: dict[str, torch.Tensor] = {}
                if stateful:
                    st_g = rows(state, sl)
                    buf.store_inputs(t, sl, st_g)
                    reward, nxt_state = module.advance(st_g, out, reward, cost, done)
                elif hasattr(module, "shape_reward"):
                    reward = module.shape_reward(reward, cost)
                buf.rewards[t, sl] = reward
                buf.costs[t, sl] = cost
                buf.terminated[t, sl] = torch.from_numpy(np.asarray(term, dtype=np.float32))
                buf.truncated[t, sl] = torch.from_numpy(np.asarray(trunc, dtype=np.float32))
                ends = [i for i in range(len(g)) if trunc[i] and not term[i]]
                if ends:  # V(final_obs) bootstraps a time limit (or a restart's break), with the state after the step
                    fin = torch.as_tensor(np.stack([infos[i]["final_obs"] for i in ends])).to(device)
                    v, cv = module.values(fin, {k: x[ends] for k, x in nxt_state.items()}) if stateful else (
                        module.values(fin))  # fmt: skip
                    buf.final_values[t, [g[i] for i in ends]] = v.cpu().float()
                    buf.final_cost_values[t, [g[i] for i in ends]] = cv.cpu().float()
                if stateful:  # same-step autoreset: a new episode starts from the initial state
                    init = module.initial_policy_state(len(g))
                    for k in state:
                        mask = done.reshape(-1, *([1] * (init[k].dim() - 1)))
                        state[k][sl] = torch.where(mask, init[k], nxt_state[k].cpu().to(state[k].dtype))
                for info in infos:
                    if "episode" in info:
                        ep = dict(info["episode"])
                        if "positions" in info:
                            ep["positions"] = info["positions"]
                        episodes.append(ep)
                (buf.obs[t + 1] if t < T - 1 else last)[sl] = torch.from_numpy(np.asarray(nxt))
                if overlap and t < T - 1:
                    outs[gi] = act(t + 1, gi)
        self.obs = last.numpy()
        if stateful:
            self.policy_state = state
            v, cv = module.values(torch.as_tensor(self.obs).to(device), state)
        else:
            v, cv = module.values(torch.as_tensor(self.obs).to(device))
        buf.bootstrap, buf.cost_bootstrap = v.cpu().float(), cv.cpu().float()
        elapsed = time.perf_counter() - t0
        self.env_steps += T * N
        self.rollout_idx += 1
        self.episodes = episodes
        self.rollout_stats = {
            "env_steps": float(self.env_steps * self._world),
            "steps_per_sec": T * N / max(elapsed, 1e-9),
            "restarts": float(self.vec_env.restarts),
            "new_restarts": float(self.vec_env.restarts - restarts0),
            "step_cost": float(buf.costs.mean()),
        }
        module.train(was_training)
        extra = buf.advantages(self.gamma, self.gae_lambda, self.bootstrap_on_truncation)
        self.chunk_len = L
        self.chunk_keys = tuple(k for k in state if k in getattr(module, "chunk_state_keys", ())) if L > 1 else ()
        return buf.flat(extra, L, self.chunk_keys)

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "rollout_idx": self.rollout_idx,
            "env_steps": self.env_steps,
            "generator": self.generator.get_state(),
            "exact_resume": self.exact_resume,
        }
        if isinstance(self.vec_env, InProcessVecEnv):
            state["envs"] = self.vec_env.get_state()
            state["obs"] = torch.as_tensor(self.obs).clone()
            if self.policy_state is not None:  # GRU state / safety state: part of the env state for exact resume
                state["policy_state"] = {k: v.clone() for k, v in self.policy_state.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollout_idx = int(state["rollout_idx"])
        self.env_steps = int(state["env_steps"])
        self.generator.set_state(state["generator"])
        if "envs" in state and isinstance(self.vec_env, InProcessVecEnv):
            self.vec_env.set_state(state["envs"])
            self.obs = state["obs"].numpy().copy()
            self.exact_resume = bool(state.get("exact_resume", True))
            ps = state.get("policy_state")
            self.policy_state = None if ps is None else {k: v.clone() for k, v in ps.items()}
        elif self.vec_env is not None:
            # rl_core.md §5: an external env cannot be restored mid-episode: reset with a new seed
            self.restart_envs()
            self.exact_resume = False
            warnings.warn(f"{type(self).__name__}: environments cannot be restored mid-episode; "
                          f"they were reset with new seeds (exact_resume=False)", stacklevel=2)  # fmt: skip


def _set_threads(n: int | None) -> None:
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _local_ranks(trainer: Any) -> int:
    """Processes of this run on this machine (devices per node under DDP), 0 if unknown."""
    if trainer is None:
        return 0
    try:
        return int(trainer.world_size) // max(1, int(trainer.num_nodes))
    except (AttributeError, TypeError):
        return 0


class _SpaceView:
    def __init__(self, observation_space: Any, action_space: Any) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
