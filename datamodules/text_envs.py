"""Text-game environments behind one interface, and a supervised pool of env worker processes.

Used by ``datamodules/text_games.py`` (Q-Evolve, q_evolve.md §4, §5; ENVIRONMENT.md §4). No Lightning and no
torch here: the pool's worker processes import only this file (and their env's package), so a worker starts in
0.1 s (toy), 1 s (TextWorld) or 0.4-2 s (a JVM env).

**Interface.** A game instance is a picklable :class:`TextTask`; every adapter has ``reset(task) ->
TextStep``, ``step(action) -> TextStep``, ``gold_actions() -> list[str]`` (the full expert solution from the
state right after the latest reset; calling it after a step raises :class:`TextEnvUsageError`) and
``close()``. :func:`make_adapter` builds one by env name:

- ``"toy"`` (:class:`ToyTextAdapter`): pure-Python room games generated from the seed ``task.variation``:
  3-4 rooms on a grid, 4-6 items, 2-3 containers and a goal "put the X in the Y" solved in 3-8 steps; an
  exact BFS planner gives ``expert_next`` and the gold path. About 20 µs a step.
- ``"textworld"`` (:class:`TextWorldAdapter`): compiled TextWorld games (``task.name`` is the ``.z8`` path),
  made by :func:`generate_textworld_games` into a cache keyed by options and seed. The gym env returns the
  **cumulative** score: the reward is its difference (:func:`score_deltas`) over ``max_score``; ``won`` is
  the engine's flag; ``expert_next`` is the first of ``policy_commands`` (the planner recomputes from the
  current state); the gold path is the walkthrough (q_evolve.md §4).
- ``"twx"`` (:class:`TextWorldExpressAdapter`): TextWorldExpress games (``task.name`` the game, e.g.
  ``"cookingworld"``, ``task.variation`` the seed, ``task.split`` the game fold); gold from
  ``generateGoldPath=True``; no planner.
- ``"scienceworld"`` (:class:`ScienceWorldAdapter`): ScienceWorld tasks (``task.variation`` the variation
  index). Score 0-100, −100 = failed (``lost``). r_env is **sparse**: final score / 100 (clipped to [0, 1])
  on the step the episode ends, 0 before (``dense_rewards=True`` gives clipped score deltas / 100). The gold
  path is read right after ``load()`` (the mendelian gold path is random and fails after ``reset()``), and a
  reset always reloads. Steps go straight to the Java server; valid actions (the slow part of
  ``env.step``) are asked for only with ``valid_actions=True``. No planner.

**Errors before training.** :func:`validate_task` rejects an unknown env or task name, a bad split and a
missing game file, and :func:`check_java` a missing Java runtime, each with a one-line ``ValueError`` /
``FileNotFoundError``; neither starts a JVM. :func:`scienceworld_variations` lists a task's train/dev/test
variation indices (it starts one JVM, once per process and task).

**Pool.** :class:`TextEnvPool` runs one adapter per slot in a worker process (a fresh interpreter that runs
this file, talking over a socket pair; ``in_process=True`` keeps the adapters in the calling process).
``step_many`` (and ``reset_many``) send every command first and then collect the replies, so the slots run
concurrently. If a worker dies, times out or its adapter raises (a dead JVM), the pool kills it (its process
group, so its JVM goes too), starts a fresh one, resets the slot's task, replays the episode's actions (text
envs are deterministic given the task) and retries the call; ``restarts`` counts this. ``max_consecutive_failures``
consecutive failures of one slot raise a one-line ``RuntimeError`` naming the env, the task and the last
error. Input errors (``ValueError``, ``FileNotFoundError``, :class:`TextEnvUsageError`) raised by an adapter
are re-raised as they are, without a restart.

Deviation from the brief: workers are started with ``subprocess`` (``sys.executable`` running this file over
an inherited socket pair, wrapped in a ``multiprocessing.connection.Connection``) rather than a
``multiprocessing`` spawn context. A spawn child re-imports the parent's ``__main__`` (the trainer CLI) and
this module's package (``datamodules/__init__`` imports Lightning): up to 8 s per worker start and restart
on this machine. The child is still a fresh interpreter, as with spawn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "JAVA_ENVS",
    "KNOWN_ENVS",
    "SPLITS",
    "TOY_GAMES",
    "ScienceWorldAdapter",
    "TextEnvAdapter",
    "TextEnvPool",
    "TextEnvUsageError",
    "TextStep",
    "TextTask",
    "TextWorldAdapter",
    "TextWorldExpressAdapter",
    "ToyTextAdapter",
    "check_java",
    "clean_textworld_feedback",
    "generate_textworld_games",
    "make_adapter",
    "normalise_command",
    "score_deltas",
    "scienceworld_task_names",
    "scienceworld_variations",
    "textworld_cache_key",
    "twx_game_names",
    "validate_task",
]

log = logging.getLogger(__name__)

#: Env names :func:`make_adapter` knows.
KNOWN_ENVS: tuple[str, ...] = ("toy", "textworld", "twx", "scienceworld")
#: Envs that run on a JVM (py4j) and need ``java`` on PATH.
JAVA_ENVS: tuple[str, ...] = ("twx", "scienceworld")
#: Game names of the toy env.
TOY_GAMES: tuple[str, ...] = ("rooms",)
#: Splits (TextWorldExpress game folds, ScienceWorld variation sets).
SPLITS: tuple[str, ...] = ("train", "dev", "test")

_JAVA_MESSAGE = ("Java 17 runtime not found: ScienceWorld and TextWorldExpress need `java` on PATH "
                 "(apt install openjdk-17-jre-headless)")


# ----------------------------------------------------------------------------------------------------
# Data types and shared helpers
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextTask:
    """Picklable identity of one game instance.

    Attributes:
        env: ``"toy"``, ``"textworld"``, ``"twx"`` or ``"scienceworld"``.
        name: toy: ``"rooms"``; textworld: path of a compiled ``.z8`` / ``.ulx`` game file; twx: game name
            (``"cookingworld"``); scienceworld: task name (``"find-living-thing"``).
        variation: toy: generator seed; textworld: unused (0); twx: seed; scienceworld: variation index.
        split: twx game fold ``"train"`` / ``"dev"`` / ``"test"``; informative elsewhere.
    """

    env: str
    name: str
    variation: int = 0
    split: str = "train"


@dataclass
class TextStep:
    """What an adapter returns after a reset or a step.

    Attributes:
        obs: what the agent reads now (the env's feedback; at reset the intro and the room description).
        instruction: the goal text, constant within an episode.
        admissible: the admissible commands, sorted; ``[]`` if unknown.
        score: normalised score so far, in [0, 1].
        reward: r_env of the step just taken (0.0 at reset).
        done: the env ended the episode (won, lost or out of steps).
        won: the task was completed.
        lost: the task was failed.
        invalid: the env did not understand the action, or it was not admissible.
        expert_next: the planner's next command from this state, or None if the env has no planner.
    """

    obs: str
    instruction: str
    admissible: list[str] = field(default_factory=list)
    score: float = 0.0
    reward: float = 0.0
    done: bool = False
    won: bool = False
    lost: bool = False
    invalid: bool = False
    expert_next: str | None = None


class TextEnvUsageError(RuntimeError):
    """An adapter was used out of order (a step before any reset, gold actions after a step)."""


class TextEnvAdapter(Protocol):
    """What every adapter offers (the pool and the datamodules rely on nothing else)."""

    def reset(self, task: TextTask) -> TextStep:
        """Start an episode of ``task``."""
        ...

    def step(self, action: str) -> TextStep:
        """Take one command."""
        ...

    def gold_actions(self) -> list[str]:
        """The expert solution from the state right after the latest reset."""
        ...

    def close(self) -> None:
        """Release the env (its JVM, its interpreter)."""
        ...


def score_deltas(scores: Sequence[float], max_score: float = 1.0) -> list[float]:
    """Per-step rewards from cumulative scores: ``[0, s1 - s0, s2 - s1, ...] / max_score``.

    TextWorld's gym ``step`` returns the cumulative score (q_evolve.md §4); ``scores[0]`` is the score at
    reset, whose reward is 0. ``score_deltas([0, 1, 1, 3]) == [0, 1, 0, 2]``.

    Args:
        scores: cumulative scores, the first at reset.
        max_score: the game's maximum score (> 0), to normalise by.
    """
    if max_score <= 0:
        raise ValueError(f"score_deltas: max_score must be > 0, got {max_score}")
    out: list[float] = []
    for i, s in enumerate(scores):
        out.append(0.0 if i == 0 else (float(s) - float(scores[i - 1])) / float(max_score))
    return out


def normalise_command(command: str) -> str:
    """Lower-case a command and collapse its whitespace (how commands are compared to admissible lists)."""
    return " ".join(str(command).lower().split())


def _is_admissible(action: str, admissible: Sequence[str]) -> bool:
    """Whether ``action`` is one of ``admissible`` (True when the list is unknown, i.e. empty)."""
    if not admissible:
        return True
    return normalise_command(action) in {normalise_command(a) for a in admissible}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def check_java() -> None:
    """Raise a one-line ``ValueError`` if no ``java`` is on PATH (ScienceWorld and TextWorldExpress need it)."""
    if shutil.which("java") is None:
        raise ValueError(_JAVA_MESSAGE)


def scienceworld_task_names() -> list[str]:
    """The 30 ScienceWorld task names, read from the package's ``tasks.json`` (no JVM)."""
    try:
        from scienceworld.constants import TASKS
    except ImportError as exc:
        raise ValueError(f"scienceworld is not installed ({exc}); pip install scienceworld==1.2.3") from None
    return sorted(str(t["task_name"]) for t in TASKS)


def twx_game_names() -> list[str]:
    """The TextWorldExpress game names (``textworld_express.GAME_NAMES``, no JVM)."""
    try:
        from textworld_express.constants import GAME_NAMES
    except ImportError as exc:
        raise ValueError(f"textworld-express is not installed ({exc}); pip install textworld-express==1.1.0") from None
    return list(GAME_NAMES)


def validate_task(task: TextTask) -> None:
    """Check a task before training: env, game or task name, split, game file, Java; starts nothing.

    Raises:
        ValueError: unknown env, toy game, TextWorldExpress game or ScienceWorld task (the message lists the
            known names), a split not in :data:`SPLITS`, a negative variation, no Java for a JVM env.
        FileNotFoundError: a TextWorld game file (or the ``.json`` next to it) that does not exist.
    """
    if not isinstance(task, TextTask):
        raise ValueError(f"validate_task: expected a TextTask, got {type(task).__name__}")
    if task.env not in KNOWN_ENVS:
        raise ValueError(f"unknown text env {task.env!r}; known envs: {', '.join(KNOWN_ENVS)}")
    if task.split not in SPLITS:
        raise ValueError(f"{task.env}: unknown split {task.split!r}; known splits: {', '.join(SPLITS)}")
    if int(task.variation) < 0:
        raise ValueError(f"{task.env}: variation must be >= 0, got {task.variation}")
    if task.env == "toy":
        if task.name not in TOY_GAMES:
            raise ValueError(f"toy: unknown game {task.name!r}; known games: {', '.join(TOY_GAMES)}")
    elif task.env == "textworld":
        _check_textworld_file(task.name)
    elif task.env == "twx":
        names = twx_game_names()
        if task.name not in names:
            raise ValueError(f"twx: unknown TextWorldExpress game {task.name!r}; known games: {', '.join(names)}")
        check_java()
    elif task.env == "scienceworld":
        names = scienceworld_task_names()
        if task.name not in names:
            raise ValueError(f"scienceworld: unknown ScienceWorld task {task.name!r}; known tasks: {', '.join(names)}")
        check_java()


def _check_textworld_file(path: str | os.PathLike[str]) -> Path:
    """The game file as a ``Path``; ``FileNotFoundError`` naming it (or its ``.json``) if missing."""
    game = Path(path)
    if not game.is_file():
        raise FileNotFoundError(f"textworld: game file not found: {game}")
    meta = game.with_suffix(".json")
    if not meta.is_file():
        raise FileNotFoundError(f"textworld: game metadata not found: {meta} (needed for admissible commands, "
                                f"the planner and the walkthrough; regenerate the game)")
    return game


class _AdapterBase:
    """Bookkeeping shared by the adapters: the current task, steps since reset, and the gold path."""

    env_name = ""

    def __init__(self) -> None:
        self._task: TextTask | None = None
        self._steps = 0
        self._gold: list[str] | None = None

    def _begin(self, task: TextTask) -> None:
        if task.env != self.env_name:
            raise ValueError(f"{type(self).__name__}: task is for env {task.env!r}, not {self.env_name!r}")
        validate_task(task)

    def _check_started(self) -> None:
        if self._task is None:
            raise TextEnvUsageError(f"{type(self).__name__}: call reset(task) before step()")

    def gold_actions(self) -> list[str]:
        """The full expert solution from the state right after the latest reset.

        Raises:
            TextEnvUsageError: no reset yet, or a step was taken since the latest reset.
        """
        if self._task is None or self._gold is None:
            raise TextEnvUsageError(f"{type(self).__name__}: gold_actions() needs a reset(task) first")
        if self._steps:
            raise TextEnvUsageError(f"{type(self).__name__}: gold_actions() must be called right after reset(); "
                                    f"{self._steps} step(s) were taken since")
        return list(self._gold)


# ----------------------------------------------------------------------------------------------------
# Toy room games (pure Python)
# ----------------------------------------------------------------------------------------------------

_TOY_ROOMS = ("kitchen", "hallway", "study", "garden", "cellar", "attic", "library", "pantry", "bedroom",
              "workshop", "bathroom", "porch", "greenhouse", "office")
_TOY_COLOURS = ("red", "blue", "green", "yellow", "silver", "black", "white", "golden", "purple", "orange")
_TOY_ITEMS = ("key", "book", "apple", "coin", "lamp", "scarf", "cup", "ball", "hammer", "candle", "map", "ring")
_TOY_MATERIALS = ("wooden", "iron", "wicker", "glass", "leather", "oak", "tin", "stone")
_TOY_CONTAINERS = ("chest", "box", "basket", "cabinet", "crate", "drawer", "trunk", "bin")
_TOY_DIRS: dict[str, tuple[int, int]] = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
_TOY_OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
_TOY_GOALS = ("Put the {item} in the {box}.", "Find the {item} and put it in the {box}.",
              "Your task is to place the {item} inside the {box}.", "Store the {item} in the {box}.")
#: Item locations: ``r >= 0`` the floor of room ``r``; ``INV`` the inventory; ``-(2 + c)`` inside container ``c``.
_INV = -1


def _inside(c: int) -> int:
    return -(2 + c)


def _container_of(loc: int) -> int | None:
    return -loc - 2 if loc <= -2 else None


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


@dataclass(frozen=True)
class _ToyWorld:
    """One generated toy game: map, containers, items, start, goal (immutable; the state lives apart)."""

    seed: int
    rooms: tuple[str, ...]
    exits: tuple[dict[str, int], ...]
    containers: tuple[str, ...]
    container_room: tuple[int, ...]
    items: tuple[str, ...]
    start_room: int
    start_locs: tuple[int, ...]
    start_open: tuple[bool, ...]
    goal_item: int
    goal_box: int
    instruction: str


#: Planner state: (player room, goal item location, open flags of the containers). The other items never
#: help or hinder the goal (no capacity limits, nothing locks), so this abstraction keeps the plan optimal.
_PlanState = tuple[int, int, tuple[bool, ...]]


def _toy_plan_moves(world: _ToyWorld, state: _PlanState) -> list[tuple[str, _PlanState]]:
    """The (command, next state) pairs that can change a planner state, sorted by command."""
    room, loc, opened = state
    item = world.items[world.goal_item]
    moves: list[tuple[str, _PlanState]] = []
    for d, r in world.exits[room].items():
        moves.append((f"go {d}", (r, loc, opened)))
    for c, cr in enumerate(world.container_room):
        if cr != room:
            continue
        if not opened[c]:
            moves.append((f"open {world.containers[c]}", (room, loc, opened[:c] + (True,) + opened[c + 1:])))
        elif loc == _INV:
            moves.append((f"put {item} in {world.containers[c]}", (room, _inside(c), opened)))
    box = _container_of(loc)
    if loc == room or (box is not None and world.container_room[box] == room and opened[box]):
        moves.append((f"take {item}", (room, _INV, opened)))
    if loc == _INV:
        moves.append((f"drop {item}", (room, room, opened)))
    moves.sort()
    return moves


def _toy_policy(world: _ToyWorld, start: _PlanState) -> dict[_PlanState, str | None]:
    """An optimal policy over every planner state reachable from ``start`` (BFS; ties to the first command).

    Maps a state to the command that starts a shortest path to the goal, or None at the goal.
    """
    goal_loc = _inside(world.goal_box)
    edges: dict[_PlanState, list[tuple[str, _PlanState]]] = {}
    queue: deque[_PlanState] = deque([start])
    while queue:  # every reachable state and its moves
        s = queue.popleft()
        if s in edges:
            continue
        edges[s] = [] if s[1] == goal_loc else _toy_plan_moves(world, s)
        queue.extend(n for _, n in edges[s] if n not in edges)
    parents: dict[_PlanState, list[_PlanState]] = {s: [] for s in edges}
    for s, moves in edges.items():
        for _, n in moves:
            parents[n].append(s)
    dist = {s: 0 for s in edges if s[1] == goal_loc}
    queue = deque(dist)
    while queue:  # distances to the goal, backwards
        s = queue.popleft()
        for p in parents[s]:
            if p not in dist:
                dist[p] = dist[s] + 1
                queue.append(p)
    policy: dict[_PlanState, str | None] = {}
    for s, moves in edges.items():
        if s[1] == goal_loc:
            policy[s] = None
            continue
        best = [(a, n) for a, n in moves if n in dist and dist[n] == dist.get(s, -2) - 1]
        policy[s] = best[0][0] if best else None
    return policy


def _toy_gold(world: _ToyWorld) -> list[str]:
    """The optimal solution from the start, following :func:`_toy_policy`."""
    state: _PlanState = (world.start_room, world.start_locs[world.goal_item], world.start_open)
    policy = _toy_policy(world, state)
    path: list[str] = []
    while policy.get(state) is not None:
        action = policy[state]
        path.append(str(action))
        state = dict(_toy_plan_moves(world, state))[str(action)]
    return path


def _toy_world(seed: int) -> _ToyWorld:
    """Generate the toy game of ``seed`` (deterministic: one ``random.Random(seed)``; solution 3-8 steps)."""
    rng = random.Random(int(seed))
    while True:
        n_rooms = rng.choice((3, 3, 4))
        rooms = tuple(rng.sample(_TOY_ROOMS, n_rooms))
        pos = [(0, 0)]
        exits: list[dict[str, int]] = [{}]
        for i in range(1, n_rooms):  # grow a tree on the grid: exits always agree with compass directions
            while True:
                j = rng.randrange(i)
                d = rng.choice(sorted(_TOY_DIRS))
                cell = (pos[j][0] + _TOY_DIRS[d][0], pos[j][1] + _TOY_DIRS[d][1])
                if cell not in pos:
                    break
            pos.append(cell)
            exits.append({})
            exits[j][d] = i
            exits[i][_TOY_OPPOSITE[d]] = j
        for i in range(n_rooms):  # sometimes close a loop between grid neighbours: a small graph, not a line
            for j in range(i + 1, n_rooms):
                for d, (dx, dy) in sorted(_TOY_DIRS.items()):
                    if (pos[i][0] + dx, pos[i][1] + dy) == pos[j] and d not in exits[i] and rng.random() < 0.5:
                        exits[i][d] = j
                        exits[j][_TOY_OPPOSITE[d]] = i
        n_boxes = rng.choice((2, 3))
        materials = rng.sample(_TOY_MATERIALS, n_boxes)
        kinds = rng.sample(_TOY_CONTAINERS, n_boxes)
        containers = tuple(f"{m} {k}" for m, k in zip(materials, kinds))
        container_room = tuple(rng.randrange(n_rooms) for _ in range(n_boxes))
        start_open = tuple(rng.random() < 0.3 for _ in range(n_boxes))
        n_items = rng.randint(4, 6)
        names: list[str] = []
        while len(names) < n_items:
            name = f"{rng.choice(_TOY_COLOURS)} {rng.choice(_TOY_ITEMS)}"
            if name not in names:
                names.append(name)
        locs = tuple(_inside(rng.randrange(n_boxes)) if rng.random() < 0.4 else rng.randrange(n_rooms)
                     for _ in range(n_items))
        start_room = rng.randrange(n_rooms)
        goal_item = rng.randrange(n_items)
        choices = [c for c in range(n_boxes) if locs[goal_item] != _inside(c)]
        goal_box = rng.choice(choices)
        template = rng.choice(_TOY_GOALS)
        world = _ToyWorld(
            seed=int(seed), rooms=rooms, exits=tuple(exits), containers=containers, container_room=container_room,
            items=tuple(names), start_room=start_room, start_locs=locs, start_open=start_open, goal_item=goal_item,
            goal_box=goal_box, instruction=template.format(item=names[goal_item], box=containers[goal_box]),
        )
        if 3 <= len(_toy_gold(world)) <= 8:
            return world


class ToyTextAdapter(_AdapterBase):
    """Pure-Python deterministic room games (``env="toy"``, ``task.name="rooms"``, seed ``task.variation``).

    Commands: ``go <dir>``, ``take <item>``, ``drop <item>``, ``open <container>``, ``put <item> in
    <container>``, ``look``, ``inventory``. ``admissible`` lists the commands valid now (always with ``look``
    and ``inventory``); anything else is ``invalid`` (an unknown verb reads "I don't understand that.").
    Reaching the goal gives reward 1.0, ``won`` and ``done``; ``max_steps`` steps without it end the episode
    (``done``, neither won nor lost). ``expert_next`` comes from an exact BFS planner.

    Args:
        max_steps: steps after which the episode ends (default 50).
    """

    env_name = "toy"

    def __init__(self, max_steps: int = 50) -> None:
        super().__init__()
        if int(max_steps) < 1:
            raise ValueError(f"ToyTextAdapter: max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self._world: _ToyWorld | None = None
        self._worlds: dict[int, tuple[_ToyWorld, list[str]]] = {}
        self._policy: dict[_PlanState, str | None] = {}
        self._room = 0
        self._locs: list[int] = []
        self._open: list[bool] = []
        self._done = False
        self._won = False

    # -- game state ---------------------------------------------------------------------------------------

    def _w(self) -> _ToyWorld:
        assert self._world is not None
        return self._world

    def _plan_state(self) -> _PlanState:
        w = self._w()
        return self._room, self._locs[w.goal_item], tuple(self._open)

    def _visible_items(self) -> list[int]:
        """Items the player can take here: on the floor, or in an open container in this room."""
        w = self._w()
        out = []
        for i, loc in enumerate(self._locs):
            box = _container_of(loc)
            if loc == self._room or (box is not None and w.container_room[box] == self._room and self._open[box]):
                out.append(i)
        return out

    def _here_containers(self) -> list[int]:
        w = self._w()
        return [c for c, r in enumerate(w.container_room) if r == self._room]

    def _admissible(self) -> list[str]:
        if self._done:
            return []
        w = self._w()
        cmds = ["look", "inventory"]
        cmds += [f"go {d}" for d in w.exits[self._room]]
        cmds += [f"take {w.items[i]}" for i in self._visible_items()]
        carried = [i for i, loc in enumerate(self._locs) if loc == _INV]
        cmds += [f"drop {w.items[i]}" for i in carried]
        for c in self._here_containers():
            if not self._open[c]:
                cmds.append(f"open {w.containers[c]}")
            else:
                cmds += [f"put {w.items[i]} in {w.containers[c]}" for i in carried]
        return sorted(cmds)

    def _describe_room(self) -> str:
        w = self._w()
        parts = [f"-= {w.rooms[self._room].title()} =-", f"You are in the {w.rooms[self._room]}."]
        boxes = []
        for c in self._here_containers():
            if not self._open[c]:
                boxes.append(f"{_article(w.containers[c])} (closed)")
            else:
                inside = [w.items[i] for i, loc in enumerate(self._locs) if loc == _inside(c)]
                what = f"containing {_join([_article(x) for x in inside])}" if inside else "empty"
                boxes.append(f"{_article(w.containers[c])} (open, {what})")
        if boxes:
            parts.append(f"You see {_join(boxes)}.")
        floor = [_article(w.items[i]) for i, loc in enumerate(self._locs) if loc == self._room]
        if floor:
            parts.append(f"On the floor you see {_join(floor)}.")
        dirs = sorted(w.exits[self._room])
        parts.append(f"Exits lead {_join(dirs)}." if len(dirs) > 1 else f"An exit leads {dirs[0]}.")
        return " ".join(parts[:1]) + "\n" + " ".join(parts[1:])

    def _inventory_text(self) -> str:
        w = self._w()
        carried = [_article(w.items[i]) for i, loc in enumerate(self._locs) if loc == _INV]
        return f"You are carrying {_join(carried)}." if carried else "You are carrying nothing."

    def _make_step(self, obs: str, reward: float, invalid: bool) -> TextStep:
        w = self._w()
        return TextStep(
            obs=obs, instruction=w.instruction, admissible=self._admissible(), score=1.0 if self._won else 0.0,
            reward=reward, done=self._done, won=self._won, lost=False, invalid=invalid,
            expert_next=None if self._done else self._policy.get(self._plan_state()),
        )

    # -- interface ----------------------------------------------------------------------------------------

    def reset(self, task: TextTask) -> TextStep:
        """Start the game generated from ``task.variation`` (games are cached per seed in this adapter)."""
        self._begin(task)
        seed = int(task.variation)
        if seed not in self._worlds:
            world = _toy_world(seed)
            self._worlds[seed] = (world, _toy_gold(world))
        self._world, gold = self._worlds[seed]
        w = self._world
        self._task, self._steps, self._gold = task, 0, list(gold)
        self._room, self._locs, self._open = w.start_room, list(w.start_locs), list(w.start_open)
        self._done = self._won = False
        self._policy = _toy_policy(w, self._plan_state())
        return self._make_step(f"{w.instruction}\n\n{self._describe_room()}", 0.0, False)

    def step(self, action: str) -> TextStep:
        """Apply one command; see the class docstring for the command set."""
        self._check_started()
        w = self._w()
        if self._done:
            return self._make_step("The game is over.", 0.0, True)
        self._steps += 1
        cmd = normalise_command(action)
        valid = cmd in self._admissible()
        obs = self._apply(cmd) if valid else self._refuse(cmd)
        reward = 0.0
        if valid and self._locs[w.goal_item] == _inside(w.goal_box):
            self._done = self._won = True
            reward = 1.0
            obs += " You have completed the task!"
        elif self._steps >= self.max_steps:
            self._done = True
        return self._make_step(obs, reward, not valid)

    def _apply(self, cmd: str) -> str:
        """Carry out an admissible command and return the feedback."""
        w = self._w()
        items = {name: i for i, name in enumerate(w.items)}
        boxes = {name: c for c, name in enumerate(w.containers)}
        verb, _, rest = cmd.partition(" ")
        if cmd == "look":
            return self._describe_room()
        if cmd == "inventory":
            return self._inventory_text()
        if verb == "go":
            self._room = w.exits[self._room][rest]
            return self._describe_room()
        if verb == "take":
            i = items[rest]
            box = _container_of(self._locs[i])
            self._locs[i] = _INV
            return f"You take the {rest}" + (f" from the {w.containers[box]}." if box is not None else ".")
        if verb == "drop":
            self._locs[items[rest]] = self._room
            return f"You drop the {rest}."
        if verb == "open":
            c = boxes[rest]
            self._open[c] = True
            inside = [_article(w.items[i]) for i, loc in enumerate(self._locs) if loc == _inside(c)]
            return f"You open the {rest}. " + (f"Inside you see {_join(inside)}." if inside else "It is empty.")
        item, _, box_name = rest.partition(" in ")  # put <item> in <container>
        self._locs[items[item]] = _inside(boxes[box_name])
        return f"You put the {item} in the {box_name}."

    def _refuse(self, cmd: str) -> str:
        """The feedback for a command that is not admissible here."""
        w = self._w()
        verb, _, rest = cmd.partition(" ")
        if verb == "go" and rest in _TOY_DIRS:
            return "You can't go that way."
        if verb == "open" and rest in w.containers:
            c = w.containers.index(rest)
            return "That is already open." if self._open[c] and w.container_room[c] == self._room else \
                "You don't see that here."
        if verb == "take" and rest in w.items:
            return "You already have that." if self._locs[w.items.index(rest)] == _INV else "You don't see that here."
        if verb == "drop" and rest:
            return "You aren't carrying that."
        if verb == "put" and " in " in rest:
            return "You can't do that here."
        return "I don't understand that."

    def close(self) -> None:
        """Nothing to release."""
        self._task = None


# ----------------------------------------------------------------------------------------------------
# TextWorld
# ----------------------------------------------------------------------------------------------------

_TW_INVALID = ("i don't understand", "you can't see any such thing", "that's not a verb i recognise",
               "you can't go that way", "i only understood you as far as", "that noun did not make sense",
               "you seem to want to talk to someone", "i didn't understand that")
_TW_PROMPT = re.compile(r"\n>[^\n]*\Z")


def clean_textworld_feedback(text: str) -> str:
    """TextWorld feedback without the trailing ``>`` prompt and its status line (``-= Room =-0/4``)."""
    return _TW_PROMPT.sub("", str(text)).strip()


def textworld_cache_key(nb_rooms: int, nb_objects: int, quest_length: int) -> str:
    """A short hash over the generator options and the TextWorld version (the cache folder name)."""
    import textworld

    spec = f"textworld={textworld.__version__};rooms={int(nb_rooms)};objects={int(nb_objects)};quest={int(quest_length)}"
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _progress(items: Iterable[Any], description: str, enabled: bool, total: int | None = None) -> Iterator[Any]:
    """Iterate with a progress bar (rich, else tqdm, else one printed line per item) when ``enabled``."""
    total = len(items) if total is None else total  # type: ignore[arg-type]
    if not enabled or not total:
        yield from items
        return
    try:
        from rich.progress import track

        yield from track(items, description=description, total=total)
        return
    except ImportError:
        pass
    try:
        from tqdm import tqdm

        yield from tqdm(items, desc=description, total=total)
        return
    except ImportError:
        pass
    for k, item in enumerate(items):
        print(f"{description} {k + 1}/{total}", flush=True)
        yield item


def _pid_alive(pid: str) -> bool:
    """Whether the process ``pid`` (a string, from a folder name) exists."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def generate_textworld_games(
    seeds: Sequence[int],
    cache_dir: Path | None = None,
    nb_rooms: int = 3,
    nb_objects: int = 6,
    quest_length: int = 4,
    progress: bool = True,
    workers: int | None = None,
) -> list[Path]:
    """Make and compile one TextWorld game per seed into a cache; games already there are kept.

    Games go to ``<cache_dir>/textworld/<hash>/game_<seed>.z8`` with their ``.json`` (which the env needs for
    admissible commands, the planner and the walkthrough); ``<hash>`` is :func:`textworld_cache_key`. Each game
    is compiled in a private temporary folder and moved in (``.json`` first, ``.z8`` last, so a ``.z8`` marks a
    complete game): an interrupted run leaves no half file. About 3 s per game for the defaults on this CPU
    (q_evolve.md §4: 6-40 s); generate once, in ``prepare_data``.

    Args:
        seeds: one game per seed (``GameOptions.seeds``); different seeds give different games.
        cache_dir: cache root (default ``trainer.text.default_cache_dir()``).
        nb_rooms: rooms per game (default 3).
        nb_objects: objects per game (default 6).
        quest_length: actions in the quest (default 4).
        progress: show a progress bar while generating (default True).
        workers: processes that make games side by side (default: one per CPU core, at most one per game;
            1 makes them in this process, as does a daemonic process such as a multiprocessing pool worker,
            which may not start processes of its own).

    Returns:
        The game paths, in the order of ``seeds``.
    """
    try:
        import textworld
        import textworld.generator
    except ImportError as exc:
        raise ValueError(f"textworld is not installed ({exc}); pip install textworld==1.7.0") from None
    if min(int(nb_rooms), int(nb_objects), int(quest_length)) < 1:
        raise ValueError(f"generate_textworld_games: nb_rooms, nb_objects and quest_length must be >= 1, got "
                         f"{nb_rooms}, {nb_objects}, {quest_length}")
    if cache_dir is None:
        from trainer.text import default_cache_dir

        cache_dir = default_cache_dir()
    folder = Path(cache_dir) / "textworld" / textworld_cache_key(nb_rooms, nb_objects, quest_length)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-*-*"):  # left by a killed run (its process is gone)
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    seeds = [int(s) for s in seeds]
    paths = [folder / f"game_{s}.z8" for s in seeds]
    todo = sorted({s for s, p in zip(seeds, paths) if not (p.is_file() and p.with_suffix(".json").is_file())})
    jobs = [(str(folder), s, int(nb_rooms), int(nb_objects), int(quest_length)) for s in todo]
    import multiprocessing as mp

    n = max(1, min(len(jobs), int(workers) if workers else (os.cpu_count() or 1)))
    if mp.current_process().daemon:  # a pool worker (e.g. a benchmark run) may not start processes: make them here
        n = 1
    label = f"TextWorld games ({len(todo)} to make, {n} processes)"
    if n == 1:
        for job in _progress(jobs, label, progress):
            _make_textworld_game(*job)
        return paths
    import concurrent.futures as cf

    with cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_make_textworld_game, *job) for job in jobs]
        for fut in _progress(cf.as_completed(futures), label, progress, total=len(futures)):
            fut.result()  # a failed game raises here, naming its seed
    return paths


def _make_textworld_game(folder: str, seed: int, nb_rooms: int, nb_objects: int, quest_length: int) -> None:
    """Make and compile one game into ``folder`` through a private temporary folder (see generate_textworld_games)."""
    import textworld
    import textworld.generator

    target = Path(folder) / f"game_{seed}.z8"
    tmp = Path(folder) / f".tmp-{seed}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        options = textworld.GameOptions()
        options.nb_rooms, options.nb_objects, options.quest_length = nb_rooms, nb_objects, quest_length
        options.seeds = seed
        options.path = str(tmp / target.name)
        options.force_recompile = True
        game = textworld.generator.make_game(options)
        built = Path(textworld.generator.compile_game(game, options))
        os.replace(built.with_suffix(".json"), target.with_suffix(".json"))
        os.replace(built, target)
    except Exception as exc:
        raise RuntimeError(f"TextWorld game of seed {seed} could not be made: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TextWorldAdapter(_AdapterBase):
    """Compiled TextWorld games through ``textworld.gym`` (``env="textworld"``, ``task.name`` the game path).

    ``obs`` is the feedback without the prompt line; at reset, the objective and the room description.
    The env's score is cumulative: ``reward`` is its difference over ``max_score`` (:func:`score_deltas`) and
    ``score`` its normalised value. ``invalid`` when the parser refuses the command or it is not among the
    previous step's admissible commands. ``expert_next`` is the first of ``policy_commands``.

    Args:
        max_steps: ``max_episode_steps`` of the gym env (default 50).
    """

    env_name = "textworld"

    def __init__(self, max_steps: int = 50) -> None:
        super().__init__()
        try:
            import textworld  # noqa: F401
            import textworld.gym  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"textworld is not installed ({exc}); pip install textworld==1.7.0") from None
        if int(max_steps) < 1:
            raise ValueError(f"TextWorldAdapter: max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self._env: Any = None
        self._path: Path | None = None
        self._score = 0.0
        self._max_score = 1.0
        self._instruction = ""
        self._admissible: list[str] = []
        self._done = False

    def _open(self, path: Path) -> None:
        import textworld
        import textworld.gym

        if self._env is not None and self._path == path:
            return
        if self._env is not None:
            self._env.close()
            self._env = None
        infos = textworld.EnvInfos(admissible_commands=True, policy_commands=True, objective=True, description=True,
                                   won=True, lost=True, score=True, max_score=True, extras=["walkthrough"])
        name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        env_id = textworld.gym.register_game(str(path), request_infos=infos, max_episode_steps=self.max_steps,
                                             name=f"pt-{name}")
        self._env = textworld.gym.make(env_id)
        self._path = path

    def _make_step(self, obs: str, infos: dict[str, Any], reward: float, done: bool, invalid: bool) -> TextStep:
        policy = list(infos.get("policy_commands") or [])
        won, lost = bool(infos.get("won")), bool(infos.get("lost"))
        return TextStep(
            obs=obs, instruction=self._instruction, admissible=list(self._admissible),
            score=min(1.0, max(0.0, self._score / self._max_score)), reward=reward, done=bool(done or won or lost),
            won=won, lost=lost, invalid=invalid, expert_next=policy[0] if policy and not (won or lost) else None,
        )

    def reset(self, task: TextTask) -> TextStep:
        """Open ``task.name`` (reused while the game stays the same) and start an episode."""
        if task.env != self.env_name:
            raise ValueError(f"TextWorldAdapter: task is for env {task.env!r}, not 'textworld'")
        path = _check_textworld_file(task.name)  # the path first, before anything else
        self._begin(task)
        self._open(path)
        with warnings.catch_warnings():  # jericho: "not fully supported"; TextWorld keeps the score (its .json)
            warnings.filterwarnings("ignore", message=r"Game .* is not fully supported")
            _, infos = self._env.reset()
        self._task, self._steps = task, 0
        self._gold = list(infos.get("extra.walkthrough") or [])
        self._score = float(infos.get("score") or 0.0)
        self._max_score = float(infos.get("max_score") or 1.0) or 1.0
        self._instruction = str(infos.get("objective") or "").strip()
        self._admissible = sorted(infos.get("admissible_commands") or [])
        self._done = False
        obs = f"{self._instruction}\n\n{str(infos.get('description') or '').strip()}".strip()
        return self._make_step(obs, infos, 0.0, False, False)

    def step(self, action: str) -> TextStep:
        """Send one command; reward = score difference / max_score."""
        self._check_started()
        previous = self._admissible
        self._steps += 1
        raw, score, done, infos = self._env.step(str(action))
        obs = clean_textworld_feedback(raw)
        reward = score_deltas([self._score, float(score)], self._max_score)[1]
        self._score = float(score)
        self._admissible = sorted(infos.get("admissible_commands") or [])
        low = obs.lower()
        invalid = any(p in low for p in _TW_INVALID) or not _is_admissible(action, previous)
        return self._make_step(obs, infos, reward, bool(done), invalid)

    def close(self) -> None:
        """Close the gym env."""
        if self._env is not None:
            try:
                self._env.close()
            finally:
                self._env = None
                self._path = None
        self._task = None


# ----------------------------------------------------------------------------------------------------
# TextWorldExpress
# ----------------------------------------------------------------------------------------------------


class TextWorldExpressAdapter(_AdapterBase):
    """TextWorldExpress games (``env="twx"``): one JVM per adapter, started in ``__init__``.

    ``reset`` calls ``reset(seed=variation, gameFold=split, gameName=name, gameParams, generateGoldPath=True)``;
    the gold path is ``getGoldActionSequence()``; ``admissible`` the sorted ``validActions``; ``score`` the
    env's normalised score (clipped to [0, 1]) and ``reward`` its difference; ``won`` / ``lost`` the env's
    ``tasksuccess`` / ``taskfailure``. No planner: ``expert_next`` is None.

    Args:
        max_steps: ``envStepLimit`` (default 50).
        game_params: TextWorldExpress ``gameParams`` string (default ``""``: the game's defaults).
    """

    env_name = "twx"

    def __init__(self, max_steps: int = 50, game_params: str = "") -> None:
        super().__init__()
        check_java()
        if int(max_steps) < 1:
            raise ValueError(f"TextWorldExpressAdapter: max_steps must be >= 1, got {max_steps}")
        try:
            from textworld_express import TextWorldExpressEnv
        except ImportError as exc:
            raise ValueError(f"textworld-express is not installed ({exc}); pip install textworld-express==1.1.0") from None
        self.max_steps = int(max_steps)
        self.game_params = str(game_params)
        self._env: Any = TextWorldExpressEnv(envStepLimit=self.max_steps)
        self._instruction = ""
        self._admissible: list[str] = []
        self._score = 0.0

    def _make_step(self, obs: str, infos: dict[str, Any], reward: float, invalid: bool) -> TextStep:
        won, lost = bool(infos.get("tasksuccess")), bool(infos.get("taskfailure"))
        return TextStep(obs=str(obs).strip(), instruction=self._instruction, admissible=list(self._admissible),
                        score=self._score, reward=reward, done=bool(infos.get("done")) or won or lost, won=won,
                        lost=lost, invalid=invalid, expert_next=None)

    def reset(self, task: TextTask) -> TextStep:
        """Start game ``task.name`` with seed ``task.variation`` in fold ``task.split``."""
        self._begin(task)
        obs, infos = self._env.reset(seed=int(task.variation), gameFold=task.split, gameName=task.name,
                                     gameParams=self.game_params, generateGoldPath=True)
        self._task, self._steps = task, 0
        self._gold = [str(a) for a in self._env.getGoldActionSequence()]
        self._instruction = str(infos.get("taskDescription", "")).strip()
        self._admissible = sorted(str(a) for a in infos.get("validActions", []))
        self._score = min(1.0, max(0.0, float(infos.get("score", 0.0))))
        return self._make_step(obs, infos, 0.0, False)

    def step(self, action: str) -> TextStep:
        """Send one command; reward = difference of the clipped normalised score."""
        self._check_started()
        previous = self._admissible
        self._steps += 1
        obs, _, _, infos = self._env.step(str(action))
        score = min(1.0, max(0.0, float(infos.get("score", 0.0))))
        reward, self._score = score - self._score, score
        self._admissible = sorted(str(a) for a in infos.get("validActions", []))
        invalid = str(obs).lower().startswith("unknown action") or not _is_admissible(action, previous)
        return self._make_step(obs, infos, reward, invalid)

    def close(self) -> None:
        """Shut the JVM down."""
        env, self._env = self._env, None
        if env is not None:
            env.close()
        self._task = None


# ----------------------------------------------------------------------------------------------------
# ScienceWorld
# ----------------------------------------------------------------------------------------------------

_SW_INVALID = ("no known action matches that input", "unknown action")
_SW_VARIATIONS: dict[tuple[str, str], list[int]] = {}


class ScienceWorldAdapter(_AdapterBase):
    """ScienceWorld tasks (``env="scienceworld"``): one JVM per adapter, started in ``__init__``.

    ``reset`` always ``load``s (``generateGoldPath=True``) and reads the gold path right then: the mendelian
    gold path is random and does not replay after ``env.reset()``. The first ``obs`` is the free ``look``.
    Steps call the Java server directly (``env.step`` would also enumerate the valid actions, 0.08-0.35 s);
    valid actions are fetched only with ``valid_actions=True``. Score 0-100; −100 = failed (``lost``, done);
    100 = ``won``. ``reward`` is sparse: clip(score, 0, 100) / 100 on the step the episode ends, else 0
    (q_evolve.md §4); ``dense_rewards=True`` gives clipped score deltas / 100 (their sum is the same).

    Args:
        max_steps: the episode ends once the env has counted this many moves (default 100; a few commands,
            such as ``wait``, count several moves, as in ``envStepLimit``).
        simplifications: ScienceWorld simplification string (default ``"easy"``).
        valid_actions: fill ``admissible`` from the valid action list each step (default True; slow).
        dense_rewards: per-step score deltas instead of the sparse final reward (default False).
    """

    env_name = "scienceworld"

    def __init__(self, max_steps: int = 100, simplifications: str = "easy", valid_actions: bool = True,
                 dense_rewards: bool = False) -> None:
        super().__init__()
        check_java()
        if int(max_steps) < 1:
            raise ValueError(f"ScienceWorldAdapter: max_steps must be >= 1, got {max_steps}")
        try:
            from scienceworld import ScienceWorldEnv
        except ImportError as exc:
            raise ValueError(f"scienceworld is not installed ({exc}); pip install scienceworld==1.2.3") from None
        self.max_steps = int(max_steps)
        self.simplifications = str(simplifications)
        self.valid_actions = bool(valid_actions)
        self.dense_rewards = bool(dense_rewards)
        self._env: Any = ScienceWorldEnv("", envStepLimit=self.max_steps)
        self._instruction = ""
        self._admissible: list[str] = []
        self._raw_score = 0
        self._done = False

    def _valid(self) -> list[str]:
        return sorted(str(a) for a in self._env.get_valid_action_object_combinations()) if self.valid_actions else []

    def _make_step(self, obs: str, reward: float, invalid: bool) -> TextStep:
        score = self._raw_score
        return TextStep(obs=str(obs).strip(), instruction=self._instruction, admissible=list(self._admissible),
                        score=min(1.0, max(0.0, score / 100.0)), reward=reward, done=self._done,
                        won=score >= 100, lost=score < 0, invalid=invalid, expert_next=None)

    def reset(self, task: TextTask) -> TextStep:
        """``load`` task ``task.name``, variation ``task.variation``, and read the gold path."""
        self._begin(task)
        n = int(self._env.get_max_variations(task.name))
        if not 0 <= int(task.variation) < n:
            raise ValueError(f"scienceworld: variation {task.variation} out of range for task {task.name!r} "
                             f"(0..{n - 1})")
        self._env.load(task.name, int(task.variation), self.simplifications, generateGoldPath=True)
        self._gold = [str(a) for a in self._env.get_gold_action_sequence()]
        self._task, self._steps = task, 0
        self._instruction = str(self._env.get_task_description()).strip()
        self._raw_score, self._done = 0, False
        self._admissible = self._valid()
        return self._make_step(self._env.look(), 0.0, False)

    def step(self, action: str) -> TextStep:
        """Send one command to the Java server; see the class docstring for the reward."""
        self._check_started()
        if self._done:
            return self._make_step("The episode is over.", 0.0, True)
        previous = self._admissible
        self._steps += 1
        server = self._env.server
        obs = str(server.step(str(action)))
        score = int(round(100 * float(server.getScore())))
        done = bool(server.getCompleted()) or score < 0 or score >= 100 or int(server.getNumMoves()) >= self.max_steps
        old = min(100, max(0, self._raw_score))
        new = min(100, max(0, score))
        self._raw_score, self._done = score, done
        if self.dense_rewards:
            reward = (new - old) / 100.0
        else:
            reward = new / 100.0 if done else 0.0
        self._admissible = [] if done else self._valid()
        invalid = any(obs.lower().startswith(p) for p in _SW_INVALID) or not _is_admissible(action, previous)
        return self._make_step(obs, reward, invalid)

    def close(self) -> None:
        """Shut the JVM down."""
        env, self._env = self._env, None
        if env is not None:
            env.close()
        self._task = None


def scienceworld_variations(task: str, split: str) -> list[int]:
    """The variation indices of ScienceWorld ``task`` in ``split`` (``"train"``, ``"dev"`` or ``"test"``).

    Starts one JVM the first time a task is asked for in this process (about 2 s); cached after that.

    Raises:
        ValueError: unknown task (listing the known ones), unknown split, or no Java.
    """
    if split not in SPLITS:
        raise ValueError(f"scienceworld: unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    validate_task(TextTask("scienceworld", task, 0, split))
    if (task, split) not in _SW_VARIATIONS:
        from scienceworld import ScienceWorldEnv

        env = ScienceWorldEnv("", envStepLimit=1)
        try:
            env.load(task, 0, "")
            _SW_VARIATIONS[(task, "train")] = [int(v) for v in env.get_variations_train()]
            _SW_VARIATIONS[(task, "dev")] = [int(v) for v in env.get_variations_dev()]
            _SW_VARIATIONS[(task, "test")] = [int(v) for v in env.get_variations_test()]
        finally:
            env.close()
    return list(_SW_VARIATIONS[(task, split)])


# ----------------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------------

_ADAPTERS: dict[str, Callable[..., Any]] = {
    "toy": ToyTextAdapter,
    "textworld": TextWorldAdapter,
    "twx": TextWorldExpressAdapter,
    "scienceworld": ScienceWorldAdapter,
}


def make_adapter(env: str, adapter_factory: Callable[..., Any] | None = None, **options: Any) -> TextEnvAdapter:
    """Build the adapter of ``env`` with ``options`` (its keyword arguments).

    Args:
        env: one of :data:`KNOWN_ENVS`.
        adapter_factory: build ``adapter_factory(**options)`` instead (a picklable, importable callable; for
            test envs); ``env`` then only names it.
        **options: keyword arguments of the adapter class (``max_steps``, ...).

    Raises:
        ValueError: unknown env (listing the known ones) or bad options.
    """
    if adapter_factory is not None:
        return adapter_factory(**options)
    if env not in _ADAPTERS:
        raise ValueError(f"unknown text env {env!r}; known envs: {', '.join(KNOWN_ENVS)}")
    try:
        return _ADAPTERS[env](**options)
    except TypeError as exc:
        raise ValueError(f"{env}: bad adapter options {sorted(options)}: {exc}") from None


# ----------------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------------

#: Exceptions an adapter raises for bad input: re-raised by the pool as they are, never retried.
_INPUT_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "FileNotFoundError": FileNotFoundError,
    "TextEnvUsageError": TextEnvUsageError,
}
#: Seconds a worker gets to close its env (and JVM) on ``close`` before it is killed.
_CLOSE_WAIT_S = 5.0
#: How long ``poll`` waits at a time before checking that the worker process is alive.
_POLL_SLICE_S = 0.2
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='_text_env_worker')"


class _Server:
    """The command handler that owns one adapter (inside a worker process, or in process)."""

    def __init__(self) -> None:
        self.adapter: Any = None

    def handle(self, command: str, payload: Any) -> Any:
        """Run one command; results are plain Python values (dicts, lists), so any process can unpickle them."""
        if command == "init":
            env, options = payload
            self.adapter = make_adapter(env, **options)
            return os.getpid()
        if self.adapter is None:
            raise TextEnvUsageError("worker: no adapter (init failed)")
        if command == "reset":
            return dataclasses.asdict(self.adapter.reset(TextTask(*payload)))
        if command == "restore":  # reset, then replay the episode so far
            task, actions = payload
            step = self.adapter.reset(TextTask(*task))
            for a in actions:
                step = self.adapter.step(a)
            return dataclasses.asdict(step)
        if command == "step":
            return dataclasses.asdict(self.adapter.step(payload))
        if command == "gold":
            return [str(a) for a in self.adapter.gold_actions()]
        raise ValueError(f"worker: unknown command {command!r}")

    def close(self) -> None:
        adapter, self.adapter = self.adapter, None
        if adapter is not None:
            adapter.close()


def _error_payload(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, _one_line(exc)


def _worker_main(fd: int) -> None:
    """Entry point of a worker process: answer ``(command, payload)`` messages until ``close`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(fd)
    server = _Server()
    try:
        while True:
            try:
                command, payload = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if command == "close":
                break
            try:
                message: tuple[str, Any] = ("ok", server.handle(command, payload))
            except Exception as exc:
                message = ("error", _error_payload(exc))
            try:
                conn.send(message)
            except (EOFError, OSError):
                break
    finally:
        try:
            server.close()
        except Exception:
            pass
        conn.close()


class _Failure(Exception):
    """A failed exchange with a worker; ``reason`` is ``"<type>: <message>"``."""

    def __init__(self, reason: str, type_name: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.type_name = type_name


class _SubprocessWorker:
    """The parent's handle on one worker process (a fresh interpreter running this file)."""

    def __init__(self, env: str, options: dict[str, Any]) -> None:
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        environ = dict(os.environ)
        paths = [os.path.abspath(p) for p in sys.path if p]
        environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # the parent's import path
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, os.path.abspath(__file__), str(fd)], pass_fds=(fd,), env=environ,
                stdin=subprocess.DEVNULL, start_new_session=True,  # its own process group: a kill reaches its JVM
            )
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.pid: int | None = self.process.pid
        self.send("init", (env, options))

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, command: str, payload: Any) -> None:
        try:
            self.conn.send((command, payload))
        except (EOFError, OSError) as exc:
            raise _Failure(f"{type(exc).__name__}: pipe to worker pid {self.pid} is closed "
                           f"(exit code {self.process.poll()})") from None

    def recv(self, deadline: float, what: str, timeout_s: float) -> Any:
        while True:
            remaining = deadline - time.monotonic()
            try:
                ready = self.conn.poll(max(0.0, min(remaining, _POLL_SLICE_S)))
            except (EOFError, OSError) as exc:
                raise _Failure(f"{type(exc).__name__}: pipe to worker pid {self.pid} is broken") from None
            if ready:
                break
            if not self.alive():
                raise _Failure(f"WorkerExited: worker pid {self.pid} exited with code {self.process.poll()} "
                               f"during {what}")
            if remaining <= 0:
                raise _Failure(f"TimeoutError: {what} took longer than {timeout_s:g} s")
        try:
            status, payload = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise _Failure(f"{type(exc).__name__}: worker pid {self.pid} closed its pipe during {what} "
                           f"(exit code {self.process.poll()})") from None
        if status == "error":
            type_name, message = payload
            raise _Failure(f"{type_name}: {message}", type_name)
        return payload

    def kill(self) -> None:
        """SIGKILL the worker by its PID and its process group (its JVM), reap it, close the pipe."""
        pid = self.process.pid
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.process.kill()
        except OSError:
            pass
        try:
            self.process.wait(_CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()

    def request_close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (EOFError, OSError):
            pass

    def finish_close(self, deadline: float) -> None:
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # whatever is left of its group (a JVM that did not exit)


class _InProcessWorker:
    """The same interface over an adapter in this process (no timeouts: calls run synchronously)."""

    def __init__(self, env: str, options: dict[str, Any]) -> None:
        self.pid: int | None = None
        self.server = _Server()
        self._reply: tuple[str, Any] = ("ok", None)
        self.send("init", (env, options))

    def alive(self) -> bool:
        return True

    def send(self, command: str, payload: Any) -> None:
        try:
            self._reply = ("ok", self.server.handle(command, payload))
        except Exception as exc:
            self._reply = ("error", _error_payload(exc))

    def recv(self, deadline: float, what: str, timeout_s: float) -> Any:
        status, payload = self._reply
        if status == "error":
            type_name, message = payload
            raise _Failure(f"{type_name}: {message}", type_name)
        return payload

    def kill(self) -> None:
        try:
            self.server.close()
        except Exception:
            pass

    def request_close(self) -> None:
        pass

    def finish_close(self, deadline: float) -> None:
        self.kill()


_Worker = _SubprocessWorker | _InProcessWorker


def _shutdown(workers: list[_Worker | None]) -> None:
    """Close every worker: ask all, wait a little, then kill what is left (used by close and the finaliser)."""
    live = [w for w in workers if w is not None]
    for w in live:
        w.request_close()
    deadline = time.monotonic() + _CLOSE_WAIT_S
    for w in live:
        try:
            w.finish_close(deadline)
        except Exception:
            pass
    for k in range(len(workers)):
        workers[k] = None


@dataclass
class _Slot:
    """Parent-side state of one slot: the episode so far, to restore it after a restart."""

    task: TextTask | None = None
    actions: list[str] = field(default_factory=list)
    last: TextStep | None = None
    failures: int = 0
    last_error: str = ""


class TextEnvPool:
    """``num_workers`` text-env adapters, one per slot, in supervised worker processes.

    Args:
        env: adapter name (:data:`KNOWN_ENVS`), or a label when ``options`` has an ``adapter_factory``.
        num_workers: number of slots (one worker process each).
        options: keyword arguments of the adapter (:func:`make_adapter`), e.g. ``{"max_steps": 30}``.
        in_process: run the adapters in this process (tests, the toy env; no timeouts, no process deaths).
        max_consecutive_failures: this many consecutive failures of one slot raise ``RuntimeError`` (default 6).
        timeout_s: a worker start, reset, step or gold call slower than this is a failure (default 120 s).

    Attributes:
        restarts: worker restarts so far, all slots together.
        restarts_per_slot: restarts of each slot.
    """

    def __init__(self, env: str, num_workers: int, options: dict[str, Any] | None = None, in_process: bool = False,
                 max_consecutive_failures: int = 6, timeout_s: float = 120.0) -> None:
        options = dict(options or {})
        if int(num_workers) < 1:
            raise ValueError(f"TextEnvPool: num_workers must be >= 1, got {num_workers}")
        if int(max_consecutive_failures) < 1:
            raise ValueError(f"TextEnvPool: max_consecutive_failures must be >= 1, got {max_consecutive_failures}")
        if float(timeout_s) <= 0:
            raise ValueError(f"TextEnvPool: timeout_s must be > 0, got {timeout_s}")
        if options.get("adapter_factory") is None:
            if env not in KNOWN_ENVS:
                raise ValueError(f"unknown text env {env!r}; known envs: {', '.join(KNOWN_ENVS)}")
            if env in JAVA_ENVS:
                check_java()
        self.env = env
        self.num_workers = int(num_workers)
        self.options = options
        self.in_process = bool(in_process)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.timeout_s = float(timeout_s)
        self.restarts = 0
        self.restarts_per_slot = [0] * self.num_workers
        self._slots = [_Slot() for _ in range(self.num_workers)]
        self._workers: list[_Worker | None] = [None] * self.num_workers
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)  # also runs at interpreter exit
        try:  # start every worker, then wait for them all: they boot in parallel
            for k in range(self.num_workers):
                self._workers[k] = self._spawn()
            deadline = time.monotonic() + self.timeout_s
            failed: dict[int, _Failure] = {}
            for k in range(self.num_workers):
                try:
                    self._recv(k, deadline, "worker start")
                except _Failure as f:
                    failed[k] = f
            for k, f in failed.items():
                self._recover(k, f, "worker start", None)
        except BaseException:
            self.close()
            raise

    # -- public API ---------------------------------------------------------------------------------------

    def reset(self, slot: int, task: TextTask) -> TextStep:
        """Start an episode of ``task`` on ``slot`` (the task is validated here first)."""
        return self.reset_many([slot], [task])[0]

    def reset_many(self, slots: Sequence[int], tasks: Sequence[TextTask]) -> list[TextStep]:
        """Reset several slots concurrently (a ScienceWorld ``load`` takes about a second); tasks validated first."""
        slots = self._check_slots(slots, len(tasks))
        for task in tasks:
            validate_task(task)
        for k, task in zip(slots, tasks):
            self._slots[k] = _Slot(task=task, failures=self._slots[k].failures)
        failures: dict[int, _Failure] = {}
        for k, task in zip(slots, tasks):
            try:
                self._send(k, "reset", dataclasses.astuple(task))
            except _Failure as f:
                failures[k] = f
        deadline = time.monotonic() + self.timeout_s
        results: dict[int, dict[str, Any]] = {}
        for k in slots:
            if k not in failures:
                try:
                    results[k] = self._recv(k, deadline, "reset")
                except _Failure as f:
                    failures[k] = f
        input_errors = [failures.pop(k) for k in slots if k in failures and failures[k].type_name in _INPUT_ERRORS]
        for k in slots:
            if k in failures:
                results[k] = self._recover(k, failures[k], "reset", None)
        for k in slots:
            state = self._slots[k]
            if k in results:
                state.last, state.failures = TextStep(**results[k]), 0
            else:  # the adapter refused the task: the slot needs a new reset
                state.task = None
        if input_errors:
            raise _INPUT_ERRORS[input_errors[0].type_name](input_errors[0].reason.partition(": ")[2])
        return [self._slots[k].last for k in slots]  # type: ignore[misc]

    def step_many(self, slots: Sequence[int], actions: Sequence[str]) -> list[TextStep]:
        """Step several slots concurrently: send every action, then collect every reply (in ``slots`` order)."""
        slots = self._check_slots(slots, len(actions))
        actions = [str(a) for a in actions]
        for k in slots:
            if self._slots[k].task is None:
                raise TextEnvUsageError(f"TextEnvPool: reset slot {k} before stepping it")
        failures: dict[int, _Failure] = {}
        for k, a in zip(slots, actions):
            try:
                self._send(k, "step", a)
            except _Failure as f:
                failures[k] = f
        deadline = time.monotonic() + self.timeout_s
        results: dict[int, dict[str, Any]] = {}
        for k in slots:
            if k in failures:
                continue
            try:
                results[k] = self._recv(k, deadline, "step")
            except _Failure as f:
                failures[k] = f
        input_errors = [failures.pop(k) for k in slots if k in failures and failures[k].type_name in _INPUT_ERRORS]
        for k, a in zip(slots, actions):  # every reply is in: record the steps that went through first
            if k in results:
                self._record(k, a, results[k])
        for k, a in zip(slots, actions):  # then restart what failed and retry its step
            if k in failures:
                self._record(k, a, self._recover(k, failures[k], "step", a))
        if input_errors:  # a bad input: raised as it is, the other slots' steps kept
            raise _INPUT_ERRORS[input_errors[0].type_name](input_errors[0].reason.partition(": ")[2])
        return [self._slots[k].last for k in slots]  # type: ignore[misc]

    def _record(self, k: int, action: str, result: dict[str, Any]) -> None:
        state = self._slots[k]
        state.actions.append(action)
        state.last, state.failures = TextStep(**result), 0

    def step(self, slot: int, action: str) -> TextStep:
        """Step one slot (``step_many([slot], [action])[0]``)."""
        return self.step_many([slot], [action])[0]

    def gold_actions(self, slot: int) -> list[str]:
        """The gold path of ``slot``'s task; only right after :meth:`reset` (no step since)."""
        k = self._check_slot(slot)
        state = self._slots[k]
        if state.task is None or state.actions:
            raise TextEnvUsageError(f"TextEnvPool: gold_actions({k}) must be called right after reset(); "
                                    f"{len(state.actions)} step(s) were taken since")
        try:
            self._send(k, "gold", None)
            return list(self._recv(k, time.monotonic() + self.timeout_s, "gold actions"))
        except _Failure as f:
            return list(self._recover(k, f, "gold actions", None, command="gold"))

    def task(self, slot: int) -> TextTask | None:
        """The task ``slot`` was last reset to."""
        return self._slots[self._check_slot(slot)].task

    def close(self) -> None:
        """Close every worker (and its JVM); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    def __enter__(self) -> TextEnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pid(self, slot: int) -> int | None:
        """The worker process id of ``slot`` (None in process); for tests."""
        w = self._workers[self._check_slot(slot)]
        return None if w is None else w.pid

    # -- supervision --------------------------------------------------------------------------------------

    def _check_slot(self, slot: int) -> int:
        if self._closed:
            raise RuntimeError("TextEnvPool is closed")
        k = int(slot)
        if not 0 <= k < self.num_workers:
            raise ValueError(f"TextEnvPool: slot {slot} out of range 0..{self.num_workers - 1}")
        return k

    def _check_slots(self, slots: Sequence[int], n: int) -> list[int]:
        out = [self._check_slot(s) for s in slots]
        if len(out) != n:
            raise ValueError(f"TextEnvPool: {len(out)} slots but {n} actions or tasks")
        if len(set(out)) != len(out):
            raise ValueError(f"TextEnvPool: repeated slots in {out}")
        return out

    def _spawn(self) -> _Worker:
        if self.in_process:
            return _InProcessWorker(self.env, self.options)
        return _SubprocessWorker(self.env, self.options)

    def _send(self, k: int, command: str, payload: Any) -> None:
        w = self._workers[k]
        if w is None:
            raise _Failure("WorkerMissing: no worker")
        w.send(command, payload)

    def _recv(self, k: int, deadline: float, what: str) -> Any:
        w = self._workers[k]
        if w is None:
            raise _Failure("WorkerMissing: no worker")
        return w.recv(deadline, what, self.timeout_s)

    def _describe(self, k: int) -> str:
        t = self._slots[k].task
        return "no task" if t is None else f"{t.name!r} variation {t.variation} split {t.split}"

    def _recover(self, k: int, failure: _Failure, what: str, action: str | None, command: str | None = None) -> Any:
        """Restart slot ``k``'s worker, restore its episode and retry ``what``; raise after too many failures."""
        state = self._slots[k]
        while True:
            if failure.type_name in _INPUT_ERRORS:
                raise _INPUT_ERRORS[failure.type_name](failure.reason.partition(": ")[2])
            state.failures += 1
            state.last_error = failure.reason
            if state.failures >= self.max_consecutive_failures:
                w, self._workers[k] = self._workers[k], None
                if w is not None:
                    w.kill()
                raise RuntimeError(_one_line(
                    f"TextEnvPool({self.env}): slot {k} failed {state.failures} consecutive times during {what} "
                    f"on task {self._describe(k)}; last error: {failure.reason}"))
            w, self._workers[k] = self._workers[k], None
            if w is not None:
                w.kill()
            self.restarts += 1
            self.restarts_per_slot[k] += 1
            log.warning("TextEnvPool(%s): restarting slot %d (%s) after %s", self.env, k, self._describe(k),
                        failure.reason)
            try:
                self._workers[k] = self._spawn()
                self._recv(k, time.monotonic() + self.timeout_s, "worker start")
                if what == "worker start":
                    return None
                if state.task is None:
                    raise _Failure("TextEnvUsageError: slot has no task")
                deadline = time.monotonic() + self.timeout_s
                if what == "reset":
                    self._send(k, "reset", dataclasses.astuple(state.task))
                    return self._recv(k, deadline, "reset")
                self._send(k, "restore", (dataclasses.astuple(state.task), list(state.actions)))
                restored = self._recv(k, deadline, "replay")
                if state.last is not None and TextStep(**restored) != state.last:
                    log.warning("TextEnvPool(%s): slot %d replay of %d actions did not reproduce the last state",
                                self.env, k, len(state.actions))
                deadline = time.monotonic() + self.timeout_s
                if command == "gold":
                    self._send(k, "gold", None)
                    return self._recv(k, deadline, "gold actions")
                self._send(k, "step", action)
                return self._recv(k, deadline, "step")
            except _Failure as f:
                failure = f


if __name__ == "_text_env_worker":  # a worker process: python -c <_BOOT> <this file> <socket fd>
    _worker_main(int(sys.argv[2]))
