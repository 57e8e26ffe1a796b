"""Trajectory datasets of text agents and the pure Q-Evolve data math (``papers/q_evolve.md`` §3, §6).

The hybrid off-policy dataset ``D = D_exp ∪ D_self`` of Q-Evolve lives in a :class:`TrajectoryStore`: a
list of :class:`Trajectory` records (one episode each: the instruction, every observation, the admissible
commands and the chosen one at every step, the env rewards, and how the episode ended) plus per-step
labels that the training phases write (``r_aux``, ``advantage``, ``logp_old``). The store is plain
Python data, so it pickles into the datamodule's checkpoint state and is identical on every DDP rank.

Pure functions (tested against hand-computed values in ``tests/test_q_evolve.py``):

- :func:`step_weights`: the success- and step-dependent weights ``w_t = 0.5 (t/T + d) + 0.5`` of the
  weighted IQL critic (q_evolve.md §3, "Weights").
- :func:`weighted_mean`: ``mean(w·loss)`` (``weight_norm="mean"``, the default) or ``Σ w·loss / Σ w``.
- :func:`aux_reward`: the retrospective, rule-based auxiliary reward (r_fmt, r_inv, r_rep; first match).
- :func:`trajectory_advantages`: GAE process rewards of every step of the store, one trajectory at a time,
  through :func:`trainer.rl.gae` (terminal ends cut the recursion; truncated ends bootstrap V(s_T)).
- :func:`awr_loss`: the AWR ablation ``-mean(min(exp(β Â), max_weight) · log π(a|s))``.
- :func:`soft_update`: Polyak averaging of target networks ``Q̄ ← (1 − τ) Q̄ + τ Q``.
- :func:`render_state`: the plain-text state ``s_t = (instruction, last history_window turns, o_t)``.
- :func:`spearman`: rank correlation (average ranks for ties), for ``critic/spearman_v_mc``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from trainer.rl import gae

__all__ = [
    "AUX_REWARD_DEFAULTS",
    "Trajectory",
    "TrajectoryStore",
    "StateParts",
    "aux_reward",
    "awr_loss",
    "check_aux_rules",
    "discounted_returns",
    "render_state",
    "soft_update",
    "spearman",
    "step_weights",
    "trajectory_advantages",
    "weighted_mean",
    "INVALID_REPLIES",
]

#: q_evolve.md §3 Defaults: r_fmt, r_inv, r_rep ("not stated"; our choice).
AUX_REWARD_DEFAULTS = {"fmt": -0.1, "inv": -0.1, "rep": -0.05}

#: Replies by which TextWorld-like engines say an action did nothing (q_evolve.md §6, aux reward rules).
INVALID_REPLIES = (
    "i don't understand that",
    "you can't see any such thing",
    "that's not a verb i recognise",
    "that's not a verb i recognize",
    "i only understood you as far as",
    "no known action matches that input",
)

#: ``(instruction, history, observation)``; history is a tuple of ``(action, observation)`` turns.
StateParts = tuple[str, tuple[tuple[str, str], ...], str]


# ----------------------------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------------------------


def step_weights(t: Tensor, T: Tensor, success: Tensor) -> Tensor:
    """``w_t = 0.5 * (t/T + d) + 0.5`` (q_evolve.md §3, "CRITIC"), elementwise.

    Successful trajectories (``d = 1``) get weights in [1, 1.5] and failed ones in [0.5, 1]; weights grow
    toward the end of the trajectory.

    Args:
        t: 1-based step index (``t = 1..T``); ``t = 0`` is accepted and gives the floor of the range.
        T: trajectory length (> 0).
        success: 1 where the trajectory ends with ``r_env > 0`` (success), else 0.

    Returns:
        Float tensor of weights, broadcast shape of the inputs.
    """
    t = torch.as_tensor(t, dtype=torch.float32)
    T = torch.as_tensor(T, dtype=torch.float32)
    d = torch.as_tensor(success, dtype=torch.float32)
    if bool((T <= 0).any()):
        raise ValueError("step_weights: trajectory lengths T must be > 0")
    return 0.5 * (t / T + d) + 0.5  # q_evolve.md §3, w_t


def weighted_mean(loss: Tensor, weights: Tensor | None, norm: str = "mean") -> Tensor:
    """Reduce per-sample losses with weights.

    Args:
        loss: per-sample losses ``[B]``.
        weights: ``[B]`` or None (unweighted mean).
        norm: ``"mean"`` → ``mean(w·loss)`` (q_evolve.md §3 default ``weight_norm: mean``); ``"sum_w"`` →
            ``Σ w·loss / Σ w``.
    """
    if weights is None:
        return loss.mean()
    if norm == "mean":
        return (weights * loss).mean()
    if norm == "sum_w":
        return (weights * loss).sum() / weights.sum().clamp_min(1e-12)
    raise ValueError(f"weighted_mean: unknown norm {norm!r}; valid: mean, sum_w")


def aux_reward(
    obs: str,
    next_obs: str,
    action: str,
    admissible: Sequence[str] | None = None,
    invalid: bool = False,
    parse_failed: bool = False,
    values: dict[str, float] | None = None,
    earlier: Sequence[str] = (),
) -> tuple[float, str | None]:
    """The retrospective auxiliary reward of one step: the first matching rule (q_evolve.md §3).

    Rules, in order: ``fmt`` (the output could not be parsed as an action; generative mode only), ``inv``
    (the env reported the action invalid, its reply is one of :data:`INVALID_REPLIES`, or the action is not
    in the admissible set when that set is known), ``rep`` (``o_{t+1} == o_t``, stagnation), else 0.

    ``earlier`` are observations before ``o_t`` that also count for ``rep`` (our option, see
    :class:`TrajectoryStore`'s ``rep_window``): with ``earlier = (o_{t-1},)``, an action that undoes the one
    before it (``take X`` / ``put X``, ``go east`` / ``go west``) returns to ``o_{t-1}`` and is stagnation too.

    Returns:
        ``(reward, rule)``; ``rule`` is ``"fmt"``, ``"inv"``, ``"rep"`` or None.
    """
    vals = {**AUX_REWARD_DEFAULTS, **(values or {})}
    if parse_failed:
        return float(vals["fmt"]), "fmt"
    reply = next_obs.strip().lower()
    if invalid or any(reply.startswith(r) for r in INVALID_REPLIES) or (admissible and action not in admissible):
        return float(vals["inv"]), "inv"
    if next_obs.strip() in {o.strip() for o in (obs, *earlier)}:  # q_evolve.md §3, r_rep (o_{t+1} == o_t)
        return float(vals["rep"]), "rep"
    return 0.0, None


def render_state(parts: StateParts, history_window: int = 4, history_chars: int = 80) -> str:
    """The plain-text state ``s_t``: the last ``history_window`` turns, the instruction, then ``o_t``.

    Each history turn is ``> action → reply`` with the reply cut to ``history_chars`` characters. The
    instruction and the current observation come last, so an encoder that truncates from the left (long
    histories) keeps them (q_evolve.md §3, "State").
    """
    instruction, history, obs = parts
    lines = []
    for action, reply in history[-history_window:] if history_window > 0 else ():
        lines.append(f"> {action} → {' '.join(reply.split())[:history_chars]}")
    lines.append(f"Task: {' '.join(instruction.split())}")
    lines.append(f"Now: {obs.strip()}")
    return "\n".join(lines)


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """``Q̄ ← (1 − τ) Q̄ + τ Q`` in place, parameter by parameter (q_evolve.md §3, after every critic step)."""
    with torch.no_grad():
        for tp, sp in zip(target.parameters(), source.parameters(), strict=True):
            tp.mul_(1.0 - tau).add_(sp.detach(), alpha=tau)


def awr_loss(logp: Tensor, adv_hat: Tensor, beta: float = 3.0, max_weight: float = 100.0) -> Tensor:
    """AWR: ``-mean(min(exp(β Â), max_weight) · log π(a|s))`` (q_evolve.md §3, ``policy_update=awr``).

    The weights are constants (no gradient) and always positive, so AWR can only raise the likelihood of
    dataset actions (less for negative advantages); BPPO can lower it.
    """
    w = torch.exp(beta * adv_hat.detach()).clamp(max=max_weight)
    return -(w * logp).mean()


def discounted_returns(rewards: Sequence[float], gamma: float) -> list[float]:
    """Monte-Carlo returns ``G_t = Σ_k γ^k r_{t+k}`` of one trajectory (for the V-vs-MC diagnostics)."""
    out, g = [0.0] * len(rewards), 0.0
    for i in range(len(rewards) - 1, -1, -1):
        g = float(rewards[i]) + gamma * g
        out[i] = g
    return out


def spearman(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Spearman rank correlation with average ranks for ties; NaN if either side is constant or n < 2."""
    a = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if a.numel() != b.numel():
        raise ValueError("spearman: x and y differ in length")
    if a.numel() < 2:
        return float("nan")

    def ranks(v: Tensor) -> Tensor:
        order = torch.argsort(v, stable=True)
        r = torch.empty_like(v)
        r[order] = torch.arange(v.numel(), dtype=torch.float64)
        sorted_v = v[order]
        i = 0
        while i < v.numel():  # average ranks of ties
            j = i
            while j + 1 < v.numel() and sorted_v[j + 1] == sorted_v[i]:
                j += 1
            if j > i:
                r[order[i : j + 1]] = (i + j) / 2.0
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float("nan") if denom == 0 else float((ra * rb).sum()) / denom


# ----------------------------------------------------------------------------------------------------------
# the store
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """One episode of a text agent.

    Attributes:
        task: identity of the game instance (a plain tuple such as ``("textworld", path, 0, "train")``).
        instruction: the goal text.
        observations: ``o_0 .. o_T`` (``T + 1`` entries; ``o_T`` follows the last action).
        candidates: the admissible commands at steps ``0 .. T-1``.
        actions: index of the chosen command in ``candidates[t]``.
        rewards: env rewards ``r_env`` of steps ``0 .. T-1``.
        invalid: the env reported step t's action invalid.
        terminated: the env ended the episode (won or lost); False = cut at the step limit (truncated).
        success: the episode was won (``d = 1`` of the weights).
        score: final normalised score in [0, 1].
        source: ``"expert"`` (D_exp) or ``"self"`` (D_self).
        iteration: the evolving iteration whose policy collected it (0 = π_BC; -1 for expert data).
        parse_failed: generative mode: step t's output could not be parsed as an action.
    """

    task: tuple
    instruction: str
    observations: list[str]
    candidates: list[list[str]]
    actions: list[int]
    rewards: list[float]
    invalid: list[bool]
    terminated: bool
    success: bool
    score: float
    source: str = "self"
    iteration: int = -1
    parse_failed: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        T = len(self.actions)
        if T == 0:
            raise ValueError(f"Trajectory of task {self.task}: an episode needs at least one step")
        if len(self.observations) != T + 1:
            raise ValueError(f"Trajectory: {len(self.observations)} observations for {T} steps (need T + 1)")
        for name in ("candidates", "rewards", "invalid"):
            if len(getattr(self, name)) != T:
                raise ValueError(f"Trajectory: {name} has {len(getattr(self, name))} entries for {T} steps")
        if not self.parse_failed:
            self.parse_failed = [False] * T
        if self.source not in ("expert", "self"):
            raise ValueError(f"Trajectory: source must be 'expert' or 'self', got {self.source!r}")

    def __len__(self) -> int:
        return len(self.actions)

    def state(self, t: int) -> StateParts:
        """``(instruction, history of (a_k, o_{k+1}) for k < t, o_t)``, ``0 <= t <= T``."""
        history = tuple((self.candidates[k][self.actions[k]], self.observations[k + 1]) for k in range(t))
        return self.instruction, history, self.observations[t]

    def action_text(self, t: int) -> str:
        return self.candidates[t][self.actions[t]]


def check_aux_rules(aux_values: dict[str, float] | None, rep_window: int) -> tuple[dict[str, float], int]:
    """The auxiliary reward values (defaults filled in) and ``rep_window``, or a clear error for bad ones."""
    unknown = set(aux_values or {}) - set(AUX_REWARD_DEFAULTS)
    if unknown:
        raise ValueError(f"auxiliary rewards: unknown rules {sorted(unknown)}; valid: {sorted(AUX_REWARD_DEFAULTS)}")
    if int(rep_window) != rep_window or rep_window < 1:
        raise ValueError(f"auxiliary rewards: rep_window must be an integer >= 1 (1 = o_{{t+1}} == o_t), got {rep_window}")
    return {**AUX_REWARD_DEFAULTS, **{k: float(v) for k, v in (aux_values or {}).items()}}, int(rep_window)


class TrajectoryStore:
    """The hybrid dataset ``D = D_exp ∪ D_self`` with its per-step labels (q_evolve.md §3).

    Steps are numbered globally in insertion order (trajectory after trajectory). Per-step labels are float
    lists aligned with that numbering: ``r_aux`` (written by :meth:`label_aux` when a trajectory is added),
    ``advantage`` and ``logp_old`` (written by the relabeling callback at the start of each policy phase;
    NaN until then).

    ``state_dict``/``load_state_dict`` give plain Python data for the datamodule's checkpoint state.

    Args:
        aux_values: ``{"fmt", "inv", "rep"}`` rewards of the auxiliary rules (missing keys keep
            :data:`AUX_REWARD_DEFAULTS`, q_evolve.md §3 Defaults: −0.1, −0.1, −0.05).
        rep_window: how many of the latest observations ``o_t, o_{t-1}, …`` the next observation is compared
            with for ``r_rep``. 1 is the spec's rule (``o_{t+1} == o_t``); 2 also counts an action that undoes
            the one before it, which no single observation shows (our option, default 1).
    """

    def __init__(self, aux_values: dict[str, float] | None = None, rep_window: int = 1) -> None:
        self.aux_values, self.rep_window = check_aux_rules(aux_values, rep_window)
        self.trajectories: list[Trajectory] = []
        self.r_aux: list[float] = []
        self.aux_rule: list[str | None] = []
        self.advantage: list[float] = []
        self.logp_old: list[float] = []
        self._index: list[tuple[int, int]] = []

    # ------------------------------------------------------------------ contents
    def add(self, trajectories: Iterable[Trajectory]) -> None:
        """Append trajectories and label their auxiliary rewards."""
        for traj in trajectories:
            k = len(self.trajectories)
            self.trajectories.append(traj)
            for t in range(len(traj)):
                self._index.append((k, t))
                r, rule = self._aux(traj, t)
                self.r_aux.append(r)
                self.aux_rule.append(rule)
                self.advantage.append(float("nan"))
                self.logp_old.append(float("nan"))

    def _aux(self, traj: Trajectory, t: int) -> tuple[float, str | None]:
        return aux_reward(
            traj.observations[t], traj.observations[t + 1], traj.action_text(t),
            traj.candidates[t], traj.invalid[t], traj.parse_failed[t], self.aux_values,
            earlier=traj.observations[max(0, t - self.rep_window + 1) : t],
        )  # fmt: skip

    def set_aux_rules(self, aux_values: dict[str, float] | None = None, rep_window: int = 1) -> None:
        """Use other auxiliary rewards / ``rep_window`` (the method's settings) and relabel every stored step."""
        self.aux_values, self.rep_window = check_aux_rules(aux_values, rep_window)
        labels = [self._aux(self.trajectories[k], t) for k, t in self._index]
        self.r_aux = [r for r, _ in labels]
        self.aux_rule = [rule for _, rule in labels]

    def __len__(self) -> int:
        return len(self._index)

    @property
    def num_trajectories(self) -> int:
        return len(self.trajectories)

    def locate(self, i: int) -> tuple[int, int]:
        """``(trajectory index, step t)`` of global step ``i``."""
        return self._index[i]

    def step_indices(self, source: str | None = None) -> list[int]:
        """Global indices of every step, or of the steps of one source (``"expert"``/``"self"``)."""
        if source is None:
            return list(range(len(self._index)))
        return [i for i, (k, _) in enumerate(self._index) if self.trajectories[k].source == source]

    def states(self) -> list[StateParts]:
        """``s_t`` of every step, in the global step order."""
        return [self.trajectories[k].state(t) for k, t in self._index]

    def final_states(self) -> list[StateParts]:
        """``s_T`` (the state after the last action) of every trajectory."""
        return [tr.state(len(tr)) for tr in self.trajectories]

    def count(self, source: str) -> int:
        return sum(1 for tr in self.trajectories if tr.source == source)

    def aux_counts(self) -> dict[str, int]:
        return {rule: sum(1 for r in self.aux_rule if r == rule) for rule in ("fmt", "inv", "rep")}

    # ------------------------------------------------------------------ batches
    def step_record(self, i: int) -> dict[str, Any]:
        """Everything a training step needs about global step ``i`` (strings stay Python objects)."""
        k, t = self._index[i]
        tr = self.trajectories[k]
        T = len(tr)
        last = t == T - 1
        return {
            "index": i,
            "state": tr.state(t),
            "next_state": tr.state(t + 1),
            "candidates": list(tr.candidates[t]),
            "action": tr.actions[t],
            "action_text": tr.action_text(t),
            "r_env": float(tr.rewards[t]),
            "r_aux": float(self.r_aux[i]),
            "done": float(last and tr.terminated),  # 1 - done_t masks V(s_{t+1}) in the Q target
            "t": t + 1,  # 1-based (q_evolve.md §3, w_t)
            "T": T,
            "success": float(tr.success),
            "expert": float(tr.source == "expert"),
            "advantage": float(self.advantage[i]),
            "logp_old": float(self.logp_old[i]),
        }

    @staticmethod
    def collate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Stack numeric fields into tensors; strings, states and candidate lists stay lists."""
        out: dict[str, Any] = {}
        for key in records[0]:
            vals = [r[key] for r in records]
            if key in ("index", "action", "t", "T"):
                out[key] = torch.tensor(vals, dtype=torch.long)
            elif isinstance(vals[0], float):
                out[key] = torch.tensor(vals, dtype=torch.float32)
            else:
                out[key] = vals
        return out

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "trajectories": [asdict(tr) for tr in self.trajectories],
            "r_aux": list(self.r_aux),
            "aux_rule": list(self.aux_rule),
            "advantage": list(self.advantage),
            "logp_old": list(self.logp_old),
            "aux_values": dict(self.aux_values),
            "rep_window": self.rep_window,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(state["aux_values"], state.get("rep_window", 1))
        self.trajectories = [Trajectory(**{**d, "task": tuple(d["task"])}) for d in state["trajectories"]]
        self._index = [(k, t) for k, tr in enumerate(self.trajectories) for t in range(len(tr))]
        self.r_aux = list(state["r_aux"])
        self.aux_rule = list(state["aux_rule"])
        self.advantage = list(state["advantage"])
        self.logp_old = list(state["logp_old"])
        if not (len(self.r_aux) == len(self.advantage) == len(self.logp_old) == len(self._index)):
            raise ValueError("TrajectoryStore.load_state_dict: per-step labels do not match the trajectories")


def trajectory_advantages(
    store: TrajectoryStore,
    values: Tensor,
    final_values: Tensor,
    gamma: float,
    lam: float,
    use_aux: bool = False,
) -> Tensor:
    """GAE process rewards of every step of the store (q_evolve.md §3, "RELABEL").

    ``delta_t = r_t + γ (1 − done_t) V(s_{t+1}) − V(s_t)``, ``A_t = delta_t + γ λ (1 − done_t) A_{t+1}`` per
    trajectory, backwards, through :func:`trainer.rl.gae` on the concatenation of all trajectories: the
    last step of a terminated trajectory is ``terminated`` (no bootstrap), the last step of a trajectory cut
    at the step limit is ``truncated`` and bootstraps ``V(s_T)``.

    Args:
        store: the trajectory dataset.
        values: ``[N]`` V(s_t) of every step, in the store's global order.
        final_values: ``[num_trajectories]`` V(s_T) of each trajectory's last state.
        gamma: discount γ.
        lam: GAE λ.
        use_aux: add ``r_aux`` to the env reward (the ``advantage_reward=env_plus_aux`` ablation; the paper
            reports it hurts, so off by default).

    Returns:
        ``[N]`` float32 advantages.
    """
    n = len(store)
    if values.numel() != n or final_values.numel() != store.num_trajectories:
        raise ValueError(
            f"trajectory_advantages: {values.numel()} values / {final_values.numel()} final values for "
            f"{n} steps / {store.num_trajectories} trajectories"
        )
    rewards = torch.zeros(n)
    term = torch.zeros(n, dtype=torch.bool)
    trunc = torch.zeros(n, dtype=torch.bool)
    finals = torch.zeros(n)
    i = 0
    for k, tr in enumerate(store.trajectories):
        T = len(tr)
        rewards[i : i + T] = torch.tensor(tr.rewards, dtype=torch.float32)
        end = i + T - 1
        if tr.terminated:
            term[end] = True
        else:
            trunc[end] = True
            finals[end] = final_values[k]
        i += T
    if use_aux:
        rewards = rewards + torch.tensor(store.r_aux, dtype=torch.float32)
    adv, _ = gae(
        rewards[:, None], values.reshape(n, 1).float(), term[:, None], trunc[:, None], finals[:, None],
        torch.zeros(1), gamma, lam,
    )
    return adv[:, 0]
