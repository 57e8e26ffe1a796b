"""Optimizer warm-up of regrown weights and density-aware learning rate (SMET; dst_core.md §5, P3).

"Memory-Efficient LLM Training with Dynamic Sparsity: From Stability to Practical Scaling" (Xiao et al.,
arXiv 2606.00888). Regrown weights have zero Adam moments while bias correction uses the shared global
step, so their first update is ≈3.16× the lr (a cold start). SMET counts steps per entry (P2) and warms
reset entries up over W steps (P3): ``m_damping`` (stored m *= min(s/W, 1), the authors' code) or
``linear_lr`` (lr·min(s/W, 1), the paper's description). It also scales the lr by 1/d.

Hooks (order with ``SparseTopology`` does not matter):

- ``setup("fit")`` (before ``configure_optimizers``): sets the module's ``lr_multiplier`` = 1/d through
  :class:`trainer.protocols.HasLrMultiplier` (and ``lr_scaling_groups`` when the module has that attribute),
  and rewrites the resolved options of every ``SparseTopology`` in the trainer to P3 with this callback's
  W, mode and reset step, so the slot resets and the masks it attaches use them whichever runs first.
- ``on_fit_start`` (after ``configure_optimizers``; the optimizer does not exist in ``setup``): asserts
  every optimizer is a ``MaskedAdam`` and sets ``warmup_steps``/``warmup_mode``/``warmup_scope``/
  ``reset_step`` on its param groups (and P3 on the groups that need it: sparse groups, or all with
  ``scope: all``).

Density d: taken from the module's mask set restricted to a ``SparseTopology``'s selection when one is
present. Compact layers (dst_core §1) give the exact d = Σ len(index) / Σ n. For the dense layout the
masks are not yet initialised in ``setup``, so d is the topology's target ``density`` (its exact counts
differ from it by rounding only). Without a ``SparseTopology``, d is measured over the whole mask set
(compact entries and dense masks that are not all True); a fully dense set gives d = 1.

No checkpointed state: everything is re-derived in ``setup`` (``_state_attrs`` is empty).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.protocols import HasLrMultiplier, HasMasks
from trainer.sparse.masks import mask_set_density
from trainer.sparse.optim import WARMUP_MODES, WARMUP_SCOPES, MaskedAdam

__all__ = ["RegrowthWarmup"]


class RegrowthWarmup(StatefulCallback):
    """SMET's per-entry warm-up of regrown weights (P3) and density-aware LR (dst_core §5; smet.md §3).

    Args:
        warmup_steps: W, steps over which a reset entry warms up (the code's ``op_decay_steps``). Default 100.
        mode: ``m_damping`` (authors' code, default) or ``linear_lr`` (paper).
        scope: ``regrown`` (default: entries reset by a topology update), ``sparse`` (also the initial
            sparse entries during the first W steps) or ``all`` (also the dense tensors; authors' code).
        reset_step: s_i of a reset entry (1 in the authors' code). Default 1.
        density_lr_scaling: set the module's ``lr_multiplier`` to 1/d. Default true.
        lr_scaling_groups: ``all`` (authors' code, default) or ``sparse_only`` param groups get the multiplier.
        name: identity of this callback in checkpoints. Default ``regrowth_warmup``.
    """

    _state_attrs: tuple[str, ...] = ()

    def __init__(
        self,
        warmup_steps: int = 100,
        mode: str = "m_damping",
        scope: str = "regrown",
        reset_step: int = 1,
        density_lr_scaling: bool = True,
        lr_scaling_groups: str = "all",
        name: str = "regrowth_warmup",
    ) -> None:
        super().__init__(name)
        if int(warmup_steps) <= 0:
            raise ValueError(f"RegrowthWarmup: warmup_steps must be positive, got {warmup_steps}")
        if mode not in WARMUP_MODES:
            raise ValueError(f"RegrowthWarmup: mode must be one of {WARMUP_MODES}, got {mode!r}")
        if scope not in WARMUP_SCOPES:
            raise ValueError(f"RegrowthWarmup: scope must be one of {WARMUP_SCOPES}, got {scope!r}")
        if int(reset_step) < 0:
            raise ValueError(f"RegrowthWarmup: reset_step must be non-negative, got {reset_step}")
        if lr_scaling_groups not in ("all", "sparse_only"):
            raise ValueError(f"RegrowthWarmup: lr_scaling_groups must be 'all' or 'sparse_only', got {lr_scaling_groups!r}")
        self.warmup_steps = warmup_steps
        self.mode = mode
        self.scope = scope
        self.reset_step = reset_step
        self.density_lr_scaling = density_lr_scaling
        self.lr_scaling_groups = lr_scaling_groups
        self.density: float | None = None  # derived in setup

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        """Tiny settings for the generic tests."""
        return {"warmup_steps": 2, "density_lr_scaling": False}

    @staticmethod
    def _topologies(trainer: Trainer) -> list[Any]:
        from callbacks.sparse_topology import SparseTopology

        return [cb for cb in trainer.callbacks if isinstance(cb, SparseTopology)]

    def _density(self, trainer: Trainer, pl_module: LightningModule) -> float:
        topos = self._topologies(trainer)
        if not isinstance(pl_module, HasMasks):
            if topos:
                return float(topos[0].config.density)
            raise TypeError("RegrowthWarmup(density_lr_scaling=True) needs a HasMasks module or a SparseTopology")
        if not topos:
            return mask_set_density(pl_module)
        cfg = topos[0].config
        entries = pl_module.mask_set()
        selected = [entries[n] for n in topos[0]._select(entries)]  # the topology's own include/exclude
        if selected and all(e.layout == "compact" for e in selected):
            return mask_set_density(pl_module, cfg.include, cfg.exclude)  # exact: Σ len(index) / Σ n
        return float(cfg.density)  # dense layout: masks are initialised later in setup

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Set the lr multiplier 1/d and make every SparseTopology reset slots with this warm-up (P3)."""
        if stage != "fit":
            return
        for topo in self._topologies(trainer):
            # dst_core §5, P3: P2 + warm-up; SparseTopology attaches these to the optimizer and resets with them
            topo.config = dataclasses.replace(
                topo.config,
                state_policy="P3",
                warmup_steps=int(self.warmup_steps),
                warmup_mode=self.mode,
                reset_step=int(self.reset_step),
            )
        if not self.density_lr_scaling:
            return
        if not isinstance(pl_module, HasLrMultiplier):
            raise TypeError(
                f"RegrowthWarmup(density_lr_scaling=True) needs a module with an lr_multiplier attribute "
                f"(trainer.protocols.HasLrMultiplier); {type(pl_module).__name__} has none"
            )
        self.density = self._density(trainer, pl_module)
        pl_module.lr_multiplier = 1.0 / self.density  # smet.md §3: lr = lr_dense / d
        if hasattr(pl_module, "lr_scaling_groups"):
            pl_module.lr_scaling_groups = self.lr_scaling_groups
        elif self.lr_scaling_groups != "all":
            raise TypeError(
                f"RegrowthWarmup(lr_scaling_groups='sparse_only') needs {type(pl_module).__name__} to have an "
                "lr_scaling_groups attribute passed to configure_optimization"
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Assert MaskedAdam and configure its warm-up options (P3) on the param groups."""
        for opt in trainer.optimizers:
            if not isinstance(opt, MaskedAdam):
                raise TypeError(
                    f"RegrowthWarmup needs trainer.sparse.MaskedAdam (per-entry steps and warm-up, dst_core §5 P3); "
                    f"configure_optimizers returned {type(opt).__name__}"
                )
            sparse = {p for p in list(opt._masks) + list(opt._compact)}
            for group in opt.param_groups:
                group.update(
                    warmup_steps=int(self.warmup_steps),
                    warmup_mode=self.mode,
                    warmup_scope=self.scope,
                    reset_step=int(self.reset_step),
                )
                if self.scope == "all" or any(p in sparse for p in group["params"]):
                    group["state_policy"] = "P3"
