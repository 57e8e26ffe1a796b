"""Masked optimizers with per-entry state policies (dst_core.md §5).

``MaskedAdam`` and ``MaskedSGD`` are built like any optimizer (``MaskedAdam(params, lr=...)``, so an
injected ``OptimizerCallable`` works); the ``SparseTopology`` callback then hands them the masks with
:meth:`MaskedAdam.attach_masks` in ``on_fit_start`` (after ``configure_optimizers``, before Lightning
restores optimizer state). A mask is the module's bool buffer itself, so in-place topology edits are
seen at once. Parameters without a mask are updated like plain Adam/AdamW/SGD.

State policies (dst_core §5), stored per param group in ``state_policy`` (so checkpoints carry them):

- P0/P1: m = v = 0 at inactive entries; bias correction with the tensor's own step count.
- P2: as P0 plus a per-entry int32 step counter ``step_i``; reset entries restart at ``reset_step``.
- P3: P2 plus warm-up of reset entries (``warmup_steps`` W, ``warmup_mode``, ``warmup_scope``).
- P4: seeded reset (SpIEL) — not implemented yet; raises ``NotImplementedError``.
- P5: dense Adam (nothing masked); the weights are re-masked right after every step.

Weights may be FSDP2 ``DTensor``s: the optimizers work on the local shards and keep their state as
DTensors of the parameter's layout; masks are sliced to the local shard (:func:`local_view`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = [
    "STATE_POLICIES",
    "LOCAL_STEP_POLICIES",
    "WARMUP_MODES",
    "WARMUP_SCOPES",
    "STEP_DTYPES",
    "MaskedAdam",
    "MaskedSGD",
    "reset_entries",
    "optimizer_state_bytes",
    "is_dtensor",
    "local_tensor",
    "local_view",
    "local_flat_indices",
]

STATE_POLICIES: tuple[str, ...] = ("P0", "P1", "P2", "P3", "P4", "P5")
LOCAL_STEP_POLICIES: frozenset[str] = frozenset({"P2", "P3", "P4"})
WARMUP_MODES: tuple[str, ...] = ("m_damping", "linear_lr")
WARMUP_SCOPES: tuple[str, ...] = ("regrown", "sparse", "all")
_STEP_I = "step_i"
#: dtypes of the per-entry step counter (dst_core §5: int32; int16 saturating as an option, smet.md §2)
STEP_DTYPES: dict[str, torch.dtype] = {"int32": torch.int32, "int16": torch.int16}
INT16_MAX = 32767


# ----------------------------------------------------------------------------------------------
# DTensor helpers (FSDP2): masks are full replicated buffers, weights may be sharded
# ----------------------------------------------------------------------------------------------


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (sharing storage under ``no_grad``), else ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def _local_box(like: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    return compute_local_shape_and_global_offset(like.shape, like.device_mesh, like.placements)


def local_view(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of the full tensor ``full`` that lies in ``like``'s local shard (a view), or ``full``."""
    if not is_dtensor(like):
        return full
    shape, offset = _local_box(like)
    out = full
    for dim, (size, start) in enumerate(zip(shape, offset)):
        if size != full.shape[dim]:
            out = out.narrow(dim, start, size)
    return out


