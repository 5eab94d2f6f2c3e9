"""`monitor`: new rows (a data file, or the request log's) compared with a model's reference profile, window by
window, with the server's tests, thresholds and alert rule (the model's `monitor:` section); plus the share of
out-of-distribution rows and, from the log, live accuracy (or error) on feedback and shadow agreement.

The functions return a MonitorResult and print nothing: the CLI renders it, monitor/report.py writes the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfoundry.errors import ConfigError, DataError, RunDirError

FAIL_ON = ("alert", "drift", "never")


@dataclass
class ColumnSummary:
    """One column over every window: the worst window's test, score, p-value and threshold, how many windows
    drifted, and whether the alert rule (patience consecutive drifted windows) fired."""

    column: str
    kind: str
    test: str
    score: float
    p_value: float | None
    threshold: float
    windows_drifted: int
    windows: int
    alert: bool
    note: str = ""

    @property
    def severity(self) -> float:
        """How far the worst window went: -log10 p for a p-value test, score / threshold for a distance."""
        return _severity(self.p_value, self.score, self.threshold)


@dataclass
class MonitorResult:
    """What `foundry monitor` found. `windows` are monitor.drift.WindowDrift objects, `bounds` their rows
    [start, stop) in the source's order; `reference` and `current` (every row's values per column) feed the
    plots; `live` holds the request log's feedback and shadow figures."""

    model: str
    version: str | None
    run_dir: Path
    source: str  # the data file, or "request log"
    task: str
    rows: int
    window_rows: int
    windows: list[Any]
    bounds: list[tuple[int, int]]
    columns: list[ColumnSummary]
    ood_share: float | None
    reference: Any
    current: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    live: dict[str, float] = field(default_factory=dict)
    window_live: list[dict[str, float]] = field(default_factory=list)  # live figures per window (the log)

    @property
    def alerts(self) -> list[str]:
        return [c.column for c in self.columns if c.alert]

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.columns if c.windows_drifted]

    @property
    def dataset_drift_windows(self) -> int:
        return sum(bool(w.dataset_drift) for w in self.windows)

    def failed(self, fail_on: str) -> list[str]:
        """The columns that fail a CI gate: alerting ("alert"), drifted in any window ("drift"), none ("never")."""
        if fail_on not in FAIL_ON:
            raise ConfigError(f"--fail-on must be one of {', '.join(FAIL_ON)}. Got '{fail_on}' instead.")
        return {"alert": self.alerts, "drift": self.drifted, "never": []}[fail_on]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "run_dir": str(self.run_dir), "source": self.source,
                "task": self.task, "rows": self.rows, "window_rows": self.window_rows,
                "alerts": self.alerts, "drifted": self.drifted, "dataset_drift_windows": self.dataset_drift_windows,
                "ood_share": self.ood_share, "live": self.live, "notes": self.notes,
                "columns": [vars(c) for c in self.columns],
                "windows": [{"rows": list(b), **w.to_json(), **({"live": live} if live else {})} for b, w, live
                            in zip(self.bounds, self.windows, self.window_live or [{}] * len(self.bounds))]}


@dataclass
class _Model:
    """A monitored model: its local run directory, name and version, backend, config and reference."""

    run_dir: Path
    name: str
    version: str | None  # the registered version whose reference is used; None for a run directory
    log_version: str | None  # the log rows read by default: the version MODEL names; None (all) for NAME or a run
    backend: Any
    config: Any  # the run's Config (its monitor: section decides)
    reference: Any


def monitor_data(model: str | Path, data: str | Path, *, window_rows: int | None = None,
                 uri: str | None = None) -> MonitorResult:
    """Compare a data file's rows with a model's reference, in windows of `window_rows` rows in file order
    (default monitor.window.rows; a short last window joins the one before).

    Args:
        model: a run directory, or a registered NAME, NAME/VERSION or NAME@ALIAS.
        data: rows with the model's input columns (.csv, .parquet, .jsonl); a target column is ignored.
        window_rows: overrides monitor.window.rows.
        uri: the tracking URI holding the registry (for a registered model).
    """
    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.data.sources import read_table
    from modelfoundry.monitor.columns import prediction_values

    loaded = _load(model, uri)
    path = Path(data)
    schema = InputSchema(loaded.backend.desc)
    rows = schema.from_frame(read_table(path, "--data"), origin=f"'{path}'")
    outputs = loaded.backend.predict_inputs(rows.inputs)
    labels = list(loaded.backend.labels) if loaded.backend.task == "classification" else None
    predictions = prediction_values(loaded.backend.task, outputs, labels, getattr(loaded.backend, "threshold", None))
    result = _analyse(loaded, schema, rows, predictions, str(path), window_rows)
    result.ood_share = _ood_share(loaded, rows)
    return result


