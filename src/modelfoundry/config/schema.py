"""The whole experiment config (`Config`): the sections put together, and checks against the task found in
the data. Every key and its default lives in the section classes (`extra="forbid"` everywhere): nothing else
in the package reads a config with a fallback default. `docs/config.md` documents each key; a test keeps the
two in step."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

import modelfoundry.config.model as model_section
from modelfoundry.config.base import SEED_MAX, Section
from modelfoundry.config.compress import CompressConfig, DistillConfig
from modelfoundry.config.data import DataConfig
from modelfoundry.config.evaluation import CLASSIFICATION_METRICS, REGRESSION_METRICS, EvaluationConfig
from modelfoundry.config.model import ModelConfig
from modelfoundry.config.monitor import MonitorConfig
from modelfoundry.config.paths import set_path
from modelfoundry.config.serve import ServeConfig
from modelfoundry.config.tracking import OutputConfig, TrackingConfig
from modelfoundry.config.training import TrainingConfig
from modelfoundry.config.tune import TuneConfig
from modelfoundry.errors import ConfigError
from modelfoundry.models.mlp import MLPConfig


class Config(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = Field(42, ge=0, le=SEED_MAX)
    data: DataConfig
    model: ModelConfig = MLPConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
    tracking: TrackingConfig = TrackingConfig()
    tune: TuneConfig | None = None  # only `foundry tune` reads it; `foundry run` ignores it
    compress: CompressConfig = CompressConfig()  # only `foundry compress` reads it
    serve: ServeConfig = ServeConfig()  # only `foundry serve` reads it
    monitor: MonitorConfig = MonitorConfig()  # the server, `foundry monitor` and `foundry retrain` read it

    @model_validator(mode="after")
    def _language_model(self) -> Config:
        """model: {name: llm} and data.task: causal_lm go together (auto becomes causal_lm); so do model: {name:
        autoencoder} and data.task: anomaly."""
        for name, task, what in (("llm", "causal_lm", "a causal language model"),
                                 ("autoencoder", "anomaly", "an anomaly detector"),
                                 ("gan", "generative", "a generative adversarial network")):
            paired = self.model.name == name
            if paired and self.data.task == "auto":
                self.data.task = task
            elif paired != (self.data.task == task):
                raise ValueError(f"model.name: {name} ({what}) and data.task: {task} go together; got model.name: "
                                 f"{self.model.name} with data.task: {self.data.task}. For {what} set both; "
                                 "otherwise choose another model or task")
        if self.data.target is None and self.data.task not in ("anomaly", "generative"):
            raise ValueError("data.target: null (no label column) only suits data.task: anomaly (model: {name: "
                             "autoencoder}) or generative (model: {name: gan}); name the column to predict")
        return self

    def with_params(self, params: dict[str, Any]) -> Config:
        """This config with dotted-path values set (`{"training.optimizer.lr": 0.01}`), validated again."""
        data = self.model_dump(mode="json", exclude={"tune"})
        for path, value in params.items():
            set_path(data, path, value)
        return Config.model_validate(data)


def rebuild_model_fields() -> None:
    """Read the model table again into every field that holds a `model:` section (after a model is
    registered or removed at runtime), then rebuild the classes that contain them, innermost first."""
    union = model_section.model_union()
    model_section.ModelConfig = union
    DistillConfig.model_fields["student"].annotation = union | None
    Config.model_fields["model"].annotation = union
    for cls in (DistillConfig, CompressConfig, Config):
        cls.model_rebuild(force=True)


def check_task(config: Config, task: str) -> None:
    """Raise ConfigError for settings that contradict the task found in the data (all problems at once)."""
    problems = []
    monitor = config.training.early_stopping.monitor if config.training.early_stopping else "val_loss"
    metric = monitor.removeprefix("val_")
    if task == "classification" and metric in REGRESSION_METRICS:
        problems.append(f"training.early_stopping.monitor: {monitor} is a regression monitor; use val_loss or "
                        "val_<metric> of a classification metric (val_accuracy, val_f1_macro, val_roc_auc, ...)")
    if task == "regression" and metric in CLASSIFICATION_METRICS:
        problems.append(f"training.early_stopping.monitor: {monitor} needs classification; use val_loss, "
                        "val_mae, val_rmse, val_r2, val_mse or val_mape")
    loss = config.training.loss
    if task == "classification" and loss in ("mse", "huber", "l1"):
        problems.append(f"training.loss: {loss} is a regression loss; use auto or cross_entropy")
    if task == "regression" and loss == "cross_entropy":
        problems.append("training.loss: cross_entropy needs classification; use auto, mse, huber or l1")
    if task != "classification":
        if config.data.balance.method != "none":
            problems.append(f"data.balance.method: {config.data.balance.method} resamples classes, which needs "
                            "classification; remove it (class balance does not apply to a "
                            f"{task} target)")
        if config.evaluation.threshold.metric != "none":
            problems.append(f"evaluation.threshold.metric: {config.evaluation.threshold.metric} tunes a binary "
                            "classifier's decision threshold; remove it")
        if loss == "focal":
            problems.append("training.loss: focal is a classification loss; use auto, mse, huber or l1")
    own = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    foreign = [m for m in config.evaluation.metrics if m not in own and not (task == "classification"
                                                                           and m.startswith("top_"))]
    if foreign:
        problems.append(f"evaluation.metrics: {', '.join(foreign)} do not apply to {task}; choose from "
                        f"{', '.join(own)}")
    if config.tune is not None:
        metric, _ = config.tune.objective(config.training)
        plain = metric.removeprefix("val_")
        if plain in (REGRESSION_METRICS if task == "classification" else CLASSIFICATION_METRICS):
            problems.append(f"tune.metric: {metric} does not apply to {task}; use val_loss or val_<metric> of a "
                            f"{task} metric ({', '.join('val_' + m for m in own[:4])}, ...)")
    if problems:
        raise ConfigError(f"The data makes this a {task} task, but the config says:\n" +
                          "\n".join(f"  - {p}" for p in problems),
                          "Fix those keys, or set data.task if the task was inferred wrongly.")

