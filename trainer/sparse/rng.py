"""Stateless, rank-identical random generators for sparse-topology decisions (dst_core.md §7).

Every random draw of the sparse substrate (mask init, random growth, magnitude noise, Gumbel noise)
comes from a CPU ``torch.Generator`` seeded by a 64-bit hash of (run seed, purpose tag, global step,
layer index). There is no RNG state to checkpoint and every rank draws the same numbers; the global
RNG is never touched.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["layer_seed", "layer_generator"]

_MASK63 = (1 << 63) - 1


def layer_seed(seed: int, tag: str, step: int, layer_index: int) -> int:
    """The 63-bit seed for (run seed, tag, step, layer): blake2b of the tuple's text (dst_core §7)."""
    text = f"{int(seed)}|{tag}|{int(step)}|{int(layer_index)}".encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def layer_generator(seed: int, tag: str, step: int, layer_index: int) -> torch.Generator:
    """A fresh CPU generator seeded by :func:`layer_seed` (dst_core §7).

    Args:
        seed: the run seed (``trainer.data.run_seed()``).
        tag: the purpose of the draw, e.g. ``"init"``, ``"drop"``, ``"grow"``.
        step: the global (optimizer) step of the draw; 0 for the initial mask.
        layer_index: position of the layer in the mask set.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(layer_seed(seed, tag, step, layer_index))
    return gen
