"""LightningDataModules, one file per data source; short class names resolve in YAML through ``__all__``."""

from datamodules.digits import DigitsDataModule
from datamodules.images import ImageClassificationDataModule
from datamodules.instruction import InstructionDataModule
from datamodules.safety_grid import LavaGridDataModule
from datamodules.streams import ContextTableStreamDataModule, RecurringConceptStreamDataModule, TableStreamDataModule
from datamodules.vizdoom import HasardDataModule
from datamodules.text_games import (
    EtoTrajectoryDataModule,
    ScienceWorldDataModule,
    TextWorldExpressDataModule,
    TextWorldGamesDataModule,
    ToyTextGameDataModule,
)
from datamodules.text import RepeatedTokensDataModule, TextCorpusDataModule
from datamodules.preference_prompts import PreferencePromptDataModule
from datamodules.mo_toys import FishwoodDataModule
from datamodules.eo_scenes import DigitsImageDataModule, ProceduralEOScenesDataModule
from datamodules.corruption_grid import CorruptionGridDataModule
from datamodules.eo_folders import EOImageFolderDataModule
from datamodules.external_predictions import ExternalPredictionsDataModule, SceneRulePredictionsDataModule

__all__: list[str] = ["ContextTableStreamDataModule", "DigitsDataModule", "HasardDataModule", "ImageClassificationDataModule", "InstructionDataModule", "LavaGridDataModule", "RecurringConceptStreamDataModule", "RepeatedTokensDataModule", "TableStreamDataModule", "TextCorpusDataModule", "EtoTrajectoryDataModule", "ScienceWorldDataModule", "TextWorldExpressDataModule", "TextWorldGamesDataModule", "ToyTextGameDataModule", "PreferencePromptDataModule", "FishwoodDataModule", "DigitsImageDataModule", "ProceduralEOScenesDataModule", "CorruptionGridDataModule", "EOImageFolderDataModule", "ExternalPredictionsDataModule", "SceneRulePredictionsDataModule"]
