"""LightningModules, one file per paper; short class names resolve in YAML through ``__all__``."""

from modules.neurotrails import NeuroTrailsLM, NeuroTrailsMLP, NeuroTrailsResNet

__all__: list[str] = ["NeuroTrailsMLP", "NeuroTrailsResNet"]
__all__ += ["NeuroTrailsLM"]
