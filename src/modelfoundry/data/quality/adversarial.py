"""Adversarial validation: can a classifier tell the rows of two files apart? A cross-validated ROC-AUC near 0.5
means they look alike; near 1 that a model trained on one sees a different world in the other."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from modelfoundry.data.quality.findings import Finding

if TYPE_CHECKING:
    import pandas as pd

MAX_ROWS = 5000  # rows per file
FOLDS = 3
AUC_INFO, AUC_WARN, AUC_ERROR = 0.6, 0.75, 0.95


def separability(base: pd.DataFrame, other: pd.DataFrame, columns: list[str], kinds: dict[str, str],
                 seed: int = 0) -> tuple[float, list[tuple[str, float]]] | None:
    """(cross-validated ROC-AUC of a gradient-boosted classifier telling `other`'s rows from `base`'s, the columns
    it leans on most with their importance); None when there is too little to compare."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from modelfoundry.data.quality.columns import numeric_values

    used = [c for c in columns if c in other.columns and kinds.get(c) in ("numeric", "categorical")]
    a = base.sample(MAX_ROWS, random_state=seed) if len(base) > MAX_ROWS else base
    b = other.sample(MAX_ROWS, random_state=seed) if len(other) > MAX_ROWS else other
    if not used or min(len(a), len(b)) < 2 * FOLDS:
        return None
    both = pd.concat([a[used], b[used]], ignore_index=True)
    features = np.column_stack([numeric_values(both[c]).to_numpy(dtype=float) if kinds[c] == "numeric" else
                                _codes(both[c]) for c in used])
    features[~np.isfinite(features)] = np.nan
    features = np.clip(features, -1e37, 1e37)  # the classifier reads float32
    known = np.array([len(np.unique(col[~np.isnan(col)])) > 1 for col in features.T], dtype=bool)
    used, features = [c for c, k in zip(used, known) if k], features[:, known]
    if not used:
        return None
    labels = np.r_[np.zeros(len(a)), np.ones(len(b))]
    model = HistGradientBoostingClassifier(max_iter=60, max_depth=4, learning_rate=0.1, random_state=seed)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    try:
        scores = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
    except ValueError:  # a fold whose column has no known value: too little to compare
        return None
    auc = float(roc_auc_score(labels, scores))
    return auc, _leaning(features, labels, used, seed)


def _codes(series: pd.Series) -> np.ndarray:
    import pandas as pd

    codes, _ = pd.factorize(series.map(str).where(series.notna()))
    return np.where(codes < 0, np.nan, codes).astype(float)


def _leaning(features: np.ndarray, labels: np.ndarray, used: list[str], seed: int) -> list[tuple[str, float]]:
    """The columns that tell the files apart best on their own: one shallow tree each on a held-out half."""
    from sklearn.metrics import roc_auc_score
    from sklearn.tree import DecisionTreeClassifier

    half = np.random.default_rng(seed).random(len(labels)) < 0.5
    if len(set(labels[half])) < 2 or len(set(labels[~half])) < 2:
        return []
    ranked = []
    for j, column in enumerate(used[:200]):
        x = features[:, j:j + 1]  # missing values: the tree sends them down the better side
        tree = DecisionTreeClassifier(max_depth=3, random_state=seed).fit(x[half], labels[half])
        auc = roc_auc_score(labels[~half], tree.predict_proba(x[~half])[:, 1])
        ranked.append((column, float(max(auc, 1 - auc))))
    return sorted(ranked, key=lambda item: -item[1])[:5]


def adversarial_findings(result: tuple[float, list[tuple[str, float]]] | None, other_name: str) -> list[Finding]:
    """One finding for the AUC: info from AUC_INFO, a warning from AUC_WARN, an error from AUC_ERROR."""
    if result is None:
        return []
    auc, leaning = result
    if auc < AUC_INFO:
        return []
    severity = "error" if auc >= AUC_ERROR else "warning" if auc >= AUC_WARN else "info"
    named = ", ".join(f"'{c}' ({a:.2f})" for c, a in leaning[:3])
    return [Finding("adversarial", severity, [c for c, _ in leaning[:3]], auc,
                    f"A classifier tells {other_name}'s rows from this file's with cross-validated ROC-AUC {auc:.3f} "
                    f"(0.5: indistinguishable); the columns that tell them apart best alone: {named}.",
                    "Look at those columns first (the shift findings give their tests); if one file is newer, "
                    "train on data like the one the model will see.", {"auc": auc, "columns": dict(leaning)})]
