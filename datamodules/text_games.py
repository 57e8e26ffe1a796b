"""Text-game datamodules with a hybrid off-policy trajectory dataset (q_evolve.md §2, §5, §7).

One interface over several real text environments (adapters and supervised worker processes in
:mod:`datamodules.text_envs`): each step gives an observation, the admissible commands, a reward, done and
success. A datamodule owns the games and the dataset ``D = D_exp ∪ D_self``
(:class:`trainer.trajectories.TrajectoryStore`), which is part of its checkpoint state:

- **D_exp**: one ε-noisy expert episode per training game (q_evolve.md §7: with probability ε a random
  admissible command, otherwise the planner's next command; envs without a planner follow their gold path
  and ε is ignored), collected on first use.
- **D_self**: ``collect(agent, iteration)`` runs ``self_rollouts`` sampled episodes per training game with
  the current policy (``agent.choose_actions``), split across DDP ranks and gathered, so every rank holds the
  same dataset. Each episode samples with its own generator seeded from (seed, iteration, episode), so the
  data do not depend on the number of ranks.
- ``evaluate(agent, iteration)``: greedy episodes on the training games ("seen") and held-out games
  ("unseen"); success rate %, mean final score × 100, and three example trajectories.
- The training dataloader iterates the store each epoch in an epoch-seeded permutation, sharded over ranks
  (equal counts), over D_exp during BC and all of D afterwards (``module.data_subset()``).

Classes: :class:`ToyTextGameDataModule` (pure Python, for smoke and tests), :class:`TextWorldGamesDataModule`
(games generated offline once into a cache), :class:`TextWorldExpressDataModule`,
:class:`ScienceWorldDataModule`, and :class:`EtoTrajectoryDataModule` (paper scale: ETO expert trajectories
from a path the user provides).
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.text_envs import (
    TextEnvPool,
    TextStep,
    TextTask,
    check_java,
    generate_textworld_games,
    scienceworld_variations,
    validate_task,
)
from trainer.trajectories import Trajectory, TrajectoryStore

__all__ = [
    "EtoTrajectoryDataModule",
    "ScienceWorldDataModule",
    "TextWorldExpressDataModule",
    "TextWorldGamesDataModule",
    "ToyTextGameDataModule",
]


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(items: list[tuple[int, Any]]) -> list[Any]:
    """All ranks' ``(order key, item)`` pairs, sorted by key (identical on every rank)."""
    rank, world = _dist()
    if world > 1:
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, items)
        items = [x for p in parts for x in p]
    return [item for _, item in sorted(items, key=lambda kv: kv[0])]


