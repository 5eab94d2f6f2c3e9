"""Column typing, row cleaning (missing targets, duplicates, rows to drop) and outlier clipping."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator

from modelfoundry.config import DataConfig, FeatureConfig
from modelfoundry.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd

MAX_CLASSES_FOR_AUTO = 20  # integer targets with more distinct values than this are treated as regression


@dataclass
class FeatureSpec:
    """One model input: a numeric or categorical column, or an image (one array column or many columns)."""

    name: str
    columns: list[str]
    kind: str  # numeric | categorical | image | text
    missing: str = "median"
    fill_value: Any = None
    scale: str = "standard"
    encode: str = "onehot"
    shape: tuple[int, ...] | None = None  # image: (C, H, W)


@dataclass
class CleanReport:
    rows_in: int
    missing_target: int = 0
    duplicates: int = 0
    dropped_missing: dict[str, int] = field(default_factory=dict)
    rows_out: int = 0


def infer_task(target: pd.Series, declared: str) -> str:
    """classification or regression: declared, else from the target's values."""
    import pandas as pd

    if declared != "auto":
        return declared
    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    integral = bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
    return "classification" if integral and values.nunique() <= MAX_CLASSES_FOR_AUTO else "regression"


def plan_features(frame: pd.DataFrame, cfg: DataConfig, origin: str) -> list[FeatureSpec]:
    """Decide each column's kind and treatment from the overrides in `cfg.features` and the data itself."""
    if cfg.target not in frame.columns:
        raise DataError(f"Target column '{cfg.target}' is not in {origin}.{did_you_mean(cfg.target, frame.columns)}"
                        f" Columns: {_column_list(frame)}.", "Set data.target to the column to predict.")
    for key in cfg.features:
        if not any(fnmatch.fnmatchcase(c, key) for c in frame.columns):
            raise DataError(f"data.features names '{key}', which matches no column in {origin}."
                            f"{did_you_mean(key, frame.columns)} Columns: {_column_list(frame)}.",
                            "Fix the key, or remove it from data.features.")
    specs: list[FeatureSpec] = []
    groups: dict[str, FeatureSpec] = {}
    for column in frame.columns:
        if column == cfg.target:
            continue
        key, override = _override_for(column, cfg.features)
        kind = override.type if override.type != "auto" else _infer_kind(frame[column])
        if kind == "ignore":
            continue
        if kind == "image":
            _add_image_column(groups, specs, key, column, override, frame[column], origin)
            continue
        if kind == "text":
            specs.append(FeatureSpec(column, [column], "text", missing="drop" if override.missing == "drop" else "empty"))
            continue
        if kind == "numeric":
            converted = to_numeric(frame[column], column, origin)
            if converted.dtype != frame[column].dtype:  # a wide float table is checked, not copied
                frame[column] = converted
        elif override.missing in ("mean", "median"):
            raise DataError(f"Column '{column}' of {origin} is categorical, so missing: {override.missing} cannot "
                            "fill it.", f"Use missing: most_frequent, constant or drop for '{column}'.")
        spec = FeatureSpec(column, [column], kind, missing=override.missing or _default_missing(kind),
                           fill_value=override.fill_value, scale=override.scale or "standard",
                           encode=override.encode or "onehot")
        specs.append(spec)
    for spec in groups.values():
        _finish_image_group(spec, cfg.features[spec.name], origin)
    if not specs:
        raise DataError(f"{origin} has no feature columns besides the target '{cfg.target}'.",
                        "Check data.features: every column may be set to type: ignore.")
    images = [s.name for s in specs if s.kind == "image"]
    if len(images) > 1:
        raise DataError(f"{origin} has {len(images)} image features ({', '.join(images)}); a model takes one image "
                        "(beside any numeric, categorical and text columns).",
                        "Keep one: set type: ignore on the others, or give their columns one data.features pattern.")
    return specs


