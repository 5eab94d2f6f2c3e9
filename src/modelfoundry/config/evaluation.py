"""The `evaluation:` section, and the metric names config accepts (from the metric table, evaluate/metrics.py)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from modelfoundry.config.base import Section
from modelfoundry.errors import unknown_name
from modelfoundry.evaluate.metrics import CLASSIFICATION_METRICS, METRICS, REGRESSION_METRICS

LOWER_IS_BETTER = {"loss", "perplexity",
                   *(n for n, m in METRICS.items() if m.lower_is_better and not m.calibration)}
# early-stopping monitors: val_loss or val_<metric>; the loop computes these itself, the rest by metric name
# (a causal language model's loop computes val_perplexity and val_token_accuracy)
LM_MONITORS = ("val_loss", "val_perplexity", "val_token_accuracy")
FAST_MONITORS = ("val_loss", "val_accuracy", "val_mae", "val_rmse", "val_r2", *LM_MONITORS[1:])
MONITORS = ("val_loss", *(f"val_{m}" for m in CLASSIFICATION_METRICS + REGRESSION_METRICS), *LM_MONITORS[1:])


def monitor_mode(monitor: str) -> str:
    """'min' or 'max': the direction in which `monitor` improves."""
    return "min" if monitor.removeprefix("val_") in LOWER_IS_BETTER else "max"


class GenerationEvalConfig(Section):
    """How a causal language model is evaluated by generating: answers to held-out prompts scored against their
    completions (exact match, token F1, ROUGE-L; accuracy when completions are labels), beside the base model's."""

    rows: int = Field(200, ge=0)  # held-out (test) examples generated for; 0: loss and perplexity only
    max_new_tokens: int = Field(64, ge=1, le=4096)
    batch_size: int = Field(16, ge=1)
    baseline: bool = True  # also score the base model (no fine-tuning) on the same rows
    samples: int = Field(10, ge=0)  # generations shown in report.md


class ThresholdConfig(Section):
    """A binary classifier's decision threshold, tuned on the validation split and saved with the model: evaluate,
    predict and serve then call a row positive when P(positive) >= the threshold (instead of 0.5)."""

    # f1: the best F1 of the positive class; balanced_accuracy: the best mean of the two recalls;
    # recall_at_precision: the highest recall with precision >= min_value; precision_at_recall: the reverse
    metric: Literal["none", "f1", "balanced_accuracy", "recall_at_precision", "precision_at_recall"] = "none"
    min_value: float = Field(0.9, gt=0, le=1)  # the precision (or recall) floor of the *_at_* metrics
    positive: str | int | float | bool | None = None  # the positive class's label; None: the less frequent class


class EvaluationConfig(Section):
    # headline metrics, first = primary; empty: accuracy, f1_macro, roc_auc / r2, rmse, mae
    metrics: list[str] = []
    top_k: list[Annotated[int, Field(ge=2)]] = [3]  # adds top_<k>_accuracy when there are > k classes
    confused_examples: int = Field(10, ge=0)
    plots: bool = True
    generation: GenerationEvalConfig = GenerationEvalConfig()  # causal language models only
    threshold: ThresholdConfig = ThresholdConfig()  # binary classification only

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
