"""Two reference models fitted on the same split: a dummy (majority class / mean) and a linear model."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from modelfoundry.artifacts.inputs import Inputs, features_matrix
from modelfoundry.evaluate.metrics import classification_metrics, regression_metrics


def baseline_metrics(task: str, X: dict[str, Inputs], y: dict[str, np.ndarray], n_classes: int,
                     decode: Any, top_k: list[int]) -> dict[str, float]:
    """Test-split metrics of both baselines, keyed `baseline_dummy_<metric>` and `baseline_linear_<metric>`.

    Features are the model's own preprocessed float inputs, flattened side by side; `decode` maps regression
    predictions back to target units.
    """
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    train, test = features_matrix(X["train"]), features_matrix(X["test"])
    out: dict[str, float] = {}
    if task == "classification":
        models = {"dummy": DummyClassifier(strategy="prior"), "linear": LogisticRegression(max_iter=2000)}
    else:
        models = {"dummy": DummyRegressor(strategy="mean"), "linear": Ridge(alpha=1.0)}
    for name, model in models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; the metrics speak for themselves
            model.fit(train, y["train"])
        if task == "classification":
            proba = np.zeros((len(test), n_classes))
            proba[:, model.classes_] = model.predict_proba(test)
            metrics = classification_metrics(y["test"], proba, top_k)
        else:
            metrics = regression_metrics(decode(y["test"]), decode(model.predict(test)))
        out.update({f"baseline_{name}_{k}": v for k, v in metrics.items()})
    return out
