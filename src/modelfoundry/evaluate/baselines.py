"""Reference models fitted on the same split: a dummy (majority class / mean) and a linear model; for time series,
the last value, the seasonal-naive forecast and a ridge regression on the window."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from modelfoundry.artifacts.inputs import Inputs, features_matrix
from modelfoundry.evaluate.metrics import classification_metrics, regression_metrics


def baseline_metrics(task: str, X: dict[str, Inputs], y: dict[str, np.ndarray], n_classes: int,
                     decode: Any, top_k: list[int], texts: dict[str, list[str]] | None = None,
                     season: int | None = None) -> dict[str, float]:
    """Test-split metrics of both baselines, keyed `baseline_dummy_<metric>` and `baseline_linear_<metric>`.

    Features are the model's own preprocessed float inputs, flattened side by side, and for text the TF-IDF
    of each row's text (`texts`: split -> texts; words and word pairs) beside them; `decode` maps regression
    predictions back to target units. A time series (`season` given, `series` windows) gets the forecasting
    baselines instead (`forecast_baselines`).
    """
    if season is not None and "series" in X["train"]:
        return forecast_baselines(X, y, decode, season)
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    train, test = features_matrix(X["train"]), features_matrix(X["test"])
    if texts is not None:
        train, test = _with_tfidf(train, test, texts["train"], texts["test"])
    if train.shape[1] == 0:  # nothing a linear model can read (token ids only): it sees one constant column
        train, test = np.zeros((train.shape[0], 1)), np.zeros((test.shape[0], 1))
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
            proba = np.zeros((test.shape[0], n_classes))
            proba[:, model.classes_] = model.predict_proba(test)
            metrics = classification_metrics(y["test"], proba, top_k)
        else:
            metrics = regression_metrics(decode(y["test"]), decode(model.predict(test)))
        out.update({f"baseline_{name}_{k}": v for k, v in metrics.items()})
    return out


def _with_tfidf(train: np.ndarray, test: np.ndarray, train_texts: list[str], test_texts: list[str]) -> tuple[Any, Any]:
    """The float features with the TF-IDF of the texts beside them (sparse), fitted on the training texts."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True)
    try:
        words_train = vectorizer.fit_transform(train_texts)
        words_test = vectorizer.transform(test_texts)
    except ValueError:  # no word occurs twice (tiny or empty texts): the float features alone
        return train, test
    return (sparse.hstack([words_train, sparse.csr_matrix(train)]).tocsr(),
            sparse.hstack([words_test, sparse.csr_matrix(test)]).tocsr())


def forecast_baselines(X: dict[str, Inputs], y: dict[str, np.ndarray], decode: Any, season: int) -> dict[str, float]:
    """Test-split metrics of the forecasting baselines, keyed `baseline_<name>_<metric>`: `last_value`
    (y[t+h] = y[t-1]), `seasonal_naive` (y[t+h] = y[t+h-k*season], the latest such step before t) and `linear`
    (a ridge regression on the flattened window, fitted on the training windows); `baseline_season` records the
    season used. The windows' first column is the target, standardised like `y`."""
    from sklearn.linear_model import Ridge

    truth = y["test"]
    horizon = 1 if truth.ndim == 1 else truth.shape[1]
    past = X["test"]["series"][:, :, 0].astype(np.float64)  # (N, window): the target before each origin
    ridge = Ridge(alpha=1.0).fit(features_matrix(X["train"]), y["train"])
    predictions = {"last_value": last_value(past, horizon), "seasonal_naive": seasonal_naive(past, horizon, season),
                   "linear": ridge.predict(features_matrix(X["test"]))}
    out: dict[str, float] = {}
    for name, pred in predictions.items():
        metrics = regression_metrics(decode(truth), decode(np.asarray(pred).reshape(truth.shape)))
        out.update({f"baseline_{name}_{k}": v for k, v in metrics.items()})
    out["baseline_season"] = float(season)
    return out


def last_value(past: np.ndarray, horizon: int) -> np.ndarray:
    """(N, horizon): each window's last value repeated."""
    return np.repeat(past[:, -1:], horizon, axis=1)


def seasonal_naive(past: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """(N, horizon): step h (0-based) of a forecast from origin t is y[t + h - k*season] with the smallest k
    that lands before t; `past` (N, W) holds y[t-W .. t-1], and season <= W."""
    window = past.shape[1]
    if not 1 <= season <= window:
        raise ValueError(f"season must be between 1 and the window ({window}), got {season}")
    columns = [window + h - season * -(-(h + 1) // season) for h in range(horizon)]  # k = ceil((h + 1) / season)
    return past[:, columns]
