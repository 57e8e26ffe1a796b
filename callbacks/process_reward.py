"""Process-reward relabeling of a trajectory dataset (q_evolve.md §2, §3 "RELABEL"; DESIGN.md cross-cutting callbacks).

``ProcessRewardRelabelCallback`` drives the evolving iterations of a module that exposes a value function
(:class:`trainer.protocols.HasValueFunction`, e.g. ``QEvolve``) over a datamodule that owns a trajectory
dataset and its environments (:class:`trainer.protocols.HasTrajectoryDataset`):

- at the first critic epoch of iteration k it asks the datamodule to collect new trajectories with the
  current policy (D_self ← D_self ∪ rollouts), so the critic of iteration k trains on the new D;
- at the first policy epoch of iteration k, with the critic frozen, it computes V(s_t) of every step and
  writes the process rewards ``A_t`` (GAE on the env rewards; :func:`trainer.trajectories.trajectory_advantages`,
  or ``min Q̄ − V`` in the ``q_minus_v`` ablation) and ``logp_old = log π_old(a_t|s_t)`` (π_old = the policy at
  the start of the phase, frozen for the whole phase) into the dataset, which the policy update then reads;
- it logs ``relabel/adv_mean``, ``relabel/adv_std``, ``relabel/frac_negative``, ``data/n_expert``,
  ``data/n_self``, ``data/aux_{fmt,inv,rep}`` and an advantage histogram split by success and failure.

Every rank computes the same labels from the same dataset and the same (DDP-synchronised) weights, so the
labels agree across ranks without communication (the datamodule's collection gathers trajectories).

Hooks: ``setup`` checks the protocols and registers :meth:`prepare_epoch` with the datamodule, which calls it
when an epoch's data are first iterated; ``on_train_epoch_start`` calls it too. It is idempotent, and it must run
before the epoch's first batch is drawn: on a resumed run Lightning creates (and prefetches from) the first
epoch's iterator before ``on_train_epoch_start``, hence the datamodule hook.

State (checkpointed): ``collected`` and ``relabeled``, the iterations already collected / relabeled, so a
resume in the middle of an iteration never collects or relabels twice (the labels themselves are in the
datamodule's checkpointed dataset).
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.protocols import HasTrajectoryDataset, HasValueFunction
from trainer.trajectories import trajectory_advantages

__all__ = ["ProcessRewardRelabelCallback"]


def relabel_store(store: Any, module: Any) -> dict[str, float]:
    """Write ``advantage`` and ``logp_old`` of every step of ``store`` with ``module``'s critic and policy.

    Returns the summary statistics of the advantages (mean, std, fraction negative).
    """
    settings = module.relabel_settings()
    states = store.states()
    steps = [store.locate(i) for i in range(len(store))]
    cands = [store.trajectories[k].candidates[t] for k, t in steps]
    actions = [store.trajectories[k].actions[t] for k, t in steps]
    texts = [store.trajectories[k].action_text(t) for k, t in steps]
    values = module.state_values(states)
    if settings["advantage"] == "q_minus_v":
        adv = module.min_q_values(states, texts) - values  # q_evolve.md §3 ablation: A = min Q̄ − V, no GAE
    else:
        finals = module.state_values(store.final_states())
        adv = trajectory_advantages(  # q_evolve.md §3, delta_t and A_t on r_env only
            store, values, finals, settings["gamma"], settings["lam"],
            use_aux=settings["advantage_reward"] == "env_plus_aux",
        )
    logp = module.action_log_probs(states, cands, actions)  # log π_old, frozen for the phase
    store.advantage = [float(a) for a in adv]
    store.logp_old = [float(x) for x in logp]
    a = adv.float()
    return {
        "adv_mean": float(a.mean()),
        "adv_std": float(a.std()) if a.numel() > 1 else 0.0,
        "frac_negative": float((a < 0).float().mean()),
    }


class ProcessRewardRelabelCallback(StatefulCallback):
    """Collects D_self and relabels every step of the trajectory dataset with its process reward (q_evolve.md §3).

    Args:
        histogram: log the advantage histogram split by success / failure at each relabeling. Default True.
        name: identity of this callback in checkpoints. Default "process_reward".
    """

    _state_attrs = ("collected", "relabeled")

    def __init__(self, histogram: bool = True, name: str = "process_reward") -> None:
        super().__init__(name)
        self.histogram = histogram
        self.collected: list[int] = []
        self.relabeled: list[int] = []
        self.last_stats: dict[str, float] = {}

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"histogram": False}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, HasValueFunction):
            raise ValueError(
                f"ProcessRewardRelabelCallback needs a module that exposes a value function "
                f"(trainer.protocols.HasValueFunction, e.g. QEvolve); got {type(pl_module).__name__}"
            )
        if not isinstance(trainer.datamodule, HasTrajectoryDataset):
            raise ValueError(
                "ProcessRewardRelabelCallback needs a datamodule with a trajectory dataset and environments "
                f"(trainer.protocols.HasTrajectoryDataset); got {type(trainer.datamodule).__name__}"
            )
        trainer.datamodule.add_epoch_hook(self.name, lambda epoch: self.prepare_epoch(trainer, pl_module, epoch))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.prepare_epoch(trainer, pl_module, trainer.current_epoch)

    def prepare_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        """Collect (first critic epoch) or relabel (first policy epoch) for ``epoch``; idempotent.

        Also registered with the datamodule (``add_epoch_hook``) and called when the epoch's data are first
        iterated: on a resumed run Lightning creates the first epoch's iterator (and draws its first batch)
        before it restores the epoch counter and calls ``on_train_epoch_start``.
        """
        phase, iteration, first, _ = pl_module.evolve_phase(epoch)
        dm = trainer.datamodule
        if phase == "critic" and first and iteration not in self.collected and pl_module.wants_rollouts(iteration):
            start = time.perf_counter()
            stats = dm.collect(pl_module, iteration)  # D_self <- D_self ∪ rollouts(π)
            self.collected.append(iteration)
            stats = {**stats, "collect_seconds": time.perf_counter() - start}
            self._log(trainer, {f"data/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
            self._log_sizes(trainer, dm.store)
        if phase == "policy" and first and iteration not in self.relabeled:
            stats = relabel_store(dm.store, pl_module)
            self.relabeled.append(iteration)
            self.last_stats = stats
            self._log(trainer, {f"relabel/{k}": v for k, v in stats.items()})
            self._log_sizes(trainer, dm.store)
            if self.histogram and not trainer.fast_dev_run:
                self._histogram(trainer, dm.store)

    def _log_sizes(self, trainer: Trainer, store: Any) -> None:
        aux = store.aux_counts()
        self._log(trainer, {"data/n_expert": store.count("expert"), "data/n_self": store.count("self"),
                            **{f"data/aux_{k}": v for k, v in aux.items()}})  # fmt: skip

    @staticmethod
    def _log(trainer: Trainer, values: dict[str, float]) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({k: float(v) for k, v in values.items()}, step=trainer.global_step)

    @staticmethod
    def _histogram(trainer: Trainer, store: Any) -> None:
        from trainer.plots import histogram_figure, log_figure

        won, lost = [], []
        for i in range(len(store)):
            k, _ = store.locate(i)
            (won if store.trajectories[k].success else lost).append(store.advantage[i])
        fig = histogram_figure({"successful trajectories": won, "failed trajectories": lost},
                               title="process rewards A_t", xlabel="advantage")  # fmt: skip
        log_figure(trainer, "relabel/advantage_histogram", fig)
