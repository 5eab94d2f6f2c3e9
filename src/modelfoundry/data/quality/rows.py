"""Row checks: exact duplicates, duplicates after normalisation, identical features with different targets, and the
target itself (missing values, rare classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from modelfoundry.data.quality.columns import holds_text
from modelfoundry.data.quality.findings import Finding, percent, share

if TYPE_CHECKING:
    import pandas as pd

SIGNIFICANT_DIGITS = 6  # numbers equal to this many significant digits are equal after normalisation


def row_hashes(frame: pd.DataFrame, normalise: bool = False) -> np.ndarray:
    """One 64-bit hash per row; `normalise` strips, lowercases and collapses the whitespace of text and rounds
    numbers to SIGNIFICANT_DIGITS first. Numeric columns are hashed together from their exact bits (one pass per
    column over a float matrix); other cells by their value (arrays and dicts by their text)."""
    import pandas as pd

    dtypes = frame.dtypes.to_dict()
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(dtypes[c])
               and not pd.api.types.is_bool_dtype(dtypes[c])]
    columns = {}
    if numeric:
        matrix = frame[numeric].to_numpy(dtype=float, na_value=np.nan, copy=True)
        floats = [j for j, c in enumerate(numeric) if pd.api.types.is_float_dtype(dtypes[c])]
        if normalise and floats:  # integers (and float columns of whole numbers) are exact already
            fractional = ~np.all((matrix[:, floats] % 1 == 0) | np.isnan(matrix[:, floats]), axis=0)
            floats = [j for j, keep in zip(floats, fractional) if keep]
        if normalise and floats:
            matrix[:, floats] = _round_significant(matrix[:, floats])
        columns["_numbers"] = _mix_columns(matrix)
    for name in frame.columns:
        if name in numeric:
            continue
        series = frame[name]
        if holds_text(series.dtype):
            series = series.map(lambda v: v if v is None or isinstance(v, (str, int, float)) else repr(v))
            if normalise:
                series = series.map(lambda v: " ".join(v.split()).lower() if isinstance(v, str) else v)
        columns[name] = series.to_numpy()
    if not columns:
        return np.zeros(len(frame), dtype=np.uint64)
    typed = pd.DataFrame(columns)
    try:
        return pd.util.hash_pandas_object(typed, index=False).to_numpy()
    except TypeError:  # mixed cells hashing cannot order: compare their text
        return pd.util.hash_pandas_object(typed.astype(str), index=False).to_numpy()


def _mix_columns(matrix: np.ndarray, block: int = 128) -> np.ndarray:
    """A 64-bit hash of each row of a float matrix from the exact bits of its values: the sum over columns of
    splitmix64(bits ^ a per-column salt), `block` columns at a time (NaN and -0.0 made canonical first)."""
    salts = np.random.default_rng(0).integers(0, 2 ** 63, size=matrix.shape[1], dtype=np.uint64)
    hashed = np.zeros(len(matrix), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, matrix.shape[1], block):
            part = matrix[:, start:start + block]
            part = np.where(np.isnan(part), np.nan, part) + 0.0
            z = np.ascontiguousarray(part).view(np.uint64) ^ salts[start:start + block]
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            hashed += (z ^ (z >> np.uint64(31))).sum(axis=1, dtype=np.uint64)
    return hashed


def _round_significant(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values) & (values != 0)
    exponent = np.zeros_like(values)
    exponent[finite] = np.floor(np.log10(np.abs(values[finite])))
    scale = 10.0 ** (SIGNIFICANT_DIGITS - 1 - exponent)
    return np.where(finite, np.round(values * scale) / scale, values)


def duplicate_findings(frame: pd.DataFrame, target: str | None = None, task: str | None = None) -> list[Finding]:
    """Rows repeated exactly, rows that only become equal after normalisation, and (with a target) rows whose
    features repeat another row's while their target differs. The features are hashed once for all three."""
    import pandas as pd

    if len(frame) < 2 or not len(frame.columns):
        return []
    features = frame.drop(columns=[target]) if target is not None else frame
    keys = row_hashes(features)
    targets = row_hashes(frame[[target]]) if target is not None else np.zeros(len(frame), dtype=np.uint64)
    exact = int(pd.DataFrame({"x": keys, "y": targets}).duplicated().sum())
    loose = exact
    if _normalising_changes(features):
        loose = int(pd.DataFrame({"x": row_hashes(features, normalise=True), "y": targets}).duplicated().sum())
    findings = []
    if exact:
        part = share(exact, len(frame))
        findings.append(Finding("duplicates", "warning" if part >= 0.01 else "info", [], part,
                                f"{exact} rows ({percent(part)}) repeat an earlier row exactly; a repeated row can "
                                "land in both the training and the test split and flatter the test score.",
                                "Training drops them before splitting (data.clean.duplicates: drop, the default); "
                                "keep that, or remove them at the source.", {"rows": exact}))
    if loose > exact:
        extra = loose - exact
        part = share(extra, len(frame))
        findings.append(Finding("near_duplicates", "warning" if part >= 0.01 else "info", [], part,
                                f"{extra} more rows ({percent(part)}) repeat an earlier row once text is stripped and "
                                f"lowercased and numbers are rounded to {SIGNIFICANT_DIGITS} significant digits.",
                                "Normalise the text (case, spaces) and the number formats at the source, then drop "
                                "the duplicates.", {"rows": extra}))
    if target is not None and len(features.columns):
        findings += _conflicts(keys, targets, frame[target].notna().to_numpy(), target, task)
    return findings


