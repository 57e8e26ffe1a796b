"""Small protocols through which callbacks talk to modules (DESIGN.md, "Imports flow one way").

Callbacks never import a module class; they check for one of these protocols instead.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

__all__ = [
    "MaskEntry", "HasMasks", "HasLrMultiplier", "HasBatchLoss", "HasSparseDeltas", "HasCalibration", "HasPlannedSteps",
    "ConceptStore", "ActorCritic", "HasRolloutEpisodes", "HasValueFunction", "HasTrajectoryDataset",
    "ScoresPreferences", "HasCorruptionResults", "ProvidesCorruptedSamples",
]  # fmt: skip


class MaskEntry(NamedTuple):
    """One sparse tensor of a module's mask set (dst_core.md §1).

    ``weight`` is the full ``nn.Parameter`` (dense layout) or the 1-D ``values`` (compact layout);
    ``mask`` is the persistent bool buffer of the weight's shape (dense) or the int64 ``index`` of
    flat active positions (compact); ``layout`` is ``"dense"`` or ``"compact"``.
    """

    weight: torch.nn.Parameter
    mask: torch.Tensor
    layout: str


@runtime_checkable
class HasMasks(Protocol):
    """A module whose sparse weights are listed, in a fixed order, by ``mask_set()``."""

    def mask_set(self) -> dict[str, MaskEntry]:  # pragma: no cover - protocol
        ...


@runtime_checkable
class HasLrMultiplier(Protocol):
    """A module whose ``configure_optimizers`` multiplies sparse (or all) group lrs by ``lr_multiplier``."""

    lr_multiplier: float


@runtime_checkable
class HasBatchLoss(Protocol):
    """A module that scores one batch without side effects: ``batch_loss(batch)`` is the mean loss (a
    0-d tensor) and logs nothing; callbacks such as ``LossSpikeProbe`` call it under ``no_grad``."""

    def batch_loss(self, batch: object) -> torch.Tensor:  # pragma: no cover - protocol
        ...


@runtime_checkable
class HasSparseDeltas(Protocol):
    """A module fine-tuned through sparse deltas over a pruned base (seft.md §2).

    ``sparse_deltas()`` lists its ``trainer.sparse.seft.SparseDeltaLinear`` layers in a fixed order
    (buffers ``W0``, ``M``, ``M0``, ``I``, ``n_keep``; parameter ``values``); ``base_pattern`` is the base
    pruning pattern (``"unstructured"`` or ``"N:M"``; growth of N:M bases never reactivates).
    """

    base_pattern: str

    def sparse_deltas(self) -> dict[str, torch.nn.Module]:  # pragma: no cover - protocol
        ...


@runtime_checkable
class HasCalibration(Protocol):
    """A datamodule that hands out calibration inputs for post-training pruning (dst_core §10):
    ``calibration_batches(n_samples, seq_len, source, seed)`` returns int64 ``input_ids`` tensors
    ``[b, T]`` holding ``n_samples`` rows in all, the same for the same arguments."""

    def calibration_batches(
        self, n_samples: int, seq_len: int | None = None, source: str | None = None, seed: int = 0
    ) -> list[torch.Tensor]:  # pragma: no cover - protocol
        ...


@runtime_checkable
class HasPlannedSteps(Protocol):
    """A datamodule that knows how long the run it serves is meant to be (``RepeatedTokensDataModule``: the
    optimizer steps of ``epochs`` passes over the unique budget), so schedules span the planned run even
    when a run is stopped early and resumed with another ``max_epochs`` (read by
    ``trainer.optimization.planned_optimizer_steps``)."""

    def planned_optimizer_steps(self, trainer: object) -> int:  # pragma: no cover - protocol
        ...


@runtime_checkable
class ConceptStore(Protocol):
    """A streaming module holding a repository of concept states, one classifier each (ficsum.md §2).

    The drift callback (``ConceptDriftCallback``) installs a drift engine with ``set_drift_engine``; the
    module then calls ``engine.observe(store, x, y, y_hat, concept, index)`` after predicting each
    observation (test-then-train), and the engine decides what is learned, when the active state
    changes and which state it becomes. Without an engine the module learns every observation at once.

    ``X`` are float arrays ``(n, d)`` in the stream's feature order; labels are ints ``0..C-1``;
    ``proba_with`` returns ``(n, C)`` probabilities over ``classes``.
    """

    active_id: int
    classes: tuple[int, ...]

    def state_ids(self) -> list[int]:  # pragma: no cover - protocol
        ...

    def predict_with(self, state_id: int, X: object) -> object:  # pragma: no cover - protocol
        ...

    def proba_with(self, state_id: int, X: object) -> object:  # pragma: no cover - protocol
        ...

    def learn(self, X: object, y: object, w: float | None = None) -> bool:  # pragma: no cover - protocol
        """Train the active state's classifier; True if its structure changed (a tree split)."""
        ...

    def train_model(self, X: object, y: object, w: float | None = None) -> object:  # pragma: no cover
        """A fresh classifier trained on ``X, y`` (the shadow model of re-identification)."""
        ...

    def new_state(self, from_model: object | None = None) -> int:  # pragma: no cover - protocol
        """Add a state (a fresh classifier, or ``from_model``), make it active and return its id."""
        ...

    def switch(self, state_id: int) -> None:  # pragma: no cover - protocol
        ...

    def state_n_seen(self, state_id: int) -> int:  # pragma: no cover - protocol
        ...

    def set_drift_engine(self, engine: object | None) -> None:  # pragma: no cover - protocol
        ...


