"""The `compress:` section (`foundry compress`): which variants to try and the guard that decides between them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from modelfoundry.compress.variants import COMPRESSORS  # the variant table (light: no heavy imports)
from modelfoundry.config.base import Section
from modelfoundry.config.model import ModelConfig
from modelfoundry.errors import unknown_name
from modelfoundry.evaluate.metrics import CALIBRATION_METRICS, CLASSIFICATION_METRICS, REGRESSION_METRICS


class DistillConfig(Section):
    student: ModelConfig | None = None  # None: the teacher's architecture with widths x shrink
    shrink: float = Field(0.5, gt=0, lt=1)  # width / channel factor of a derived student
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)  # weight of the soft (teacher) loss; 1 - alpha on the labels
    epochs: int | None = Field(None, ge=1)  # None: the teacher's training.epochs


# metrics a compression guard can watch: the task's own, plus calibration measures of class probabilities
GUARD_METRICS = CLASSIFICATION_METRICS + CALIBRATION_METRICS + REGRESSION_METRICS


class GuardRule(Section):
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


class CompressConfig(Section):
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