def _normalising_changes(frame: pd.DataFrame) -> bool:
    """Whether normalising can change a row: a text column, or a float column with fractional values."""
    import pandas as pd

    dtypes = frame.dtypes.to_dict()
    if any(holds_text(dtypes[c]) for c in frame.columns):
        return True
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(dtypes[c])]
    if not floats:
        return False
    values = frame[floats].to_numpy(dtype=float, na_value=np.nan)
    return bool(np.any(np.isfinite(values) & (values % 1 != 0)))


def _conflicts(keys: np.ndarray, targets: np.ndarray, labelled: np.ndarray, target: str,
               task: str | None) -> list[Finding]:
    import pandas as pd

    if labelled.sum() < 2:
        return []
    distinct = pd.Series(targets[labelled]).groupby(keys[labelled]).transform("nunique")
    rows = int((distinct.to_numpy() > 1).sum())
    if not rows:
        return []
    part = share(rows, int(labelled.sum()))
    severity = "warning" if task == "classification" and part >= 0.01 else "info"  # regression: noise, not error
    return [Finding("conflicting_targets", severity, [target], part,
                    f"{rows} rows ({percent(part)}) share their feature values with a row whose '{target}' differs: "
                    "no model can get all of them right.",
                    "Check those labels for errors, or add the feature that tells them apart.", {"rows": rows})]


def target_findings(frame: pd.DataFrame, target: str, task: str) -> list[Finding]:
    """Missing targets, and for classification the class balance: rare classes and the imbalance ratio."""
    series = frame[target]
    missing = int(series.isna().sum())
    findings = []
    if missing:
        part = share(missing, len(frame))
        findings.append(Finding("target_missing", "error" if missing == len(frame) else "warning", [target], part,
                                f"The target '{target}' is missing in {missing} of {len(frame)} rows "
                                f"({percent(part)}); those rows are dropped before training.",
                                "Label them, or check data.target names the right column.", {"rows": missing}))
    if task == "classification":
        findings += _imbalance(series.dropna(), target)
    return findings


def _imbalance(labels: pd.Series, target: str) -> list[Finding]:
    counts = labels.astype(str).value_counts()
    if len(counts) < 2:
        return []
    ratio = float(counts.iloc[0] / counts.iloc[-1])
    minority, part = counts.index[-1], share(counts.iloc[-1], len(labels))
    findings = []
    if ratio >= 3:
        findings.append(Finding("imbalance", "warning" if ratio >= 10 else "info", [target], part,
                                f"Class '{minority[:40]}' of '{target}' has {counts.iloc[-1]} rows ({percent(part)}); "
                                f"the largest class has {ratio:.1f} times as many.",
                                "Try data.balance (class_weights: balanced, or method: smote | oversample), and "
                                "judge the model by F1 or balanced accuracy rather than accuracy.",
                                {"ratio": round(ratio, 3), "minority_share": round(part, 6),
                                 "classes": len(counts)}))
    rare = counts[counts < 5]
    if len(rare):
        findings.append(Finding("imbalance", "warning", [target], float(len(rare)),
                                f"{len(rare)} class{'es' * (len(rare) != 1)} of '{target}' "
                                f"{'have' if len(rare) != 1 else 'has'} fewer than 5 rows: too few to stratify the "
                                "splits and to learn from.", "Collect more rows of them, merge them into a broader "
                                "class, or drop them.", {"rare_classes": len(rare)}))
    return findings
