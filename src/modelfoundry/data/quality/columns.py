"""Column checks: the kind of each column, missing values, constant and near-constant columns, ID-like and
high-cardinality columns, numbers mixed with text, and outliers. Numeric columns are checked together as one
sorted matrix (784 pixel columns cost about as much as one)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from modelfoundry.data.quality.findings import Finding, percent, share

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("numeric", "categorical", "text", "other")
NEAR_CONSTANT = 0.99  # top value share from which a column is near-constant
OUTLIER_FENCE = 3.0  # outliers lie beyond Q1 - 3 IQR or Q3 + 3 IQR ("far out")
ID_WORD = re.compile(r"(^|[^a-z])(id|ids|uuid|guid|identifier|key|idx|index|obs|row|rownum|record|no)$", re.IGNORECASE)
ID_CAMEL = re.compile(r"[a-z](Id|ID|Key|Uuid|UUID)$")  # customerId, orderID: case matters (not 'paid', 'valid')
UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
TEXT_MIN_WORDS, TEXT_MIN_DISTINCT = 4, 20  # free text: several words per value, many distinct values
SAMPLE = 2000  # values looked at to decide a text column's kind


def holds_text(dtype: object) -> bool:
    """Whether a column of this dtype can hold strings: object, or pandas' string dtype (pandas 3's default)."""
    import pandas as pd

    return dtype == object or isinstance(dtype, pd.StringDtype)


def present(series: pd.Series) -> pd.Series:
    """The values that are there: not missing, and not empty or blank strings."""
    values = series.dropna()
    if holds_text(values.dtype):
        values = values[~values.map(lambda v: isinstance(v, str) and not v.strip())]
    return values


def column_kind(series: pd.Series) -> tuple[str, float]:
    """(kind, share of the present values that are numbers): numeric, categorical, text or other (arrays)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype):
        return "categorical", 0.0
    if pd.api.types.is_numeric_dtype(series):
        return "numeric", 1.0
    values = present(series)
    if values.empty:
        return "categorical", 0.0
    if values.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray, bytes))).any():
        return "other", 0.0
    numbers = share(numeric_values(values).notna().sum(), len(values))
    if numbers >= 0.9:
        return "numeric", numbers
    sample = values.astype(str).iloc[:SAMPLE]
    words = sample.str.split().str.len().mean()
    free = words >= TEXT_MIN_WORDS and sample.nunique() >= min(TEXT_MIN_DISTINCT, len(sample))
    return ("text" if free else "categorical"), numbers


def numeric_values(series: pd.Series) -> pd.Series:
    """The column as floats: numbers and numeric strings parse, anything else is NaN."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    return pd.to_numeric(series.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")


def numeric_matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """(rows, columns) floats of `columns` (numbers, numeric strings; anything else NaN), in one block when their
    dtypes are numeric already."""
    import pandas as pd

    dtypes = frame.dtypes.to_dict()
    if all(pd.api.types.is_numeric_dtype(dtypes[c]) and not pd.api.types.is_bool_dtype(dtypes[c]) for c in columns):
        return frame[columns].to_numpy(dtype=float)
    return np.column_stack([numeric_values(frame[c]).to_numpy(dtype=float) for c in columns])


def missing_counts(frame: pd.DataFrame, columns: list[str]) -> dict[str, int]:
    """Each column's count of missing values, blank strings counted as missing."""
    counts = frame[columns].isna().sum()
    dtypes = frame.dtypes.to_dict()
    for column in columns:
        if holds_text(dtypes[column]):
            counts[column] = len(frame) - len(present(frame[column]))
    return {c: int(counts[c]) for c in columns}


def missing_findings(frame: pd.DataFrame, columns: list[str]) -> list[Finding]:
    """Each column's share of missing (or blank) values: all missing is an error, from 30% a warning."""
    findings = []
    for column, count in missing_counts(frame, columns).items():
        if not count:
            continue
        part = share(count, len(frame))
        severity = "error" if count == len(frame) else "warning" if part >= 0.3 else "info"
        fix = ("Drop the column (data.features: {col: {type: ignore}}) or fix the export that emptied it."
               if severity == "error" else
               "Choose the fill (data.features: {col: {missing: median | most_frequent | constant | drop}}).")
        what = "every value" if count == len(frame) else f"{count} of {len(frame)} values ({percent(part)})"
        findings.append(Finding("missing", severity, [column], part, f"'{column}' is missing {what}.",
                                fix.replace("{col", "{" + column), {"missing": count, "rows": len(frame)}))
    return findings