def monitor_log(model: str | Path, *, limit: int | None = None, version: str | None = None, url: str | None = None,
                window_rows: int | None = None, uri: str | None = None) -> MonitorResult:
    """The same analysis on the rows the server logged for a model (the request log), plus live accuracy (or
    error) on the rows with feedback labels, shadow agreement and the logged OOD share.

    Args:
        model: a run directory, or a registered NAME, NAME/VERSION or NAME@ALIAS (its reference is the baseline).
        limit: only the newest `limit` logged rows.
        version: only rows served by this version (default: the version MODEL names; every version for NAME or
            a run directory's name).
        url: the request log's SQLAlchemy URL (default: monitor.log.url of the model, else the project's
            foundry-requests.db).
        window_rows: overrides monitor.window.rows.
        uri: the tracking URI holding the registry (for a registered model).
    """
    from modelfoundry.data.input_schema import InputSchema
    from modelfoundry.monitor.logview import (live_figures, logged_inputs, logged_ood_share, logged_predictions,
                                              read_log)
    from modelfoundry.monitor.requestlog import RequestLog, default_log_url

    loaded = _load(model, uri)
    settings = loaded.config.monitor.log
    url = url or settings.url or default_log_url()
    version = version or loaded.log_version
    log = read_log(RequestLog(url), loaded.name, version, limit)
    if log.empty:
        which = f"model '{loaded.name}'" + (f" version {version}" if version else "")
        raise DataError(f"The request log has no rows of {which}.",
                        f"Serve it with monitoring on (`foundry serve {model}`: monitor.enabled and "
                        "monitor.log.enabled are on by default) and send it requests; or pass --url where the "
                        "server logs (monitor.log.url), or another --version.")
    schema = InputSchema(loaded.backend.desc)
    frame, skipped, notes = logged_inputs(log, loaded.backend.columns, loaded.reference, settings)
    rows = schema.from_frame(frame, origin="the request log")
    predictions = logged_predictions(log["prediction"], loaded.backend.task)
    result = _analyse(loaded, schema, rows, predictions, "request log", window_rows, skip=skipped, times=log["time"])
    result.notes += notes + ([f"only the rows version {version} served"] if version else [])
    if predictions is None:
        result.notes.append("prediction: the log holds the detector's true/false answers, not its scores; the score "
                            "distribution is tested by the server and by `foundry monitor MODEL --data FILE`")
    versions = sorted({str(v) for v in log["version"].dropna()})
    if len(versions) > 1:
        result.notes.append(f"rows of versions {', '.join(versions)}, all compared with the reference of "
                            f"{loaded.name}" + (f" version {loaded.version}" if loaded.version else f" ({model})"))
    result.ood_share = logged_ood_share(log, loaded.reference)
    result.live = live_figures(log, loaded.backend.task)
    result.window_live = [live_figures(log.iloc[start:stop], loaded.backend.task) for start, stop in result.bounds]
    return result


