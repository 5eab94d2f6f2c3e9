"""How the members' outputs become the ensemble's: average (soft voting), vote (hard majority) or stack.

Outputs are class probabilities (N, K) for classification and predictions in the target's units (N,) for
regression, one array per member, on the same rows in the same order. A `Combination` is plain numbers (weights,
a stacking meta-model's coefficients), saved as JSON in the ensemble's ensemble.json: nothing loaded executes code.

- average: sum_k w_k * output_k (the weights are normalised to sum to 1; equal by default).
- vote: each member votes for its most probable class (weight w_k); the answer is the class with the most votes,
  a tie going to the class with the higher weighted mean probability. Its "probabilities" are the vote shares
  with that mean mixed in at VOTE_TIE: (votes + VOTE_TIE * mean) / (1 + VOTE_TIE), so they sum to 1 and their
  argmax is the vote's winner (for unweighted members: votes differ by at least 1/M, far above VOTE_TIE).
- stack: a meta-model fitted on the members' outputs on the validation split: a multinomial logistic
  regression on the members' probabilities side by side, softmax(X W + b) with X (N, M*K); a ridge regression
  on their predictions, X w + b with X (N, M).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelfoundry.errors import ConfigError, DataError

METHODS = ("average", "vote", "stack")
VOTE_TIE = 1e-3
ABSENT_CLASS_LOGIT = -30.0  # a class the validation rows never show: the meta-model gives it ~0 probability


@dataclass
class Combination:
    """A fitted combination of M members' outputs (see the module docstring for each method's formula)."""

    method: str
    task: str
    weights: list[float]  # (M,), non-negative, summing to 1 (stack: what the meta-model was fitted with, equal)
    coef: list[list[float]] | None = None  # stack: (M*K, K) for classification, (M, 1) for regression
    intercept: list[float] | None = None  # stack: (K,) or (1,)

    def apply(self, outputs: list[np.ndarray]) -> np.ndarray:
        """The ensemble's output from the members' outputs: probabilities (N, K) or predictions (N,)."""
        arrays = [np.asarray(o, dtype=np.float64) for o in outputs]
        if len(arrays) != len(self.weights):
            raise ValueError(f"{len(arrays)} outputs for a combination of {len(self.weights)} members")
        if self.method == "stack":
            return self._stacked(arrays)
        mean = sum(w * o for w, o in zip(self.weights, arrays))
        if self.method == "average":
            return mean
        votes = np.zeros_like(mean)
        for w, probs in zip(self.weights, arrays):
            votes[np.arange(len(probs)), probs.argmax(axis=1)] += w
        return (votes + VOTE_TIE * mean) / (1.0 + VOTE_TIE)

    def _stacked(self, arrays: list[np.ndarray]) -> np.ndarray:
        coef, intercept = np.asarray(self.coef, dtype=np.float64), np.asarray(self.intercept, dtype=np.float64)
        if self.task == "classification":
            logits = np.concatenate(arrays, axis=1) @ coef + intercept  # (N, M*K) @ (M*K, K)
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            return e / e.sum(axis=1, keepdims=True)
        return (np.stack(arrays, axis=1) @ coef)[:, 0] + intercept[0]  # (N, M) @ (M, 1)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "task": self.task, "weights": self.weights, "coef": self.coef,
                "intercept": self.intercept}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Combination:
        return cls(str(data["method"]), str(data["task"]), [float(w) for w in data["weights"]],
                   data.get("coef"), data.get("intercept"))


def member_weights(weights: list[float] | None, n_members: int, method: str) -> list[float]:
    """The members' weights, normalised to sum to 1 (equal when none are given); refused with a clear reason."""
    if weights is None:
        return [1.0 / n_members] * n_members
    if method == "stack":
        raise ConfigError("--weights applies to the average and vote methods; stacking fits its own weights on "
                          "the validation split.", "Leave --weights out, or use --method average.")
    if len(weights) != n_members:
        raise ConfigError(f"--weights gives {len(weights)} weight(s) for {n_members} members.",
                          f"Give one weight per member, in the members' order, e.g. --weights "
                          f"{','.join(['0.5'] * n_members)}.")
    if not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"--weights must be non-negative numbers, not all 0. Got {weights} instead.",
                          "E.g. --weights 0.6,0.4 (they are normalised to sum to 1).")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def combine(method: str, task: str, weights: list[float], val_outputs: list[np.ndarray] | None = None,
            val_truth: np.ndarray | None = None, seed: int = 0) -> Combination:
    """A Combination for `method`; stacking fits its meta-model on the members' validation outputs and the
    truth (class indices, or values in the target's units)."""
    if method not in METHODS:
        from modelfoundry.errors import unknown_name

        raise ConfigError(unknown_name("--method", method, list(METHODS)))
    if method == "vote" and task != "classification":
        raise ConfigError("--method vote is a majority of predicted classes, so it needs classifiers; these members "
                          f"are {task} models.", "Use --method average or --method stack.")
    if method != "stack":
        return Combination(method, task, weights)
    if val_outputs is None or val_truth is None or len(val_truth) == 0:
        raise DataError("Stacking fits its meta-model on the members' validation split, which is empty here.",
                        "Give the members' data a validation split (data.split.val > 0), or use --method average.")
    if task == "classification":
        coef, intercept = _fit_logistic(val_outputs, np.asarray(val_truth), seed)
    else:
        coef, intercept = _fit_ridge(val_outputs, np.asarray(val_truth, dtype=np.float64))
    return Combination("stack", task, weights, coef, intercept)


def _fit_logistic(outputs: list[np.ndarray], y: np.ndarray, seed: int) -> tuple[list[list[float]], list[float]]:
    """Multinomial logistic regression on the members' probabilities side by side, as (M*K, K) weights and (K,)
    biases over all K classes (a binary fit's one logit becomes [0, z]; absent classes get a very low bias)."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    X = np.concatenate([np.asarray(o, dtype=np.float64) for o in outputs], axis=1)
    k = np.asarray(outputs[0]).shape[1]
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"Stacking needs at least two classes among the validation rows; they hold only class "
                        f"index {present.tolist()}.", "Use --method average, or give the data a larger validation "
                        "split (data.split.val).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny validation splits
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(X, y)
    W, b = np.zeros((X.shape[1], k)), np.full(k, ABSENT_CLASS_LOGIT)
    classes = model.classes_.astype(int)
    if len(classes) == 2:
        W[:, classes[1]], b[classes[0]], b[classes[1]] = model.coef_[0], 0.0, model.intercept_[0]
    else:
        W[:, classes], b[classes] = model.coef_.T, model.intercept_
    return W.tolist(), b.tolist()


def _fit_ridge(outputs: list[np.ndarray], y: np.ndarray) -> tuple[list[list[float]], list[float]]:
    from sklearn.linear_model import Ridge

    X = np.stack([np.asarray(o, dtype=np.float64).reshape(len(y)) for o in outputs], axis=1)  # (N, M)
    model = Ridge(alpha=1.0).fit(X, y)
    return model.coef_.reshape(-1, 1).tolist(), [float(model.intercept_)]
