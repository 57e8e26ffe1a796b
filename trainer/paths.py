"""Where config files are found: as given, else relative to the project root (``yaml/...``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROJECT_ROOT", "resolve_config_path"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_config_path(value: str | os.PathLike) -> str:
    """A config path as given if it exists (or is absolute), else relative to the project root when that
    exists, else as given (the caller reports it missing)."""
    value = str(value)
    if os.path.exists(value) or os.path.isabs(value):
        return value
    candidate = PROJECT_ROOT / value
    return str(candidate) if candidate.exists() else value
