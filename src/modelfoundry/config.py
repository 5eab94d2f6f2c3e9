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
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelfoundry.errors import ConfigError, did_you_mean, unknown_name


class _Section(BaseModel):
    # no .inf / .nan anywhere: no setting means infinity, and they only surface later as NaN losses or overflows
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


SEED_MAX = 2 ** 32 - 1  # numpy and scikit-learn take seeds in [0, 2**32 - 1]

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
    seed: int | None = Field(None, ge=0, le=SEED_MAX)  # None: the top-level seed

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

    @field_validator("class_weights")
    @classmethod
    def _weights(cls, v: Any) -> Any:
        bad = {k: w for k, w in v.items() if not 0 <= w <= 1e6} if isinstance(v, dict) else {}
        if bad:
            shown = ", ".join(f"{k}: {w:g}" for k, w in bad.items())
            raise ValueError(f"class weights must be between 0 and 1e6, got {shown}")
        return v


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
    num_threads: int | None = Field(None, ge=1, le=4096)
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
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI if set, else the nearest foundry.db here or in a parent
    artifacts: str = "mlartifacts"  # artifact folder for experiments this creates (relative: beside a SQLite store)
    experiment: str | None = None  # None: the config's name


# ---------------------------------------------------------------------------------------------- serve
class ServeConfig(_Section):
    """`foundry serve`: the server's settings for this model; each `foundry serve` flag overrides one key."""

    host: str = "127.0.0.1"  # interface to bind
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)  # server processes
    backend: Literal["onnx", "torch"] = "onnx"  # ONNX Runtime (exported and parity-checked on first use) or PyTorch
    batching: bool = True  # coalesce concurrent requests into one model call
    max_batch_size: int = Field(64, ge=1)  # rows per model call
    max_latency_ms: float = Field(5.0, ge=0)  # how long a batch waits for more requests after its first
    max_queue_size: int = Field(1024, ge=1)  # waiting requests before 503
    queue_timeout_ms: float = Field(1000.0, gt=0)  # a request waiting longer in the queue gets 503
    max_records: int = Field(10_000, ge=1)  # rows per request
    max_body_mb: float = Field(4.0, gt=0)  # larger request bodies get 413
    poll_s: float = Field(2.0, ge=0)  # how often a registry alias is checked for a move (hot switch); 0: never
    api_keys_file: str | None = None  # NAME:SHA256 lines from `foundry keys create`; None: no authentication
    rate_limit_per_s: float | None = Field(None, gt=0)  # per API key (per client address without keys)
    rate_burst: int = Field(20, ge=1)  # requests allowed at once above the rate
    on_unseen: Literal["warn", "reject"] = "warn"  # a category the model never saw: predict and warn, or 422
    openapi: bool = False  # serve /openapi.json (behind the API key when keys are set); no HTML docs page
    access_log: bool = False  # log every request (costs ~5% of throughput)


# ----------------------------------------------------------------------------------------------- tune
class ParamSpace(_Section):
    """One dimension of a search space: a float or int range, or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)  # float/int: only multiples of step above low
    log: bool = False  # float/int: sample on a log scale (low must be > 0)
    choices: list[Any] | None = None  # categorical: two or more values (numbers, text, lists, ...)

    @model_validator(mode="after")
    def _check(self) -> ParamSpace:
        if self.type == "categorical":
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
            if extra:
                raise ValueError(f"a categorical takes only choices, not {', '.join(extra)}")
            distinct = {json.dumps(c, sort_keys=True) for c in self.choices or []}
            if len(distinct) < 2:
                raise ValueError(f"a categorical needs at least two different choices, got {self.choices or []}; "
                                 "fix the value in the config instead of tuning it")
            return self
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError(f"a{'n' if self.type == 'int' else ''} {self.type} range takes low and high "
                             "(and optionally step or log), not choices")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.low == self.high:
            raise ValueError(f"the range is empty (low = high = {self.low:g}); fix the value instead of tuning it")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low = {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("set step or log: true, not both")
        if self.type == "int":
            bad = [f"{k} = {v:g}" for k, v in (("low", self.low), ("high", self.high), ("step", self.step))
                   if v is not None and not float(v).is_integer()]
            if bad:
                raise ValueError(f"an int range needs whole numbers, got {', '.join(bad)}")
        if self.step is not None and self.step > self.high - self.low:
            raise ValueError(f"step ({self.step:g}) is wider than the range {self.low:g}..{self.high:g}")
        return self

    def extremes(self) -> list[Any]:
        """The values that bound this dimension: low and high, or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class SamplerConfig(_Section):
    name: Literal["tpe", "random", "grid", "gp", "cmaes"] = "tpe"
    seed: int | None = Field(None, ge=0, le=SEED_MAX)  # None: the top-level seed
    n_startup_trials: int = Field(10, ge=0)  # tpe, gp, cmaes: random trials before the model guides the search
    multivariate: bool = True  # tpe: model the parameters jointly

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:  # `sampler: tpe` means `sampler: {name: tpe}`
        return {"name": v} if isinstance(v, str) else v


