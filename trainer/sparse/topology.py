"""The one-layer drop/grow step (dst_core.md §3) and the presets of ``SparseTopology`` (dst_core §11).

:func:`drop_grow` is pure: it reads a layer's weight, mask and (optionally) dense gradient and returns
the new mask with the index sets the caller needs to zero weights and reset optimizer slots.
:func:`apply_drop_grow_` performs those in-place edits on the weight and mask.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import torch

from trainer.sparse.criteria import DROP_CRITERIA, GRADIENT_CRITERIA, GROW_CRITERIA, select_drop, select_grow
from trainer.sparse.init import INIT_METHODS
from trainer.sparse.optim import STATE_POLICIES, WARMUP_MODES
from trainer.sparse.rng import layer_generator
from trainer.sparse.schedules import DECAYS, DEFAULT_F_MIN, drop_count

__all__ = [
    "DropGrowResult",
    "drop_grow",
    "apply_drop_grow_",
    "DSTPreset",
    "DST_PRESETS",
    "resolve_preset",
    "nearest_name",
]

_RANDOM_DROP = frozenset({"magnitude_noise", "soft_magnitude", "random"})


class DropGrowResult(NamedTuple):
    """Outcome of one drop/grow step on one layer; index tensors are flat and ascending (dst_core §3).

    ``mask`` is the new flat bool mask A'; ``dropped`` = D; ``grown`` = R; ``newly_active`` = R \\ A
    (weight 0, optimizer slots reset by the state policy); ``removed`` = D \\ R (weight 0, slots 0);
    ``kept`` = R ∩ D (value and state kept); ``k`` = |D| = |R|.
    """

    mask: torch.Tensor
    dropped: torch.Tensor
    grown: torch.Tensor
    newly_active: torch.Tensor
    removed: torch.Tensor
    kept: torch.Tensor
    k: int


def drop_grow(
    weight: torch.Tensor,
    mask: torch.Tensor,
    fraction: float,
    drop: str = "magnitude",
    grow: str = "random",
    regrow_dropped: bool = False,
    grad: torch.Tensor | None = None,
    seed: int = 0,
    step: int = 0,
    layer_index: int = 0,
    temperature: float = 3.0,
) -> DropGrowResult:
    """One drop/grow update of one layer (dst_core §3). Inputs are not modified.

    Args:
        weight: the dense weight (any shape); inactive entries are 0.
        mask: its bool mask (same shape), the active set A.
        fraction: the drop fraction f_t; k = floor(f_t·c).
        drop: a drop criterion of :data:`trainer.sparse.criteria.DROP_CRITERIA`.
        grow: a grow criterion of :data:`trainer.sparse.criteria.GROW_CRITERIA`.
        regrow_dropped: whether D may be regrown in the same update.
        grad: the dense gradient of ``weight`` (gradient criteria only).
        seed: the run seed; with ``step`` and ``layer_index`` it seeds every draw (dst_core §7).
        step: the global step of the update.
        layer_index: the layer's position in the mask set.
        temperature: T of ``soft_magnitude``.

    Without ``regrow_dropped`` only n − c positions can grow; k is capped there (a deviation that
    only matters at densities above 1/(1+f_t)).
    """
    w = weight.detach().reshape(-1)
    m = mask.reshape(-1).to(torch.bool)
    g = None if grad is None else grad.detach().reshape(-1)
    n = m.numel()
    active = m.nonzero().squeeze(1)
    c = active.numel()
    k = drop_count(fraction, c, n)  # dst_core §3: k = floor(f_t·c), no-op if k == 0 or c == n
    if not regrow_dropped:
        k = min(k, n - c)
    empty = torch.empty(0, dtype=torch.long, device=m.device)
    if k == 0:
        return DropGrowResult(m.clone(), empty, empty, empty, empty, empty, 0)
    # DROP: the lowest k scores of the active set form D (dst_core §3)
    gen_drop = layer_generator(seed, "drop", step, layer_index) if drop in _RANDOM_DROP else None
    g_active = g[active] if (g is not None and drop in GRADIENT_CRITERIA) else None
    dropped = active[select_drop(drop, w[active], k, g_active, gen_drop, temperature)]
    # GROW: candidates are positions not in A \ D; without regrow_dropped, D is excluded too (dst_core §3)
    cand = ~m
    if regrow_dropped:
        cand[dropped] = True
    candidates = cand.nonzero().squeeze(1)
    gen_grow = layer_generator(seed, "grow", step, layer_index) if grow == "random" else None
    grown = select_grow(grow, candidates, k, n, g if grow in GRADIENT_CRITERIA else None, gen_grow)
    new = m.clone()
    new[dropped] = False
    new[grown] = True  # dst_core §3: A' = (A \ D) ∪ R
    in_d = torch.isin(grown, dropped)
    in_r = torch.isin(dropped, grown)
    return DropGrowResult(
        mask=new,
        dropped=dropped,
        grown=grown,
        newly_active=grown[~in_d],  # R \ A
        removed=dropped[~in_r],  # D \ R
        kept=grown[in_d],  # R ∩ D
        k=int(k),
    )


def apply_drop_grow_(weight: torch.Tensor, mask: torch.Tensor, result: DropGrowResult) -> None:
    """Write ``result`` into ``mask`` and zero ``weight`` on R \\ A and D \\ R, in place (dst_core §3).

    R ∩ D keeps its value. Both tensors must be contiguous (parameters and buffers are).
    """
    with torch.no_grad():
        mask.copy_(result.mask.view(mask.shape))
        flat = weight.view(-1)
        zero = torch.cat([result.newly_active, result.removed])
        if zero.numel():
            flat.index_fill_(0, zero.to(flat.device), 0)  # dst_core §3: R \ A and D \ R get weight 0


# --------------------------------------------------------------------------------------------
# Presets (dst_core §11)
# --------------------------------------------------------------------------------------------

_EMBED_HEAD = (r"(^|\.)embed", r"(^|\.)(lm_)?head(s)?(\.|$)")


@dataclasses.dataclass(frozen=True)
class DSTPreset:
    """All options of a dynamic-sparse-training run; one row of dst_core §11 plus its defaults.

    Every field can be overridden by ``SparseTopology``'s argument of the same name.

    Attributes:
        init: ``uniform``, ``er`` or ``erk`` (dst_core §2).
        density: global density d of the mask set.
        erk_power: p of the ER/ERK score.
        dense_first_layer: force the first layer of the mask set dense (RigL).
        include: regexes (``re.search``) over mask-set names selecting the sparse tensors.
        exclude: regexes removing names again; excluded tensors stay dense and count toward no density.
        dense_layers: regexes of sparse-set names forced dense (they count toward the density).
        delta_t: ΔT in optimizer steps, or ``"epoch"`` for the optimizer steps of one epoch (SET).
        drop_fraction: f0.
        decay: ``cosine``, ``cosine_floor``, ``linear`` or ``constant`` (dst_core §4).
        end_fraction: T_end / T; ``None`` means no end (T_end = T).
        f_min: the floor of ``cosine_floor``.
        drop: drop criterion (dst_core §3).
        grow: grow criterion (dst_core §3).
        soft_temperature: T of ``soft_magnitude``.
        regrow_dropped: whether D may be regrown in the same update.
        state_policy: optimizer-state policy ``P0``..``P5`` (dst_core §5).
        reset_step: s_i after a reset (P2, P3).
        warmup_steps: W of P3.
        warmup_mode: ``m_damping`` or ``linear_lr`` (P3).
        skip_step_on_update: skip the optimizer step on update iterations (RigL).
    """

    init: str = "erk"
    density: float = 0.1
    erk_power: float = 1.0
    dense_first_layer: bool = False
    include: tuple[str, ...] = (".*",)
    exclude: tuple[str, ...] = ()
    dense_layers: tuple[str, ...] = ()
    delta_t: int | str = 100
    drop_fraction: float = 0.3
    decay: str = "cosine"
    end_fraction: float | None = 0.75
    f_min: float = DEFAULT_F_MIN
    drop: str = "magnitude"
    grow: str = "gradient"
    soft_temperature: float = 3.0
    regrow_dropped: bool = False
    state_policy: str = "P1"
    reset_step: int = 0
    warmup_steps: int = 0
    warmup_mode: str = "m_damping"
    skip_step_on_update: bool = False

    def __post_init__(self) -> None:
        _check_choice("init", self.init, INIT_METHODS)
        _check_choice("decay", self.decay, DECAYS)
        _check_choice("drop", self.drop, DROP_CRITERIA)
        _check_choice("grow", self.grow, GROW_CRITERIA)
        _check_choice("state_policy", self.state_policy, STATE_POLICIES)
        _check_choice("warmup_mode", self.warmup_mode, WARMUP_MODES)
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must lie in (0, 1], got {self.density}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must lie in [0, 1], got {self.drop_fraction}")
        if self.end_fraction is not None and not 0.0 < self.end_fraction <= 1.0:
            raise ValueError(f"end_fraction must lie in (0, 1] (1.0 = no end), got {self.end_fraction}")
        if isinstance(self.delta_t, str):
            _check_choice("delta_t", self.delta_t, ("epoch",))
        elif int(self.delta_t) <= 0:
            raise ValueError(f"delta_t must be a positive number of optimizer steps or 'epoch', got {self.delta_t}")
        if self.soft_temperature <= 0:
            raise ValueError(f"soft_temperature must be positive, got {self.soft_temperature}")
        if self.reset_step < 0 or self.warmup_steps < 0:
            raise ValueError("reset_step and warmup_steps must be non-negative")
        if self.state_policy == "P3" and self.warmup_steps <= 0:
            raise ValueError("state_policy P3 needs warmup_steps > 0")
        for field in ("include", "exclude", "dense_layers"):
            value = getattr(self, field)
            if isinstance(value, str):
                raise ValueError(f"{field} must be a tuple of regexes, got the string {value!r}")
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{field}: invalid regex {pattern!r}: {err}") from None

    @property
    def needs_gradient(self) -> bool:
        """Whether the drop or grow criterion reads the dense gradient."""
        return self.drop in GRADIENT_CRITERIA or self.grow in GRADIENT_CRITERIA


def nearest_name(value: str, valid: Any) -> str:
    """`` Did you mean 'x'?`` for the closest of ``valid`` (difflib), or the list of valid names."""
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.0)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid: {', '.join(valid)}."


def _check_choice(field: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {field} {value!r}.{nearest_name(str(value), valid)}")


DST_PRESETS: Mapping[str, DSTPreset] = MappingProxyType(
    {
        # SET (Mocanu et al. 2018): ER, ζ = 0.3 each epoch, signed-magnitude drop, random growth
        "set": DSTPreset(
            init="er",
            density=0.1,
            delta_t="epoch",
            drop_fraction=0.3,
            decay="constant",
            end_fraction=None,
            drop="set_signed",
            grow="random",
            regrow_dropped=False,
            state_policy="P1",
        ),
        # RigL (Evci et al. 2020): ERK with the first layer dense, 90% sparsity, ΔT 100, cosine to 0.75 T
        "rigl": DSTPreset(
            init="erk",
            density=0.1,
            dense_first_layer=True,
            delta_t=100,
            drop_fraction=0.3,
            decay="cosine",
            end_fraction=0.75,
            drop="magnitude_noise",
            grow="gradient",
            regrow_dropped=True,
            state_policy="P1",
            skip_step_on_update=True,
        ),
        # SMET: uniform d = 0.5 (scripts), embedding and head excluded, P3 (W 100, reset 1, m_damping)
        "smet": DSTPreset(
            init="uniform",
            density=0.5,
            exclude=_EMBED_HEAD,
            delta_t=100,
            drop_fraction=0.2,
            decay="cosine_floor",
            end_fraction=None,
            drop="magnitude",
            grow="random",
            regrow_dropped=False,
            state_policy="P3",
            reset_step=1,
            warmup_steps=100,
            warmup_mode="m_damping",
        ),
        # Sparse scaling (sparse_dc): as SMET with f0 0.1 and P3 (W 20, reset 5, m_damping)
        "sparse_dc": DSTPreset(
            init="uniform",
            density=0.5,
            exclude=_EMBED_HEAD,
            delta_t=100,
            drop_fraction=0.1,
            decay="cosine_floor",
            end_fraction=None,
            drop="magnitude",
            grow="random",
            regrow_dropped=False,
            state_policy="P3",
            reset_step=5,
            warmup_steps=20,
            warmup_mode="m_damping",
        ),
        # NeuroTrails LM: ERK over every 2-D weight incl. embedding and heads, d 0.9, ΔT 50, P5
        "neurotrails_lm": DSTPreset(
            init="erk",
            density=0.9,
            delta_t=50,
            drop_fraction=0.5,
            decay="cosine_floor",
            end_fraction=None,
            drop="soft_magnitude",
            soft_temperature=3.0,
            grow="gradient",
            regrow_dropped=True,
            state_policy="P5",
        ),
        # NeuroTrails CV: ERK over conv + linear, d 0.2 (CIFAR-100 WRN), ΔT 1000, SGD momentum masked (P1)
        "neurotrails_cv": DSTPreset(
            init="erk",
            density=0.2,
            delta_t=1000,
            drop_fraction=0.5,
            decay="cosine_floor",
            end_fraction=None,
            drop="magnitude",
            grow="gradient",
            regrow_dropped=True,
            state_policy="P1",
        ),
    }
)


def resolve_preset(name: str, **overrides: Any) -> DSTPreset:
    """The preset ``name`` with every non-``None`` override applied and validated (dst_core §11).

    Raises:
        ValueError: for an unknown preset, an unknown option name or an invalid value; the message
            names the nearest valid name.
    """
    if name not in DST_PRESETS:
        raise ValueError(f"unknown SparseTopology preset {name!r}.{nearest_name(name, DST_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(DSTPreset)}
    for key in overrides:
        if key not in fields:
            raise ValueError(f"unknown SparseTopology option {key!r}.{nearest_name(key, sorted(fields))}")
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(DST_PRESETS[name], **given)
