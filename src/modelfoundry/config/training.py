"""The `training:` section: epochs, batch size, optimizer, schedule, loss, early stopping, checkpoints, device."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from modelfoundry.config.base import Section
from modelfoundry.config.evaluation import MONITORS
from modelfoundry.errors import unknown_name

_OPTIMIZER_FIELDS = {
    "sgd": {"momentum", "nesterov"},
    "adam": {"betas", "eps"},
    "adamw": {"betas", "eps"},
    "rmsprop": {"momentum", "alpha", "eps"},
    "adagrad": {"eps"},
    "adadelta": {"rho", "eps"},
}


class OptimizerConfig(Section):
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


class SchedulerConfig(Section):
    name: Literal["none", "step", "cosine", "onecycle", "plateau"] = "none"
    warmup_epochs: float = Field(0.0, ge=0)  # linear warmup from lr/100, stepped every batch
    step_size: int = Field(10, gt=0)  # step: epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)  # step: decay factor
    min_lr: float = Field(0.0, ge=0)  # cosine floor
    max_lr: float | None = Field(None, gt=0)  # onecycle peak (None: 10 x optimizer.lr)
    factor: float = Field(0.5, gt=0, lt=1)  # plateau: decay factor
    patience: int = Field(3, ge=0)  # plateau: epochs without val_loss improvement


class EarlyStoppingConfig(Section):
    monitor: str = "val_loss"  # val_loss or val_<metric>, e.g. val_accuracy, val_f1_macro, val_roc_auc, val_r2
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v: str) -> str:
        if v not in MONITORS:
            raise ValueError(unknown_name("monitor", v, MONITORS))
        return v


class CheckpointConfig(Section):
    every_epochs: int = Field(1, ge=1)
    # skip a save if the last one is younger than this; the final epoch and Ctrl-C always save
    min_interval_s: float = Field(1.0, ge=0)
    # also save within an epoch every this many optimizer steps (long epochs, e.g. a language model), and stop at the
    # next step on Ctrl-C instead of the epoch's end; resuming continues from that step exactly. None: epochs only
    every_steps: int | None = Field(None, ge=1)


class AverageConfig(Section):
    """Weight averaging within a run: the averaged weights are what is evaluated and saved."""

    method: Literal["none", "swa", "ema"] = "none"
    # averaging begins at epoch ceil(start x epochs) (at least 1): swa averages the weights at the end of that
    # epoch and every later one; ema updates its average after every optimizer step from that epoch on
    start: float = Field(0.75, ge=0, le=1)
    ema_decay: float = Field(0.999, gt=0, lt=1)  # ema: average = decay x average + (1 - decay) x weights
    # keep the weights of the last K epochs as checkpoints/snapshot-<epoch>.pt, for snapshot ensembling:
    # `foundry ensemble RUN_DIR --snapshots K` averages their predictions (independent of `method`)
    snapshots: int = Field(0, ge=0, le=100)


class TrainingConfig(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    loss: Literal["auto", "cross_entropy", "focal", "mse", "huber", "l1"] = "auto"
    focal_gamma: float = Field(2.0, ge=0, le=10)  # focal loss: (1 - p)^gamma down-weights easy rows; 0 is cross-entropy
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    l1: float = Field(0.0, ge=0)  # L1 penalty on weights (not biases or norms)
    clip_grad_norm: float | None = Field(None, gt=0)
    clip_grad_value: float | None = Field(None, gt=0)
    accumulate_steps: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    restore_best: bool = True  # evaluate with the weights of the best val epoch
    average: AverageConfig = AverageConfig()  # swa / ema: the averaged weights replace the best epoch's
    checkpoint: CheckpointConfig = CheckpointConfig()
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True
    num_threads: int | None = Field(None, ge=1, le=4096)
    tensorboard: bool = False
    # preload: every split on the device once, batches are index slices (fastest when it fits); stream: a
    # DataLoader brings each batch from host memory or memory-mapped files; auto: stream only when the data is
    # on disk (memory-mapped) or would take more than half of the accelerator's free memory
    data_loading: Literal["auto", "preload", "stream"] = "auto"
    loader_workers: int = Field(0, ge=0, le=64)  # DataLoader worker processes when streaming (0: in the loop)

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