def local_flat_indices(flat_idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Global flat indices of ``like`` mapped to flat indices of its local shard (others dropped)."""
    if not is_dtensor(like):
        return flat_idx
    shape, offset = _local_box(like)
    if tuple(shape) == tuple(like.shape):
        return flat_idx
    coords = torch.stack(torch.unravel_index(flat_idx, tuple(like.shape)), dim=1)
    lo = torch.tensor(offset, device=flat_idx.device)
    hi = lo + torch.tensor(shape, device=flat_idx.device)
    inside = ((coords >= lo) & (coords < hi)).all(dim=1)
    local = coords[inside] - lo
    strides = torch.tensor([math.prod(shape[d + 1 :]) for d in range(len(shape))], device=flat_idx.device)
    return (local * strides).sum(dim=1)


# ----------------------------------------------------------------------------------------------
# Shared machinery
# ----------------------------------------------------------------------------------------------


class _MaskedOptimizerMixin:
    """Mask bookkeeping shared by :class:`MaskedAdam` and :class:`MaskedSGD`."""

    _allowed_policies: tuple[str, ...] = STATE_POLICIES
    param_groups: list[dict[str, Any]]
    state: Any

    def _init_masking(self) -> None:
        self._masks: dict[torch.Tensor, torch.Tensor] = {}
        self._compact: dict[torch.Tensor, torch.Tensor] = {}
        self.skip_next_step = False
        for group in self.param_groups:
            self._check_policy(group["state_policy"])

    def _check_policy(self, policy: str) -> None:
        if policy not in self._allowed_policies:
            raise ValueError(
                f"{type(self).__name__} does not support state_policy {policy!r}; "
                f"valid: {', '.join(self._allowed_policies)}"
            )
        if policy == "P4":
            raise NotImplementedError("state policy P4 (seeded reset, SpIEL) is not implemented yet")

    def attach_masks(
        self,
        masks: Mapping[torch.Tensor, torch.Tensor],
        state_policy: str | None = None,
        **group_options: Any,
    ) -> None:
        """Tell the optimizer which entries of each parameter are active.

        Args:
            masks: ``{parameter: bool mask}``; the mask has the parameter's (global) shape and is kept
                by reference, so in-place edits of the module's buffer take effect at once. For a
                DTensor parameter the mask is sliced to its local shard. Compact layout (dst_core §1):
                ``{values: index}`` with a 1-D parameter and an int32/int64 ``index`` of the same length;
                every slot is active and the state is 1-D, aligned slot-for-slot with ``index``.
            state_policy: when given, set on every param group that holds a masked parameter.
            **group_options: other group settings to set there (``reset_step``, ``warmup_steps``,
                ``warmup_mode``, ``warmup_scope``).
        """
        owned = {p: g for g in self.param_groups for p in g["params"]}
        for p, mask in masks.items():
            if p not in owned:
                raise ValueError(f"attach_masks: a parameter of shape {tuple(p.shape)} is not in this optimizer")
            compact = mask.dtype in (torch.int32, torch.long) and mask.dim() == 1 and p.dim() == 1 and mask.numel() == p.numel()
            if not compact and (tuple(mask.shape) != tuple(p.shape) or mask.dtype != torch.bool):
                raise ValueError(
                    f"attach_masks: mask {tuple(mask.shape)} {mask.dtype} does not fit parameter {tuple(p.shape)}"
                )
            if compact:
                if is_dtensor(p):
                    raise NotImplementedError("attach_masks: the compact layout does not support DTensor parameters")
                self._compact[p] = mask
            else:
                self._masks[p] = local_view(mask, p)
            group = owned[p]
            if state_policy is not None:
                self._check_policy(state_policy)
                group["state_policy"] = state_policy
            for key, value in group_options.items():
                if key not in self.defaults:
                    raise ValueError(f"attach_masks: unknown group option {key!r}")
                group[key] = value

    def detach_masks(self) -> None:
        """Forget every mask (the optimizer becomes plain Adam/SGD)."""
        self._masks.clear()
        self._compact.clear()

    def is_compact(self, param: torch.Tensor) -> bool:
        """Whether ``param`` was attached as compact ``values`` (dst_core §1)."""
        return param in self._compact

    def mask_of(self, param: torch.Tensor) -> torch.Tensor | None:
        """The (local) mask attached to ``param``, or ``None``."""
        return self._masks.get(param)

    def group_of(self, param: torch.Tensor) -> dict[str, Any]:
        """The param group that holds ``param``."""
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise KeyError("parameter not in this optimizer")

    def reset_entries(self, param: torch.Tensor, flat_idx: torch.Tensor, removed: bool = False) -> None:
        """See :func:`reset_entries`."""
        reset_entries(self, param, flat_idx, removed=removed)  # type: ignore[arg-type]

    def _run_closure(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _take_skip(self) -> bool:
        skip, self.skip_next_step = self.skip_next_step, False
        return skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``Optimizer.load_state_dict``, but integer state (``step_i``) keeps its dtype (bitwise)."""
        super().load_state_dict(state_dict)  # type: ignore[misc]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            saved = state_dict["state"].get(pid, {})
            for key, value in saved.items():
                if key != "step" and isinstance(value, torch.Tensor) and not value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, copy=True)


