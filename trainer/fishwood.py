"""Fishwood: a two-objective MDP with a known Pareto front (MOC sanity check, moc.md §5, §7.2).

The project's own version of the task of MO-Gymnasium's ``fishwood-v0`` (fish probability 0.1, wood
probability 0.9), written from its description; pure ``numpy``, nothing here imports Lightning or torch.

- **Dynamics.** Two locations, :data:`WOODS` = 0 and :data:`RIVER` = 1. Action 0 works at the current
  location, action 1 moves to the other one. A move takes the step: nothing is collected on it. Working at
  the river lands a fish with probability ``fish_prob``, working in the woods gathers wood with probability
  ``wood_prob``. The reward vector of a step is ``(fish, wood)`` in ``{0, 1}^2``, objectives in that order.
- **Episodes.** Every episode lasts exactly ``horizon`` steps. The step that reaches the horizon returns
  ``done = True``, which is a *termination* (finite-horizon task; the time feature ``t / horizon`` is in the
  observation, so a value of 0 after it is exact), not a truncation. The observation is ``[B, 3]`` float32:
  the one-hot location followed by ``t / horizon``.
- **Vectorised.** :class:`FishwoodVec` runs ``n_envs`` episodes in lockstep; they all end together, then
  :meth:`FishwoodVec.reset` starts the next batch (stepping a finished batch raises). Randomness comes from
  one ``numpy.random.Generator(PCG64(seed))``: each step draws one uniform per episode whatever the actions
  (common random numbers across policies), and ``start="random"`` draws the start locations at reset.
  :meth:`FishwoodVec.get_state` / :meth:`FishwoodVec.set_state` round-trip the generator, locations, step and
  returns as a picklable dict, so a resumed run continues bit for bit.
- **Front.** :func:`fishwood_front` gives the analytic expected-return front of the deterministic policies
  (derivation in its docstring); :func:`split_returns` the expected returns of one split policy and
  :func:`scripted_split_policy` that policy as a callable for :class:`FishwoodVec`.

Every bad input raises ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from trainer.pareto import non_dominated

__all__ = [
    "FISHWOOD_OBJECTIVES",
    "MOVE",
    "RIVER",
    "STARTS",
    "WOODS",
    "WORK",
    "FishwoodVec",
    "fishwood_front",
    "scripted_split_policy",
    "split_returns",
]

WOODS = 0
RIVER = 1
WORK = 0  # action: stay and work at the current location
MOVE = 1  # action: move to the other location (collects nothing this step)
#: Objective order of the reward vector.
FISHWOOD_OBJECTIVES: tuple[str, ...] = ("fish", "wood")
#: Accepted start locations.
STARTS: tuple[str, ...] = ("woods", "river", "random")


def _check_params(horizon: int, fish_prob: float, wood_prob: float, start: str) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    for name, p in (("fish_prob", fish_prob), ("wood_prob", wood_prob)):
        if not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {p!r}")
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}; known: {list(STARTS)}")


class FishwoodVec:
    """``n_envs`` Fishwood episodes stepped together with numpy (see the module docstring).

    ``reset() -> obs [B, 3]``; ``step(actions [B]) -> (obs [B, 3] float32, rewards [B, 2] float32 (fish, wood),
    done [B] bool)``. ``done`` is the same for every episode (all true at step ``horizon``); after it,
    :meth:`reset` must be called. :attr:`returns` holds each episode's summed reward vector so far and
    :attr:`t` the number of steps taken.

    Args:
        n_envs: parallel episodes B (>= 1).
        horizon: steps per episode. Default 50 (moc.md §5 "Horizon 50").
        fish_prob: probability of a fish per step worked at the river. Default 0.1 (fishwood-v0).
        wood_prob: probability of wood per step worked in the woods. Default 0.9 (fishwood-v0).
        start: ``"woods"``, ``"river"`` or ``"random"`` (each episode uniformly, drawn at reset). Default
            ``"woods"``.
        seed: seed of the ``PCG64`` generator. Default 0.
    """

    def __init__(
        self,
        n_envs: int,
        horizon: int = 50,
        fish_prob: float = 0.1,
        wood_prob: float = 0.9,
        start: str = "woods",
        seed: int = 0,
    ) -> None:
        if isinstance(n_envs, bool) or not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
            raise ValueError(f"n_envs must be an integer >= 1, got {n_envs!r}")
        _check_params(horizon, fish_prob, wood_prob, start)
        self.n_envs = int(n_envs)
        self.horizon = int(horizon)
        self.fish_prob = float(fish_prob)
        self.wood_prob = float(wood_prob)
        self.start = start
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self.location = np.zeros(self.n_envs, dtype=np.int64)
        self.returns = np.zeros((self.n_envs, 2), dtype=np.float32)
        self.t = 0
        self._running = False  # True between reset() and the step that reaches the horizon

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.n_envs, 3), dtype=np.float32)
        obs[np.arange(self.n_envs), self.location] = 1.0
        obs[:, 2] = self.t / self.horizon
        return obs

    def reset(self) -> np.ndarray:
        """Start B new episodes at ``start``; returns ``obs [B, 3]`` (time feature 0)."""
        if self.start == "random":
            self.location = self._rng.integers(0, 2, size=self.n_envs).astype(np.int64)
        else:
            self.location = np.full(self.n_envs, WOODS if self.start == "woods" else RIVER, dtype=np.int64)
        self.returns = np.zeros((self.n_envs, 2), dtype=np.float32)
        self.t = 0
        self._running = True
        return self._obs()

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply one action per episode (0 work, 1 move); returns ``(obs, rewards, done)``."""
        if not self._running:
            raise RuntimeError("FishwoodVec.step called before reset() or after the episodes ended: call reset()")
        a = np.asarray(actions)
        if a.shape != (self.n_envs,):
            raise ValueError(f"actions must have shape ({self.n_envs},), got {a.shape}")
        if a.dtype.kind not in "iub":
            if a.dtype.kind != "f" or not np.all(a == np.round(a)):
                raise ValueError(f"actions must be integers 0 (work) or 1 (move), got dtype {a.dtype}")
        a = a.astype(np.int64)
        if np.any((a != WORK) & (a != MOVE)):
            raise ValueError(f"actions must be 0 (work) or 1 (move), got values {sorted(set(a.tolist()))}")
        u = self._rng.random(self.n_envs)  # one draw per episode per step, whatever the action
        work = a == WORK
        rewards = np.zeros((self.n_envs, 2), dtype=np.float32)
        rewards[:, 0] = work & (self.location == RIVER) & (u < self.fish_prob)
        rewards[:, 1] = work & (self.location == WOODS) & (u < self.wood_prob)
        self.location = np.where(work, self.location, 1 - self.location)
        self.returns += rewards
        self.t += 1
        finished = self.t >= self.horizon
        self._running = not finished
        return self._obs(), rewards, np.full(self.n_envs, finished, dtype=bool)

    # -- state
    def get_state(self) -> dict[str, Any]:
        """A picklable snapshot: generator state, locations, step, returns, running flag and the settings."""
        return {
            "bit_generator": copy.deepcopy(self._rng.bit_generator.state),
            "location": self.location.copy(),
            "returns": self.returns.copy(),
            "t": int(self.t),
            "running": bool(self._running),
            "config": self._config(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s snapshot; ValueError on missing keys or other settings."""
        keys = {"bit_generator", "location", "returns", "t", "running", "config"}
        if set(state) != keys:
            raise ValueError(f"Fishwood state keys {sorted(state)} differ from {sorted(keys)}")
        if dict(state["config"]) != self._config():
            raise ValueError(f"Fishwood state was taken with settings {state['config']}, these are {self._config()}")
        location = np.asarray(state["location"], dtype=np.int64)
        returns = np.asarray(state["returns"], dtype=np.float32)
        if location.shape != (self.n_envs,) or returns.shape != (self.n_envs, 2):
            raise ValueError(f"Fishwood state shapes {location.shape}, {returns.shape} do not fit n_envs={self.n_envs}")
        self._rng.bit_generator.state = copy.deepcopy(state["bit_generator"])
        self.location = location.copy()
        self.returns = returns.copy()
        self.t = int(state["t"])
        self._running = bool(state["running"])

    def _config(self) -> dict[str, Any]:
        return {"n_envs": self.n_envs, "horizon": self.horizon, "fish_prob": self.fish_prob,
                "wood_prob": self.wood_prob, "start": self.start}  # fmt: skip

    def __repr__(self) -> str:
        c = self._config()
        return "FishwoodVec(" + ", ".join(f"{k}={v!r}" for k, v in c.items()) + f", seed={self.seed})"


# ----------------------------------------------------------------------------------------------
# the analytic front
# ----------------------------------------------------------------------------------------------


def split_returns(
    k: int, horizon: int = 50, fish_prob: float = 0.1, wood_prob: float = 0.9, start_location: int = WOODS
) -> np.ndarray:
    """Expected ``(fish, wood)`` of the split policy k from ``start_location``: work there for k steps, then
    (if ``k < horizon``) move once and work at the other location for the remaining ``horizon - k - 1`` steps.

    From the woods: ``(fish_prob * (H - k - 1), wood_prob * k)`` for ``k < H``, and ``(0, wood_prob * H)`` for
    ``k >= H`` (stay all episode). From the river the roles swap. Returns a float64 array of shape ``[2]``.
    """
    _check_params(horizon, fish_prob, wood_prob, "woods")
    if start_location not in (WOODS, RIVER):
        raise ValueError(f"start_location must be {WOODS} (woods) or {RIVER} (river), got {start_location!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    here, there = (horizon, 0) if k >= horizon else (k, horizon - k - 1)  # steps worked at start / other
    if start_location == WOODS:
        return np.array([fish_prob * there, wood_prob * here], dtype=np.float64)
    return np.array([fish_prob * here, wood_prob * there], dtype=np.float64)


def _non_dominated(points: np.ndarray) -> np.ndarray:
    """The distinct maximisation-non-dominated rows, sorted by the first column (then the second)."""
    pts = np.unique(np.round(points, 12), axis=0)
    front = pts[non_dominated(pts)]
    return front[np.lexsort((front[:, 1], front[:, 0]))]


def fishwood_front(
    horizon: int = 50, fish_prob: float = 0.1, wood_prob: float = 0.9, start: str = "woods"
) -> np.ndarray:
    """The analytic Pareto front ``[M, 2]`` of expected ``(fish, wood)`` returns of deterministic policies,
    sorted by fish (ascending; wood then descends).

    Derivation (start in the woods; from the river swap the roles). Every step is spent working at one
    location or moving, a move collects nothing, and the expected catch of a step worked at the river is
    ``fish_prob`` and in the woods ``wood_prob``, independently of everything else. So the expected return of
    any deterministic policy is ``(fish_prob * n_river, wood_prob * n_woods)`` with
    ``n_river + n_woods + n_moves = H``, and a policy with ``n_moves >= 2`` is dominated by one with one move
    fewer that works one more step. What remains is "stay" (``n_moves = 0``: ``(0, wood_prob * H)``) and the
    splits "work k steps here, move, work the rest there" (``n_moves = 1``: ``(fish_prob * (H - 1 - k),
    wood_prob * k)``, k = 0..H-1, see :func:`split_returns`). The splits lie on the line
    ``wood = wood_prob * (H - 1) - (wood_prob / fish_prob) * fish``; the stay point sits ``wood_prob`` above
    that line at ``fish = 0`` and dominates the split k = H-1 (``(0, wood_prob * (H - 1))``). The front is thus
    linear with one kink, the move cost, at the stay extreme: the H points k = 0..H-2 and stay. (Mixing two
    policies over episodes reaches the segments between front points; the straight segment between the two
    extremes dominates the intermediate splits, which is why a linear scalarisation picks an extreme,
    moc.md §4.)

    ``start="random"``: the start location (uniform) is observed, so a policy picks one option per start;
    the front is the non-dominated set of ``(a + b) / 2`` over the woods options a and the river options b.
    A probability of 0 collapses points, which are then listed once.
    """
    _check_params(horizon, fish_prob, wood_prob, start)
    H = int(horizon)

    def options(loc: int) -> np.ndarray:
        return np.stack([split_returns(k, H, fish_prob, wood_prob, loc) for k in range(H + 1)])

    if start == "random":
        woods, river = _non_dominated(options(WOODS)), _non_dominated(options(RIVER))
        pairs = (woods[:, None, :] + river[None, :, :]).reshape(-1, 2) / 2.0
        return _non_dominated(pairs)
    return _non_dominated(options(WOODS if start == "woods" else RIVER))


def scripted_split_policy(k: int, horizon: int = 50) -> Callable[[np.ndarray], np.ndarray]:
    """The split policy k as ``policy(obs [B, 3]) -> actions [B]`` for :class:`FishwoodVec`: work at the
    start location for k steps, move at step ``t = k`` (read from the time feature), then work wherever it
    is; ``k >= horizon`` never moves. Stateless; its expected return is :func:`split_returns` ``(k, horizon)``.
    """
    if k < 0 or horizon < 1:
        raise ValueError(f"k must be >= 0 and horizon >= 1, got {k}, {horizon}")

    def policy(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.ndim != 2 or obs.shape[1] != 3:
            raise ValueError(f"obs must have shape [B, 3], got {obs.shape}")
        t = np.rint(obs[:, 2] * horizon).astype(np.int64)
        return np.where(t == k, MOVE, WORK).astype(np.int64)

    return policy
