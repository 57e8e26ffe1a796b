"""Test-wide settings: offline hubs (ENVIRONMENT.md §2) before anything imports transformers."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf-home-"))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYTHONHASHSEED", "0")

import pytest  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside a fresh directory (``runs/`` goes there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