@runtime_checkable
class ActorCritic(Protocol):
    """An on-policy module a ``RolloutDataModule`` collects experience with (rl_core.md §2).

    ``act(obs, generator)`` samples actions with the given ``torch.Generator`` and returns a dict with
    ``action`` (``[N, H]`` long, one column per discrete head), ``logp`` ``[N]`` (summed over heads),
    ``value`` and ``cost_value`` ``[N]``; ``values(obs)`` returns ``(value, cost_value)`` (the cost
    value is zeros for a module without a cost critic). ``obs`` is the stacked env observation tensor.
    A stateful module (GRU, PPO-Sauté; :class:`trainer.ppo.PPOBase`) also takes a per-env ``state`` dict as
    a third argument of ``act`` and second of ``values`` (optional: None = its initial state); see
    :mod:`trainer.rollout`. With Box heads ``action`` is ``[N, heads + box]`` float.
    """

    def act(self, obs: object, generator: object) -> dict:  # pragma: no cover - protocol
        ...

    def values(self, obs: object) -> tuple:  # pragma: no cover - protocol
        ...


@runtime_checkable
class HasRolloutEpisodes(Protocol):
    """A datamodule exposing the episodes finished in its last rollout (dicts with ``return``, ``cost``,
    ``length``, scenario extras and, for navigation envs, ``positions`` ``[L, 2]``) for callbacks such as
    ``NavigationHeatmapCallback``."""

    episodes: list

    def make_eval_env(self, seed: int) -> object:  # pragma: no cover - protocol
        """A fresh single env (``render()`` gives RGB frames) for evaluation episodes and videos."""
        ...


