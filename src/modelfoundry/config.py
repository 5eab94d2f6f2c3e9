"""The whole experiment config as pydantic v2 models, YAML loading, and errors that name the field and line.

Every key and its default lives here (`extra="forbid"` everywhere): nothing else in the package reads a
config with a fallback default. `docs/config.md` documents each key; a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelfoundry.errors import ConfigError, did_you_mean, unknown_name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------------------------- data
MissingStrategy = Literal["drop", "mean", "median", "most_frequent", "constant"]


class FeatureConfig(_Section):
    """Per-column override. Keys of `data.features` are column names or glob patterns (`pixel_*`)."""

    type: Literal["auto", "numeric", "categorical", "image", "ignore"] = "auto"
    missing: MissingStrategy | None = None  # None: median for numeric, most_frequent for categorical
    fill_value: float | int | str | None = None  # used by missing: constant
    scale: Literal["standard", "minmax", "none"] | None = None  # None: standard
    encode: Literal["onehot", "ordinal"] | None = None  # None: onehot
    shape: list[int] | None = None  # image only: (C, H, W) or (H, W)

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        if self.missing == "constant" and self.fill_value is None:
            raise ValueError("missing: constant needs a fill_value (for example fill_value: 0)")
        if self.shape is not None and (len(self.shape) not in (2, 3) or min(self.shape) < 1):
            raise ValueError(f"shape must be [H, W] or [C, H, W] of positive sizes, got {self.shape}")
        return self


class OutlierConfig(_Section):
    method: Literal["none", "iqr", "zscore"] = "none"
    factor: float = Field(3.0, gt=0)  # IQR multiplier, or number of standard deviations


class CleanConfig(_Section):
    duplicates: Literal["drop", "keep"] = "drop"
    outliers: OutlierConfig = OutlierConfig()


class SplitConfig(_Section):
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    stratify: bool = True
    seed: int | None = None  # None: the top-level seed

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val + self.test:g}")
        return self


class BalanceConfig(_Section):
    class_weights: Literal["none", "balanced"] | dict[str, float] = "none"

    @field_validator("class_weights", mode="before")
    @classmethod
    def _label_keys(cls, v: Any) -> Any:  # YAML reads {0: 2.0} with int keys; labels are matched as text
        return {str(k): w for k, w in v.items()} if isinstance(v, dict) else v


class DataConfig(_Section):
    source: str  # sklearn:<name> or a path to .csv / .parquet / .jsonl
    target: str = "target"
    task: Literal["auto", "classification", "regression"] = "auto"
    features: dict[str, FeatureConfig] = {}
    clean: CleanConfig = CleanConfig()
    split: SplitConfig = SplitConfig()
    balance: BalanceConfig = BalanceConfig()


# ---------------------------------------------------------------------------------------------- model
Activation = Literal["relu", "gelu", "silu", "tanh", "leaky_relu", "elu"]
Init = Literal["default", "xavier", "kaiming"]


class MLPConfig(_Section):
    name: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0)]] = [128, 64]
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False
    init: Init = "default"
    linear_skip: bool = False  # add a linear path from inputs to outputs (wide & deep): contains the linear model


class CNNConfig(_Section):
    name: Literal["cnn"]
    channels: list[Annotated[int, Field(gt=0)]] = Field([32, 64], min_length=1)
    kernel_size: int = Field(3, gt=0)  # odd, so 'same' padding keeps the spatial size
    residual: bool = False  # each stage adds a residual block after its downsampling conv
    batch_norm: bool = True
    pool: Literal["max", "avg", "none"] = "max"  # downsampling between stages
    hidden: list[Annotated[int, Field(gt=0)]] = []  # dense layers after global average pooling
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    init: Init = "kaiming"

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size must be odd (3, 5, 7, ...) so padding keeps the image size, got {v}")
        return v


ModelConfig = Annotated[Union[MLPConfig, CNNConfig], Field(discriminator="name")]

# ------------------------------------------------------------------------------------------- training
_OPTIMIZER_FIELDS = {
    "sgd": {"momentum", "nesterov"},
    "adam": {"betas", "eps"},
    "adamw": {"betas", "eps"},
    "rmsprop": {"momentum", "alpha", "eps"},
    "adagrad": {"eps"},
    "adadelta": {"rho", "eps"},
}


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)  # L2 (decoupled for adamw)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    alpha: float = Field(0.99, gt=0, lt=1)  # rmsprop smoothing
    rho: float = Field(0.9, gt=0, lt=1)  # adadelta decay

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        common = {"name", "lr", "weight_decay"}
        # a key of another optimizer is an error unless it holds the default (as in a resolved config dump)
        foreign = {f for f in self.model_fields_set - common - _OPTIMIZER_FIELDS[self.name]
                   if getattr(self, f) != type(self).model_fields[f].default}
        if foreign:
            raise ValueError(f"{', '.join(sorted(foreign))} does not apply to {self.name}; "
                             f"{self.name} takes {', '.join(sorted(common | _OPTIMIZER_FIELDS[self.name]))}")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov needs momentum > 0 (for example momentum: 0.9)")
        return self


class SchedulerConfig(_Section):
    name: Literal["none", "step", "cosine", "onecycle", "plateau"] = "none"
    warmup_epochs: float = Field(0.0, ge=0)  # linear warmup from lr/100, stepped every batch
    step_size: int = Field(10, gt=0)  # step: epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)  # step: decay factor
    min_lr: float = Field(0.0, ge=0)  # cosine floor
    max_lr: float | None = Field(None, gt=0)  # onecycle peak (None: 10 x optimizer.lr)
    factor: float = Field(0.5, gt=0, lt=1)  # plateau: decay factor
    patience: int = Field(3, ge=0)  # plateau: epochs without val_loss improvement


CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                          "precision_weighted", "recall_weighted", "f1_weighted", "roc_auc", "log_loss")
REGRESSION_METRICS = ("mae", "rmse", "mse", "r2", "mape")
LOWER_IS_BETTER = {"loss", "log_loss", "mae", "rmse", "mse", "mape"}
# early-stopping monitors: val_loss or val_<metric>; the loop computes these itself, the rest by metric name
FAST_MONITORS = ("val_loss", "val_accuracy", "val_mae", "val_rmse", "val_r2")
MONITORS = ("val_loss", *(f"val_{m}" for m in CLASSIFICATION_METRICS + REGRESSION_METRICS))


def monitor_mode(monitor: str) -> str:
    """'min' or 'max': the direction in which `monitor` improves."""
    return "min" if monitor.removeprefix("val_") in LOWER_IS_BETTER else "max"


class EarlyStoppingConfig(_Section):
    monitor: str = "val_loss"  # val_loss or val_<metric>, e.g. val_accuracy, val_f1_macro, val_roc_auc, val_r2
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v: str) -> str:
        if v not in MONITORS:
            raise ValueError(unknown_name("monitor", v, MONITORS))
        return v


class CheckpointConfig(_Section):
    every_epochs: int = Field(1, ge=1)
    # skip a save if the last one is younger than this; the final epoch and Ctrl-C always save
    min_interval_s: float = Field(1.0, ge=0)


class TrainingConfig(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    loss: Literal["auto", "cross_entropy", "mse", "huber", "l1"] = "auto"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    l1: float = Field(0.0, ge=0)  # L1 penalty on weights (not biases or norms)
    clip_grad_norm: float | None = Field(None, gt=0)
    clip_grad_value: float | None = Field(None, gt=0)
    accumulate_steps: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    restore_best: bool = True  # evaluate with the weights of the best val epoch
    checkpoint: CheckpointConfig = CheckpointConfig()
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    num_threads: int | None = Field(None, ge=1)
    tensorboard: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got '{v}'")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.scheduler.name == "cosine" and self.scheduler.min_lr >= self.optimizer.lr:
            raise ValueError(f"scheduler.min_lr ({self.scheduler.min_lr:g}) must be below optimizer.lr "
                             f"({self.optimizer.lr:g}), or the learning rate would rise")
        if self.clip_grad_norm and self.clip_grad_value:
            raise ValueError("set clip_grad_norm or clip_grad_value, not both")
        return self


# ----------------------------------------------------------------------------------- evaluation/output
class EvaluationConfig(_Section):
    # headline metrics, first = primary; empty: accuracy, f1_macro, roc_auc / r2, rmse, mae
    metrics: list[str] = []
    top_k: list[Annotated[int, Field(ge=2)]] = [3]  # adds top_<k>_accuracy when there are > k classes
    confused_examples: int = Field(10, ge=0)
    plots: bool = True

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        known = CLASSIFICATION_METRICS + REGRESSION_METRICS
        for name in v:
            if name not in known and not re.fullmatch(r"top_[2-9]\d*_accuracy|top_1\d+_accuracy", name):
                raise ValueError(unknown_name("metric", name, known + ("top_<k>_accuracy",)))
        return v

    @model_validator(mode="after")
    def _top_k_from_metrics(self) -> EvaluationConfig:
        for name in self.metrics:  # naming top_5_accuracy is enough to have it computed
            match = re.fullmatch(r"top_(\d+)_accuracy", name)
            if match and int(match.group(1)) not in self.top_k:
                self.top_k = sorted({*self.top_k, int(match.group(1))})
        return self


class OutputConfig(_Section):
    dir: str = "runs"  # runs are created as <dir>/<name>-<timestamp>/


class TrackingConfig(_Section):
    """MLflow tracking and model registry. The embedded default needs no setup: sqlite:///foundry.db."""

    enabled: bool = True  # log every `foundry run` (params, per-epoch metrics, artifacts) to MLflow
    register_model: bool = True  # and register its model as a new version of the model named by `name`
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI if set, else sqlite:///foundry.db
    artifacts: str = "mlartifacts"  # artifact folder for experiments this creates (local tracking URIs)
    experiment: str | None = None  # None: the config's name


