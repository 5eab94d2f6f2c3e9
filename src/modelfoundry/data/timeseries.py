"""Time series forecasting data: a time-ordered table -> standardised windows, split chronologically.

A window's origin `t` is its first forecast step: the model reads the `window` steps before it,
`series[t - window : t]` (the target, then each covariate), and predicts `y[t : t + horizon]`. Time steps are
split in order - train, then validation, then test - and a window belongs to the split of its first forecast
step; windows whose forecasts would cross into the next period are dropped, so no target value is ever a
target of two splits. A window's inputs may reach back into earlier periods: those values were observed
before the forecast is made (not leakage). Means and standard deviations come from the training period only.

At inference a history (time, target, covariates) gives one forecast per origin that has `window` past
values, the last one beyond the end of the history (`history_inputs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.config import DataConfig
    from modelfoundry.data.prepare import PreparedData

SPLITS = ("train", "val", "test")


@dataclass
class Series:
    """A time-ordered table's values: times sorted ascending, the target and covariates beside them."""

    times: pd.Series  # sorted; the index is each row's number in the source
    values: np.ndarray  # (n, 1 + F) float64: the target, then the covariates

    @property
    def rows(self) -> np.ndarray:
        return self.times.index.to_numpy()


def order_series(frame: pd.DataFrame, time: str, columns: list[str], origin: str) -> Series:
    """Sort `frame` by its `time` column and read `columns` (target first) as numbers; missing or repeated
    times, and missing or non-numeric values, are DataErrors naming the column and rows."""
    from modelfoundry.data.clean import to_numeric

    absent = [c for c in (time, *columns) if c not in frame.columns]
    if absent:
        raise DataError(f"{origin} has no column(s) {absent} (columns: {list(frame.columns)[:12]}).",
                        "Set data.time_series.time, target and features to columns of the data.")
    times = _parse_times(frame[time], time, origin)
    order = np.argsort(times.to_numpy(), kind="stable")
    times = times.iloc[order]
    repeated = times.duplicated(keep=False).to_numpy()
    if repeated.any():
        raise DataError(f"Time column '{time}' of {origin} repeats times: {_shown(times[repeated])}.",
                        "A time series needs one row per time step; aggregate or remove the repeated rows.")
    values = np.empty((len(times), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        series = to_numeric(frame[column].iloc[order], column, origin)
        missing = series.isna().to_numpy()
        if missing.any():
            raise DataError(f"Column '{column}' of {origin} has {int(missing.sum())} missing value(s) at "
                            f"{_shown(times[missing])} (rows {', '.join(map(str, series.index[missing][:5]))}).",
                            "Fill the gaps first (for example interpolate them in time: "
                            "frame[column].interpolate()); a forecaster cannot read a window with holes.")
        values[:, j] = series.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        j = int(np.flatnonzero(~np.isfinite(values).all(axis=0))[0])
        raise DataError(f"Column '{columns[j]}' of {origin} has infinite values.", "Remove or fix them.")
    return Series(times, values)


def _parse_times(column: pd.Series, name: str, origin: str) -> pd.Series:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        parsed = column.astype(np.float64)
    else:
        parsed = pd.to_datetime(column, errors="coerce")
    missing = parsed.isna().to_numpy()
    if missing.any():
        bad = ", ".join(f"row {i}: {v!r}" for i, v in zip(column.index[missing][:5], column[missing][:5]))
        raise DataError(f"Time column '{name}' of {origin} has {int(missing.sum())} missing or unreadable time(s) "
                        f"({bad}).", "Every row needs a time: a date (2001-12-29) or a number (a year, a step).")
    return parsed


def _shown(times: pd.Series) -> str:
    values = [str(v.date()) if hasattr(v, "date") and callable(v.date) else f"{v:g}" for v in times.iloc[:5]]
    return ", ".join(values) + (f" and {len(times) - 5} more" if len(times) > 5 else "")


# ------------------------------------------------------------------------------------------------ windows
def period_bounds(n: int, val: float, test: float) -> tuple[int, int]:
    """(train_end, val_end): time steps [0, train_end) train, [train_end, val_end) validate, the rest test."""
    n_test, n_val = max(1, round(n * test)), max(1, round(n * val))
    return n - n_val - n_test, n - n_test


def window_origins(n: int, window: int, horizon: int, step: int, bounds: tuple[int, int]) -> dict[str, np.ndarray]:
    """The origins (first forecast steps) of each split's windows: every `step`-th step from `window` on,
    keeping a window only when all its forecast steps lie in the period of its first one."""
    train_end, val_end = bounds
    origins = np.arange(window, n - horizon + 1, step)
    ends = {"train": train_end, "val": val_end, "test": n}
    starts = {"train": 0, "val": train_end, "test": val_end}
    return {name: origins[(origins >= starts[name]) & (origins + horizon <= ends[name])] for name in SPLITS}


def windows(scaled: np.ndarray, origins: np.ndarray, window: int) -> np.ndarray:
    """(N, window, F) float32: the `window` steps before each origin."""
    steps = origins[:, None] + np.arange(-window, 0)[None, :]  # (N, window)
    return scaled[steps].astype(np.float32)


def targets(values: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """(N, horizon) float64: the target from each origin on."""
    return values[origins[:, None] + np.arange(horizon)[None, :]]


def detect_season(y: np.ndarray, max_lag: int) -> tuple[int, float | None]:
    """The lag in 2..max_lag of the highest autocorrelation peak (a local maximum above noise level) of `y`'s steps
    (first differences, so that a trend does not hide the season), and its value; (1, None) when there is none
    (the seasonal-naive forecast is then the last value)."""
    y = np.diff(np.asarray(y, dtype=np.float64))
    y = y - y.mean() if len(y) else y
    denom = float(y @ y)
    max_lag = min(max_lag, len(y) - 2)
    if denom == 0 or max_lag < 2:
        return 1, None
    acf = np.array([float(y[:-k] @ y[k:]) / denom if k else 1.0 for k in range(max_lag + 2)])
    floor = max(0.2, 2.58 / np.sqrt(len(y)))  # above what noise reaches (99% band of white noise's autocorrelation)
    peaks = [k for k in range(2, max_lag + 1) if acf[k] > floor and acf[k] >= acf[k - 1] and acf[k] >= acf[k + 1]]
    if not peaks:
        return 1, None
    best = max(peaks, key=lambda k: acf[k])
    return best, round(float(acf[best]), 4)


# ------------------------------------------------------------------------------------------------ prepare
def prepare_series(cfg: DataConfig, seed: int) -> PreparedData:
    """The data stage of a time series (data.time_series): windows of the training, validation and test
    periods, standardised with the training period's statistics (see the module docstring)."""
    raw, series = _load(cfg)
    n = len(series.values)
    return series_data(cfg, raw, series, period_bounds(n, cfg.split.val, cfg.split.test), n, seed)


def rolling_origin_folds(cfg: DataConfig, seed: int, folds: int) -> Iterator[PreparedData]:
    """Rolling-origin cross-validation (scikit-learn's TimeSeriesSplit): the series' last `folds` blocks of
    n // (folds + 1) steps are held out in turn; fold k trains on everything before its block (the last
    data.split.val of that as validation) and is tested on the block."""
    raw, series = _load(cfg)
    n = len(series.values)
    block = n // (folds + 1)
    for k in range(folds):
        end = n - (folds - 1 - k) * block
        test_start = end - block
        yield series_data(cfg, raw, series, (test_start - max(1, round(test_start * cfg.split.val)), test_start),
                          end, seed)


def _load(cfg: DataConfig) -> tuple[pd.DataFrame, Series]:
    from modelfoundry.data.sources import load_source

    ts = cfg.time_series
    raw = load_source(cfg.source)
    return raw, order_series(raw, ts.time, [ts.target, *ts.features], cfg.source)


def series_data(cfg: DataConfig, raw: pd.DataFrame, series: Series, bounds: tuple[int, int], end: int,
                seed: int) -> PreparedData:
    """The windows of the periods [0, bounds[0]) train, [bounds[0], bounds[1]) validate, [bounds[1], end) test."""
    import pandas as pd

    from modelfoundry.data.fingerprint import fingerprint
    from modelfoundry.data.portable import PORTABLE_FORMAT, PortablePreprocessor
    from modelfoundry.data.prepare import PreparedData
    from modelfoundry.data.sources import describe_source
    from modelfoundry.data.transform import TargetEncoder

    ts = cfg.time_series
    columns = [ts.target, *ts.features]
    n = end
    origins = window_origins(n, ts.window, ts.horizon, ts.step, bounds)
    empty = [name for name in SPLITS if len(origins[name]) == 0]
    if empty or len(origins["train"]) < 2:
        raise DataError(f"{cfg.source} has {n} time steps: with window {ts.window} and horizon {ts.horizon}, the "
                        f"{'/'.join(empty) or 'train'} period(s) ({_periods(bounds, n)}) hold too few windows.",
                        "Lower data.time_series.window or horizon, or give validation and test more of the series "
                        "(data.split.val, data.split.test); for `foundry cv`, fewer folds.")
    train_end = bounds[0]
    mean = series.values[:train_end].mean(axis=0)
    std = series.values[:train_end].std(axis=0)
    std[std == 0] = 1.0
    scaled = (series.values - mean) / std
    season, source, acf = _season(ts.season, series.values[:train_end, 0], ts.window)
    target = TargetEncoder("regression")
    target.mean_, target.std_ = float(mean[0]), float(std[0])
    X = {name: {"series": windows(scaled, origins[name], ts.window)} for name in SPLITS}
    y = {}
    for name in SPLITS:
        encoded = ((targets(series.values[:, 0], origins[name], ts.horizon) - mean[0]) / std[0]).astype(np.float32)
        y[name] = encoded[:, 0] if ts.horizon == 1 else encoded  # (N,) like any regression target, or (N, H)
    rows = {name: series.rows[origins[name]] for name in SPLITS}
    width = len(columns)
    entry = {"time": ts.time, "target": ts.target, "features": list(ts.features), "window": ts.window,
             "horizon": ts.horizon, "step": ts.step, "mean": mean.tolist(), "std": std.tolist(),
             "time_kind": "number" if pd.api.types.is_numeric_dtype(series.times) else "datetime",
             "season": season, "season_from": source}
    desc = {"format": PORTABLE_FORMAT, "kind": "time_series", "columns": [ts.time, *columns],
            "feature_names": columns, "input_shape": [ts.window, width],
            "inputs": [{"name": "series", "dtype": "float32", "shape": [ts.window, width]}], "time_series": entry}
    info = {"fingerprint": fingerprint(raw, ts.target, "regression", describe_source(cfg.source)),
            "cleaning": {"rows": int(len(raw)), "time_steps": len(series.values)},
            "features": [{"name": c, "kind": "numeric", "columns": 1} for c in columns],
            "split": {"seed": seed, "stratified": False, "chronological": True,
                      **{name: int(len(origins[name])) for name in SPLITS}, "periods": _periods(bounds, n, series)},
            "input_shape": [ts.window, width], "inputs": desc["inputs"],
            "time_series": {"window": ts.window, "horizon": ts.horizon, "step": ts.step, "season": season,
                            "season_from": source, **({"autocorrelation": acf} if acf is not None else {})}}
    return PreparedData("regression", X, y, rows, PortablePreprocessor(desc), target, None, info, None,
                        horizon=ts.horizon)


def _season(configured: int | str, train_target: np.ndarray, window: int) -> tuple[int, str, float | None]:
    """The seasonal-naive period: the configured one, or the autocorrelation peak of the training period
    (up to the window: the baseline reads the last season from the window)."""
    if configured != "auto":
        if configured > window:
            raise DataError(f"data.time_series.season ({configured}) is longer than the window ({window}): the "
                            "seasonal-naive baseline reads the last season from the window.",
                            f"Set data.time_series.window to at least {configured}, or season: auto.")
        return int(configured), "config", None
    season, acf = detect_season(train_target, min(window, len(train_target) // 2))
    return season, "autocorrelation" if acf is not None else "none found (last value)", acf


def _periods(bounds: tuple[int, int], n: int, series: Series | None = None) -> Any:
    train_end, val_end = bounds
    spans = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    if series is None:
        return ", ".join(f"{name} {end - start} steps" for name, (start, end) in spans.items())
    shown = {name: [_time_text(series.times.iloc[start]), _time_text(series.times.iloc[end - 1])]
             for name, (start, end) in spans.items() if end > start}
    return shown


def _time_text(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return float(value) if not float(value).is_integer() else int(value)


# ---------------------------------------------------------------------------------------------- inference
@dataclass
class HistoryWindows:
    """A history's forecast origins: the model inputs, and each origin's last observed time and row."""

    inputs: dict[str, np.ndarray]  # {"series": (N, window, F) float32}
    times: pd.Series  # the last observed time before each origin
    rows: np.ndarray  # the source row of that time


def history_inputs(desc: dict[str, Any], frame: pd.DataFrame, origin: str = "the input") -> HistoryWindows:
    """A history (time, target, covariates) -> one window per origin with `window` past values, the last one
    forecasting beyond the end of the history."""
    entry = desc["time_series"]
    window = entry["window"]
    series = order_series(frame, entry["time"], [entry["target"], *entry["features"]], origin)
    n = len(series.values)
    if n < window:
        raise DataError(f"{origin} holds {n} time step(s); the model reads {window} past steps per forecast.",
                        f"Send a history of at least {window} rows (time, {entry['target']}"
                        + "".join(f", {c}" for c in entry["features"]) + ").")
    scaled = _standardised(entry, series.values)
    origins = np.arange(window, n + 1)
    last = origins - 1
    return HistoryWindows({"series": windows(scaled, origins, window)}, series.times.iloc[last], series.rows[last])


def labelled_windows(desc: dict[str, Any], frame: pd.DataFrame, origin: str = "the input"
                     ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A labelled history -> the windows whose forecast steps all lie in it, every `step`-th from the first:
    (inputs, targets (N, horizon) in the target's units, source rows of the first forecast steps)."""
    entry = desc["time_series"]
    window, horizon = entry["window"], entry["horizon"]
    series = order_series(frame, entry["time"], [entry["target"], *entry["features"]], origin)
    n = len(series.values)
    if n < window + horizon:
        raise DataError(f"{origin} holds {n} time step(s); a window of {window} past steps and {horizon} forecast "
                        f"step(s) needs at least {window + horizon}.", "Evaluate on a longer history.")
    scaled = _standardised(entry, series.values)
    origins = np.arange(window, n - horizon + 1, entry["step"])
    return ({"series": windows(scaled, origins, window)}, targets(series.values[:, 0], origins, horizon),
            series.rows[origins])


def split_histories(cfg: DataConfig, recorded_sha256: str, run_dir: Any) -> dict[str, pd.DataFrame]:
    """The raw rows of each split of a finished time series run, as histories: from the first window's first
    input step to the end of the split's period (`labelled_windows` on one gives exactly the split's windows).
    The source must be unchanged."""
    from modelfoundry.data.fingerprint import fingerprint
    from modelfoundry.data.sources import describe_source, load_source

    ts = cfg.time_series
    raw = load_source(cfg.source)
    sha = fingerprint(raw, ts.target, "regression", describe_source(cfg.source))["sha256"]
    if sha != recorded_sha256:
        raise DataError(f"The source {cfg.source} changed since {run_dir} was trained (fingerprint "
                        f"{recorded_sha256[:12]} then, {sha[:12]} now), so its splits cannot be rebuilt.",
                        f"Use a history file instead (for example `foundry evaluate {run_dir} --data FILE`), or "
                        "restore the original data.")
    series = order_series(raw, ts.time, [ts.target, *ts.features], cfg.source)
    n = len(series.values)
    bounds = period_bounds(n, cfg.split.val, cfg.split.test)
    origins = window_origins(n, ts.window, ts.horizon, ts.step, bounds)
    ends = {"train": bounds[0], "val": bounds[1], "test": n}
    return {name: raw.loc[series.rows[found[0] - ts.window:ends[name]]] for name, found in origins.items()}


def request_inputs(desc: dict[str, Any], instance: dict[str, Any], origin: str = "the request") -> np.ndarray:
    """One server instance {"<target>": [v1..vn], "<covariate>": [...]} -> its window (window, F) float32,
    from the last `window` values of each; wrong lengths, non-numbers, NaN and infinities are DataErrors."""
    entry = desc["time_series"]
    window, columns = entry["window"], [entry["target"], *entry["features"]]
    if not isinstance(instance, dict):
        raise DataError(f"{origin} is {type(instance).__name__}; a time series instance is an object "
                        f"{{{', '.join(repr(c) + ': [numbers]' for c in columns)}}}.",
                        f"Send the last {window} or more values of each column, oldest first.")
    values = np.empty((window, len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        given = instance.get(column)
        if not isinstance(given, list) or len(given) < window:
            length = f"{len(given)} values" if isinstance(given, list) else type(given).__name__
            raise DataError(f"Field '{column}' of {origin} holds {length}; the model reads the last {window} "
                            "values (a list of numbers, oldest first).",
                            f"Send at least {window} numbers in '{column}'.")
        tail = given[-window:]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in tail):
            raise DataError(f"Field '{column}' of {origin} holds values that are not numbers.",
                            f"Send '{column}' as a list of numbers.")
        values[:, j] = np.asarray(tail, dtype=np.float64)
        if not np.isfinite(values[:, j]).all():
            raise DataError(f"Field '{column}' of {origin} holds NaN or infinite values.",
                            "Send finite numbers (fill gaps before forecasting).")
    scaled = _standardised(entry, values)
    if not np.isfinite(scaled.astype(np.float32)).all():
        raise DataError(f"{origin} holds values too large for the model.", "Send values in the training range.")
    return scaled.astype(np.float32)


def _standardised(entry: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """Values (n, 1 + F) of the target and covariates as the model reads them: with the training period's
    means and standard deviations (the description's `time_series` entry)."""
    return (values - np.asarray(entry["mean"])) / np.asarray(entry["std"])


def forecast_table(history: HistoryWindows, predictions: np.ndarray, time_column: str = "time") -> pd.DataFrame:
    """The forecasts of `history`'s origins: `time` (the last observed time) and `prediction` (horizon 1) or
    `prediction_1` .. `prediction_H`."""
    import pandas as pd

    table = pd.DataFrame({time_column: history.times.to_numpy()}, index=history.rows)
    predictions = predictions.reshape(len(table), -1)
    if predictions.shape[1] == 1:
        table["prediction"] = predictions[:, 0]
    else:
        for h in range(predictions.shape[1]):
            table[f"prediction_{h + 1}"] = predictions[:, h]
    return table
