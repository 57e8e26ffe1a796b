"""LightningModules, one file per paper; short class names resolve in YAML through ``__all__``."""

from modules.ficsum import FiCSUMStreamModule
from modules.hasard import SafePPO
from modules.q_evolve import QEvolve
from modules.moc import MOC
from modules.reobench import FrozenEncoderProbeModule, SceneSegmentationModule
from modules.reobench_external import ExternalPredictionsEvalModule
from modules.neurotrails import NeuroTrailsLM, NeuroTrailsMLP, NeuroTrailsResNet
from modules.seft import SEFTCausalLM, SEFTLoRABaseline
from modules.smet import SMETLlama
from modules.sparse_scaling import SparseScalingLlama

__all__: list[str] = ["NeuroTrailsMLP", "NeuroTrailsResNet", "NeuroTrailsLM", "SMETLlama", "SEFTCausalLM", "SEFTLoRABaseline", "SparseScalingLlama", "FiCSUMStreamModule", "SafePPO", "QEvolve", "MOC", "FrozenEncoderProbeModule", "SceneSegmentationModule", "ExternalPredictionsEvalModule"]
