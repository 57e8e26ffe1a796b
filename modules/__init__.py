"""LightningModules, one file per paper; short class names resolve in YAML through ``__all__``."""

from modules.neurotrails import NeuroTrailsMLP, NeuroTrailsResNet

__all__: list[str] = ["NeuroTrailsMLP", "NeuroTrailsResNet"]
