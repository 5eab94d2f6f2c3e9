"""The config: one pydantic schema split by section, YAML loading and errors that name the key and its line.

Sections live in one module each (data, training, evaluation, tracking, tune, compress, serve, monitor); each model's
`model:` section is declared beside its builder in models/ and collected from the model table. Dotted-path
helpers are in `paths`, error sentences in `messages`, YAML in `loading`.

Names are imported on first use (`from modelfoundry.config import Config`): the model modules import the
section base class from here, and the schema collects them from the model table, so eager imports would go
round in a circle.
"""

from __future__ import annotations

import importlib
from typing import Any

_SECTIONS = {
    "modelfoundry.config.base": ("Section", "SEED_MAX"),
    "modelfoundry.config.data": ("MissingStrategy", "FeatureConfig", "OutlierConfig", "CleanConfig",
                                 "SplitConfig", "BalanceConfig", "TextConfig", "DataConfig", "LMDataConfig"),
    "modelfoundry.models.choices": ("Activation", "Init"),
    "modelfoundry.models.mlp": ("MLPConfig",),
    "modelfoundry.models.cnn": ("CNNConfig",),
    "modelfoundry.config.model": ("ModelConfig", "model_names"),
    "modelfoundry.config.evaluation": ("CLASSIFICATION_METRICS", "REGRESSION_METRICS", "LOWER_IS_BETTER",
                                       "FAST_MONITORS", "MONITORS", "monitor_mode", "EvaluationConfig"),
    "modelfoundry.config.training": ("OptimizerConfig", "SchedulerConfig", "EarlyStoppingConfig",
                                     "CheckpointConfig", "AverageConfig", "TrainingConfig"),
    "modelfoundry.config.tracking": ("OutputConfig", "TrackingConfig"),
    "modelfoundry.config.serve": ("ServeConfig",),
    "modelfoundry.config.monitor": ("WindowConfig", "DriftConfig", "OODConfig", "RequestLogConfig", "RetrainConfig",
                                    "MonitorConfig"),
    "modelfoundry.config.tune": ("ParamSpace", "SamplerConfig", "PrunerConfig", "FROZEN_PATHS", "TuneConfig"),
    "modelfoundry.config.compress": ("COMPRESSORS", "DistillConfig", "CALIBRATION_METRICS", "GUARD_METRICS",
                                     "GuardRule", "DEFAULT_GUARDS", "CompressConfig"),
    "modelfoundry.config.schema": ("Config", "check_task"),
    "modelfoundry.config.paths": ("set_path",),
    "modelfoundry.config.loading": ("load_config", "dump_config", "config_hash", "MAX_CONFIG_VALUES"),
}
_EXPORTS = {name: module for module, names in _SECTIONS.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)  # not cached: ModelConfig can be rebuilt
    raise AttributeError(f"module 'modelfoundry.config' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
