"""Sparse substrate (dst_core.md): masks, criteria, drop/grow, schedules, masked optimizers."""

from trainer.sparse.compact import (
    CompactSparseLinear,
    compact_count,
    compact_from_linear,
    compact_layers,
    compactify_linears,
)
from trainer.sparse.criteria import (
    DROP_CRITERIA,
    GRADIENT_CRITERIA,
    GROW_CRITERIA,
    drop_scores,
    grow_scores,
    select_drop,
    select_grow,
    topk_indices,
)
from trainer.sparse.init import (
    INIT_METHODS,
    erk_densities,
    exact_counts,
    init_mask,
    init_masks_,
    layer_counts,
    raw_scores,
    uniform_counts,
)
from trainer.sparse.masks import MASKABLE_TYPES, MaskedModuleMixin, attach_masks, collect_mask_set
from trainer.sparse.optim import (
    LOCAL_STEP_POLICIES,
    STATE_POLICIES,
    MaskedAdam,
    MaskedSGD,
    optimizer_state_bytes,
    reset_entries,
)
from trainer.sparse.pruning import (
    PRUNING_METHODS,
    CalibrationStats,
    check_pattern_fits,
    check_sparsity,
    magnitude_mask,
    nm_mask,
    parse_pattern,
    prune_model_,
    row_keep_count,
    sparsegpt_prune,
    wanda_mask,
    wanda_scores,
)
from trainer.sparse.rng import layer_generator, layer_seed
from trainer.sparse.schedules import DECAYS, drop_count, drop_fraction, end_step, is_update_step
from trainer.sparse.seft import SEFTCycleResult, SparseDeltaLinear, seft_cycle_, seft_invariants
from trainer.sparse.topology import (
    DST_PRESETS,
    DropGrowResult,
    DSTPreset,
    apply_drop_grow_,
    drop_grow,
    resolve_preset,
)

__all__ = [
    # compact layout
    "CompactSparseLinear",
    "compact_count",
    "compact_from_linear",
    "compactify_linears",
    "compact_layers",
    "MASKABLE_TYPES",
    "MaskedModuleMixin",
    "attach_masks",
    "collect_mask_set",
    # rng
    "layer_generator",
    "layer_seed",
    # init
    "INIT_METHODS",
    "raw_scores",
    "erk_densities",
    "exact_counts",
    "uniform_counts",
    "layer_counts",
    "init_mask",
    "init_masks_",
    # criteria
    "DROP_CRITERIA",
    "GROW_CRITERIA",
    "GRADIENT_CRITERIA",
    "topk_indices",
    "drop_scores",
    "select_drop",
    "grow_scores",
    "select_grow",
    # schedules
    "DECAYS",
    "drop_fraction",
    "drop_count",
    "end_step",
    "is_update_step",
    # topology
    "DropGrowResult",
    "drop_grow",
    "apply_drop_grow_",
    "DSTPreset",
    "DST_PRESETS",
    "resolve_preset",
    # optimizers
    "STATE_POLICIES",
    "LOCAL_STEP_POLICIES",
    "MaskedAdam",
    "MaskedSGD",
    "reset_entries",
    "optimizer_state_bytes",
    # pruning (dst_core §10)
    "PRUNING_METHODS",
    "CalibrationStats",
    "check_sparsity",
    "parse_pattern",
    "check_pattern_fits",
    "row_keep_count",
    "magnitude_mask",
    "nm_mask",
    "wanda_scores",
    "wanda_mask",
    "sparsegpt_prune",
    "prune_model_",
    # sparse deltas (seft.md §3)
    "SparseDeltaLinear",
    "SEFTCycleResult",
    "seft_cycle_",
    "seft_invariants",
]
