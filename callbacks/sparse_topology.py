"""Dynamic sparse training: mask init, drop/grow schedule, optimizer slot resets, logging (dst_core.md).

``SparseTopology`` is the thin adapter of dst_core §6 around the pure functions of
``trainer.sparse`` (init §2, drop/grow §3, schedules §4, optimizer policies §5, presets §11). It talks to
the module only through :class:`trainer.protocols.HasMasks`: modules call
``trainer.sparse.attach_masks(self)`` in ``__init__``, which gives every Linear/Conv/Embedding an
all-True ``weight_mask`` buffer; this callback picks the sparse ones by ``include``/``exclude`` regexes
over the mask-set names (e.g. ``"trunk.0.weight"``) and edits the buffers in place.

Hooks (automatic optimization, Lightning 2.6; the order is asserted by ``tests/test_dst_core.py``):

- ``setup("fit")``: exact-count masks from (run seed, layer) and inactive weights zeroed. It runs
  before Lightning restores a checkpoint, so on resume the restored buffers replace this fresh init.
- ``on_fit_start``: after ``configure_optimizers`` and before the optimizer state is restored: the
  masks and the state policy are attached to ``MaskedAdam``/``MaskedSGD``; density chart and scalars.
- ``on_train_start``: total steps T, ΔT and T_end are fixed.
- ``on_before_optimizer_step`` (once per real step, after the DDP all-reduce, before clipping): stash
  the dense gradients when step global_step+1 is an update step and a criterion reads them; unless
  the policy is P5, zero ``.grad`` at inactive entries; with ``skip_step_on_update`` mark the step skipped.
- ``on_train_batch_end`` (every micro-batch; acts only when ``global_step`` changed): re-apply the
  masks; on an update step run drop/grow per layer, reset optimizer slots, check ranks, log.

Compact layout (dst_core §1, ``trainer.sparse.CompactSparseLinear``): the selected tensors must all be
compact (or all dense); c_l = len(values) and the initial index is the layer's own. Drop/grow runs over the
active set in ascending flat order (so it equals the dense layout's choice), then the slots of D \\ R get
R \\ A in place: ``index[j]``, ``values[j]`` = 0 and slot j's optimizer state reset by the policy. For
gradient criteria ``on_train_batch_start`` asks the layers to keep their dense weight gradient on the
micro-batches of update steps; ``on_before_optimizer_step`` all-reduces it (mean) once and stashes it.

Every random draw is seeded by (run seed, tag, step, layer), so all ranks agree without communication
(dst_core §7). Masks live in the module (checkpointed with it); this callback's state is counters and
the set grown at the last update (for ``sparse/regrown_survival``).

FSDP2 (ModelParallelStrategy + ``fully_shard``): weights may be ``DTensor``s while masks stay plain
replicated buffers. Masks are applied to the local shard; at update steps the full weight and gradient
are gathered (``full_tensor()``), every rank computes the same update and keeps its shard.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from trainer.callback_state import StatefulCallback
from trainer.data import run_seed
from trainer.optimization import planned_optimizer_steps
from trainer.plots import bar_figure, log_figure
from trainer.protocols import HasMasks, MaskEntry
from trainer.sparse.compact import CompactSparseLinear, compact_layers
from trainer.sparse.criteria import GRADIENT_CRITERIA, select_drop, select_grow
from trainer.sparse.init import init_mask, init_masks_, layer_counts
from trainer.sparse.optim import (
    is_dtensor,
    local_flat_indices,
    local_tensor,
    local_view,
    optimizer_state_bytes,
    reset_entries,
)
from trainer.sparse.rng import layer_generator
from trainer.sparse.schedules import drop_count, drop_fraction, end_step, is_update_step
from trainer.sparse.topology import DropGrowResult, DSTPreset, drop_grow, resolve_preset

__all__ = ["SparseTopology"]

_RANDOM_DROP = frozenset({"magnitude_noise", "soft_magnitude", "random"})


def _layer_group(name: str) -> str:
    """The block a layer belongs to, for colouring (``net.heads.1.0.weight`` -> ``net.heads.1``)."""
    parts = name.split(".")
    return ".".join(parts[:-2]) if len(parts) > 2 else parts[0]


class SparseTopology(StatefulCallback):
    """Dynamic sparse training over a module's mask set (dst_core.md; presets of §11).

    Every option below except ``preset``, ``name``, ``total_steps``, ``check_consistency`` and
    ``log_per_layer`` defaults to ``None``, which takes the preset's value.

    Args:
        preset: ``set``, ``rigl``, ``smet``, ``sparse_dc``, ``neurotrails_lm`` or ``neurotrails_cv``
            (dst_core §11). Default ``rigl``.
        name: identity of this callback in checkpoints (``state_key``). Default ``sparse_topology``.
        density: global density d of the mask set.
        include: regexes (``re.search``) over mask-set names selecting the sparse tensors.
        exclude: regexes removing names from the selection; excluded tensors stay dense and count
            toward no density.
        init: mask initialisation ``uniform``, ``er`` or ``erk`` (dst_core §2).
        erk_power: p of the ER/ERK score.
        dense_first_layer: force the first sparse tensor dense (RigL).
        dense_layers: regexes of selected names forced dense (they count toward the density).
        delta_t: ΔT, optimizer steps between updates, or ``"epoch"`` (steps of one epoch).
        drop_fraction: f0, the initial drop fraction.
        decay: ``cosine``, ``cosine_floor``, ``linear`` or ``constant`` (dst_core §4).
        end_fraction: T_end/T for ``cosine``; 1.0 means no end.
        f_min: the floor of ``cosine_floor`` (0.005 in every preset).
        drop: drop criterion ``magnitude``, ``magnitude_noise``, ``set_signed``, ``soft_magnitude``,
            ``random`` or ``sensitivity`` (dst_core §3).
        grow: grow criterion ``random`` or ``gradient`` (dst_core §3).
        soft_temperature: T of ``soft_magnitude``.
        regrow_dropped: whether entries dropped in an update may be regrown in it.
        state_policy: optimizer-state policy ``P0``..``P5`` (dst_core §5); P0–P4 need ``MaskedAdam``
            or ``MaskedSGD``, P5 works with any optimizer.
        reset_step: s_i of a regrown entry under P2/P3.
        warmup_steps: W of P3.
        warmup_mode: ``m_damping`` or ``linear_lr`` (P3).
        skip_step_on_update: skip the optimizer step on update iterations (RigL); needs a masked optimizer.
        total_steps: T for the schedules; ``None`` takes the planned run's optimizer steps
            (``trainer.optimization.planned_optimizer_steps``: the datamodule's, else
            ``trainer.estimated_stepping_batches``).
        check_consistency: after each update all-gather per-layer (count, Σ flat indices) and raise on
            a mismatch between ranks (a no-op without ``torch.distributed``). Default false.
        log_per_layer: also log ``sparse/density/<layer>``. Default true.
    """

    _state_attrs = ("updates", "regrown_total", "removed_total", "reactivated_total", "last_step", "last_grown")

    def __init__(
        self,
        preset: str = "rigl",
        name: str = "sparse_topology",
        density: float | None = None,
        include: tuple[str, ...] | None = None,
        exclude: tuple[str, ...] | None = None,
        init: str | None = None,
        erk_power: float | None = None,
        dense_first_layer: bool | None = None,
        dense_layers: tuple[str, ...] | None = None,
        delta_t: int | str | None = None,
        drop_fraction: float | None = None,
        decay: str | None = None,
        end_fraction: float | None = None,
        f_min: float | None = None,
        drop: str | None = None,
        grow: str | None = None,
        soft_temperature: float | None = None,
        regrow_dropped: bool | None = None,
        state_policy: str | None = None,
        reset_step: int | None = None,
        warmup_steps: int | None = None,
        warmup_mode: str | None = None,
        skip_step_on_update: bool | None = None,
        total_steps: int | None = None,
        check_consistency: bool = False,
        log_per_layer: bool = True,
    ) -> None:
        super().__init__(name)
        self.preset = preset
        self.density = density
        self.include = include
        self.exclude = exclude
        self.init = init
        self.erk_power = erk_power
        self.dense_first_layer = dense_first_layer
        self.dense_layers = dense_layers
        self.delta_t = delta_t
        self.drop_fraction = drop_fraction
        self.decay = decay
        self.end_fraction = end_fraction
        self.f_min = f_min
        self.drop = drop
        self.grow = grow
        self.soft_temperature = soft_temperature
        self.regrow_dropped = regrow_dropped
        self.state_policy = state_policy
        self.reset_step = reset_step
        self.warmup_steps = warmup_steps
        self.warmup_mode = warmup_mode
        self.skip_step_on_update = skip_step_on_update
        self.total_steps = total_steps
        self.check_consistency = check_consistency
        self.log_per_layer = log_per_layer
        # derived: the resolved options (validated now, so a bad YAML fails before training)
        self.config: DSTPreset = resolve_preset(
            preset,
            density=density,
            include=include,
            exclude=exclude,
            init=init,
            erk_power=erk_power,
            dense_first_layer=dense_first_layer,
            dense_layers=dense_layers,
            delta_t=delta_t,
            drop_fraction=drop_fraction,
            decay=decay,
            end_fraction=end_fraction,
            f_min=f_min,
            drop=drop,
            grow=grow,
            soft_temperature=soft_temperature,
            regrow_dropped=regrow_dropped,
            state_policy=state_policy,
            reset_step=reset_step,
            warmup_steps=warmup_steps,
            warmup_mode=warmup_mode,
            skip_step_on_update=skip_step_on_update,
        )
        # checkpointed state (StatefulCallback)
        self.updates = 0
        self.regrown_total = 0
        self.removed_total = 0
        self.reactivated_total = 0
        self.last_step = 0
        self.last_grown: dict[str, torch.Tensor] = {}
        # derived at setup / train start
        self.layer_names: list[str] = []
        self.counts: list[int] = []
        self.seed = 0
        self._t_total = 0
        self._delta = 0
        self._t_end = 0.0
        self._all_dense = False
        self._initialised = False
        self._stash: dict[str, torch.Tensor] = {}
        self._owners: dict[str, list[torch.optim.Optimizer]] = {}
        self._bytes_logged = False
        self._cached: tuple[LightningModule, list[tuple[int, str, MaskEntry]]] | None = None
        self._compact: dict[str, CompactSparseLinear] = {}  # compact layers by mask-set name (dst_core §1)
        self.record_results = False  # debugging/tests: keep the last update's DropGrowResults
        self.last_results: dict[str, DropGrowResult] = {}

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        """Tiny settings for the generic tests: dense-enough masks, frequent updates, any optimizer (P5)."""
        return {
            "preset": "rigl",
            "density": 0.5,
            "delta_t": 2,
            "dense_first_layer": False,
            "state_policy": "P5",
            "skip_step_on_update": False,
        }

    _transient = ("_stash", "_owners", "_cached", "last_results", "_compact")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without references to the module, optimizers or stashed gradients."""
        state = self.__dict__.copy()
        for key in self._transient:
            state[key] = None if key == "_cached" else {}
        return state

    # ------------------------------------------------------------------------------------------
    # mask set
    # ------------------------------------------------------------------------------------------

    def _mask_set(self, pl_module: LightningModule) -> dict[str, MaskEntry]:
        if not isinstance(pl_module, HasMasks):
            raise TypeError(
                f"SparseTopology needs a module implementing trainer.protocols.HasMasks (mask_set()); "
                f"{type(pl_module).__name__} does not (call trainer.sparse.attach_masks(self) and mix in "
                "trainer.sparse.MaskedModuleMixin)"
            )
        return pl_module.mask_set()

    def _select(self, entries: dict[str, MaskEntry]) -> list[str]:
        cfg = self.config
        names = [
            n
            for n in entries
            if any(re.search(p, n) for p in cfg.include) and not any(re.search(p, n) for p in cfg.exclude)
        ]
        layouts = {entries[n].layout for n in names}
        if not layouts <= {"dense", "compact"}:
            raise NotImplementedError(f"SparseTopology: unknown layouts {sorted(layouts - {'dense', 'compact'})}")
        if len(layouts) > 1:
            raise NotImplementedError(
                "SparseTopology: the selected tensors mix the 'dense' and 'compact' layouts; select one layout "
                f"(compact: {[n for n in names if entries[n].layout == 'compact']})"
            )
        return names

    def _layers(self, pl_module: LightningModule) -> list[tuple[int, str, MaskEntry]]:
        if self._cached is None or self._cached[0] is not pl_module:
            entries = self._mask_set(pl_module)
            self._cached = (pl_module, [(i, n, entries[n]) for i, n in enumerate(self.layer_names)])
            by_values = compact_layers(pl_module)
            self._compact = {}
            for _, n, e in self._cached[1]:
                if e.layout == "compact":
                    if id(e.weight) not in by_values:
                        raise TypeError(f"SparseTopology: compact entry {n!r} is not a CompactSparseLinear's values")
                    self._compact[n] = by_values[id(e.weight)]
        return self._cached[1]

    def _numel(self, name: str, entry: MaskEntry) -> int:
        """n_l: the dense numel of a layer (compact: of its materialised weight)."""
        return self._compact[name].dense_numel if entry.layout == "compact" else entry.mask.numel()

    def _initialise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        cfg = self.config
        entries = self._mask_set(pl_module)
        names = self._select(entries)
        if not names:
            raise ValueError(
                f"SparseTopology: include {cfg.include} / exclude {cfg.exclude} select no tensor of the mask set "
                f"{list(entries)}"
            )
        dense = {i for i, n in enumerate(names) if any(re.search(p, n) for p in cfg.dense_layers)}
        if cfg.dense_first_layer:
            dense.add(0)
        self.layer_names = names
        self._cached = None
        self.seed = run_seed()
        if entries[names[0]].layout == "compact":
            # dst_core §1: a compact layer's count c_l is fixed by its shape (len(values)); its exact-count
            # initial index is drawn by the layer itself (trainer.sparse.compact), so nothing is re-drawn here.
            # a preset's own init is replaced by the layers' uniform draw; an explicit request is refused
            if (self.init not in (None, "uniform")) or self.dense_layers or self.dense_first_layer:
                raise ValueError(
                    f"SparseTopology: compact layers are initialised uniformly by their module; init {cfg.init!r}, "
                    "dense_layers and dense_first_layer need the dense layout (layout: dense)"
                )
            self._layers(pl_module)
            self.counts = [entries[n].mask.numel() for n in names]
            total = sum(self._numel(n, entries[n]) for n in names)
            actual = sum(self.counts) / total
            if self.density is not None and abs(actual - self.density) > len(names) / total:
                raise ValueError(
                    f"SparseTopology: density {self.density} was given, but the compact layers were built at "
                    f"density {actual:.4f}; a compact layer's size is fixed by its module (set the density there)"
                )
            self._initialised = True
            return
        shapes = [tuple(entries[n].weight.shape) for n in names]
        self.counts = layer_counts(shapes, cfg.density, cfg.init, sorted(dense), cfg.erk_power)  # dst_core §2
        masks = [entries[n].mask for n in names]
        init_masks_(masks, self.counts, self.seed)
        with torch.no_grad():
            for n in names:
                w, m = entries[n].weight, entries[n].mask
                local_tensor(w).masked_fill_(~local_view(m, w), 0)
        self._initialised = True

    # ------------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Initialise the masks (fit only); restored checkpoints overwrite them afterwards."""
        if stage != "fit":
            return
        self._initialised = False
        entries = self._mask_set(pl_module)
        if not self._select(entries) and trainer.strategy.restore_checkpoint_after_setup:
            return  # layers built in configure_model: initialise in on_fit_start, before the restore
        self._initialise(trainer, pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Attach masks and state policy to the optimizers; log the initial densities."""
        if not trainer.optimizers:
            raise RuntimeError(
                "SparseTopology.on_fit_start expects configure_optimizers to have run (Lightning 2.6 hook order)"
            )
        if not self._initialised:
            self._initialise(trainer, pl_module)
        cfg = self.config
        self._owners = {}
        self._cached = None  # parameters may have been replaced (configure_model, FSDP2)
        layers = self._layers(pl_module)
        for opt in trainer.optimizers:
            owned = {p for g in opt.param_groups for p in g["params"]}
            masks = {e.weight: e.mask for _, n, e in layers if e.weight in owned}
            if not masks:
                continue
            for _, n, e in layers:
                if e.weight in owned:
                    self._owners.setdefault(n, []).append(opt)
            if hasattr(opt, "attach_masks"):
                options: dict[str, Any] = {}
                if "reset_step" in opt.defaults:
                    options["reset_step"] = cfg.reset_step
                if cfg.state_policy == "P3" and "warmup_steps" in opt.defaults:
                    options.update(warmup_steps=cfg.warmup_steps, warmup_mode=cfg.warmup_mode)
                opt.attach_masks(masks, state_policy=cfg.state_policy, **options)
            elif cfg.state_policy != "P5" or cfg.skip_step_on_update:
                raise TypeError(
                    f"SparseTopology(state_policy={cfg.state_policy}, skip_step_on_update={cfg.skip_step_on_update}) "
                    f"needs trainer.sparse.MaskedAdam or MaskedSGD; got {type(opt).__name__}. "
                    "Use a masked optimizer, or state_policy P5 for dense optimizer states."
                )
        self._bytes_logged = False
        self._log_densities(trainer, pl_module, trainer.global_step)
        densities = [c / self._numel(n, e) for c, (_, n, e) in zip(self.counts, layers)]
        log_figure(
            trainer, "sparse/density_per_layer", bar_figure(
                self.layer_names, densities, "density per layer", "density",
                groups=[_layer_group(n) for n in self.layer_names],
            )
        )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix T, ΔT and T_end (dst_core §4)."""
        cfg = self.config
        total = self.total_steps if self.total_steps is not None else planned_optimizer_steps(trainer)
        if not math.isfinite(total) or total <= 0:
            raise ValueError("SparseTopology needs a finite number of optimizer steps: set max_steps or total_steps")
        self._t_total = int(total)
        if cfg.delta_t == "epoch":
            batches = trainer.num_training_batches
            if not math.isfinite(batches):
                raise ValueError("delta_t 'epoch' needs a sized training dataloader")
            self._delta = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        else:
            self._delta = int(cfg.delta_t)
        self._t_end = end_step(self._t_total, cfg.end_fraction)  # dst_core §4: T_end
        layers = self._layers(pl_module)
        self._all_dense = sum(self.counts) == sum(self._numel(n, e) for _, n, e in layers)
        if self._all_dense:
            rank_zero_info("SparseTopology: the mask set is fully dense (density 1); no drop/grow updates")

    def is_update(self, t: int) -> bool:
        """Whether an update follows optimizer step ``t`` (dst_core §4); never for a fully dense mask set
        (density 1: nothing to drop or grow, e.g. the dense arm of a density sweep)."""
        return self._delta > 0 and not self._all_dense and is_update_step(t, self._delta, self._t_end)

    def fraction(self, t: int) -> float:
        """The drop fraction f_t (dst_core §4)."""
        cfg = self.config
        return drop_fraction(t, cfg.drop_fraction, cfg.decay, self._t_total, cfg.end_fraction, cfg.f_min)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Stash dense gradients before an update step; mask the gradients (dst_core §6)."""
        cfg = self.config
        update = self.is_update(trainer.global_step + 1)
        owned = {p for g in optimizer.param_groups for p in g["params"]}
        with torch.no_grad():
            for _, n, e in self._layers(pl_module):
                if e.weight not in owned:
                    continue
                if e.layout == "compact":
                    self._stash_compact(trainer, n, update and cfg.needs_gradient)
                    continue  # values.grad is already compact: nothing to mask
                grad = e.weight.grad
                if update and cfg.needs_gradient:
                    if grad is None:
                        full = torch.zeros(e.weight.shape, dtype=e.weight.dtype, device=e.mask.device)
                    else:
                        full = grad.full_tensor() if is_dtensor(grad) else grad
                    self._stash[n] = full.detach().clone()
                if grad is not None and cfg.state_policy != "P5":
                    local_tensor(grad).masked_fill_(~local_view(e.mask, e.weight), 0)
        if update and cfg.skip_step_on_update and hasattr(optimizer, "skip_next_step"):
            optimizer.skip_next_step = True  # dst_core §4: RigL skips the step on update iterations

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Compact layout: keep the dense weight gradient on the micro-batches of update steps (dst_core §6)."""
        if not self._compact and self._cached is None:
            self._layers(pl_module)
        if not self._compact:
            return
        keep = self.config.needs_gradient and self.is_update(trainer.global_step + 1)
        for layer in self._compact.values():
            layer.keep_dense_grad = keep

    def _stash_compact(self, trainer: Trainer, name: str, needed: bool) -> None:
        """Take a compact layer's summed dense gradient, all-reduced (mean) once (dst_core §6)."""
        layer = self._compact[name]
        grad, layer.dense_grad = layer.dense_grad, None
        layer.keep_dense_grad = False
        if not needed:
            return
        if grad is None:
            grad = torch.zeros(layer.weight_shape, dtype=layer.values.dtype, device=layer.values.device)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(grad)  # DDP does not see the materialised weight's gradient
            grad.div_(dist.get_world_size())
        self._stash[name] = grad

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Re-apply masks after each optimizer step; drop/grow on update steps (dst_core §6)."""
        t = trainer.global_step
        if t == self.last_step:
            return
        self.last_step = t
        layers = self._layers(pl_module)
        with torch.no_grad():
            for _, _, e in layers:
                if e.layout == "dense":
                    local_tensor(e.weight).masked_fill_(~local_view(e.mask, e.weight), 0)  # dst_core §6
        metrics: dict[str, float] = {}
        if self.is_update(t):
            metrics.update(self._update(trainer, pl_module, t, layers))
        self._stash.clear()
        if metrics or not self._bytes_logged:
            metrics["sparse/optimizer_state_bytes"] = float(optimizer_state_bytes(trainer.optimizers))
            self._bytes_logged = True
            self._log(trainer, metrics, t)

    # ------------------------------------------------------------------------------------------
    # the update
    # ------------------------------------------------------------------------------------------

    def _update(
        self, trainer: Trainer, pl_module: LightningModule, t: int, layers: list[tuple[int, str, MaskEntry]]
    ) -> dict[str, float]:
        cfg = self.config
        f_t = self.fraction(t)  # dst_core §4
        regrown = removed = reactivated = 0
        survived = grown_before = 0
        changed = 0
        results: dict[str, DropGrowResult] = {}
        for idx, n, e in layers:
            weight, mask = e.weight, e.mask
            if e.layout == "compact":
                res = self._update_compact(idx, n, e, f_t, t)
                prev = self.last_grown.get(n)
                if prev is not None and prev.numel():
                    grown_before += prev.numel()
                    survived += int(torch.isin(prev.to(mask.device, torch.long), mask).sum())
                regrown += res.newly_active.numel()
                removed += res.removed.numel()
                reactivated += res.kept.numel()
                index_dtype = torch.int32 if self._numel(n, e) < 2**31 else torch.long
                self.last_grown[n] = res.newly_active.to("cpu", index_dtype)
                init = self._compact[n].initial_mask()
                changed += 2 * int((~init[mask.cpu()]).sum())  # Hamming distance: equal counts, so 2 × moved
                if self.record_results:
                    results[n] = res
                continue
            full_w = weight.full_tensor() if is_dtensor(weight) else weight
            res = drop_grow(  # dst_core §3
                full_w,
                mask,
                f_t,
                drop=cfg.drop,
                grow=cfg.grow,
                regrow_dropped=cfg.regrow_dropped,
                grad=self._stash.get(n),
                seed=self.seed,
                step=t,
                layer_index=idx,
                temperature=cfg.soft_temperature,
            )
            prev = self.last_grown.get(n)
            if prev is not None and prev.numel():
                grown_before += prev.numel()
                survived += int(res.mask[prev.to(res.mask.device, torch.long)].sum())
            if res.k > 0:
                with torch.no_grad():
                    mask.copy_(res.mask.view(mask.shape))
                    zero = torch.cat([res.newly_active, res.removed])
                    flat = local_tensor(weight).view(-1)
                    flat.index_fill_(0, local_flat_indices(zero, weight).to(flat.device), 0)  # dst_core §3
                for opt in self._owners.get(n, []):
                    reset_entries(opt, weight, res.newly_active, cfg.state_policy, removed=False)  # R \ A
                    reset_entries(opt, weight, res.removed, cfg.state_policy, removed=True)  # D \ R
            regrown += res.newly_active.numel()
            removed += res.removed.numel()
            reactivated += res.kept.numel()
            index_dtype = torch.int32 if mask.numel() < 2**31 else torch.long
            self.last_grown[n] = res.newly_active.to("cpu", index_dtype)
            init = init_mask(mask.numel(), self.counts[idx], self.seed, idx)
            changed += int((init != mask.reshape(-1).cpu()).sum())
            if self.record_results:
                results[n] = res
        self.last_results = results
        self.updates += 1
        self.regrown_total += regrown
        self.removed_total += removed
        self.reactivated_total += reactivated
        if self.check_consistency:
            self._check_ranks(layers, t)
        metrics = {
            "sparse/drop_fraction": f_t,
            "sparse/regrown": float(regrown),
            "sparse/removed": float(removed),
            "sparse/reactivated": float(reactivated),
            "sparse/updates": float(self.updates),
            "sparse/mask_change_from_init": changed / max(sum(self.counts), 1),  # Hamming distance / c
        }
        if grown_before:
            metrics["sparse/regrown_survival"] = survived / grown_before
        metrics.update(self._density_metrics(layers))
        return metrics

    def _update_compact(self, idx: int, n: str, e: MaskEntry, f_t: float, t: int) -> DropGrowResult:
        r"""dst_core §3 over the compact representation, written back slot by slot in place (§1).

        Selections run over the active set in ascending flat order, so they equal the dense layout's
        (ties and random draws included). The slots of D \ R receive R \ A (ascending); R ∩ D keeps its
        slot, value and state. Returned index tensors are flat positions; ``mask`` is ``None``.
        """
        cfg = self.config
        values, index = e.weight, e.mask
        numel = self._numel(n, e)
        c = index.numel()
        k = drop_count(f_t, c, numel)  # dst_core §3: k = floor(f_t·c)
        if not cfg.regrow_dropped:
            k = min(k, numel - c)
        empty = torch.empty(0, dtype=torch.long, device=index.device)
        if k == 0:
            return DropGrowResult(None, empty, empty, empty, empty, empty, 0)  # type: ignore[arg-type]
        grad = self._stash.get(n)
        g = None if grad is None else grad.reshape(-1)
        order = torch.argsort(index)  # slots in ascending flat position
        active = index[order].long()
        w = values.detach()[order]
        gen_drop = layer_generator(self.seed, "drop", t, idx) if cfg.drop in _RANDOM_DROP else None
        g_active = g[active] if (g is not None and cfg.drop in GRADIENT_CRITERIA) else None
        drop_pos = select_drop(cfg.drop, w, k, g_active, gen_drop, cfg.soft_temperature)  # DROP (dst_core §3)
        dropped = active[drop_pos]
        drop_slots = order[drop_pos]
        cand = torch.ones(numel, dtype=torch.bool, device=index.device)
        cand[index] = False  # GROW candidates: positions not in A \ D ...
        if cfg.regrow_dropped:
            cand[dropped] = True  # ... with D allowed back only when regrow_dropped
        candidates = cand.nonzero().squeeze(1)
        gen_grow = layer_generator(self.seed, "grow", t, idx) if cfg.grow == "random" else None
        grown = select_grow(cfg.grow, candidates, k, numel, g if cfg.grow in GRADIENT_CRITERIA else None, gen_grow)
        in_d = torch.isin(grown, dropped)
        in_r = torch.isin(dropped, grown)
        newly_active, removed, kept = grown[~in_d], dropped[~in_r], grown[in_d]
        slots = drop_slots[~in_r]  # ascending flat position of D \ R
        with torch.no_grad():
            index[slots] = newly_active.to(index.device, index.dtype)  # dst_core §1: index[j] rewritten in place
            values.data[slots] = 0  # dst_core §3: R \ A starts at weight 0
        for opt in self._owners.get(n, []):
            reset_entries(opt, values, slots, cfg.state_policy, removed=False)  # dst_core §5: slot j reset
        return DropGrowResult(None, dropped, grown, newly_active, removed, kept, int(k))  # type: ignore[arg-type]

    def _check_ranks(self, layers: list[tuple[int, str, MaskEntry]], t: int) -> None:
        """All-gather per-layer (count, Σ flat indices); raise on a mismatch (dst_core §7)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        rows = torch.tensor(
            [
                [int(e.mask.numel()), int(e.mask.sum())]
                if e.layout == "compact"
                else [int(e.mask.sum()), int(e.mask.reshape(-1).nonzero().sum())]
                for _, _, e in layers
            ],
            dtype=torch.long,
            device=device,
        )
        gathered = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows)
        for rank, other in enumerate(gathered):
            if not torch.equal(other, gathered[0]):
                bad = [self.layer_names[i] for i in range(len(layers)) if not torch.equal(other[i], gathered[0][i])]
                raise RuntimeError(f"SparseTopology: masks differ between rank 0 and rank {rank} at step {t}: {bad}")

    # ------------------------------------------------------------------------------------------
    # logging (dst_core §12)
    # ------------------------------------------------------------------------------------------

    def _density_metrics(self, layers: list[tuple[int, str, MaskEntry]]) -> dict[str, float]:
        active = [e.mask.numel() if e.layout == "compact" else int(e.mask.sum()) for _, _, e in layers]
        numel = [self._numel(n, e) for _, n, e in layers]
        out = {"sparse/density": sum(active) / max(sum(numel), 1)}
        if self.log_per_layer:
            out.update({f"sparse/density/{n}": a / m for (_, n, _), a, m in zip(layers, active, numel)})
        return out

    def _log_densities(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        self._log(trainer, self._density_metrics(self._layers(pl_module)), step)

    @staticmethod
    def _log(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        if not getattr(trainer, "is_global_zero", True):
            return
        for logger in getattr(trainer, "loggers", []):
            logger.log_metrics(metrics, step=step)