def numeric_findings(frame: pd.DataFrame, columns: list[str]) -> list[Finding]:
    """Constant, near-constant, ID-like and outlier findings for the numeric columns, computed on one sorted matrix."""
    if not columns or frame.empty:
        return []
    matrix = numeric_matrix(frame, columns)
    ordered = np.sort(matrix, axis=0)  # NaN last
    n = len(ordered)
    missing = np.isnan(matrix).sum(axis=0)
    starts = np.ones_like(ordered, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]  # NaN != NaN: each missing value starts its own run
    distinct = starts.sum(axis=0) - missing
    index = np.arange(n)[:, None]
    run_start = np.maximum.accumulate(np.where(starts, index, 0), axis=0)
    top = (index - run_start + 1).max(axis=0)  # the longest run: the top value's count
    top_share = np.where(n - missing > 0, top / np.maximum(n - missing, 1), 0.0)
    findings = []
    for j, column in enumerate(columns):
        count = n - missing[j]
        if count == 0:
            continue  # the missing check says so
        values = ordered[:count, j]
        if distinct[j] <= 1 or np.std(values) <= 1e-12 * (abs(values.mean()) + 1e-12):
            findings.append(_constant(column, 1.0, count, values[0]))
        elif top_share[j] >= NEAR_CONSTANT:
            findings.append(_constant(column, float(top_share[j]), count, None))
        else:
            ids = _id_like_number(column, matrix[:, j], int(distinct[j]), count)
            findings += ids or _outliers(column, values, int(distinct[j]))  # values: sorted
    return findings


def _constant(column: str, part: float, count: int, value: float | None) -> Finding:
    if value is not None:
        return Finding("constant", "warning", [column], 1.0, f"'{column}' has a single value ({value:.6g}) in all "
                       f"{count} rows where it is present: it carries no information.",
                       "Drop it: data.features: {" + column + ": {type: ignore}}.", {"distinct": 1})
    return Finding("constant", "info", [column], part, f"'{column}' is near-constant: its most common value fills "
                   f"{percent(part)} of the rows.", "Keep it only if the rare values matter; else "
                   "data.features: {" + column + ": {type: ignore}}.", {"top_share": round(part, 6)})


def named_like_key(column: str) -> bool:
    """Whether a column's name says it is a key: 'id', 'customer_id', 'Row ID', 'identifier', 'orderId', ..."""
    return bool(ID_WORD.search(column) or ID_CAMEL.search(column))


def _id_like_number(column: str, values: np.ndarray, distinct: int, count: int) -> list[Finding]:
    """A column of integers unique per row that counts rows (consecutive, or in file order) or is named like a key."""
    if distinct < count or count < 10 or len(values) != count:  # missing values: not a key
        return []
    if not np.all(np.mod(values, 1) == 0):
        return []
    steps = np.diff(values)
    increasing = share(max((steps > 0).sum(), (steps < 0).sum()), len(steps))
    consecutive = values.max() - values.min() + 1 == count
    named = named_like_key(column)
    if not (named or consecutive or increasing >= 0.95):
        return []
    why = ", ".join(w for w, on in (("consecutive integers", consecutive), (f"{percent(increasing)} in file order",
                                    increasing >= 0.95), ("named like a key", named)) if on)
    return [_id_finding(column, count, f"integers unique per row ({why})",
                        {"consecutive": bool(consecutive), "ordered_share": round(increasing, 4), "named": named})]


def _id_finding(column: str, count: int, why: str, detail: dict) -> Finding:
    return Finding("id_like", "warning", [column], 1.0, f"'{column}' looks like an ID or a row index: {why}, "
                   f"{count} distinct values. A model learns nothing general from it, and it can leak the row order.",
                   "Drop it: data.features: {" + column + ": {type: ignore}}; if it is time (a year, a date), "
                   "forecast with data.time_series or split by time instead.", detail)