class PrunerConfig(_Section):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0)  # median: trials that run to the end before any is pruned
    n_warmup_steps: int = Field(3, ge=0)  # median: epochs a trial always runs
    interval_epochs: int = Field(1, ge=1)  # median, hyperband: epochs between pruning checks
    min_resource: int = Field(1, ge=1)  # hyperband: fewest epochs of a trial
    reduction_factor: int = Field(3, ge=2)  # hyperband: how aggressively brackets shrink

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


# ------------------------------------------------------------------------------------------- compress
COMPRESSORS = ("ort_fp16", "ort_int8_dynamic", "ort_int8_static", "torch_bf16", "torch_int8_eager", "pt2e_int8",
               "prune_structured", "prune_unstructured", "distill")


class DistillConfig(_Section):
    student: ModelConfig | None = None  # None: the teacher's architecture with widths x shrink
    shrink: float = Field(0.5, gt=0, lt=1)  # width / channel factor of a derived student
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)  # weight of the soft (teacher) loss; 1 - alpha on the labels
    epochs: int | None = Field(None, ge=1)  # None: the teacher's training.epochs


# metrics a compression guard can watch: the task's own, plus two calibration measures of class probabilities
CALIBRATION_METRICS = ("ece", "brier")  # expected calibration error (15 bins, top class), Brier score
GUARD_METRICS = CLASSIFICATION_METRICS + CALIBRATION_METRICS + REGRESSION_METRICS


class GuardRule(_Section):
    """One guarded metric: a variant may be worse than the original by at most
    `max_worse + max_worse_rel * |original|`, in the metric's units (worse: lower for accuracy-like metrics,
    higher for errors, log_loss and calibration error)."""

    max_worse: float = Field(0.0, ge=0)  # absolute, in the metric's units
    max_worse_rel: float = Field(0.0, ge=0)  # a fraction of the original's value (0.1 = 10% worse)


# the guards besides the primary metric (which compress.max_drop guards) when compress.guard is not set
DEFAULT_GUARDS = {
    "classification": {"log_loss": GuardRule(max_worse=0.02, max_worse_rel=0.2), "ece": GuardRule(max_worse=0.03)},
    "regression": {"rmse": GuardRule(max_worse_rel=0.05), "mae": GuardRule(max_worse_rel=0.05)},
}


