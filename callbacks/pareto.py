"""Pareto-front evaluation of a preference-conditioned policy (moc.md §2 "callback", §7, §8).

``ParetoFrontEvalCallback`` is the thin adapter around :mod:`trainer.pareto`. It talks to the module only
through :class:`trainer.protocols.ScoresPreferences`: ``score_preferences(preferences)`` returns the mean
normalised (and raw) rewards, the control shares and a few example generations per preference.

An evaluation scores the seen grid ``simplex_grid(N, grid_step)`` (11 preferences for N = 2 at step 0.1, 66
for N = 3) and the unseen grid ``unseen_grid(N, grid_step)`` (its midpoints), then:

- logs ``<name>/hv_seen``, ``hv_unseen`` (both against one reference point, fixed for the run),
  ``kendall_tau`` (mean over objectives of τ-b between p_k and R̄^k on the seen grid), ``local_order_rate``
  (seen grid), ``local_order_rate_union`` (seen ∪ unseen at half the step), ``front_size`` (non-dominated
  points of seen ∪ unseen), ``diversity`` (mean pairwise distance of the seen rewards), ``ctl_error`` (mean
  |s − p|, when the module returns shares) and, for N = 2, ``extreme_frac`` (seen points whose share s₁ is
  within 0.1 of 0 or 1; the bang-bang signature of linear scalarisation) to every logger; ``<name>`` is
  ``pareto`` by default;
- logs the Pareto plot ``<name>/front`` (:func:`trainer.plots.pareto_figure`) and the example table
  ``<name>/examples`` (p | prompt | response | R per objective) to TensorBoard;
- writes ``pareto_epoch{E:03d}.csv`` (E = epochs completed, 0 for the initial policy; columns split, p_1..p_N,
  R_1..R_N (in ``reward_space``), raw_1..raw_N, ref_1..ref_N, non_dominated) into ``trainer.log_dir``.

The reference point (moc.md §3 "Defaults"; §4: never compare hypervolumes over different reference points) is
the ``ref_point`` argument or, when it is None, the component-wise minimum of the initial policy's seen
rewards minus ``ref_margin``, measured once before the first training batch and kept in the checkpoint.

Hooks: ``setup("fit")`` checks the protocol and the arguments against N; ``on_train_start`` measures the
initial policy (reference point, the initial evaluation when ``eval_at_start``); ``on_train_epoch_end``
evaluates every ``every_n_epochs`` epochs (counted by ``current_epoch + 1``). ``on_train_start`` is used rather
than ``on_fit_start`` because it runs after every ``on_fit_start`` (the module's too, which may set up its
reward normalisation) and after a checkpoint is restored, so a resumed run never evaluates the initial policy
again. Order among callbacks does not matter. Every rank scores the preferences (the protocol promises the same
numbers on every rank) and keeps the same state; only global rank 0 logs and writes files.

State (checkpointed): ``ref_point`` (list, or None before it is measured), ``initial`` (the initial policy's seen
rewards) and ``history`` (per evaluation: epoch, global step, metrics, seen and unseen rewards).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from trainer.callback_state import StatefulCallback
from trainer.pareto import (
    examples_markdown,
    front_metrics,
    grid_divisions,
    non_dominated,
    reference_point,
    simplex_grid,
    unseen_grid,
)
from trainer.protocols import ScoresPreferences

__all__ = ["ParetoFrontEvalCallback"]


class ParetoFrontEvalCallback(StatefulCallback):
    """Sweeps the seen and unseen preference grids and logs the Pareto front's measures (moc.md §2, §8).

    The module must implement :class:`trainer.protocols.ScoresPreferences` (``objective_names`` and
    ``score_preferences``), as ``MOC`` does; N ≥ 2 objectives.

    Args:
        name: identity of this callback in checkpoints, and the prefix of its logged tags. Default "pareto".
        every_n_epochs: evaluate after every this many training epochs (by ``current_epoch + 1``). Default 1.
        grid_step: step of the seen grid ``simplex_grid(N, grid_step)``; must divide 1. Default 0.1 (moc.md §3
            "Defaults": 11 preferences for N = 2, 66 for N = 3).
        eval_unseen: also score the unseen grid (the midpoints, ``unseen_grid(N, grid_step)``). Default True.
        ref_point: the hypervolume reference point, one value per objective (in ``reward_space``), or None to
            measure it from the initial policy (min of its seen rewards minus ``ref_margin``). Default None.
        ref_margin: the margin below the initial policy's minimum when ``ref_point`` is None. Default 0.1.
        eval_at_start: log a full evaluation of the initial policy before the first training batch. Default True.
        save_csv: write the front of every evaluation as ``pareto_epoch{E:03d}.csv``. Default True.
        example_preferences: at most this many preferences, spread over the grid, in the example text table
            (0: no table). Default 5.
        reward_space: the rewards the front, hypervolume and orderings are computed on: ``normalised`` (moc.md §3,
            R̃ with the module's μ, σ of the initial policy; default) or ``raw`` (the reward models' own units, the
            same for every seed and method, e.g. fractions in [0, 1] for the synthetic task); ``ref_point`` is in
            the same space. The CSV's ``R_k`` columns hold the rewards of this space.
    """

    _state_attrs = ("ref_point", "initial", "history")

    def __init__(
        self,
        name: str = "pareto",
        every_n_epochs: int = 1,
        grid_step: float = 0.1,
        eval_unseen: bool = True,
        ref_point: tuple[float, ...] | None = None,
        ref_margin: float = 0.1,
        eval_at_start: bool = True,
        save_csv: bool = True,
        example_preferences: int = 5,
        reward_space: str = "normalised",
    ) -> None:
        super().__init__(name)
        if reward_space not in ("normalised", "raw"):
            raise ValueError(f"ParetoFrontEvalCallback: reward_space must be 'normalised' or 'raw', got {reward_space!r}")
        self.reward_space = reward_space
        if isinstance(every_n_epochs, bool) or int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
            raise ValueError(f"ParetoFrontEvalCallback: every_n_epochs must be an integer >= 1, got {every_n_epochs}")
        try:
            grid_divisions(grid_step)
        except ValueError as err:
            raise ValueError(f"ParetoFrontEvalCallback: grid_step: {err}") from None
        if ref_point is not None and (len(ref_point) == 0 or not all(np.isfinite(float(v)) for v in ref_point)):
            raise ValueError(f"ParetoFrontEvalCallback: ref_point must be finite numbers or None, got {ref_point}")
        if not np.isfinite(ref_margin) or ref_margin < 0:
            raise ValueError(f"ParetoFrontEvalCallback: ref_margin must be >= 0, got {ref_margin}")
        if int(example_preferences) < 0:
            raise ValueError(f"ParetoFrontEvalCallback: example_preferences must be >= 0, got {example_preferences}")
        self.every_n_epochs = every_n_epochs
        self.grid_step = grid_step
        self.eval_unseen = eval_unseen
        self.ref_margin = ref_margin
        self.eval_at_start = eval_at_start
        self.save_csv = save_csv
        self.example_preferences = example_preferences
        self.given_ref_point = None if ref_point is None else tuple(float(v) for v in ref_point)
        # checkpointed state
        self.ref_point: list[float] | None = None if ref_point is None else list(self.given_ref_point)
        self.initial: list[list[float]] | None = None
        self.history: list[dict[str, Any]] = []
        # derived in setup; not checkpointed
        self.last_metrics: dict[str, float] = {}
        self.objective_names: tuple[str, ...] = ()
        self.seen_grid: np.ndarray | None = None
        self.unseen_grid: np.ndarray | None = None

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"grid_step": 0.5, "example_preferences": 2}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.last_metrics = dict(self.history[-1]["metrics"]) if self.history else {}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, ScoresPreferences):
            raise TypeError(
                f"ParetoFrontEvalCallback needs a module that scores preferences (trainer.protocols.ScoresPreferences: "
                f"objective_names and score_preferences(preferences)), e.g. MOC; got {type(pl_module).__name__}"
            )
        self.objective_names = tuple(str(n) for n in pl_module.objective_names)
        n = len(self.objective_names)
        if n < 2:
            raise ValueError(f"ParetoFrontEvalCallback needs at least 2 objectives, got {self.objective_names}")
        self._check_ref_length(n)
        self.seen_grid = simplex_grid(n, self.grid_step)
        self.unseen_grid = unseen_grid(n, self.grid_step) if self.eval_unseen else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.seen_grid is None:
            return
        self._check_ref_length(len(self.objective_names))  # a restored checkpoint may carry another one
        given, stored = self.given_ref_point, self.ref_point
        if given is not None and stored is not None and not np.allclose(stored, given):
            raise ValueError(
                f"ParetoFrontEvalCallback: the checkpoint's reference point {stored} differs from "
                f"ref_point={given}; hypervolumes over different reference points do not compare"
            )
        if self.initial is not None:
            return  # measured before (a resumed run)
        seen = self._score(pl_module, self.seen_grid)
        self.initial = seen["rewards"].tolist()
        if self.ref_point is None:
            self.ref_point = reference_point(seen["rewards"], self.ref_margin).tolist()
        rank_zero_info(f"{self.name}: hypervolume reference point {self._fmt(self.ref_point)} (fixed for this run)")
        if self.eval_at_start and not self.history:
            self.evaluate(trainer, pl_module, epoch=0, seen=seen)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.seen_grid is None or self.ref_point is None:
            return
        epoch = trainer.current_epoch + 1
        if epoch % int(self.every_n_epochs) == 0:
            self.evaluate(trainer, pl_module, epoch=epoch)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, trainer: Trainer, pl_module: LightningModule, epoch: int, seen: dict | None = None) -> dict:
        """Score the grids, compute the metrics, record them in ``history`` and log them; returns the metrics.

        ``seen``: an already computed ``_score`` of the seen grid (the initial evaluation reuses the scores that
        fixed the reference point).
        """
        seen = seen if seen is not None else self._score(pl_module, self.seen_grid)
        unseen = self._score(pl_module, self.unseen_grid) if self.unseen_grid is not None else None
        ref = np.asarray(self.ref_point, dtype=np.float64)
        metrics = front_metrics(
            self.seen_grid, seen["rewards"], ref, self.grid_step,
            unseen_grid=self.unseen_grid, unseen_rewards=None if unseen is None else unseen["rewards"],
            shares=seen["shares"],
        )  # fmt: skip
        self.last_metrics = metrics
        self.history.append({
            "epoch": int(epoch),
            "global_step": int(trainer.global_step),
            "metrics": dict(metrics),
            "seen_rewards": seen["rewards"].tolist(),
            "unseen_rewards": None if unseen is None else unseen["rewards"].tolist(),
        })  # fmt: skip
        out_dir = None
        if self.save_csv:
            out_dir = trainer.log_dir or trainer.default_root_dir  # a collective call: every rank asks
        if trainer.is_global_zero:
            self._log(trainer, epoch, metrics, seen, unseen, ref, out_dir)
        return metrics

    def _score(self, pl_module: LightningModule, grid: np.ndarray) -> dict[str, Any]:
        """``score_preferences`` on ``grid`` (eval mode, no gradient), with its arrays checked and converted."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                out = pl_module.score_preferences(grid.copy())
        finally:
            pl_module.train(was_training)
        shape = grid.shape

        def array(key: str, required: bool) -> np.ndarray | None:
            value = out.get(key) if isinstance(out, dict) else None
            if value is None:
                if required:
                    raise ValueError(f"ParetoFrontEvalCallback: score_preferences returned no '{key}'")
                return None
            a = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.float64)
            if a.shape != shape or not np.all(np.isfinite(a)):
                raise ValueError(
                    f"ParetoFrontEvalCallback: score_preferences '{key}' must be a finite {list(shape)} array, got "
                    f"shape {list(a.shape)}"
                )
            return a

        raw = array("raw_rewards", self.reward_space == "raw")
        return {
            "rewards": raw if self.reward_space == "raw" else array("rewards", True),
            "raw_rewards": raw,
            "shares": array("shares", False),
            "examples": list(out.get("examples") or []),
        }

    # ------------------------------------------------------------------ logging (rank 0)
    def _log(
        self, trainer: Trainer, epoch: int, metrics: dict[str, float], seen: dict, unseen: dict | None,
        ref: np.ndarray, out_dir: str | None,
    ) -> None:  # fmt: skip
        from trainer.plots import log_figure, pareto_figure

        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics({f"{self.name}/{k}": float(v) for k, v in metrics.items()}, step=step)
        fig = pareto_figure(
            self.seen_grid, seen["rewards"], self.unseen_grid, None if unseen is None else unseen["rewards"],
            self.objective_names, initial=self.initial, ref=ref, shares=seen["shares"], space=self.reward_space,
        )  # fmt: skip
        log_figure(trainer, f"{self.name}/front", fig, step)
        table = examples_markdown(seen["examples"], self.objective_names, int(self.example_preferences))
        if table:
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_text"):
                    experiment.add_text(f"{self.name}/examples", table, global_step=step)
        if out_dir:
            self._write_csv(os.path.join(out_dir, f"pareto_epoch{epoch:03d}.csv"), seen, unseen, ref)
        unseen_hv = f"{metrics['hv_unseen']:.4f}" if "hv_unseen" in metrics else "-"
        rank_zero_info(
            f"{self.name} epoch {epoch}: hv_seen={metrics['hv_seen']:.4f} hv_unseen={unseen_hv} "
            f"kendall_tau={metrics['kendall_tau']:.3f} (ref {self._fmt(ref)})"
        )

    def _write_csv(self, path: str, seen: dict, unseen: dict | None, ref: np.ndarray) -> None:
        n = len(self.objective_names)
        parts = [("seen", self.seen_grid, seen)] + ([("unseen", self.unseen_grid, unseen)] if unseen else [])
        every = np.concatenate([part[2]["rewards"] for part in parts])
        mask = non_dominated(every)
        header = ["split", *(f"{c}_{k + 1}" for c in ("p", "R", "raw", "ref") for k in range(n)), "non_dominated"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        row_id = 0
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for split, grid, scored in parts:
                raw = scored["raw_rewards"]
                for i in range(len(grid)):
                    raw_i = [""] * n if raw is None else [repr(float(v)) for v in raw[i]]
                    writer.writerow([
                        split, *(repr(float(v)) for v in grid[i]), *(repr(float(v)) for v in scored["rewards"][i]),
                        *raw_i, *(repr(float(v)) for v in ref), int(mask[row_id]),
                    ])  # fmt: skip
                    row_id += 1

    # ------------------------------------------------------------------ helpers
    def _check_ref_length(self, n: int) -> None:
        for what, ref in (("ref_point", self.given_ref_point), ("the checkpoint's reference point", self.ref_point)):
            if ref is not None and len(ref) != n:
                raise ValueError(
                    f"ParetoFrontEvalCallback: {what} has {len(ref)} values but the module has {n} objectives "
                    f"{self.objective_names}"
                )

    @staticmethod
    def _fmt(values: Any) -> str:
        return "(" + ", ".join(f"{float(v):.4f}" for v in values) + ")"
