"""Sparse substrate (dst_core.md): masks, criteria, drop/grow, schedules, masked optimizers."""

from trainer.sparse.masks import MASKABLE_TYPES, MaskedModuleMixin, attach_masks, collect_mask_set

__all__ = ["MASKABLE_TYPES", "MaskedModuleMixin", "attach_masks", "collect_mask_set"]