def _local_mask(opt: _MaskedOptimizerMixin, p: torch.Tensor, policy: str) -> torch.Tensor | None:
    mask = opt._masks.get(p)
    return None if (mask is None or policy == "P5") else mask


def _remask_p5(opt: _MaskedOptimizerMixin, p: torch.Tensor, policy: str) -> None:
    mask = opt._masks.get(p)
    if mask is not None and policy == "P5":
        local_tensor(p).masked_fill_(~mask, 0)  # dst_core §5, P5: weights re-masked after every step


# ----------------------------------------------------------------------------------------------
# MaskedAdam
# ----------------------------------------------------------------------------------------------


class MaskedAdam(_MaskedOptimizerMixin, Optimizer):
    """Adam (optionally with decoupled weight decay) that leaves inactive entries untouched (dst_core §5).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: (β1, β2).
        eps: ε.
        weight_decay: decoupled (AdamW-style) weight decay; 0 disables it.
        state_policy: ``P0``..``P5`` (dst_core §5); the ``SparseTopology`` callback overrides it for the
            groups of its sparse tensors when it attaches the masks. Default ``P1``.
        reset_step: s_i of a reset entry under P2/P3 (default 0, so the first update uses τ = 1).
        warmup_steps: W of P3 (0 = no warm-up).
        warmup_mode: ``m_damping`` (stored m *= min(s/W, 1), compounding) or ``linear_lr`` (lr·min(s/W, 1)).
        warmup_scope: ``regrown`` (reset entries only), ``sparse`` (also the initial sparse entries during
            the first W steps) or ``all`` (also the dense tensors).
        step_dtype: dtype of the per-entry counters s_i of P2/P3: ``int32`` (default, dst_core §5) or
            ``int16``, which saturates at 32767 (smet.md §2: "int16 saturating as an option"; 2 bytes per
            entry instead of 4). Saturation is exact in fp32 bias correction: β2^32767 ≈ 6e-15, far below
            fp32 resolution of 1, so 1 − β^s is 1.0 either way; W must then stay below 32767.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        state_policy: str = "P1",
        reset_step: int = 0,
        warmup_steps: int = 0,
        warmup_mode: str = "m_damping",
        warmup_scope: str = "regrown",
        step_dtype: str = "int32",
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("lr, eps and weight_decay must be non-negative")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if warmup_mode not in WARMUP_MODES or warmup_scope not in WARMUP_SCOPES:
            raise ValueError(f"warmup_mode must be one of {WARMUP_MODES}, warmup_scope one of {WARMUP_SCOPES}")
        if step_dtype not in STEP_DTYPES:
            raise ValueError(f"step_dtype must be one of {tuple(STEP_DTYPES)}, got {step_dtype!r}")
        if step_dtype == "int16" and int(warmup_steps) >= INT16_MAX:
            raise ValueError(f"warmup_steps {warmup_steps} does not fit int16 step counters (max {INT16_MAX - 1})")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            state_policy=state_policy,
            reset_step=int(reset_step),
            warmup_steps=int(warmup_steps),
            warmup_mode=warmup_mode,
            warmup_scope=warmup_scope,
            step_dtype=step_dtype,
        )
        super().__init__(params, defaults)
        self._init_masking()

    def _init_state(
        self, p: torch.Tensor, state: dict[str, Any], policy: str, masked: bool, group: dict[str, Any]
    ) -> None:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if masked and policy in LOCAL_STEP_POLICIES:
            state[_STEP_I] = torch.zeros_like(p, dtype=STEP_DTYPES[group.get("step_dtype", "int32")])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adam step; on a skipped iteration (``skip_next_step``) only the closure runs."""
        loss = self._run_closure(closure)
        if self._take_skip():
            return loss
        for group in self.param_groups:
            policy = group["state_policy"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MaskedAdam does not support sparse gradients")
                mask = _local_mask(self, p, policy)
                compact = p in self._compact  # every slot active: no masking, per-slot state
                state = self.state[p]
                if not state:
                    self._init_state(p, state, policy, mask is not None or compact, group)
                elif (mask is not None or compact) and policy in LOCAL_STEP_POLICIES and _STEP_I not in state:
                    # a policy switched on after the state exists: active entries count as never reset
                    dtype = STEP_DTYPES[group.get("step_dtype", "int32")]
                    state[_STEP_I] = torch.zeros_like(p, dtype=dtype)
                    start = int(state["step"].item())
                    if dtype == torch.int16:
                        start = min(start, INT16_MAX)
                    if compact:
                        local_tensor(state[_STEP_I]).fill_(start)
                    else:
                        local_tensor(state[_STEP_I]).masked_fill_(mask, start)
                self._update(p, mask, state, group, policy, compact)
                _remask_p5(self, p, policy)
        return loss

    def _update(
        self,
        p: torch.Tensor,
        mask: torch.Tensor | None,
        state: dict[str, Any],
        group: dict[str, Any],
        policy: str,
        compact: bool = False,
    ) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        w = local_tensor(p)
        g = local_tensor(p.grad)
        m = local_tensor(state["exp_avg"])
        v = local_tensor(state["exp_avg_sq"])
        if mask is not None:
            g = g.masked_fill(~mask, 0)  # inactive entries get no update and no state
        state["step"] += 1
        t = float(state["step"].item())
        if wd != 0:
            w.mul_(1.0 - lr * wd)  # decoupled weight decay (inactive entries are 0 and stay 0)
        m.mul_(b1).add_(g, alpha=1.0 - b1)  # dst_core §5: m = β1·m + (1−β1)·g
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)  # dst_core §5: v = β2·v + (1−β2)·g²
        W, mode, scope = group["warmup_steps"], group["warmup_mode"], group["warmup_scope"]
        rho: torch.Tensor | float = 1.0
        if (mask is not None or compact) and policy in LOCAL_STEP_POLICIES and _STEP_I in state:
            s = local_tensor(state[_STEP_I])
            inc = torch.ones_like(s, dtype=torch.bool) if compact else mask  # compact: every slot is active
            if s.dtype == torch.int16:
                inc = inc & (s < INT16_MAX)  # saturating int16 counter
            s.add_(inc.to(s.dtype))  # dst_core §5: s_i += 1 at active entries
            tau = s.to(m.dtype)  # dst_core §5: τ_i = s_i (P2–P4)
            if policy == "P3" and W > 0:
                if s.dtype == torch.int16 and W >= INT16_MAX:
                    raise ValueError(f"warmup_steps {W} does not fit int16 step counters (max {INT16_MAX - 1})")
                warming = s < W
                if mask is not None:
                    warming &= mask
                if scope == "regrown":
                    t_cap = min(int(t), INT16_MAX) if s.dtype == torch.int16 else int(t)  # saturated: s == t_cap
                    warming &= s < t_cap  # dst_core §5: warming(i) = s_i < W and s_i < t
                factor = torch.where(warming, tau / W, torch.ones_like(tau))  # min(s_i/W, 1)
                if mode == "m_damping":
                    m.mul_(factor)  # dst_core §5: m_i *= min(s_i/W, 1), stored back
                else:
                    rho = factor  # dst_core §5: ρ_i = min(s_i/W, 1) (linear_lr)
            bc1 = 1.0 - torch.pow(b1, tau)
            bc2 = 1.0 - torch.pow(b2, tau)
        else:
            if policy == "P3" and W > 0 and scope == "all" and t < W:
                if mode == "m_damping":
                    m.mul_(t / W)  # dst_core §5: scope all damps the dense tensors too
                else:
                    rho = t / W
            bc1 = 1.0 - b1**t  # dst_core §5: τ = the tensor's global step (P0, P1, P5)
            bc2 = 1.0 - b2**t
        # dst_core §5: w −= lr·ρ·(m/(1−β1^τ)) / (sqrt(v/(1−β2^τ)) + ε)
        update = (m / bc1).div_((v / bc2).sqrt_().add_(eps)).mul_(rho).mul_(lr)
        if mask is not None:
            update.masked_fill_(~mask, 0)
        w.sub_(update)