class Config(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = 42
    data: DataConfig
    model: ModelConfig = MLPConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
    tracking: TrackingConfig = TrackingConfig()


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
    own = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    foreign = [m for m in config.evaluation.metrics if m not in own and not (task == "classification"
                                                                           and m.startswith("top_"))]
    if foreign:
        problems.append(f"evaluation.metrics: {', '.join(foreign)} do not apply to {task}; choose from "
                        f"{', '.join(own)}")
    if problems:
        raise ConfigError(f"The data makes this a {task} task, but the config says:\n" +
                          "\n".join(f"  - {p}" for p in problems),
                          "Fix those keys, or set data.task if the task was inferred wrongly.")


# ---------------------------------------------------------------------------------------- loading
def load_config(source: str | Path | dict[str, Any]) -> Config:
    """Load and validate a config from a YAML path or a dict; raise ConfigError listing every problem."""
    if isinstance(source, dict):
        return _validate(source, origin="config", lines={})
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.",
                          "Check the path; the examples/ folder has ready configs (examples/digits.yaml).")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text)) if data is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.",
                          "Check indentation and that each 'key: value' has a space after the colon.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, data, model, training, ...), "
                          f"got {type(data).__name__}.", "See docs/config.md for the layout.")
    return _validate(data, origin=str(path), lines=lines)


