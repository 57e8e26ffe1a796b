"""Sparsity-evolution fine-tuning: the SEFT drop → grow → adapt cycle over a module's sparse deltas.

``SparseDeltaEvolution`` is the thin adapter of seft.md §3 around ``trainer.sparse.seft.seft_cycle_``
(the ``seft`` row of dst_core §11: the pruned base as init, gradient growth, sensitivity adapt, P2). It
talks to the module only through :class:`trainer.protocols.HasSparseDeltas` (``SEFTCausalLM`` with
``trainable: delta``). Without this callback the same module is the static-delta baseline.

Hooks (automatic optimization, Lightning 2.6):

- ``on_train_start``: total steps T and T_end are fixed; with ``initial_positions: gradient_in_mask``
  a fresh run replaces the random I by the top-k |G| inside M after A batches (no optimizer step).
- ``on_train_batch_start``: the layers capture ∂L/∂θ (dense) only on the micro-batches of the A
  optimizer steps before a cycle (seft.md §4, pitfall 5).
- ``on_before_optimizer_step`` (once per real step): the layers' captured gradient moves into the
  window sum held here (checkpointed, so a checkpoint inside a window resumes exactly).
- ``on_train_batch_end`` (acts once per optimizer step): after step t with t % K == 0 and t < T_end,
  G = window mean (all-reduced over ranks, so every rank makes the same choice), one cycle per layer,
  the optimizer slots of the changed slots reset (P2: m = v = 0, s = reset_step), invariants checked,
  scalars logged and the window freed.
- ``on_validation_end`` / ``on_train_end``: images (the mask-change map of one layer, a histogram of
  |v|); ``adapt_timing: deferred`` prunes back once more at the end.

Scalars (seft.md §8): ``seft/sparsity`` (global, and per layer with ``log_per_layer``),
``seft/reactivated`` (positions in M that were 0 in the initial pruned base), ``seft/hamming_from_init``
(|M xor M0| / n_keep), and per cycle ``seft/dropped``, ``seft/grown``, ``seft/adapt_removed``,
``seft/drop_fraction``, ``seft/delta_abs_mean``, ``seft/dense_grad_bytes``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.plots import log_figure
from trainer.protocols import HasBatchLoss, HasSparseDeltas
from trainer.sparse.optim import reset_entries
from trainer.sparse.schedules import drop_fraction, end_step
from trainer.sparse.seft import (
    ADAPT_CRITERIA,
    ADAPT_GRANULARITIES,
    ADAPT_TIMINGS,
    DROP_MODES,
    init_delta_positions,
    seft_adapt_,
    seft_cycle_,
    seft_invariants,
)

__all__ = ["SparseDeltaEvolution"]

SENSITIVITY_GRADS = ("accumulated", "instant")
INITIAL_POSITIONS = ("random_in_mask", "gradient_in_mask")
DROP_DECAYS = ("linear", "cosine", "constant")
STATE_POLICIES = ("P2", "P4")


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t.div_(dist.get_world_size())
    return t


class SparseDeltaEvolution(StatefulCallback):
    """The SEFT cycle every K optimizer steps (seft.md §3; defaults are the spec's).

    Args:
        name: identity in checkpoints (``state_key``). Default ``sparse_delta``.
        update_interval: K, optimizer steps between cycles; default 60 (C4 recovery; 10 for commonsense,
            "Appendix F.3/F.4" per the reviews, seft.md §3).
        drop_fraction: p0, the initial fraction of the k slots dropped per cycle; default 0.2 (SpIEL).
        decay: how p_t falls: ``linear`` to 0 over the run (default, SpIEL), ``cosine`` or ``constant``.
        grad_window: A, optimizer steps whose mean dense gradient is G; default 5 (SpIEL
            ``selection_accumulation_steps``).
        allow_reactivation: growth may pick positions pruned in the base (default true; forced false for
            N:M bases, seft.md §3).
        drop_mode: ``discard`` (default, SpIEL) or ``fold`` (the dropped delta is added to W0).
        adapt_criterion: ``sensitivity`` |θ·G| (default; the paper's ablation prefers it) or ``magnitude``.
        sensitivity_grad: ``accumulated`` (default: the same G) or ``instant`` (the last step's gradient).
        adapt_granularity: ``per_layer`` (default) or ``per_row``.
        adapt_timing: ``protect_new`` (default: adapt in the same cycle, protecting every position in I)
            or ``deferred`` (adapt at the start of the next cycle and once more at the end of training).
        initial_positions: ``random_in_mask`` (default; the module's seeded draw, SpIEL) or
            ``gradient_in_mask`` (top-k |G| inside M after A batches at the start of a fresh run).
        end_fraction: cycles stop at T_end = end_fraction·T; ``None`` (default) = the whole run.
        total_steps: T; ``None`` (default) = ``trainer.estimated_stepping_batches``.
        check_invariants: raise after any cycle that breaks nnz(M) == n_keep, I ⊆ M or W0 = 0 outside M
            (seft.md §6); default true.
        log_per_layer: also log ``seft/sparsity/<layer>``; default false (hundreds of layers at 7B).
        image_layer: the layer (module path) of the mask-change image; ``None`` (default) = the first.
        state_policy: optimizer state of the changed slots: ``P2`` (default; m = v = 0, s = reset_step,
            SpIEL's ``SftAdamW``) or ``P4`` (seeded from the window: m = (1−β1^A)·mean g,
            v = (1−β2^A)·mean g², s = A, dst_core §5; it keeps a second dense window of g²). Under DDP
            the g² window is the mean of each rank's squared local gradients.
    """

    _state_attrs = ("cycles", "last_step", "window_sum", "window_sq", "window_last", "window_steps",
                    "pending_grad", "initialised")  # fmt: skip

    def __init__(
        self,
        name: str = "sparse_delta",
        update_interval: int = 60,
        drop_fraction: float = 0.2,
        decay: str = "linear",
        grad_window: int = 5,
        allow_reactivation: bool = True,
        drop_mode: str = "discard",
        adapt_criterion: str = "sensitivity",
        sensitivity_grad: str = "accumulated",
        adapt_granularity: str = "per_layer",
        adapt_timing: str = "protect_new",
        initial_positions: str = "random_in_mask",
        end_fraction: float | None = None,
        total_steps: int | None = None,
        check_invariants: bool = True,
        log_per_layer: bool = False,
        image_layer: str | None = None,
        state_policy: str = "P2",
    ) -> None:
        super().__init__(name)
        if state_policy not in STATE_POLICIES:
            raise ValueError(f"SparseDeltaEvolution: state_policy must be one of {STATE_POLICIES}, got {state_policy!r}")
        for value, valid, what in ((drop_mode, DROP_MODES, "drop_mode"), (adapt_criterion, ADAPT_CRITERIA, "adapt_criterion"),
                                   (sensitivity_grad, SENSITIVITY_GRADS, "sensitivity_grad"),
                                   (adapt_granularity, ADAPT_GRANULARITIES, "adapt_granularity"),
                                   (adapt_timing, ADAPT_TIMINGS, "adapt_timing"),
                                   (initial_positions, INITIAL_POSITIONS, "initial_positions"), (decay, DROP_DECAYS, "decay")):  # fmt: skip
            if value not in valid:
                raise ValueError(f"SparseDeltaEvolution: {what} must be one of {valid}, got {value!r}")
        if update_interval < 1 or grad_window < 1:
            raise ValueError(f"update_interval and grad_window must be positive, got {update_interval}, {grad_window}")
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must lie in [0, 1], got {drop_fraction}")
        self.update_interval = int(update_interval)
        self.p0 = float(drop_fraction)
        self.decay = decay
        self.grad_window = int(grad_window)
        self.allow_reactivation = bool(allow_reactivation)
        self.drop_mode = drop_mode
        self.adapt_criterion = adapt_criterion
        self.sensitivity_grad = sensitivity_grad
        self.adapt_granularity = adapt_granularity
        self.adapt_timing = adapt_timing
        self.initial_positions = initial_positions
        self.end_fraction = end_fraction
        self.total_steps = total_steps
        self.check_invariants = check_invariants
        self.log_per_layer = log_per_layer
        self.image_layer = image_layer
        self.state_policy = state_policy
        # checkpointed state
        self.cycles = 0
        self.last_step = -1
        self.window_sum: dict[str, torch.Tensor] = {}
        self.window_sq: dict[str, torch.Tensor] = {}
        self.window_last: dict[str, torch.Tensor] = {}
        self.window_steps = 0
        self.pending_grad: dict[str, torch.Tensor] = {}  # deferred adapt: the last cycle's G
        self.initialised = False
        self._T = 0
        self._t_end = 0.0

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"update_interval": 2, "grad_window": 1}

    # -- helpers ------------------------------------------------------------------------------------

    def _layers(self, pl_module: LightningModule) -> dict[str, Any]:
        """The module's delta layers, looked up once per module (its structure never changes)."""
        cached = getattr(self, "_layer_cache", None)
        if cached is not None and cached[0] is pl_module:
            return cached[1]
        if not isinstance(pl_module, HasSparseDeltas):
            raise TypeError(f"SparseDeltaEvolution needs a module with sparse_deltas() (HasSparseDeltas), got {type(pl_module).__name__}")
        layers = pl_module.sparse_deltas()
        if not layers:
            raise ValueError("SparseDeltaEvolution: the module has no sparse-delta layers (use trainable: delta)")
        self._layer_cache = (pl_module, layers)
        return layers

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_layer_cache", None)  # pickles (ddp_spawn) without the module
        return state

    def _reactivation(self, pl_module: LightningModule) -> bool:
        return self.allow_reactivation and getattr(pl_module, "base_pattern", "unstructured") == "unstructured"

    def is_cycle_step(self, t: int) -> bool:
        """Whether a cycle follows optimizer step ``t``: t % K == 0 and 0 < t < T_end (seft.md §3)."""
        return t > 0 and t % self.update_interval == 0 and t < self._t_end

    def fraction(self, t: int) -> float:
        """p_t: p0 decayed linearly (or by cosine) to 0 over T, or constant (seft.md §3)."""
        if self.decay == "cosine":
            return drop_fraction(t, self.p0, "cosine", self._T, None)
        return drop_fraction(t, self.p0, self.decay, self._T)

    def _captures(self, t: int) -> bool:
        """Whether optimizer step ``t`` lies in the A-step window that ends at the next cycle."""
        to_boundary = (-t) % self.update_interval
        return to_boundary < self.grad_window and self.is_cycle_step(t + to_boundary)

    # -- hooks ----------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._layers(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._T = int(self.total_steps or trainer.estimated_stepping_batches)
        if self._T <= 0 or math.isinf(self._T):
            raise ValueError("SparseDeltaEvolution needs a finite number of steps (set max_steps or total_steps)")
        self._t_end = end_step(self._T, self.end_fraction)
        if not self.initialised and trainer.global_step == 0 and self.initial_positions == "gradient_in_mask":
            self._gradient_init(trainer, pl_module)
        self.initialised = True
        self._log(trainer, self._state_metrics(pl_module), trainer.global_step)

    def _gradient_init(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """I = top-k |G| inside M after A batches (seft.md §3 "initial I", gradient_in_mask)."""
        if not isinstance(pl_module, HasBatchLoss):
            raise TypeError("initial_positions: gradient_in_mask needs a module with batch_loss()")
        layers = self._layers(pl_module)
        loader = trainer.datamodule.train_dataloader() if trainer.datamodule is not None else trainer.train_dataloader
        for m in layers.values():
            m.capture_grad = True
        for i, batch in enumerate(loader):
            if i >= self.grad_window:
                break
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            pl_module.batch_loss(batch).backward()
        pl_module.zero_grad(set_to_none=True)
        with torch.no_grad():
            for m in layers.values():
                g = _all_reduce_mean(m.grad_acc / max(m.grad_count, 1))
                m.I.copy_(init_delta_positions(m.M, m.I.numel(), "gradient_in_mask", grad=g))
                m.capture_grad = False
                m.release_grad()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        capture = self._captures(trainer.global_step + 1)
        for m in self._layers(pl_module).values():
            m.capture_grad = capture

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        layers = self._layers(pl_module)
        if not any(m.grad_acc is not None for m in layers.values()):
            return
        for name, m in layers.items():
            if m.grad_acc is None:
                continue
            if name in self.window_sum:
                self.window_sum[name].add_(m.grad_acc)
            else:
                self.window_sum[name] = m.grad_acc.clone()
            if self.sensitivity_grad == "instant":
                self.window_last[name] = m.grad_acc.clone()
            if self.state_policy == "P4":
                sq = m.grad_acc.square()
                if name in self.window_sq:
                    self.window_sq[name].add_(sq)
                else:
                    self.window_sq[name] = sq
            m.release_grad()
        self.window_steps += 1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        t = trainer.global_step
        if t == self.last_step:
            return
        self.last_step = t
        if not self.is_cycle_step(t):
            return
        if self.window_steps == 0:
            return  # no gradient captured for this boundary (e.g. a run resumed right at it)
        self._cycle(trainer, pl_module, t)

    # -- the cycle --------------------------------------------------------------------------------------

    @torch.no_grad()
    def _cycle(self, trainer: Trainer, pl_module: LightningModule, t: int) -> None:
        layers = self._layers(pl_module)
        p_t = self.fraction(t)
        opt = trainer.optimizers[0] if trainer.optimizers else None
        react = self._reactivation(pl_module)
        grad_bytes = sum(g.numel() * g.element_size() for g in self.window_sum.values())
        grad_bytes += sum(g.numel() * g.element_size() for g in self.window_last.values())
        grad_bytes += sum(g.numel() * g.element_size() for g in self.window_sq.values())
        totals = {"dropped": 0, "grown": 0, "adapt_removed": 0, "cycle_reactivated": 0}
        for name, m in layers.items():
            G = _all_reduce_mean(self.window_sum.pop(name).div_(self.window_steps))  # mean over the last A steps
            S = _all_reduce_mean(self.window_last.pop(name)) if self.sensitivity_grad == "instant" else None
            if self.adapt_timing == "deferred" and name in self.pending_grad:
                # deferred: last cycle's growth is pruned back now, by the previous cycle's gradient
                totals["adapt_removed"] += int(seft_adapt_(m.W0, m.M, m.I, m.values.data, self.pending_grad.pop(name),
                                                           int(m.n_keep), self.adapt_criterion, self.adapt_granularity).numel())  # fmt: skip
            c = int(math.floor(p_t * m.I.numel()))  # seft.md §3: c = floor(p_t·k)
            res = seft_cycle_(m.W0, m.M, m.I, m.values.data, G, c, int(m.n_keep), allow_reactivation=react,
                              drop_mode=self.drop_mode, adapt_criterion=self.adapt_criterion,
                              adapt_granularity=self.adapt_granularity, adapt_timing=self.adapt_timing,
                              sensitivity_grad=S)  # fmt: skip
            G2 = _all_reduce_mean(self.window_sq.pop(name).div_(self.window_steps)) if self.state_policy == "P4" else None
            if opt is not None and res.slots.numel():
                reset_entries(opt, m.values, res.slots)  # P2: m = v = 0, s = reset_step at the changed slots
                if G2 is not None:
                    seed_slots_p4(opt, m.values, res.slots, G.reshape(-1)[res.grown], G2.reshape(-1)[res.grown], self.window_steps)
            if self.adapt_timing == "deferred":
                self.pending_grad[name] = (G if S is None else S).clone()
            totals["dropped"] += res.slots.numel()
            totals["grown"] += res.grown.numel()
            totals["adapt_removed"] += res.adapt_removed.numel()
            totals["cycle_reactivated"] += res.reactivated.numel()
            if self.check_invariants and self.adapt_timing == "protect_new":
                problems = seft_invariants(m.W0, m.M, m.I, m.values, int(m.n_keep))
                if problems:
                    raise RuntimeError(f"SEFT cycle at step {t}, layer {name}: {'; '.join(problems)}")
        self.window_steps = 0
        self.cycles += 1
        metrics = {f"seft/{k}": float(v) for k, v in totals.items()}
        metrics.update({"seft/drop_fraction": p_t, "seft/dense_grad_bytes": float(grad_bytes), "seft/cycles": float(self.cycles)})
        metrics.update(self._state_metrics(pl_module))
        self._log(trainer, metrics, t)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.adapt_timing == "deferred" and self.pending_grad:
            with torch.no_grad():
                for name, m in self._layers(pl_module).items():
                    if name in self.pending_grad:
                        seft_adapt_(m.W0, m.M, m.I, m.values.data, self.pending_grad.pop(name), int(m.n_keep),
                                    self.adapt_criterion, self.adapt_granularity)  # fmt: skip
        self._log(trainer, self._state_metrics(pl_module), trainer.global_step)
        self._images(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._images(trainer, pl_module)

    # -- logging ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _state_metrics(self, pl_module: LightningModule) -> dict[str, float]:
        layers = self._layers(pl_module)
        nnz = numel = react = ham = keep = 0
        out: dict[str, float] = {}
        v_abs = []
        for name, m in layers.items():
            n_m = int(m.M.sum())
            nnz += n_m
            numel += m.M.numel()
            react += int((m.M & ~m.M0).sum())  # positions in M that were 0 in the initial pruned base
            ham += int((m.M ^ m.M0).sum())
            keep += int(m.n_keep)
            v_abs.append(m.values.detach().abs().mean())
            if self.log_per_layer:
                out[f"seft/sparsity/{name}"] = 1.0 - n_m / m.M.numel()
        out["seft/sparsity"] = 1.0 - nnz / max(numel, 1)
        out["seft/reactivated"] = float(react)
        out["seft/hamming_from_init"] = ham / max(keep, 1)
        out["seft/delta_abs_mean"] = float(torch.stack(v_abs).mean())
        return out

    @staticmethod
    def _log(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    @torch.no_grad()
    def _images(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = self._layers(pl_module)
        name = self.image_layer if self.image_layer in layers else next(iter(layers))
        m = layers[name]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.imshow(mask_change_rgb(m.M0, m.M), interpolation="nearest", aspect="auto")
        ax1.set_title(f"{name}\nblue kept, red removed, green reactivated", fontsize=8)
        ax1.set_xlabel("input")
        ax1.set_ylabel("output")
        values = torch.cat([x.values.detach().abs().float().flatten() for x in layers.values()])
        ax2.hist(values.cpu().numpy(), bins=50, log=True)
        ax2.set_title("|v| over all delta slots")
        fig.tight_layout()
        log_figure(trainer, "seft/mask_change", fig, step=trainer.global_step)
        plt.close(fig)


@torch.no_grad()
def seed_slots_p4(
    optimizer: Any, values: torch.Tensor, slots: torch.Tensor, g_mean: torch.Tensor, g2_mean: torch.Tensor, A: int
) -> None:
    """P4 (dst_core §5, SpIEL): seed the Adam state of newly grown slots from the last A steps:
    m = (1−β1^A)·mean(g), v = (1−β2^A)·mean(g²), s = A, so the bias-corrected moments start unbiased."""
    state = optimizer.state.get(values)
    if not state:
        return
    group = next(g for g in optimizer.param_groups if any(p is values for p in g["params"]))
    b1, b2 = group["betas"]
    state["exp_avg"][slots] = (1.0 - b1**A) * g_mean.to(state["exp_avg"].dtype)  # m = (1−β1^A)·mean g
    state["exp_avg_sq"][slots] = (1.0 - b2**A) * g2_mean.to(state["exp_avg_sq"].dtype)  # v = (1−β2^A)·mean g²
    if "step_i" in state:
        state["step_i"][slots] = min(int(A), torch.iinfo(state["step_i"].dtype).max)  # s = A


def mask_change_rgb(M0: torch.Tensor, M: torch.Tensor, max_side: int = 128) -> Any:
    """An RGB image [h, w, 3] of a mask's change from its initial state, block-averaged to ≤ ``max_side``:
    red = removed (M0 & ~M), green = reactivated (~M0 & M), blue = kept (M0 & M); black = pruned in both."""
    import torch.nn.functional as F

    planes = torch.stack([(M0 & ~M), (~M0 & M), (M0 & M)]).float()[None]  # [1, 3, out, in]
    h, w = M.shape
    size = (min(h, max_side), min(w, max_side))
    img = F.adaptive_avg_pool2d(planes, size)[0]
    img[:2] = (img[:2] * 20).clamp(max=1.0)  # changes are rare: amplify them to be visible
    return img.permute(1, 2, 0).cpu().numpy()
