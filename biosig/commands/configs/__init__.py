"""Every command's config keys, importable without torch, MLflow or scikit-learn.

One dataclass per command (`biosig CMD --key`, `mlflow run . -e CMD -P key=value` and `key: value` in a
YAML file are the same keys); each field's help line is in its metadata (`biosig.config.option`). Commands
import their config from here, and `biosig CMD --help` reads only this package, so it answers in a fraction
of a second. What a config checks needs no framework either: shape rules come from biosig.models.shapes,
names from biosig.registry.naming. By the path data takes: `data` (building and splitting datasets),
`training` (pretrain, import/export, finetune, tune), `evaluation` (evaluate, compare, promote, main).
"""

from biosig.commands.configs.data import MAX_WINDOW_S, DatasetConfig, FinalizeDatasetConfig, PrepareSplitsConfig
from biosig.commands.configs.evaluation import COMPARE_MODES, CompareConfig, EvaluateConfig, MainConfig, PromoteConfig
from biosig.commands.configs.training import (
    MAX_EPOCHS,
    PROBE_TASKS,
    STORAGE_ENV,
    ExportConfig,
    FinetuneConfig,
    ImportCheckpointConfig,
    LoopConfig,
    PretrainConfig,
    TuneConfig,
)

__all__ = ["COMPARE_MODES", "MAX_EPOCHS", "MAX_WINDOW_S", "PROBE_TASKS", "STORAGE_ENV", "CompareConfig", "DatasetConfig",
           "EvaluateConfig", "ExportConfig", "FinalizeDatasetConfig", "FinetuneConfig", "ImportCheckpointConfig",
           "LoopConfig", "MainConfig", "PrepareSplitsConfig", "PretrainConfig", "PromoteConfig", "TuneConfig"]
