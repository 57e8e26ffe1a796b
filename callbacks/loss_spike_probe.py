"""Loss spikes after topology updates, measured on a fixed held-out batch (smet.md §7, §8; any DST run).

For every topology update at optimizer step t_j the probe evaluates the module's ``batch_loss`` on one
fixed held-out batch after each step t_j−before … t_j+after (``torch.no_grad``, eval mode) and logs

- ``<name>/spike`` at step t_j: spike_j = max L(t_j+1 … t_j+after) − mean L(t_j−before … t_j−1);
- ``<name>/regrown_update_ratio``: mean per-step |Δw| of the entries regrown at t_j over their first
  ``after`` steps ÷ that of the entries that were already active (1 means "moves like the others");
- ``<name>/optimizer_state_bytes`` and ``<name>/dense_adam_state_bytes`` (m, v in fp32 over the dense
  model) after the first step;
- images at the end of fit: ``<name>/spike_overlay`` (every window on one axis, x = step relative to the
  update, y = L − the pre-update mean, colour = training time) and ``<name>/step_age`` (histogram of the
  per-entry step counters s_i of the active sparse entries, the age of the weights).

Update steps come from the trainer's ``SparseTopology``; a run without one (the dense noise floor of
smet.md §7) gives ``delta_t`` and the probe uses the same timing rule (t % ΔT == 0, 0 < t < T).

Hooks: ``setup`` (asserts a ``SparseTopology`` comes earlier in ``trainer.callbacks``: the probe must
see the weights after the update), ``on_train_start`` (takes the held-out batch from the datamodule's
``val_dataloader``), ``on_train_batch_end`` (acts once per optimizer step), ``on_fit_end`` (images).
The pure math is in ``trainer.sparse.spikes``. State: the probe losses, the spikes, the ratios and,
while a window is open, the followed entries and the old ones' weights at its update step (so a resume
inside a window stays exact; at most ``max_tracked`` weights per layer).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.plots import log_figure
from trainer.protocols import HasBatchLoss, HasMasks, MaskEntry
from trainer.sparse.compact import compact_layers
from trainer.sparse.optim import optimizer_state_bytes
from trainer.sparse.rng import layer_generator
from trainer.sparse.schedules import is_update_step
from trainer.sparse.spikes import loss_spike, regrown_update_ratio, windows_holding

__all__ = ["LossSpikeProbe"]


def _slice_batch(batch: Any, n: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, dict):
        return {k: _slice_batch(v, n) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice_batch(v, n) for v in batch)
    return batch


def _cat_batches(batches: list[Any]) -> Any:
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, dict):
        return {k: _cat_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_cat_batches(list(parts)) for parts in zip(*batches))
    return first


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    return _batch_len(batch[0])


class LossSpikeProbe(StatefulCallback):
    """Held-out loss around every topology update and the first updates of regrown weights (smet.md §7).

    Args:
        before: steps before an update averaged as the baseline (smet.md §7: 5). Default 5.
        after: steps after an update searched for the maximum (smet.md §7: 10). Default 10.
        batch_size: held-out sequences (or samples) in the probe batch (smet.md §7: 8 blocks). Default 8.
        delta_t: update period for a run without ``SparseTopology`` (the dense noise floor); ``None``
            (default) takes the topology's schedule. With a topology it must be ``None``.
        total_steps: T for ``delta_t`` (updates at 0 < t < T); ``None`` takes
            ``trainer.estimated_stepping_batches``.
        track_updates: measure ``regrown_update_ratio``. Default true.
        max_tracked: at most this many old (already active) entries per layer are followed, drawn at
            random from the layer's generator, so the state of an open window stays small at paper scale
            (the regrown entries are all followed: they start at 0, so only their positions are kept).
            Default 65536.
        name: identity in checkpoints and the metric prefix. Default ``smet`` (smet.md §8).
    """

    _state_attrs = ("losses", "spikes", "ratios", "snapshot", "bytes_logged")

    def __init__(
        self,
        before: int = 5,
        after: int = 10,
        batch_size: int = 8,
        delta_t: int | None = None,
        total_steps: int | None = None,
        track_updates: bool = True,
        max_tracked: int = 65536,
        name: str = "smet",
    ) -> None:
        super().__init__(name)
        if int(before) < 1 or int(after) < 1 or int(batch_size) < 1:
            raise ValueError(f"LossSpikeProbe: before, after and batch_size must be positive ({before}, {after}, {batch_size})")
        if delta_t is not None and int(delta_t) < 1:
            raise ValueError(f"LossSpikeProbe: delta_t must be positive, got {delta_t}")
        self.before = before
        self.after = after
        self.batch_size = batch_size
        self.delta_t = delta_t
        self.total_steps = total_steps
        self.track_updates = track_updates
        self.max_tracked = max_tracked
        # checkpointed
        self.losses: dict[int, float] = {}
        self.spikes: dict[int, float] = {}
        self.ratios: dict[int, float] = {}
        # an open window's entries: {"step": u, "regrown": {layer: positions}, "old": {layer: positions},
        # "old_w": {layer: their weights at u}}
        self.snapshot: dict[str, Any] = {}
        self.bytes_logged = False
        # derived
        self._topology: Any = None
        self._batch: Any = None
        self._last_step = -1
        self._t_total = 0

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        """Tiny settings for the generic tests."""
        return {"before": 2, "after": 2, "batch_size": 2, "delta_t": 3}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_topology"] = state["_batch"] = None
        return state

    # ------------------------------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from callbacks.sparse_topology import SparseTopology

        if not isinstance(pl_module, HasBatchLoss):
            raise TypeError(f"LossSpikeProbe needs a module with batch_loss(batch) (trainer.protocols.HasBatchLoss); "
                            f"{type(pl_module).__name__} has none")  # fmt: skip
        cbs = list(trainer.callbacks)
        topos = [cb for cb in cbs if isinstance(cb, SparseTopology)]
        if topos and self.delta_t is not None:
            raise ValueError("LossSpikeProbe: delta_t is for runs without SparseTopology; it takes the topology's schedule")
        if not topos and self.delta_t is None:
            raise ValueError("LossSpikeProbe: without a SparseTopology, give delta_t (the update period to probe)")
        if topos and cbs.index(topos[0]) > cbs.index(self):
            raise ValueError("LossSpikeProbe must come after SparseTopology in trainer.callbacks "
                             "(it reads the weights after each update)")  # fmt: skip
        self._topology = topos[0] if topos else None

    def is_update(self, t: int) -> bool:
        """Whether optimizer step t is a topology update (the topology's rule, or t % delta_t == 0)."""
        if self._topology is not None:
            return self._topology.is_update(t)
        return is_update_step(t, int(self.delta_t), float(self._t_total))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t_total = int(self.total_steps or trainer.estimated_stepping_batches)
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        batches, n = [], 0
        for batch in source.val_dataloader():
            batches.append(batch)
            n += _batch_len(batch)
            if n >= self.batch_size:
                break
        if not batches:
            raise ValueError("LossSpikeProbe: the validation loader is empty; it needs a held-out batch")
        batch = _slice_batch(_cat_batches(batches), int(self.batch_size))
        self._batch = trainer.strategy.batch_to_device(batch, pl_module.device)
        self._last_step = trainer.global_step

    # ------------------------------------------------------------------------------------------
    # per step
    # ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _probe_loss(self, pl_module: LightningModule) -> float:
        was_training = pl_module.training
        pl_module.eval()
        try:
            return float(pl_module.batch_loss(self._batch))
        finally:
            pl_module.train(was_training)

    @staticmethod
    @torch.no_grad()
    def _weights_at(e: MaskEntry, layers: dict[int, Any], positions: torch.Tensor) -> torch.Tensor:
        """Weights of one mask-set entry at flat ``positions`` (compact layers are materialised), on CPU.

        ``layers`` is ``compact_layers(module)``."""
        w = layers[id(e.weight)].dense_weight() if e.layout == "compact" else e.weight
        w = w.full_tensor() if hasattr(w, "full_tensor") else w
        return w.detach().reshape(-1)[positions.to(w.device)].float().cpu()

    def _take_snapshot(self, pl_module: LightningModule, u: int) -> dict[str, Any]:
        """The entries followed over the window of update u: all regrown ones, a sample of the old ones."""
        entries, layers = pl_module.mask_set(), compact_layers(pl_module)
        snap: dict[str, Any] = {"step": u, "regrown": {}, "old": {}, "old_w": {}}
        for idx, n in enumerate(self._topology.layer_names):
            e = entries[n]
            active = e.mask.long().cpu() if e.layout == "compact" else e.mask.reshape(-1).nonzero().squeeze(1).cpu()
            regrown = self._topology.last_grown.get(n, torch.empty(0, dtype=torch.long)).long().cpu()
            old = active[~torch.isin(active, regrown)]
            if old.numel() > int(self.max_tracked):
                gen = layer_generator(self._topology.seed, "spike_probe", u, idx)
                old = old[torch.randperm(old.numel(), generator=gen)[: int(self.max_tracked)]].sort().values
            snap["regrown"][n], snap["old"][n] = regrown, old
            snap["old_w"][n] = self._weights_at(e, layers, old)
        return snap

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        t = trainer.global_step
        if t == self._last_step:
            return  # not an optimizer step (gradient accumulation)
        self._last_step = t
        metrics: dict[str, float] = {}
        if not self.bytes_logged:
            self.bytes_logged = True
            metrics[f"{self.name}/optimizer_state_bytes"] = float(optimizer_state_bytes(trainer.optimizers))
            layers = compact_layers(pl_module)
            dense_n = sum(layers[id(p)].dense_numel if id(p) in layers else p.numel() for p in pl_module.parameters())
            metrics[f"{self.name}/dense_adam_state_bytes"] = float(8 * dense_n)  # m, v fp32 per entry
        windows = windows_holding(t, self.is_update, int(self.before), int(self.after))
        spike_at: int | None = None
        if windows:
            self.losses[t] = self._probe_loss(pl_module)  # L(t) on the fixed held-out batch
        for u in windows:
            if t == u and self.track_updates and self._topology is not None and isinstance(pl_module, HasMasks):
                self.snapshot = self._take_snapshot(pl_module, u)
            if t == u + int(self.after):
                spike_at = u
                metrics.update(self._close_window(trainer, pl_module, u))
        spike = metrics.pop(f"{self.name}/spike", None)
        for logger in trainer.loggers:
            if spike is not None:
                logger.log_metrics({f"{self.name}/spike": spike}, step=spike_at)  # at the update step t_j
            if metrics:
                logger.log_metrics(metrics, step=t)

    def _close_window(self, trainer: Trainer, pl_module: LightningModule, u: int) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            self.spikes[u] = loss_spike(self.losses, u, int(self.before), int(self.after))  # smet.md §7
            out[f"{self.name}/spike"] = self.spikes[u]
        except ValueError:
            pass  # a window cut by the start of the run
        snap, self.snapshot = self.snapshot, {}
        if snap.get("step") == u and not any(self.is_update(s) for s in range(u + 1, u + int(self.after) + 1)):
            entries, layers = pl_module.mask_set(), compact_layers(pl_module)
            r_sum = o_sum = 0.0
            r_n = o_n = 0
            for n, regrown in snap["regrown"].items():
                old = snap["old"][n]
                zeros = torch.zeros(regrown.numel())  # regrown entries start at weight 0 (dst_core §3)
                r, o, _ = regrown_update_ratio(zeros, self._weights_at(entries[n], layers, regrown), snap["old_w"][n],
                                               self._weights_at(entries[n], layers, old), int(self.after))  # fmt: skip
                if regrown.numel():
                    r_sum, r_n = r_sum + r * regrown.numel(), r_n + regrown.numel()
                if old.numel():
                    o_sum, o_n = o_sum + o * old.numel(), o_n + old.numel()
            if r_n and o_n and o_sum > 0:
                self.ratios[u] = (r_sum / r_n) / (o_sum / o_n)
                out[f"{self.name}/regrown_update_ratio"] = self.ratios[u]
        return out

    # ------------------------------------------------------------------------------------------
    # summaries and images
    # ------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, float]:
        """Mean and max spike, mean regrown update ratio, number of windows (NaN when none)."""
        spikes = list(self.spikes.values())
        ratios = [r for r in self.ratios.values() if math.isfinite(r)]
        nan = float("nan")
        return {
            "spike_mean": sum(spikes) / len(spikes) if spikes else nan,
            "spike_max": max(spikes) if spikes else nan,
            "regrown_update_ratio": sum(ratios) / len(ratios) if ratios else nan,
            "windows": float(len(spikes)),
        }

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if self.spikes:
            fig, ax = plt.subplots(figsize=(6, 4))
            cmap = plt.get_cmap("viridis")
            last = max(self.spikes) or 1
            for u in sorted(self.spikes):
                pre = [self.losses[s] for s in range(u - int(self.before), u) if s in self.losses]
                steps = [s for s in range(u - int(self.before), u + int(self.after) + 1) if s in self.losses]
                base = sum(pre) / len(pre)
                ax.plot([s - u for s in steps], [self.losses[s] - base for s in steps], color=cmap(u / last), lw=1)
            ax.axvline(0, color="grey", ls="--", lw=0.8)
            ax.set_xlabel("optimizer steps relative to the topology update")
            ax.set_ylabel("held-out loss − pre-update mean")
            ax.set_title("loss around each update (colour: training time)")
            fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, last)), ax=ax, label="update step")
            fig.tight_layout()
            log_figure(trainer, f"{self.name}/spike_overlay", fig, step=trainer.global_step)
        ages = self._step_ages(trainer)
        if ages is not None and ages.numel():
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.hist(ages.numpy(), bins=50)
            ax.set_xlabel("per-entry optimizer steps s_i (age of the active weight)")
            ax.set_ylabel("active sparse entries")
            ax.set_title(f"age of active weights at step {trainer.global_step}")
            fig.tight_layout()
            log_figure(trainer, f"{self.name}/step_age", fig, step=trainer.global_step)

    @staticmethod
    def _step_ages(trainer: Trainer) -> torch.Tensor | None:
        parts = []
        for opt in trainer.optimizers:
            for p, index in getattr(opt, "_compact", {}).items():
                if "step_i" in opt.state.get(p, {}):
                    parts.append(opt.state[p]["step_i"].reshape(-1).float().cpu())
            for p, mask in getattr(opt, "_masks", {}).items():
                if "step_i" in opt.state.get(p, {}):
                    s = opt.state[p]["step_i"]
                    s = s.to_local() if hasattr(s, "to_local") else s
                    parts.append(s[mask].reshape(-1).float().cpu())
        return torch.cat(parts) if parts else None
