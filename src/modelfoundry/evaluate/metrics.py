"""Classification and regression metrics on a split, as a flat {name: float} dict."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEFAULT_HEADLINE = {"classification": ["accuracy", "f1_macro", "roc_auc"], "regression": ["r2", "rmse", "mae"]}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, top_k: list[int]) -> dict[str, float]:
    """`y_true`: class indices (N,); `proba`: class probabilities (N, K)."""
    from sklearn import metrics as skm

    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(1, keepdims=True)  # float32 softmax rows can miss 1 by more than sklearn allows
    n_classes = proba.shape[1]
    labels = list(range(n_classes))
    pred = proba.argmax(1)
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


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Both in the target's own units."""
    from sklearn import metrics as skm

    mse = skm.mean_squared_error(y_true, y_pred)
    out = {"mae": skm.mean_absolute_error(y_true, y_pred), "mse": mse, "rmse": math.sqrt(mse),
           "r2": skm.r2_score(y_true, y_pred)}
    if np.all(np.abs(y_true) > 1e-12):
        out["mape"] = skm.mean_absolute_percentage_error(y_true, y_pred)
    return {k: float(v) for k, v in out.items()}


def confusion(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, pred, labels=list(range(n_classes)))


def headline(task: str, requested: list[str], available: dict[str, Any]) -> list[str]:
    """The metrics to show first: the config's list, else the task's defaults; only those computed."""
    names = requested or DEFAULT_HEADLINE[task]
    return [n for n in names if n in available]


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        return roc_auc_score(y_true, proba[:, 1])
    if len(present) < proba.shape[1]:  # one-vs-rest over the classes present in this split
        cols = proba[:, present] / proba[:, present].sum(1, keepdims=True)
        remap = {c: i for i, c in enumerate(present)}
        return roc_auc_score([remap[v] for v in y_true], cols, multi_class="ovr", average="macro")
    return roc_auc_score(y_true, proba, multi_class="ovr", average="macro")
