"""Target leakage: a column that alone predicts the target almost perfectly.

Each column gets a single-feature model, cross-validated: its values fall into bins (up to BINS quantile bins of a
numeric column, a bin per category, one for missing), and a held-out row is predicted from the target of the
training folds' rows in its bin - the class rates per bin (a shallow tree's leaves) or the mean target per bin.
Every column is fitted at once as one array program, so 784 columns cost little more than one. Scored by
balanced accuracy (and ROC-AUC for two classes) or R^2, out of fold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from modelfoundry.data.quality.findings import Finding

if TYPE_CHECKING:
    import pandas as pd

BINS = 32
FOLDS = 3
MAX_ROWS = 20_000
MAX_CELLS = 5_000_000  # rows x columns scored at once; wide tables are scored on fewer rows
LEAK = 0.98  # balanced accuracy / R^2 from which a column alone leaks the target
SUSPECT = 0.8  # skill from which a column far above all others is suspect
FAR_ABOVE = 0.3  # ... when the next best column's skill is this much lower
SMOOTHING = 1.0  # prior rows added to each bin


@dataclass
class ColumnScore:
    column: str
    score: float  # balanced accuracy or R^2, out of fold
    skill: float  # 0 = chance, 1 = perfect (balanced accuracy rescaled by the number of classes)
    auc: float | None = None


def bin_codes(frame: pd.DataFrame, columns: list[str], kinds: dict[str, str]) -> tuple[np.ndarray, int]:
    """(rows, columns) int64 bin ids, distinct across columns, and how many there are: quantile bins for numbers,
    one per category (those seen once share one), and a bin for each column's missing values."""
    import pandas as pd

    from modelfoundry.data.quality.columns import numeric_matrix

    codes = np.empty((len(frame), len(columns)), dtype=np.int64, order="F")  # filled column by column
    numeric = [j for j, c in enumerate(columns) if kinds[c] == "numeric"]
    if numeric:  # one sorted matrix gives every numeric column's quantile edges
        values = np.asfortranarray(numeric_matrix(frame, [columns[j] for j in numeric]))
        ordered = np.sort(values, axis=0)  # NaN last
        count = (~np.isnan(values)).sum(axis=0)
        at = (np.linspace(0, 1, BINS + 1)[1:-1, None] * np.maximum(count - 1, 0)).astype(int)
        edges = ordered[at, np.arange(len(numeric))]  # (BINS - 1, columns); repeated edges leave empty bins
        for i, j in enumerate(numeric):
            code = np.searchsorted(edges[:, i], values[:, i], side="right")
            codes[:, j] = np.where(np.isnan(values[:, i]), BINS, code)
    offset = 0
    for j, column in enumerate(columns):
        if kinds[column] == "numeric":
            size = BINS
        else:  # a bin per category; categories seen once share one bin (dates or notes filled only for one class)
            code, uniques = pd.factorize(frame[column].map(str).where(frame[column].notna()))
            size = len(uniques) + 1
            seen = np.bincount(code[code >= 0], minlength=len(uniques) + 1)  # + 1: no category at all
            code = np.where(code < 0, size, np.where(seen[np.maximum(code, 0)] == 1, size - 1, code))
            codes[:, j] = code
        codes[:, j] += offset
        offset += size + 1
    return codes, offset