class _StoreBatches(IterableDataset):
    """One epoch over the trajectory store: an epoch-seeded permutation, sharded over ranks, in batches."""

    def __init__(self, dm: "TextGamesDataModule") -> None:
        self.dm = dm

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dm = self.dm
        trainer = dm.trainer
        module = trainer.lightning_module if trainer is not None else None
        # The epoch these batches belong to. On a resumed run Lightning builds (and prefetches from) the first
        # iterator before it restores the epoch counter, so the datamodule keeps its own (checkpointed) count.
        epoch = max(dm.data_epoch, trainer.current_epoch if trainer is not None else 0)
        dm.data_epoch = epoch + 1
        dm.ensure_expert_data()
        for hook in list(dm.epoch_hooks.values()):  # e.g. collect D_self / relabel, before the first batch
            hook(epoch)
        subset = module.data_subset(epoch) if module is not None and hasattr(module, "data_subset") else None
        idx = dm.store.step_indices(subset)
        if not idx:
            raise RuntimeError(f"{type(dm).__name__}: the trajectory dataset has no {subset or ''} steps to train on")
        g = torch.Generator().manual_seed(_seed(dm.seed, "epoch", epoch))
        perm = [idx[int(i)] for i in torch.randperm(len(idx), generator=g)]
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        per_rank = max(1, len(perm) // world)
        mine = (perm * world)[rank * per_rank : (rank + 1) * per_rank]  # equal counts on every rank
        bs = dm.batch_size
        for s in range(0, len(mine), bs):
            yield TrajectoryStore.collate([dm.store.step_record(i) for i in mine[s : s + bs]])


class TextGamesDataModule(pl.LightningDataModule):
    """Base of the text-game datamodules (see the module docstring); subclasses list their tasks.

    Args:
        env: adapter name of :mod:`datamodules.text_envs`.
        batch_size: steps per minibatch (per rank).
        max_steps: step limit of an episode (truncation).
        num_envs: env worker processes used in lockstep during collection and evaluation.
        expert_epsilon: ε of the noisy expert (q_evolve.md §7: 0.3).
        self_rollouts: sampled episodes per training game per iteration (q_evolve.md §7: 2).
        eval_seen: training games evaluated as "seen" (None = all).
        in_process: run the envs in this process instead of worker processes.
        seed: seeds the expert noise, the collection generators and the epoch permutations.
        env_options: extra options of the adapter.
    """

    #: The trajectory dataset (with its advantages and logp_old) and the env-step count are identical on every
    #: rank; ``RankConsistencyCheck`` compares them.
    rank_identical_state = True

    def __init__(
        self,
        env: str,
        batch_size: int = 64,
        max_steps: int = 30,
        num_envs: int = 4,
        expert_epsilon: float = 0.3,
        self_rollouts: int = 2,
        eval_seen: int | None = None,
        in_process: bool = False,
        seed: int = 0,
        env_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or max_steps < 1 or num_envs < 1 or self_rollouts < 0:
            raise ValueError(f"{type(self).__name__}: batch_size, max_steps and num_envs must be >= 1, self_rollouts >= 0")
        if not 0.0 <= expert_epsilon <= 1.0:
            raise ValueError(f"{type(self).__name__}: expert_epsilon must lie in [0, 1], got {expert_epsilon}")
        self.env = env
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.num_envs = num_envs
        self.expert_epsilon = expert_epsilon
        self.self_rollouts = self_rollouts
        self.eval_seen = eval_seen
        self.in_process = in_process
        self.seed = seed
        self.env_options = dict(env_options or {})
        self.store = TrajectoryStore()
        self.env_steps = 0
        self._pool: TextEnvPool | None = None
        self._checked = False
        self.epoch_hooks: dict[str, Callable[[int], None]] = {}
        self.data_epoch = 0

    def add_epoch_hook(self, name: str, fn: Callable[[int], None]) -> None:
        """Run ``fn(epoch)`` when each epoch's data are first iterated, before any batch (one hook per ``name``)."""
        self.epoch_hooks[name] = fn

    # ------------------------------------------------------------------ tasks (subclasses)
    def train_tasks(self) -> list[TextTask]:  # pragma: no cover - abstract
        raise NotImplementedError

    def eval_tasks(self) -> list[TextTask]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if not self._checked:
            for task in [*self.train_tasks(), *self.eval_tasks()]:
                validate_task(task)  # unknown task names, missing game files, no Java: before training
            if not self.train_tasks():
                raise ValueError(f"{type(self).__name__}: no training tasks")
            self._checked = True

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StoreBatches(self), batch_size=None, num_workers=0)

    def teardown(self, stage: str | None = None) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def state_dict(self) -> dict[str, Any]:
        return {"store": self.store.state_dict(), "env_steps": self.env_steps, "data_epoch": self.data_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.store.load_state_dict(state_dict["store"])
        self.env_steps = int(state_dict["env_steps"])
        self.data_epoch = int(state_dict["data_epoch"])

    # ------------------------------------------------------------------ episodes
    @property
    def pool(self) -> TextEnvPool:
        if self._pool is None:
            self._pool = TextEnvPool(self.env, self.num_envs, self.env_options, in_process=self.in_process)
        return self._pool

    def run_episodes(
        self,
        tasks: Sequence[TextTask],
        decide: Callable[[list[tuple[int, TextStep]]], list[str]],
        source: str,
        iteration: int,
        on_reset: Callable[[int, int, TextStep], None] | None = None,
    ) -> list[Trajectory]:
        """Play one episode per task in lockstep over the env workers.

        ``decide([(episode, step), ...])`` returns one command per active episode; a command outside the
        admissible list is appended to that step's candidates (expert gold paths) so the stored index is valid.
        ``on_reset(episode, slot, first_step)`` runs right after each reset (where gold paths must be read).
        """
        if not tasks:
            return []
        pool = self.pool
        n_slots = min(self.num_envs, len(tasks))
        queue = list(range(len(tasks)))
        slot_ep: dict[int, int] = {}
        cur: dict[int, TextStep] = {}
        rec: dict[int, dict[str, Any]] = {}
        done: dict[int, Trajectory] = {}

        def start(slot: int) -> None:
            e = queue.pop(0)
            step = pool.reset(slot, tasks[e])
            if on_reset is not None:
                on_reset(e, slot, step)
            slot_ep[slot], cur[e] = e, step
            rec[e] = {"obs": [step.obs], "cands": [], "acts": [], "rew": [], "inv": [], "instruction": step.instruction}

        for s in range(n_slots):
            start(s)
        while slot_ep:
            slots = sorted(slot_ep)
            eps = [slot_ep[s] for s in slots]
            actions = decide([(e, cur[e]) for e in eps])
            for e, a in zip(eps, actions):
                cands = list(cur[e].admissible)
                if a not in cands:
                    cands.append(a)
                rec[e]["cands"].append(cands)
                rec[e]["acts"].append(cands.index(a))
            results = pool.step_many(slots, list(actions))
            for s, e, res in zip(slots, eps, results):
                r = rec[e]
                r["obs"].append(res.obs)
                r["rew"].append(float(res.reward))
                r["inv"].append(bool(res.invalid))
                cur[e] = res
                if res.done or len(r["acts"]) >= self.max_steps:
                    task = tasks[e]
                    done[e] = Trajectory(
                        task=(task.env, task.name, task.variation, task.split), instruction=r["instruction"],
                        observations=r["obs"], candidates=r["cands"], actions=r["acts"], rewards=r["rew"],
                        invalid=r["inv"], terminated=bool(res.done), success=bool(res.won), score=float(res.score),
                        source=source, iteration=iteration,
                    )  # fmt: skip
                    del slot_ep[s]
                    if queue:
                        start(s)
        return [done[e] for e in range(len(tasks))]

    def _mine(self, n: int) -> list[int]:
        rank, world = _dist()
        return list(range(rank, n, world))

    def expert_paths(self, tasks: Sequence[TextTask]) -> list[list[str]] | None:
        """Fixed expert command sequences per training task, or None to use the env's planner / gold path."""
        return None

    def ensure_expert_data(self) -> None:
        """Collect D_exp (one ε-noisy expert episode per training game) if the store has none yet.

        With a planner (``expert_next``) a random admissible command is taken with probability ε, else the
        planner's next command (q_evolve.md §7); without one the gold path read right after reset is followed.
        """
        if self.store.count("expert") > 0:
            return
        tasks = self.train_tasks()
        mine = self._mine(len(tasks))
        fixed = self.expert_paths([tasks[e] for e in mine])
        rngs = {local: random.Random(_seed(self.seed, "expert", e)) for local, e in enumerate(mine)}
        paths: dict[int, list[str]] = {}
        taken: dict[int, int] = {}
        eps = self.expert_epsilon

        def on_reset(local: int, slot: int, step: TextStep) -> None:
            if fixed is not None:
                paths[local] = fixed[local]
            elif step.expert_next is None:
                paths[local] = self.pool.gold_actions(slot)  # q_evolve.md §4: right after reset/load

        def decide(active: list[tuple[int, TextStep]]) -> list[str]:
            out = []
            for local, step in active:
                t = taken.get(local, 0)
                taken[local] = t + 1
                if local not in paths:
                    if step.admissible and rngs[local].random() < eps:  # q_evolve.md §7: ε-noisy expert
                        a = rngs[local].choice(list(step.admissible))
                    else:
                        a = step.expert_next or (step.admissible[0] if step.admissible else "look")
                else:
                    path = paths[local]
                    a = path[t] if t < len(path) else (step.admissible[0] if step.admissible else "look")
                out.append(a)
            return out

        trajs = self.run_episodes([tasks[e] for e in mine], decide, "expert", -1, on_reset)
        demos = _gather([(e, tr) for e, tr in zip(mine, trajs)])
        self.env_steps += sum(len(tr) for tr in demos)
        self.store.add(demos)

    def collect(self, agent: Any, iteration: int) -> dict[str, float]:
        """D_self ← D_self ∪ ``self_rollouts`` sampled episodes per training game with ``agent`` (q_evolve.md §3)."""
        self.ensure_expert_data()
        tasks = [t for t in self.train_tasks() for _ in range(self.self_rollouts)]
        mine = self._mine(len(tasks))
        gens = {e: torch.Generator().manual_seed(_seed(self.seed, "self", iteration, e)) for e in mine}
        trajs = self.run_episodes([tasks[e] for e in mine], self._agent_decider(agent, mine, gens, iteration), "self", iteration)
        new = _gather([(e, tr) for e, tr in zip(mine, trajs)])
        self.env_steps += sum(len(tr) for tr in new)
        self.store.add(new)
        return {
            "self_episodes": len(new),
            "self_success": 100.0 * sum(tr.success for tr in new) / max(1, len(new)),
            "env_steps": self.env_steps,
        }

    def _agent_decider(
        self, agent: Any, mine: list[int], gens: dict[int, torch.Generator] | None, iteration: int
    ) -> Callable[[list[tuple[int, TextStep]]], list[str]]:
        history: dict[int, list[tuple[str, str]]] = {}
        last_obs: dict[int, str] = {}

        def decide(active: list[tuple[int, TextStep]]) -> list[str]:
            states, cands = [], []
            for local, step in active:
                h = history.setdefault(local, [])
                if local in last_obs:
                    h[-1] = (h[-1][0], step.obs)
                states.append((step.instruction, tuple(h), step.obs))
                if not step.admissible:
                    raise RuntimeError(f"{type(self).__name__}: the env gave no admissible commands to choose from")
                cands.append(list(step.admissible))
            generators = [gens[mine[local]] for local, _ in active] if gens is not None else None
            picks = agent.choose_actions(states, cands, greedy=gens is None, generators=generators, iteration=iteration)
            out = []
            for (local, step), c, j in zip(active, cands, picks):
                history[local].append((c[j], ""))  # the reply is filled in at the next decision
                last_obs[local] = step.obs
                out.append(c[j])
            return out

        return decide

    def evaluate(self, agent: Any, iteration: int) -> dict[str, Any]:
        """Greedy episodes on seen (training) and unseen (held-out) games (q_evolve.md §3, "evaluate")."""
        seen = self.train_tasks()[: self.eval_seen] if self.eval_seen is not None else self.train_tasks()
        unseen = self.eval_tasks()
        tasks = [*seen, *unseen]
        mine = self._mine(len(tasks))
        trajs = self.run_episodes([tasks[e] for e in mine], self._agent_decider(agent, mine, None, iteration), "self", iteration)
        allt = _gather([(e, tr) for e, tr in zip(mine, trajs)])
        s, u = allt[: len(seen)], allt[len(seen) :]

        def rate(ts: list[Trajectory]) -> float:
            return 100.0 * sum(t.success for t in ts) / len(ts) if ts else float("nan")

        def score(ts: list[Trajectory]) -> float:
            return 100.0 * sum(t.score for t in ts) / len(ts) if ts else float("nan")

        return {
            "iteration": iteration, "success_seen": rate(s), "success_unseen": rate(u), "score_seen": score(s),
            "score_unseen": score(u), "env_steps": self.env_steps, "examples": (u or s)[:3],
        }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# concrete datamodules
# ----------------------------------------------------------------------------------------------------------


class ToyTextGameDataModule(TextGamesDataModule):
    """Generated pure-Python room games (``datamodules.text_envs`` toy adapter): smoke runs and tests.

    Args:
        num_train: training games (seeds ``0 .. num_train-1``).
        num_eval: held-out games (the next seeds).
        batch_size: steps per minibatch per rank. Default 32.
        max_steps: step limit of an episode (truncation). Default 12.
        num_envs: env worker processes used in lockstep for collection and evaluation. Default 4.
        expert_epsilon: ε of the noisy expert: a random admissible command with probability ε, else the
            planner's (q_evolve.md §7: 0.3).
        self_rollouts: sampled episodes per training game per iteration (§7: 2).
        eval_seen: training games evaluated as "seen" (None = all).
        in_process: run the envs in this process instead of worker processes. Default True.
        seed: seeds the expert noise, the collection generators and the epoch permutations. Default 0.
    """

    def __init__(
        self,
        num_train: int = 8,
        num_eval: int = 4,
        batch_size: int = 32,
        max_steps: int = 12,
        num_envs: int = 4,
        expert_epsilon: float = 0.3,
        self_rollouts: int = 2,
        eval_seen: int | None = None,
        in_process: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__("toy", batch_size, max_steps, num_envs, expert_epsilon, self_rollouts, eval_seen, in_process, seed)
        self.save_hyperparameters()
        self.num_train, self.num_eval = num_train, num_eval

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"num_train": 3, "num_eval": 2, "batch_size": 512, "max_steps": 8}

    def train_tasks(self) -> list[TextTask]:
        return [TextTask("toy", "rooms", i, "train") for i in range(self.num_train)]

    def eval_tasks(self) -> list[TextTask]:
        return [TextTask("toy", "rooms", self.num_train + i, "test") for i in range(self.num_eval)]


class TextWorldGamesDataModule(TextGamesDataModule):
    """TextWorld games generated offline (q_evolve.md §7): ``num_games`` seeds, the first ``num_train`` for training.

    Games are built once in ``prepare_data`` (rank 0; 6–40 s each) into a cache keyed by the options and seed,
    or ``game_files`` names compiled games to use instead (the first ``num_train`` train, the rest held out).

    Args:
        num_games: games generated (seeds ``seed_offset ..``); §7: 50.
        num_train: training games; §7: 40 (the other 10 are held out).
        nb_rooms: rooms per game (§7: 3).
        nb_objects: objects per game (§7: 6).
        quest_length: quest length (§7: 4).
        seed_offset: first generator seed.
        game_files: compiled game files to use instead of generating (paths).
        cache_dir: where generated games go (default: ``trainer.text.default_cache_dir()/textworld``).
        batch_size: steps per minibatch per rank. Default 64.
        max_steps: step limit of an episode (truncation). Default 30.
        num_envs: env worker processes used in lockstep for collection and evaluation. Default 4.
        expert_epsilon: ε of the noisy expert: a random admissible command with probability ε, else the
            planner's (q_evolve.md §7: 0.3).
        self_rollouts: sampled episodes per training game per iteration (§7: 2).
        eval_seen: training games evaluated as "seen" (None = all).
        in_process: run the envs in this process instead of worker processes. Default False.
        seed: seeds the expert noise, the collection generators and the epoch permutations. Default 0.
    """

    def __init__(
        self,
        num_games: int = 50,
        num_train: int = 40,
        nb_rooms: int = 3,
        nb_objects: int = 6,
        quest_length: int = 4,
        seed_offset: int = 0,
        game_files: tuple[str, ...] | None = None,
        cache_dir: str | None = None,
        batch_size: int = 64,
        max_steps: int = 30,
        num_envs: int = 4,
        expert_epsilon: float = 0.3,
        self_rollouts: int = 2,
        eval_seen: int | None = None,
        in_process: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__("textworld", batch_size, max_steps, num_envs, expert_epsilon, self_rollouts, eval_seen, in_process, seed)
        self.save_hyperparameters()
        n = len(game_files) if game_files else num_games
        if not 0 < num_train <= n:
            raise ValueError(f"TextWorldGamesDataModule: num_train must lie in 1..{n}, got {num_train}")
        self.num_games, self.num_train = num_games, num_train
        self.game_options = {"nb_rooms": nb_rooms, "nb_objects": nb_objects, "quest_length": quest_length}
        self.seeds = list(range(seed_offset, seed_offset + num_games))
        self.game_files = [str(p) for p in game_files] if game_files else None
        self.cache_dir = cache_dir
        self._paths: list[str] | None = None

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"num_games": 2, "num_train": 1, "quest_length": 2, "nb_objects": 3, "batch_size": 512, "max_steps": 6,
                "num_envs": 1, "in_process": True}  # fmt: skip

    def _game_paths(self) -> list[str]:
        """The compiled games: ``game_files``, or the cached generated games (built now if missing)."""
        if self.game_files is not None:
            return self.game_files
        if self._paths is None:
            paths = generate_textworld_games(self.seeds, Path(self.cache_dir) if self.cache_dir else None, **self.game_options)
            self._paths = [str(p) for p in paths]
        return self._paths

    def prepare_data(self) -> None:
        self._game_paths()  # rank 0 generates (q_evolve.md §4: once, into a cache keyed by options and seed)

    def train_tasks(self) -> list[TextTask]:
        return [TextTask("textworld", p, 0, "train") for p in self._game_paths()[: self.num_train]]

    def eval_tasks(self) -> list[TextTask]:
        return [TextTask("textworld", p, 0, "test") for p in self._game_paths()[self.num_train :]]


class TextWorldExpressDataModule(TextGamesDataModule):
    """TextWorldExpress games (q_evolve.md §7 "Other variants"): ``num_train`` train-fold seeds and
    ``num_eval`` test-fold seeds of one game; the gold path is the expert (no planner, so ε is not used).

    Args:
        game: TextWorldExpress game name (``cookingworld``, ``coin``, ``twc``, ``mapreader``, ...).
        game_params: its parameter string (e.g. ``"numLocations=3,numIngredients=2,numDistractorItems=2"``).
        num_train: training games (train fold seeds ``0..``).
        num_eval: held-out games (test fold seeds ``0..``).
        batch_size: steps per minibatch per rank. Default 64.
        max_steps: step limit of an episode (truncation). Default 30.
        num_envs: env worker processes used in lockstep for collection and evaluation. Default 4.
        expert_epsilon: ε of the noisy expert: a random admissible command with probability ε, else the
            planner's (q_evolve.md §7: 0.3); unused: TextWorldExpress has no planner, its gold path is followed.
        self_rollouts: sampled episodes per training game per iteration (§7: 2).
        eval_seen: training games evaluated as "seen" (None = all).
        in_process: run the envs in this process instead of worker processes. Default False.
        seed: seeds the expert noise, the collection generators and the epoch permutations. Default 0.
    """

    def __init__(
        self,
        game: str = "cookingworld",
        game_params: str = "",
        num_train: int = 40,
        num_eval: int = 10,
        batch_size: int = 64,
        max_steps: int = 30,
        num_envs: int = 4,
        expert_epsilon: float = 0.3,
        self_rollouts: int = 2,
        eval_seen: int | None = None,
        in_process: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__("twx", batch_size, max_steps, num_envs, expert_epsilon, self_rollouts, eval_seen, in_process, seed,
                         {"game_params": game_params})  # fmt: skip
        self.save_hyperparameters()
        self.game, self.num_train, self.num_eval = game, num_train, num_eval

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"num_train": 2, "num_eval": 1, "batch_size": 512, "max_steps": 8, "num_envs": 1, "in_process": True}

    def setup(self, stage: str | None = None) -> None:
        check_java()
        super().setup(stage)

    def train_tasks(self) -> list[TextTask]:
        return [TextTask("twx", self.game, i, "train") for i in range(self.num_train)]

    def eval_tasks(self) -> list[TextTask]:
        return [TextTask("twx", self.game, i, "test") for i in range(self.num_eval)]


class ScienceWorldDataModule(TextGamesDataModule):
    """ScienceWorld tasks (q_evolve.md §7): for each task, ``train_variations`` variations of its train split and
    ``eval_variations`` of its test split; gold paths as expert demos; sparse reward score/100 at the end.

    Args:
        tasks: ScienceWorld task names (§7: find-living-thing, find-non-living-thing, find-plant).
        train_variations: training variations per task (§7: 5).
        eval_variations: held-out variations per task (§7: 3).
        simplifications: ScienceWorld simplification preset (``"easy"``).
        batch_size: steps per minibatch per rank. Default 64.
        max_steps: step limit of an episode (truncation). Default 30.
        num_envs: env worker processes used in lockstep for collection and evaluation. Default 2.
        expert_epsilon: ε of the noisy expert: a random admissible command with probability ε, else the
            planner's (q_evolve.md §7: 0.3); unused: ScienceWorld has no planner, its gold path is followed.
        self_rollouts: sampled episodes per training game per iteration (§7: 2).
        eval_seen: training games evaluated as "seen" (None = all).
        in_process: run the envs in this process instead of worker processes. Default False.
        seed: seeds the expert noise, the collection generators and the epoch permutations. Default 0.
    """

    def __init__(
        self,
        tasks: tuple[str, ...] = ("find-living-thing", "find-non-living-thing", "find-plant"),
        train_variations: int = 5,
        eval_variations: int = 3,
        simplifications: str = "easy",
        batch_size: int = 64,
        max_steps: int = 30,
        num_envs: int = 2,
        expert_epsilon: float = 0.3,
        self_rollouts: int = 2,
        eval_seen: int | None = None,
        in_process: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__("scienceworld", batch_size, max_steps, num_envs, expert_epsilon, self_rollouts, eval_seen,
                         in_process, seed, {"simplifications": simplifications})  # fmt: skip
        self.save_hyperparameters()
        self.tasks, self.train_variations, self.eval_variations = tuple(tasks), train_variations, eval_variations
        self._variations: dict[tuple[str, str], list[int]] = {}

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"tasks": ("find-living-thing",), "train_variations": 1, "eval_variations": 1, "batch_size": 512,
                "max_steps": 6, "num_envs": 1, "in_process": True}  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        check_java()
        super().setup(stage)

    def _vars(self, task: str, split: str) -> list[int]:
        if (task, split) not in self._variations:
            self._variations[(task, split)] = list(scienceworld_variations(task, split))
        return self._variations[(task, split)]

    def train_tasks(self) -> list[TextTask]:
        return [TextTask("scienceworld", t, v, "train") for t in self.tasks for v in self._vars(t, "train")[: self.train_variations]]

    def eval_tasks(self) -> list[TextTask]:
        return [TextTask("scienceworld", t, v, "test") for t in self.tasks for v in self._vars(t, "test")[: self.eval_variations]]


class EtoTrajectoryDataModule(TextGamesDataModule):
    """Paper scale (q_evolve.md §2, §5): ETO SFT trajectories (``agent-eto/eto-sft-trajectory``) as D_exp.

    The ETO files cannot be downloaded here: ``data_path`` names a local folder or JSON file the user provides
    (a list of records with ``id`` and ``conversations`` of ``human``/``gpt`` turns, the ETO format). Rollouts and
    evaluation need the environment: ``scienceworld`` runs offline; ``alfworld`` needs the ``alfworld`` package and
    its game files under ``game_path`` (``alfworld-download`` on a networked machine); WebShop is not installable
    offline (q_evolve.md §4), so ``webshop`` fails with a message naming what is missing.

    Args:
        benchmark: ``"alfworld"``, ``"webshop"`` or ``"sciworld"``.
        data_path: the ETO trajectory JSON file or a folder holding ``<benchmark>_sft.json``.
        game_path: ALFWorld game files (``$ALFWORLD_DATA``); unused otherwise.
        batch_size: steps per minibatch per rank. Default 8.
        max_steps: step limit of an episode (q_evolve.md §3 Defaults: ALFWorld 40, WebShop 15, SciWorld 30).
        num_envs: env worker processes. Default 4.
        self_rollouts: sampled episodes per training task per iteration. Default 1.
        seed: seeds the collection generators and the epoch permutations. Default 0.
    """

    BENCHMARKS = ("alfworld", "webshop", "sciworld")

    def __init__(
        self,
        benchmark: str,
        data_path: str,
        game_path: str | None = None,
        batch_size: int = 8,
        max_steps: int = 40,
        num_envs: int = 4,
        self_rollouts: int = 1,
        seed: int = 0,
    ) -> None:
        if benchmark not in self.BENCHMARKS:
            raise ValueError(f"EtoTrajectoryDataModule: benchmark must be one of {self.BENCHMARKS}, got {benchmark!r}")
        super().__init__("scienceworld" if benchmark == "sciworld" else benchmark, batch_size, max_steps, num_envs,
                         0.0, self_rollouts, None, False, seed)  # fmt: skip
        self.save_hyperparameters()
        self.benchmark, self.data_path, self.game_path = benchmark, data_path, game_path

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"benchmark": "sciworld", "data_path": "eto-sciworld.json"}

    def _file(self) -> Path:
        p = Path(os.path.expanduser(self.data_path))
        if p.is_dir():
            p = p / f"{self.benchmark}_sft.json"
        if not p.is_file():
            raise FileNotFoundError(
                f"ETO trajectories not found at {p}: download `agent-eto/eto-sft-trajectory` on a networked machine "
                f"and set data.init_args.data_path to the folder (or to {self.benchmark}_sft.json)"
            )
        return p

    def setup(self, stage: str | None = None) -> None:
        self._file()
        if self.benchmark == "webshop":
            raise ValueError(
                "WebShop cannot run here: the webshop package lacks web_agent_site, its product data and search index "
                "(q_evolve.md §4); install WebShop from its repository with its data and provide an adapter"
            )
        if self.benchmark == "alfworld":
            if self.game_path is None or not Path(os.path.expanduser(self.game_path)).is_dir():
                raise FileNotFoundError(
                    f"ALFWorld game files not found at {self.game_path!r}: run `alfworld-download` on a networked "
                    "machine and set data.init_args.game_path to that folder ($ALFWORLD_DATA)"
                )
            raise ValueError("EtoTrajectoryDataModule: the ALFWorld game adapter needs the `alfworld` extra, not installed here")
        check_java()
        self._checked = True

    def train_tasks(self) -> list[TextTask]:
        return [TextTask("scienceworld", t, v, "train") for t, v in self._eto_records()]

    def eval_tasks(self) -> list[TextTask]:
        return []

    def _records(self) -> list[dict[str, Any]]:
        records = json.loads(self._file().read_text())
        if not isinstance(records, list):
            raise ValueError(f"{self._file()}: expected a JSON list of ETO records with 'id' and 'conversations'")
        return records

    def _eto_records(self) -> dict[tuple[str, int], dict[str, Any]]:
        """``(task, variation) -> record`` for the records whose id reads ``<task>_<variation>``."""
        out = {}
        for r in self._records():
            task, _, var = str(r.get("id", "")).rpartition("_")
            if task and var.isdigit():
                out[(task, int(var))] = r
        return out

    @staticmethod
    def eto_actions(record: dict[str, Any]) -> list[str]:
        """The commands of one ETO record: the ``Action:`` line of every ``gpt`` turn, in order."""
        actions = []
        for turn in record.get("conversations", []):
            if turn.get("from") != "gpt":
                continue
            for line in reversed(str(turn.get("value", "")).splitlines()):
                if line.strip().lower().startswith("action:"):
                    actions.append(line.split(":", 1)[1].strip())
                    break
        return actions

    def expert_paths(self, tasks: Sequence[TextTask]) -> list[list[str]] | None:
        """D_exp: the ETO commands replayed in the env (so every step has its admissible commands)."""
        records = self._eto_records()
        return [self.eto_actions(records[(t.name, t.variation)]) for t in tasks]
