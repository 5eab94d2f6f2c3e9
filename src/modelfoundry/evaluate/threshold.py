"""A binary classifier's decision threshold (evaluation.threshold): tuned on the validation probabilities of the
positive class, saved in model/model.json (`threshold`), and the test report's side-by-side of 0.5 and it.

The tuner is vectorised: the validation rows sorted by P(positive) once, the confusion counts of every candidate
threshold (each distinct probability, and 0.5) read off cumulative sums, every metric computed for all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.errors import ConfigError

if TYPE_CHECKING:
    from modelfoundry.config.evaluation import ThresholdConfig

# the test metrics the report shows at 0.5 and at the threshold (the threshold-free ones, roc_auc and log_loss,
# do not change)
COMPARED = ("precision_positive", "recall_positive", "f1_positive", "accuracy", "balanced_accuracy", "f1_macro",
            "precision_macro", "recall_macro")
DEFAULT = 0.5  # argmax of two probabilities: P(positive) >= 0.5 (a tie goes to the positive class here)


@dataclass(frozen=True)
class TunedThreshold:
    value: float  # call a row positive when P(positive) >= value
    metric: str
    validation: float  # the metric on the validation rows at `value`
    at_default: float  # ... and at 0.5
    reached: bool  # the *_at_* floor (min_value) was met; False: the threshold closest to it was used


def tune_threshold(positive: np.ndarray, proba: np.ndarray, metric: str, min_value: float = 0.9) -> TunedThreshold:
    """The threshold on P(positive) that maximises `metric` on labelled rows.

    Args:
        positive: (N,) bool, True for rows of the positive class.
        proba: (N,) the model's probability of the positive class.
        metric: f1 | balanced_accuracy | recall_at_precision (highest recall with precision >= min_value) |
            precision_at_recall (highest precision with recall >= min_value).
        min_value: the floor of the *_at_* metrics.

    Ties between thresholds scoring the same go to the one closest to 0.5. The candidates are the distinct
    probabilities and 0.5, so the metric at the result is never below the metric at 0.5.
    """
    positive, proba = np.asarray(positive, dtype=bool), np.asarray(proba, dtype=np.float64)
    if metric not in ("f1", "balanced_accuracy", "recall_at_precision", "precision_at_recall"):
        raise ConfigError(f"evaluation.threshold.metric: {metric!r} is not a threshold metric.",
                          "Use f1, balanced_accuracy, recall_at_precision or precision_at_recall.")
    candidates, tp, fp = _counts(positive, proba)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    value = _metric_value(metric, tp, fp, n_pos, n_neg)  # (C,)
    scores, reached = value, True
    if metric.endswith(("_at_precision", "_at_recall")):
        # the floor is on the other one of precision and recall
        other = _metric_value("precision_at_recall" if metric == "recall_at_precision" else "recall_at_precision",
                              tp, fp, n_pos, n_neg)
        feasible = other >= min_value - 1e-12
        reached = bool(feasible.any())
        # nothing meets the floor: the threshold that comes closest to it; else the best above it (ties: the
        # higher other one)
        scores = np.where(feasible, value + 1e-9 * other, -np.inf) if reached else other
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    choice = best[np.argmin(np.abs(candidates[best] - DEFAULT))]
    at_default = int(np.flatnonzero(candidates == DEFAULT)[0])
    return TunedThreshold(float(candidates[choice]), metric, float(value[choice]), float(value[at_default]), reached)


def _counts(positive: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidates, true positives, false positives) of the rule `P >= candidate`, candidates descending."""
    order = np.argsort(-proba, kind="stable")
    p, hits = proba[order], positive[order]  # (N,) descending
    tp_before = np.concatenate([[0], np.cumsum(hits)])  # (N + 1,): positives among the first i rows
    fp_before = np.concatenate([[0], np.cumsum(~hits)])
    candidates = np.unique(np.append(p, DEFAULT))[::-1]  # (C,) descending
    above = np.searchsorted(-p, -candidates, side="right")  # (C,): rows with P >= candidate
    return candidates, tp_before[above].astype(np.float64), fp_before[above].astype(np.float64)


def _metric_value(metric: str, tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> np.ndarray:
    """The reported value of `metric` at each candidate: f1, balanced accuracy, recall or precision."""
    if metric == "f1":
        denom = 2 * tp + fp + (n_pos - tp)
        return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    recall = tp / n_pos if n_pos else np.zeros_like(tp)
    if metric == "balanced_accuracy":  # the mean recall of the classes present (scikit-learn's definition)
        recalls = [r for r, n in ((recall, n_pos), ((n_neg - fp) / max(n_neg, 1), n_neg)) if n]
        return sum(recalls) / len(recalls) if recalls else np.zeros_like(tp)
    if metric == "recall_at_precision":
        return recall
    return np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)


