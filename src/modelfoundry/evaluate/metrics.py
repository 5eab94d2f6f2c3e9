"""Classification and regression metrics on a split, as a flat {name: float} dict, and the metric table.

The table (`METRICS`) is where metric names live: config validates `evaluation.metrics`, early-stopping
monitors, `tune.metric` and the compression guard against it. numpy and scikit-learn are imported inside the
functions, so reading the table costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Metric:
    """What config needs to know about a metric: its task and which way is better."""

    task: Literal["classification", "regression"]
    lower_is_better: bool = False
    calibration: bool = False  # a calibration measure of class probabilities, computed by the compression guard


# name -> Metric, in the order error messages list them
METRICS: dict[str, Metric] = {
    "accuracy": Metric("classification"),
    "balanced_accuracy": Metric("classification"),
    "precision_macro": Metric("classification"),
    "recall_macro": Metric("classification"),
    "f1_macro": Metric("classification"),
    "precision_weighted": Metric("classification"),
    "recall_weighted": Metric("classification"),
    "f1_weighted": Metric("classification"),
    "roc_auc": Metric("classification"),
    "log_loss": Metric("classification", lower_is_better=True),
    "ece": Metric("classification", lower_is_better=True, calibration=True),  # expected calibration error (15 bins, top class)
    "brier": Metric("classification", lower_is_better=True, calibration=True),  # Brier score
    "mae": Metric("regression", lower_is_better=True),
    "rmse": Metric("regression", lower_is_better=True),
    "mse": Metric("regression", lower_is_better=True),
    "r2": Metric("regression"),
    "mape": Metric("regression", lower_is_better=True),
    "smape": Metric("regression", lower_is_better=True),  # symmetric MAPE, 0..2: mean 2|y - p| / (|y| + |p|)
}
CLASSIFICATION_METRICS = tuple(n for n, m in METRICS.items() if m.task == "classification" and not m.calibration)
REGRESSION_METRICS = tuple(n for n, m in METRICS.items() if m.task == "regression")
CALIBRATION_METRICS = tuple(n for n, m in METRICS.items() if m.calibration)

DEFAULT_HEADLINE = {"classification": ["accuracy", "f1_macro", "roc_auc"], "regression": ["r2", "rmse", "mae"]}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, top_k: list[int],
                           pred: np.ndarray | None = None) -> dict[str, float]:
    """`y_true`: class indices (N,); `proba`: class probabilities (N, K); `pred`: the predicted classes when not
    the most probable ones (a tuned decision threshold's, evaluate/threshold.py)."""
    import numpy as np
    from sklearn import metrics as skm

    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(1, keepdims=True)  # float32 softmax rows can miss 1 by more than sklearn allows
    n_classes = proba.shape[1]
    labels = list(range(n_classes))
    pred = proba.argmax(1) if pred is None else pred
    out: dict[str, float] = {
        "accuracy": skm.accuracy_score(y_true, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, pred),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, pred, labels=labels, average=avg, zero_division=0)
        out.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    out["roc_auc"] = _roc_auc(y_true, proba)
    out["log_loss"] = skm.log_loss(y_true, proba, labels=labels)
    for k in top_k:
        if n_classes > k:
            out[f"top_{k}_accuracy"] = skm.top_k_accuracy_score(y_true, proba, k=k, labels=labels)
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(v)}


def task_metrics(task: str, y_true: np.ndarray, output: np.ndarray, decode: Callable[[np.ndarray], np.ndarray],
                 top_k: list[int]) -> dict[str, float]:
    """Metrics of a model's outputs on labelled rows: classification from (N, K) probabilities and class indices,
    regression in the target's own units (`decode` turns standardised values back), as `foundry run` reports."""
    if task == "classification":
        return classification_metrics(y_true, output, top_k)
    return regression_metrics(decode(y_true), decode(output))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Both in the target's own units, (N,) or (N, H) for H forecast steps (then averaged over the steps)."""
    import numpy as np
    from sklearn import metrics as skm

    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)

    mse = skm.mean_squared_error(y_true, y_pred)
    out = {"mae": skm.mean_absolute_error(y_true, y_pred), "mse": mse, "rmse": math.sqrt(mse),
           "r2": skm.r2_score(y_true, y_pred)}
    if np.all(np.abs(y_true) > 1e-12):
        out["mape"] = skm.mean_absolute_percentage_error(y_true, y_pred)
    out["smape"] = smape(y_true, y_pred)
    return {k: float(v) for k, v in out.items()}


def smape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Symmetric mean absolute percentage error, 2|y - p| / (|y| + |p|) averaged (0 where both are 0)."""
    import numpy as np

    denom = np.abs(y_true) + np.abs(y_pred)
    ratio = np.divide(2 * np.abs(y_true - y_pred), denom, out=np.zeros_like(denom, dtype=np.float64), where=denom > 0)
    return float(ratio.mean()) if ratio.size else float("nan")


def confusion(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, pred, labels=list(range(n_classes)))


def headline(task: str, requested: list[str], available: dict[str, Any]) -> list[str]:
    """The metrics to show first: the config's list, else the task's defaults; only those computed."""
    names = requested or DEFAULT_HEADLINE[task]
    return [n for n in names if n in available]


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        return roc_auc_score(y_true, proba[:, 1])
    if len(present) < proba.shape[1]:  # one-vs-rest over the classes present in this split
        cols = proba[:, present] / proba[:, present].sum(1, keepdims=True)
        remap = {c: i for i, c in enumerate(present)}
        if len(present) == 2:  # scikit-learn reads an (N, 2) score as binary and wants one column
            return roc_auc_score([remap[v] for v in y_true], cols[:, 1])
        return roc_auc_score([remap[v] for v in y_true], cols, multi_class="ovr", average="macro")
    return roc_auc_score(y_true, proba, multi_class="ovr", average="macro")
