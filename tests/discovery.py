"""Discovery for the generic test matrix: plug-ins through ``__all__``, configs through ``yaml/**``.

Nothing is listed by hand: a new module, datamodule, callback or YAML file is picked up here.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import lightning.pytorch as pl

import callbacks
import datamodules
import modules

ROOT = Path(__file__).resolve().parent.parent
YAML_DIR = ROOT / "yaml"
BASE_DIR = YAML_DIR / "_base"
PACKAGES = {"modules": modules, "datamodules": datamodules, "callbacks": callbacks}


def exported(kind: type) -> list[type]:
    """Every class of ``kind`` exported through a package ``__all__``."""
    found = []
    for pkg in PACKAGES.values():
        for name in getattr(pkg, "__all__", []):
            obj = getattr(pkg, name)
            if inspect.isclass(obj) and issubclass(obj, kind):
                found.append(obj)
    return found


def lightning_modules() -> list[type]:
    return exported(pl.LightningModule)


def datamodule_classes() -> list[type]:
    return exported(pl.LightningDataModule)


def callback_classes() -> list[type]:
    return exported(pl.Callback)


def all_yaml() -> list[Path]:
    return sorted(YAML_DIR.rglob("*.yaml"))


def presets() -> list[Path]:
    return sorted((BASE_DIR / "trainer").glob("*.yaml"))


def paper_yaml() -> list[Path]:
    return [p for p in all_yaml() if BASE_DIR not in p.parents]


#: YAML kinds other than a training run, by their single top-level key, and the subcommand that reads them.
#: ``law``: ``trainer fit-law`` / ``predict-law`` (trainer/scaling_law.py); ``sweep``: ``trainer sweep``
#: (trainer/sweep.py).
OTHER_KINDS = ("law", "sweep")


def yaml_kind(path: Path) -> str:
    """``"run"`` for a training config, else the single top-level key of :data:`OTHER_KINDS`."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    keys = set(data) if isinstance(data, dict) else set()
    for kind in OTHER_KINDS:
        if kind in keys:
            return kind
    return "run"


def run_yaml() -> list[Path]:
    """Paper YAMLs that are training configs (``trainer fit --config``)."""
    return [p for p in paper_yaml() if yaml_kind(p) == "run"]


def other_yaml() -> list[Path]:
    """Paper YAMLs read by another subcommand (law and sweep files)."""
    return [p for p in paper_yaml() if yaml_kind(p) != "run"]


def smoke_yaml() -> list[Path]:
    return sorted(p for p in paper_yaml() if p.name == "smoke.yaml")


def header(path: Path) -> list[str]:
    """The leading comment block of a YAML file."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def requires(path: Path) -> list[str]:
    """What a file declares it needs beyond a CPU laptop (``# Requires: gpu, dataset X``)."""
    for line in header(path):
        m = re.match(r"Requires:\s*(.+)", line)
        if m:
            return [r.strip() for r in m.group(1).split(",") if r.strip()]
    return []


def cpu_runnable_yaml() -> list[Path]:
    """Paper YAMLs that must complete ``fast_dev_run`` on CPU: all without a ``Requires:`` line."""
    return [p for p in run_yaml() if not requires(p)]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))