class CompressConfig(_Section):
    """`foundry compress`: which variants to try and the accuracy guard that decides between them."""

    max_drop: float = Field(0.01, ge=0)  # largest allowed drop of the metric on the validation split
    metric: str | None = None  # None: the first of evaluation.metrics, else accuracy / r2
    guard: dict[str, GuardRule] | None = None  # more guarded metrics; None: DEFAULT_GUARDS of the task, {}: none
    prefer: Literal["latency", "size"] = "latency"  # among variants within the guard
    variants: list[str] = list(COMPRESSORS)  # which compressors to try (all by default)
    keep: list[Annotated[float, Field(gt=0, lt=1)]] = [0.5, 0.25]  # prune_structured: fraction of neurons kept
    sparsity: list[Annotated[float, Field(gt=0, lt=1)]] = [0.5, 0.8]  # prune_unstructured: fraction of zeros
    finetune_epochs: int = Field(10, ge=0)  # after pruning
    distill: DistillConfig = DistillConfig()
    repeats: int = Field(50, ge=5)  # latency: timed calls per batch size (the median is kept)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in COMPRESSORS:
                raise ValueError(unknown_name("compressor", name, COMPRESSORS))
        if not v:
            raise ValueError("list at least one compressor")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and v not in CLASSIFICATION_METRICS + REGRESSION_METRICS:
            raise ValueError(unknown_name("metric", v, CLASSIFICATION_METRICS + REGRESSION_METRICS))
        return v

    @field_validator("guard")
    @classmethod
    def _guard(cls, v: dict[str, GuardRule] | None) -> dict[str, GuardRule] | None:
        for name in v or {}:
            if name not in GUARD_METRICS:
                raise ValueError(unknown_name("guarded metric", name, GUARD_METRICS))
        return v


# top-level keys and sections a search may not change, and why
FROZEN_PATHS = {
    "name": "it names the study and the model",
    "seed": "it reshuffles the data split, so trials would be scored on different validation rows",
    "data.source": "every trial must see the same data", "data.target": "every trial must see the same data",
    "data.task": "every trial must solve the same task",
    "data.split": "trials would be scored on different validation rows",
    "evaluation": "it does not change training (tune.metric chooses what is optimised)",
    "output": "it does not change training", "tracking": "it does not change training",
    "compress": "it does not change training", "serve": "it does not change training",
    "tune": "a search cannot tune itself",
}


class TuneConfig(_Section):
    """A hyperparameter search (`foundry tune`): a space over config fields by dotted path, run on Optuna."""

    space: dict[str, ParamSpace] = Field(min_length=1)  # dotted config path -> range or choices
    metric: str | None = None  # val_loss or val_<metric>; None: training.early_stopping.monitor (else val_loss)
    direction: Literal["auto", "maximize", "minimize"] = "auto"  # auto: from the metric
    n_trials: int | None = Field(20, ge=1)  # trials in the whole study, across resumes and workers
    timeout_s: float | None = Field(None, gt=0, validation_alias=AliasChoices("timeout_s", "timeout"))
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    study_name: str | None = None  # None: the config's name
    storage: str | None = None  # Optuna storage URL (e.g. postgresql://...); None: SQLite in the output directory
    n_jobs: int = Field(1, ge=1)  # worker processes on this machine
    start_from_config: bool = True  # trial 0 is the config as written (when its values lie in the space)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        if v is not None and v not in MONITORS:
            raise ValueError(unknown_name("metric", v, MONITORS))
        return v

    @model_validator(mode="after")
    def _grid(self) -> TuneConfig:
        if self.sampler.name == "grid":
            loose = [p for p, s in self.space.items() if s.type == "float" and s.step is None]
            if loose:
                raise ValueError(f"the grid sampler needs a finite grid: give {', '.join(loose)} a step "
                                 "(or make it a categorical), or use sampler: tpe / random")
        return self

    def objective(self, training: TrainingConfig) -> tuple[str, str]:
        """(metric, 'maximize' | 'minimize'): what the study optimises."""
        metric = self.metric or (training.early_stopping.monitor if training.early_stopping else "val_loss")
        if self.direction != "auto":
            return metric, self.direction
        return metric, "minimize" if monitor_mode(metric) == "min" else "maximize"