def positive_index(cfg: ThresholdConfig, classes: list[Any], train_counts: np.ndarray, target: str | None) -> int:
    """The positive class's index: evaluation.threshold.positive (matched as text), else the less frequent class
    of the training split (`train_counts`: rows per class before any resampling; the first class on a tie).
    Raises ConfigError unless the target has two classes."""
    check_binary(cfg, classes, target)
    if cfg.positive is not None:
        names = [str(c) for c in classes]
        wanted = str(cfg.positive).lower() if isinstance(cfg.positive, bool) else str(cfg.positive)
        matches = [i for i, n in enumerate(names) if n == wanted or n.lower() == wanted]
        if not matches:
            raise ConfigError(f"evaluation.threshold.positive: {cfg.positive!r} is not a class of target "
                              f"'{target}'; its classes are {names}.", "Use one of those labels, or null for the "
                              "less frequent class.")
        return matches[0]
    return int(np.argmin(np.asarray(train_counts)[:2]))


def check_binary(cfg: ThresholdConfig, classes: list[Any], target: str | None) -> None:
    """A tuned threshold needs exactly two classes; called once the data is known, before training."""
    if cfg.metric != "none" and len(classes) != 2:
        raise ConfigError(f"evaluation.threshold.metric: {cfg.metric} tunes a binary classifier's decision "
                          f"threshold, but target '{target}' has {len(classes)} classes.",
                          "Remove evaluation.threshold (a multiclass model predicts its most probable class), or "
                          "train on a two-class target.")


def threshold_record(cfg: ThresholdConfig, classes: list[Any], train_counts: np.ndarray, val_codes: np.ndarray,
                     val_proba: np.ndarray, target: str | None) -> dict[str, Any]:
    """model.json's `threshold`: the tuned value for the positive class on the validation rows, and how it
    scored there (artifacts/records.py ThresholdRecord reads it)."""
    pos = positive_index(cfg, classes, train_counts, target)
    if len(val_codes) == 0:
        raise ConfigError(f"evaluation.threshold.metric: {cfg.metric} is tuned on the validation split, which is "
                          "empty.", "Set data.split.val above 0 (for example 0.15).")
    tuned = tune_threshold(np.asarray(val_codes) == pos, np.asarray(val_proba)[:, pos], cfg.metric, cfg.min_value)
    label = classes[pos]
    return {"value": tuned.value, "positive": label.item() if isinstance(label, np.generic) else label,
            "positive_index": pos, "metric": cfg.metric, "min_value": cfg.min_value, "validation": tuned.validation,
            "validation_at_0.5": tuned.at_default, "reached": tuned.reached}


def report_lines(threshold: dict[str, Any], at_threshold: dict[str, float], at_default: dict[str, float],
                 split: str) -> list[str]:
    """report.md's section: the decision threshold and the test metrics at 0.5 and at it, side by side."""
    floor = f" (floor {threshold['min_value']:g})" if threshold["metric"].endswith(("_precision", "_recall")) else ""
    lines = ["", f"## Decision threshold ({split})", "",
             f"A row is `{threshold['positive']}` when P({threshold['positive']}) >= **{threshold['value']:.4f}** "
             f"(tuned on the validation split for {threshold['metric']}{floor}: {threshold['validation']:.4f} there, "
             f"{threshold['validation_at_0.5']:.4f} at 0.5).", ""]
    if not threshold.get("reached", True):
        lines += [f"No threshold reached {threshold['metric']}'s floor {threshold['min_value']:g} on validation; "
                  "the one closest to it is used.", ""]
    lines += ["| metric | at 0.5 | at the threshold |", "|---|---|---|"]
    lines += [f"| {k} | {at_default[k]:.4f} | {at_threshold[k]:.4f} |" for k in COMPARED
              if k in at_default and k in at_threshold]
    return lines


def positive_metrics(y_true: np.ndarray, pred: np.ndarray, positive: int) -> dict[str, float]:
    """The positive class's precision, recall and F1 (what a tuned threshold trades)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, pred, labels=[positive], average=None, zero_division=0)
    return {"precision_positive": float(p[0]), "recall_positive": float(r[0]), "f1_positive": float(f[0])}