def window_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive windows of `rows` rows over n rows; a short last window joins the one before
    (so every window but a lone one holds at least `rows` rows)."""
    if n <= 0:
        return []
    count = max(1, n // rows)
    starts = [k * rows for k in range(count)]
    return [(start, starts[k + 1] if k + 1 < count else n) for k, start in enumerate(starts)]


def _load(model: str | Path, uri: str | None) -> _Model:
    from modelfoundry.artifacts.records import ModelRecord
    from modelfoundry.artifacts.rundir import RunDir
    from modelfoundry.monitor.profile import load_reference
    from modelfoundry.rundir import is_language_model, load_run_config
    from modelfoundry.serve.backends import TorchBackend
    from modelfoundry.serve.store import RegistryStore, RunDirStore, store_for

    store = store_for(str(model), uri, backend="torch")
    if isinstance(store, RunDirStore):
        run_dir = store.run_dir
        name, version, log_version = ModelRecord.read(RunDir(run_dir).model_record).name, None, None
    elif isinstance(store, RegistryStore):
        from modelfoundry.registry import download, parse_ref

        name, version, _ = store.resolve()
        run_dir = download(f"{name}/{version}", uri)
        log_version = None if parse_ref(str(model))[1:] == (None, None) else version  # NAME: every version's rows
    else:
        run_dir = version = log_version = None
    if run_dir is None or is_language_model(run_dir):
        raise RunDirError(f"'{model}' is a language model; drift monitoring covers classification and regression "
                          "models on tabular, image and text inputs.", "Pass such a run directory or registered model.")
    reference = load_reference(run_dir)
    if reference is None:
        raise RunDirError(f"'{model}' has no reference profile ({RunDir.REFERENCE} in {run_dir}): it was trained "
                          "before modelfoundry saved one, or its task has none.",
                          "Train it again (`foundry run CONFIG`): every run saves the profile of its training data "
                          "beside the model, and registers it with the version.")
    return _Model(Path(run_dir), name, version, log_version, TorchBackend(Path(run_dir)),
                  load_run_config(Path(run_dir)), reference)


def _analyse(loaded: _Model, schema: Any, rows: Any, predictions: Any, source: str, window_rows: int | None,
             skip: set[str] = frozenset(), times: Any = None) -> MonitorResult:
    """Windows -> compare each with the reference -> the alert rule -> one summary per column."""
    from modelfoundry.monitor.columns import PREDICTION, column_values
    from modelfoundry.monitor.drift import Alerts, compare
    from modelfoundry.monitor.report import column_title

    settings = loaded.config.monitor
    size = window_rows or settings.window.rows
    if len(rows) < settings.window.min_rows:
        raise DataError(f"{source} has {len(rows)} rows; drift tests need at least monitor.window.min_rows = "
                        f"{settings.window.min_rows}.", "Monitor more rows at once.")
    alerts, windows, alerting = Alerts(settings.drift.patience), [], set()
    bounds = window_bounds(len(rows), size)
    extra = _embedding_scores(loaded, rows, skip)
    for start, stop in bounds:
        current = _values(schema, rows[start:stop], skip, column_values)
        current.update({name: values[start:stop] for name, values in extra.items()})
        if loaded.reference.prediction is not None and predictions is not None:
            current[PREDICTION] = predictions[start:stop]
        began, ended = (float(times.iloc[start]), float(times.iloc[stop - 1])) if times is not None else (0.0, 0.0)
        window = compare(loaded.reference, current, settings.drift, rows=stop - start, started=began, ended=ended)
        windows.append(window)
        alerting |= {column for column, alert in alerts.update(window).items() if alert}
    everything = {**_values(schema, rows, skip, column_values), **extra}
    if loaded.reference.prediction is not None and predictions is not None:
        everything[PREDICTION] = predictions
    summaries = _summaries(windows, alerting)
    notes = [f"{column_title(c.column)}: {c.note}" for c in summaries if c.note]  # the worst window's
    return MonitorResult(loaded.name, loaded.version, loaded.run_dir, source, loaded.backend.task, len(rows), size,
                         windows, bounds, summaries, None, loaded.reference, everything, notes)


def _embedding_scores(loaded: _Model, rows: Any, skip: set[str]) -> dict[str, Any]:
    """A text model's embedding distances (monitor/embedding.py), computed with its PyTorch model; none when the
    reference has no embedding profile or a text column is missing from the rows (hashed or excluded in a log)."""
    from modelfoundry.monitor.embedding import EMBEDDING, embedding_scores

    profile = loaded.reference.embedding
    text = set(loaded.backend.desc.get("text", {}).get("columns", []))
    if profile is None or text & skip:
        return {}
    saved = loaded.backend.saved
    return {EMBEDDING: embedding_scores(saved.model, profile, rows.inputs, saved.record.n_outputs)}


def _values(schema: Any, rows: Any, skip: set[str], column_values: Any) -> dict[str, Any]:
    values = column_values(schema, rows)
    return {name: v for name, v in values.items() if not skip & set(name.split(":")[0].split("+"))}


def _summaries(windows: list[Any], alerting: set[str]) -> list[ColumnSummary]:
    by_column: dict[str, list[Any]] = {}
    for window in windows:
        for drift in window.columns:
            by_column.setdefault(drift.column, []).append(drift)
    out = []
    for name, drifts in by_column.items():
        worst = max(drifts, key=_badness)
        out.append(ColumnSummary(name, worst.kind, worst.test, float(worst.score), worst.p_value,
                                 float(worst.threshold), sum(bool(d.drifted) for d in drifts), len(drifts),
                                 name in alerting, worst.note))
    return out


def _badness(drift: Any) -> tuple[bool, float]:
    return bool(drift.drifted), _severity(drift.p_value, drift.score, drift.threshold)


def _severity(p_value: float | None, score: float, threshold: float) -> float:
    import math

    if p_value is not None:
        return -math.log10(max(p_value, 1e-300))
    return score / threshold if threshold else 0.0


def _ood_share(loaded: _Model, rows: Any) -> float | None:
    from modelfoundry.monitor.ood import ood_space

    scorer = loaded.reference.ood
    if scorer is None or not loaded.config.monitor.ood.enabled:
        return None
    space = ood_space(rows.inputs)
    return None if space is None else float(scorer.flag(space).mean())