@runtime_checkable
class HasValueFunction(Protocol):
    """A text-agent module whose trajectory dataset a ``ProcessRewardRelabelCallback`` relabels (q_evolve.md §3).

    States are ``trainer.trajectories.StateParts`` tuples ``(instruction, history, observation)``.

    - ``evolve_phase(epoch)`` → ``(phase, iteration, is_first_epoch_of_phase, is_last_epoch_of_phase)`` with
      ``phase`` one of ``"bc"``, ``"critic"``, ``"policy"``, ``"done"``.
    - ``state_values(states)`` → ``[N]`` V(s) of the (frozen) critic, no gradient.
    - ``min_q_values(states, actions)`` → ``[N]`` min(Q̄1, Q̄2)(s, a) of the target critics, no gradient.
    - ``action_log_probs(states, candidates, actions)`` → ``[N]`` log π(a|s) of the current policy, no gradient.
    - ``relabel_settings()`` → dict with ``gamma``, ``lam``, ``advantage`` (``gae``/``q_minus_v``) and
      ``advantage_reward`` (``env``/``env_plus_aux``).
    - ``wants_rollouts(iteration)`` → whether D_self is extended with rollouts of the current policy at the
      start of this iteration.
    """

    def evolve_phase(self, epoch: int) -> tuple:  # pragma: no cover - protocol
        ...

    def state_values(self, states: object) -> torch.Tensor:  # pragma: no cover - protocol
        ...

    def min_q_values(self, states: object, actions: object) -> torch.Tensor:  # pragma: no cover - protocol
        ...

    def action_log_probs(self, states: object, candidates: object, actions: object) -> torch.Tensor:  # pragma: no cover
        ...

    def relabel_settings(self) -> dict:  # pragma: no cover - protocol
        ...


@runtime_checkable
class HasTrajectoryDataset(Protocol):
    """A datamodule owning a trajectory dataset (``store``: ``trainer.trajectories.TrajectoryStore``) and the
    environments to extend it: ``collect(agent, iteration)`` runs the agent (``choose_actions``) on the
    training tasks, adds the trajectories to ``store`` identically on every rank and returns summary stats;
    ``add_epoch_hook(name, fn)`` registers ``fn(epoch)`` to run when each epoch's data are first iterated, before any
    batch is drawn (a callback that edits the dataset for the epoch uses it)."""

    store: object

    def add_epoch_hook(self, name: str, fn: object) -> None:  # pragma: no cover - protocol
        ...

    def collect(self, agent: object, iteration: int) -> dict:  # pragma: no cover - protocol
        ...


@runtime_checkable
class ScoresPreferences(Protocol):
    """A module that can "score these preferences" (moc.md §2; ``callbacks/pareto.py`` evaluates through it).

    ``objective_names``: the N objectives, in the order of every preference vector and reward vector.
    ``score_preferences(preferences)``: for each row p of the ``[M, N]`` array (each on the simplex), generate on
    the module's fixed evaluation inputs conditioned on p and return a dict:

    - ``"rewards"``: ``[M, N]`` float array, the mean *normalised* reward of each objective per preference (the
      Pareto front, hypervolume and orderings are computed on these);
    - ``"raw_rewards"``: ``[M, N]``, the same before normalisation;
    - ``"shares"``: ``[M, N]`` mean control score s(R~) per preference, or ``None`` (used for ``ctl_error``);
    - ``"examples"``: a list of dicts ``{"preference": tuple, "prompt": str, "response": str, "rewards": tuple}``
      (may be empty) for the text table.

    It must return the same numbers on every rank (the same weights and a fixed evaluation generator)."""

    objective_names: tuple

    def score_preferences(self, preferences: object) -> dict:  # pragma: no cover - protocol
        ...


@runtime_checkable
class HasCorruptionResults(Protocol):
    """A module that, after ``trainer.test`` over a corruption grid, holds ``test_results``: loader name → metric
    (higher is better), with the names ``"clean"`` and ``"<corruption>/s<severity>"`` (reobench.md §2;
    ``callbacks/robustness.py`` reads it)."""

    test_results: dict


@runtime_checkable
class ProvidesCorruptedSamples(Protocol):
    """A datamodule that can show test image ``index`` under any (corruption, severity) as uint8 ``[H, W, 3]``
    (and its warped mask, or None), for the TensorBoard sample grid (reobench.md §8; ``callbacks/robustness.py``)."""

    def corrupt_one(self, name: str, severity: int, index: int) -> tuple[Any, Any]: ...

    def clean_test_set(self) -> tuple[Any, Any]: ...