def score_columns(frame: pd.DataFrame, target: str, task: str, kinds: dict[str, str], seed: int = 0,
                  max_cells: int = MAX_CELLS) -> list[ColumnScore]:
    """Each numeric or categorical column's out-of-fold single-feature score, best first; at most `max_cells`
    rows x columns are scored (at least 2,000 rows)."""
    import pandas as pd

    columns = [c for c in frame.columns if c != target and kinds.get(c) in ("numeric", "categorical")]
    labelled = frame[frame[target].notna()]
    rows = int(min(MAX_ROWS, max(2000, max_cells // max(len(columns), 1))))
    if len(labelled) > rows:
        labelled = labelled.sample(rows, random_state=seed)
    if not columns or len(labelled) < 2 * FOLDS:
        return []
    codes, total = bin_codes(labelled, columns, kinds)
    folds = np.random.default_rng(seed).permutation(len(labelled)) % FOLDS
    if task == "classification":
        y, classes = pd.factorize(labelled[target].astype(str))
        if len(classes) < 2:
            return []
        scores, skills, aucs = _classification(codes, total, y.astype(np.int64), len(classes), folds)
    else:
        y = pd.to_numeric(labelled[target], errors="coerce").to_numpy(dtype=float)
        keep = np.isfinite(y)
        if keep.sum() < 2 * FOLDS or np.std(y[keep]) == 0:
            return []
        scores, aucs = _regression(codes[keep], total, y[keep], folds[keep]), None
        skills = scores
    scores, skills = np.asarray(scores, dtype=float).tolist(), np.asarray(skills, dtype=float).tolist()
    aucs = [None] * len(columns) if aucs is None else np.asarray(aucs, dtype=float).tolist()
    result = [ColumnScore(c, scores[j], skills[j], aucs[j]) for j, c in enumerate(columns)]
    return sorted(result, key=lambda s: -s.skill)


def _tables(codes: np.ndarray, total: int, values: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bin (of every column): the sum of `values` (rows, width) over the training rows, and their count."""
    flat = codes[train].ravel()  # row-major: row i's bins for every column
    p = codes.shape[1]
    sums = np.stack([np.bincount(flat, weights=np.repeat(values[train, k], p), minlength=total)
                     for k in range(values.shape[1])], axis=-1)  # (total, width)
    return sums, np.bincount(flat, minlength=total)


def _class_counts(codes: np.ndarray, total: int, y: np.ndarray, k: int, train: np.ndarray) -> np.ndarray:
    """(bins, k): how many training rows of each class fall in each bin of every column, in one pass."""
    flat = (codes[train] * k + y[train, None]).ravel()
    return np.bincount(flat, minlength=total * k).reshape(total, k).astype(float)


def _classification(codes: np.ndarray, total: int, y: np.ndarray, k: int,
                    folds: np.ndarray) -> tuple[np.ndarray, ...]:
    n, p = codes.shape
    onehot = np.eye(k)[y]
    predicted = np.empty((n, p), dtype=np.int64)
    positive = np.empty((n, p), dtype=float) if k == 2 else None
    for fold in range(FOLDS):
        train, held = folds != fold, folds == fold
        sums = _class_counts(codes, total, y, k, train)
        prior = onehot[train].mean(axis=0)
        rates = (sums + SMOOTHING * prior) / (sums.sum(axis=1, keepdims=True) + SMOOTHING)  # (bins, k): unseen bins get the prior
        predicted[held] = rates.argmax(axis=-1)[codes[held]]
        if positive is not None:
            positive[held] = rates[:, 1][codes[held]]
    correct = predicted == y[:, None]
    present = onehot.sum(axis=0) > 0
    recalls = (onehot.T @ correct) / np.maximum(onehot.sum(axis=0), 1)[:, None]  # (k, p)
    balanced = recalls[present].mean(axis=0)
    skill = (balanced - 1 / k) / (1 - 1 / k)
    aucs = _auc(positive, y) if positive is not None else None
    return balanced, skill, aucs


def _auc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC-AUC of each column of `scores` (ties count half), by the rank-sum formula."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    positives = y == 1
    n1, n0 = positives.sum(), (~positives).sum()
    if not n1 or not n0:
        return np.full(scores.shape[1], np.nan)
    return (ranks[positives].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _regression(codes: np.ndarray, total: int, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    n, p = codes.shape
    predicted = np.empty((n, p))
    for fold in range(FOLDS):
        train, held = folds != fold, folds == fold
        sums, counts = _tables(codes, total, y[:, None], train)
        means = (sums[:, 0] + SMOOTHING * y[train].mean()) / (counts + SMOOTHING)
        predicted[held] = means[codes[held]]
    total_ss = ((y - y.mean()) ** 2).sum()
    return 1 - ((predicted - y[:, None]) ** 2).sum(axis=0) / total_ss


def leakage_findings(scores: list[ColumnScore], task: str, target: str, id_columns: set[str]) -> list[Finding]:
    """An error for a column that alone scores >= LEAK; a warning for one far above every other column."""
    findings = []
    metric = "balanced accuracy" if task == "classification" else "R^2"
    skills = sorted((s.skill for s in scores), reverse=True)
    for s in scores:
        next_best = (skills[1] if s.skill == skills[0] else skills[0]) if len(skills) > 1 else 0.0
        auc_ok = s.auc is None or s.auc >= 0.99
        if s.score >= LEAK and auc_ok:
            severity, how = "error", "almost perfectly"
        elif s.skill >= SUSPECT and s.skill - next_best >= FAR_ABOVE:
            severity, how = "warning", f"far better than any other column (next best skill {next_best:.2f})"
        else:
            continue
        auc = f", ROC-AUC {s.auc:.3f}" if s.auc is not None else ""
        sorted_note = (" It is also ID-like: the file is probably sorted by the target, so the row order leaks it."
                       if s.column in id_columns else "")
        findings.append(Finding("leakage", severity, [s.column], s.score,
                                f"'{s.column}' alone predicts '{target}' {how}: cross-validated {metric} "
                                f"{s.score:.3f}{auc}.{sorted_note}",
                                "Check that it is known before the outcome; if it is recorded after it (or derived "
                                "from it), drop it: data.features: {" + s.column + ": {type: ignore}}.",
                                {"metric": metric, "score": round(s.score, 4), "skill": round(s.skill, 4),
                                 "auc": None if s.auc is None else round(s.auc, 4), "id_like": s.column in id_columns}))
    return findings
