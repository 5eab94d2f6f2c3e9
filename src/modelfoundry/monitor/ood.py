"""Per-row out-of-distribution scores: the Mahalanobis distance of a row from the training data.

The distance is taken in the model's standardized input space (each input feature centred and divided by its
training standard deviation), under a probabilistic-PCA covariance (Tipping & Bishop 1999):

    d(x)^2 = sum_k (z . v_k)^2 / lambda_k  +  |z - sum_k (z . v_k) v_k|^2 / sigma^2

where z is the standardized row, v_k / lambda_k the leading principal directions and their variances (kept
until they explain 99% of the variance, at most 64 of them) and sigma^2 the mean variance of every other
direction (floored at 0.1% of the mean feature variance). Why this and not the full sample covariance or
Ledoit-Wolf shrinkage:

- high dimensions: a 64-pixel image, or a one-hot table of hundreds of columns, has directions with (almost)
  no training variance; the full inverse covariance blows them up, and Ledoit-Wolf shrinks every direction
  towards one average variance, which blurs the few directions that carry the data. The PCA model keeps those
  exactly and treats the rest as isotropic noise: a row far off the training data's subspace scores high
  through the residual term, which is what an out-of-distribution row looks like (noise, inverted pixels).
- constant features (digits' corner pixels are always 0): their standard deviation is 0, so they are left in
  raw units (scale 1) and fall in the residual term; a served row where one is not constant scores high,
  nothing divides by zero.
- cost and size: scoring is two small matrix products (the request waits for it when it asks), and the JSON
  holds at most 64 directions.

The threshold is the (1 - false_alarm_rate) quantile of the scores of the validation rows (the training
rows score optimistically low): about that share of fresh in-distribution rows is flagged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

VARIANCE = 0.99  # the share of the variance the kept directions explain
MAX_COMPONENTS = 64
FIT_ROWS = 2000  # rows the directions are fitted on (a fixed random subset beyond it): the SVD stays < 1 s
MAX_FEATURES = 16384  # wider inputs get no scorer (the SVD would take minutes)


class MahalanobisScorer:
    """Mahalanobis distance under a PCA covariance in standardized input space (see the module docstring)."""

    def __init__(self, variance: float = VARIANCE, max_components: int = MAX_COMPONENTS):
        self.variance = variance
        self.max_components = max_components

    def fit(self, X: np.ndarray) -> MahalanobisScorer:
        """Learn the centre, scales and principal directions of training rows X (N, F)."""
        X = _matrix(X)
        if len(X) > FIT_ROWS:
            X = X[np.sort(np.random.default_rng(0).choice(len(X), FIT_ROWS, replace=False))]
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(self.mean_)), scale, 1.0)
        Z = (X - self.mean_) / self.scale_
        _, s, vt = np.linalg.svd(Z, full_matrices=False)
        eig = s ** 2 / max(len(X) - 1, 1)
        total = float(eig.sum())
        n_features = X.shape[1]
        k = 0
        if total > 0:
            k = int(np.searchsorted(np.cumsum(eig) / total, self.variance) + 1)
        k = min(k, self.max_components, len(eig))
        floor = max(1e-3 * total / n_features, 1e-12)
        self.residual_ = max((total - float(eig[:k].sum())) / max(n_features - k, 1), floor)
        self.components_ = vt[:k]
        self.variances_ = np.maximum(eig[:k], self.residual_)
        return self

    def calibrate(self, X_val: np.ndarray, false_alarm_rate: float) -> MahalanobisScorer:
        """Set `threshold_` to the (1 - false_alarm_rate) quantile of the scores of validation rows."""
        scores = self.score(X_val)
        if not len(scores):
            raise ValueError("calibrate() needs at least one validation row")
        self.false_alarm_rate = float(false_alarm_rate)
        self.threshold_ = float(np.quantile(scores, 1.0 - false_alarm_rate))
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """(N,) float64 distances of rows X (N, F) from the training data (about sqrt(F) for a typical row)."""
        if not hasattr(self, "components_"):
            raise RuntimeError("This MahalanobisScorer is not fitted yet; call fit() first.")
        Z = (_matrix(X) - self.mean_) / self.scale_  # (N, F)
        P = Z @ self.components_.T  # (N, k)
        inside = (P ** 2 / self.variances_).sum(axis=1)
        residual = np.maximum((Z ** 2).sum(axis=1) - (P ** 2).sum(axis=1), 0.0)
        return np.sqrt(inside + residual / self.residual_)

    def flag(self, X: np.ndarray) -> np.ndarray:
        """(N,) bool: rows scoring above the calibrated threshold."""
        if not hasattr(self, "threshold_"):
            raise RuntimeError("This MahalanobisScorer is not calibrated yet; call calibrate() first.")
        return self.score(X) > self.threshold_

    def to_json(self) -> dict[str, Any]:
        return {"variance": self.variance, "max_components": self.max_components,
                "false_alarm_rate": getattr(self, "false_alarm_rate", None),
                "threshold": _round(getattr(self, "threshold_", None)),
                "mean": _rounds(self.mean_), "scale": _rounds(self.scale_), "residual": _round(self.residual_),
                "variances": _rounds(self.variances_), "components": [_rounds(row) for row in self.components_]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MahalanobisScorer:
        scorer = cls(float(data["variance"]), int(data["max_components"]))
        scorer.mean_ = np.asarray(data["mean"], dtype=np.float64)
        scorer.scale_ = np.asarray(data["scale"], dtype=np.float64)
        scorer.residual_ = float(data["residual"])
        scorer.variances_ = np.asarray(data["variances"], dtype=np.float64)
        scorer.components_ = np.asarray(data["components"], dtype=np.float64).reshape(len(scorer.variances_),
                                                                                      len(scorer.mean_))
        if data.get("threshold") is not None:
            scorer.threshold_ = float(data["threshold"])
            scorer.false_alarm_rate = data.get("false_alarm_rate")
        return scorer


def ood_space(inputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """(N, F) float64 rows the scorer reads: the "numeric" input, or the "image" flattened; None when the model
    reads only tokens or a time series (no fixed input space), or the input is too wide to fit."""
    for name in ("numeric", "image"):
        if name in inputs:
            X = np.asarray(inputs[name])
            X = X.reshape(len(X), -1).astype(np.float64)
            return X if 0 < X.shape[1] <= MAX_FEATURES else None
    return None


def _matrix(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X.reshape(len(X), -1)


def _round(value: float | None, digits: int = 10) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")


def _rounds(values: np.ndarray, digits: int = 10) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]