def _outliers(column: str, values: np.ndarray, distinct: int) -> list[Finding]:
    """The share of (sorted) `values` beyond the 3-IQR fences (columns with few distinct values have no outliers). Always
    info: skewed and zero-inflated columns (pixels, amounts) have many, and they are not errors by themselves."""
    if distinct <= 10:
        return []
    q1, q3 = values[int(0.25 * (len(values) - 1))], values[int(0.75 * (len(values) - 1))]  # sorted
    spread = q3 - q1
    if spread <= 0:
        return []
    low, high = q1 - OUTLIER_FENCE * spread, q3 + OUTLIER_FENCE * spread
    count = int(((values < low) | (values > high)).sum())
    part = share(count, len(values))
    if part < 0.001:
        return []
    return [Finding("outliers", "info", [column], part,
                    f"'{column}' has {count} values ({percent(part)}) beyond 3 IQR of its quartiles "
                    f"(outside [{low:.4g}, {high:.4g}]).", "Check them for unit or entry errors; data.clean.outliers.method: "
                    "iqr | zscore clips them to bounds learnt on the training rows.",
                    {"count": count, "low": float(low), "high": float(high)})]


def categorical_findings(frame: pd.DataFrame, columns: list[str]) -> list[Finding]:
    """Constant, ID-like (UUIDs, codes unique per row) and high-cardinality findings for categorical columns."""
    findings = []
    for column in columns:
        values = present(frame[column])
        if values.empty:
            continue
        counts = values.astype(str).value_counts()
        top = share(counts.iloc[0], len(values))
        if len(counts) == 1:
            findings.append(Finding("constant", "warning", [column], 1.0, f"'{column}' has a single value in all "
                                    f"{len(values)} rows where it is present: it carries no information.",
                                    "Drop it: data.features: {" + column + ": {type: ignore}}.", {"distinct": 1}))
        elif top >= NEAR_CONSTANT:
            findings.append(_constant(column, top, len(values), None))
        elif len(counts) == len(values) and len(values) >= 10 and _key_like(column, counts.index):
            dates = _date_share(counts.index)
            findings.append(_id_finding(column, len(values), "dates unique per row" if dates >= 0.9 else
                                        "text values unique per row, shaped like keys",
                                        {"named": named_like_key(column), "dates": dates >= 0.9}))
        elif len(counts) > 100 or (len(counts) >= 20 and len(counts) >= 0.5 * len(values)):
            findings.append(Finding("high_cardinality", "warning", [column], float(len(counts)),
                                    f"'{column}' has {len(counts)} distinct values in {len(values)} rows "
                                    f"({percent(share(len(counts), len(values)))} distinct): one-hot encoding makes "
                                    "a column of each, and most are seen too rarely to learn from.",
                                    "Group rare values, use data.features: {" + column + ": {encode: ordinal}}, or "
                                    "drop it if it is a name or key.", {"distinct": len(counts)}))
    return findings


def _key_like(column: str, values: pd.Index) -> bool:
    sample = values[:SAMPLE].astype(str)
    uuid = np.mean([bool(UUID.match(v)) for v in sample])
    digits = np.mean([any(ch.isdigit() for ch in v) and " " not in v.strip() for v in sample])
    return bool(uuid >= 0.9 or digits >= 0.95 or named_like_key(column))


def _date_share(values: pd.Index) -> float:
    """The share of (sampled) values that read as dates or times."""
    import warnings

    import pandas as pd

    sample = pd.Series(values[:200].astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": expected for keys
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return share(parsed.notna().sum(), len(sample))


def mixed_findings(frame: pd.DataFrame, columns: list[str], numbers: dict[str, float]) -> list[Finding]:
    """Columns holding both numbers and text: mostly numbers with some text (a 'N/A', a unit) is a warning."""
    findings = []
    for column in columns:
        part = numbers.get(column, 0.0)
        if not 0.01 <= part < 1.0:
            continue
        values = present(frame[column])
        text = values[numeric_values(values).isna()].astype(str)
        shown = ", ".join(repr(v[:20]) for v in text.value_counts().index[:3])
        severity = "warning" if part >= 0.5 else "info"
        findings.append(Finding("mixed_types", severity, [column], part, f"'{column}' mixes numbers "
                                f"({percent(part)}) and text ({len(text)} values, e.g. {shown}).",
                                "Clean the text values (a missing-value marker? a unit?) so the column is numeric, "
                                "or set data.features: {" + column + ": {type: categorical}}.",
                                {"numbers_share": round(part, 4), "text_values": len(text)}))
    return findings