def to_numeric(series: pd.Series, column: str, origin: str) -> pd.Series:
    """Convert a column to float, or raise naming the column, the offending rows and their values.

    Missing cells become NaN; text that is not a number and infinite values are errors.
    """
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series):
        converted = series.astype(float)
    else:
        converted = pd.to_numeric(series, errors="coerce")
        bad = series[converted.isna() & series.notna()]
        if len(bad):
            rows = ", ".join(f"row {i}: {_plain(v)!r}" for i, v in list(bad.items())[:3])
            raise DataError(f"Column '{column}' in {origin} should be numeric but holds text ({len(bad)} value(s); "
                            f"{rows}).", f"Fix those values, or declare data.features: {{'{column}': "
                            "{type: categorical}} if the column is really categorical.")
        converted = converted.astype(float)
    infinite = np.isinf(converted.to_numpy())
    if infinite.any():
        raise_infinite(column, converted.index[infinite], origin)
    return converted


def raise_infinite(column: str, rows: Any, origin: str) -> None:
    """The one error for infinite values (inf, -inf, 1e400 read as inf) in a numeric column."""
    shown = ", ".join(str(_plain(i)) for i in list(rows)[:5])
    raise DataError(f"Column '{column}' in {origin} has {len(rows)} infinite value(s) (rows {shown}); "
                    "numeric values must be finite.",
                    "Replace them with real values, or leave the cells empty to treat them as missing.")


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, so messages read 1 rather than np.int64(1)."""
    return value.item() if isinstance(value, np.generic) else value


def clean_rows(frame: pd.DataFrame, specs: list[FeatureSpec], cfg: DataConfig,
               origin: str) -> tuple[pd.DataFrame, CleanReport]:
    """Drop rows without a target, duplicate rows (if asked) and rows missing a `missing: drop` column."""
    report = CleanReport(rows_in=len(frame))
    keep = frame[cfg.target].notna()
    report.missing_target = int((~keep).sum())
    frame = frame[keep]
    if cfg.clean.duplicates == "drop":
        dup = _hashable(frame).duplicated()
        report.duplicates = int(dup.sum())
        frame = frame[~dup]
    for spec in specs:
        if spec.missing == "drop":
            missing = frame[spec.columns].isna().any(axis=1)
            report.dropped_missing[spec.name] = int(missing.sum())
            frame = frame[~missing]
    report.rows_out = len(frame)
    if frame.empty:
        raise DataError(f"Nothing is left of {origin} after cleaning ({report.rows_in} rows in: "
                        f"{report.missing_target} without a target, {report.duplicates} duplicates, "
                        f"dropped for missing values: {report.dropped_missing or 'none'}).",
                        "Use a fill strategy (missing: median / most_frequent) instead of missing: drop.")
    return frame, report


class OutlierClipper(BaseEstimator):
    """Clip each column to bounds learnt on the training rows: IQR fences or mean +/- k standard deviations.

    A scikit-learn estimator (BaseEstimator gives get_params/set_params and the tags scikit-learn 1.6+
    checks), so it sits inside a scikit-learn Pipeline.
    """

    def __init__(self, method: str = "iqr", factor: float = 3.0):
        self.method = method
        self.factor = factor

    def fit(self, X: np.ndarray, y: Any = None) -> OutlierClipper:
        X = np.asarray(X, dtype=float)
        if self.method == "iqr":
            q1, q3 = np.nanpercentile(X, [25, 75], axis=0)
            self.lower_, self.upper_ = q1 - self.factor * (q3 - q1), q3 + self.factor * (q3 - q1)
        elif self.method == "zscore":
            mean, std = np.nanmean(X, axis=0), np.nanstd(X, axis=0)
            self.lower_, self.upper_ = mean - self.factor * std, mean + self.factor * std
        else:
            raise ValueError(f"The 'method' parameter of OutlierClipper must be 'iqr' or 'zscore'. "
                             f"Got {self.method!r} instead.")
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "lower_"):
            raise RuntimeError("This OutlierClipper is not fitted yet; call fit() first.")
        return np.clip(np.asarray(X, dtype=float), self.lower_, self.upper_)

    def fit_transform(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        return self.fit(X).transform(X)

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        return input_features


# ------------------------------------------------------------------------------------------ helpers
def _override_for(column: str, features: dict[str, FeatureConfig]) -> tuple[str, FeatureConfig]:
    if column in features:
        return column, features[column]
    for key, override in features.items():
        if fnmatch.fnmatchcase(column, key):
            return key, override
    return column, FeatureConfig()


def _infer_kind(series: pd.Series) -> str:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return "numeric"  # checked first: a numeric dtype cannot hold arrays, and it is the common case
    first = series.dropna().iloc[0] if series.notna().any() else None
    if isinstance(first, (list, tuple, np.ndarray)):
        return "image"
    sample = series.iloc[np.linspace(0, len(series) - 1, min(len(series), 500)).astype(int)]
    if pd.to_numeric(sample, errors="coerce").notna().sum() < 0.5 * sample.notna().sum():
        return "text" if _is_free_text(series.dropna()) else "categorical"  # far from numbers (a large file)
    converted = pd.to_numeric(series, errors="coerce")
    present = series.notna().sum()
    parsed = (converted.notna() & series.notna()).sum()
    # mostly numbers with a few strings is a data error (to_numeric reports it), not a categorical column
    if present and parsed / present >= 0.9:
        return "numeric"
    return "text" if _is_free_text(series.dropna()) else "categorical"


TEXT_MIN_WORDS, TEXT_MIN_DISTINCT, TEXT_MIN_DISTINCT_SHARE = 4, 20, 0.3


def _is_free_text(values: pd.Series) -> bool:
    """Free text (reviews, messages), not a category: many distinct values of several words each."""
    if not len(values):
        return False
    sample = values.astype(str).iloc[:5000]  # enough to tell, cheap on a large file
    distinct = sample.nunique()
    if distinct < TEXT_MIN_DISTINCT or distinct < TEXT_MIN_DISTINCT_SHARE * len(sample):
        return False
    return float(sample.str.split().str.len().median()) >= TEXT_MIN_WORDS


def _default_missing(kind: str) -> str:
    return "median" if kind == "numeric" else "most_frequent"


def _add_image_column(groups: dict[str, FeatureSpec], specs: list[FeatureSpec], key: str, column: str,
                      override: FeatureConfig, series: pd.Series, origin: str) -> None:
    scale = override.scale or "standard"
    first = series.dropna().iloc[0] if series.notna().any() else None
    if isinstance(first, (list, tuple, np.ndarray)):  # one column holding whole arrays
        shape = tuple(override.shape or np.asarray(first).shape)
        specs.append(FeatureSpec(column, [column], "image", scale=scale, shape=_chw(shape, column, origin)))
        return
    if key not in groups:  # many scalar columns (pixel_0_0 ... pixel_7_7) form one image, in file order
        groups[key] = FeatureSpec(key, [], "image", scale=scale, shape=tuple(override.shape or ()))
        specs.append(groups[key])
    groups[key].columns.append(column)


def _finish_image_group(spec: FeatureSpec, override: FeatureConfig, origin: str) -> None:
    n = len(spec.columns)
    if not spec.shape:
        side = math.isqrt(n)
        if side * side != n:
            raise DataError(f"data.features '{spec.name}' groups {n} columns of {origin} into an image, "
                            "which is not square.", "Give the image shape, e.g. shape: [3, 32, 32].")
        spec.shape = (side, side)
    spec.shape = _chw(spec.shape, spec.name, origin)
    if math.prod(spec.shape) != n:
        raise DataError(f"data.features '{spec.name}' has shape {list(spec.shape)} ({math.prod(spec.shape)} "
                        f"values) but matches {n} columns of {origin}.", "Fix the shape or the pattern.")


def _chw(shape: tuple[int, ...], name: str, origin: str) -> tuple[int, ...]:
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return tuple(shape)
    raise DataError(f"Image feature '{name}' in {origin} has shape {list(shape)}; expected [H, W] or [C, H, W].",
                    "Set data.features.<column>.shape.")


def _hashable(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy in which array cells become bytes, so rows can be hashed and compared."""
    objects = [c for c in frame.columns if frame[c].dtype == object]
    if not objects:
        return frame
    out = frame.copy()
    for c in objects:
        out[c] = [np.asarray(v).tobytes() if isinstance(v, (list, tuple, np.ndarray)) else v for v in out[c]]
    return out


def _column_list(frame: pd.DataFrame, limit: int = 12) -> str:
    cols = [f"'{c}'" for c in frame.columns[:limit]]
    more = len(frame.columns) - limit
    return ", ".join(cols) + (f" and {more} more" if more > 0 else "")