# ----------------------------------------------------------------------------------------------
# MaskedSGD
# ----------------------------------------------------------------------------------------------


class MaskedSGD(_MaskedOptimizerMixin, Optimizer):
    """SGD with momentum whose buffer is masked (state policy P1; P5 = dense momentum) (dst_core §5).

    Same update as ``torch.optim.SGD`` (coupled weight decay, dampening, Nesterov), restricted to the
    active entries: inactive entries get no update and a zero momentum buffer.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        momentum: momentum factor.
        dampening: dampening of the momentum.
        weight_decay: L2 penalty added to the gradient.
        nesterov: Nesterov momentum.
        state_policy: ``P1`` (masked momentum; ``P0`` is the same for SGD) or ``P5`` (dense momentum,
            weights re-masked after the step).
    """

    _allowed_policies = ("P0", "P1", "P5")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        state_policy: str = "P1",
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be non-negative")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            state_policy=state_policy,
        )
        super().__init__(params, defaults)
        self._init_masking()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SGD step; on a skipped iteration (``skip_next_step``) only the closure runs."""
        loss = self._run_closure(closure)
        if self._take_skip():
            return loss
        for group in self.param_groups:
            policy = group["state_policy"]
            lr, mu, damp, wd = group["lr"], group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                mask = _local_mask(self, p, policy)
                w = local_tensor(p)
                g = local_tensor(p.grad)
                if wd != 0:
                    g = g.add(w, alpha=wd)
                if mask is not None:
                    g = g.masked_fill(~mask, 0)
                if mu != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                        local_tensor(state["momentum_buffer"]).copy_(g)  # as torch.optim.SGD's first step
                    else:
                        buf = local_tensor(state["momentum_buffer"])
                        buf.mul_(mu).add_(g, alpha=1.0 - damp)
                    buf = local_tensor(state["momentum_buffer"])
                    g = g.add(buf, alpha=mu) if group["nesterov"] else buf
                    if mask is not None and group["nesterov"]:
                        g = g.masked_fill(~mask, 0)
                w.add_(g, alpha=-lr)
                _remask_p5(self, p, policy)
        return loss


# ----------------------------------------------------------------------------------------------
# Slot resets and accounting
# ----------------------------------------------------------------------------------------------


def reset_entries(
    optimizer: Optimizer,
    param: torch.Tensor,
    flat_idx: torch.Tensor,
    policy: str | None = None,
    removed: bool = False,
) -> None:
    """Reset the optimizer slots of ``param`` at global flat positions ``flat_idx`` in place (dst_core §5).

    Compact layout (dst_core §1): ``flat_idx`` are slot indices into ``values`` (and its 1-D state).
    Newly active entries (``removed=False``) get the policy's reset: P0/P1 every slot 0; P2/P3
    m = v = 0 and s_i = ``reset_step``; P5 nothing. Removed entries (``removed=True``) get every slot 0
    (P5: nothing). Never changes a state tensor's shape or the param groups. Works for any optimizer
    whose per-entry state tensors have the parameter's shape (``torch.optim.Adam`` included).

    Args:
        optimizer: the optimizer holding ``param``.
        param: the parameter (possibly a DTensor; indices refer to its global shape).
        flat_idx: int64 flat positions.
        policy: the state policy; ``None`` takes the param group's ``state_policy`` (else P1).
        removed: whether the entries were removed (D \\ R) rather than newly grown (R \\ A).
    """
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
    if group is None:
        raise KeyError("reset_entries: parameter not in this optimizer")
    policy = policy or group.get("state_policy", "P1")
    if policy == "P5" or flat_idx.numel() == 0:
        return  # dst_core §5, P5: nothing masked
    if policy == "P4":
        raise NotImplementedError("state policy P4 (seeded reset) is not implemented yet")
    state = optimizer.state.get(param)
    if not state:
        return  # no slot allocated yet: every slot is still 0
    local_shape = local_tensor(param).shape
    idx = local_flat_indices(flat_idx, param)
    for key, value in state.items():
        if key == "step" or not isinstance(value, torch.Tensor):
            continue
        slot = local_tensor(value)
        if slot.shape != local_shape:
            continue
        flat = slot.view(-1)
        fill = 0
        if key == _STEP_I and not removed and policy in LOCAL_STEP_POLICIES:
            fill = int(group.get("reset_step", 0))  # dst_core §5: s_i = reset_step (P2, P3)
        flat.index_fill_(0, idx.to(flat.device), fill)  # dst_core §5: m = v = 0


def optimizer_state_bytes(optimizers: Iterable[Optimizer]) -> int:
    """Bytes held by the (local) state tensors of ``optimizers`` (dst_core §12)."""
    total = 0
    for opt in optimizers:
        for state in opt.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    t = local_tensor(value)
                    total += t.numel() * t.element_size()
    return total