class Config(_Section):
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

    def with_params(self, params: dict[str, Any]) -> Config:
        """This config with dotted-path values set (`{"training.optimizer.lr": 0.01}`), validated again."""
        data = self.model_dump(mode="json", exclude={"tune"})
        for path, value in params.items():
            set_path(data, path, value)
        return Config.model_validate(data)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set `value` at a dotted path in a nested dict (list items by index: `model.hidden.0`)."""
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            if node.get(part) is None:  # an unset optional section (early_stopping: null) gets its defaults
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _space_problems(config: Config, path: str, space: ParamSpace) -> list[str]:
    """What is wrong with tuning `path` over `space` on top of `config` (empty when nothing): a frozen or
    unknown path, or a bound (low, high, a choice) that does not give a valid config."""
    parts = path.split(".")
    for n in range(1, len(parts) + 1):
        reason = FROZEN_PATHS.get(".".join(parts[:n]))
        if reason:
            return [f"cannot be tuned: {reason}."]
    where = _path_problem(config, parts)
    if where:
        return [where]
    annotation = _unwrap(_annotation_at(config, parts))
    if space.type == "float" and annotation is int:
        return ["this key takes whole numbers; use type: int."]
    problems = []
    for value in space.extremes():  # every bound must give a valid config, so no trial fails on it
        try:
            config.with_params({path: value})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in _display_loc(first["loc"]))
            problems.append(f"{json.dumps(value)} is not a valid value here ({field}: "
                            f"{first['msg'].removeprefix('Value error, ')}); narrow the range or change the base config.")
    return problems


def _path_problem(config: Config, parts: list[str]) -> str | None:
    """Why `parts` names no field of `config`, or None."""
    node: Any = config
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the top level"
        if isinstance(node, BaseModel):
            fields = list(type(node).model_fields)
            if part not in fields:
                return f"not a config key: {here} has no '{part}'.{did_you_mean(part, fields)} It has: {', '.join(fields)}."
            node = getattr(node, part)
            if node is None:  # an unset optional section: check the rest against its defaults
                node = _default_instance(config, parts[:i + 1])
        elif isinstance(node, dict):
            if part not in node:
                return (f"not a config key: {here} has no '{part}' (it holds "
                        f"{', '.join(map(str, node)) or 'nothing'}).")
            node = node[part]
        elif isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                return (f"not a config key: {here} is a list of {len(node)}; use an index below {len(node)}, or "
                        "tune the whole list as a categorical of lists.")
            node = node[int(part)]
        else:
            return f"not a config key: {here} is a value, not a section."
    if isinstance(node, BaseModel):
        return f"this is a whole section; tune one of its keys ({', '.join(type(node).model_fields)})."
    return None


def _default_instance(config: Config, parts: list[str]) -> Any:
    """An instance with defaults of the (unset, optional) section at `parts`."""
    annotation = _unwrap(_annotation_at(config, parts))
    return annotation() if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _annotation_at(config: Config, parts: list[str]) -> Any:
    node: Any = config
    annotation: Any = None
    for part in parts:
        if isinstance(node, BaseModel):
            annotation = type(node).model_fields[part].annotation
            node = getattr(node, part)
        elif isinstance(node, dict):
            annotation, node = None, node.get(part)
        elif isinstance(node, (list, tuple)):
            args = typing.get_args(_unwrap(annotation)) if annotation is not None else ()
            annotation, node = (args[0] if args else None), node[int(part)]
        if node is None and annotation is not None:
            inner = _unwrap(annotation)
            node = inner() if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return annotation


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


# ---------------------------------------------------------------------------------------- loading
def load_config(source: str | Path | dict[str, Any]) -> Config:
    """Load and validate a config from a YAML path or a dict; raise ConfigError listing every problem."""
    if isinstance(source, dict):
        return _validate(source, origin="config", lines={})
    path = Path(source)
    if not path.is_file():
        what = "is a directory, not a YAML file" if path.is_dir() else \
            "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"Config file '{path}' {what}.",
                          "Check the path; the examples/ folder has ready configs (examples/digits.yaml).")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at line {line} cannot "
                          "be decoded.", "Save the config as UTF-8 (most editors have an encoding option).") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_VALUES:
            raise ConfigError(f"{path} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases that "
                              "repeat aliases), far more than any config holds.",
                              "Write the values out, or use anchors (&name / *name) only for a few sections.")
        lines = _key_lines(node) if node is not None else {}
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.",
                          "Check indentation and that each 'key: value' has a space after the colon.") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to read (more than a few hundred levels).",
                          "A config is a few levels deep (section: key: value); check for runaway brackets "
                          "or indentation.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (name, data, model, training, ...), "
                          f"got {type(data).__name__}.", "See docs/config.md for the layout.")
    return _validate(data, origin=str(path), lines=lines)


def dump_config(config: Config) -> str:
    """The fully resolved config (every default filled in) as YAML; no `tune: null` when there is no search."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude={"tune"} if config.tune is None else None),
                          sort_keys=False, allow_unicode=True)


