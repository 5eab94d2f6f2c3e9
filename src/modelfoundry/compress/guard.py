"""The accuracy guard: every metric that matters for the decision, each with its own tolerance.

A variant passes only if it is no worse than the original beyond every guard's allowance:
`worse_by <= max_worse + max_worse_rel * |original|`, where `worse_by` is the drop of an accuracy-like metric
or the rise of an error (log_loss, rmse, calibration error). The primary metric is guarded by
`compress.max_drop`; the others come from `compress.guard` (default: `DEFAULT_GUARDS` of the task).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from modelfoundry.config import (CALIBRATION_METRICS, CLASSIFICATION_METRICS, DEFAULT_GUARDS, LOWER_IS_BETTER,
                                 REGRESSION_METRICS, GuardRule)
from modelfoundry.errors import ConfigError

ECE_BINS = 15
_EPS = 1e-12  # float slack so a variant equal to the allowance passes


@dataclass(frozen=True)
class Guard:
    """One guarded metric and its tolerance."""

    metric: str
    max_worse: float = 0.0
    max_worse_rel: float = 0.0

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)

    def worse_by(self, value: float, original: float) -> float:
        """How much worse `value` is than `original` (positive = worse), in the metric's units."""
        return value - original if self.lower_is_better else original - value

    def allowed(self, original: float) -> float:
        return self.max_worse + self.max_worse_rel * abs(original)

    def check(self, value: float | None, original: float | None) -> dict[str, Any]:
        """{metric, original, value, worse_by, allowed, passed}; a metric the variant lacks fails, one the
        original lacks too (mape with a zero target) is not judged."""
        if original is None or not np.isfinite(original):
            return {"metric": self.metric, "original": original, "value": value, "worse_by": None, "allowed": None,
                    "passed": True, "note": "not defined on these rows"}
        allowed = self.allowed(original)
        if value is None or not np.isfinite(value):
            return {"metric": self.metric, "original": original, "value": value, "worse_by": None,
                    "allowed": allowed, "passed": False}
        worse = self.worse_by(value, original)
        return {"metric": self.metric, "original": original, "value": value, "worse_by": worse, "allowed": allowed,
                "passed": bool(worse <= allowed + _EPS)}

    def describe(self) -> str:
        """'log_loss: at most 0.01 + 10% worse' (for tables and messages)."""
        parts = [f"{self.max_worse:g}"] if self.max_worse or not self.max_worse_rel else []
        parts += [f"{self.max_worse_rel:.0%}"] if self.max_worse_rel else []
        return f"{self.metric} ≤ {' + '.join(parts)} {'higher' if self.lower_is_better else 'lower'}"


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric in CALIBRATION_METRICS


def guards(task: str, metric: str, max_drop: float, configured: dict[str, GuardRule] | None) -> list[Guard]:
    """The primary metric's guard (max_drop, absolute) first, then the configured (or default) others.

    Raises:
        ConfigError: a guarded metric that does not apply to the task, or the primary metric listed again.
    """
    own = CLASSIFICATION_METRICS + CALIBRATION_METRICS if task == "classification" else REGRESSION_METRICS
    if configured is None:
        rules = {k: v for k, v in DEFAULT_GUARDS[task].items() if k != metric}
    else:
        rules = dict(configured)
        wrong = [k for k in rules if k not in own]
        if wrong:
            raise ConfigError(f"compress.guard: {', '.join(wrong)} does not apply to this {task} model.",
                              f"Guard metrics of a {task} model: {', '.join(own)}.")
        if metric in rules:
            raise ConfigError(f"compress.guard.{metric}: {metric} is the primary metric, which compress.max_drop "
                              f"guards (currently {max_drop:g}).",
                              f"Remove {metric} from compress.guard and set compress.max_drop (or --max-drop).")
    return [Guard(metric, max_worse=max_drop)] + [Guard(k, r.max_worse, r.max_worse_rel) for k, r in rules.items()]


def measure(task: str, y_true: np.ndarray, output: np.ndarray, decode: Callable[[np.ndarray], np.ndarray],
            wanted: list[str]) -> dict[str, float]:
    """The `wanted` metrics of model outputs: class probabilities (N, K), or standardised values (N,)."""
    from modelfoundry.evaluate.metrics import classification_metrics, regression_metrics

    if task == "classification":
        proba = np.asarray(output, dtype=np.float64)
        values = classification_metrics(y_true, proba, [])
        if "ece" in wanted:
            values["ece"] = expected_calibration_error(y_true, proba)
        if "brier" in wanted:
            values["brier"] = brier_score(y_true, proba)
    else:
        values = regression_metrics(decode(y_true), decode(np.asarray(output, dtype=np.float64).reshape(np.shape(y_true))))  # (N,) or (N, H)
    return {k: values.get(k) for k in wanted}


def judge(rules: list[Guard], values: dict[str, float | None], original: dict[str, float]) -> list[dict[str, Any]]:
    """One check per guard (see Guard.check), in the order of `rules` (the primary metric first)."""
    return [rule.check(values.get(rule.metric), original.get(rule.metric)) for rule in rules]


def failure_text(check: dict[str, Any]) -> str:
    """'log_loss 0.1730 vs 0.0130 (+0.1600 worse, allowed 0.0113)'."""
    if check["worse_by"] is None:
        return f"{check['metric']} could not be computed"
    return (f"{check['metric']} {check['value']:.4f} vs {check['original']:.4f} ({check['worse_by']:+.4f} worse, "
            f"allowed {check['allowed']:.4f})")


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the row-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(1, keepdims=True)
    confidence, correct = proba.max(1), (proba.argmax(1) == np.asarray(y_true)).astype(np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # (N,) bin of each row
    total = 0.0
    for b in np.unique(which):
        rows = which == b
        total += rows.sum() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total / max(len(confidence), 1))


def brier_score(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean over rows of the squared distance between the probabilities and the one-hot label (0 to 2)."""
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(1, keepdims=True)
    onehot = np.zeros_like(proba)
    onehot[np.arange(len(proba)), np.asarray(y_true, dtype=int)] = 1.0
    return float(((proba - onehot) ** 2).sum(1).mean())