def dump_config(config: Config) -> str:
    """The fully resolved config (every default filled in) as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def config_hash(config: Config) -> str:
    """A short content hash of the resolved config, stable across key order."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _validate(data: dict[str, Any], origin: str, lines: dict[tuple, int]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err, lines) for err in exc.errors()]
        noun = "problem" if len(problems) == 1 else "problems"
        body = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{origin}: {len(problems)} {noun} in the config:\n{body}",
                          "Every key is documented in docs/config.md; `foundry validate CONFIG` re-checks.") from None


def _describe(err: dict[str, Any], lines: dict[tuple, int]) -> str:
    loc = _display_loc(err["loc"])
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(err["loc"][:-1])
        msg = f"unknown key.{did_you_mean(loc[-1], allowed)}"
        if allowed:
            msg += f" Allowed here: {', '.join(allowed)}."
    elif kind == "union_tag_invalid":
        loc = loc + ("name",)
        msg = unknown_name("model", ctx.get("tag"), re.findall(r"'([^']+)'", ctx.get("expected_tags", "")))
    elif kind == "union_tag_not_found":
        loc = loc + ("name",)
        msg = "required key is missing; choose a model: cnn, mlp."
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        msg = f"got '{value}'.{did_you_mean(value, choices)} Choose one of: {', '.join(choices)}."
    elif kind == "missing":
        msg = "required key is missing."
    else:
        text = err["msg"].removeprefix("Value error, ")
        msg = text[0].lower() + text[1:]
        if kind not in {"value_error", "assertion_error"} and not isinstance(value, dict):
            msg += f"; got {value!r}"
        msg += "." if not msg.endswith(".") else ""
    path = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(loc, lines)
    return f"{path}{f' (line {line})' if line else ''}: {msg}"


def _display_loc(loc: tuple) -> tuple:
    """Drop the discriminator tag pydantic inserts (('model', 'mlp', 'hidden') -> ('model', 'hidden'))."""
    if len(loc) >= 2 and loc[0] == "model" and loc[1] in {"mlp", "cnn"}:
        return (loc[0],) + tuple(loc[2:])
    return tuple(loc)


def _line_of(loc: tuple, lines: dict[tuple, int]) -> int | None:
    for end in range(len(loc), 0, -1):  # the key itself, else its nearest parent
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in a composed YAML document to its 1-based line number."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            out[path] = key.start_mark.line + 1
            out.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            out.update(_key_lines(item, prefix + (i,)))
    return out


def _fields_at(loc: tuple) -> list[str]:
    """The allowed keys of the section at `loc` (pydantic's own loc, discriminator tags included)."""
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part)
            if field is None:
                return []
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (Union, types.UnionType):  # discriminated union: part is the tag
            members = [m for m in typing.get_args(tp) if typing.get_args(m.model_fields["name"].annotation)
                       == (part,)]
            if not members:
                return []
            tp = members[0]
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] around a type."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