def config_hash(config: Config) -> str:
    """A short content hash of the resolved config, stable across key order. The `tune:`, `compress:` and
    `serve:` sections are left out: they do not change what a run trains."""
    canonical = json.dumps(config.model_dump(mode="json", exclude={"tune", "compress", "serve"}), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _validate(data: dict[str, Any], origin: str, lines: dict[tuple, int]) -> Config:
    try:
        config = Config.model_validate(data)
        problems = _tune_problems(config, config.tune.space if config.tune else {}, lines)
    except ValidationError as exc:
        config = None
        problems = [_describe(err, lines) for err in exc.errors()]
        problems += _partial_tune_problems(data, lines)
    if not problems:
        return config
    noun = "problem" if len(problems) == 1 else "problems"
    body = "\n".join(f"  - {p}" for p in problems)
    raise ConfigError(f"{origin}: {len(problems)} {noun} in the config:\n{body}",
                      "Every key is documented in docs/config.md; `foundry validate CONFIG` re-checks.")


def _tune_problems(config: Config, spaces: dict[str, ParamSpace], lines: dict[tuple, int]) -> list[str]:
    """Path problems of each dimension (unknown, frozen, overlapping, invalid bounds), with YAML lines."""
    problems = []
    for path, space in spaces.items():
        line = _line_of(("tune", "space", path), lines)
        overlap = [p for p in spaces if p != path and path.startswith(p + ".")]
        found = [f"overlaps {overlap[0]}, which is tuned too; keep one of the two."] if overlap else \
            _space_problems(config, path, space)
        problems += [f"tune.space.{path}{f' (line {line})' if line else ''}: {p}" for p in found]
    return problems


def _partial_tune_problems(data: dict[str, Any], lines: dict[tuple, int]) -> list[str]:
    """When the config has other errors, still check the paths of the well-formed dimensions against the
    rest of the config, so one run of `foundry validate` lists everything."""
    tune = data.get("tune")
    space = tune.get("space") if isinstance(tune, dict) else None
    if not isinstance(space, dict):
        return []
    try:
        config = Config.model_validate({k: v for k, v in data.items() if k != "tune"})
    except ValidationError:
        return []
    valid = {}
    for path, raw in space.items():
        try:
            valid[path] = ParamSpace.model_validate(raw)
        except ValidationError:
            continue
    return _tune_problems(config, valid, lines)


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


MAX_CONFIG_VALUES = 1_000_000  # a config holds hundreds; aliases of aliases can expand to billions


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes a composed document holds once every alias is expanded (each shared node counted
    once per use, computed once per node)."""
    if id(node) not in sizes:
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in a composed YAML document to its 1-based line number.

    A key given twice in one mapping is an error naming both lines: YAML loaders keep the last silently.
    """
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):  # a list or mapping as a key: the loader reports it
                continue
            path = prefix + (key.value,)
            line = key.start_mark.line + 1
            if (key.tag, key.value) in seen and key.tag != "tag:yaml.org,2002:merge":
                dotted = ".".join(str(p) for p in path)
                raise ConfigError(f"'{dotted}' is given twice, at lines {seen[key.tag, key.value]} and {line}; "
                                  "YAML would silently keep only the second.",
                                  "Delete one of the two (or merge them into one section).")
            seen[key.tag, key.value] = line
            out[path] = line
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
