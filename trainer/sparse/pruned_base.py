"""One-shot pruning of a model's target layers as the first step of a run, cached by content hash.

``prune_targets_`` is what a fine-tuning module calls in ``setup`` (seft.md §2: "a pruning step that
runs in ``setup`` and caches the pruned base by config hash"): the key hashes the target weights
themselves, the calibration token ids and every pruning option, so a cached result is reused only for
exactly the same base, data and settings (the SEFT arms of a benchmark prune once). The cache holds the
pruned weights and keep masks as one safetensors file, written atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.sparse.pruning import prune_model_

__all__ = ["pruning_key", "prune_targets_"]


def _update_tensor(h: Any, t: torch.Tensor) -> None:
    data = t.detach().cpu().contiguous()
    if data.dtype == torch.bfloat16:
        data = data.float()
    h.update(str(tuple(data.shape)).encode())
    h.update(data.numpy().tobytes())


def pruning_key(
    targets: Mapping[str, nn.Module], weight_attr: str, calibration: Sequence[torch.Tensor], options: Mapping[str, Any]
) -> str:
    """blake2b over the target weights, the calibration ids and the options (sorted)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(targets):
        h.update(name.encode())
        _update_tensor(h, getattr(targets[name], weight_attr))
    for batch in calibration:
        _update_tensor(h, batch)
    h.update(repr(sorted(options.items())).encode())
    return h.hexdigest()


@torch.no_grad()
def prune_targets_(
    model: nn.Module,
    targets: Mapping[str, nn.Module],
    calibration: Sequence[torch.Tensor],
    method: str,
    sparsity: float,
    pattern: str = "unstructured",
    weight_attr: str = "weight",
    cache_dir: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Prune ``targets`` of ``model`` in place (``trainer.sparse.pruning.prune_model_``), or load the
    same result from ``cache_dir`` (``None`` disables the cache). Returns ``{path: bool keep mask}``."""
    from safetensors.torch import load_file, save_file

    key_opts = {"method": method, "sparsity": float(sparsity), "pattern": pattern, **options}
    path = None
    if cache_dir is not None:
        key = pruning_key(targets, weight_attr, calibration, key_opts)
        path = Path(cache_dir) / f"pruned-{method}-{key}.safetensors"
        if path.is_file():
            saved = load_file(str(path))
            masks = {}
            for name, mod in targets.items():
                w = getattr(mod, weight_attr)
                w.copy_(saved[f"{name}.weight"].to(w.dtype))
                masks[name] = saved[f"{name}.mask"].to(torch.bool)
            return masks
    masks = prune_model_(model, list(calibration), dict(targets), method, sparsity, pattern, weight_attr=weight_attr, **options)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, mod in targets.items():
            tensors[f"{name}.weight"] = getattr(mod, weight_attr).detach().cpu().contiguous()
            tensors[f"{name}.mask"] = masks[name].to(torch.uint8).cpu().contiguous()
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp)
        os.replace(tmp, path)  # atomic: a crash leaves no half file
    return masks
