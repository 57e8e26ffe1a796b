"""Cross-cutting Lightning callbacks; short class names resolve in YAML through ``__all__``."""

from callbacks.drift import ConceptDriftCallback
from callbacks.global_batch import GlobalBatchSize
from callbacks.heatmap import NavigationHeatmapCallback
from callbacks.loss_spike_probe import LossSpikeProbe
from callbacks.pareto import ParetoFrontEvalCallback
from callbacks.process_reward import ProcessRewardRelabelCallback
from callbacks.robustness import CorruptionSweepCallback
from callbacks.rank_consistency import RankConsistencyCheck
from callbacks.regrowth_warmup import RegrowthWarmup
from callbacks.run_safety import NonFiniteLossGuard, SignalCheckpoint
from callbacks.sparse_delta import SparseDeltaEvolution
from callbacks.sparse_topology import SparseTopology
from callbacks.video import EpisodeVideoCallback

__all__: list[str] = [
    "NonFiniteLossGuard",
    "SignalCheckpoint",
    "RankConsistencyCheck",
    "SparseTopology",
    "RegrowthWarmup",
    "LossSpikeProbe",
    "GlobalBatchSize",
    "SparseDeltaEvolution",
    "ConceptDriftCallback",
    "NavigationHeatmapCallback",
    "EpisodeVideoCallback",
    "ProcessRewardRelabelCallback",
    "CorruptionSweepCallback",
    "ParetoFrontEvalCallback",
]
